//! `auth.json` on disk: loading at startup and live reload (the parsing rules themselves are in
//! `rack_core::auth`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rack_core::auth::Policy;

use crate::reload::{self, FileContent, Watch};
use crate::storage::Storage;

/// Parse the content of `auth.json`: a missing file declares nothing (every namespace is 403);
/// a file that is not a JSON object is an error.
pub fn parse(content: &FileContent) -> Result<Policy, String> {
    match content {
        None => Ok(Policy::empty()),
        Some(text) => Policy::parse(text).map_err(|e| e.to_string()),
    }
}

/// Log every namespace that fail-closed parsing rejected.
pub fn log_rejections(policy: &Policy) {
    for r in policy.rejected() {
        tracing::warn!(namespace = %r.namespace, reason = %r.reason, "auth config: namespace rejected (treated as undeclared)");
    }
}

/// Load at startup: the policy and the content it came from (the watcher's starting point).
pub fn load(path: &Path) -> Result<(Policy, FileContent), String> {
    let content = reload::read(path)?;
    if content.is_none() {
        tracing::warn!(path = %path.display(), "auth config not found: every namespace is undeclared (403)");
    }
    let policy = parse(&content).map_err(|e| format!("auth config {}: {e}", path.display()))?;
    log_rejections(&policy);
    Ok((policy, content))
}

/// The watch of `auth.json` for live reload.
pub fn watch(path: &Path, interval: Duration) -> Watch<Policy> {
    Watch {
        name: "auth",
        path: path.to_owned(),
        interval,
        parse: Box::new(parse),
        on_change: Some(Box::new(log_rejections)),
        reader: None,
    }
}

/// `AUTH_SOURCE=bucket` (SPEC §11.3): the policy is `.auth/auth.json` in the bucket, shared by
/// every replica and the edge Worker (written by `rack-registry auth push`).
pub const BUCKET_KEY: &str = ".auth/auth.json";

/// How often the bucket's policy is polled (a HEAD; the body only when the ETag changed).
pub const BUCKET_POLL: Duration = Duration::from_secs(5);

/// The policy object's content, asked of `storage` (a missing object declares nothing).
async fn fetch(storage: &dyn Storage) -> Result<FileContent, String> {
    match storage.get(BUCKET_KEY).await.map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(obj) => String::from_utf8(obj.body.to_vec())
            .map(Some)
            .map_err(|_| format!("{BUCKET_KEY} is not UTF-8")),
    }
}

/// Load at startup from the bucket, with the same fail-closed rules as the file.
pub async fn load_from_bucket(storage: &Arc<dyn Storage>) -> Result<(Policy, FileContent), String> {
    let content = fetch(storage.as_ref())
        .await
        .map_err(|e| format!("auth config {BUCKET_KEY} in {}: {e}", storage.describe()))?;
    if content.is_none() {
        tracing::warn!(
            key = BUCKET_KEY,
            "auth config not found in the bucket: every namespace is undeclared (403)"
        );
    }
    let policy = parse(&content).map_err(|e| format!("auth config {BUCKET_KEY}: {e}"))?;
    log_rejections(&policy);
    Ok((policy, content))
}

/// The watch of the bucket's policy: a HEAD per poll, the object read again only when its ETag
/// changed.
pub fn watch_bucket(storage: Arc<dyn Storage>) -> Watch<Policy> {
    let last: Arc<Mutex<Option<(String, FileContent)>>> = Arc::default();
    let reader: crate::reload::Reader = Box::new(move || {
        let (storage, last) = (storage.clone(), last.clone());
        Box::pin(async move {
            let head = storage.head(BUCKET_KEY).await.map_err(|e| e.to_string())?;
            let Some(meta) = head else {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Ok(None);
            };
            if let Some((tag, content)) = &*last.lock().unwrap_or_else(|e| e.into_inner()) {
                if *tag == meta.version {
                    return Ok(content.clone());
                }
            }
            let content = fetch(storage.as_ref()).await?;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.version, content.clone()));
            Ok(content)
        })
    });
    Watch {
        name: "auth",
        path: BUCKET_KEY.into(),
        interval: BUCKET_POLL,
        parse: Box::new(parse),
        on_change: Some(Box::new(log_rejections)),
        reader: Some(reader),
    }
}
