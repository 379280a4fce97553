//! The storage abstraction: a flat key space with `/`-separated keys, identical on disk and in a
//! bucket (SPEC §3).
//!
//! The trait is shaped after what an object store can do (get with metadata, list by prefix with
//! a delimiter and pagination, create-only put, compare-and-swap put, delete a prefix), so that
//! the local disk and an S3 bucket are interchangeable behind `Arc<dyn Storage>`. Keys are
//! validated by [`validate_key`] before any backend sees them: no backend ever resolves `..`, an
//! absolute path, a backslash or a NUL.
//!
//! The backends: [`local`] (one `rename(2)` per publish, [`watch`] and [`mapped`] for reads),
//! [`s3`] (any S3 API through `object_store`) and [`memory`] (atomic conditional writes in
//! memory, with a hook on every call: the storage contract's third backend and the world of the
//! publish protocol's simulation). Over any of them: [`publish`], the bucket publish protocol of
//! SPEC §11.2 (fenced leases on the store's clock); [`integrity`], the per-version records of
//! every file's size and hash; [`lifecycle`], the yanked, deprecated and deleted state of a
//! registry (SPEC §18) and the listing rules it imposes; [`index`], the namespace index; [`check`], `storage check` and its
//! repair that is safe while servers publish; [`contract`], the behaviour every backend shares.

pub mod check;
#[doc(hidden)]
pub mod contract;
pub mod index;
pub mod integrity;
pub mod lifecycle;
pub mod local;
pub mod mapped;
pub mod memory;
pub mod publish;
pub mod s3;
pub mod watch;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalStorage;

/// Metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// An opaque version tag that changes whenever the object changes (file identity and
    /// modification time on disk, the ETag in a bucket). Used for compare-and-swap and cache
    /// validation; not a content hash.
    pub version: String,
    /// When the object was last written, in Unix milliseconds on the *store's* clock (the
    /// bucket's `Last-Modified`, the file's mtime), where the backend knows it. Publish leases
    /// expire by it (SPEC §11.2), never by a replica's own clock.
    pub modified_ms: Option<i64>,
}

/// An object with its bytes.
#[derive(Debug, Clone)]
pub struct Object {
    pub meta: ObjectMeta,
    pub body: Bytes,
}

/// An object read as a stream of chunks (for objects too large to hold whole; SPEC §11.3). The
/// metadata is that of the object being read (on disk: of the opened file), so a reader can
/// tell whether it is still the version it expects.
pub struct ObjectStream {
    pub meta: ObjectMeta,
    pub body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
}

/// What [`Storage::get_up_to`] found.
#[derive(Debug)]
pub enum Fetched {
    /// The object, whole.
    Whole(Object),
    /// The object, whole, its body a leased memory map of the file ([`mapped`]): it costs the
    /// process a few hundred bytes, not its length.
    Mapped(Object),
    /// The object is larger than asked for: its metadata only.
    TooLarge(ObjectMeta),
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects directly under the prefix (or at any depth, without a delimiter), sorted by key.
    pub objects: Vec<ObjectMeta>,
    /// With a delimiter: the "sub-directories", each ending in `/`, sorted.
    pub prefixes: Vec<String>,
    /// Pass back as `start_after` to get the next page.
    pub next: Option<String>,
}

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists (create-only).
    Create,
    /// Compare-and-swap: succeed only if the current object has this version
    /// ([`StorageError::PreconditionFailed`] otherwise).
    IfVersion(String),
}

/// At most this many bytes of a key go into an error message (and so into a log line): keys
/// come from request paths, and a 5,000-byte path must not become a 5,000-byte ERROR line.
pub const MAX_LOGGED_KEY: usize = 256;

/// `s` cut to at most `max` bytes (on a character boundary), with an ellipsis and the full
/// length when something was cut.
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len()).into()
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage key {:?}", bounded(.0, MAX_LOGGED_KEY))]
    InvalidKey(String),
    #[error("object {:?} already exists", bounded(.0, MAX_LOGGED_KEY))]
    AlreadyExists(String),
    #[error("object {:?} changed concurrently", bounded(.0, MAX_LOGGED_KEY))]
    PreconditionFailed(String),
    #[error("storage I/O error on {:?}: {source}", bounded(.key, MAX_LOGGED_KEY))]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The storage root or its `.healthcheck` marker is gone: nothing may be written (a
    /// publish into a re-created empty root would be lost, or mixed into the wrong tree).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {}", bounded(.0, 4 * MAX_LOGGED_KEY))]
    Backend(String),
    /// A publish stopped because it may have lost its lease, or found another publisher's
    /// object where only its own may be (SPEC §11.2 step 4): nothing of it is visible, and a
    /// retry may succeed (503 with `Retry-After`).
    #[error("publish fenced off: {}", bounded(.0, 4 * MAX_LOGGED_KEY))]
    Fenced(String),
    /// A publish failed after its `registry.json` was (or may have been) written: the version
    /// is visible, so nothing is removed; its lease is kept, and the sweep lists and announces
    /// it once the lease expires (SPEC §11.2). 503: a retry answers 409.
    #[error("published, listing pending: {}", bounded(.0, 4 * MAX_LOGGED_KEY))]
    Pending(String),
}

/// Every regular file under a local directory, as `/`-separated relative paths, sorted.
pub fn staged_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                walk(&entry.path(), &child, out)?;
            } else if ft.is_file() {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out).map_err(|source| StorageError::Io {
        key: dir.display().to_string(),
        source,
    })?;
    out.sort();
    Ok(out)
}

/// Every page of a listing under `prefix`, gathered into one (`next` is `None`). For listings
/// that stay small: a version's files (bounded by the upload's entry limit), the publish leases,
/// a registry's version directories, a namespace's directories.
pub async fn list_all<S: Storage + ?Sized>(s: &S, prefix: &str, delimiter: bool) -> Result<ListPage> {
    let mut all = ListPage::default();
    let mut start: Option<String> = None;
    loop {
        let page = s.list(prefix, delimiter, start.as_deref(), 1000).await?;
        all.objects.extend(page.objects);
        all.prefixes.extend(page.prefixes);
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(all),
        }
    }
}

/// [`Storage::find_marked_dirs`] by delimited listings: one list call per directory (the default,
/// and the fallback of backends that keep an index).
pub async fn walk_marked_dirs<S: Storage + ?Sized>(
    s: &S,
    prefix: &str,
    marker: &str,
    descend: DirFilter,
) -> Result<Option<Arc<[String]>>> {
    // The walk itself is the core's (shared with the edge Worker); this feeds it pages.
    let mut walk = Walk::new(prefix, marker, descend);
    while let Some(dir) = walk.next_dir() {
        let mut start: Option<String> = None;
        loop {
            let page = s.list(&dir, true, start.as_deref(), 1000).await?;
            walk.page(
                &dir,
                page.objects.iter().map(|o| o.key.as_str()),
                page.prefixes.iter().map(String::as_str),
            );
            match page.next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
    }
    Ok(walk.finish().map(Arc::from))
}

/// Which sub-directories a search descends into (by name).
pub use rack_core::listing::DirFilter;
use rack_core::listing::Walk;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Validate a key (or a prefix ending in `/`): relative, `/`-separated, no empty, `.` or `..`
/// segment, no backslash or NUL. Every key from a request or an archive passes here before it
/// touches a backend.
pub fn validate_key(key: &str) -> Result<()> {
    // One pass over the bytes: this runs on every storage call, reads included.
    let body = key.strip_suffix('/').unwrap_or(key).as_bytes();
    let segment_ok = |s: &[u8]| !s.is_empty() && s != b"." && s != b"..";
    let mut ok = true;
    let mut start = 0;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'\\' | 0 => ok = false,
            b'/' => {
                ok &= segment_ok(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if ok && segment_ok(&body[start..]) {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_owned()))
    }
}

/// Validate a listing prefix: empty (the root), or a valid key ending in `/`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.ends_with('/') {
        return Err(StorageError::InvalidKey(prefix.to_owned()));
    }
    validate_key(prefix)
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The object at `key`, or `None`.
    async fn get(&self, key: &str) -> Result<Option<Object>>;

    /// The object at `key` as a stream of chunks, or `None`. Memory stays bounded by the chunk
    /// size whatever the object's size. The default reads the object whole (for backends
    /// without a better way).
    async fn get_stream(&self, key: &str) -> Result<Option<ObjectStream>> {
        Ok(self.get(key).await?.map(|o| ObjectStream {
            meta: o.meta,
            body: Box::pin(futures::stream::once(async move { Ok(o.body) })),
        }))
    }

    /// The object at `key` if it is at most `limit` bytes, else only its metadata; `None` if
    /// absent. The read of a cache miss: one operation where a `head` then a `get` would be two.
    async fn get_up_to(&self, key: &str, limit: u64) -> Result<Option<Fetched>> {
        match self.head(key).await? {
            None => Ok(None),
            Some(meta) if meta.size > limit => Ok(Some(Fetched::TooLarge(meta))),
            Some(_) => Ok(self.get(key).await?.map(Fetched::Whole)),
        }
    }

    /// The metadata of the object at `key`, or `None`.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// List keys starting with `prefix` (empty for the root; otherwise ending in `/`). With
    /// `delimiter`, keys below a further `/` are rolled up into `prefixes`. Results are sorted by
    /// key; at most `limit` entries (objects plus prefixes) per page, after `start_after`.
    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage>;

    /// Write an object according to `mode`; returns the new metadata.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<ObjectMeta>;

    /// Delete every object under `prefix` (ending in `/`) or the single object `prefix`;
    /// returns how many objects were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    /// The "directories" under `prefix` (ending in `/`) that hold an object named `marker`,
    /// searched at any depth but only through sub-directories whose name passes `descend`.
    /// Results are relative to `prefix`, without trailing `/`, sorted. `None` when nothing at all
    /// is stored under `prefix`. (Shared, so that an unchanged result can be recognized by
    /// pointer and its rendering reused.)
    ///
    /// The default walks with delimited listings; backends override it when they can do better.
    async fn find_marked_dirs(
        &self,
        prefix: &str,
        marker: &str,
        descend: DirFilter,
    ) -> Result<Option<Arc<[String]>>> {
        walk_marked_dirs(self, prefix, marker, descend).await
    }

    /// Make a staged version directory visible at `dest` (a key prefix without trailing `/`)
    /// all at once; [`StorageError::AlreadyExists`] if a version of equal precedence is
    /// already there or being published.
    ///
    /// Object stores run the lease protocol of SPEC §11.2 ([`publish::publish_dir`]), which
    /// lists the version itself and tells `announce` once it is listed
    /// ([`publish_lists_version`](Storage::publish_lists_version) is then `true`). The local
    /// disk makes it one `rename(2)` and leaves listing and announcing to the caller.
    async fn publish_dir(&self, staged: &Path, dest: &str, announce: &dyn publish::Announce) -> Result<()>;

    /// The store's clock, in Unix milliseconds: what publish leases expire by (SPEC §11.2).
    /// A bucket answers from the `Date` of its own responses; the default (a local disk, where
    /// the store is this machine) is the system clock.
    async fn store_now_ms(&self) -> Result<i64> {
        Ok(crate::clock::now_ms())
    }

    /// Whether [`publish_dir`](Storage::publish_dir) also adds the version to `versions.json`
    /// (the bucket's lease protocol, SPEC §11.2), so the caller need not rebuild it.
    fn publish_lists_version(&self) -> bool {
        false
    }

    /// The publish protocol's timings, on a backend that runs it ([`publish`]): what a deletion
    /// needs to take a version's lease (SPEC §18). `None` on the local disk.
    fn publish_timing(&self) -> Option<publish::Timing> {
        None
    }

    /// `Ok` when writes can be accepted now; [`StorageError::Unavailable`] when the storage is
    /// gone (a local root removed while running). Asked before an upload stages anything.
    async fn check_writable(&self) -> Result<()> {
        Ok(())
    }

    /// A short description for logs (`local:/srv/rack`, `s3://bucket`).
    fn describe(&self) -> String;

    /// How long the hot cache may serve an entry for `key` it confirmed current without asking
    /// the backend again (SPEC §11.3: a bucket revalidates mutable objects at most once per
    /// `STORAGE_REVALIDATE_MS` and a version's files once a minute). `None`: ask on every read
    /// (unless the [`watcher`](Storage::watcher) vouches for it), as the local disk does.
    fn revalidate_after(&self, _key: &str) -> Option<std::time::Duration> {
        None
    }

    /// The backend's change watcher, if it has one ([`watch`]): the hot cache may then trust
    /// an entry without asking the backend, as long as the watcher saw no change.
    fn watcher(&self) -> Option<&watch::Watcher> {
        None
    }
}

/// Test doubles over the real local backend.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The local backend counting the calls that ask it something (`head`, `list`), and
    /// answering as a bucket would where asked: `trust` for `revalidate_after`, `bucket` for
    /// `publish_lists_version`.
    pub struct Counting {
        pub inner: LocalStorage,
        pub heads: AtomicUsize,
        pub lists: AtomicUsize,
        pub trust: Option<std::time::Duration>,
        pub bucket: bool,
    }

    impl Counting {
        pub fn new(inner: LocalStorage) -> Counting {
            Counting {
                inner,
                heads: AtomicUsize::new(0),
                lists: AtomicUsize::new(0),
                trust: None,
                bucket: false,
            }
        }

        /// `head` and `list` calls so far.
        pub fn asked(&self) -> usize {
            self.heads.load(Ordering::SeqCst) + self.lists.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Storage for Counting {
        async fn get(&self, key: &str) -> Result<Option<Object>> {
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.heads.fetch_add(1, Ordering::SeqCst);
            self.inner.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            delimiter: bool,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<ListPage> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list(prefix, delimiter, start_after, limit).await
        }
        async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<ObjectMeta> {
            self.inner.put(key, body, mode).await
        }
        async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
            self.inner.delete_prefix(prefix).await
        }
        async fn publish_dir(
            &self,
            staged: &Path,
            dest: &str,
            announce: &dyn publish::Announce,
        ) -> Result<()> {
            self.inner.publish_dir(staged, dest, announce).await
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn watcher(&self) -> Option<&watch::Watcher> {
            self.inner.watcher()
        }
        fn revalidate_after(&self, _key: &str) -> Option<std::time::Duration> {
            self.trust
        }
        fn publish_lists_version(&self) -> bool {
            self.bucket
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys_that_could_escape_or_alias_are_refused() {
        for ok in [
            "a",
            "a/b",
            "a/b/",
            "@ns/x/1.0.0/registry.json",
            "...",
            ".a/b",
            "a/..b",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "", "/", "/a", "a//b", "a/./b", "a/../b", "..", ".", "a/..", "a\\b", "a\0b", "a//",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_carry_a_bounded_prefix_of_the_key() {
        let long = format!("@ns/{}", "é".repeat(3000));
        let shown = super::StorageError::InvalidKey(long.clone()).to_string();
        assert!(shown.len() < 400, "{}", shown.len());
        assert!(shown.contains(&long[..100]));
        assert!(shown.contains(&format!("({} bytes)", long.len())));
        let io = super::StorageError::Io {
            key: long.clone(),
            source: std::io::ErrorKind::Other.into(),
        };
        assert!(!io.to_string().contains(&long));
        assert_eq!(super::bounded("short", 256), "short");
    }
}
