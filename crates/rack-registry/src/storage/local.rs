//! Local-disk storage: keys map to files under one root directory.
//!
//! Blocking filesystem calls run on tokio's blocking pool (one `spawn_blocking` per operation,
//! not per syscall). Writes go to a temp file under `<root>/.tmp/` that is fsynced and then
//! renamed (overwrite) or hard-linked (create-only: `link(2)` fails atomically if the target
//! exists), so a reader never sees a half-written object.
//!
//! Nothing ever leaves the root: every object is opened with [`open_beneath`] (symlinks are
//! followed only while they stay beneath the root), directory walks skip symlinks that escape
//! and never descend into a directory that is already on the current path (a symlink loop).
//! Writes never create the root itself and, with [`LocalStorage::require_marker`], are refused
//! while its `.healthcheck` marker is missing (a root deleted or re-created empty while the
//! server runs is not written into). While the root itself is missing, reads and listings fail
//! with [`StorageError::Unavailable`] rather than finding nothing (see [`miss`]); they recover
//! by themselves once it is back.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    validate_key, validate_prefix, DirFilter, Fetched, ListPage, Object, ObjectMeta, ObjectStream, PutMode,
    Result, Storage, StorageError,
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
    /// Writes made through this storage (bumped when each ends): a walk is trusted without a
    /// look only if none ended since it was confirmed.
    writes: Arc<AtomicU64>,
    /// Change notification for the hot cache (`FS_WATCH`), when the filesystem allows it.
    watcher: Option<Arc<super::watch::Watcher>>,
    /// Refuse writes while `<root>/.healthcheck` is missing ([`LocalStorage::require_marker`]).
    require_marker: bool,
    /// Small reads on the calling thread: the root is on a local filesystem (see
    /// [`INLINE_READ_MAX`]; set with the watcher, which checks exactly that).
    inline_reads: bool,
    /// Small files served as leased memory maps ([`super::mapped`]; only the server sets it,
    /// once it listens for lease breaks).
    maps: Option<Arc<super::mapped::Maps>>,
}

fn io_err(key: &str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        key: key.to_owned(),
        source,
    }
}

/// A missing file, a path through something that is not a directory, a name too long to exist
/// (`ENAMETOOLONG`, from a client's path), a symlink loop (`ELOOP`) or a symlink out of the root
/// (`EXDEV` from [`open_beneath`]) is "no object".
fn is_absent(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
        || matches!(
            Errno::from_io_error(e),
            Some(Errno::NAMETOOLONG | Errno::LOOP | Errno::XDEV)
        )
}

/// What a miss means: no such object while the root is there, but
/// [`StorageError::Unavailable`] when the root itself is gone (removed while running, a lost
/// mount): every key is absent then, and a client must not be told that every resource
/// stopped existing (404, an empty listing). One `stat` of the root, on misses only.
fn miss<T>(root: &Path, absent: T) -> Result<T> {
    match std::fs::metadata(root) {
        Ok(md) if md.is_dir() => Ok(absent),
        Ok(_) => Err(StorageError::Unavailable(format!(
            "storage root {} is not a directory",
            root.display()
        ))),
        Err(e) => Err(StorageError::Unavailable(format!(
            "storage root {} is missing: {e}",
            root.display()
        ))),
    }
}

/// Whether `openat2(2)` works here (Linux 5.6+, not blocked by a seccomp filter).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Open `rel` (a validated key, or `""` for the root itself) under the canonical directory
/// `root` without ever leaving it: symlinks are followed only while they resolve beneath
/// `root`; an absolute target, or one that climbs out with `..`, fails with `EXDEV`, as do
/// magic links (`/proc/self/fd/...`). `flags` are `open(2)` flags (`O_CLOEXEC` is added).
///
/// Uses `openat2(2)` with `RESOLVE_BENEATH`. Where that is unavailable, the canonical path is
/// checked to be under `root` and opened with `O_NOFOLLOW`; a rename racing between the check
/// and the open can slip through there, which needs write access to the root anyway.
///
/// The root is opened by path on each call rather than held open: a root that an operator
/// restores (moves back, re-creates) is the one served, never the deleted directory. (Holding
/// it would save an `open` and a `close` per access, but a root moved away keeps its marker
/// and its files: the held descriptor would go on serving and accepting writes there.)
pub fn open_beneath(root: &Path, rel: &str, flags: rustix::fs::OFlags) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsFd;
    let rel = rel.trim_end_matches('/');
    if OPENAT2.load(Ordering::Relaxed) {
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if let Some(done) = openat2_beneath(dir.as_fd(), rel, flags) {
            return done;
        }
    }
    open_beneath_by_path(root, rel, flags | OFlags::CLOEXEC)
}

/// [`open_beneath`] relative to an open root directory; `None` where `openat2(2)` is
/// unavailable (then open by path).
pub fn openat2_beneath(
    dir: BorrowedFd<'_>,
    rel: &str,
    flags: rustix::fs::OFlags,
) -> Option<std::io::Result<OwnedFd>> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    if !OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    let rel = rel.trim_end_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let flags = flags | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a concurrent rename somewhere under the root; the kernel asks for a retry.
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            Err(Errno::NOSYS) | Err(Errno::PERM) => {
                OPENAT2.store(false, Ordering::Relaxed);
                return None;
            }
            other => return Some(other.map_err(Into::into)),
        }
    }
}

/// The fallback of [`open_beneath`] without `openat2(2)`: resolve, check, open the result.
fn open_beneath_by_path(root: &Path, rel: &str, flags: rustix::fs::OFlags) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let path = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let real = std::fs::canonicalize(&path)?;
    if !real.starts_with(root) {
        return Err(rustix::io::Errno::XDEV.into());
    }
    Ok(rustix::fs::open(
        &real,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The metadata of what `rel` resolves to beneath `root` (see [`open_beneath`]).
pub fn stat_beneath(root: &Path, rel: &str) -> std::io::Result<std::fs::Metadata> {
    let fd = open_beneath(root, rel, rustix::fs::OFlags::PATH)?;
    std::fs::File::from(fd).metadata()
}

/// Create the directory `rel` under `root` and its missing parents, but never `root` itself
/// (a deleted root stays deleted: the first `mkdir` fails). Fails if `rel` resolves outside.
fn create_dirs_beneath(root: &Path, rel: &str) -> std::io::Result<()> {
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() {
        return std::fs::metadata(root).map(drop);
    }
    if stat_beneath(root, rel).is_ok_and(|md| md.is_dir()) {
        return Ok(());
    }
    let mut end = 0;
    while end < rel.len() {
        end = rel[end + 1..].find('/').map_or(rel.len(), |i| end + 1 + i);
        match std::fs::create_dir(root.join(&rel[..end])) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    match stat_beneath(root, rel) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(std::io::Error::new(ErrorKind::NotADirectory, "not a directory")),
        Err(e) => Err(e),
    }
}

/// The key of the directory holding `key` (`""` at the root).
fn parent_key(key: &str) -> &str {
    key.trim_end_matches('/').rsplit_once('/').map_or("", |(p, _)| p)
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
        modified_ms: Some(md.mtime() * 1000 + md.mtime_nsec() / 1_000_000),
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
            writes: Arc::default(),
            watcher: None,
            inline_reads: false,
            maps: None,
            require_marker: false,
        })
    }

    /// Refuse every write (with [`StorageError::Unavailable`]) while the root or its
    /// `.healthcheck` marker is missing: the server's storage, where a vanished root means an
    /// operator mistake or a lost mount, and publishing into it would lose the version.
    pub fn require_marker(mut self) -> LocalStorage {
        self.require_marker = true;
        self
    }

    /// [`StorageError::Unavailable`] when writes must be refused (see [`Self::require_marker`]).
    fn check_marker(root: &Path, required: bool) -> Result<()> {
        if !required {
            return Ok(());
        }
        match stat_beneath(root, rack_core::layout::HEALTHCHECK_KEY) {
            Ok(md) if md.is_file() => Ok(()),
            Ok(_) => Err(StorageError::Unavailable(format!(
                "{} is not a file",
                rack_core::layout::HEALTHCHECK_KEY
            ))),
            Err(e) if std::fs::metadata(root).is_err() => Err(StorageError::Unavailable(format!(
                "storage root {} is missing: {e}",
                root.display()
            ))),
            Err(e) => Err(StorageError::Unavailable(format!(
                "storage marker {} is missing: {e}",
                rack_core::layout::HEALTHCHECK_KEY
            ))),
        }
    }

    /// Watch the tree for changes (see [`super::watch`]), if its filesystem allows it.
    pub fn with_watcher(mut self) -> LocalStorage {
        self.watcher = super::watch::Watcher::new(&self.root).map(Arc::new);
        self.inline_reads = self.watcher.is_some();
        self
    }

    /// Serve small files as leased memory maps (see [`super::mapped`]), where reads are
    /// inline (a local filesystem with the watcher). The caller must be listening for `SIGIO`,
    /// calling [`super::mapped::Maps::break_leases`] and dropping the cache entries of the keys
    /// it returns: a lease break otherwise ends the process (`SIGIO`'s default action).
    pub fn with_leased_maps(mut self, maps: Arc<super::mapped::Maps>) -> LocalStorage {
        if self.inline_reads {
            self.maps = Some(maps);
        }
        self
    }

    /// Whether reads may be served as leased maps.
    pub fn maps_files(&self) -> bool {
        self.maps.is_some()
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

fn read_object(root: &Path, key: &str) -> Result<Option<Object>> {
    let Some((mut file, meta)) = open_object(root, key)? else {
        return Ok(None);
    };
    let body = read_sized(&mut file, meta.size).map_err(io_err(key))?;
    Ok(Some(Object { meta, body }))
}

/// Files up to this size are read on the calling thread when the root is on a local
/// filesystem (as nginx does): a read from the page cache costs less than the hop to the
/// blocking pool. Elsewhere (NFS, FUSE...), and above it, reads go to the blocking pool.
pub const INLINE_READ_MAX: u64 = 64 * 1024;

/// The read of [`Storage::get_up_to`] on an opened file: the whole of it if it is at most
/// `limit` bytes and, unless `any_size`, at most [`INLINE_READ_MAX`] (`Err(file)`: read it
/// elsewhere).
fn read_opened(
    mut file: std::fs::File,
    meta: ObjectMeta,
    limit: u64,
    any_size: bool,
) -> Result<Result<Fetched, (std::fs::File, ObjectMeta)>> {
    if meta.size > limit {
        return Ok(Ok(Fetched::TooLarge(meta)));
    }
    if !any_size && meta.size > INLINE_READ_MAX {
        return Ok(Err((file, meta)));
    }
    let body = read_sized(&mut file, meta.size).map_err(io_err(&meta.key))?;
    Ok(Ok(Fetched::Whole(Object { meta, body })))
}

/// Read an opened file of `size` bytes (its `fstat` size): one `read` for a small file, where
/// `read_to_end` would add a `statx`, an `lseek` and a `read` that finds the end. Bytes written
/// past that size meanwhile are not read: the version tag (from the same `fstat`) names the
/// state that was read, so the next read that compares tags sees the change and reads again.
fn read_sized(file: &mut std::fs::File, size: u64) -> std::io::Result<Bytes> {
    // Read into the spare capacity: no zeroing of a buffer about to be overwritten.
    let mut buf = Vec::with_capacity(size as usize);
    while buf.len() < buf.capacity() {
        match rustix::io::read(&*file, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Bytes::from(buf))
}

/// Open a regular file for reading, with the metadata of the opened file (`O_NONBLOCK`: a FIFO
/// put into the tree must not hang a thread in `open(2)`; anything but a regular file is "no
/// object").
fn open_object(root: &Path, key: &str) -> Result<Option<(std::fs::File, ObjectMeta)>> {
    match object_of(open_beneath(root, key, OBJECT_FLAGS), key)? {
        None => miss(root, None),
        found => Ok(found),
    }
}

const OBJECT_FLAGS: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY.union(rustix::fs::OFlags::NONBLOCK);

/// [`open_object`] through the watcher's open root directory (see
/// [`super::watch::Watcher::with_root`]): saves opening and closing the root per read.
fn open_object_held(
    w: &super::watch::Watcher,
    root: &Path,
    key: &str,
) -> Result<Option<(std::fs::File, ObjectMeta)>> {
    let held =
        w.with_root(|dir| openat2_beneath(dir, key, OBJECT_FLAGS).map(|opened| object_of(opened, key)));
    match held {
        Some(Some(Ok(Some(found)))) => Ok(Some(found)),
        // Absent is asked again by path: an empty root removed and made anew sends no event
        // while a descriptor of it is held (the kernel reports the removal when the last one
        // closes), and only an empty root can be removed without an event inside it. Such a
        // held root is dropped, with the watches under it.
        Some(_) => {
            w.forget_unlinked_root();
            open_object(root, key)
        }
        None => open_object(root, key),
    }
}

fn object_of(opened: std::io::Result<OwnedFd>, key: &str) -> Result<Option<(std::fs::File, ObjectMeta)>> {
    let file = match opened {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(key)(e)),
    };
    let md = file.metadata().map_err(io_err(key))?;
    if !md.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta_of(key, &md))))
}

fn stat_object(root: &Path, key: &str) -> Result<Option<ObjectMeta>> {
    match stat_beneath(root, key) {
        Ok(md) if md.is_file() => Ok(Some(meta_of(key, &md))),
        Ok(_) => Ok(None),
        Err(e) if is_absent(&e) => miss(root, None),
        Err(e) => Err(io_err(key)(e)),
    }
}

/// Sorted `(name, is_dir)` entries of the directory `dir_key` (`""` or ending in `/`); `None`
/// if it does not exist. Entries that are neither regular files nor directories are skipped,
/// and so are symlinks that do not resolve beneath the root (see [`open_beneath`]).
fn read_dir_sorted(root: &Path, dir_key: &str) -> Result<Option<Vec<(String, bool)>>> {
    let rd = match std::fs::read_dir(root.join(dir_key)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir_key)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(dir_key))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let mut ft = entry.file_type().map_err(io_err(dir_key))?;
        if ft.is_symlink() {
            match stat_beneath(root, &format!("{dir_key}{name}")) {
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

/// A directory's identity, to recognize one already on the current path of a walk (a symlink
/// loop such as `a/loop -> ..`, or a bind mount of an ancestor).
fn dir_id(md: &std::fs::Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

/// Every object under the directory `key_prefix` (`""` or ending in `/`), at any depth.
/// `ancestors` holds the directories on the current path (empty at the start).
fn walk_files(
    root: &Path,
    key_prefix: &str,
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut Vec<ObjectMeta>,
) -> Result<()> {
    let id = match std::fs::metadata(root.join(key_prefix)) {
        Ok(md) => dir_id(&md),
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(io_err(key_prefix)(e)),
    };
    if ancestors.contains(&id) {
        return Ok(());
    }
    let Some(entries) = read_dir_sorted(root, key_prefix)? else {
        return Ok(());
    };
    ancestors.push(id);
    for (name, is_dir) in entries {
        let key = format!("{key_prefix}{name}");
        if is_dir {
            walk_files(root, &format!("{key}/"), ancestors, out)?;
        } else if let Some(meta) = stat_object(root, &key)? {
            out.push(meta);
        }
    }
    ancestors.pop();
    Ok(())
}

/// What identifies a directory's entry list: inode plus modification and change times (any
/// entry added, removed or renamed in it moves its mtime).
type DirStamp = (u64, i64, i64, i64, i64);

fn dir_stamp(md: &std::fs::Metadata) -> DirStamp {
    (md.ino(), md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())
}

/// The walk of [`Storage::find_marked_dirs`] below `dir` (the directory of the root-relative
/// `key`, ending in `/`), whose results are named relative to the walk's start (`rel`).
struct MarkedWalk<'a> {
    root: &'a Path,
    marker: &'a str,
    descend: DirFilter,
    out: Vec<String>,
    stamps: Vec<(PathBuf, DirStamp)>,
    /// Directories on the current path: one met again is a loop and is not entered.
    ancestors: Vec<(u64, u64)>,
}

impl MarkedWalk<'_> {
    fn visit(&mut self, key: &str, rel: &str) -> Result<()> {
        let dir = self.root.join(key);
        // Stamp before reading: a change during the walk shows as a newer stamp next time.
        let md = match std::fs::metadata(&dir) {
            Ok(md) => md,
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(io_err(key)(e)),
        };
        let id = dir_id(&md);
        if self.ancestors.contains(&id) {
            return Ok(());
        }
        self.stamps.push((dir, dir_stamp(&md)));
        let Some(entries) = read_dir_sorted(self.root, key)? else {
            return Ok(());
        };
        self.ancestors.push(id);
        for (name, is_dir) in entries {
            if is_dir {
                if (self.descend)(&name) {
                    let child = if rel.is_empty() {
                        name.clone()
                    } else {
                        format!("{rel}/{name}")
                    };
                    self.visit(&format!("{key}{name}/"), &child)?;
                }
            } else if name == self.marker && !rel.is_empty() {
                self.out.push(rel.to_owned());
            }
        }
        self.ancestors.pop();
        Ok(())
    }
}

/// A finished walk of [`Storage::find_marked_dirs`], valid while every directory it read still
/// has the same stamp. Revalidating costs one `stat` per directory instead of an `open`,
/// `getdents` and `close`, and no allocation.
///
/// Even that is O(directories), so a walk is trusted without any check for [`WALK_FRESH`] after
/// it was last confirmed (a warm listing costs a map lookup, whatever the namespace's size), and
/// only one request at a time revalidates it (the others keep answering from it meanwhile).
/// A write through this storage ends that trust for every walk, so a publish shows at once; a
/// change made by hand shows within [`WALK_FRESH`] (listings are `max-age=60` anyway).
#[derive(Debug)]
struct Walk {
    stamps: Vec<(PathBuf, DirStamp)>,
    result: Option<Arc<[String]>>,
    /// When it was last known current (milliseconds of [`walk_clock`]), and the storage's
    /// write count read before that check.
    confirmed_ms: AtomicU64,
    confirmed_writes: AtomicU64,
    /// A request is revalidating it.
    revalidating: AtomicBool,
}

/// Counts a write when it ends (however it ends: success, failure or a dropped request).
struct WriteEnds<'a>(&'a AtomicU64);

impl Drop for WriteEnds<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Clears a walk's `revalidating` flag when its revalidation ends, however it ends.
struct Revalidating(Arc<Walk>);

impl Drop for Revalidating {
    fn drop(&mut self) {
        self.0.revalidating.store(false, Ordering::Release);
    }
}

/// How long a confirmed walk is trusted without a look at its directories.
pub const WALK_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Milliseconds since the first call (a monotonic clock for walk freshness).
fn walk_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

impl Walk {
    fn new(stamps: Vec<(PathBuf, DirStamp)>, result: Option<Arc<[String]>>, writes: u64) -> Walk {
        Walk {
            stamps,
            result,
            confirmed_ms: AtomicU64::new(walk_clock()),
            confirmed_writes: AtomicU64::new(writes),
            revalidating: AtomicBool::new(false),
        }
    }

    fn fresh(&self, writes: u64) -> bool {
        self.confirmed_writes.load(Ordering::Acquire) == writes
            && walk_clock().saturating_sub(self.confirmed_ms.load(Ordering::Relaxed))
                < WALK_FRESH.as_millis() as u64
    }

    /// Confirmed current now, by a check that began when the storage had seen `writes` writes.
    fn confirm(&self, writes: u64) {
        self.confirmed_ms.store(walk_clock(), Ordering::Relaxed);
        self.confirmed_writes.store(writes, Ordering::Release);
    }

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
    // `mkdir`, not `mkdir -p`: a root that is gone stays gone.
    match std::fs::create_dir(&tmp_dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io_err(key)(e)),
        _ => {}
    }
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
        validate_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| read_object(root, &key)).await
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectStream>> {
        validate_key(key)?;
        let owned = key.to_owned();
        let Some((file, meta)) = self.blocking(move |root| open_object(root, &owned)).await? else {
            return Ok(None);
        };
        let reader =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), STREAM_CHUNK);
        Ok(Some(ObjectStream {
            meta,
            body: Box::pin(reader),
        }))
    }

    /// On a local filesystem a small file is opened and read on the calling thread (see
    /// [`INLINE_READ_MAX`]); otherwise one trip to the blocking pool does it all.
    async fn get_up_to(&self, key: &str, limit: u64) -> Result<Option<Fetched>> {
        validate_key(key)?;
        if self.inline_reads {
            let root = &self.root;
            let opened = match self.watcher.as_deref() {
                Some(w) => open_object_held(w, root, key),
                None => open_object(root, key),
            };
            let Some((file, meta)) = opened? else {
                return Ok(None);
            };
            if let Some(maps) = &self.maps {
                let max = limit.min(INLINE_READ_MAX);
                if let Some((body, md)) = maps.map(&file, key, meta.size, max) {
                    // The version of what is mapped: taken under the lease.
                    let meta = meta_of(key, &md);
                    return Ok(Some(Fetched::Mapped(Object { meta, body })));
                }
            }
            return match read_opened(file, meta, limit, false)? {
                Ok(done) => Ok(Some(done)),
                Err((file, meta)) => {
                    self.blocking(move |_| read_opened(file, meta, limit, true).map(|r| r.ok()))
                        .await
                }
            };
        }
        let owned = key.to_owned();
        self.blocking(move |root| match open_object(root, &owned)? {
            None => Ok(None),
            Some((file, meta)) => read_opened(file, meta, limit, true).map(|r| r.ok()),
        })
        .await
    }

    /// The `stat` runs inline: a few short syscalls on cached inodes, cheaper than a hop to
    /// the blocking pool, and it sits on the hot path (cache validation on every read).
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        validate_key(key)?;
        stat_object(&self.root, key)
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        let limit = limit.max(1);
        self.blocking(move |root| {
            let mut page = ListPage::default();
            // A prefix that resolves outside the root (through a symlink) holds nothing.
            match stat_beneath(root, &prefix) {
                Err(e) if is_absent(&e) => return miss(root, page),
                _ => {}
            }
            // Merge objects and prefixes in key order for pagination.
            let mut all: Vec<(String, Option<ObjectMeta>)> = Vec::new();
            if delimiter {
                if let Some(entries) = read_dir_sorted(root, &prefix)? {
                    for (name, is_dir) in entries {
                        let key = format!("{prefix}{name}");
                        if is_dir {
                            all.push((format!("{key}/"), None));
                        } else if let Some(m) = stat_object(root, &key)? {
                            all.push((key, Some(m)));
                        }
                    }
                }
            } else {
                let mut metas = Vec::new();
                walk_files(root, &prefix, &mut Vec::new(), &mut metas)?;
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
        let _ended = WriteEnds(&self.writes);
        let path = self.path(key)?;
        if key.ends_with('/') {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        let _guard = match mode {
            PutMode::IfVersion(_) => Some(self.cas_lock.lock().await),
            _ => None,
        };
        let key = key.to_owned();
        let require_marker = self.require_marker;
        self.blocking(move |root| {
            LocalStorage::check_marker(root, require_marker)?;
            let parent = path.parent().expect("key has a parent under root");
            create_dirs_beneath(root, parent_key(&key)).map_err(io_err(&key))?;
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
                    let current = stat_object(root, &key)?;
                    if current.map(|m| m.version).as_deref() != Some(expected.as_str()) {
                        return Err(StorageError::PreconditionFailed(key.clone()));
                    }
                    tmp.persist(&path).map_err(|e| io_err(&key)(e.error))?;
                }
            }
            sync_dir(parent);
            stat_object(root, &key)?
                .ok_or_else(|| StorageError::Backend(format!("{key} vanished after write")))
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let _ended = WriteEnds(&self.writes);
        let path = self.path(prefix)?;
        let prefix = prefix.to_owned();
        self.blocking(move |root| {
            // Nothing outside the root is ever deleted, whatever a symlink on the way says.
            match stat_beneath(root, parent_key(&prefix)) {
                Err(e) if is_absent(&e) => return Ok(0),
                Err(e) => return Err(io_err(&prefix)(e)),
                Ok(_) => {}
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if is_absent(&e) => return Ok(0),
                Err(e) => return Err(io_err(&prefix)(e)),
            };
            if md.is_dir() && prefix.ends_with('/') {
                let mut files = Vec::new();
                walk_files(root, &prefix, &mut Vec::new(), &mut files)?;
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
        validate_key(prefix)?;
        let key = prefix.to_owned();
        let walk_key: WalkKey = (key.clone(), marker.to_owned(), descend as usize);
        let walks = self.walks.clone();
        // Read before anything is checked: a write that ends after this makes the walk
        // confirmed now untrusted again.
        let writes = self.writes.load(Ordering::Acquire);
        let cached = walks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&walk_key)
            .cloned();
        // Fresh, or another request is revalidating it: answer from it.
        if let Some(w) = &cached {
            if w.fresh(writes) || w.revalidating.swap(true, Ordering::AcqRel) {
                return Ok(w.result.clone());
            }
        }
        // This request revalidates (the flag is cleared when the walk is confirmed or dropped).
        let _revalidating = cached.clone().map(Revalidating);
        // A small cached walk is checked here; a large one in the blocking task below. Either
        // way it is checked once, and a stale one is walked again.
        let (small, large): (Option<Arc<Walk>>, Option<Arc<Walk>>) = match cached {
            Some(w) if w.stamps.len() <= INLINE_STAMPS => (Some(w), None),
            other => (None, other),
        };
        if let Some(walk) = small.filter(|w| w.is_current()) {
            walk.confirm(writes);
            return Ok(walk.result.clone());
        }
        let marker = marker.to_owned();
        // One blocking task for the whole walk (not one per directory), and no walk at all
        // while the previous one is still current (checking that is a stat per directory,
        // which is blocking work too).
        self.blocking(move |root| {
            if let Some(walk) = large.filter(|w| w.is_current()) {
                walk.confirm(writes);
                return Ok(walk.result.clone());
            }
            // Beneath the root only: a namespace symlinked to elsewhere holds nothing.
            match stat_beneath(root, &key) {
                Err(e) if is_absent(&e) => return miss(root, None),
                Err(e) => return Err(io_err(&key)(e)),
                Ok(md) if !md.is_dir() => {
                    return Err(io_err(&key)(std::io::Error::new(
                        ErrorKind::NotADirectory,
                        "a plain file stands where a directory should be",
                    )))
                }
                Ok(_) => {}
            }
            let mut walk = MarkedWalk {
                root,
                marker: &marker,
                descend,
                out: Vec::new(),
                stamps: Vec::new(),
                ancestors: Vec::new(),
            };
            walk.visit(&key, "")?;
            let MarkedWalk { mut out, stamps, .. } = walk;
            let anything = std::fs::read_dir(root.join(&key))
                .map_err(io_err(&key))?
                .next()
                .is_some();
            out.sort();
            let result: Option<Arc<[String]>> = anything.then(|| Arc::from(out));
            let mut walks = walks.lock().unwrap_or_else(|e| e.into_inner());
            if walks.len() >= MAX_WALKS {
                walks.clear();
            }
            walks.insert(walk_key, Arc::new(Walk::new(stamps, result.clone(), writes)));
            Ok(result)
        })
        .await
    }

    /// One `rename(2)` with `RENAME_NOREPLACE`: the version appears whole or not at all, and of
    /// two racing uploads exactly one wins. Files were fsynced during extraction; directories
    /// are fsynced here, the parent after the rename. The winner then writes the version's
    /// integrity record (SPEC §11.2; hashed from the staged files before the rename, so the
    /// record describes exactly what was published). A crash between the two leaves a version
    /// without a record, which `storage check` reports and `--repair` records.
    async fn publish_dir(
        &self,
        staged: &Path,
        dest: &str,
        _announce: &dyn super::publish::Announce,
    ) -> Result<()> {
        let _ended = WriteEnds(&self.writes);
        let target = self.path(dest)?;
        let staged = staged.to_owned();
        let key = dest.to_owned();
        let require_marker = self.require_marker;
        let record = self
            .blocking(move |root| {
                LocalStorage::check_marker(root, require_marker)?;
                let record = super::integrity::Record::of_dir(&staged)?;
                fsync_dirs(&staged).map_err(io_err(&key))?;
                let parent = target.parent().expect("version has a parent");
                create_dirs_beneath(root, parent_key(&key)).map_err(io_err(&key))?;
                let cwd = rustix::fs::CWD;
                match rustix::fs::renameat_with(
                    cwd,
                    &staged,
                    cwd,
                    &target,
                    rustix::fs::RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                        return Err(StorageError::AlreadyExists(key.clone()))
                    }
                    Err(e) => return Err(io_err(&key)(e.into())),
                }
                sync_dir(parent);
                Ok(record)
            })
            .await?;
        let (registry, version) = dest.rsplit_once('/').expect("a version path");
        self.put(
            &super::integrity::record_key(registry, version),
            record.render(),
            PutMode::Overwrite,
        )
        .await
        .map(drop)
    }

    /// A few `stat`s, inline (see [`LocalStorage::require_marker`]).
    async fn check_writable(&self) -> Result<()> {
        LocalStorage::check_marker(&self.root, self.require_marker)
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
    async fn cached_walks_see_hand_changes_within_a_second_and_writes_at_once() {
        let (d, s) = store().await;
        let root = d.path();
        let is_seg: DirFilter = |n| !n.contains('.');
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/versions.json"), "{}").unwrap();
        let list = |s: LocalStorage| async move {
            s.find_marked_dirs("@a/", "versions.json", is_seg).await.unwrap()
        };
        // Changes made by hand show within WALK_FRESH (polled for a generous bound).
        let eventually = |s: LocalStorage, want: Option<Vec<&'static str>>| async move {
            let deadline = std::time::Instant::now() + WALK_FRESH * 10;
            loop {
                let got = list(s.clone()).await.map(|l| l.to_vec());
                let want: Option<Vec<String>> =
                    want.clone().map(|w| w.iter().map(|x| x.to_string()).collect());
                if got == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{got:?} never became {want:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let first = list(s.clone()).await.unwrap();
        assert_eq!(&first[..], ["x"]);
        let again = list(s.clone()).await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "a warm listing is the cached walk itself"
        );
        // A new nested registry, a marker appearing in a visited directory, a removal.
        std::fs::create_dir_all(root.join("@a/y/z")).unwrap();
        std::fs::write(root.join("@a/y/z/versions.json"), "{}").unwrap();
        eventually(s.clone(), Some(vec!["x", "y/z"])).await;
        std::fs::write(root.join("@a/y/versions.json"), "{}").unwrap();
        eventually(s.clone(), Some(vec!["x", "y", "y/z"])).await;
        std::fs::remove_file(root.join("@a/x/versions.json")).unwrap();
        eventually(s.clone(), Some(vec!["y", "y/z"])).await;
        // A write through the storage shows on the very next listing.
        s.put("@a/w/versions.json", Bytes::from_static(b"{}"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["w", "y", "y/z"]);
        s.delete_prefix("@a/w/").await.unwrap();
        assert_eq!(&list(s.clone()).await.unwrap()[..], ["y", "y/z"]);
        std::fs::remove_dir_all(root.join("@a")).unwrap();
        eventually(s.clone(), None).await;
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
    async fn reads_through_the_held_root_follow_a_replaced_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/b"), b"one").unwrap();
        let s = LocalStorage::open(&root).unwrap().with_watcher();
        let w = s.watcher().expect("the test directory is on a local filesystem");
        let body = |f: Option<Fetched>| match f {
            Some(Fetched::Whole(o)) => Some(o.body),
            _ => None,
        };
        // As the hot cache does on a miss: sync, watch, read.
        let read = async |key: &str| {
            w.sync();
            w.watch(key);
            body(s.get_up_to(key, 1 << 20).await.unwrap())
        };
        assert_eq!(read("a/b").await.as_deref(), Some(&b"one"[..]));
        assert!(w.with_root(|_| ()).is_some(), "reads go through the held root");
        // Moved away and replaced: the new root is read.
        std::fs::rename(&root, root.with_file_name("old")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/b"), b"two").unwrap();
        assert_eq!(read("a/b").await.as_deref(), Some(&b"two"[..]));
        // Emptied, removed and made anew: removing an empty directory that is held open
        // sends no event, so absent answers are asked again by path.
        std::fs::remove_file(root.join("a/b")).unwrap();
        std::fs::remove_dir(root.join("a")).unwrap();
        assert_eq!(read("a/b").await, None);
        std::fs::remove_dir(&root).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/b"), b"three").unwrap();
        assert_eq!(read("a/b").await.as_deref(), Some(&b"three"[..]));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_root_is_unavailable_not_empty() {
        for watched in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap().join("root");
            std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
            std::fs::write(root.join("@a/x/versions.json"), b"{}").unwrap();
            let mut s = LocalStorage::open(&root).unwrap();
            if watched {
                s = s.with_watcher();
            }
            let is_seg: DirFilter = |n| !n.contains('.');
            assert!(s
                .get_up_to("@a/x/versions.json", 1 << 20)
                .await
                .unwrap()
                .is_some());
            assert!(
                s.head("@a/nope").await.unwrap().is_none(),
                "a miss with the root there"
            );
            std::fs::remove_dir_all(&root).unwrap();
            let gone = |r: Result<bool>| matches!(r, Err(StorageError::Unavailable(_)));
            assert!(gone(s.get("@a/x/versions.json").await.map(|o| o.is_some())));
            assert!(gone(
                s.get_up_to("@a/x/versions.json", 1 << 20)
                    .await
                    .map(|o| o.is_some())
            ));
            assert!(gone(s.head("@a/x/versions.json").await.map(|o| o.is_some())));
            assert!(gone(
                s.get_stream("@a/x/versions.json").await.map(|o| o.is_some())
            ));
            assert!(gone(
                s.list("", true, None, 10).await.map(|p| p.prefixes.is_empty())
            ));
            assert!(gone(
                s.list("@a/", false, None, 10).await.map(|p| p.objects.is_empty())
            ));
            assert!(gone(
                s.find_marked_dirs("@b/", "versions.json", is_seg)
                    .await
                    .map(|f| f.is_some())
            ));
            // Back: served again, and a miss is a miss.
            std::fs::create_dir_all(root.join("@a/x")).unwrap();
            std::fs::write(root.join("@a/x/versions.json"), b"{1}").unwrap();
            let o = s.get("@a/x/versions.json").await.unwrap().unwrap();
            assert_eq!(&o.body[..], b"{1}");
            assert!(s.head("@a/nope").await.unwrap().is_none());
            assert_eq!(s.list("", true, None, 10).await.unwrap().prefixes, ["@a/"]);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_held_root_removed_without_an_event_is_dropped_at_the_next_miss() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let s = LocalStorage::open(&root).unwrap().with_watcher();
        let w = s.watcher().expect("the test directory is on a local filesystem");
        let read = async |key: &str| {
            w.sync();
            w.watch(key);
            s.get_up_to(key, 1 << 20).await
        };
        // A miss on an empty root: the root is watched and held open.
        assert!(read("k").await.unwrap().is_none());
        assert!(w.with_root(|_| ()).is_some());
        // Removed while held: the kernel sends no event until the descriptor is closed.
        std::fs::remove_dir(&root).unwrap();
        let g = w.sync();
        assert!(matches!(read("k").await, Err(StorageError::Unavailable(_))));
        assert!(w.with_root(|_| ()).is_none(), "the removed root is still held");
        assert!(w.sync() > g, "entries confirmed before are not trusted any more");
        // Restored: read, and watched again (a new entry in the root itself is seen).
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("k"), b"v").unwrap();
        assert!(matches!(read("k").await.unwrap(), Some(Fetched::Whole(o)) if &o.body[..] == b"v"));
        let g = w.sync();
        std::fs::write(root.join("new"), b"").unwrap();
        assert!(w.sync() > g, "the restored root is not watched");
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

    #[tokio::test(flavor = "multi_thread")]
    async fn overlong_names_are_absent() {
        let (_d, s) = store().await;
        let segment = "x".repeat(300);
        let deep = "abcdefg/".repeat(700);
        for key in [segment.clone(), format!("@a/{segment}/v"), format!("{deep}f")] {
            assert!(s.get(&key).await.unwrap().is_none());
            assert!(s.head(&key).await.unwrap().is_none());
            assert!(s
                .find_marked_dirs(&format!("{key}/"), "versions.json", |_| true)
                .await
                .unwrap()
                .is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn symlinks_are_followed_beneath_the_root_only() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::create_dir_all(outside.path().join("reg/1.0.0")).unwrap();
        std::fs::write(outside.path().join("reg/versions.json"), b"{}").unwrap();
        let (d, s) = store().await;
        let root = d.path();
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/versions.json"), b"{}").unwrap();
        std::fs::write(root.join("@a/x/1.0.0/f"), b"inside").unwrap();
        symlink(outside.path().join("secret"), root.join("@a/x/1.0.0/abs")).unwrap();
        symlink("../../../../secret", root.join("@a/x/1.0.0/rel")).unwrap();
        symlink(outside.path(), root.join("@a/x/1.0.0/dir")).unwrap();
        symlink(outside.path().join("reg"), root.join("@a/stolen")).unwrap();
        symlink(outside.path(), root.join("@out")).unwrap();
        symlink("f", root.join("@a/x/1.0.0/alias")).unwrap();
        symlink("x", root.join("@a/y")).unwrap();
        for key in [
            "@a/x/1.0.0/abs",
            "@a/x/1.0.0/rel",
            "@a/x/1.0.0/dir/secret",
            "@out/secret",
        ] {
            assert!(s.get(key).await.unwrap().is_none(), "{key}");
            assert!(s.head(key).await.unwrap().is_none(), "{key}");
        }
        assert_eq!(
            &s.get("@a/x/1.0.0/alias").await.unwrap().unwrap().body[..],
            b"inside"
        );
        assert!(s.head("@a/y/versions.json").await.unwrap().is_some());
        let found = s.find_marked_dirs("@a/", "versions.json", |n| !n.contains('.'));
        assert_eq!(&found.await.unwrap().unwrap()[..], ["x", "y"]);
        assert!(s
            .find_marked_dirs("@out/", "versions.json", |_| true)
            .await
            .unwrap()
            .is_none());
        let all = s.list("@a/", false, None, 100).await.unwrap();
        let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "@a/x/1.0.0/alias",
                "@a/x/1.0.0/f",
                "@a/x/versions.json",
                "@a/y/1.0.0/alias",
                "@a/y/1.0.0/f",
                "@a/y/versions.json"
            ]
        );
        assert!(s.list("@out/", true, None, 10).await.unwrap().prefixes.is_empty());
        let root_page = s.list("", true, None, 10).await.unwrap();
        assert_eq!(root_page.prefixes, ["@a/"]);
        // Deleting through a symlink never touches what is outside.
        assert_eq!(s.delete_prefix("@out/").await.unwrap(), 0);
        assert_eq!(s.delete_prefix("@a/x/1.0.0/dir/").await.unwrap(), 0);
        assert!(outside.path().join("secret").exists());
        assert!(outside.path().join("reg/versions.json").exists());
    }

    #[test]
    fn both_ways_of_opening_beneath_agree() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"f").unwrap();
        symlink("b/f", root.join("a/in")).unwrap();
        symlink("../b", root.join("a/b/up")).unwrap();
        symlink(outside.path().join("secret"), root.join("a/abs")).unwrap();
        symlink("../../secret", root.join("a/rel")).unwrap();
        symlink(outside.path(), root.join("a/dir")).unwrap();
        symlink("loop", root.join("a/loop")).unwrap();
        let flags = rustix::fs::OFlags::RDONLY;
        let kind = |r: std::io::Result<OwnedFd>| match r {
            Ok(_) => "open",
            Err(e) if is_absent(&e) => "absent",
            Err(_) => "error",
        };
        for (rel, expected) in [
            ("a/b/f", "open"),
            ("a/in", "open"),
            ("a/b/up/up/f", "open"),
            ("", "open"),
            ("a/abs", "absent"),
            ("a/rel", "absent"),
            ("a/dir/secret", "absent"),
            ("a/loop", "absent"),
            ("a/missing", "absent"),
            ("a/b/f/x", "absent"),
        ] {
            assert_eq!(kind(open_beneath(&root, rel, flags)), expected, "openat2 {rel}");
            assert_eq!(
                kind(open_beneath_by_path(&root, rel, flags)),
                expected,
                "fallback {rel}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn symlink_loops_end_the_walks() {
        use std::os::unix::fs::symlink;
        let (d, s) = store().await;
        let root = d.path();
        for reg in ["a", "b/c"] {
            std::fs::create_dir_all(root.join("@n").join(reg)).unwrap();
            std::fs::write(root.join("@n").join(reg).join("versions.json"), b"{}").unwrap();
        }
        // Three ways back up: a walk that followed them would branch at every level.
        symlink("..", root.join("@n/a/loop")).unwrap();
        symlink("../..", root.join("@n/b/c/up")).unwrap();
        symlink(".", root.join("@n/self")).unwrap();
        let found = s
            .find_marked_dirs("@n/", "versions.json", |_| true)
            .await
            .unwrap();
        assert_eq!(&found.unwrap()[..], ["a", "b/c"]);
        let all = s.list("@n/", false, None, 100).await.unwrap();
        assert_eq!(all.objects.len(), 2);
        assert_eq!(s.delete_prefix("@n/").await.unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_need_the_root_and_its_marker() {
        let (d, s) = store().await;
        let s = s.require_marker();
        let root = d.path().to_owned();
        let put = |s: LocalStorage, key: &'static str| async move {
            s.put(key, Bytes::from_static(b"1"), PutMode::Overwrite).await
        };
        assert!(matches!(
            put(s.clone(), "@a/x").await,
            Err(StorageError::Unavailable(_))
        ));
        std::fs::write(root.join(rack_core::layout::HEALTHCHECK_KEY), b"").unwrap();
        put(s.clone(), "@a/x").await.unwrap();
        assert!(s.check_writable().await.is_ok());

        let staged = tempfile::tempdir().unwrap();
        std::fs::create_dir(staged.path().join("v")).unwrap();
        std::fs::write(staged.path().join("v/registry.json"), b"{}").unwrap();
        let away = root.with_extension("away");
        std::fs::rename(&root, &away).unwrap();
        assert!(matches!(
            put(s.clone(), "@a/y/z").await,
            Err(StorageError::Unavailable(_))
        ));
        assert!(matches!(
            s.publish_dir(
                &staged.path().join("v"),
                "@a/r/1.0.0",
                &crate::storage::publish::Silent
            )
            .await,
            Err(StorageError::Unavailable(_))
        ));
        assert!(matches!(
            s.check_writable().await,
            Err(StorageError::Unavailable(_))
        ));
        assert!(!root.exists(), "the root was re-created");
        // Even without the marker check, a write never re-creates the root.
        let lenient = LocalStorage {
            require_marker: false,
            ..s.clone()
        };
        assert!(put(lenient, "@a/y/z").await.is_err());
        assert!(!root.exists(), "the root was re-created");
        std::fs::rename(&away, &root).unwrap();
        s.publish_dir(
            &staged.path().join("v"),
            "@a/r/1.0.0",
            &crate::storage::publish::Silent,
        )
        .await
        .unwrap();
        assert!(s.head("@a/r/1.0.0/registry.json").await.unwrap().is_some());
    }
}
