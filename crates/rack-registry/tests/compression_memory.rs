//! Memory taken by compressing a small object (issue 15, the soak's heap profile): brotli at
//! quality 9 took 32 MiB of hasher tables per compression whatever the body's size (three at
//! once made the server's heap peak). This binary tracks the peak of live heap bytes with its
//! own allocator, so it holds one test only (no other thread allocates meanwhile).

#[path = "common/heap.rs"]
mod heap;

use rack_registry::compression::{compress, compress_fast, Encoding};

#[global_allocator]
static GLOBAL: heap::Counting = heap::Counting;

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
            let (peak, out) = heap::peak_of(|| f(enc, &body));
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
