//! Prometheus metrics (SPEC §8), on a registry owned by the application state (no globals, so
//! several servers can live in one test process).
//!
//! Every label value comes from a small fixed set: route templates, status codes, outcome and
//! error-code names. Never a raw path, a token or a client-supplied namespace.

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use rack_core::ErrorKind;

/// The `method` label: one of the methods of RFC 9110 (and PATCH), anything else `other`.
/// hyper accepts any token as a method, so the raw method would let a client create a series
/// (and 60 KB of label) per request.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Buckets of `http_request_duration_seconds` (SPEC §8).
pub const DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// The errors counted by `registry_auth_failures_total{code}`.
const AUTH_FAILURES: [ErrorKind; 8] = [
    ErrorKind::Unauthorized,
    ErrorKind::InvalidToken,
    ErrorKind::TokenExpired,
    ErrorKind::ForbiddenNamespace,
    ErrorKind::NamespaceNotAllowed,
    ErrorKind::AnonymousUploadForbidden,
    ErrorKind::InsufficientPermissions,
    ErrorKind::Forbidden,
];

pub struct Metrics {
    /// Tells this registry's handles apart in the per-thread handle cache.
    id: u64,
    registry: Registry,
    pub http_duration: HistogramVec,
    pub uploads: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub rate_limited: IntCounter,
    pub auth_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Uploads reading their body, by slot: `publish` (`MAX_CONCURRENT_UPLOADS`) or `judge`
    /// (uploads whose token can publish nowhere, judged without writing).
    pub uploads_in_progress: IntGaugeVec,
    /// Publishing uploads waiting for a slot (`UPLOAD_QUEUE_MAX`).
    pub uploads_queued: IntGauge,
    /// Requests to upstream registries (SPEC §17), their stale serves and breakers, by upstream
    /// URL (one series per configured upstream: `upstreams.json` holds at most 64).
    pub upstream: crate::upstream::fetch::Counters,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration in seconds",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["method", "route", "status_code"],
        )
        .expect("valid histogram");
        let uploads = IntCounterVec::new(
            Opts::new("registry_uploads_total", "Upload attempts by outcome"),
            &["outcome"],
        )
        .expect("valid counter");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "registry_webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
            ),
            &["outcome"],
        )
        .expect("valid counter");
        let rate_limited = IntCounter::new(
            "registry_rate_limited_total",
            "Requests refused by the rate limiter",
        )
        .expect("valid counter");
        let auth_failures = IntCounterVec::new(
            Opts::new("registry_auth_failures_total", "Refused requests by error code"),
            &["code"],
        )
        .expect("valid counter");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "registry_config_reloads_total",
                "Configuration reloads by file and outcome",
            ),
            &["file", "outcome"],
        )
        .expect("valid counter");
        let uploads_in_progress = IntGaugeVec::new(
            Opts::new(
                "registry_uploads_in_progress",
                "Uploads reading their body, by slot (publish, or judge for tokens that cannot publish)",
            ),
            &["slot"],
        )
        .expect("valid gauge");
        let uploads_queued = IntGauge::new("registry_uploads_queued", "Uploads waiting for a publish slot")
            .expect("valid gauge");
        let upstream = crate::upstream::fetch::Counters {
            requests: IntCounterVec::new(
                Opts::new(
                    "registry_upstream_requests_total",
                    "Requests to upstream registries by outcome (ok, not_modified, not_found, error, timeout, refused, skipped)",
                ),
                &["upstream", "outcome"],
            )
            .expect("valid counter"),
            stale: IntCounterVec::new(
                Opts::new(
                    "registry_upstream_stale_total",
                    "Reads of upstream namespaces answered from the stored copy because the upstream could not be asked",
                ),
                &["upstream"],
            )
            .expect("valid counter"),
            breaker: IntGaugeVec::new(
                Opts::new(
                    "registry_upstream_breaker_open",
                    "1 while an upstream is skipped after repeated failures",
                ),
                &["upstream"],
            )
            .expect("valid gauge"),
        };
        for c in [
            Box::new(http_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(uploads_in_progress.clone()),
            Box::new(uploads_queued.clone()),
            Box::new(uploads.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(rate_limited.clone()),
            Box::new(auth_failures.clone()),
            Box::new(config_reloads.clone()),
            Box::new(upstream.requests.clone()),
            Box::new(upstream.stale.clone()),
            Box::new(upstream.breaker.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        // Known label values start at zero so that dashboards see the series before the first event.
        for outcome in ["success", "failure"] {
            uploads.with_label_values(&[outcome]);
            for file in ["auth", "webhooks"] {
                config_reloads.with_label_values(&[file, outcome]);
            }
        }
        for outcome in ["success", "retry", "failure"] {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        for kind in AUTH_FAILURES {
            auth_failures.with_label_values(&[kind.code()]);
        }
        for slot in ["publish", "judge"] {
            uploads_in_progress.with_label_values(&[slot]);
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            http_duration,
            uploads,
            webhook_deliveries,
            rate_limited,
            auth_failures,
            config_reloads,
            uploads_in_progress,
            uploads_queued,
            upstream,
        }
    }

    /// One request in `http_request_duration_seconds`. Each thread keeps the histogram
    /// handles it used: `with_label_values` hashes the three labels and takes a lock on every
    /// call, while a handle is a few atomic adds. The label sets are few (method, route
    /// template, status), so the per-thread list stays short; it is capped all the same.
    pub fn observe_request(&self, method: &Method, route: &'static str, status: StatusCode, seconds: f64) {
        type Handles = Vec<(u64, &'static str, &'static str, StatusCode, Histogram)>;
        const MAX_HANDLES: usize = 256;
        thread_local! {
            static HANDLES: std::cell::RefCell<Handles> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let method = method_label(method);
        HANDLES.with_borrow_mut(|handles| {
            let found = handles
                .iter()
                .find(|(id, m, r, s, _)| *id == self.id && *s == status && *r == route && *m == method);
            match found {
                Some(h) => h.4.observe(seconds),
                None => {
                    let h = self
                        .http_duration
                        .with_label_values(&[method, route, status.as_str()]);
                    h.observe(seconds);
                    if handles.len() >= MAX_HANDLES {
                        handles.clear();
                    }
                    handles.push((self.id, method, route, status, h));
                }
            }
        });
    }

    /// Count an error answer if it is an authentication or authorization failure.
    pub fn observe_error(&self, kind: ErrorKind) {
        if AUTH_FAILURES.contains(&kind) {
            self.auth_failures.with_label_values(&[kind.code()]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_spec_series() {
        let m = Metrics::new();
        m.http_duration
            .with_label_values(&["GET", "/health", "200"])
            .observe(0.002);
        m.observe_error(ErrorKind::InvalidToken);
        m.observe_error(ErrorKind::NotFound);
        let text = m.render();
        for needle in [
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"/health\",status_code=\"200\",le=\"0.001\"} 0",
            "le=\"0.005\"} 1",
            "le=\"1\"}",
            "le=\"10\"}",
            "le=\"+Inf\"} 1",
            "registry_auth_failures_total{code=\"INVALID_TOKEN\"} 1",
            "registry_auth_failures_total{code=\"TOKEN_EXPIRED\"} 0",
            "registry_config_reloads_total{file=\"auth\",outcome=\"failure\"} 0",
            "registry_uploads_total{outcome=\"success\"} 0",
            "registry_rate_limited_total 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("NOT_FOUND"));
        #[cfg(target_os = "linux")]
        for p in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(p), "missing {p}");
        }
    }
}
