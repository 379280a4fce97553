//! The hot-object cache (SPEC §9): small objects with their ETag and compressed variants, so a
//! hot read does no disk read and no compression work.
//!
//! It never serves stale data: every read first asks storage for the object's current version
//! (a `stat` on local disk: file identity, size and mtime; an ETag in a bucket) and uses the
//! cached entry only if that version matches. A publish or an operator's edit therefore shows on
//! the very next request. Bounded by total bytes (`quick_cache`, weighted by body size).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderValue;

use rack_core::layout::VersionsFile;

use crate::compression::{compress, Encoding};
use crate::http::response::{etag_of, with_suffix};
use crate::storage::{Object, Storage, StorageError};

/// Objects larger than this are never cached (they are read from storage each time).
pub const MAX_CACHED_OBJECT: usize = 256 * 1024;

/// An object ready to be served: bytes, strong ETag, lazily computed compressed variants.
pub struct Cached {
    pub version: String,
    pub body: Bytes,
    pub etag: String,
    variants: [OnceLock<Bytes>; 3],
    /// `ETag` header values: identity, then one per encoding (built once, cloned per reply).
    etag_headers: [OnceLock<HeaderValue>; 4],
    /// For a `versions.json`: its parsed form, so that *latest* does not parse it per request.
    versions: OnceLock<Option<VersionsFile>>,
}

impl Cached {
    pub fn new(obj: Object) -> Cached {
        Cached::from_bytes(obj.body, obj.meta.version)
    }

    pub fn from_bytes(body: Bytes, version: String) -> Cached {
        Cached {
            etag: etag_of(&body),
            version,
            body,
            variants: Default::default(),
            etag_headers: Default::default(),
            versions: OnceLock::new(),
        }
    }

    /// The body parsed as `versions.json` (parsed once per cached object; `None` if corrupt).
    pub fn versions_file(&self) -> Option<&VersionsFile> {
        self.versions
            .get_or_init(|| VersionsFile::parse(&self.body))
            .as_ref()
    }

    /// The `ETag` of the representation in `enc` (`None`: identity).
    pub fn etag_header(&self, enc: Option<Encoding>) -> HeaderValue {
        let slot = enc.map_or(0, |e| e.index() + 1);
        self.etag_headers[slot]
            .get_or_init(|| {
                HeaderValue::from_str(&with_suffix(&self.etag, enc)).expect("hex is a valid header value")
            })
            .clone()
    }

    /// The body in `enc`, compressed on first use and kept.
    pub fn encoded(&self, enc: Encoding) -> Bytes {
        self.variants[enc.index()]
            .get_or_init(|| Bytes::from(compress(enc, &self.body)))
            .clone()
    }
}

#[derive(Clone)]
struct Weigher;

impl quick_cache::Weighter<String, Arc<Cached>> for Weigher {
    fn weight(&self, key: &String, val: &Arc<Cached>) -> u64 {
        // Body plus a rough allowance for key, ETag and whatever variants get computed.
        (key.len() + val.body.len() * 2 + 128) as u64
    }
}

pub struct HotCache {
    inner: quick_cache::sync::Cache<String, Arc<Cached>, Weigher>,
}

impl HotCache {
    pub fn new(max_bytes: u64) -> HotCache {
        let items = (max_bytes / 4096).max(16) as usize;
        HotCache {
            inner: quick_cache::sync::Cache::with_weighter(items, max_bytes.max(1), Weigher),
        }
    }

    /// The current object at `key`, from the cache when it is still the stored version.
    pub async fn get(&self, storage: &dyn Storage, key: &str) -> Result<Option<Arc<Cached>>, StorageError> {
        let Some(meta) = storage.head(key).await? else {
            self.inner.remove(key);
            return Ok(None);
        };
        if let Some(hit) = self.inner.get(key) {
            if hit.version == meta.version {
                return Ok(Some(hit));
            }
        }
        let Some(obj) = storage.get(key).await? else {
            self.inner.remove(key);
            return Ok(None);
        };
        let cached = Arc::new(Cached::new(obj));
        if cached.body.len() <= MAX_CACHED_OBJECT {
            self.inner.insert(key.to_owned(), cached.clone());
        }
        Ok(Some(cached))
    }

    /// Drop an entry (after a write this process made).
    pub fn invalidate(&self, key: &str) {
        self.inner.remove(key);
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// A listing result and its rendering.
type RenderedListing = (Arc<[String]>, Arc<Cached>);

/// Rendered namespace listings, reused while storage returns the very same result (the local
/// backend hands back the same shared list while its cached walk is current), so an unchanged
/// listing is not serialized, hashed and compressed again on every request.
#[derive(Default)]
pub struct ListingCache {
    inner: std::sync::Mutex<std::collections::HashMap<String, RenderedListing>>,
}

impl ListingCache {
    pub fn get_or_render(
        &self,
        ns: &str,
        found: &Arc<[String]>,
        render: impl FnOnce() -> Bytes,
    ) -> Arc<Cached> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((list, cached)) = map.get(ns) {
            if Arc::ptr_eq(list, found) {
                return cached.clone();
            }
        }
        let cached = Arc::new(Cached::from_bytes(render(), String::new()));
        if map.len() >= 1024 {
            map.clear();
        }
        map.insert(ns.to_owned(), (found.clone(), cached.clone()));
        cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStorage, PutMode};

    #[tokio::test(flavor = "multi_thread")]
    async fn never_stale() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        let cache = HotCache::new(1 << 20);
        s.put("a/b", Bytes::from_static(b"one"), PutMode::Overwrite)
            .await
            .unwrap();
        let first = cache.get(&s, "a/b").await.unwrap().unwrap();
        assert_eq!(&first.body[..], b"one");
        let again = cache.get(&s, "a/b").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "second read is a hit");
        // An operator edits the file in place (same size, same inode).
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("a/b"), b"two").unwrap();
        let edited = cache.get(&s, "a/b").await.unwrap().unwrap();
        assert_eq!(&edited.body[..], b"two");
        assert_ne!(edited.etag, first.etag);
        std::fs::remove_file(dir.path().join("a/b")).unwrap();
        assert!(cache.get(&s, "a/b").await.unwrap().is_none());
        assert!(cache.is_empty());
    }
}
