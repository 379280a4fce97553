#![allow(dead_code)]

//! A test-only S3 front over moto: forwards every request, and can misbehave on purpose: strip
//! `If-None-Match`/`If-Match` (a store that ignores conditional writes), or hold forever the
//! PUTs whose path ends with a given suffix (to SIGKILL a server at a known step of a publish).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
pub struct Behaviour {
    /// Drop the conditional headers.
    pub strip_conditions: AtomicBool,
    /// Hold PUTs whose path ends with this (never answered).
    pub stall_put_suffix: Mutex<Option<String>>,
    /// How many requests are being held.
    pub stalled: AtomicUsize,
    /// How many requests arrived (all of them).
    pub requests: AtomicUsize,
    /// Every request that arrived: when, and `METHOD path?query`.
    pub log: Mutex<Vec<(std::time::Instant, String)>>,
}

impl Behaviour {
    /// How many requests so far contain every one of `needles` in `METHOD path?query`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}

/// Start a front to `upstream` on a free loopback port (its own runtime thread); its URL.
pub fn start(upstream: String, behaviour: Arc<Behaviour>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let client = reqwest::Client::new();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let (client, upstream, behaviour) = (client.clone(), upstream.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        forward(client.clone(), upstream.clone(), behaviour.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
    });
    format!("http://{addr}")
}

async fn forward(
    client: reqwest::Client,
    upstream: String,
    behaviour: Arc<Behaviour>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    behaviour.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    behaviour.log.lock().unwrap().push((
        std::time::Instant::now(),
        format!(
            "{} {}",
            parts.method,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ),
    ));
    let stall = parts.method == hyper::Method::PUT
        && behaviour
            .stall_put_suffix
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|s| path.ends_with(s));
    if stall {
        behaviour.stalled.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut out = client.request(method, format!("{upstream}{target}")).body(body);
    let strip = behaviour.strip_conditions.load(Ordering::SeqCst);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "host" || (strip && (n == "if-none-match" || n == "if-match")) {
            continue;
        }
        out = out.header(n, value.as_bytes());
    }
    let reply = out.send().await.unwrap();
    let mut res = Response::builder().status(reply.status().as_u16());
    for (name, value) in reply.headers() {
        res = res.header(name.as_str(), value.as_bytes());
    }
    let bytes = reply.bytes().await.unwrap_or_default();
    Ok(res.body(Full::new(bytes)).unwrap())
}
