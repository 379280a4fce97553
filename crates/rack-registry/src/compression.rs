//! Content negotiation and compression (SPEC §9): br, zstd and gzip from `Accept-Encoding`, for
//! compressible types above a small size. Variants are computed once per cached object (see
//! `cache`), so a hot read does no compression work; levels favour ratio since the work is
//! amortized over every later read.

use std::io::Write;

/// Bodies smaller than this are sent as they are: compression would not pay for its headers.
pub const MIN_COMPRESS_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Zstd,
    Gzip,
}

impl Encoding {
    pub const fn header(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// Suffix that keeps the ETag of each encoded representation distinct (RFC 9110 §8.8.3).
    pub const fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Br => "-br",
            Encoding::Zstd => "-zstd",
            Encoding::Gzip => "-gzip",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Pick the encoding for an `Accept-Encoding` header: the highest q-value among the ones we
/// support, preferring br, then zstd, then gzip on ties; `None` for identity.
pub fn negotiate(accept_encoding: &str) -> Option<Encoding> {
    let mut best: Option<(Encoding, u32)> = None;
    let mut star: Option<u32> = None;
    let mut seen = [false; 3];
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .next()
            .map(|q| (q.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u32)
            .unwrap_or(1000);
        let is = |token: &str| name.eq_ignore_ascii_case(token);
        let enc = if is("br") {
            Encoding::Br
        } else if is("zstd") {
            Encoding::Zstd
        } else if is("gzip") || is("x-gzip") {
            Encoding::Gzip
        } else if name == "*" {
            star = Some(q);
            continue;
        } else {
            continue;
        };
        seen[enc.index()] = true;
        if q > 0 && best.is_none_or(|(b, bq)| q > bq || (q == bq && enc.index() < b.index())) {
            best = Some((enc, q));
        }
    }
    if best.is_none() {
        if let Some(q) = star.filter(|q| *q > 0) {
            let _ = q;
            // `*` covers whatever was not named: take our preferred unnamed one.
            return [Encoding::Br, Encoding::Zstd, Encoding::Gzip]
                .into_iter()
                .find(|e| !seen[e.index()]);
        }
    }
    best.map(|(e, _)| e)
}

/// Brotli's quality for objects compressed once and cached. Not 9: brotli (the crate) takes its
/// largest hasher at 9 whatever the body's size, 32 MiB of tables per compression (the soak's
/// heap profile found three at once); at 5-8 with a window up to 2^16 its small-window hasher
/// takes as much. At 6 with the default window a 6 KB template takes ~2 MiB, and comes out the
/// same size as at 9 (tests/compression_memory.rs).
const BR_QUALITY: u32 = 6;

/// Compress `data` with `enc`.
pub fn compress(enc: Encoding, data: &[u8]) -> Vec<u8> {
    match enc {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            w.write_all(data).expect("in-memory write");
            w.finish().expect("in-memory write")
        }
        Encoding::Br => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, BR_QUALITY, 22);
                w.write_all(data).expect("in-memory write");
            }
            out
        }
        Encoding::Zstd => zstd::bulk::compress(data, 9).expect("in-memory zstd"),
    }
}

/// Compress `data` with `enc` at a cheap level, for large objects (compressed once in the
/// background, where ratio matters less than not holding a blocking thread for seconds: brotli
/// at quality 9 took 46 s on 64 MiB).
pub fn compress_fast(enc: Encoding, data: &[u8]) -> Vec<u8> {
    match enc {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(4));
            w.write_all(data).expect("in-memory write");
            w.finish().expect("in-memory write")
        }
        Encoding::Br => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 4, 22);
                w.write_all(data).expect("in-memory write");
            }
            out
        }
        Encoding::Zstd => zstd::bulk::compress(data, 3).expect("in-memory zstd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate("gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate("gzip, deflate, br"), Some(Encoding::Br));
        assert_eq!(negotiate("gzip, zstd"), Some(Encoding::Zstd));
        assert_eq!(negotiate("br;q=0.5, gzip;q=0.9"), Some(Encoding::Gzip));
        assert_eq!(negotiate("br;q=0, gzip;q=0"), None);
        assert_eq!(negotiate("identity"), None);
        assert_eq!(negotiate(""), None);
        assert_eq!(negotiate("*"), Some(Encoding::Br));
        assert_eq!(negotiate("br;q=0, *"), Some(Encoding::Zstd));
        assert_eq!(negotiate("deflate"), None);
        assert_eq!(negotiate("GZip;Q=0.5, X-GZIP;q=0.4"), Some(Encoding::Gzip));
        assert_eq!(negotiate(" BR ; q=1"), Some(Encoding::Br));
    }

    #[test]
    fn round_trips() {
        let data = "{\"versions\": [\"1.0.0\"]}\n".repeat(200);
        let gz = compress(Encoding::Gzip, data.as_bytes());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let br = compress(Encoding::Br, data.as_bytes());
        let mut out = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data.as_bytes());
        let z = compress(Encoding::Zstd, data.as_bytes());
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data.as_bytes());
        assert!(gz.len() < data.len() / 10);
    }
}
