//! `/ui/search?q=`: registries whose name, description or tags contain the query
//! (case-insensitive), across the namespaces the viewer may list.
//!
//! Searching reads every registry's `versions.json` and latest manifest: on a bucket, two GETs
//! a registry, or a HEAD each to revalidate them. So a search does not read them per request:
//! it scans a per-namespace [`Index`] (name, latest version, description, tags of each
//! registry) that is
//! - **shared and reused**: built from the namespace's registry list and the hot cache, and
//!   served without asking storage anything while it is current: on a bucket for
//!   `STORAGE_REVALIDATE_MS` after it was built (SPEC §11.3, the window of every mutable
//!   object); on local disk, where that window is zero, only to the requests that were waiting
//!   for it;
//! - **built once for concurrent callers** (single flight): one async mutex per namespace (and
//!   one for the namespace list); whoever holds it builds, whoever waited finds an index
//!   finished after it arrived and uses it (or shares its failure). A build dropped half-way (its
//!   client left) only hands the lock to the next caller;
//! - **invalidated by publishes on this replica**: a publish bumps an epoch ([`SearchSink`],
//!   a [`PublishSink`]) and an index built in an older epoch is never served again; other
//!   replicas see a publish within the revalidation window (up to twice it, as the entries the
//!   index was built from may have been up to one window old);
//! - **bounded**: a namespace's index holds its first [`MAX_SCANNED`] registries (in name
//!   order), a request examines at most [`MAX_SCANNED`] registries and [`MAX_NAMESPACES`]
//!   namespaces in all and shows [`MAX_RESULTS`], saying so on the page when it stopped there.
//!   So the storage work of one request (on a bucket: a listing of the namespaces, and per
//!   namespace examined its index and two reads a registry) has a bound whatever the data,
//!   and is paid at most once per window, whatever the traffic; the indexes held are capped
//!   at [`MAX_INDEX_BYTES`] and [`MAX_INDEXED_NAMESPACES`] (the oldest others are dropped).
//!
//! Access is decided per request, never at build time: an index holds a namespace's
//! registries whoever may read them, and a request scans only the namespaces its viewer may
//! list and read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use maud::html;
use rack_core::names::is_segment;
use rack_core::ApiError;
use serde_json::Value;

use super::layout::page as shell_page;
use super::{manifest, ok, reads, str_field, tags, PageResult, Req};
use crate::events::{PublishEvent, PublishSink};
use crate::http::reads::internal;
use crate::http::response::ErrorReply;
use crate::state::AppState;

/// Registries one request examines, in all, and one namespace's index holds.
pub const MAX_SCANNED: usize = 2000;
/// Results shown.
pub const MAX_RESULTS: usize = 50;
/// Namespaces one request examines (each may cost an index build).
pub const MAX_NAMESPACES: usize = 500;
/// Bytes of index text held across namespaces (names, versions, descriptions, tags, with
/// their lowercased copies).
pub const MAX_INDEX_BYTES: u64 = 32 << 20;
/// Namespaces whose index is held.
pub const MAX_INDEXED_NAMESPACES: usize = 4096;
/// Registries whose `versions.json` and manifest an index build reads at once.
const BUILD_PARALLEL: usize = 16;

/// One registry as the search sees it.
struct Entry {
    registry: String,
    version: String,
    description: String,
    /// Name, description and tags, lowercased, separated by NUL (never in a query's match).
    haystack: String,
}

impl Entry {
    fn bytes(&self) -> u64 {
        (self.registry.len() + self.version.len() + self.description.len() + self.haystack.len()) as u64
            + std::mem::size_of::<Entry>() as u64
    }
}

/// One namespace's index.
struct NsIndex {
    entries: Vec<Entry>,
    /// The namespace has more registries than [`MAX_SCANNED`]: only the first are indexed.
    capped: bool,
}

/// A value built once and shared while current.
struct Built<T> {
    value: Arc<T>,
    /// The publish epoch it was built in.
    epoch: u64,
    started: Instant,
    /// The [`Index::seq`] tick at which it was finished.
    done: u64,
    /// Whether a later request may reuse it (every read of its build succeeded).
    reusable: bool,
}

/// A slot with its single-flight lock.
struct Slot<T> {
    built: tokio::sync::Mutex<Option<Built<T>>>,
    /// Bytes held by the value (for the memory bound).
    held: AtomicU64,
    /// [`Index::seq`] of its last use (the least recently used slot goes first).
    used: AtomicU64,
    /// [`Index::seq`] at which its last build failed: the callers that waited for it fail with
    /// it rather than each trying again in turn (a bucket that times out would otherwise hold
    /// the last of N waiters N timeouts long).
    failed: AtomicU64,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            built: tokio::sync::Mutex::new(None),
            held: AtomicU64::new(0),
            used: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// The search indexes of this process.
#[derive(Default)]
pub struct Index {
    namespaces: Slot<Vec<String>>,
    by_ns: Mutex<HashMap<String, Arc<Slot<NsIndex>>>>,
    /// Bumped by every publish on this replica.
    epoch: AtomicU64,
    /// A logical clock: requests take a ticket, builds a tick when they finish.
    seq: AtomicU64,
}

impl Index {
    /// Forget every index (a publish on this replica).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn tick(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The value in `slot` if it is current for a request holding `ticket`, else built by
    /// `build` (one caller at a time: the others wait, then find it current). `build` is only
    /// polled when needed.
    async fn get_or_build<T>(
        &self,
        slot: &Slot<T>,
        ticket: u64,
        window: Option<Duration>,
        build: impl Future<Output = Result<(T, bool), ErrorReply>>,
    ) -> Result<Arc<T>, ErrorReply> {
        let mut guard = slot.built.lock().await;
        slot.used.store(self.tick(), Ordering::Relaxed);
        if let Some(b) = &*guard {
            let current = b.epoch == self.epoch.load(Ordering::Acquire)
                && (b.done > ticket || (b.reusable && window.is_some_and(|w| b.started.elapsed() < w)));
            if current {
                return Ok(b.value.clone());
            }
        }
        if slot.failed.load(Ordering::Acquire) > ticket {
            return Err(ErrorReply(ApiError::internal()));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let started = Instant::now();
        let (value, reusable) = match build.await {
            Ok(built) => built,
            Err(e) => {
                slot.failed.store(self.tick(), Ordering::Release);
                return Err(e);
            }
        };
        let value = Arc::new(value);
        *guard = Some(Built {
            value: value.clone(),
            epoch,
            started,
            done: self.tick(),
            reusable,
        });
        Ok(value)
    }

    /// Every namespace in storage (unfiltered: access is decided per request).
    async fn namespaces(&self, state: &AppState, ticket: u64) -> Result<Arc<Vec<String>>, ErrorReply> {
        let window = window(state, ".registries.json");
        self.get_or_build(&self.namespaces, ticket, window, async {
            Ok((crate::http::reads::stored_namespaces(state).await?, true))
        })
        .await
    }

    async fn namespace(&self, state: &AppState, ns: &str, ticket: u64) -> Result<Arc<NsIndex>, ErrorReply> {
        let slot = {
            let mut map = self.by_ns.lock().unwrap_or_else(|e| e.into_inner());
            if !map.contains_key(ns) && map.len() >= MAX_INDEXED_NAMESPACES {
                evict_one(&mut map, None);
            }
            map.entry(ns.to_owned()).or_default().clone()
        };
        let window = window(state, &format!("{ns}/.registries.json"));
        let index = self
            .get_or_build(&slot, ticket, window, build_namespace(state, ns))
            .await?;
        let held: u64 = index.entries.iter().map(Entry::bytes).sum();
        if slot.held.swap(held, Ordering::AcqRel) != held {
            let mut map = self.by_ns.lock().unwrap_or_else(|e| e.into_inner());
            let mut total: u64 = map.values().map(|s| s.held.load(Ordering::Acquire)).sum();
            while total > MAX_INDEX_BYTES {
                match evict_one(&mut map, Some(ns)) {
                    Some(freed) => total -= freed,
                    None => break,
                }
            }
        }
        Ok(index)
    }
}

/// Drop the least recently used index other than `keep`'s; the bytes it held.
fn evict_one(map: &mut HashMap<String, Arc<Slot<NsIndex>>>, keep: Option<&str>) -> Option<u64> {
    let victim = map
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != keep)
        .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
        .map(|(k, _)| k.clone())?;
    map.remove(&victim).map(|s| s.held.load(Ordering::Acquire))
}

/// How long an index may be reused: the storage's window for a mutable object (`None` on local
/// disk, which revalidates every read).
fn window(state: &AppState, key: &str) -> Option<Duration> {
    state.storage.revalidate_after(key).filter(|d| !d.is_zero())
}

/// Read a namespace's registries (the first [`MAX_SCANNED`]) and their latest manifests.
async fn build_namespace(state: &AppState, ns: &str) -> Result<(NsIndex, bool), ErrorReply> {
    let found = state
        .storage
        .find_marked_dirs(&format!("{ns}/"), "versions.json", is_segment)
        .await
        .map_err(internal)?;
    let Some(names) = found else {
        return Ok((
            NsIndex {
                entries: Vec::new(),
                capped: false,
            },
            true,
        ));
    };
    let capped = names.len() > MAX_SCANNED;
    let registries: Vec<String> = names
        .iter()
        .take(MAX_SCANNED)
        .map(|name| format!("{ns}/{name}"))
        .collect();
    let mut reads = futures::stream::iter(registries)
        .map(|registry| async move {
            let latest = latest_of(state, &registry).await;
            (registry, latest)
        })
        .buffered(BUILD_PARALLEL);
    let mut entries = Vec::new();
    let mut reusable = true;
    while let Some((registry, latest)) = reads.next().await {
        let (version, m) = match latest {
            Ok(Some(found)) => found,
            // No version, or a corrupt `versions.json` (logged): skipped.
            Ok(None) => continue,
            // A storage failure (logged) skips the registry too, not failing the search; the
            // index is then not kept, so a passing failure is not remembered.
            Err(_) => {
                reusable = false;
                continue;
            }
        };
        let description = str_field(&m, "description").unwrap_or("").to_owned();
        let mut haystack = registry.to_lowercase();
        for field in std::iter::once(description.as_str()).chain(tags(&m)) {
            haystack.push('\0');
            haystack.push_str(&field.to_lowercase());
        }
        entries.push(Entry {
            registry,
            version,
            description,
            haystack,
        });
    }
    Ok((NsIndex { entries, capped }, reusable))
}

/// The latest version of `registry` and its manifest; `None` if it has none or its
/// `versions.json` is corrupt (a lasting state, logged); `Err` only for a storage failure.
async fn latest_of(state: &AppState, registry: &str) -> Result<Option<(String, Value)>, ErrorReply> {
    let key = rack_core::layout::versions_key(registry);
    let Some(obj) = reads::get(state, &key).await? else {
        return Ok(None);
    };
    let Some(versions) = obj.versions_file() else {
        tracing::error!(key = %key, "corrupt versions file");
        return Ok(None);
    };
    let Some(latest) = versions.latest().map(str::to_owned) else {
        return Ok(None);
    };
    Ok(manifest(state, registry, &latest).await?.map(|m| (latest, m)))
}

/// The publish sink that drops the search indexes (and the published registry's
/// `versions.json` from the hot cache, before that: an index rebuilt at once must not read the
/// previous one, which a bucket publish announces before the upload drops it).
#[derive(Default)]
pub struct SearchSink {
    state: OnceLock<Weak<AppState>>,
}

impl SearchSink {
    pub fn bind(&self, state: &Arc<AppState>) {
        let _ = self.state.set(Arc::downgrade(state));
    }
}

#[async_trait]
impl PublishSink for SearchSink {
    async fn accept(&self, event: &PublishEvent) {
        let Some(state) = self.state.get().and_then(Weak::upgrade) else {
            return;
        };
        if let Some((registry, _version)) = event.path.rsplit_once('/') {
            state.cache.invalidate(&rack_core::layout::versions_key(registry));
        }
        if let Some(ui) = &state.ui {
            ui.search.invalidate();
        }
    }
}

struct Hit {
    registry: String,
    version: String,
    description: String,
}

/// Why a search stopped before the end.
enum Stopped {
    Results,
    Scanned,
    Namespaces,
}

pub async fn page(req: &Req<'_>) -> PageResult {
    let q = req.param("q").unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let mut hits = Vec::new();
    let mut scanned = 0;
    let mut stopped = None;
    if !needle.is_empty() {
        let index = &req.ui.search;
        let ticket = index.tick();
        let namespaces = index.namespaces(req.state, ticket).await?;
        let visible = namespaces
            .iter()
            .filter(|ns| req.ctx.lists(ns) && req.ctx.read(ns).is_ok());
        'outer: for (n, ns) in visible.enumerate() {
            if n >= MAX_NAMESPACES {
                stopped = Some(Stopped::Namespaces);
                break;
            }
            let ns_index = index.namespace(req.state, ns, ticket).await?;
            for e in &ns_index.entries {
                if hits.len() >= MAX_RESULTS {
                    stopped = Some(Stopped::Results);
                    break 'outer;
                }
                if scanned >= MAX_SCANNED {
                    stopped = Some(Stopped::Scanned);
                    break 'outer;
                }
                scanned += 1;
                if e.haystack.contains(&needle) {
                    hits.push(Hit {
                        registry: e.registry.clone(),
                        version: e.version.clone(),
                        description: e.description.clone(),
                    });
                }
            }
            if ns_index.capped {
                stopped = Some(Stopped::Scanned);
                break;
            }
        }
    }
    ok(shell_page(
        req.shell,
        "Search",
        &q,
        html! {
            h1 { "Search" }
            @if needle.is_empty() {
                p.muted { "Type a name, a word of a description or a tag." }
            } @else {
                p.muted {
                    (hits.len()) " result(s) for “" (q) "”"
                    @match stopped {
                        Some(Stopped::Results) => { " (the first " (MAX_RESULTS) " shown: narrow it down)" }
                        Some(Stopped::Scanned) => { " (search stopped after " (MAX_SCANNED) " registries: narrow it down)" }
                        Some(Stopped::Namespaces) => { " (search stopped after " (MAX_NAMESPACES) " namespaces: narrow it down)" }
                        None => {}
                    }
                }
                table.list {
                    tbody {
                        @for h in &hits {
                            tr {
                                td { a href={ "/ui/" (h.registry) } { (h.registry) } }
                                td { code { (h.version) } }
                                td { (h.description) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_searched_index_goes_first_but_never_the_one_kept() {
        let mut map: HashMap<String, Arc<Slot<NsIndex>>> = HashMap::new();
        for (ns, used, held) in [("@a", 3, 10), ("@b", 1, 20), ("@c", 2, 30)] {
            let slot = Arc::new(Slot::default());
            slot.used.store(used, Ordering::Relaxed);
            slot.held.store(held, Ordering::Relaxed);
            map.insert(ns.to_owned(), slot);
        }
        assert_eq!(evict_one(&mut map, Some("@a")), Some(20));
        assert!(!map.contains_key("@b"));
        assert_eq!(evict_one(&mut map, Some("@c")), Some(10));
        assert_eq!(evict_one(&mut map, Some("@c")), None);
        assert_eq!(map.len(), 1);
    }

    #[tokio::test]
    async fn a_value_is_reused_by_waiters_and_within_its_window_until_a_publish() {
        let index = Index::default();
        let slot: Slot<u32> = Slot::default();
        let built = std::sync::atomic::AtomicU32::new(0);
        let get = |ticket: u64, window: Option<Duration>| {
            let (index, slot, built) = (&index, &slot, &built);
            async move {
                let build = async { Ok((built.fetch_add(1, Ordering::SeqCst) + 1, true)) };
                match index.get_or_build(slot, ticket, window, build).await {
                    Ok(v) => *v,
                    Err(_) => unreachable!("the build never fails"),
                }
            }
        };
        // No window (local disk): a request that arrived before the build finished reuses it,
        // a later one builds again.
        let early = index.tick();
        assert_eq!(get(early, None).await, 1);
        assert_eq!(get(early, None).await, 1);
        assert_eq!(get(index.tick(), None).await, 2);
        // Within a window: reused by later requests too.
        let window = Some(Duration::from_secs(600));
        assert_eq!(get(index.tick(), window).await, 2);
        // A publish ends it for everyone.
        index.invalidate();
        assert_eq!(get(early, window).await, 3);
        assert_eq!(get(index.tick(), window).await, 3);
        assert_eq!(built.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_build_fails_its_waiters_once() {
        let index = Index::default();
        let slot: Slot<u32> = Slot::default();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let get = |ticket: u64| {
            let (index, slot, tries) = (&index, &slot, &tries);
            async move {
                let build = async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err::<(u32, bool), _>(ErrorReply(ApiError::internal()))
                };
                index.get_or_build(slot, ticket, None, build).await.is_err()
            }
        };
        let waiter = index.tick();
        assert!(get(waiter).await);
        assert!(get(waiter).await, "shares the failure it waited for");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert!(get(index.tick()).await);
        assert_eq!(tries.load(Ordering::SeqCst), 2, "a later request tries again");
    }
}
