//! Memory taken by compressing a small object (issue 15, the soak's heap profile): brotli at
//! quality 9 took 32 MiB of hasher tables per compression whatever the body's size (three at
//! once made the server's heap peak). This binary tracks the peak of live heap bytes with its own allocator, so it holds one
//! test only (no other thread allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use rack_registry::compression::{compress, compress_fast, Encoding};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak heap above the starting level while `f` runs, in bytes.
fn peak_of(f: impl FnOnce() -> Vec<u8>) -> (isize, Vec<u8>) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - base, out)
}

#[test]
fn compressing_a_small_object_takes_little_memory() {
    // A 6 KB template, as most registry files are.
    let alphabet = b"abcdefghijklmnopqrstuvwxyz      \n{}();=.";
    let mut x = 7u32;
    let body: Vec<u8> = (0..6144)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            alphabet[(x >> 16) as usize % alphabet.len()]
        })
        .collect();
    for enc in [Encoding::Br, Encoding::Gzip, Encoding::Zstd] {
        for (what, f) in [
            ("compress", compress as fn(Encoding, &[u8]) -> Vec<u8>),
            ("compress_fast", compress_fast),
        ] {
            let (peak, out) = peak_of(|| f(enc, &body));
            eprintln!(
                "{what}({enc:?}) of 6 KiB: peak {} KiB, {} bytes out",
                peak / 1024,
                out.len()
            );
            assert!(!out.is_empty() && out.len() < body.len());
            assert!(
                peak < 3 * 1024 * 1024,
                "{what}({enc:?}) of 6 KiB took {} KiB of heap at its peak",
                peak / 1024
            );
        }
    }
    // A large body still compresses (the window grows with it, up to brotli's default).
    let big: Vec<u8> = body.iter().cycle().take(8 << 20).copied().collect();
    let out = compress_fast(Encoding::Br, &big);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut brotli::Decompressor::new(&out[..], 4096), &mut back).unwrap();
    assert_eq!(back, big);
}
