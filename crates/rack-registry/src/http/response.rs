//! Turning results into HTTP responses: the one place where an [`ApiError`] becomes a status,
//! a JSON body and `Cache-Control: no-store`.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use rack_core::route::CacheTier;
use rack_core::ApiError;
use sha2::{Digest, Sha256};

/// A successful read: bytes, their type and cache tier.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub cache: CacheTier,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>, content_type: &'static str, cache: CacheTier) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: body.into(),
            content_type,
            cache,
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

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, as RFC 9110 wants
/// for `If-None-Match`; `*` matches any current representation).
pub fn if_none_match(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

impl Reply {
    /// The response for a request with these headers: a 200 carries an `ETag`; a matching
    /// `If-None-Match` turns it into a 304 with `ETag` and `Cache-Control` and no body.
    pub fn respond(self, req_headers: &http::HeaderMap) -> Response {
        // Live answers (`/health`, `/metrics`) are never cached, so they get no validator.
        if self.status != StatusCode::OK || self.cache == CacheTier::NoStore {
            return self.into_response();
        }
        let etag = etag_of(&self.body);
        let not_modified = req_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| if_none_match(v, &etag));
        let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header value");
        if not_modified {
            // A body of unknown length: with `Body::empty()` the HTTP stack would add
            // `Content-Length: 0` to a HEAD 304, which a GET 304 does not carry.
            let nothing = futures::stream::empty::<Result<Bytes, std::convert::Infallible>>();
            let mut res = Response::new(Body::from_stream(nothing));
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res.headers_mut().insert(header::ETAG, etag_value);
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(self.cache.header()),
            );
            return res;
        }
        let mut res = self.into_response();
        res.headers_mut().insert(header::ETAG, etag_value);
        res
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let len = self.body.len();
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache.header()),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        res
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
        let mut res = Reply {
            status,
            body: Bytes::from(self.0.body()),
            content_type: "application/json",
            cache: CacheTier::NoStore,
        }
        .into_response();
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
    }
}
