//! The hot-object cache (SPEC §9): small objects with their ETag and compressed variants, so a
//! hot read does no disk read and no compression work.
//!
//! It never serves stale data: a read uses a cached entry only if it knows the stored object is
//! still that version. Either the storage's change watcher saw no change since the entry was
//! confirmed (local disk with inotify, see [`crate::storage::watch`]), or storage is asked for the
//! object's current version (a `stat` on local disk: file identity, size and mtime; an ETag in a
//! bucket). A publish or an operator's edit therefore shows on the very next request. Bounded by
//! total bytes (`quick_cache`, weighted by body size).
//!
//! Objects above [`MAX_CACHED_OBJECT`] are never held whole: [`HotCache::lookup`] answers
//! [`Found::Large`] with their metadata, and [`large`] streams them, remembers their ETags and
//! keeps a bounded tier of their compressed forms, made in the background.

pub mod large;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use http::HeaderValue;

use rack_core::layout::VersionsFile;

use crate::compression::{compress, Encoding};
use crate::storage::mapped::MAP_CHARGE;
use crate::storage::watch::UNWATCHED;
use crate::storage::{Fetched, Object, Storage, StorageError};
use rack_core::etag::{etag_of, with_suffix};

/// Objects larger than this are never cached whole (they are streamed from storage).
pub const MAX_CACHED_OBJECT: usize = 256 * 1024;

/// Once the cache is full, an object enters it only at its this-many-th miss since it last did
/// (see [`HotCache::admit`]).
pub const ADMIT_AFTER_MISSES: u32 = 4;

/// Variants of bodies up to this size are compressed on the connection's thread (well under a
/// millisecond at the levels used); larger ones on the blocking pool.
pub const INLINE_COMPRESS_MAX: usize = 16 * 1024;

/// What [`HotCache::lookup`] found.
pub enum Found {
    /// A small object, whole, with its ETag and variants.
    Small(Arc<Cached>),
    /// An object above [`MAX_CACHED_OBJECT`]: only its current metadata.
    Large(crate::storage::ObjectMeta),
}

/// An object ready to be served: bytes, strong ETag, lazily computed compressed variants.
pub struct Cached {
    pub version: String,
    pub body: Bytes,
    pub etag: String,
    /// The identity `ETag` header value (built once, cloned per reply).
    etag_header: OnceLock<HeaderValue>,
    /// What only some entries ever need, allocated on first use: most objects are only ever
    /// served identity, and a smaller entry leaves more of the cache's budget to bodies (the
    /// entry was 480 bytes with these inline, 200 without).
    extra: OnceLock<Box<Extra>>,
    /// The storage watcher's generation in which this entry was last known current, with
    /// watches in place ([`UNWATCHED`]: never trusted without asking storage).
    confirmed: AtomicU64,
    /// When storage last confirmed this entry ([`mono_ms`]), for backends that let the cache
    /// trust an entry for a while ([`Storage::revalidate_after`]: buckets).
    checked_at: AtomicU64,
    /// Bytes of body and computed variants charged to the hot cache ([`Weigher`]). Changed only
    /// under the cache's lock ([`Cached::charge_variants`]), as its accounting requires.
    charged: AtomicU64,
    /// The cache holding this entry and its key there, so that a variant computed later is
    /// charged to the cache's budget.
    home: OnceLock<(Weak<Inner>, Arc<str>)>,
    /// The body is a leased memory map of the file ([`crate::storage::mapped`]): the page cache
    /// holds it, and the cache is charged [`MAP_CHARGE`] for it instead of its length.
    mapped: bool,
}

/// The rarer parts of a [`Cached`].
#[derive(Default)]
struct Extra {
    /// Compressed bodies, one per encoding.
    variants: [OnceLock<Bytes>; 3],
    /// Their `ETag` header values.
    etag_headers: [OnceLock<HeaderValue>; 3],
    /// For a `versions.json`: its parsed form, so that *latest* does not parse it per request.
    versions: OnceLock<Option<VersionsFile>>,
}

/// Milliseconds on a monotonic clock (since its first use in this process).
fn mono_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

impl Cached {
    pub fn new(obj: Object) -> Cached {
        Cached::from_bytes(obj.body, obj.meta.version)
    }

    pub fn from_bytes(body: Bytes, version: String) -> Cached {
        let etag = etag_of(&body);
        Cached::with_etag(body, version, etag)
    }

    /// An object whose tag is already known (see [`TagMemo`]).
    pub fn with_etag(body: Bytes, version: String, etag: String) -> Cached {
        Cached {
            etag,
            version,
            body,
            etag_header: OnceLock::new(),
            extra: OnceLock::new(),
            confirmed: AtomicU64::new(UNWATCHED),
            checked_at: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            home: OnceLock::new(),
            mapped: false,
        }
    }

    /// The rarer parts, allocated (and charged to the cache) on first use.
    fn extra(&self) -> &Extra {
        if let Some(x) = self.extra.get() {
            return x;
        }
        let x = self.extra.get_or_init(Box::default);
        self.charge_variants();
        x
    }

    /// Body, computed variants and their holder, in bytes.
    fn held_bytes(&self) -> u64 {
        let extra = self.extra.get().map_or(0, |x| {
            let variants: usize = x.variants.iter().filter_map(|v| v.get()).map(Bytes::len).sum();
            variants + std::mem::size_of::<Extra>()
        });
        let body = if self.mapped {
            MAP_CHARGE
        } else {
            self.body.len() as u64
        };
        body + extra as u64
    }

    /// Charge a newly computed variant to the cache holding this entry (if it still does). A
    /// weight taken only at insertion would have to guess the variants in advance: an
    /// allowance for them, paid by every entry, held a third fewer objects in the cache.
    fn charge_variants(&self) {
        let Some((cache, key)) = self.home.get() else {
            return;
        };
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let me: *const Cached = self;
        let held_here = |v: &Arc<Cached>| std::ptr::eq(Arc::as_ptr(v), me);
        // `peek` first: `entry` on an absent key would leave a placeholder to clean up.
        if !cache.peek(&**key).is_some_and(|v| held_here(&v)) {
            return;
        }
        // The cache weighs the entry before and after this call, under its shard lock.
        let _ = cache.entry(key, Some(std::time::Duration::ZERO), |_, v| {
            if held_here(v) {
                v.charged.store(v.held_bytes(), Ordering::Relaxed);
            }
            quick_cache::sync::EntryAction::Retain(())
        });
    }

    /// The body parsed as `versions.json` (parsed once per cached object; `None` if corrupt).
    pub fn versions_file(&self) -> Option<&VersionsFile> {
        self.extra()
            .versions
            .get_or_init(|| VersionsFile::parse(&self.body))
            .as_ref()
    }

    /// The `ETag` of the representation in `enc` (`None`: identity).
    pub fn etag_header(&self, enc: Option<Encoding>) -> HeaderValue {
        let slot = match enc {
            None => &self.etag_header,
            Some(e) => &self.extra().etag_headers[e.index()],
        };
        slot.get_or_init(|| {
            HeaderValue::from_str(&with_suffix(&self.etag, enc.map(Encoding::etag_suffix)))
                .expect("hex is a valid header value")
        })
        .clone()
    }

    /// The body in `enc`, compressed on first use and kept.
    pub fn encoded(&self, enc: Encoding) -> Bytes {
        let mut made = false;
        let out = self.extra().variants[enc.index()]
            .get_or_init(|| {
                made = true;
                Bytes::from(compress(enc, &self.body))
            })
            .clone();
        if made {
            self.charge_variants();
        }
        out
    }

    /// The body in `enc` if it was already compressed.
    pub fn encoded_if_ready(&self, enc: Encoding) -> Option<Bytes> {
        self.extra
            .get()
            .and_then(|x| x.variants[enc.index()].get().cloned())
    }

    /// The body in `enc`, compressed off the connection's thread when it is large enough for
    /// that to matter (SPEC §9: compression never stalls the other connections of a worker).
    pub async fn encoded_off_thread(self: &Arc<Self>, enc: Encoding) -> Bytes {
        if let Some(ready) = self.encoded_if_ready(enc) {
            return ready;
        }
        if self.body.len() <= INLINE_COMPRESS_MAX {
            return self.encoded(enc);
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.encoded(enc)).await {
            Ok(b) => b,
            // Only if the runtime is shutting down; compress here rather than fail.
            Err(_) => self.encoded(enc),
        }
    }
}

#[derive(Clone)]
struct Weigher;

/// What an entry holds besides its key, body and variants: the [`Cached`] itself and its
/// small allocations (version, ETag, header values), and the cache's own slot.
const ENTRY_OVERHEAD: u64 = std::mem::size_of::<Cached>() as u64 + 256;

impl quick_cache::Weighter<Arc<str>, Arc<Cached>> for Weigher {
    fn weight(&self, key: &Arc<str>, val: &Arc<Cached>) -> u64 {
        // What is held now: variants are charged when computed ([`Cached::charge_variants`]).
        key.len() as u64 + val.charged.load(Ordering::Relaxed) + ENTRY_OVERHEAD
    }
}

type Inner = quick_cache::sync::Cache<Arc<str>, Arc<Cached>, Weigher>;

pub struct HotCache {
    inner: Arc<Inner>,
    /// The cache's capacity in bytes (asking `quick_cache` locks every shard).
    capacity: u64,
    /// Room left before the cache counts as full for [`HotCache::admit`], and when that was
    /// last measured ([`mono_ms`] + 1; 0: never).
    room: AtomicU64,
    room_at: AtomicU64,
    /// Tags of objects read before, by version: an object evicted and read again (a working
    /// set larger than the cache) is not hashed again.
    tags: TagMemo,
}

/// Strong ETags remembered per key and storage version (a few hundred bytes an entry, so many
/// more than the objects the cache can hold). A version names one content (on disk: file
/// identity, size and modification time to the nanosecond; in a bucket: the ETag), which is
/// what the hot cache already trusts to reuse a whole entry.
pub struct TagMemo {
    inner: quick_cache::sync::Cache<String, Arc<Remembered>>,
}

struct Remembered {
    version: String,
    tag: String,
    /// Misses of the hot cache on this object since it last entered it ([`HotCache::admit`]).
    misses: AtomicU32,
    /// The watcher's [`epoch`](crate::storage::watch::Watcher::epoch) in which this key was
    /// last found watched ([`UNWATCHED`]: not known to be).
    watched_in: AtomicU64,
}

impl TagMemo {
    pub fn new(entries: usize) -> TagMemo {
        TagMemo {
            inner: quick_cache::sync::Cache::new(entries.max(16)),
        }
    }

    /// The tag of `key` at `version`, if remembered.
    pub fn get(&self, key: &str, version: &str) -> Option<String> {
        self.remembered(key, version).map(|r| r.tag.clone())
    }

    fn remembered(&self, key: &str, version: &str) -> Option<Arc<Remembered>> {
        self.inner.get(key).filter(|r| r.version == version)
    }

    /// Whatever is remembered of `key`, at any version.
    fn any(&self, key: &str) -> Option<Arc<Remembered>> {
        self.inner.get(key)
    }

    pub fn insert(&self, key: &str, version: &str, tag: &str) {
        self.remember(key, version, tag);
    }

    fn remember(&self, key: &str, version: &str, tag: &str) -> Arc<Remembered> {
        let r = Arc::new(Remembered {
            version: version.to_owned(),
            tag: tag.to_owned(),
            misses: AtomicU32::new(0),
            watched_in: AtomicU64::new(UNWATCHED),
        });
        self.inner.insert(key.to_owned(), r.clone());
        r
    }
}

/// Remembered tags for a cache of `max_bytes`: room for four times the objects of 4 KiB it
/// could hold, between 1,024 and 131,072 (65,536 for the default 64 MiB: about 13 MiB when
/// full, which takes that many distinct files read).
fn tag_entries(max_bytes: u64) -> usize {
    ((max_bytes / 1024) as usize).clamp(1024, 131_072)
}

impl HotCache {
    pub fn new(max_bytes: u64) -> HotCache {
        let items = (max_bytes / 4096).max(16) as usize;
        let inner = Arc::new(quick_cache::sync::Cache::with_weighter(
            items,
            max_bytes.max(1),
            Weigher,
        ));
        HotCache {
            capacity: inner.capacity(),
            inner,
            room: AtomicU64::new(0),
            room_at: AtomicU64::new(0),
            tags: TagMemo::new(tag_entries(max_bytes)),
        }
    }

    /// The current object at `key`, from the cache when it is still the stored version: known
    /// unchanged by the storage's watcher, or else confirmed by asking storage for the version.
    /// Read whole whatever its size (for the objects the server parses: `versions.json`).
    pub async fn get(&self, storage: &dyn Storage, key: &str) -> Result<Option<Arc<Cached>>, StorageError> {
        Ok(self.fetch(storage, key, false).await?.map(|found| match found {
            Found::Small(c) => c,
            Found::Large(_) => unreachable!("fetch(.., false) reads every object whole"),
        }))
    }

    /// Like [`HotCache::get`] for an object to be served: one above [`MAX_CACHED_OBJECT`] is
    /// not read, only its metadata is returned, for [`large`] to stream it.
    pub async fn lookup(&self, storage: &dyn Storage, key: &str) -> Result<Option<Found>, StorageError> {
        self.fetch(storage, key, true).await
    }

    async fn fetch(
        &self,
        storage: &dyn Storage,
        key: &str,
        stream_large: bool,
    ) -> Result<Option<Found>, StorageError> {
        let watcher = storage.watcher();
        // Taken before anything is asked of storage: a change after this point bumps it.
        let generation = watcher.map_or(UNWATCHED, |w| w.sync());
        let hit = self.inner.get(key);
        if let Some(hit) = &hit {
            if generation != UNWATCHED && hit.confirmed.load(Ordering::Acquire) == generation {
                return Ok(Some(Found::Small(hit.clone())));
            }
        }
        // A bucket's policy: an entry confirmed recently enough is served without a request.
        let trust = storage.revalidate_after(key);
        let now = trust.map(|_| mono_ms());
        if let (Some(hit), Some(window), Some(now)) = (&hit, trust, now) {
            let checked = hit.checked_at.load(Ordering::Acquire);
            if checked != 0 && now.saturating_sub(checked) < window.as_millis() as u64 {
                return Ok(Some(Found::Small(hit.clone())));
            }
        }
        // Watches go in before the stat and the read, so no change after them is missed. A
        // key the memo knows as watched in the watcher's current epoch needs no `watch`: the
        // memo is looked up on a miss anyway (here, rather than after the read, when there is
        // a watcher), and this saves a second cold lookup of the key.
        let known = watcher.and_then(|_| self.tags.any(key));
        let epoch = watcher.map_or(UNWATCHED, |w| w.epoch());
        let watched = watcher.is_some_and(|w| {
            known
                .as_ref()
                .is_some_and(|r| r.watched_in.load(Ordering::Acquire) == epoch)
                || w.watch(key)
        });
        let confirmed = if watched { generation } else { UNWATCHED };
        // A cached entry is confirmed by its version (a `stat` on disk); a miss reads at once
        // (one storage operation, not a `stat` and then a read).
        let replacing = hit.is_some();
        if let Some(hit) = hit {
            let Some(meta) = storage.head(key).await? else {
                self.inner.remove(key);
                return Ok(None);
            };
            if hit.version == meta.version {
                hit.confirmed.store(confirmed, Ordering::Release);
                if let Some(now) = now {
                    hit.checked_at.store(now.max(1), Ordering::Release);
                }
                return Ok(Some(Found::Small(hit)));
            }
        }
        let limit = if stream_large {
            MAX_CACHED_OBJECT as u64
        } else {
            u64::MAX
        };
        let (obj, mapped) = match storage.get_up_to(key, limit).await? {
            None => {
                self.inner.remove(key);
                return Ok(None);
            }
            Some(Fetched::TooLarge(meta)) => {
                self.inner.remove(key);
                return Ok(Some(Found::Large(meta)));
            }
            Some(Fetched::Whole(obj)) => (obj, false),
            Some(Fetched::Mapped(obj)) => (obj, true),
        };
        let known = if watcher.is_some() {
            known
        } else {
            self.tags.any(key)
        };
        let remembered = match known.filter(|r| r.version == obj.meta.version) {
            Some(r) => r,
            None => self.tags.remember(key, &obj.meta.version, &etag_of(&obj.body)),
        };
        if watched {
            remembered.watched_in.store(epoch, Ordering::Release);
        }
        let misses = remembered.misses.fetch_add(1, Ordering::Relaxed) + 1;
        let etag = remembered.tag.clone();
        let mut cached = Cached::with_etag(obj.body, obj.meta.version, etag);
        cached.mapped = mapped;
        let cached = Arc::new(cached);
        cached.confirmed.store(confirmed, Ordering::Release);
        if let Some(now) = now {
            cached.checked_at.store(now.max(1), Ordering::Release);
        }
        if cached.body.len() <= MAX_CACHED_OBJECT && self.admit(replacing, misses, &cached) {
            remembered.misses.store(0, Ordering::Relaxed);
            let key: Arc<str> = Arc::from(key);
            cached.charged.store(cached.held_bytes(), Ordering::Relaxed);
            let _ = cached.home.set((Arc::downgrade(&self.inner), key.clone()));
            self.inner.insert(key, cached.clone());
        }
        Ok(Some(Found::Small(cached)))
    }

    /// Whether a missed object enters the cache: always while there is room, or when it
    /// replaces an older version of itself; once the cache is full, only at its
    /// [`ADMIT_AFTER_MISSES`]-th miss since it last entered. Admitting every miss into a full
    /// cache evicts an entry as likely to be asked for as the newcomer when reads spread over
    /// more objects than fit (and one-off reads push out the hot set): the hit rate stays the
    /// same and every miss pays for an eviction, with memory gone cold. Objects asked for often
    /// still get in after a few misses. (TinyLFU in the spirit, with the remembered tags as
    /// the frequency record; `quick_cache` has no admission hook.)
    fn admit(&self, replacing: bool, misses: u32, cached: &Cached) -> bool {
        // A map costs less to keep than to make again (and unmap): it always enters.
        if replacing || misses >= ADMIT_AFTER_MISSES || cached.mapped {
            return true;
        }
        let weight = cached.body.len() as u64 + ENTRY_OVERHEAD;
        // A full cache stays full between two measures but for removals, so "no room" is
        // trusted for a millisecond: the measure sums the weights of every shard under its
        // lock (four shards per CPU), which every miss of a full cache used to pay. Room is
        // always measured afresh before it is used.
        let now = mono_ms() + 1;
        if self.room_at.load(Ordering::Acquire) == now && self.room.load(Ordering::Relaxed) < weight {
            return false;
        }
        // "Full" leaves a sixteenth of slack: the cache evicts per shard, and its shards do
        // not fill evenly.
        let room = (self.capacity - self.capacity / 16).saturating_sub(self.inner.weight());
        self.room.store(room, Ordering::Relaxed);
        self.room_at.store(now, Ordering::Release);
        weight <= room
    }

    /// Drop an entry (after a write this process made).
    pub fn invalidate(&self, key: &str) {
        self.inner.remove(key);
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Bytes charged to the cache's budget (for tests and diagnostics).
    pub fn weight(&self) -> u64 {
        self.inner.weight()
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
    use crate::storage::testing::Counting as CountingHeads;
    use crate::storage::{LocalStorage, PutMode};

    #[tokio::test(flavor = "multi_thread")]
    async fn watched_hits_skip_the_stat_and_still_see_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = CountingHeads::new(LocalStorage::open(dir.path()).unwrap().with_watcher());
        assert!(
            s.watcher().is_some(),
            "the test directory is on a local filesystem"
        );
        let root = s.inner.root().to_owned();
        let cache = HotCache::new(1 << 20);
        s.put(
            "@a/x/1.0.0/registry.json",
            Bytes::from_static(b"one"),
            PutMode::Create,
        )
        .await
        .unwrap();
        let first = cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        let heads = s.heads.load(Ordering::SeqCst);
        for _ in 0..50 {
            let again = cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(
            s.heads.load(Ordering::SeqCst),
            heads,
            "watched hits ask storage nothing"
        );

        let file = root.join("@a/x/1.0.0/registry.json");
        // In place, same size, same second: no rename, only a write.
        std::fs::write(&file, b"two").unwrap();
        let edited = cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        assert_eq!(&edited.body[..], b"two");
        // The whole registry directory swapped by renames, as a deploy script would.
        std::fs::create_dir_all(root.join("staging/1.0.0")).unwrap();
        std::fs::write(root.join("staging/1.0.0/registry.json"), b"three").unwrap();
        std::fs::rename(root.join("@a/x"), root.join("old-x")).unwrap();
        std::fs::rename(root.join("staging"), root.join("@a/x")).unwrap();
        let swapped = cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        assert_eq!(&swapped.body[..], b"three");
        // The new directory is watched in turn: an edit inside it is seen, and quiet reads
        // are stat-free again.
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"four").unwrap();
        let again = cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        assert_eq!(&again.body[..], b"four");
        let heads = s.heads.load(Ordering::SeqCst);
        cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        assert_eq!(s.heads.load(Ordering::SeqCst), heads);
        // Removed: gone at once.
        std::fs::remove_dir_all(root.join("@a/x")).unwrap();
        assert!(cache.get(&s, "@a/x/1.0.0/registry.json").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_a_watcher_every_read_asks_storage() {
        let dir = tempfile::tempdir().unwrap();
        let s = CountingHeads::new(LocalStorage::open(dir.path()).unwrap());
        let cache = HotCache::new(1 << 20);
        s.put("a/b", Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        for _ in 0..5 {
            cache.get(&s, "a/b").await.unwrap().unwrap();
        }
        assert_eq!(s.heads.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_backend_policy_spares_requests_within_its_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CountingHeads {
            trust: Some(std::time::Duration::from_secs(3600)),
            ..CountingHeads::new(LocalStorage::open(dir.path()).unwrap())
        };
        let cache = HotCache::new(1 << 20);
        s.put("a/b", Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        let first = cache.get(&s, "a/b").await.unwrap().unwrap();
        for _ in 0..5 {
            let again = cache.get(&s, "a/b").await.unwrap().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(s.heads.load(Ordering::SeqCst), 1, "trusted within the window");
        // A write through this process drops the entry: seen at once.
        s.put("a/b", Bytes::from_static(b"two"), PutMode::Overwrite)
            .await
            .unwrap();
        cache.invalidate("a/b");
        assert_eq!(&cache.get(&s, "a/b").await.unwrap().unwrap().body[..], b"two");
        // Past the window, storage is asked again and a change elsewhere is seen.
        s.trust = Some(std::time::Duration::from_millis(1));
        std::fs::write(dir.path().join("a/b"), b"three").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let heads = s.heads.load(Ordering::SeqCst);
        assert_eq!(&cache.get(&s, "a/b").await.unwrap().unwrap().body[..], b"three");
        assert!(s.heads.load(Ordering::SeqCst) > heads);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_are_charged_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        let budget = 1 << 20;
        let cache = HotCache::new(budget);
        let body: Vec<u8> = (0..6144).map(|i| b"abcdefgh {}();\n"[i * 7 % 15]).collect();
        for i in 0..300 {
            let key = format!("@a/r/1.0.0/templates/f-{i:03}.ts");
            s.put(&key, Bytes::from(body.clone()), PutMode::Create)
                .await
                .unwrap();
            cache.get(&s, &key).await.unwrap().unwrap();
        }
        // Bodies fill most of the budget: no allowance is paid for variants never computed
        // (with half the body as an allowance, at most two thirds of it held bodies).
        assert!(cache.weight() <= budget);
        let bodies = cache.len() as u64 * body.len() as u64;
        assert!(
            bodies * 4 >= budget * 3,
            "{} entries hold {bodies} bytes of bodies in a budget of {budget}",
            cache.len()
        );

        // A variant is charged when it is computed, if its entry is still held.
        let key = (0..300)
            .map(|i| format!("@a/r/1.0.0/templates/f-{i:03}.ts"))
            .find(|k| cache.inner.peek(k.as_str()).is_some())
            .unwrap();
        let key = key.as_str();
        let entry = cache.get(&s, key).await.unwrap().unwrap();
        let before = cache.weight();
        let gzip = entry.encoded(Encoding::Gzip);
        assert!(!gzip.is_empty());
        // With the holder of the variants, allocated by the first one.
        let charge = gzip.len() as u64 + std::mem::size_of::<Extra>() as u64;
        assert_eq!(cache.weight(), before + charge);
        entry.encoded(Encoding::Gzip);
        assert_eq!(cache.weight(), before + charge, "charged once");
        // The accounting stays exact through removal.
        cache.invalidate(key);
        let without = cache.weight();
        assert!(without < before);
        // An entry no longer held is not charged (nor put back).
        entry.encoded(Encoding::Br);
        assert_eq!(cache.weight(), without);
        assert!(cache.inner.peek(key).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_cache_admits_what_is_asked_for_again_and_keeps_its_hot_set() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        let cache = HotCache::new(1 << 20);
        let body = Bytes::from(vec![b'x'; 6144]);
        let key = |i: usize| format!("@a/r/1.0.0/templates/f-{i:04}.ts");
        for i in 0..=1300 {
            s.put(&key(i), body.clone(), PutMode::Create).await.unwrap();
        }
        // Filled while there is room.
        for i in 0..300 {
            cache.get(&s, &key(i)).await.unwrap().unwrap();
        }
        let hot: Vec<String> = (0..300)
            .map(key)
            .filter(|k| cache.inner.peek(k.as_str()).is_some())
            .collect();
        assert!(hot.len() > 100, "{} cached", hot.len());
        // A thousand one-off reads are served and leave the hot set in place.
        for i in 300..1300 {
            let got = cache.get(&s, &key(i)).await.unwrap().unwrap();
            assert_eq!(got.body, body);
        }
        for k in &hot {
            assert!(cache.inner.peek(k.as_str()).is_some(), "{k} was pushed out");
        }
        // An object asked for again gets in at its ADMIT_AFTER_MISSES-th miss. (One not read
        // before: the miss count of an object read once above may have left the tag memo,
        // whose shards evict in an order that varies from run to run.)
        let again = key(1300);
        for _ in 1..ADMIT_AFTER_MISSES {
            cache.get(&s, &again).await.unwrap().unwrap();
            assert!(cache.inner.peek(again.as_str()).is_none());
        }
        cache.get(&s, &again).await.unwrap().unwrap();
        assert!(cache.inner.peek(again.as_str()).is_some());
        // A changed object replaces its entry at once (no stale entry is left behind).
        std::fs::write(dir.path().join(&hot[0]), b"changed").unwrap();
        let changed = cache.get(&s, &hot[0]).await.unwrap().unwrap();
        assert_eq!(&changed.body[..], b"changed");
        let held = cache.inner.peek(hot[0].as_str()).unwrap();
        assert!(Arc::ptr_eq(&held, &changed));
    }

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
