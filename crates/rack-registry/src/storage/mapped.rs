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
//! kernel tells us with `SIGIO`. The server then finds the breaking files in `/proc/locks`
//! ([`Maps::breaking`]) and drops their cache entries; the map, and with it the lease, goes
//! when the last response holding it ends, and the writer proceeds. (The lease belongs to the
//! open file, which the map keeps open, so no descriptor is held.) A file that cannot be
//! leased (open for writing elsewhere, owned by another user, a filesystem without leases) is
//! read into the heap as before. The kernel breaks a lease by force after
//! `/proc/sys/fs/lease-break-time` (45 s): only a response still being sent by then can see an
//! edit, and the socket write then fails (`EFAULT`), which cuts the connection.
//!
//! Maps are bounded in number (a quarter of `vm.max_map_count`, at most [`MAX_MAPS`]) and in
//! bytes (a multiple of the cache's budget); past either bound a file is read into the heap.
//! Only the server takes leases, after installing its `SIGIO` listener: `SIGIO`'s default
//! action ends the process.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The keys mapped per file, with how many maps of each are alive.
    keys: Mutex<HashMap<Inode, HashMap<String, usize>>>,
    pid: u32,
}

/// One map: the bytes of a [`Bytes`] body, unmapped (and its lease released) on drop.
struct Mapped {
    map: memmap2::Mmap,
    inode: Inode,
    key: String,
    maps: Arc<Maps>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.maps.live.fetch_sub(1, Ordering::Relaxed);
        self.maps
            .bytes
            .fetch_sub(self.map.len() as u64, Ordering::Relaxed);
        let mut keys = self.maps.lock();
        if let Some(per_key) = keys.get_mut(&self.inode) {
            if let Some(n) = per_key.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    per_key.remove(&self.key);
                }
            }
            if per_key.is_empty() {
                keys.remove(&self.inode);
            }
        }
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
            keys: Mutex::new(HashMap::new()),
            pid: std::process::id(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Inode, HashMap<String, usize>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps alive now.
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
        // SAFETY: the map is read-only and nobody may write the file or cut it short while the
        // lease is held (see the module docs); past a forced break only the kernel's own copy
        // in `writev` reads it, and fails cleanly.
        let map = match unsafe { memmap2::MmapOptions::new().len(md.len() as usize).map(file) } {
            Ok(map) => map,
            Err(_) => {
                unlease();
                return None;
            }
        };
        let inode = (
            libc::major(md.dev()) as u64,
            libc::minor(md.dev()) as u64,
            md.ino(),
        );
        self.live.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(md.len(), Ordering::Relaxed);
        *self
            .lock()
            .entry(inode)
            .or_default()
            .entry(key.to_owned())
            .or_insert(0) += 1;
        let mapped = Mapped {
            map,
            inode,
            key: key.to_owned(),
            maps: self.clone(),
        };
        Some((Bytes::from_owner(mapped), md))
    }

    /// Keys of mapped files whose lease this process is being asked to give up (their cache
    /// entries must go, so that the maps do). Read from `/proc/locks`, where such a lease
    /// shows as `LEASE BREAKING ... <pid> <major>:<minor>:<inode>`.
    pub fn breaking(&self) -> Vec<String> {
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return Vec::new();
        };
        let inodes = breaking_inodes(&locks, self.pid);
        let keys = self.lock();
        inodes
            .iter()
            .filter_map(|i| keys.get(i))
            .flat_map(|per_key| per_key.keys().cloned())
            .collect()
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
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let ours = format!(" {} ", std::process::id());
        assert!(
            locks.lines().any(|l| l.contains("LEASE") && l.contains(&ours)),
            "a lease is held:\n{locks}"
        );
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
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert!(
            !locks.lines().any(|l| l.contains("LEASE") && l.contains(&ours)),
            "the lease went with the map:\n{locks}"
        );
    }
}
