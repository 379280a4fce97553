//! One structured log line per request: method, route template, status, duration, request id
//! and client address. Headers are never logged, so `Authorization`, `X-Registry-Token` and
//! cookies cannot leak; neither is the raw path beyond the bounded route template.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};

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
    let mut res = next.run(req).await;
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
        .with_label_values(&[method.as_str(), route, &status.to_string()])
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
