//! One structured log line per request: method, route template, status, duration, request id
//! and client address. Headers are never logged, so `Authorization`, `X-Registry-Token` and
//! cookies cannot leak; neither is the raw path beyond the bounded route template.

use std::net::IpAddr;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method};
use rack_core::ApiError;

use super::response::ErrorReply;
use crate::config::TrustProxy;
use crate::ratelimit::Decision;
use crate::state::AppState;

/// The client address per `TRUST_PROXY` (SPEC §8).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trust: TrustProxy) -> IpAddr {
    let forwarded = || -> Vec<IpAddr> {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    match trust {
        TrustProxy::No => peer,
        TrustProxy::All => forwarded().first().copied().unwrap_or(peer),
        TrustProxy::Hops(n) => {
            let list = forwarded();
            // Skip n-1 trusted proxies from the right; the peer is the n-th.
            list.len()
                .checked_sub(n as usize)
                .and_then(|i| list.get(i))
                .copied()
                .unwrap_or(peer)
        }
    }
}

/// Every answer's common tail: `x-ratelimit-*` and `x-request-id` headers, the duration
/// histogram and error counters, and the request log line.
pub fn finish(
    state: &AppState,
    method: &Method,
    route: &'static str,
    client: IpAddr,
    decision: Option<Decision>,
    start: Instant,
    res: &mut Response,
) {
    if let Some(d) = decision {
        let h = res.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
    }
    let status = res.status();
    let elapsed = start.elapsed();
    let seconds = elapsed.as_secs_f64();
    state
        .metrics
        .http_duration
        .with_label_values(&[method.as_str(), route, status.as_str()])
        .observe(seconds);
    if let Some(kind) = res.extensions().get::<rack_core::ErrorKind>() {
        state.metrics.observe_error(*kind);
    }
    let mut id = [0u8; 16];
    hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut id).expect("16 hex digits");
    let id = std::str::from_utf8(&id).expect("hex is ASCII");
    res.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(id).expect("hex is a valid header value"),
    );
    // From nanoseconds in one division, so the number prints short (0.015028, not 0.0150280001).
    let ms = elapsed.as_nanos() as f64 / 1e6;
    log_line(method, route, status.as_u16(), ms, id, client);
}

/// The 429 of SPEC §8 (the refused body is drained so that the client reads the answer).
pub fn rate_limited(state: &AppState, d: Decision, body: axum::body::Body) -> Response {
    state.metrics.rate_limited.inc();
    crate::upload::receive::drain(body);
    let mut res = ErrorReply(ApiError::rate_limited(d.reset_secs)).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(d.reset_secs));
    res
}

const REQUEST_TARGET: &str = "rack_registry::request";

/// The request log line. With JSON logs it is written here, with the keys and layout of the
/// other (tracing) JSON lines, because tracing-subscriber's JSON formatter cost about 6 % of
/// the CPU of a small read. Every value is a number, an address, hex or one of our route
/// templates, and the method is escaped, so the line is always valid JSON.
fn log_line(method: &Method, route: &'static str, status: u16, ms: f64, id: &str, client: IpAddr) {
    if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(sink) = crate::logsink::json_lines() else {
        tracing::info!(
            target: REQUEST_TARGET,
            method = %method,
            route,
            status,
            duration_ms = ms,
            request_id = %id,
            client = %client,
            "request"
        );
        return;
    };
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        use std::io::Write;
        line.clear();
        let now = time::OffsetDateTime::now_utc();
        let _ = write!(
            line,
            "{{\"timestamp\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\",\"level\":\"INFO\",\
             \"message\":\"request\",\"method\":",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond()
        );
        let _ = serde_json::to_writer(&mut *line, method.as_str());
        let _ = write!(
            line,
            ",\"route\":\"{route}\",\"status\":{status},\"duration_ms\":"
        );
        let _ = serde_json::to_writer(&mut *line, &ms);
        let _ = writeln!(
            line,
            ",\"request_id\":\"{id}\",\"client\":\"{client}\",\"target\":\"{REQUEST_TARGET}\"}}"
        );
        sink.append(line);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_proxy_modes() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(client_ip(peer, &h, TrustProxy::No), peer);
        assert_eq!(client_ip(peer, &h, TrustProxy::All).to_string(), "1.1.1.1");
        assert_eq!(client_ip(peer, &h, TrustProxy::Hops(1)).to_string(), "3.3.3.3");
        assert_eq!(client_ip(peer, &h, TrustProxy::Hops(2)).to_string(), "2.2.2.2");
        assert_eq!(client_ip(peer, &h, TrustProxy::Hops(9)), peer);
        assert_eq!(client_ip(peer, &HeaderMap::new(), TrustProxy::All), peer);
    }
}
