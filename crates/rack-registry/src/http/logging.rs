//! One structured log line per request: method, route template, status, duration, request id
//! and client address. Headers are never logged, so `Authorization`, `X-Registry-Token` and
//! cookies cannot leak; neither is the raw path beyond the bounded route template.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue};
use rack_core::ApiError;

use super::response::ErrorReply;
use super::RouteTemplate;
use crate::config::TrustProxy;
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

fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The client address of a request (per `TRUST_PROXY`), left in the request extensions.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

pub async fn log_requests(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let client = client_ip(peer, req.headers(), state.trust_proxy);
    let id = request_id();
    req.extensions_mut().insert(ClientIp(client));
    // Every request to every route counts (SPEC §14), `/health` and `/metrics` included.
    let decision = state
        .rate_limiter
        .enabled()
        .then(|| state.rate_limiter.check(client, Instant::now()));
    let mut res = match decision {
        Some(d) if !d.allowed => {
            state.metrics.rate_limited.inc();
            let template = rack_core::route::route(req.uri().path()).template();
            crate::upload::receive::drain(req.into_body());
            let mut res = ErrorReply(ApiError::rate_limited(d.reset_secs)).into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(d.reset_secs));
            res.extensions_mut().insert(RouteTemplate(template));
            res
        }
        _ => next.run(req).await,
    };
    if let Some(d) = decision {
        let h = res.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
    }
    let route = res
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0)
        .unwrap_or("unmatched");
    let status = res.status().as_u16();
    let seconds = start.elapsed().as_secs_f64();
    state
        .metrics
        .http_duration
        .with_label_values(&[method.as_str(), route, res.status().as_str()])
        .observe(seconds);
    if let Some(kind) = res.extensions().get::<rack_core::ErrorKind>() {
        state.metrics.observe_error(*kind);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        target: "rack_registry::request",
        method = %method,
        route,
        status,
        duration_ms = seconds * 1000.0,
        request_id = %id,
        client = %client,
        "request"
    );
    res
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
