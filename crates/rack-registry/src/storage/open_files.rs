//! Open descriptors of small files kept between reads (what nginx's `open_file_cache` does), for
//! the local backend with its change watcher.
//!
//! A read that misses the hot cache costs `openat2`, `fstat`, `read` and `close`; the path walk
//! of the open and the `close` were about a tenth of the server's CPU on random reads over more
//! files than the hot cache holds (docs/PERFORMANCE.md). A file found here is read with one
//! `pread` instead.
//!
//! A held descriptor is trusted exactly as the hot cache trusts an entry (see
//! [`super::watch`]): only if it was opened, with watches on the file and every directory
//! above it, in the watcher generation that is still current when the read begins. Any change
//! since (an edit, a rename anywhere on the path, a removal) bumps the generation, and the key
//! is opened by path again and its descriptor replaced. Reading through a descriptor therefore
//! never serves what a path no longer names.
//!
//! Bounded: at most [`OpenFiles::new`]'s `capacity` descriptors (sized from the process's
//! file-descriptor limit, see [`crate::config::Config::open_files`]), evicted like the hot
//! cache's entries. A held descriptor keeps a removed file's blocks allocated, so every
//! descriptor is closed when the watcher starts over after a structural change (a removal or
//! a rename is one), at the next read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::watch::Watcher;
use super::ObjectMeta;

/// A descriptor held open with what it was opened as.
pub struct Held {
    file: std::fs::File,
    pub meta: ObjectMeta,
    /// The watcher generation it was opened in (with its watches in place).
    confirmed: u64,
}

impl Held {
    /// The file's `meta.size` bytes from offset 0 (`pread`: the descriptor is shared by
    /// concurrent reads, so its file offset is never used). A file cut short meanwhile gives
    /// fewer bytes, as a plain read would; the next read sees the change and opens it again.
    pub fn read(&self) -> std::io::Result<Bytes> {
        let size = self.meta.size as usize;
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            let offset = buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), offset) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Bytes::from(buf))
    }
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFiles")
            .field("held", &self.len())
            .finish_non_exhaustive()
    }
}

pub struct OpenFiles {
    inner: quick_cache::sync::Cache<String, Arc<Held>>,
    /// The watcher's reset count ([`Watcher::resets`]) when every descriptor was last closed.
    resets: AtomicU64,
    /// Reads served through a held descriptor (for tests and diagnostics).
    reads: AtomicU64,
}

impl OpenFiles {
    /// A cache of at most `capacity` descriptors (`None` for 0: nothing is held).
    pub fn new(capacity: usize) -> Option<OpenFiles> {
        (capacity > 0).then(|| OpenFiles {
            inner: quick_cache::sync::Cache::new(capacity),
            resets: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    /// The held descriptor of `key` if it is still what `key` names: opened in `generation`,
    /// taken from `w` ([`Watcher::sync`]) before this call.
    pub fn get(&self, w: &Watcher, key: &str, generation: u64) -> Option<Arc<Held>> {
        self.close_after_reset(w);
        let held = self.inner.get(key).filter(|h| h.confirmed == generation)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Some(held)
    }

    /// Hold `file`, opened as `meta` after `generation` was taken and `key` was watched.
    pub fn insert(&self, w: &Watcher, file: std::fs::File, meta: ObjectMeta, generation: u64) {
        self.close_after_reset(w);
        let key = meta.key.clone();
        self.inner.insert(
            key,
            Arc::new(Held {
                file,
                meta,
                confirmed: generation,
            }),
        );
    }

    /// After the watcher started over, close every descriptor: each was opened in an older
    /// generation and will never be trusted again, and some may hold removed files. (One
    /// opened before the reset and inserted after it is not trusted either, and is replaced
    /// at its key's next read or evicted.)
    pub fn close_after_reset(&self, w: &Watcher) {
        let resets = w.resets();
        if self.resets.load(Ordering::Acquire) != resets {
            self.resets.store(resets, Ordering::Release);
            self.inner.clear();
        }
    }

    /// Descriptors held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Reads served through a held descriptor so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::{Fetched, LocalStorage, PutMode, Storage};
    use bytes::Bytes;

    fn storage(capacity: usize) -> (tempfile::TempDir, LocalStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path())
            .unwrap()
            .with_watcher()
            .with_open_files(capacity);
        assert!(
            s.open_files().is_some(),
            "the test directory is on a local filesystem"
        );
        (dir, s)
    }

    async fn read(s: &LocalStorage, key: &str) -> Option<Bytes> {
        match s.get_up_to(key, u64::MAX).await.unwrap()? {
            Fetched::Whole(o) => Some(o.body),
            Fetched::TooLarge(_) => panic!("{key} is small"),
        }
    }

    /// Descriptors of this process open on files under `dir` (`(deleted)` ones too).
    fn open_under(dir: &std::path::Path) -> Vec<String> {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(&dir))
            .map(|p| p.display().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn repeated_reads_go_through_the_held_descriptor_and_never_serve_a_stale_file() {
        let (dir, s) = storage(64);
        let root = dir.path().canonicalize().unwrap();
        let key = "@a/x/1.0.0/registry.json";
        s.put(key, Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        let held = s.open_files().unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "one");
        assert_eq!(held.len(), 1);
        for _ in 0..10 {
            assert_eq!(read(&s, key).await.unwrap(), "one");
        }
        assert_eq!(held.reads(), 10, "no open by path while nothing changed");

        // In place, same size: the held descriptor is not trusted past the event.
        std::fs::write(root.join(key), b"two").unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "two");
        // The file replaced by a rename: the old descriptor still names the old inode.
        std::fs::write(root.join("@a/x/1.0.0/new.json"), b"three").unwrap();
        std::fs::rename(root.join("@a/x/1.0.0/new.json"), root.join(key)).unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "three");
        // The whole registry directory swapped, as a deploy script would.
        std::fs::create_dir_all(root.join("staging/1.0.0")).unwrap();
        std::fs::write(root.join("staging/1.0.0/registry.json"), b"four").unwrap();
        std::fs::rename(root.join("@a/x"), root.join("old-x")).unwrap();
        std::fs::rename(root.join("staging"), root.join("@a/x")).unwrap();
        assert_eq!(read(&s, key).await.unwrap(), "four");
        let before = held.reads();
        assert_eq!(read(&s, key).await.unwrap(), "four");
        assert_eq!(held.reads(), before + 1, "held again once quiet");
        // Removed: gone at once, and the removed file's descriptor is closed.
        std::fs::remove_dir_all(root.join("@a/x")).unwrap();
        std::fs::remove_dir_all(root.join("old-x")).unwrap();
        assert!(read(&s, key).await.is_none());
        assert!(held.is_empty(), "{} held", held.len());
        let deleted: Vec<_> = open_under(&root)
            .into_iter()
            .filter(|p| p.ends_with("(deleted)"))
            .collect();
        assert!(deleted.is_empty(), "removed files still open: {deleted:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn at_most_capacity_descriptors_are_held() {
        let (dir, s) = storage(16);
        for i in 0..200 {
            let key = format!("@a/x/1.0.0/templates/f-{i:03}.ts");
            s.put(&key, Bytes::from(format!("file {i}")), PutMode::Create)
                .await
                .unwrap();
        }
        for round in 0..3 {
            for i in 0..200 {
                let key = format!("@a/x/1.0.0/templates/f-{i:03}.ts");
                assert_eq!(
                    read(&s, &key).await.unwrap(),
                    format!("file {i}"),
                    "round {round}"
                );
            }
        }
        let held = s.open_files().unwrap().len();
        assert!(held <= 16, "{held} held");
        let open = open_under(dir.path()).len();
        // The held files, the held root directory and no more.
        assert!(open <= 16 + 1, "{open} descriptors open under the root");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nothing_is_held_without_room_or_above_the_inline_size() {
        let dir = tempfile::tempdir().unwrap();
        let none = LocalStorage::open(dir.path())
            .unwrap()
            .with_watcher()
            .with_open_files(0);
        assert!(none.open_files().is_none());
        // Nor without the watcher, which is what makes a held descriptor safe to trust.
        let unwatched = LocalStorage::open(dir.path()).unwrap().with_open_files(8);
        assert!(unwatched.open_files().is_none());
        let (_dir, s) = storage(8);
        let big = vec![b'x'; crate::storage::local::INLINE_READ_MAX as usize + 1];
        s.put("@a/big.bin", Bytes::from(big.clone()), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(read(&s, "@a/big.bin").await.unwrap().len(), big.len());
        // A limit below the size answers with the metadata and holds nothing either.
        s.put("@a/small", Bytes::from_static(b"12345"), PutMode::Create)
            .await
            .unwrap();
        assert!(matches!(
            s.get_up_to("@a/small", 2).await.unwrap(),
            Some(Fetched::TooLarge(_))
        ));
        assert!(s.open_files().unwrap().is_empty());
        // Held once read whole; then a limit below its size still answers TooLarge.
        assert_eq!(read(&s, "@a/small").await.unwrap(), "12345");
        assert_eq!(s.open_files().unwrap().len(), 1);
        assert!(matches!(
            s.get_up_to("@a/small", 2).await.unwrap(),
            Some(Fetched::TooLarge(m)) if m.size == 5
        ));
    }
}
