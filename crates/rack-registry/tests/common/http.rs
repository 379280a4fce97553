//! A raw HTTP/1.1 client for tests that must control the request target byte for byte.
//!
//! `reqwest`/`url` normalize `..`, `%2E%2E` and `//` in paths before sending, which hides exactly
//! what the path-parsing tests want to exercise. This client sends the path string verbatim as the
//! request target (origin form) over a fresh TCP connection per request, and reports whether the
//! response was framed with `Content-Length` or chunked.
#![allow(dead_code)]

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// What came back, as raw as hyper lets us see it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: ::http::HeaderMap,
    pub body: Vec<u8>,
    /// The response carried a `Content-Length` header.
    pub has_content_length: bool,
    /// The response carried `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl RawResponse {
    /// First value of a header, as a string (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, joined with `, ` (lossy).
    pub fn header_all(&self, name: &str) -> Option<String> {
        let values: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Host and port of a base URL such as `http://127.0.0.1:8080` (a trailing `/` is allowed).
fn authority_of(base: &str) -> String {
    let rest = base.strip_prefix("http://").unwrap_or(base);
    rest.trim_end_matches('/').split('/').next().unwrap().to_string()
}

/// Send one request with `path` (request target, sent verbatim) and `headers`; no body.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<RawResponse, String> {
    let authority = authority_of(base);
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });

    let uri: ::http::Uri = path
        .parse()
        .map_err(|e| format!("request target {path:?}: {e}"))?;
    let method =
        ::http::Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method:?}: {e}"))?;
    let mut builder = ::http::Request::builder().method(method).uri(uri);
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if !has_host {
        builder = builder.header(::http::header::HOST, authority.as_str());
    }
    for (k, v) in headers {
        let value =
            ::http::HeaderValue::from_bytes(v.as_bytes()).map_err(|e| format!("header {k}: {v:?}: {e}"))?;
        builder = builder.header(k.as_str(), value);
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;

    let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let has_content_length = headers.contains_key(::http::header::CONTENT_LENGTH);
    let chunked = headers
        .get_all(::http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .to_ascii_lowercase()
                .contains("chunked")
        });
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(RawResponse {
        status,
        headers,
        body,
        has_content_length,
        chunked,
    })
}

/// Blocking wrapper around [`send`] with its own small runtime, so tests stay synchronous.
pub struct RawClient {
    base: String,
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl RawClient {
    pub fn new(base: &str) -> RawClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        RawClient {
            base: base.to_string(),
            rt,
            timeout: Duration::from_secs(30),
        }
    }

    /// `method path` with `headers`; the path is the raw request target (e.g. `/a/%2E%2E/b`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<RawResponse, String> {
        self.rt.block_on(async {
            match tokio::time::timeout(self.timeout, send(&self.base, method, path, headers)).await {
                Ok(r) => r,
                Err(_) => Err(format!("{method} {path}: no response within {:?}", self.timeout)),
            }
        })
    }

    pub fn get(&self, path: &str) -> Result<RawResponse, String> {
        self.request("GET", path, &[])
    }
}
