//! Requests to an upstream registry's read API: bounded in time (the upstream's
//! `timeoutSeconds`, body included) and in size (a body over its limit is abandoned as soon as
//! it crosses it), behind a circuit breaker per upstream (3 consecutive failures: the upstream
//! is skipped for 30 s, so a dead upstream never makes reads wait), counted in metrics by
//! outcome. Logs and metrics name the upstream by its URL, never its token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::io::AsyncWriteExt;

use super::config::Upstream;

/// Consecutive failures that open the breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker skips its upstream.
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);

/// What an upstream answered.
#[derive(Debug)]
pub enum Got {
    /// 200: the body (within its limit) and its `ETag`.
    Body { bytes: Bytes, etag: Option<String> },
    /// 304 to a conditional request.
    NotModified,
    /// 404 (an upstream 404 is a 404), or 410 (deleted upstream).
    Gone(u16),
}

/// Why nothing usable came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable, slow past its timeout, a 5xx or another unexpected status, or skipped by
    /// the open breaker: a stored copy is served instead.
    Unavailable(String),
    /// It answered, but with something that must not be stored (too large, not what was asked
    /// for): nothing is stored; a stored copy is served instead.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(why) => write!(f, "unavailable: {why}"),
            Failure::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The upstream metrics (see [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct Counters {
    /// `registry_upstream_requests_total{upstream, outcome}`.
    pub requests: IntCounterVec,
    /// `registry_upstream_stale_total{upstream}`: reads answered from storage because the
    /// upstream could not be asked.
    pub stale: IntCounterVec,
    /// `registry_upstream_breaker_open{upstream}`: 1 while the breaker skips the upstream.
    pub breaker: IntGaugeVec,
}

/// The HTTP client of every upstream.
pub struct Client {
    http: reqwest::Client,
    breakers: Mutex<HashMap<String, Breaker>>,
    counters: Option<Counters>,
}

impl Client {
    pub fn new(counters: Option<Counters>) -> Client {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "rack-registry/",
                env!("CARGO_PKG_VERSION"),
                " (upstream)"
            ))
            // A redirect could carry the token elsewhere: a 3xx is an error.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client with rustls builds");
        Client {
            http,
            breakers: Mutex::default(),
            counters,
        }
    }

    fn count(&self, up: &Upstream, outcome: &str) {
        if let Some(c) = &self.counters {
            c.requests.with_label_values(&[up.url.as_str(), outcome]).inc();
        }
    }

    /// A read answered from storage because `up` could not be asked.
    pub fn count_stale(&self, up: &Upstream) {
        if let Some(c) = &self.counters {
            c.stale.with_label_values(&[&up.url]).inc();
        }
    }

    /// `Err` while the breaker of `up` is open.
    fn admit(&self, up: &Upstream) -> Result<(), Failure> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        match breakers.get(&up.url).and_then(|b| b.open_until) {
            Some(until) if Instant::now() < until => {
                drop(breakers);
                self.count(up, "skipped");
                Err(Failure::Unavailable(
                    "circuit breaker open after repeated failures".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    fn settle(&self, up: &Upstream, failed: bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = breakers.entry(up.url.clone()).or_default();
        let was_open = b.open_until.is_some();
        if failed {
            b.failures += 1;
            if b.failures >= BREAKER_FAILURES {
                b.open_until = Some(Instant::now() + BREAKER_OPEN);
                if !was_open {
                    tracing::warn!(upstream = %up.url, failures = b.failures, "upstream failing: skipped for {}s", BREAKER_OPEN.as_secs());
                }
            }
        } else {
            b.failures = 0;
            b.open_until = None;
            if was_open {
                tracing::info!(upstream = %up.url, "upstream answering again");
            }
        }
        let open = b.open_until.is_some();
        drop(breakers);
        if let Some(c) = &self.counters {
            c.breaker.with_label_values(&[&up.url]).set(i64::from(open));
        }
    }

    async fn send(
        &self,
        up: &Upstream,
        path: &str,
        etag: Option<&str>,
    ) -> Result<reqwest::Response, Failure> {
        self.admit(up)?;
        let mut req = self.http.get(format!("{}{path}", up.url)).timeout(up.timeout);
        if let Some(t) = &up.token {
            req = req.bearer_auth(t);
        }
        if let Some(tag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        match req.send().await {
            Ok(res) => Ok(res),
            Err(e) => {
                self.settle(up, true);
                let (outcome, why) = if e.is_timeout() {
                    ("timeout", format!("no answer within {}s", up.timeout.as_secs()))
                } else {
                    ("error", "connection failed".to_owned())
                };
                self.count(up, outcome);
                tracing::warn!(upstream = %up.url, path = %crate::storage::bounded(path, 256), reason = %why, "upstream request failed");
                Err(Failure::Unavailable(why))
            }
        }
    }

    /// The status of a response that is not a 200: `Ok` for what is an answer, `Err` for a
    /// failure (counted).
    fn judge(&self, up: &Upstream, status: reqwest::StatusCode) -> Result<Option<Got>, Failure> {
        match status.as_u16() {
            200 => Ok(None),
            304 => {
                self.settle(up, false);
                self.count(up, "not_modified");
                Ok(Some(Got::NotModified))
            }
            code @ (404 | 410) => {
                self.settle(up, false);
                self.count(up, "not_found");
                Ok(Some(Got::Gone(code)))
            }
            code => {
                self.settle(up, true);
                self.count(up, "error");
                tracing::warn!(upstream = %up.url, status = code, "upstream answered an error");
                Err(Failure::Unavailable(format!("answered {code}")))
            }
        }
    }

    /// GET `path` of `up` (conditional when `etag` is given), its body held in memory up to
    /// `limit` bytes.
    pub async fn get(
        &self,
        up: &Upstream,
        path: &str,
        etag: Option<&str>,
        limit: u64,
    ) -> Result<Got, Failure> {
        let res = self.send(up, path, etag).await?;
        if let Some(answer) = self.judge(up, res.status())? {
            return Ok(answer);
        }
        let tag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = BytesMut::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.body_failed(up, &e))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(self.too_large(up, path, limit));
            }
            body.extend_from_slice(&chunk);
        }
        self.settle(up, false);
        self.count(up, "ok");
        Ok(Got::Body {
            bytes: body.freeze(),
            etag: tag,
        })
    }

    /// GET `path` of `up` into the new file `dest`, at most `limit` bytes: the size written, or
    /// the status of a 404/410.
    pub async fn get_to_file(
        &self,
        up: &Upstream,
        path: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<Result<u64, u16>, Failure> {
        let res = self.send(up, path, None).await?;
        match self.judge(up, res.status())? {
            None => {}
            Some(Got::Gone(code)) => return Ok(Err(code)),
            Some(_) => return Err(Failure::Refused("unexpected 304".into())),
        }
        if res.content_length().is_some_and(|n| n > limit) {
            return Err(self.too_large(up, path, limit));
        }
        let local = |e: std::io::Error| Failure::Unavailable(format!("writing {}: {e}", dest.display()));
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(local)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(local)?;
        let mut written = 0u64;
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.body_failed(up, &e))?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(self.too_large(up, path, limit));
            }
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        self.settle(up, false);
        self.count(up, "ok");
        Ok(Ok(written))
    }

    fn body_failed(&self, up: &Upstream, e: &reqwest::Error) -> Failure {
        self.settle(up, true);
        let outcome = if e.is_timeout() { "timeout" } else { "error" };
        self.count(up, outcome);
        tracing::warn!(upstream = %up.url, "upstream body cut off ({outcome})");
        Failure::Unavailable(format!("body cut off ({outcome})"))
    }

    fn too_large(&self, up: &Upstream, path: &str, limit: u64) -> Failure {
        // The upstream answered: not a failure of the link, but nothing of it is stored.
        self.settle(up, false);
        self.count(up, "refused");
        tracing::warn!(upstream = %up.url, path = %crate::storage::bounded(path, 256), limit, "upstream body over its limit: refused");
        Failure::Refused(format!("body over {limit} bytes"))
    }
}
