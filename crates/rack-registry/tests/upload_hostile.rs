mod common;
#[path = "common/pkg.rs"]
mod pkg;
use std::io::Read;
use std::time::Instant;

#[test]
fn gz_builder_roundtrip() {
    let t = Instant::now();
    let mut gz = pkg::GzBuilder::new();
    gz.push(b"header one");
    pkg::push_zeros(&mut gz, 20 * 1024 * 1024 + 7);
    gz.push(b"tail");
    let mut expect = b"header one".to_vec();
    expect.resize(expect.len() + 20 * 1024 * 1024 + 7, 0);
    expect.extend_from_slice(b"tail");
    let total = gz.total();
    let bytes = gz.finish();
    eprintln!("build {:?} size {}", t.elapsed(), bytes.len());
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).unwrap();
    assert_eq!(total, expect.len() as u64);
    assert!(out == expect);
    eprintln!("total {:?}", t.elapsed());
}
