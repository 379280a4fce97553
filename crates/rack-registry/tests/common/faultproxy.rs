#![allow(dead_code)]

//! The test-only S3 front between the server and moto. It forwards every request, logs it
//! (`METHOD path?query`, for tests that count what the server asks of the bucket), and lets the
//! first matching [`Rule`] (method, a substring of the path and query, optionally "carries
//! `If-None-Match`/`If-Match`") misbehave on purpose: latency, a 5xx instead of forwarding, a
//! 5xx after forwarding (the store applied the write, its answer is lost), a dropped
//! connection, a hang (no answer at all: a server can be SIGKILLed at a known step of a
//! publish), or forwarding without the conditional headers (a store that ignores conditional
//! writes). Rules change while the server runs, so one server process can be shown to recover
//! once the store does.
//!
//! One proxy for every S3 test: a request goes log -> first matching rule -> forward, so a
//! misbehaviour is one `Fault` variant and one arm of `handle`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward after this delay.
    Latency(Duration),
    /// Answer this status (with an S3 error document) without forwarding.
    Status(u16),
    /// Forward, then answer this status instead of the store's reply.
    StatusAfter(u16),
    /// Close the connection without answering.
    Drop,
    /// Never answer (the connection stays open); counted by [`FaultProxy::hung`].
    Hang,
    /// Forward without `If-None-Match`/`If-Match` (a store that ignores conditional writes).
    StripConditions,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The request's method; `""`: any.
    pub method: &'static str,
    /// A substring of the request's path and query (`list-type=2` for a list call).
    pub contains: String,
    /// Only requests carrying `If-None-Match` or `If-Match`.
    pub conditional: bool,
    pub fault: Fault,
    /// How many requests it applies to; `None`: all.
    pub times: Option<usize>,
}

impl Rule {
    pub fn new(method: &'static str, contains: &str, fault: Fault) -> Rule {
        Rule {
            method,
            contains: contains.to_owned(),
            conditional: false,
            fault,
            times: None,
        }
    }

    pub fn conditional(mut self) -> Rule {
        self.conditional = true;
        self
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// Requests a fault was applied to.
    faulted: AtomicUsize,
    /// Requests a `Hang` is holding.
    hung: AtomicUsize,
    /// Every request that arrived, as `METHOD path?query`.
    log: Mutex<Vec<String>>,
}

/// A running injector (its own runtime thread, lives as long as the test process).
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Start an injector in front of `upstream` on a free loopback port.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let (upstream, state) = (upstream.to_owned(), shared.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = reqwest::Client::new();
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let (client, upstream, state) = (client.clone(), upstream.clone(), state.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            handle(client.clone(), upstream.clone(), state.clone(), req)
                        });
                        // A service error (the `Drop` fault) closes the connection unanswered.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(conn), svc)
                            .await;
                    });
                }
            });
        });
        FaultProxy {
            url: format!("http://{addr}"),
            shared,
        }
    }

    /// Add a rule (earlier rules win).
    pub fn inject(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Remove every rule: the store is healthy again.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// How many requests a fault was applied to so far.
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// How many requests a `Hang` has held so far (they are never answered).
    pub fn hung(&self) -> usize {
        self.shared.hung.load(Ordering::SeqCst)
    }

    /// How many requests arrived so far (faulted or not).
    pub fn requests(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// How many requests so far contain every one of `needles` in `METHOD path?query`.
    pub fn count(&self, needles: &[&str]) -> usize {
        let log = self.shared.log.lock().unwrap();
        log.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// `bucket`, reached through this proxy.
    pub fn bucket(&self, bucket: &crate::common::s3::Bucket) -> crate::common::s3::Bucket {
        crate::common::s3::Bucket {
            endpoint: self.url.clone(),
            name: bucket.name.clone(),
        }
    }
}

/// The fault for this request, if a rule matches (and uses up one of its `times`).
fn fault_for(state: &Shared, method: &str, target: &str, conditional: bool) -> Option<Fault> {
    let mut rules = state.rules.lock().unwrap();
    let i = rules.iter().position(|r| {
        (r.method.is_empty() || r.method == method)
            && target.contains(&r.contains)
            && (!r.conditional || conditional)
            && r.times != Some(0)
    })?;
    let rule = &mut rules[i];
    if let Some(n) = &mut rule.times {
        *n -= 1;
    }
    state.faulted.fetch_add(1, Ordering::SeqCst);
    Some(rule.fault)
}

fn s3_error(status: u16) -> Response<Full<Bytes>> {
    let code = if status == 503 {
        "SlowDown"
    } else {
        "InternalError"
    };
    let body =
        format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>injected</Message></Error>");
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    client: reqwest::Client,
    upstream: String,
    state: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    state
        .log
        .lock()
        .unwrap()
        .push(format!("{} {target}", parts.method));
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let conditional = parts.headers.contains_key("if-none-match") || parts.headers.contains_key("if-match");
    let fault = fault_for(&state, parts.method.as_str(), &target, conditional);
    match fault {
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        Some(Fault::Status(s)) => return Ok(s3_error(s)),
        Some(Fault::Drop) => return Err(std::io::Error::other("injected: connection dropped")),
        Some(Fault::Hang) => {
            state.hung.fetch_add(1, Ordering::SeqCst);
            // Longer than any test; the connection is simply never answered.
            tokio::time::sleep(Duration::from_secs(600)).await;
            return Err(std::io::Error::other("injected: hang"));
        }
        Some(Fault::StatusAfter(_) | Fault::StripConditions) | None => {}
    }
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut out = client.request(method, format!("{upstream}{target}")).body(body);
    let strip = fault == Some(Fault::StripConditions);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "host" || (strip && (n == "if-none-match" || n == "if-match")) {
            continue;
        }
        out = out.header(n, value.as_bytes());
    }
    let reply = out.send().await.map_err(std::io::Error::other)?;
    if let Some(Fault::StatusAfter(s)) = fault {
        let _ = reply.bytes().await;
        return Ok(s3_error(s));
    }
    let mut res = Response::builder().status(reply.status().as_u16());
    for (name, value) in reply.headers() {
        res = res.header(name.as_str(), value.as_bytes());
    }
    let bytes = reply.bytes().await.map_err(std::io::Error::other)?;
    Ok(res.body(Full::new(bytes)).unwrap())
}
