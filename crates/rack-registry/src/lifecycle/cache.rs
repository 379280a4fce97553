//! The lifecycle documents that reads consult (SPEC §18), kept in memory by registry.
//!
//! Every read of a registry needs its `lifecycle.json` (a yanked version's header, a deleted
//! one's 410, a deprecated registry's headers), and most registries have none: the hot cache
//! holds only objects that exist, so absence is remembered here, under the hot cache's rules of
//! trust. On disk, an entry is trusted while the storage watcher saw no event since it was
//! read, the registry's directory being watched (a write of `lifecycle.json` is a rename into
//! that directory, an operator's edit a change in it: both are events); in a bucket, for
//! [`Storage::revalidate_after`] (`STORAGE_REVALIDATE_MS`); elsewhere never. The replica that
//! changes a document drops its entry at once ([`Lifecycles::invalidate`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rack_core::lifecycle::{lifecycle_key, Lifecycle};

use crate::storage::watch::UNWATCHED;
use crate::storage::{lifecycle as stored, Storage, StorageError};

/// Registries remembered at most (the weight of each is its document's size plus this).
const ENTRY_WEIGHT: u64 = 256;
/// Bytes of documents remembered at most.
const MAX_WEIGHT: u64 = 16 * 1024 * 1024;

struct Entry {
    doc: Option<Arc<Lifecycle>>,
    size: u64,
    /// The watcher generation the entry was read in ([`UNWATCHED`]: not trusted that way).
    confirmed: u64,
    /// When it was read ([`mono_ms`]).
    checked_at: u64,
}

#[derive(Clone)]
struct Weigher;

impl quick_cache::Weighter<String, Arc<Entry>> for Weigher {
    fn weight(&self, _key: &String, e: &Arc<Entry>) -> u64 {
        ENTRY_WEIGHT + e.size
    }
}

/// Lifecycle documents by registry key, present or absent.
pub struct Lifecycles {
    inner: quick_cache::sync::Cache<String, Arc<Entry>, Weigher>,
    /// Documents read from storage (for tests: a trusted entry costs no read).
    reads: AtomicU64,
}

impl Default for Lifecycles {
    fn default() -> Lifecycles {
        Lifecycles {
            inner: quick_cache::sync::Cache::with_weighter(
                (MAX_WEIGHT / ENTRY_WEIGHT) as usize,
                MAX_WEIGHT,
                Weigher,
            ),
            reads: AtomicU64::new(0),
        }
    }
}

fn mono_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

impl Lifecycles {
    /// The document of `registry` (`None`: it has none, every version is live and the registry
    /// is not deprecated). A stored document that does not parse is an error (a 500).
    pub async fn get(
        &self,
        storage: &dyn Storage,
        registry: &str,
    ) -> Result<Option<Arc<Lifecycle>>, StorageError> {
        let key = lifecycle_key(registry);
        let watcher = storage.watcher();
        // Taken before anything is asked of storage: a change after this point bumps it.
        let generation = watcher.map_or(UNWATCHED, |w| w.sync());
        if let Some(hit) = self.inner.get(registry) {
            if generation != UNWATCHED && hit.confirmed == generation {
                return Ok(hit.doc.clone());
            }
            if let Some(window) = storage.revalidate_after(&key) {
                if mono_ms().saturating_sub(hit.checked_at) < window.as_millis() as u64 {
                    return Ok(hit.doc.clone());
                }
            }
        }
        // The directory, not the file: the file may not exist, and a watch on the directory
        // reports its creation.
        let watched = watcher.is_some_and(|w| w.watch(registry));
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (doc, size) = match storage.get(&key).await? {
            None => (None, 0),
            Some(obj) => match stored::parse(&obj.body) {
                Some(doc) => (Some(Arc::new(doc)), obj.body.len() as u64),
                None => return Err(stored::corrupt(&key)),
            },
        };
        let entry = Entry {
            doc: doc.clone(),
            size,
            confirmed: if watched { generation } else { UNWATCHED },
            checked_at: mono_ms(),
        };
        self.inner.insert(registry.to_owned(), Arc::new(entry));
        Ok(doc)
    }

    /// Forget `registry`'s document (after this process changed it).
    pub fn invalidate(&self, registry: &str) {
        self.inner.remove(registry);
    }

    /// Documents read from storage so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::Counting;
    use crate::storage::{LocalStorage, PutMode};
    use bytes::Bytes;

    #[tokio::test(flavor = "multi_thread")]
    async fn absence_is_remembered_while_the_watcher_vouches_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap().with_watcher();
        s.put(
            "@a/x/versions.json",
            Bytes::from_static(b"{\"versions\":[]}"),
            PutMode::Create,
        )
        .await
        .unwrap();
        let cache = Lifecycles::default();
        assert!(cache.get(&s, "@a/x").await.unwrap().is_none());
        let reads = cache.reads();
        for _ in 0..10 {
            assert!(cache.get(&s, "@a/x").await.unwrap().is_none());
        }
        if s.watcher().is_some() {
            assert_eq!(cache.reads(), reads, "trusted: no read per request");
        }
        // A document written by anyone (here: behind the cache's back) is seen at once.
        let doc = r#"{"yanked": {"1.0.0": {"reason": "r", "at": "2026-12-07T10:00:00Z", "by": "admin"}}}"#;
        s.put("@a/x/lifecycle.json", Bytes::from(doc), PutMode::Create)
            .await
            .unwrap();
        let got = cache.get(&s, "@a/x").await.unwrap().expect("seen");
        assert!(got.yanked.contains_key("1.0.0"));
        // Corrupt: an error, not a guess.
        s.put(
            "@a/x/lifecycle.json",
            Bytes::from_static(b"nope"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert!(cache.get(&s, "@a/x").await.is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bucket_trusts_an_entry_for_its_revalidation_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Counting {
            trust: Some(std::time::Duration::from_millis(200)),
            ..Counting::new(LocalStorage::open(dir.path()).unwrap())
        };
        let cache = Lifecycles::default();
        assert!(cache.get(&s, "@a/x").await.unwrap().is_none());
        s.put("@a/x/lifecycle.json", Bytes::from_static(b"{}"), PutMode::Create)
            .await
            .unwrap();
        assert!(
            cache.get(&s, "@a/x").await.unwrap().is_none(),
            "within the window"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        assert!(cache.get(&s, "@a/x").await.unwrap().is_some(), "after it");
    }
}
