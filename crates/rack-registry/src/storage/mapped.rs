//! Small files served from the page cache through read-only memory maps, each guarded by a read
//! lease.
//!
//! A map costs the process a few hundred bytes (its VMA and page-table share), where a heap
//! copy costs the file's length, so a working set far larger than `CACHE_MAX_BYTES` stays
//! "cached", and a read of it is a hit: `writev` copies from the page cache to the socket, with
//! no `open`, `stat`, `read` or `close` (nginx gets the same from `open_file_cache` and
//! `sendfile`). Measured in docs/PERFORMANCE.md, "Item 3, ninth pass".
//!
//! A map shows a file's *current* bytes, and files may be edited in place (an operator's `cp`
//! or editor). Unguarded, a response in flight during an edit would mix new bytes under the old
//! `ETag`, and a truncation would make any user-space read of the map (hashing, compressing,
//! parsing) a `SIGBUS`. So every map holds a read lease (`fcntl(F_SETLEASE, F_RDLCK)`, as Samba
//! does for oplocks): another process's open for writing, or a truncation, waits while the
//! kernel tells us with `SIGIO`. The server then finds the breaking files in `/proc/locks` and
//! calls [`Maps::break_leases`], which, for every live map of those files, copies the map's
//! bytes (still under the lease, so they are the version served) into private anonymous memory
//! and moves that memory onto the map's own addresses (`mremap`, one step under the kernel's
//! address-space lock). Every [`Bytes`] holding the map, in the cache or in a response however
//! far it got, now reads identical bytes that no longer belong to the file; the file's last
//! reference goes with the file mapping, and with it the lease, so the writer proceeds within
//! milliseconds whatever the readers do (a receive buffer never read, a zero HTTP/2 window).
//! Responses in flight finish with the old bytes under the old `ETag`; the cache entries of
//! those files are dropped, so the next read sees the edit. (The lease belongs to the open
//! file, which the map keeps open, so no descriptor is held.) A file that cannot be leased
//! (open for writing elsewhere, owned by another user, a filesystem without leases) is read
//! into the heap as before. Only if the copy cannot be made (no memory for 64 KiB) does a map
//! stay until its last response ends, or until the kernel breaks the lease by force after
//! `/proc/sys/fs/lease-break-time` (45 s).
//!
//! Maps are bounded in number (a quarter of `vm.max_map_count`, at most [`MAX_MAPS`]) and in
//! bytes (a multiple of the cache's budget); past either bound a file is read into the heap.
//! Only the server takes leases, after installing its `SIGIO` listener: `SIGIO`'s default
//! action ends the process.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

/// Files at least this large are mapped; a smaller one costs less as a heap copy than a page
/// of address space and a VMA.
pub const MAP_MIN: u64 = 4096;
/// At most this many maps (each a VMA, and a lease the kernel tracks).
pub const MAX_MAPS: usize = 32_768;
/// What a map is charged in the hot cache instead of its length: its VMA, its page-table
/// share and the lease, roughly.
pub const MAP_CHARGE: u64 = 512;

/// A file's identity as `/proc/locks` prints it: device major, minor, inode.
type Inode = (u64, u64, u64);

/// The maps alive, what they hold, and where their leases are.
#[derive(Debug)]
pub struct Maps {
    max_maps: usize,
    max_bytes: u64,
    live: AtomicUsize,
    bytes: AtomicU64,
    /// The maps of each file that still map it (not yet copied out).
    files: Mutex<HashMap<Inode, Vec<Arc<Region>>>>,
    pid: u32,
}

/// What a region's addresses hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The file, under its lease.
    File,
    /// A private copy of the file's bytes, taken under the lease: the lease is gone.
    Copy,
    /// Nothing: unmapped.
    Gone,
}

/// The addresses of one map. Its state lock is held while the addresses change (copied out or
/// unmapped), so that a copy never lands on addresses already given back.
#[derive(Debug)]
struct Region {
    addr: usize,
    len: usize,
    inode: Inode,
    key: String,
    held: Mutex<Held>,
}

impl Region {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The map's length rounded up to whole pages, as the kernel maps it.
    fn span(&self) -> usize {
        let page = page_size();
        self.len.div_ceil(page) * page
    }

    /// Put a private copy of the bytes in place of the file (see the module docs). Whether the
    /// file is no longer mapped here.
    fn copy_out(&self) -> bool {
        let mut held = self.held();
        if *held != Held::File {
            return true;
        }
        let span = self.span();
        // SAFETY: a fresh private anonymous mapping, no address asked for.
        let copy = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if copy == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: `addr..addr + len` is our file map (held is `File` under its lock), readable
        // while the lease is held, which it is until the file mapping goes below; `copy` is
        // `span >= len` writable bytes of our own; they do not overlap. Then `copy` is moved,
        // whole pages, onto the map's own pages: the kernel unmaps the file there and puts the
        // copy in one step under its address-space lock, so a concurrent reader of these
        // addresses (another thread's `writev`) sees the file's bytes or the copy's, which are
        // the same.
        unsafe {
            std::ptr::copy_nonoverlapping(self.addr as *const u8, copy.cast::<u8>(), self.len);
            libc::mprotect(copy, span, libc::PROT_READ);
            let moved = libc::mremap(
                copy,
                span,
                span,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.addr as *mut libc::c_void,
            );
            if moved == libc::MAP_FAILED {
                libc::munmap(copy, span);
                return false;
            }
        }
        *held = Held::Copy;
        true
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf with a constant name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(1)
}

/// One map: the bytes of a [`Bytes`] body, unmapped (and its lease released, if it still
/// holds the file) on drop.
struct Mapped {
    region: Arc<Region>,
    maps: Arc<Maps>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the region's addresses stay mapped, to the file or to an identical copy,
        // until `Mapped` is dropped.
        unsafe { std::slice::from_raw_parts(self.region.addr as *const u8, self.region.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        {
            let mut held = self.region.held();
            // SAFETY: our own mapping (of the file or of its copy), whole pages, unmapped once.
            unsafe { libc::munmap(self.region.addr as *mut libc::c_void, self.region.span()) };
            *held = Held::Gone;
        }
        self.maps.live.fetch_sub(1, Ordering::Relaxed);
        self.maps
            .bytes
            .fetch_sub(self.region.len as u64, Ordering::Relaxed);
        self.maps.forget(&self.region);
    }
}

impl Maps {
    /// Maps of at most `max_bytes` in all, or `None` where leases cannot be watched (no
    /// `/proc/locks`).
    pub fn new(max_bytes: u64) -> Option<Arc<Maps>> {
        std::fs::metadata("/proc/locks").ok()?;
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530);
        Some(Maps::with_limits((max_map_count / 4).min(MAX_MAPS), max_bytes))
    }

    fn with_limits(max_maps: usize, max_bytes: u64) -> Arc<Maps> {
        Arc::new(Maps {
            max_maps,
            max_bytes,
            live: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            files: Mutex::new(HashMap::new()),
            pid: std::process::id(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Inode, Vec<Arc<Region>>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `region` out of the index (copied out or unmapped).
    fn forget(&self, region: &Arc<Region>) {
        let mut files = self.lock();
        if let Some(regions) = files.get_mut(&region.inode) {
            regions.retain(|r| !Arc::ptr_eq(r, region));
            if regions.is_empty() {
                files.remove(&region.inode);
            }
        }
    }

    /// Maps alive now (holding the file or a copy of it).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether a file of `size` bytes may be mapped now (at most `max` bytes).
    fn fits(&self, size: u64, max: u64) -> bool {
        (MAP_MIN..=max).contains(&size)
            && self.live.load(Ordering::Relaxed) < self.max_maps
            && self.bytes.load(Ordering::Relaxed) + size <= self.max_bytes
    }

    /// Map `file` (opened read-only, `size` bytes by its `fstat`, at most `max`) under a read
    /// lease: its body and the metadata taken once the lease was held (a write finished before
    /// the lease shows in it; none can start after). `None`: read it into the heap instead.
    pub fn map(
        self: &Arc<Self>,
        file: &std::fs::File,
        key: &str,
        size: u64,
        max: u64,
    ) -> Option<(Bytes, std::fs::Metadata)> {
        if !self.fits(size, max) {
            return None;
        }
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
            return None;
        }
        let unlease = || {
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        };
        let md = match file.metadata() {
            Ok(md) if md.is_file() && self.fits(md.len(), max) => md,
            _ => {
                unlease();
                return None;
            }
        };
        let len = md.len() as usize;
        // SAFETY: a read-only shared map of a file we opened; nobody may write the file or cut
        // it short while the lease is held, and the map is copied out before the lease goes
        // (see the module docs).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            unlease();
            return None;
        }
        let inode = (
            libc::major(md.dev()) as u64,
            libc::minor(md.dev()) as u64,
            md.ino(),
        );
        let region = Arc::new(Region {
            addr: addr as usize,
            len,
            inode,
            key: key.to_owned(),
            held: Mutex::new(Held::File),
        });
        self.live.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(md.len(), Ordering::Relaxed);
        self.lock().entry(inode).or_default().push(region.clone());
        let mapped = Mapped {
            region,
            maps: self.clone(),
        };
        // A break that began before the map was in the index was not seen by the `SIGIO`
        // listener (it found no map of the file): read the file into the heap instead.
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_GETLEASE) } != libc::F_RDLCK {
            drop(mapped);
            unlease();
            return None;
        }
        Some((Bytes::from_owner(mapped), md))
    }

    /// Give up the leases this process is being asked to give up (see the module docs): every
    /// map of those files is replaced by a private copy of its bytes, which releases the
    /// lease. Returns the keys of the files, whose cache entries must go. Read from
    /// `/proc/locks`, where such a lease shows as `LEASE BREAKING ... <pid>
    /// <major>:<minor>:<inode>`.
    pub fn break_leases(&self) -> Vec<String> {
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return Vec::new();
        };
        let inodes = breaking_inodes(&locks, self.pid);
        let regions: Vec<Arc<Region>> = {
            let files = self.lock();
            inodes
                .iter()
                .filter_map(|i| files.get(i))
                .flatten()
                .cloned()
                .collect()
        };
        let mut keys = Vec::new();
        for region in &regions {
            if region.copy_out() {
                self.forget(region);
            } else {
                tracing::warn!(
                    key = %region.key,
                    "cannot copy a mapped file out of its map: its writer waits for the readers"
                );
            }
            keys.push(region.key.clone());
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The files whose lease held by `pid` is breaking, from the text of `/proc/locks`.
fn breaking_inodes(locks: &str, pid: u32) -> Vec<Inode> {
    locks
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            if (words.next(), words.next()) != (Some("LEASE"), Some("BREAKING")) {
                return None;
            }
            let _type = words.next()?;
            if words.next()?.parse::<u32>().ok()? != pid {
                return None;
            }
            let mut id = words.next()?.split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let ino = id.next()?.parse().ok()?;
            Some((major, minor, ino))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process holds a lease on the file at `path`, from `/proc/locks` (by inode:
    /// the tests run in parallel in one process).
    fn leased(path: &std::path::Path) -> bool {
        let ours = format!(" {} ", std::process::id());
        let inode = format!(":{} ", std::fs::metadata(path).unwrap().ino());
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("LEASE") && l.contains(&ours) && l.contains(&inode))
    }

    /// Past `max_maps` maps alive, files are read instead; a map dropped makes room.
    #[test]
    fn maps_are_bounded_in_number() {
        let dir = tempfile::tempdir().unwrap();
        let maps = Maps::with_limits(2, 1 << 20);
        let open = |i: usize| {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, vec![b'a' + i as u8; 5000]).unwrap();
            std::fs::File::open(path).unwrap()
        };
        let a = maps.map(&open(0), "a", 5000, 65536).expect("first");
        let b = maps.map(&open(1), "b", 5000, 65536).expect("second");
        assert!(
            maps.map(&open(2), "c", 5000, 65536).is_none(),
            "a third is refused"
        );
        assert_eq!(maps.live(), 2);
        drop(a);
        let c = maps.map(&open(2), "c", 5000, 65536).expect("room again");
        assert_eq!(&c.0[..3], b"ccc");
        drop((b, c));
        assert_eq!(maps.live(), 0);
        assert!(maps.lock().is_empty(), "the index forgets dropped maps");
    }

    #[test]
    fn breaking_leases_are_read_from_proc_locks() {
        let text = "\
1: LEASE  BREAKING  UNLCK 24586 fe:00:10027587 0 EOF
1: -> LEASE  BREAKER   WRITE 24587 <none>:0 0 EOF
2: LEASE  ACTIVE    READ 24586 fe:00:42 0 EOF
3: LEASE  BREAKING  UNLCK 999 08:01:7 0 EOF
4: POSIX  ADVISORY  WRITE 24586 08:01:9 0 EOF
5: LEASE  BREAKING  READ 24586 08:11:77 0 EOF
";
        assert_eq!(
            breaking_inodes(text, 24586),
            vec![(0xfe, 0, 10027587), (8, 0x11, 77)]
        );
        assert!(breaking_inodes(text, 1).is_empty());
    }

    /// A leased map: its bytes, its count, its lease in `/proc/locks` until it is dropped, and
    /// the bounds. (Breaking a lease is tested on the server, which listens for `SIGIO`.)
    #[test]
    fn a_map_holds_a_lease_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 6000]).unwrap();
        let maps = Maps::new(1 << 20).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (body, md) = maps.map(&file, "k", 6000, 65536).expect("mapped");
        drop(file);
        assert_eq!(md.len(), 6000);
        assert_eq!(&body[..], &vec![b'x'; 6000][..]);
        assert_eq!(maps.live(), 1);
        assert!(leased(&path), "a lease is held");
        // Too small, or over the byte bound: read instead.
        std::fs::write(dir.path().join("small"), b"tiny").unwrap();
        let small = std::fs::File::open(dir.path().join("small")).unwrap();
        assert!(maps.map(&small, "s", 4, 65536).is_none());
        let big = std::fs::File::open(&path).unwrap();
        let tight = Maps::new(5000).unwrap();
        assert!(tight.map(&big, "k", 6000, 65536).is_none());
        assert!(
            maps.map(&big, "k", 6000, 5999).is_none(),
            "over the size asked for"
        );
        drop(body);
        assert_eq!(maps.live(), 0);
        assert!(!leased(&path), "the lease went with the map");
    }

    /// A map copied out (what a lease break does): every `Bytes` of it, a slice taken before
    /// included, keeps the old bytes; the lease is gone at once, so a writer opens without
    /// waiting (no `SIGIO` either, which would end this process), and the map is still counted
    /// until its last holder drops it.
    #[test]
    fn a_map_copied_out_keeps_its_bytes_and_drops_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let old: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &old).unwrap();
        let maps = Maps::new(1 << 20).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (body, _) = maps.map(&file, "k", 9000, 65536).expect("mapped");
        drop(file);
        let tail = body.slice(4000..);
        let region = maps.lock().values().next().unwrap()[0].clone();
        assert!(region.copy_out(), "copied out");
        assert!(region.copy_out(), "a second copy is a no-op");
        maps.forget(&region);
        assert!(!leased(&path), "the lease went with the file map");
        // Same length, then shorter: the copy is not the file any more.
        std::fs::write(&path, vec![b'n'; 9000]).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(&body[..], &old[..]);
        assert_eq!(&tail[..], &old[4000..]);
        assert_eq!(maps.live(), 1);
        drop(body);
        assert_eq!(maps.live(), 1, "the slice still holds it");
        drop(tail);
        assert_eq!(maps.live(), 0);
        assert_eq!(*region.held(), Held::Gone);
        assert!(maps.lock().is_empty());
    }
}
