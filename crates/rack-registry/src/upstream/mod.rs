//! Upstream registries (SPEC §17): namespaces that live on another Rack registry, fetched on
//! first use, kept, and served from storage when the upstream is down.
//!
//! The read path is unchanged: before a read of an upstream namespace, [`Upstreams`] makes
//! storage hold what the read needs, then the ordinary read serves it (same cache tiers, ETags,
//! lifecycle headers, the Worker and the backups see the same keys):
//!
//! - a version (`registry.json` and its files) is fetched once, verified and stored for good
//!   ([`store`]): versions never change;
//! - `versions.json` and the registry's `lifecycle.json` (so a version yanked upstream leaves the
//!   list, and stays readable when pinned, as upstream) and the namespace's registry listing are
//!   refreshed when older than `maxAgeSeconds`, by conditional GET on the stored copy's ETag;
//! - if the upstream is unreachable, slow past its timeout, answers 5xx or something that must
//!   not be stored, or its breaker is open ([`fetch`]), the stored copy is served as it is
//!   (counted); with no stored copy the answer is 502 `UPSTREAM_UNAVAILABLE`; an upstream 404
//!   is a 404;
//! - concurrent misses of one object share one upstream request ([`Flights`]).
//!
//! Uploads and management requests to an upstream namespace are refused (403
//! `FORBIDDEN_NAMESPACE`): it is published upstream.

pub mod config;
pub mod fetch;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rack_core::etag::etag_of;
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::lifecycle_key;
use rack_core::ApiError;

use crate::reload::Live;
use crate::storage::{PutMode, Storage, StorageError};
pub use config::{Upstream, UpstreamConfig};
use fetch::Got;

/// A document refreshed from upstream is at most this large (`versions.json`, `lifecycle.json`,
/// a registry listing).
pub const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Versions fetched from upstreams at once, at most (each stages up to `MAX_EXTRACTED_BYTES`
/// on disk); further misses wait for a slot.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// Freshness records kept at most (one per refreshed document); past it the table starts over
/// (every document is then asked once more).
const MAX_FRESH: usize = 100_000;

/// Read `upstreams.json` at startup: a file that breaks a rule stops the server (fail-closed).
pub fn load_config(path: &std::path::Path) -> Result<(UpstreamConfig, crate::reload::FileContent), String> {
    let content = crate::reload::read(path)?;
    let parsed = config::parse(&content).map_err(|e| {
        format!(
            "UPSTREAMS_CONFIG_PATH: upstream config {} is malformed: {e}",
            path.display()
        )
    })?;
    if !parsed.is_empty() {
        log_loaded(&parsed);
    }
    Ok((parsed, content))
}

fn log_loaded(c: &UpstreamConfig) {
    for u in &c.upstreams {
        tracing::info!(upstream = %u.url, namespaces = ?u.namespaces, max_age_s = u.max_age.as_secs(), timeout_s = u.timeout.as_secs(), "upstream configured");
    }
}

/// The watch of `upstreams.json` for live reload.
pub fn watch(path: &std::path::Path, interval: std::time::Duration) -> crate::reload::Watch<UpstreamConfig> {
    crate::reload::Watch {
        name: "upstreams",
        path: path.to_owned(),
        interval,
        parse: Box::new(config::parse),
        on_change: Some(Box::new(log_loaded)),
        reader: None,
    }
}

/// Where the registry listing of an upstream namespace is kept.
pub fn listing_key(ns: &str) -> String {
    format!(".rack/upstream/{ns}/registries.json")
}

/// Concurrent callers of [`Flights::run`] with one key share one run of its future.
pub struct Flights<T> {
    map: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::default(),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// The result of `f` for `key`: run by the first caller, awaited by those who come while it
    /// runs (if the first caller goes away, a waiter runs it instead). Bounded by the requests
    /// in flight: an entry leaves the map when its run ends.
    pub async fn run<F: std::future::Future<Output = T>>(&self, key: &str, f: impl FnOnce() -> F) -> T {
        let cell = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let out = cell.get_or_init(f).await.clone();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(key);
        }
        out
    }
}

/// Why a read of an upstream namespace cannot be answered from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// The upstream says there is no such thing (404; 410 for a version deleted upstream).
    Gone(u16),
    /// Nothing stored and the upstream could not give it (502).
    Unavailable(String),
    /// Storage failed (500; the detail is logged).
    Storage(String),
}

impl Miss {
    pub fn to_api(&self, registry: &str, version: Option<&str>) -> ApiError {
        match self {
            Miss::Gone(410) if version.is_some() => {
                ApiError::version_deleted(registry, version.unwrap_or_default())
            }
            Miss::Gone(_) => ApiError::not_found(),
            Miss::Unavailable(url) => ApiError::upstream_unavailable(url),
            Miss::Storage(e) => {
                tracing::error!(error = %e, "storage failure while serving from an upstream");
                ApiError::internal()
            }
        }
    }
}

struct Fresh {
    at: Instant,
}

/// Every upstream of this server.
pub struct Upstreams {
    pub config: Arc<Live<UpstreamConfig>>,
    pub client: fetch::Client,
    storage: Arc<dyn Storage>,
    staging_root: PathBuf,
    limits: store::Limits,
    fresh: Mutex<HashMap<String, Fresh>>,
    /// Runs shared by concurrent callers: `Ok(true)` when the run changed what is stored.
    flights: Flights<Result<bool, Miss>>,
    /// [`MAX_CONCURRENT_FETCHES`].
    fetches: tokio::sync::Semaphore,
}

impl Upstreams {
    pub fn new(
        config: Arc<Live<UpstreamConfig>>,
        counters: Option<fetch::Counters>,
        storage: Arc<dyn Storage>,
        staging_root: PathBuf,
        limits: store::Limits,
    ) -> Upstreams {
        Upstreams {
            config,
            client: fetch::Client::new(counters),
            storage,
            staging_root,
            limits,
            fresh: Mutex::default(),
            flights: Flights::default(),
            fetches: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
        }
    }

    /// The upstream of namespace `ns`, if it has one.
    pub fn of(&self, ns: &str) -> Option<Upstream> {
        let config = self.config.get();
        config.for_namespace(ns).cloned()
    }

    /// The namespaces served from upstreams.
    pub fn namespaces(&self) -> Vec<String> {
        let config = self.config.get();
        config
            .upstreams
            .iter()
            .flat_map(|u| u.namespaces.iter().cloned())
            .collect()
    }

    fn is_fresh(&self, key: &str, up: &Upstream) -> bool {
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        fresh.get(key).is_some_and(|f| f.at.elapsed() < up.max_age)
    }

    fn mark_fresh(&self, key: &str) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() >= MAX_FRESH {
            fresh.clear();
        }
        fresh.insert(key.to_owned(), Fresh { at: Instant::now() });
    }

    /// Bring the document at `key` up to date from `path` of `up` if it is older than the
    /// upstream's `maxAgeSeconds` (see the module docs). `valid` judges a body before it is
    /// stored. `Ok(true)` when the stored copy changed.
    pub async fn refresh(
        &self,
        up: &Upstream,
        key: &str,
        path: &str,
        valid: fn(&[u8]) -> bool,
    ) -> Result<bool, Miss> {
        if self.is_fresh(key, up) {
            return Ok(false);
        }
        self.flights
            .run(&format!("doc:{key}"), || async move {
                if self.is_fresh(key, up) {
                    return Ok(false);
                }
                let s = self.storage.as_ref();
                let stored = s.get(key).await.map_err(|e| Miss::Storage(e.to_string()))?;
                // Our ETags are content tags: the stored copy's tag is what the upstream (a Rack
                // registry) gave for the same bytes, after a restart too.
                let tag = stored.as_ref().map(|o| etag_of(&o.body));
                let answer = self.client.get(up, path, tag.as_deref(), MAX_DOCUMENT_BYTES).await;
                let answer = match answer {
                    Ok(Got::Body { bytes, .. }) if !valid(&bytes) => {
                        tracing::warn!(upstream = %up.url, path, "upstream document refused: not what was asked for");
                        Err(fetch::Failure::Refused("invalid document".into()))
                    }
                    other => other,
                };
                match answer {
                    Ok(Got::Body { bytes, .. }) => {
                        let changed = stored.as_ref().is_none_or(|o| o.body != bytes);
                        if changed {
                            s.put(key, bytes, PutMode::Overwrite)
                                .await
                                .map_err(|e| Miss::Storage(e.to_string()))?;
                        }
                        self.mark_fresh(key);
                        Ok(changed)
                    }
                    Ok(Got::NotModified) => {
                        self.mark_fresh(key);
                        Ok(false)
                    }
                    Ok(Got::Gone(code)) => Err(Miss::Gone(code)),
                    Err(failure) if stored.is_some() => {
                        tracing::debug!(upstream = %up.url, key, %failure, "serving the stored copy");
                        self.client.count_stale(up);
                        Ok(false)
                    }
                    Err(_) => Err(Miss::Unavailable(up.url.clone())),
                }
            })
            .await
    }

    /// Make sure `registry@version` is stored, fetching it once if not.
    pub async fn ensure_version(&self, up: &Upstream, registry: &str, version: &str) -> Result<(), Miss> {
        let s = self.storage.as_ref();
        let storage_err = |e: StorageError| Miss::Storage(e.to_string());
        if store::is_stored(s, registry, version)
            .await
            .map_err(storage_err)?
        {
            return Ok(());
        }
        self.flights
            .run(&format!("version:{registry}/{version}"), || async {
                if store::is_stored(s, registry, version)
                    .await
                    .map_err(storage_err)?
                {
                    return Ok(false);
                }
                let _slot = self
                    .fetches
                    .acquire()
                    .await
                    .map_err(|_| Miss::Unavailable(up.url.clone()))?;
                match store::fetch_version(
                    &self.client,
                    up,
                    s,
                    &self.staging_root,
                    self.limits,
                    registry,
                    version,
                )
                .await
                {
                    Ok(store::Fetched::Stored) => Ok(true),
                    Ok(store::Fetched::Gone(code)) => Err(Miss::Gone(code)),
                    Err(store::StoreError::Upstream(_)) => Err(Miss::Unavailable(up.url.clone())),
                    Err(store::StoreError::Storage(e)) => Err(Miss::Storage(e.to_string())),
                }
            })
            .await
            .map(drop)
    }

    /// Refresh `versions.json` and `lifecycle.json` of `registry`; the stored copy of the
    /// latter is dropped when the upstream has none. `Ok(true)` when either changed.
    pub async fn refresh_registry(&self, up: &Upstream, registry: &str) -> Result<bool, Miss> {
        let (versions_key, lifecycle_key) = (layout::versions_key(registry), lifecycle_key(registry));
        let (versions_path, lifecycle_path) = (
            format!("/registries/{registry}/versions"),
            format!("/-/lifecycle/{registry}"),
        );
        // Both at once: a slow upstream costs a read one timeout, not two.
        let (versions, lifecycle) = futures::join!(
            self.refresh(up, &versions_key, &versions_path, |b| VersionsFile::parse(b)
                .is_some()),
            self.refresh(up, &lifecycle_key, &lifecycle_path, |b| {
                crate::storage::lifecycle::parse(b).is_some()
            }),
        );
        let lifecycle = match lifecycle {
            Ok(changed) => changed,
            // No document upstream (or an upstream without §18): none here either.
            Err(Miss::Gone(_)) => {
                self.mark_fresh(&lifecycle_key);
                self.storage
                    .delete_prefix(&lifecycle_key)
                    .await
                    .map_err(|e| Miss::Storage(e.to_string()))?
                    > 0
            }
            // Optional: the version list decides whether the registry can be served.
            Err(_) => false,
        };
        Ok(versions? || lifecycle)
    }

    /// The latest version of `registry` in its stored `versions.json`.
    pub async fn stored_latest(&self, registry: &str) -> Result<Option<String>, Miss> {
        let obj = self
            .storage
            .get(&layout::versions_key(registry))
            .await
            .map_err(|e| Miss::Storage(e.to_string()))?;
        Ok(obj
            .and_then(|o| VersionsFile::parse(&o.body))
            .and_then(|f| f.latest().map(str::to_owned)))
    }

    /// Refresh the registry listing of namespace `ns`; its stored body.
    pub async fn listing(&self, up: &Upstream, ns: &str) -> Result<Option<Bytes>, Miss> {
        let key = listing_key(ns);
        self.refresh(up, &key, &format!("/namespaces/{ns}/registries"), |b| {
            rack_core::listing::parse_index(b)
                .is_some_and(|l| l.iter().all(|r| r.split('/').all(rack_core::names::is_segment)))
        })
        .await?;
        Ok(self
            .storage
            .get(&key)
            .await
            .map_err(|e| Miss::Storage(e.to_string()))?
            .map(|o| o.body))
    }
}
