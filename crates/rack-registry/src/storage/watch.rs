//! Change notification for the local backend (Linux inotify), so that a hot object can be
//! served without a `stat` per read while still never being stale.
//!
//! The hot cache's rule is that every read sees every change completed before the read began.
//! With a `stat` per read that costs a path walk per request (about a fifth of a small read's
//! CPU, measured in docs/PERFORMANCE.md). Here instead:
//!
//! - Before a file is cached, an inotify watch is put on the file and on every directory from
//!   the storage root down to it ([`Watcher::watch`]). A write, attribute change, rename or
//!   removal of the file, or of any directory on its path (a registry directory swapped by
//!   `mv`), queues an event in the kernel *before* the syscall that made the change returns.
//! - Every read first looks at that queue ([`Watcher::sync`]: one `ioctl(FIONREAD)`, much
//!   cheaper than a `stat` with its path walk), and drains it when it is not empty. Any event
//!   at all bumps a generation number, and a cached entry is trusted without a `stat` only if
//!   it was last confirmed in the current generation. Draining and bumping happen under one
//!   lock, and an odd `draining` count says that a drain is under way, so a read can never see
//!   an empty queue while another thread holds an event it has not counted yet. A quiet queue
//!   (the usual case) takes no lock: the HTTP workers no longer queue behind each other.
//!
//! A change therefore costs one `stat` per hot object afterwards (publishes are rare next to
//! reads). Where a watch cannot be placed (a directory on a filesystem not known to deliver
//! events for every change: NFS, SMB, FUSE and other network or user-space filesystems; the
//! watch limit reached), the entry is simply not trusted and the read falls back to a `stat`,
//! so correctness never depends on the watches. `FS_WATCH=off` turns the whole mechanism off.
//!
//! Known limit (also in docs/decisions.md): changes made through a shared writable `mmap`
//! produce no inotify event; such an edit is seen at the next generation change.

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

/// The generation an entry gets when it must never be trusted without a `stat`.
pub const UNWATCHED: u64 = u64::MAX;

/// Past this many watches, new files are served with a `stat` per read instead (the kernel's
/// own limit, `fs.inotify.max_user_watches`, is shared with every other program of the user).
const MAX_WATCHES: usize = 65_536;

/// Every change that can alter what a path resolves to or what the file holds.
fn watch_flags() -> WatchFlags {
    WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
}

/// Filesystems whose changes all go through this kernel, so that inotify sees every one of
/// them (`statfs` magic numbers; anything else is not watched).
const LOCAL_FILESYSTEMS: [u64; 9] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x2FC1_2FC1, // zfs
    0xF2F5_2010, // f2fs
    0xCA45_1A4E, // bcachefs
    0x5265_4973, // reiserfs
    0x8584_58F6, // ramfs
];

/// Whether `path` is on a watched filesystem (`None`: it cannot be asked, e.g. it is missing).
fn on_local_filesystem(path: &Path) -> Option<bool> {
    let s = rustix::fs::statfs(path).ok()?;
    Some(LOCAL_FILESYSTEMS.contains(&(s.f_type as u64)))
}

struct State {
    buf: Vec<MaybeUninit<u8>>,
    /// Paths with a watch on whatever they resolved to when it was placed.
    watched: HashSet<PathBuf>,
    /// Directories found on a filesystem that is not watched, so that reads under them do not
    /// ask `statfs` again each time (forgotten with the watches).
    foreign: HashSet<PathBuf>,
}

pub struct Watcher {
    root: PathBuf,
    /// The inotify instance (replaced, under `state`'s lock, to drop every watch at once).
    fd: RwLock<OwnedFd>,
    state: Mutex<State>,
    generation: AtomicU64,
    /// Bumped when a drain starts and when it ends (odd: events may have been taken from the
    /// queue and not counted in `generation` yet).
    draining: AtomicU64,
    /// Keys whose file and every directory above it are watched by the current instance: a
    /// miss on such a key needs no lock and no path hashing (cleared with the watches).
    complete: RwLock<HashSet<Box<str>>>,
    /// Bumped by every [`Watcher::reset`], before it drops the watches: a caller that saw
    /// [`Watcher::watch`] succeed while this was `e` may take the key as watched for as long as
    /// this is still `e` (see [`Watcher::epoch`]).
    resets: AtomicU64,
    /// The root directory, opened after its watch was placed (so that moving or removing it
    /// resets everything, this included): reads open files beneath it without opening the
    /// root by path each time (see [`Watcher::with_root`]).
    root_dir: RwLock<Option<OwnedFd>>,
}

/// Events after which a watched path may resolve to something else (a rename, a removal, a
/// lost watch, a lost event): every watch is dropped and placed again on the next reads.
fn structural() -> ReadFlags {
    ReadFlags::MOVED_FROM
        | ReadFlags::MOVED_TO
        | ReadFlags::DELETE
        | ReadFlags::DELETE_SELF
        | ReadFlags::MOVE_SELF
        | ReadFlags::IGNORED
        | ReadFlags::QUEUE_OVERFLOW
        | ReadFlags::UNMOUNT
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("root", &self.root)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn new_instance() -> rustix::io::Result<OwnedFd> {
    inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
}

impl Watcher {
    /// A watcher for the tree under `root` (canonical), or `None` when inotify is unavailable
    /// or `root` is not on a local filesystem.
    pub fn new(root: &Path) -> Option<Watcher> {
        if on_local_filesystem(root) != Some(true) {
            tracing::info!(root = %root.display(), "storage root is not on a local filesystem: every hot read is revalidated with a stat");
            return None;
        }
        let fd = match new_instance() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: every hot read is revalidated with a stat");
                return None;
            }
        };
        Some(Watcher {
            root: root.to_owned(),
            fd: RwLock::new(fd),
            state: Mutex::new(State {
                buf: vec![MaybeUninit::uninit(); 16 * 1024],
                watched: HashSet::new(),
                foreign: HashSet::new(),
            }),
            generation: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            complete: RwLock::new(HashSet::new()),
            resets: AtomicU64::new(0),
            root_dir: RwLock::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fd(&self) -> std::sync::RwLockReadGuard<'_, OwnedFd> {
        self.fd.read().unwrap_or_else(|e| e.into_inner())
    }

    fn complete(&self) -> std::sync::RwLockReadGuard<'_, HashSet<Box<str>>> {
        self.complete.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in every change queued so far; returns the current generation. An entry confirmed
    /// in this generation (with its watches in place) is still current.
    pub fn sync(&self) -> u64 {
        match self.quiet() {
            Some(generation) => generation,
            None => self.drain(),
        }
    }

    /// The current generation if the queue is empty and no drain is under way, without the
    /// lock. Sound because a drain makes `draining` odd before it takes any event and even
    /// only after counting them: an event queued before this call is either still queued
    /// (`FIONREAD` > 0), or taken by a drain that had made `draining` odd before this call's
    /// `FIONREAD` (so `draining` moved or was odd at `before`: `None`), or by one that
    /// counted it before `before` was read (so `generation` includes it).
    fn quiet(&self) -> Option<u64> {
        let before = self.draining.load(Ordering::SeqCst);
        if before % 2 == 1 {
            return None;
        }
        if rustix::io::ioctl_fionread(&*self.fd()) != Ok(0) {
            return None;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        (self.draining.load(Ordering::SeqCst) == before).then_some(generation)
    }

    /// Read the queue under the lock, counting what it held.
    fn drain(&self) -> u64 {
        let mut state = self.lock();
        let state = &mut *state;
        self.draining.fetch_add(1, Ordering::SeqCst);
        let mut changed = false;
        let mut reset = false;
        let fd = self.fd();
        let mut reader = inotify::Reader::new(&*fd, &mut state.buf);
        loop {
            match reader.next() {
                Ok(event) => {
                    changed = true;
                    reset |= event.events().intersects(structural());
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events failed; watching anew");
                    changed = true;
                    reset = true;
                    break;
                }
            }
        }
        drop(fd);
        if reset {
            self.reset(state);
        }
        let generation = if changed {
            self.generation.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.generation.load(Ordering::SeqCst)
        };
        self.draining.fetch_add(1, Ordering::SeqCst);
        generation
    }

    /// Drop every watch and the held root (under `state`'s lock): paths are watched again,
    /// and the root opened again by path, as they are read.
    fn reset(&self, state: &mut State) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        // A fresh instance drops every old watch at once (the kernel removes them with the
        // old descriptor).
        match new_instance() {
            Ok(fd) => *self.fd.write().unwrap_or_else(|e| e.into_inner()) = fd,
            Err(e) => tracing::warn!(error = %e, "cannot renew the inotify instance"),
        }
        self.complete.write().unwrap_or_else(|e| e.into_inner()).clear();
        *self.root_dir.write().unwrap_or_else(|e| e.into_inner()) = None;
        state.watched.clear();
        state.foreign.clear();
    }

    /// After a miss through the held root ([`Watcher::with_root`]): if the directory it holds
    /// was removed (no link left), start over as after a structural event. The kernel reports
    /// the removal of a directory only once its last descriptor is closed, and this one is
    /// held, so no event would ever say it; the watches placed under it are dead too, and a
    /// root restored in its place would go unwatched. Returns whether it was reset.
    ///
    /// Asked on misses only (one `fstat`): hits through a removed directory cannot happen.
    pub fn forget_unlinked_root(&self) -> bool {
        let unlinked = |dir: &Option<OwnedFd>| {
            dir.as_ref()
                .is_some_and(|fd| rustix::fs::fstat(fd).map_or(true, |st| st.st_nlink == 0))
        };
        if !unlinked(&self.root_dir.read().unwrap_or_else(|e| e.into_inner())) {
            return false;
        }
        let mut state = self.lock();
        // Checked again under the lock: another miss may have reset it meanwhile.
        if !unlinked(&self.root_dir.read().unwrap_or_else(|e| e.into_inner())) {
            return false;
        }
        tracing::warn!(root = %self.root.display(), "the storage root directory held open was removed: watching anew");
        // As a drain does: `draining` odd while the reset is under way, so that no read takes
        // the generation from before it as current.
        self.draining.fetch_add(1, Ordering::SeqCst);
        self.reset(&mut state);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.draining.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// The instance of the watches: read it *before* a [`Watcher::watch`] that succeeds, and
    /// the key stays watched while this returns the same value. Lets a caller that remembers
    /// keys anyway (the hot cache's tag memo) skip `watch` on a miss: one lookup of the key
    /// instead of two, on the path where both are cold in the CPU's caches.
    pub fn epoch(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    /// Make sure that any later change to the file at `key` (relative to the root), or to a
    /// directory on its path, is reported. `false` if that cannot be promised (then the
    /// caller revalidates with a `stat` on every read). Call before reading the file.
    pub fn watch(&self, key: &str) -> bool {
        // Only keys validated below are ever in `complete`.
        if self.complete().contains(key) {
            return true;
        }
        // Keys reach here before the backend sees them: never watch outside the root.
        if super::validate_key(key).is_err() {
            return false;
        }
        let mut state = self.lock();
        let mut path = self.root.clone();
        let fd = self.fd();
        if !self.watch_one(&mut state, &fd, &path) {
            return false;
        }
        {
            let mut root_dir = self.root_dir.write().unwrap_or_else(|e| e.into_inner());
            if root_dir.is_none() {
                use rustix::fs::{Mode, OFlags};
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                *root_dir = rustix::fs::open(&self.root, flags, Mode::empty()).ok();
            }
        }
        for part in key.trim_end_matches('/').split('/') {
            path.push(part);
            if !self.watch_one(&mut state, &fd, &path) {
                return false;
            }
        }
        // Under `state`'s lock, like the clearing on a reset: never a key of an old instance.
        let mut complete = self.complete.write().unwrap_or_else(|e| e.into_inner());
        if complete.len() < MAX_WATCHES {
            complete.insert(key.into());
        }
        true
    }

    fn watch_one(&self, state: &mut State, fd: &OwnedFd, path: &Path) -> bool {
        if state.watched.contains(path) {
            return true;
        }
        if state.watched.len() >= MAX_WATCHES || state.foreign.contains(path) {
            return false;
        }
        // Every path is asked, files too (a bind-mounted file may be on another filesystem
        // than its directory); a missing one is not remembered, it may appear.
        match on_local_filesystem(path) {
            None => return false,
            Some(false) => {
                if state.foreign.len() < MAX_WATCHES {
                    state.foreign.insert(path.to_owned());
                }
                return false;
            }
            Some(true) => {}
        }
        match inotify::add_watch(fd, path, watch_flags()) {
            Ok(_) => {
                state.watched.insert(path.to_owned());
                true
            }
            Err(e) => {
                if e == Errno::NOSPC {
                    tracing::warn!("inotify watch limit reached (fs.inotify.max_user_watches): more hot reads are revalidated with a stat");
                }
                false
            }
        }
    }

    /// Run `f` with the root directory as it was when the current watches were placed, if it
    /// is open. The same trust as a watched entry's: the root itself is watched, so a move or
    /// removal of it drops this descriptor at the next [`Watcher::sync`], before any read
    /// that starts after the change.
    pub fn with_root<T>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T) -> Option<T> {
        use std::os::fd::AsFd;
        let root_dir = self.root_dir.read().unwrap_or_else(|e| e.into_inner());
        root_dir.as_ref().map(|dir| f(dir.as_fd()))
    }

    /// How many paths are watched (for tests and diagnostics).
    pub fn watched(&self) -> usize {
        self.lock().watched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn setup() -> (tempfile::TempDir, Watcher) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{}").unwrap();
        let w = Watcher::new(&root).expect("the test directory is on a local filesystem");
        (dir, w)
    }

    #[test]
    fn quiet_tree_keeps_its_generation_and_changes_bump_it() {
        let (dir, w) = setup();
        let root = dir.path().canonicalize().unwrap();
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        // root, @a, @a/x, @a/x/1.0.0 and the file
        assert_eq!(w.watched(), 5);
        let g = w.sync();
        assert_eq!(w.sync(), g, "no change, same generation");
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{1}").unwrap();
        let g2 = w.sync();
        assert!(g2 > g, "an edit in place is seen");
        assert_eq!(w.sync(), g2);
        // A rename high up the path: the directory of the file is swapped.
        std::fs::rename(root.join("@a/x"), root.join("@a/x-old")).unwrap();
        let g3 = w.sync();
        assert!(g3 > g2, "a moved ancestor is seen");
        // Every watch is dropped after a structural change, to be placed again on reads.
        assert_eq!(w.watched(), 0);
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{2}").unwrap();
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        let g4 = w.sync();
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{3}").unwrap();
        assert!(w.sync() > g4, "the new directory is watched again");
    }

    #[test]
    fn quiet_reads_take_no_lock_and_a_drain_in_progress_is_never_skipped() {
        let (dir, w) = setup();
        let root = dir.path().canonicalize().unwrap();
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        let g = w.sync();
        {
            // Another thread in a drain or placing watches: a quiet queue is still answered,
            // and a key already watched needs nothing more (both used to wait for the lock).
            let _busy = w.lock();
            assert_eq!(w.quiet(), Some(g));
            assert_eq!(w.sync(), g);
            assert!(w.watch("@a/x/1.0.0/registry.json"));
        }
        // An event queued: the quick look declines and the drain counts it.
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{1}").unwrap();
        assert_eq!(w.quiet(), None);
        let g2 = w.sync();
        assert!(g2 > g);
        assert_eq!(w.quiet(), Some(g2));
        // A drain under way (events taken, not counted yet): never answered from `generation`.
        w.draining.fetch_add(1, Ordering::SeqCst);
        assert_eq!(w.quiet(), None);
        w.draining.fetch_add(1, Ordering::SeqCst);
        assert_eq!(w.quiet(), Some(g2));
    }

    #[test]
    fn the_root_descriptor_follows_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("root");
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{}").unwrap();
        let w = Watcher::new(&root).unwrap();
        let ino = |fd: std::os::fd::BorrowedFd<'_>| rustix::fs::fstat(fd).unwrap().st_ino;
        assert!(w.with_root(ino).is_none(), "opened with the first watches");
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        let first = w.with_root(ino).unwrap();
        assert_eq!(first, std::fs::metadata(&root).unwrap().ino());
        // The root moved away and another put in its place: the old descriptor is dropped
        // at the next sync, and the new root is opened with the next watches.
        let moved = root.with_file_name("moved");
        std::fs::rename(&root, &moved).unwrap();
        std::fs::create_dir_all(root.join("@a/x/1.0.0")).unwrap();
        std::fs::write(root.join("@a/x/1.0.0/registry.json"), b"{}").unwrap();
        w.sync();
        assert!(w.with_root(ino).is_none());
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        let second = w.with_root(ino).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, std::fs::metadata(&root).unwrap().ino());
    }

    #[test]
    fn a_hard_link_edit_elsewhere_is_seen() {
        let (dir, w) = setup();
        let root = dir.path().canonicalize().unwrap();
        let outside = tempfile::tempdir_in(dir.path()).unwrap();
        let link = outside.path().join("alias.json");
        std::fs::hard_link(root.join("@a/x/1.0.0/registry.json"), &link).unwrap();
        assert!(w.watch("@a/x/1.0.0/registry.json"));
        let g = w.sync();
        std::fs::write(&link, b"{changed}").unwrap();
        assert!(w.sync() > g);
    }

    #[test]
    fn directories_on_other_filesystems_are_not_watched() {
        let (dir, w) = setup();
        let root = dir.path().canonicalize().unwrap();
        // procfs stands for any filesystem not known to report every change (NFS, FUSE...).
        std::os::unix::fs::symlink("/proc/self", root.join("@a/proc")).unwrap();
        for _ in 0..2 {
            assert!(!w.watch("@a/proc/status"));
        }
        assert!(w.lock().foreign.contains(&root.join("@a/proc")));
        // Root and @a were watched on the way down; nothing below the foreign directory.
        assert_eq!(w.watched(), 2);
    }

    #[test]
    fn missing_and_invalid_paths_are_not_promised() {
        let (_dir, w) = setup();
        assert!(!w.watch("@a/../../etc/passwd"));
        assert!(!w.watch(""));
        assert_eq!(
            w.watched(),
            0,
            "nothing outside the root, nothing for an invalid key"
        );
        assert!(!w.watch("@a/nope/1.0.0/registry.json"));
        assert!(
            w.lock().foreign.is_empty(),
            "a missing path may still appear: not foreign"
        );
    }
}
