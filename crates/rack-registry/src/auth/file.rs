//! `auth.json` on disk: loading at startup and live reload (the parsing rules themselves are in
//! `rack_core::auth`).

use std::path::Path;
use std::time::Duration;

use rack_core::auth::Policy;

use crate::reload::{self, FileContent, Watch};

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
    }
}
