//! The version lifecycle of SPEC §18: yank, unyank, deprecate, undeprecate and delete.
//!
//! A change runs in four steps, each safe to repeat (a client that retries after a failure
//! finishes what the first attempt began):
//!
//! 1. `lifecycle.json` is changed by compare-and-swap ([`storage::lifecycle::update`]): from
//!    here on reads answer the new state (a deleted version is 410 even while its files are
//!    still being removed), and no publish can reuse a yanked or deleted version;
//! 2. `versions.json` is rewritten from it, under the rules every listing follows (on a bucket
//!    [`storage::lifecycle::relist`], on disk the rebuild of [`crate::versions`]);
//! 3. a deletion removes the version's files and its integrity record: on a bucket under the
//!    lease of its precedence class (SPEC §11.2), so no publisher of that class is writing;
//! 4. the caches of this replica forget what changed; other replicas see it within their
//!    revalidation interval. Then, if anything changed, an audit record and a webhook event.
//!
//! On disk the registry's lock (held by uploads from check 13 to their listing) serializes a
//! change with publishes of the same registry in this process.

pub mod cache;

use rack_core::layout;
use rack_core::lifecycle::{Deletion, Deprecation, Lifecycle, Yank};
use rack_core::route::Target;
use rack_core::ApiError;
use serde_json::{json, Map, Value};

use crate::events::{LifecycleChange, PublishEvent};
use crate::http::reads::internal;
use crate::http::response::ErrorReply;
use crate::state::AppState;
use crate::storage::{self, StorageError};

/// What a management request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Yank {
        reason: String,
    },
    Unyank,
    Deprecate {
        message: String,
        successor: Option<String>,
    },
    Undeprecate,
    Delete,
}

impl Change {
    fn event(&self) -> &'static str {
        match self {
            Change::Yank { .. } => "version.yanked",
            Change::Unyank => "version.unyanked",
            Change::Deprecate { .. } => "registry.deprecated",
            Change::Undeprecate => "registry.undeprecated",
            Change::Delete => "version.deleted",
        }
    }

    /// What the answer says: `Yanked @ns/a@1.0.0`, `Deprecated @ns/a`...
    fn message(&self, registry: &str, version: Option<&str>) -> String {
        let verb = match self {
            Change::Yank { .. } => "Yanked",
            Change::Unyank => "Unyanked",
            Change::Deprecate { .. } => "Deprecated",
            Change::Undeprecate => "Undeprecated",
            Change::Delete => "Deleted",
        };
        match version {
            Some(v) => format!("{verb} {registry}@{v}"),
            None => format!("{verb} {registry}"),
        }
    }
}

/// The answer to a change: the document after it, and whether this request changed it.
pub struct Outcome {
    pub doc: Lifecycle,
    pub changed: bool,
    pub message: String,
}

/// Why a change stopped (mapped to an answer by the caller).
enum Stop {
    Api(ApiError),
    Storage(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Stop {
        Stop::Storage(e)
    }
}

fn stop_reply(stop: Stop) -> ErrorReply {
    match stop {
        Stop::Api(e) => ErrorReply(e),
        Stop::Storage(e) => storage_reply(e),
    }
}

/// A storage failure: a publish lease in the way is a 503 to retry; anything else a 500.
fn storage_reply(e: StorageError) -> ErrorReply {
    match e {
        StorageError::Fenced(_) => ErrorReply(busy()),
        StorageError::Unavailable(_) => ErrorReply(ApiError::storage_unavailable()),
        e => internal(e),
    }
}

fn busy() -> ApiError {
    ApiError::new(
        rack_core::ErrorKind::ServiceUnavailable,
        "A publish of this version is in flight; try again",
    )
}

/// Apply `change` to `target` on behalf of `by` (a token's mark, or `admin`).
pub async fn apply(
    state: &AppState,
    target: &Target,
    change: Change,
    by: &str,
) -> Result<Outcome, ErrorReply> {
    let registry = target.registry_key();
    let version = target.version.as_deref();
    let s = state.storage.as_ref();
    let lock = state.registry_locks.get(registry);
    let _guard = lock.lock().await;

    // The thing changed must exist (a deleted version stays addressable: its 410, or a repeated
    // deletion that finishes an interrupted one). The document is read only for a version that
    // has no registry.json: `edit` judges a deleted version again under the swap anyway.
    match version {
        Some(v) => {
            let stored = s
                .head(&layout::manifest_key(registry, v))
                .await
                .map_err(storage_reply)?;
            if stored.is_none() {
                let (current, _) = storage::lifecycle::load(s, registry)
                    .await
                    .map_err(storage_reply)?;
                if !current.deleted.contains_key(v) {
                    return Err(ApiError::not_found().into());
                }
                if change != Change::Delete {
                    return Err(ApiError::version_deleted(registry, v).into());
                }
            }
        }
        None => {
            let listed = s
                .head(&layout::versions_key(registry))
                .await
                .map_err(storage_reply)?;
            if listed.is_none() {
                return Err(ApiError::not_found().into());
            }
        }
    }

    // Step 1.
    let at = crate::clock::format_timestamp(time::OffsetDateTime::now_utc());
    let (doc, changed) = storage::lifecycle::update(s, registry, |doc: &mut Lifecycle| {
        edit(doc, registry, version, &change, &at, by)
    })
    .await
    .map_err(stop_reply)?;

    // Step 2 (also when nothing changed: a retry repairs a listing an earlier attempt left).
    let relisted = if s.publish_lists_version() {
        let add = (change == Change::Unyank).then_some(version).flatten();
        storage::lifecycle::relist(s, registry, add).await.map(drop)
    } else {
        crate::versions::rebuild_locked(s, registry, None).await.map(drop)
    };
    let after_relist = relisted.map_err(storage_reply);

    // Step 3.
    let removed = match (version, &change, &after_relist) {
        (Some(v), Change::Delete, Ok(())) => {
            storage::lifecycle::remove_version(s, registry, v, s.publish_timing())
                .await
                .map_err(storage_reply)
        }
        _ => Ok(()),
    };

    // Step 4, whatever happened after step 1: the document did change.
    state.lifecycles.invalidate(registry);
    state.cache.invalidate(&layout::versions_key(registry));
    state
        .cache
        .invalidate(&rack_core::lifecycle::lifecycle_key(registry));
    if changed {
        announce(state, registry, version, &change, by).await;
    }
    after_relist?;
    removed?;
    Ok(Outcome {
        doc,
        changed,
        message: change.message(registry, version),
    })
}

/// The change to the document itself; `Ok(false)` when it is already in the asked state.
fn edit(
    doc: &mut Lifecycle,
    registry: &str,
    version: Option<&str>,
    change: &Change,
    at: &str,
    by: &str,
) -> Result<bool, Stop> {
    let v = version.unwrap_or_default();
    // Re-checked on every try of the swap: a deletion may have come in between.
    if version.is_some() && *change != Change::Delete && doc.deleted.contains_key(v) {
        return Err(Stop::Api(ApiError::version_deleted(registry, v)));
    }
    Ok(match change {
        Change::Yank { reason } => {
            if doc.yanked.get(v).is_some_and(|y| &y.reason == reason) {
                return Ok(false);
            }
            let y = Yank {
                reason: reason.clone(),
                at: at.to_owned(),
                by: by.to_owned(),
            };
            doc.yanked.insert(v.to_owned(), y);
            true
        }
        Change::Unyank => doc.yanked.remove(v).is_some(),
        Change::Deprecate { message, successor } => {
            let same = doc
                .deprecated
                .as_ref()
                .is_some_and(|d| &d.message == message && &d.successor == successor);
            if same {
                return Ok(false);
            }
            doc.deprecated = Some(Deprecation {
                message: message.clone(),
                successor: successor.clone(),
                at: at.to_owned(),
                by: by.to_owned(),
            });
            true
        }
        Change::Undeprecate => doc.deprecated.take().is_some(),
        Change::Delete => {
            if doc.deleted.contains_key(v) {
                return Ok(false);
            }
            // Deleted wins over yanked: the version is gone, not merely hidden.
            doc.yanked.remove(v);
            let d = Deletion {
                at: at.to_owned(),
                by: by.to_owned(),
            };
            doc.deleted.insert(v.to_owned(), d);
            true
        }
    })
}

/// The audit record and the webhook event of a change that took effect.
async fn announce(state: &AppState, registry: &str, version: Option<&str>, change: &Change, by: &str) {
    let namespace = registry.split('/').next().unwrap_or(registry);
    let mut detail = Map::new();
    match change {
        Change::Yank { reason } => {
            detail.insert("reason".into(), json!(reason));
        }
        Change::Deprecate { message, successor } => {
            detail.insert("message".into(), json!(message));
            if let Some(s) = successor {
                detail.insert("successor".into(), json!(s));
            }
        }
        _ => {}
    }
    detail.insert("by".into(), json!(by));
    let mut fields: Vec<(&str, Value)> = vec![
        ("namespace", json!(namespace)),
        ("registry", json!(registry)),
        ("by", json!(by)),
    ];
    if let Some(v) = version {
        fields.push(("version", json!(v)));
    }
    for (k, v) in &detail {
        if k != "by" {
            fields.push((k.as_str(), v.clone()));
        }
    }
    state.audit.record(change.event(), &fields);
    let event = PublishEvent {
        namespace: namespace.to_owned(),
        name: registry.rsplit('/').next().unwrap_or(registry).to_owned(),
        version: version.unwrap_or_default().to_owned(),
        path: match version {
            Some(v) => format!("{registry}/{v}"),
            None => registry.to_owned(),
        },
        lifecycle: Some(LifecycleChange {
            event: change.event(),
            detail,
        }),
    };
    for sink in &state.sinks {
        sink.accept(&event).await;
    }
}

/// `GET /-/lifecycle/@ns/<segs>`: the stored document, the default one for a registry that has
/// none, or 404 for no registry at all.
pub async fn document(state: &AppState, registry: &str) -> Result<Option<LifecycleBody>, ErrorReply> {
    let key = rack_core::lifecycle::lifecycle_key(registry);
    if let Some(obj) = crate::http::reads::get(state, &key).await? {
        if storage::lifecycle::parse(&obj.body).is_none() {
            return Err(internal(storage::lifecycle::corrupt(&key)));
        }
        return Ok(Some(LifecycleBody::Stored(obj)));
    }
    if crate::http::reads::versions_file(state, registry)
        .await?
        .is_some()
    {
        return Ok(Some(LifecycleBody::Default(Lifecycle::default().render())));
    }
    Ok(None)
}

/// What [`document`] found.
pub enum LifecycleBody {
    Stored(std::sync::Arc<crate::cache::Cached>),
    Default(String),
}
