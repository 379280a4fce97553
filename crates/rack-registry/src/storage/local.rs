//! Local-disk storage: keys map to files under one root directory.
//!
//! Blocking filesystem calls run on tokio's blocking pool (one `spawn_blocking` per operation,
//! not per syscall). Writes go to a temp file under `<root>/.tmp/` that is fsynced and then
//! renamed (overwrite) or hard-linked (create-only: `link(2)` fails atomically if the target
//! exists), so a reader never sees a half-written object.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    validate_key, DirFilter, ListPage, Object, ObjectMeta, ObjectStream, PutMode, Result, Storage,
    StorageError,
};

/// Chunk size of streamed reads: large enough that a 64 MiB file is 256 trips to the blocking
/// pool, small enough that a slow reader pins little memory.
const STREAM_CHUNK: usize = 256 * 1024;

/// The staging directory under the root (SPEC §5.3): never served, cleaned at startup.
pub const TMP_DIR: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: Arc<PathBuf>,
    /// Serializes compare-and-swap puts inside this process.
    cas_lock: Arc<tokio::sync::Mutex<()>>,
    /// Recent directory walks, revalidated by directory stamps (see [`Walk`]).
    walks: Arc<std::sync::Mutex<HashMap<WalkKey, Arc<Walk>>>>,
    /// Change notification for the hot cache (`FS_WATCH`), when the filesystem allows it.
    watcher: Option<Arc<super::watch::Watcher>>,
}

fn io_err(key: &str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        key: key.to_owned(),
        source,
    }
}

/// A missing file, or a path through something that is not a directory, is "no object".
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn meta_of(key: &str, md: &std::fs::Metadata) -> ObjectMeta {
    // `<dev>-<ino>-<size>-<mtime s>-<mtime ns>` in hex, built by hand in a stack buffer: this
    // runs on every read (the hot cache's revalidation), where `format!` showed in profiles.
    // The tag only has to differ when the file does; it is never stored.
    let mut buf = [0u8; 5 * 17];
    let mut len = 0;
    for n in [
        md.dev(),
        md.ino(),
        md.len(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
    ] {
        if len > 0 {
            buf[len] = b'-';
            len += 1;
        }
        len += write_hex(&mut buf[len..], n);
    }
    ObjectMeta {
        key: key.to_owned(),
        size: md.len(),
        version: std::str::from_utf8(&buf[..len]).expect("hex is ASCII").to_owned(),
    }
}

/// Write `n` in lowercase hex without leading zeros (as `{:x}` does) at the start of `out`
/// (at least 16 bytes); returns how many bytes were written.
fn write_hex(out: &mut [u8], n: u64) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, d) in out[..digits].iter_mut().enumerate() {
        *d = DIGITS[((n >> ((digits - 1 - i) * 4)) & 0xf) as usize];
    }
    digits
}

impl LocalStorage {
    /// Open `root`; it must exist and be a directory.
    pub fn open(root: &Path) -> std::io::Result<LocalStorage> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(LocalStorage {
            root: Arc::new(root),
            cas_lock: Arc::default(),
            walks: Arc::default(),
            watcher: None,
        })
    }

    /// Watch the tree for changes (see [`super::watch`]), if its filesystem allows it.
    pub fn with_watcher(mut self) -> LocalStorage {
        self.watcher = super::watch::Watcher::new(&self.root).map(Arc::new);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        // Concatenated rather than `Path::join` (a validated key is relative and clean, so the
        // result is the same), with one allocation: this runs on every read.
        let key = key.trim_end_matches('/');
        let root = self.root.as_os_str();
        let mut path = std::ffi::OsString::with_capacity(root.len() + 1 + key.len());
        path.push(root);
        path.push("/");
        path.push(key);
        Ok(PathBuf::from(path))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| StorageError::Backend(format!("blocking task failed: {e}")))?
    }
}

fn read_object(path: &Path, key: &str) -> Result<Option<Object>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(key)(e)),
    };
    let md = file.metadata().map_err(io_err(key))?;
    if !md.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    std::io::Read::read_to_end(&mut file, &mut buf).map_err(io_err(key))?;
    Ok(Some(Object {
        meta: meta_of(key, &md),
        body: Bytes::from(buf),
    }))
}

/// Open a regular file for a streamed read, with the metadata of the opened file.
fn open_object(path: &Path, key: &str) -> Result<Option<(std::fs::File, ObjectMeta)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(key)(e)),
    };
    let md = file.metadata().map_err(io_err(key))?;
    if !md.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta_of(key, &md))))
}

fn stat_object(path: &Path, key: &str) -> Result<Option<ObjectMeta>> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_file() => Ok(Some(meta_of(key, &md))),
        Ok(_) => Ok(None),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(io_err(key)(e)),
    }
}

/// Sorted `(name, is_dir)` entries of a directory; `None` if it does not exist. Entries that are
/// neither regular files nor directories (after following links) are skipped.
fn read_dir_sorted(dir: &Path, key: &str) -> Result<Option<Vec<(String, bool)>>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(key)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(key))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let mut ft = entry.file_type().map_err(io_err(key))?;
        if ft.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(md) => ft = md.file_type(),
                Err(_) => continue,
            }
        }
        if ft.is_dir() || ft.is_file() {
            out.push((name, ft.is_dir()));
        }
    }
    out.sort();
    Ok(Some(out))
}

fn walk_files(dir: &Path, key_prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let Some(entries) = read_dir_sorted(dir, key_prefix)? else {
        return Ok(());
    };
    for (name, is_dir) in entries {
        let key = format!("{key_prefix}{name}");
        let path = dir.join(&name);
        if is_dir {
            walk_files(&path, &format!("{key}/"), out)?;
        } else if let Some(meta) = stat_object(&path, &key)? {
            out.push(meta);
        }
    }
    Ok(())
}

/// What identifies a directory's entry list: inode plus modification and change times (any
/// entry added, removed or renamed in it moves its mtime).
type DirStamp = (u64, i64, i64, i64, i64);

fn dir_stamp(md: &std::fs::Metadata) -> DirStamp {
    (md.ino(), md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())
}

fn find_marked(
    dir: &Path,
    rel: &str,
    marker: &str,
    descend: DirFilter,
    out: &mut Vec<String>,
    stamps: &mut Vec<(PathBuf, DirStamp)>,
) -> Result<()> {
    // Stamp before reading: a change during the walk shows as a newer stamp next time.
    match std::fs::metadata(dir) {
        Ok(md) => stamps.push((dir.to_owned(), dir_stamp(&md))),
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(io_err(rel)(e)),
    }
    let Some(entries) = read_dir_sorted(dir, rel)? else {
        return Ok(());
    };
    for (name, is_dir) in entries {
        if is_dir {
            if descend(&name) {
                let child = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                find_marked(&dir.join(&name), &child, marker, descend, out, stamps)?;
            }
        } else if name == marker && !rel.is_empty() {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

/// A finished walk of [`Storage::find_marked_dirs`], valid while every directory it read still
/// has the same stamp. Revalidating costs one `stat` per directory instead of an `open`,
/// `getdents` and `close`, and no allocation: a 10,000-registry listing is answered from here
/// unless something under the namespace changed, and it is never stale.
#[derive(Debug)]
struct Walk {
    stamps: Vec<(PathBuf, DirStamp)>,
    result: Option<Arc<[String]>>,
}

impl Walk {
    fn is_current(&self) -> bool {
        self.stamps.iter().all(|(p, st)| {
            std::fs::metadata(p)
                .map(|md| dir_stamp(&md) == *st)
                .unwrap_or(false)
        })
    }
}

/// At most this many walks are kept (one per namespace listed); beyond, the map is cleared.
const MAX_WALKS: usize = 1024;

/// A cached walk of at most this many directories is revalidated inline (a few `stat`s, like
/// the revalidation of a hot object); larger ones on the blocking pool.
const INLINE_STAMPS: usize = 32;

type WalkKey = (String, String, usize);

fn write_temp(root: &Path, body: &[u8], key: &str) -> Result<tempfile::TempPath> {
    let tmp_dir = root.join(TMP_DIR);
    std::fs::create_dir_all(&tmp_dir).map_err(io_err(key))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(key))?;
    tmp.write_all(body).map_err(io_err(key))?;
    tmp.as_file().sync_all().map_err(io_err(key))?;
    Ok(tmp.into_temp_path())
}

fn fsync_dirs(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fsync_dirs(&entry.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn sync_dir(dir: &Path) {
    // Durability of the rename itself; failure here is not fatal to correctness of the data.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let path = self.path(key)?;
        let key = key.to_owned();
        self.blocking(move |_| read_object(&path, &key)).await
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectStream>> {
        let path = self.path(key)?;
        let owned = key.to_owned();
        let Some((file, meta)) = self.blocking(move |_| open_object(&path, &owned)).await? else {
            return Ok(None);
        };
        let reader =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), STREAM_CHUNK);
        Ok(Some(ObjectStream {
            meta,
            body: Box::pin(reader),
        }))
    }

    /// A `stat` runs inline: it is one short syscall on a cached inode, cheaper than a hop to
    /// the blocking pool, and it sits on the hot path (cache validation on every read).
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        stat_object(&path, key)
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(StorageError::InvalidKey(prefix.to_owned()));
        }
        let dir = if prefix.is_empty() {
            (*self.root).clone()
        } else {
            self.path(prefix)?
        };
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        let limit = limit.max(1);
        self.blocking(move |_| {
            let mut page = ListPage::default();
            // Merge objects and prefixes in key order for pagination.
            let mut all: Vec<(String, Option<ObjectMeta>)> = Vec::new();
            if delimiter {
                if let Some(entries) = read_dir_sorted(&dir, &prefix)? {
                    for (name, is_dir) in entries {
                        let key = format!("{prefix}{name}");
                        if is_dir {
                            all.push((format!("{key}/"), None));
                        } else if let Some(m) = stat_object(&dir.join(&name), &key)? {
                            all.push((key, Some(m)));
                        }
                    }
                }
            } else {
                let mut metas = Vec::new();
                walk_files(&dir, &prefix, &mut metas)?;
                all.extend(metas.into_iter().map(|m| (m.key.clone(), Some(m))));
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let mut iter = all
                .into_iter()
                .filter(|(k, _)| start_after.as_deref().is_none_or(|s| k.as_str() > s))
                .peekable();
            let mut n = 0;
            let mut last = None;
            while n < limit {
                let Some((key, meta)) = iter.next() else { break };
                last = Some(key.clone());
                match meta {
                    Some(m) => page.objects.push(m),
                    None => page.prefixes.push(key),
                }
                n += 1;
            }
            if iter.peek().is_some() {
                page.next = last;
            }
            Ok(page)
        })
        .await
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        if key.ends_with('/') {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        let _guard = match mode {
            PutMode::IfVersion(_) => Some(self.cas_lock.lock().await),
            _ => None,
        };
        let key = key.to_owned();
        self.blocking(move |root| {
            let parent = path.parent().expect("key has a parent under root");
            std::fs::create_dir_all(parent).map_err(io_err(&key))?;
            let tmp = write_temp(root, &body, &key)?;
            match &mode {
                PutMode::Overwrite => tmp.persist(&path).map_err(|e| io_err(&key)(e.error))?,
                PutMode::Create => {
                    match std::fs::hard_link(&tmp, &path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            return Err(StorageError::AlreadyExists(key.clone()))
                        }
                        Err(e) => return Err(io_err(&key)(e)),
                    }
                    drop(tmp);
                }
                PutMode::IfVersion(expected) => {
                    let current = stat_object(&path, &key)?;
                    if current.map(|m| m.version).as_deref() != Some(expected.as_str()) {
                        return Err(StorageError::PreconditionFailed(key.clone()));
                    }
                    tmp.persist(&path).map_err(|e| io_err(&key)(e.error))?;
                }
            }
            sync_dir(parent);
            stat_object(&path, &key)?
                .ok_or_else(|| StorageError::Backend(format!("{key} vanished after write")))
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let path = self.path(prefix)?;
        let prefix = prefix.to_owned();
        self.blocking(move |_| {
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if is_absent(&e) => return Ok(0),
                Err(e) => return Err(io_err(&prefix)(e)),
            };
            if md.is_dir() && prefix.ends_with('/') {
                let mut files = Vec::new();
                walk_files(&path, &prefix, &mut files)?;
                std::fs::remove_dir_all(&path).map_err(io_err(&prefix))?;
                Ok(files.len() as u64)
            } else if md.is_file() && !prefix.ends_with('/') {
                std::fs::remove_file(&path).map_err(io_err(&prefix))?;
                Ok(1)
            } else {
                Ok(0)
            }
        })
        .await
    }

    async fn find_marked_dirs(
        &self,
        prefix: &str,
        marker: &str,
        descend: DirFilter,
    ) -> Result<Option<Arc<[String]>>> {
        let dir = self.path(prefix)?;
        let key = prefix.to_owned();
        let walk_key: WalkKey = (key.clone(), marker.to_owned(), descend as usize);
        let walks = self.walks.clone();
        let cached = walks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&walk_key)
            .cloned();
        // A small cached walk is checked here; a large one in the blocking task below. Either
        // way it is checked once, and a stale one is walked again.
        let (small, large): (Option<Arc<Walk>>, Option<Arc<Walk>>) = match cached {
            Some(w) if w.stamps.len() <= INLINE_STAMPS => (Some(w), None),
            other => (None, other),
        };
        if let Some(walk) = small.filter(|w| w.is_current()) {
            return Ok(walk.result.clone());
        }
        let marker = marker.to_owned();
        // One blocking task for the whole walk (not one per directory), and no walk at all
        // while the previous one is still current (checking that is a stat per directory,
        // which is blocking work too).
        self.blocking(move |_| {
            if let Some(walk) = large.filter(|w| w.is_current()) {
                return Ok(walk.result.clone());
            }
            match std::fs::metadata(&dir) {
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(io_err(&key)(e)),
                Ok(md) if !md.is_dir() => {
                    return Err(io_err(&key)(std::io::Error::new(
                        ErrorKind::NotADirectory,
                        "a plain file stands where a directory should be",
                    )))
                }
                Ok(_) => {}
            }
            let mut out = Vec::new();
            let mut stamps = Vec::new();
            find_marked(&dir, "", &marker, descend, &mut out, &mut stamps)?;
            let anything = std::fs::read_dir(&dir).map_err(io_err(&key))?.next().is_some();
            out.sort();
            let result: Option<Arc<[String]>> = anything.then(|| Arc::from(out));
            let mut walks = walks.lock().unwrap_or_else(|e| e.into_inner());
            if walks.len() >= MAX_WALKS {
                walks.clear();
            }
            walks.insert(
                walk_key,
                Arc::new(Walk {
                    stamps,
                    result: result.clone(),
                }),
            );
            Ok(result)
        })
        .await
    }

    /// One `rename(2)` with `RENAME_NOREPLACE`: the version appears whole or not at all, and of
    /// two racing uploads exactly one wins. Files were fsynced during extraction; directories
    /// are fsynced here, the parent after the rename.
    async fn publish_dir(&self, staged: &Path, dest: &str) -> Result<()> {
        let target = self.path(dest)?;
        let staged = staged.to_owned();
        let key = dest.to_owned();
        self.blocking(move |_| {
            fsync_dirs(&staged).map_err(io_err(&key))?;
            let parent = target.parent().expect("version has a parent");
            std::fs::create_dir_all(parent).map_err(io_err(&key))?;
            let cwd = rustix::fs::CWD;
            match rustix::fs::renameat_with(cwd, &staged, cwd, &target, rustix::fs::RenameFlags::NOREPLACE) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                    return Err(StorageError::AlreadyExists(key.clone()))
                }
                Err(e) => return Err(io_err(&key)(e.into())),
            }
            sync_dir(parent);
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn watcher(&self) -> Option<&super::watch::Watcher> {
        self.watcher.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, LocalStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        (dir, s)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn put_get_list_delete() {
        let (_d, s) = store().await;
        s.put(
            "@a/x/versions.json",
            Bytes::from_static(b"{}"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        s.put(
            "@a/x/1.0.0/registry.json",
            Bytes::from_static(b"{1}"),
            PutMode::Create,
        )
        .await
        .unwrap();
        s.put("@a/y/z/versions.json", Bytes::from_static(b"{}"), PutMode::Create)
            .await
            .unwrap();
        let o = s.get("@a/x/1.0.0/registry.json").await.unwrap().unwrap();
        assert_eq!(&o.body[..], b"{1}");
        assert!(
            s.get("@a/x/1.0.0").await.unwrap().is_none(),
            "a directory is not an object"
        );
        assert!(s.get("@a/x/versions.json/nope").await.unwrap().is_none());

        let page = s.list("@a/", true, None, 100).await.unwrap();
        assert_eq!(page.prefixes, ["@a/x/", "@a/y/"]);
        let all = s.list("@a/", false, None, 100).await.unwrap();
        let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "@a/x/1.0.0/registry.json",
                "@a/x/versions.json",
                "@a/y/z/versions.json"
            ]
        );
        let p1 = s.list("@a/", false, None, 2).await.unwrap();
        assert_eq!(p1.objects.len(), 2);
        let p2 = s.list("@a/", false, p1.next.as_deref(), 2).await.unwrap();
        assert_eq!(p2.objects.len(), 1);
        assert!(p2.next.is_none());

        let found = s
            .find_marked_dirs("@a/", "versions.json", |n| !n.contains('.'))
            .await
            .unwrap();
        assert_eq!(&found.unwrap()[..], ["x", "y/z"]);
        assert!(s
            .find_marked_dirs("@none/", "versions.json", |_| true)
            .await
            .unwrap()
            .is_none());

        assert_eq!(s.delete_prefix("@a/x/").await.unwrap(), 2);
        assert!(s.get("@a/x/versions.json").await.unwrap().is_none());
    }

    #[test]
    fn hex_like_format() {
        for n in [0u64, 1, 0xf, 0x10, 0xdead_beef, u64::MAX, (-5i64) as u64] {
            let mut buf = [0u8; 16];
            let len = write_hex(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), format!("{n:x}"));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cached_walks_are_never_stale() {
        let (d, s) = store().await;
        let root = d.path();
        let is_seg: DirFilter = |n| !n.contains('.');
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/versions.json"), "{}").unwrap();
        let list = |s: LocalStorage| async move {
            s.find_marked_dirs("@a/", "versions.json", is_seg).await.unwrap()
        };
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["x"]);
        assert_eq!(
            &list(s.clone()).await.unwrap()[..],
            ["x"],
            "served from the cached walk"
        );
        // A new nested registry, a marker appearing in a visited directory, a removal.
        std::fs::create_dir_all(root.join("@a/y/z")).unwrap();
        std::fs::write(root.join("@a/y/z/versions.json"), "{}").unwrap();
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["x", "y/z"]);
        std::fs::write(root.join("@a/y/versions.json"), "{}").unwrap();
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["x", "y", "y/z"]);
        std::fs::remove_file(root.join("@a/x/versions.json")).unwrap();
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["y", "y/z"]);
        std::fs::remove_dir_all(root.join("@a")).unwrap();
        assert!(list(s.clone()).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn create_only_and_cas() {
        let (_d, s) = store().await;
        let m = s
            .put("k/v", Bytes::from_static(b"1"), PutMode::Create)
            .await
            .unwrap();
        let e = s
            .put("k/v", Bytes::from_static(b"2"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::AlreadyExists(_)));
        assert_eq!(&s.get("k/v").await.unwrap().unwrap().body[..], b"1");
        let m2 = s
            .put(
                "k/v",
                Bytes::from_static(b"22"),
                PutMode::IfVersion(m.version.clone()),
            )
            .await
            .unwrap();
        let e = s
            .put("k/v", Bytes::from_static(b"3"), PutMode::IfVersion(m.version))
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::PreconditionFailed(_)));
        assert_ne!(m2.version, "");
        assert_eq!(&s.get("k/v").await.unwrap().unwrap().body[..], b"22");
        // Temp files never linger.
        assert_eq!(std::fs::read_dir(s.root().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_never_escape_the_root() {
        let (_d, s) = store().await;
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\b",
            "a\0b",
            "",
            ".",
        ] {
            assert!(
                matches!(s.get(bad).await, Err(StorageError::InvalidKey(_))),
                "{bad:?}"
            );
            assert!(
                s.put(bad, Bytes::new(), PutMode::Overwrite).await.is_err(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn plain_file_where_a_directory_should_be() {
        let (_d, s) = store().await;
        s.put("@file", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        assert!(s
            .find_marked_dirs("@file/", "versions.json", |_| true)
            .await
            .is_err());
        assert!(s.list("@file/", true, None, 10).await.is_err());
        let root = s.list("", true, None, 10).await.unwrap();
        assert_eq!(root.objects.len(), 1);
        assert!(root.prefixes.iter().all(|p| !p.starts_with("@file")));
    }
}
