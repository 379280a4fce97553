//! One structured log line per request: method, route template, status, duration, request id
//! and client address. Headers are never logged, so `Authorization`, `X-Registry-Token` and
//! cookies cannot leak; neither is the raw path beyond the bounded route template.

use std::net::IpAddr;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method};
use rack_core::ApiError;

use super::names::{
    X_FORWARDED_FOR, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET, X_REQUEST_ID,
};
use super::response::ErrorReply;
use crate::config::TrustProxy;
use crate::ratelimit::Decision;
use crate::state::AppState;

/// The client address per `TRUST_PROXY` (SPEC §8).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trust: TrustProxy) -> IpAddr {
    let forwarded = || -> Vec<IpAddr> {
        headers
            .get_all(X_FORWARDED_FOR)
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
        h.insert(X_RATELIMIT_LIMIT, limit_header(d.limit));
        h.insert(X_RATELIMIT_REMAINING, number_header(d.remaining));
        h.insert(X_RATELIMIT_RESET, number_header(d.reset_secs));
    }
    let status = res.status();
    let elapsed = start.elapsed();
    state
        .metrics
        .observe_request(method, route, status, elapsed.as_secs_f64());
    if let Some(kind) = res.extensions().get::<rack_core::ErrorKind>() {
        state.metrics.observe_error(*kind);
    }
    let mut id = [0u8; 16];
    hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut id).expect("16 hex digits");
    let id = std::str::from_utf8(&id).expect("hex is ASCII");
    res.headers_mut().insert(
        X_REQUEST_ID,
        HeaderValue::from_str(id).expect("hex is a valid header value"),
    );
    // From nanoseconds in one division, so the number prints short (0.015028, not 0.0150280001).
    let ms = elapsed.as_nanos() as f64 / 1e6;
    log_line(method, route, status.as_u16(), ms, id, client);
}

/// A number as a header value. The small ones (seconds to a window's end, and counts near
/// them) come from a table built once; `HeaderValue::from(u64)` formats into a fresh buffer.
pub fn number_header(n: u64) -> HeaderValue {
    const SMALL: usize = 4096;
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    match usize::try_from(n) {
        Ok(i) if i < SMALL => {
            TABLE.get_or_init(|| (0..SMALL as u64).map(HeaderValue::from).collect())[i].clone()
        }
        _ => HeaderValue::from_str(itoa::Buffer::new().format(n)).expect("digits are a valid header value"),
    }
}

/// The limit is the same on every answer (until a restart), but may be past the table.
fn limit_header(limit: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((n, v)) if *n == limit => v.clone(),
        _ => last.insert((limit, number_header(limit))).1.clone(),
    })
}

/// The 429 of SPEC §8 (the refused body is drained so that the client reads the answer).
pub fn rate_limited(state: &AppState, d: Decision, body: axum::body::Body) -> Response {
    state.metrics.rate_limited.inc();
    crate::upload::receive::drain(body);
    let mut res = ErrorReply(ApiError::rate_limited(d.reset_secs)).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, number_header(d.reset_secs));
    res
}

const REQUEST_TARGET: &str = "rack_registry::request";

/// The request log line. With JSON logs it is written here, with the keys and layout of the
/// other (tracing) JSON lines, because tracing-subscriber's JSON formatter cost about 6 % of
/// the CPU of a small read. Every value is a number, an address, hex or one of our route
/// templates, and the method is one of a fixed set, so the line is always valid JSON.
fn log_line(method: &Method, route: &'static str, status: u16, ms: f64, id: &str, client: IpAddr) {
    if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(sink) = crate::logsink::json_lines() else {
        tracing::info!(
            target: REQUEST_TARGET,
            method = crate::metrics::method_label(method),
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
        line.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(line);
        line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        // The bounded label, not the raw token (which may be kilobytes long).
        let _ = serde_json::to_writer(&mut *line, crate::metrics::method_label(method));
        line.extend_from_slice(b",\"route\":\"");
        line.extend_from_slice(route.as_bytes());
        line.extend_from_slice(b"\",\"status\":");
        line.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        line.extend_from_slice(b",\"duration_ms\":");
        let _ = serde_json::to_writer(&mut *line, &ms);
        line.extend_from_slice(b",\"request_id\":\"");
        line.extend_from_slice(id.as_bytes());
        line.extend_from_slice(b"\",\"client\":\"");
        match client {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        line.push(b'.');
                    }
                    line.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(line, "{v6}");
            }
        }
        line.extend_from_slice(b"\",\"target\":\"");
        line.extend_from_slice(REQUEST_TARGET.as_bytes());
        line.extend_from_slice(b"\"}\n");
        sink.append(line);
    });
}

/// `2026-11-26T08:16:37.139266Z` (UTC, microseconds, as tracing-subscriber writes it). The
/// part up to the seconds is formatted once per second per thread.
fn push_timestamp(line: &mut Vec<u8>) {
    use std::io::Write;
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((0, [0; 19])) };
    }
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs || prefix[0] == 0 {
        // Always 19 bytes: the time crate (without `large-dates`) stops at year 9999, and the
        // clock is past 1970.
        let at = time::OffsetDateTime::from_unix_timestamp(secs as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let _ = write!(
            &mut prefix[..],
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            at.year(),
            at.month() as u8,
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        );
        SECOND.set((secs, prefix));
    }
    line.extend_from_slice(&prefix);
    push_fraction(line, since_epoch.subsec_micros());
}

fn push_fraction(line: &mut Vec<u8>, micros: u32) {
    let mut digits = *b".000000Z";
    let mut m = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    line.extend_from_slice(&digits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_tracing_ones() {
        let mut line = Vec::new();
        super::push_timestamp(&mut line);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text.len(), 27, "{text}");
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert!((now - parsed).abs() < time::Duration::seconds(5), "{text}");
        let mut frac = Vec::new();
        super::push_fraction(&mut frac, 42);
        assert_eq!(frac, b".000042Z");
    }

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
