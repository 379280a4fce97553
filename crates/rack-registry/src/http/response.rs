//! Turning results into HTTP responses: the one place where an [`ApiError`] becomes a status,
//! a JSON body and `Cache-Control: no-store`, and where a successful read gets its `ETag`, its
//! `304`, and its content encoding.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rack_core::etag::{etag_of, if_none_match, with_suffix};
use rack_core::mime::is_compressible;
use rack_core::route::CacheTier;

use crate::cache::large::LargeObjects;
use crate::cache::{Cached, INLINE_COMPRESS_MAX};
use crate::compression::{self, Encoding, MIN_COMPRESS_BYTES};
use crate::storage::{ObjectStream, Storage};

/// A large object to be streamed (see [`crate::cache::large`]): the open stream, its tag, and
/// what is needed to look up or make its compressed forms.
pub struct Streamed {
    pub key: String,
    pub etag: String,
    pub stream: ObjectStream,
    pub storage: Arc<dyn Storage>,
    pub large: Arc<LargeObjects>,
}

/// A successful read: bytes, their type and cache tier, and the cache entry they came from
/// (which carries the precomputed ETag and compressed variants).
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub cache: CacheTier,
    pub object: Option<Arc<Cached>>,
    /// A large object, streamed (then `body` is empty). Boxed: rare, and a `Reply` is moved
    /// several times per request.
    pub streamed: Option<Box<Streamed>>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>, content_type: &'static str, cache: CacheTier) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: body.into(),
            content_type,
            cache,
            object: None,
            streamed: None,
        }
    }

    /// A large object, streamed from storage.
    pub fn streamed(streamed: Streamed, content_type: &'static str, cache: CacheTier) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::new(),
            content_type,
            cache,
            object: None,
            streamed: Some(Box::new(streamed)),
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
            streamed: None,
        }
    }

    pub fn json(value: &serde_json::Value, cache: CacheTier) -> Reply {
        Reply::ok(value.to_string(), "application/json", cache)
    }
}

/// The tag of one representation of `etag`: the content tag, or with the encoding's suffix.
pub fn tag_for(etag: &str, enc: Option<Encoding>) -> String {
    with_suffix(etag, enc.map(Encoding::etag_suffix))
}

/// What the body of a 200 is made of.
enum Payload {
    Bytes(Bytes),
    Stream(ObjectStream),
    /// HEAD of a representation whose compressed form is not made yet: no length to announce.
    UnknownLength,
}

/// A response, or the rare one that must first compress a body off the connection's thread.
pub enum Responded {
    Now(Response),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>),
}

impl Responded {
    pub async fn finish(self) -> Response {
        match self {
            Responded::Now(res) => res,
            Responded::Later(fut) => fut.await,
        }
    }
}

/// Everything of a 200 but its payload.
struct Headed {
    reply: Reply,
    encoding: Option<Encoding>,
    etag_value: HeaderValue,
    varies: bool,
    head: bool,
}

impl Headed {
    fn build(self, payload: Payload) -> Response {
        let Headed {
            reply,
            encoding,
            etag_value,
            varies,
            head,
        } = self;
        let mut res = match payload {
            Payload::Bytes(body) => Reply {
                body,
                object: None,
                streamed: None,
                ..reply
            }
            .into_response(),
            Payload::Stream(stream) => {
                let mut res = Reply {
                    object: None,
                    streamed: None,
                    ..reply
                }
                .into_response();
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(stream.meta.size));
                if !head {
                    *res.body_mut() = Body::new(SizedStream::new(stream));
                }
                res
            }
            Payload::UnknownLength => {
                let mut res = Reply {
                    object: None,
                    streamed: None,
                    ..reply
                }
                .into_response();
                res.headers_mut().remove(header::CONTENT_LENGTH);
                *res.body_mut() = unsized_empty();
                res
            }
        };
        if let Some(enc) = encoding {
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, content_encoding(enc));
        }
        res.headers_mut().insert(header::ETAG, etag_value);
        if varies {
            res.headers_mut().insert(header::VARY, VARY_ACCEPT_ENCODING);
        }
        res
    }
}

impl Reply {
    /// The response for a request with these headers: a 200 carries an `ETag`; a matching
    /// `If-None-Match` turns it into a 304 with `ETag` and `Cache-Control` and no body; the body
    /// is compressed when the type is worth it and the client accepts an encoding we offer.
    ///
    /// Compression never runs on the connection's thread beyond a small body
    /// ([`crate::cache::INLINE_COMPRESS_MAX`]: then the answer is [`Responded::Later`]), and a
    /// HEAD never compresses: it announces the encoding a GET would get, with the length only
    /// if that form is already made. Large objects are compressed only in the background;
    /// until then they are sent identity. (Synchronous, with the rare wait boxed apart, so the
    /// request's future stays small: every byte of it is copied as it is polled.)
    pub fn respond(mut self, req_headers: &HeaderMap, head: bool) -> Responded {
        // Live answers (`/health`, `/metrics`) are never cached, so they get no validator.
        if self.status != StatusCode::OK || self.cache == CacheTier::NoStore {
            return Responded::Now(self.into_response());
        }
        let computed;
        let base_etag = match (&self.object, &self.streamed) {
            (Some(o), _) => o.etag.as_str(),
            (None, Some(s)) => s.etag.as_str(),
            (None, None) => {
                computed = etag_of(&self.body);
                computed.as_str()
            }
        };
        let size = match &self.streamed {
            Some(s) => s.stream.meta.size,
            None => self.body.len() as u64,
        };
        let varies = is_compressible(self.content_type)
            && size >= MIN_COMPRESS_BYTES as u64
            && self
                .streamed
                .as_ref()
                .is_none_or(|s| s.large.compressible_size(size));
        let mut encoding = varies
            .then(|| {
                req_headers
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok())
            })
            .flatten()
            .and_then(compression::negotiate);
        // A large object: its compressed form if made, else identity (and, for a GET, a
        // background job to make it).
        let mut variant = None;
        if let (Some(enc), Some(s)) = (encoding, &self.streamed) {
            variant = s.large.variant(&s.key, &s.stream.meta.version, enc);
            if variant.is_none() {
                if !head {
                    s.large
                        .schedule(s.storage.clone(), &s.key, &s.stream.meta.version, &s.etag, enc);
                }
                encoding = None;
            }
        }
        let etag_value = match (&self.object, &variant) {
            (Some(o), _) => o.etag_header(encoding),
            (None, Some(v)) => v.etag_header.clone(),
            (None, None) => {
                HeaderValue::from_str(&tag_for(base_etag, encoding)).expect("hex is a valid header value")
            }
        };
        // Matching ignores the encoding suffix, so the content tag is enough here.
        let not_modified = req_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| if_none_match(v, base_etag));
        if not_modified {
            // A body of unknown length: with `Body::empty()` the HTTP stack would add
            // `Content-Length: 0` to a HEAD 304, which a GET 304 does not carry.
            let mut res = Response::new(unsized_empty());
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            let h = res.headers_mut();
            h.insert(header::CACHE_CONTROL, cache_control(self.cache));
            h.insert(header::ETAG, etag_value);
            if varies {
                h.insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Responded::Now(res);
        }
        let streamed = self.streamed.take();
        let body = std::mem::take(&mut self.body);
        let object = self.object.take();
        let headed = Headed {
            reply: self,
            encoding,
            etag_value,
            varies,
            head,
        };
        let payload = match (encoding, variant, streamed) {
            (None, _, Some(s)) => Payload::Stream(s.stream),
            (None, _, None) => Payload::Bytes(body),
            (Some(_), Some(v), _) => Payload::Bytes(v.body.clone()),
            (Some(enc), None, _) => match object {
                Some(o) => match o.encoded_if_ready(enc) {
                    Some(ready) => Payload::Bytes(ready),
                    None if head => Payload::UnknownLength,
                    None if o.body.len() <= INLINE_COMPRESS_MAX => Payload::Bytes(o.encoded(enc)),
                    None => {
                        return Responded::Later(Box::pin(async move {
                            let body = o.encoded_off_thread(enc).await;
                            headed.build(Payload::Bytes(body))
                        }))
                    }
                },
                // Bodies made per request (listings, JSON) are small.
                None => Payload::Bytes(Bytes::from(compression::compress(enc, &body))),
            },
        };
        Responded::Now(headed.build(payload))
    }
}

/// An empty body whose length is not announced.
fn unsized_empty() -> Body {
    Body::from_stream(futures::stream::empty::<Result<Bytes, std::convert::Infallible>>())
}

/// A streamed object as a response body of exactly its size, so that HTTP/1 frames it with
/// `Content-Length` (SPEC §14), and a stream that ends early or runs long is an error (the
/// connection is cut) rather than a wrong body.
struct SizedStream {
    inner: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    remaining: u64,
}

impl SizedStream {
    fn new(stream: ObjectStream) -> SizedStream {
        SizedStream {
            remaining: stream.meta.size,
            inner: stream.body,
        }
    }
}

impl http_body::Body for SizedStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use futures::StreamExt;
        use std::task::Poll;
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.remaining {
                    return Poll::Ready(Some(Err(std::io::Error::other("object grew while being sent"))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => {
                Poll::Ready(Some(Err(std::io::Error::other("object shrank while being sent"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
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
    const PRIVATE_SHORT: HeaderValue = HeaderValue::from_static(CacheTier::PrivateShort.header());
    const PRIVATE_IMMUTABLE: HeaderValue = HeaderValue::from_static(CacheTier::PrivateImmutable.header());
    const PRIVATE_DAY: HeaderValue = HeaderValue::from_static(CacheTier::PrivateDay.header());
    match tier {
        CacheTier::Short => SHORT,
        CacheTier::Immutable => IMMUTABLE,
        CacheTier::Day => DAY,
        CacheTier::NoStore => NO_STORE,
        CacheTier::PrivateShort => PRIVATE_SHORT,
        CacheTier::PrivateImmutable => PRIVATE_IMMUTABLE,
        CacheTier::PrivateDay => PRIVATE_DAY,
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

pub use crate::api_error::ErrorReply;

pub type ApiResult = Result<Reply, ErrorReply>;
