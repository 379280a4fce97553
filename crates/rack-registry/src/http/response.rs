//! Turning results into HTTP responses: the one place where an [`ApiError`] becomes a status,
//! a JSON body and `Cache-Control: no-store`, and where a successful read gets its `ETag`, its
//! `304`, and its content encoding.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rack_core::mime::is_compressible;
use rack_core::route::CacheTier;
use rack_core::ApiError;
use sha2::{Digest, Sha256};

use crate::cache::Cached;
use crate::compression::{self, Encoding, MIN_COMPRESS_BYTES};

/// A successful read: bytes, their type and cache tier, and the cache entry they came from
/// (which carries the precomputed ETag and compressed variants).
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub cache: CacheTier,
    pub object: Option<Arc<Cached>>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>, content_type: &'static str, cache: CacheTier) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: body.into(),
            content_type,
            cache,
            object: None,
        }
    }

    /// A stored object, served with its cached validator and variants.
    pub fn object(object: Arc<Cached>, content_type: &'static str, cache: CacheTier) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: object.body.clone(),
            content_type,
            cache,
            object: Some(object),
        }
    }

    pub fn json(value: &serde_json::Value, cache: CacheTier) -> Reply {
        Reply::ok(value.to_string(), "application/json", cache)
    }
}

/// A strong ETag derived from the bytes alone (SPEC §9): the same content gives the same tag on
/// every replica and after a restart. 128 bits of SHA-256 are kept.
pub fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// The content part of a tag: without `W/` and without an encoding suffix (`-gzip`...), so that
/// a client holding any representation of the same bytes revalidates successfully.
fn tag_base(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    ["-br", "-zstd", "-gzip"]
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

/// The tag of one representation: the content tag plus the encoding's suffix.
pub fn with_suffix(etag: &str, enc: Option<Encoding>) -> String {
    match enc {
        None => etag.to_owned(),
        Some(e) => format!("{}{}\"", &etag[..etag.len() - 1], e.etag_suffix()),
    }
}

impl Reply {
    /// The response for a request with these headers: a 200 carries an `ETag`; a matching
    /// `If-None-Match` turns it into a 304 with `ETag` and `Cache-Control` and no body; the body
    /// is compressed when the type is worth it and the client accepts an encoding we offer.
    pub fn respond(self, req_headers: &HeaderMap) -> Response {
        // Live answers (`/health`, `/metrics`) are never cached, so they get no validator.
        if self.status != StatusCode::OK || self.cache == CacheTier::NoStore {
            return self.into_response();
        }
        let computed;
        let base_etag = match &self.object {
            Some(o) => o.etag.as_str(),
            None => {
                computed = etag_of(&self.body);
                computed.as_str()
            }
        };
        let varies = is_compressible(self.content_type) && self.body.len() >= MIN_COMPRESS_BYTES;
        let encoding = varies
            .then(|| {
                req_headers
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok())
            })
            .flatten()
            .and_then(compression::negotiate);
        let etag_value = match &self.object {
            Some(o) => o.etag_header(encoding),
            None => {
                HeaderValue::from_str(&with_suffix(base_etag, encoding)).expect("hex is a valid header value")
            }
        };
        // Matching ignores the encoding suffix, so the content tag is enough here.
        let not_modified = req_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| if_none_match(v, base_etag));
        let mut res = if not_modified {
            // A body of unknown length: with `Body::empty()` the HTTP stack would add
            // `Content-Length: 0` to a HEAD 304, which a GET 304 does not carry.
            let nothing = futures::stream::empty::<Result<Bytes, std::convert::Infallible>>();
            let mut res = Response::new(Body::from_stream(nothing));
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res.headers_mut()
                .insert(header::CACHE_CONTROL, cache_control(self.cache));
            res
        } else {
            match encoding {
                None => self.into_response(),
                Some(enc) => {
                    let encoded = match &self.object {
                        Some(o) => o.encoded(enc),
                        None => Bytes::from(compression::compress(enc, &self.body)),
                    };
                    let mut res = Reply {
                        body: encoded,
                        object: None,
                        ..self
                    }
                    .into_response();
                    res.headers_mut()
                        .insert(header::CONTENT_ENCODING, content_encoding(enc));
                    res
                }
            }
        };
        res.headers_mut().insert(header::ETAG, etag_value);
        if varies {
            res.headers_mut().insert(header::VARY, VARY_ACCEPT_ENCODING);
        }
        res
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        // `Content-Length` is written by hyper from the body's exact size, for HEAD too, except
        // for an empty body in answer to HEAD: that one is set here, so HEAD and GET agree.
        let empty = self.body.is_empty();
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        // Room for every header an answer gets, so that the map is allocated once.
        h.reserve(12);
        h.insert(header::CONTENT_TYPE, static_value(self.content_type));
        h.insert(header::CACHE_CONTROL, cache_control(self.cache));
        if empty {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        res
    }
}

// The header values sent on every read are constants: `HeaderValue::from_static` checks every
// byte at run time unless it is evaluated as a constant.

const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");

fn cache_control(tier: CacheTier) -> HeaderValue {
    const SHORT: HeaderValue = HeaderValue::from_static(CacheTier::Short.header());
    const IMMUTABLE: HeaderValue = HeaderValue::from_static(CacheTier::Immutable.header());
    const DAY: HeaderValue = HeaderValue::from_static(CacheTier::Day.header());
    const NO_STORE: HeaderValue = HeaderValue::from_static(CacheTier::NoStore.header());
    match tier {
        CacheTier::Short => SHORT,
        CacheTier::Immutable => IMMUTABLE,
        CacheTier::Day => DAY,
        CacheTier::NoStore => NO_STORE,
    }
}

fn content_encoding(enc: Encoding) -> HeaderValue {
    const BR: HeaderValue = HeaderValue::from_static(Encoding::Br.header());
    const ZSTD: HeaderValue = HeaderValue::from_static(Encoding::Zstd.header());
    const GZIP: HeaderValue = HeaderValue::from_static(Encoding::Gzip.header());
    match enc {
        Encoding::Br => BR,
        Encoding::Zstd => ZSTD,
        Encoding::Gzip => GZIP,
    }
}

/// A content type: the common ones as constants, the rest checked at run time.
fn static_value(s: &'static str) -> HeaderValue {
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    const TS: HeaderValue = HeaderValue::from_static("text/typescript; charset=utf-8");
    const JS: HeaderValue = HeaderValue::from_static("text/javascript; charset=utf-8");
    match s {
        "application/json" => JSON,
        "text/typescript; charset=utf-8" => TS,
        "text/javascript; charset=utf-8" => JS,
        _ => HeaderValue::from_static(s),
    }
}

/// Wrapper so that `ApiError` (defined in the core crate) can be returned from handlers.
pub struct ErrorReply(pub ApiError);

impl From<ApiError> for ErrorReply {
    fn from(e: ApiError) -> Self {
        ErrorReply(e)
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = Reply::ok(Bytes::from(self.0.body()), "application/json", CacheTier::NoStore);
        res.status = status;
        let mut res = res.into_response();
        res.extensions_mut().insert(self.0.kind);
        res
    }
}

pub type ApiResult = Result<Reply, ErrorReply>;

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
        let gz = with_suffix(&a, Some(Encoding::Gzip));
        assert!(gz.ends_with("-gzip\""));
        assert!(
            if_none_match(&gz, &a),
            "any representation of the same bytes revalidates"
        );
        assert!(if_none_match(&a, &gz));
    }
}
