//! The one place where an [`ApiError`] (SPEC §12) becomes an HTTP answer: its status, the JSON
//! body `{"code","message"}` and `Cache-Control: no-store`. The error's kind rides along in the
//! response's extensions, for the metrics. Below both the read handlers and the upload pipeline.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use rack_core::route::CacheTier;
use rack_core::ApiError;

/// Wrapper so that `ApiError` (defined in the core crate) can be returned from handlers.
pub struct ErrorReply(pub ApiError);

impl From<ApiError> for ErrorReply {
    fn from(e: ApiError) -> Self {
        ErrorReply(e)
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        const NO_STORE: HeaderValue = HeaderValue::from_static(CacheTier::NoStore.header());
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = Response::new(Body::from(self.0.body()));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, JSON);
        h.insert(header::CACHE_CONTROL, NO_STORE);
        res.extensions_mut().insert(self.0.kind);
        res
    }
}

/// How long a client refused with 503 is asked to wait (`Retry-After`): a full upload queue, a
/// publish lease in the way, storage coming back.
pub const RETRY_AFTER_SECS: u64 = 5;

impl ErrorReply {
    /// The answer of a route that reads a body: on a 503, `Retry-After` (waiting helps); on a
    /// 413 or 408, `Connection: close` (the rest of the body is never read, so the connection
    /// cannot be reused).
    pub fn after_body(self) -> Response {
        use rack_core::ErrorKind::{PayloadTooLarge, RequestTimeout, ServiceUnavailable};
        let kind = self.0.kind;
        let mut res = self.into_response();
        if kind == ServiceUnavailable {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if matches!(kind, PayloadTooLarge | RequestTimeout) {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
