//! Open descriptors of small files recently read from the local backend, so that a read that
//! misses the hot cache costs one `pread` instead of `openat2`, `statx`, `read` and `close`
//! (nginx's `open_file_cache` does the same for it).
//!
//! The hot cache holds what fits its byte budget; when reads spread over more files than that
//! (a fleet of clients fetching many templates), about half of them miss it, and the path walk
//! of `openat2` with its `close` was the largest part of a miss's cost (docs/PERFORMANCE.md).
//! A descriptor costs no memory to speak of, only one of the process's file descriptors, so
//! this cache is bounded by a count (`OPEN_FILE_CACHE`), taken out of the descriptor budget
//! beside the connections (see `config::fd_budget`).
//!
//! Trust is the hot cache's: a descriptor is used only while the storage watcher's generation
//! is the one read before the file was opened, with the file and every directory above it
//! watched. Any change under a watched path bumps the generation, after which every held
//! descriptor is closed at the next read (so that a deleted file's blocks are freed, and a
//! replaced file is opened anew by path). Without a watcher nothing is held.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::ObjectMeta;

/// Files above this size are not held: they are few next to templates, and a held descriptor
/// of a deleted file keeps its blocks allocated until the next read closes it.
pub const MAX_HELD_SIZE: u64 = super::local::INLINE_READ_MAX;

pub struct OpenFiles {
    inner: quick_cache::sync::Cache<Box<str>, Arc<Held>>,
    /// The watcher generation the held descriptors were opened in.
    generation: AtomicU64,
    /// Reads served from a held descriptor (for tests and diagnostics).
    hits: AtomicU64,
}

pub struct Held {
    file: File,
    pub meta: ObjectMeta,
    generation: u64,
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFiles").field("held", &self.inner.len()).finish()
    }
}

impl OpenFiles {
    /// A cache of at most `capacity` descriptors, or `None` for 0 (nothing held).
    pub fn new(capacity: usize) -> Option<OpenFiles> {
        (capacity > 0).then(|| OpenFiles {
            inner: quick_cache::sync::Cache::new(capacity),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// Close every descriptor opened before `generation` (the watcher's, just synced) if it is
    /// new. Called on every read before [`OpenFiles::get`].
    pub fn observe(&self, generation: u64) {
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            self.inner.clear();
        }
    }

    /// The held file of `key`, if it was opened in `generation`.
    pub fn get(&self, key: &str, generation: u64) -> Option<Arc<Held>> {
        let held = self.inner.get(key).filter(|h| h.generation == generation);
        if held.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// Reads served from a held descriptor so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Hold `file` (opened after `generation` was read, with its watches in place).
    pub fn insert(&self, key: &str, file: File, meta: ObjectMeta, generation: u64) {
        if meta.size <= MAX_HELD_SIZE {
            let held = Held {
                file,
                meta,
                generation,
            };
            self.inner.insert(key.into(), Arc::new(held));
        }
    }

    /// How many descriptors are held (for tests).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl Held {
    /// The whole file, with positioned reads (the descriptor is shared between threads, so its
    /// offset is never used). `None` if it is shorter than when it was opened, which a watched
    /// file cannot be without a new generation; the caller then opens it by path.
    pub fn read(&self) -> std::io::Result<Option<Bytes>> {
        let size = self.meta.size as usize;
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            let at = buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::storage::{Fetched, LocalStorage, PutMode, Storage};

    async fn read(s: &LocalStorage, key: &str) -> Option<Bytes> {
        match s.get_up_to(key, u64::MAX).await.unwrap()? {
            Fetched::Whole(o) => Some(o.body),
            Fetched::TooLarge(_) => panic!("{key} read whole"),
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_held_descriptor_serves_the_next_read_and_never_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap().with_watcher().hold_open(16);
        assert!(s.watcher().is_some(), "the test directory is on a local filesystem");
        let root = s.root().to_owned();
        let key = "@a/r/1.0.0/templates/a.ts";
        s.put(key, Bytes::from_static(b"one"), PutMode::Create).await.unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "one");
        assert_eq!(s.held_open(), 1);
        assert_eq!(s.held_hits(), 0);
        assert_eq!(read(&s, key).await.unwrap(), "one");
        assert_eq!(s.held_hits(), 1, "the second read used the held descriptor");

        // Edited in place (same inode, same size): read anew, not from the old descriptor's
        // view of a size it no longer has, nor skipped.
        std::fs::write(root.join(key), b"two").unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "two");
        // Replaced by a rename (a new inode under the same name): the held descriptor points
        // at the old file and must not be used.
        let tmp = root.join("@a/r/1.0.0/templates/.new");
        std::fs::write(&tmp, b"three, longer").unwrap();
        std::fs::rename(&tmp, root.join(key)).unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "three, longer");
        assert_eq!(read(&s, key).await.unwrap(), "three, longer");
        // Removed: gone at once, and its descriptor closed.
        std::fs::remove_file(root.join(key)).unwrap();
        assert_eq!(read(&s, key).await, None);
        assert_eq!(s.held_open(), 0, "a change closes the held descriptors");
        // The registry directory swapped for another by `mv`.
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("1.0.0/templates")).unwrap();
        std::fs::write(other.join("1.0.0/templates/a.ts"), b"swapped").unwrap();
        s.put(key, Bytes::from_static(b"before"), PutMode::Create).await.unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "before");
        assert_eq!(read(&s, key).await.unwrap(), "before");
        std::fs::rename(root.join("@a/r"), dir.path().join("old")).unwrap();
        std::fs::rename(&other, root.join("@a/r")).unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "swapped");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn held_descriptors_stay_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap().with_watcher().hold_open(16);
        let key = |i: usize| format!("@a/r/1.0.0/templates/f-{i:03}.ts");
        for i in 0..200 {
            s.put(&key(i), Bytes::from(vec![b'x'; 100]), PutMode::Create).await.unwrap();
        }
        // Writes through this storage changed the tree: settle the generation first.
        read(&s, &key(0)).await.unwrap();
        let before = open_fds();
        for round in 0..3 {
            for i in 0..200 {
                assert_eq!(read(&s, &key(i)).await.unwrap().len(), 100, "round {round}");
            }
        }
        assert!(s.held_open() <= 16, "{} held", s.held_open());
        let after = open_fds();
        assert!(after <= before + 16, "fds went from {before} to {after}");
        // Large files are never held.
        let big = "@a/r/1.0.0/templates/big.bin";
        let size = super::MAX_HELD_SIZE as usize + 1;
        s.put(big, Bytes::from(vec![b'y'; size]), PutMode::Create).await.unwrap();
        let held = s.held_open();
        assert_eq!(read(&s, big).await.unwrap().len(), size);
        assert!(s.held_open() <= held.max(1));
    }

    #[tokio::test]
    async fn nothing_is_held_without_a_watcher_or_with_zero() {
        let dir = tempfile::tempdir().unwrap();
        let key = "@a/r/1.0.0/registry.json";
        for s in [
            LocalStorage::open(dir.path()).unwrap().hold_open(16),
            LocalStorage::open(dir.path()).unwrap().with_watcher().hold_open(0),
        ] {
            s.put(key, Bytes::from_static(b"{}"), PutMode::Overwrite).await.unwrap();
            assert_eq!(read(&s, key).await.unwrap(), "{}");
            assert_eq!(read(&s, key).await.unwrap(), "{}");
            assert_eq!(s.held_open(), 0);
        }
    }
}
