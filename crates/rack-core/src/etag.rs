//! Strong ETags (SPEC §9): derived from the content alone, so the same bytes get the same tag
//! on every replica, after a restart, and at the edge Worker; and `If-None-Match` matching.
//!
//! A tag is `"<32 hex>"`: the first 128 bits of the SHA-256 of the bytes. A compressed
//! representation gets the same tag with its encoding's suffix (`"<hex>-gzip"`), so that each
//! representation has its own tag (RFC 9110 §8.8.3) while a client holding any of them
//! revalidates successfully.

use sha2::{Digest, Sha256};

/// The suffixes of compressed representations.
pub const ENCODING_SUFFIXES: [&str; 3] = ["-br", "-zstd", "-gzip"];

/// The strong ETag of `body`.
pub fn etag_of(body: &[u8]) -> String {
    etag_from_digest(&Sha256::digest(body))
}

/// The ETag for a SHA-256 digest of the content (for content hashed as a stream).
pub fn etag_from_digest(digest: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// The content part of a tag: without `W/` and without an encoding suffix.
fn tag_base(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    ENCODING_SUFFIXES
        .iter()
        .find_map(|s| t.strip_suffix(s))
        .unwrap_or(t)
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, as RFC 9110 wants
/// for `If-None-Match`; `*` matches any current representation).
pub fn if_none_match(header_value: &str, etag: &str) -> bool {
    let want = tag_base(etag);
    header_value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || (!t.is_empty() && tag_base(t) == want))
}

/// The tag of one representation: the content tag plus an encoding's suffix (one of
/// [`ENCODING_SUFFIXES`]), or the content tag itself for identity.
pub fn with_suffix(etag: &str, suffix: Option<&str>) -> String {
    match suffix {
        None => etag.to_owned(),
        Some(s) => format!("{}{}\"", &etag[..etag.len() - 1], s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let a = etag_of(b"hello");
        assert_eq!(a, etag_of(b"hello"));
        assert_ne!(a, etag_of(b"hello "));
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 34);
        assert!(if_none_match(&a, &a));
        assert!(if_none_match(&format!("W/{a}"), &a));
        assert!(if_none_match(&format!("\"x\", {a}"), &a));
        assert!(if_none_match("*", &a));
        assert!(!if_none_match("\"x\"", &a));
        assert!(!if_none_match("", &a));
        let gz = with_suffix(&a, Some("-gzip"));
        assert!(gz.ends_with("-gzip\""));
        assert!(
            if_none_match(&gz, &a),
            "any representation of the same bytes revalidates"
        );
        assert!(if_none_match(&a, &gz));
    }
}
