//! One delivery: building it (body, signature, id, fixed once when queued) and sending one
//! attempt of it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::config::Webhook;
use super::outbox::{delivery_id, Delivery};
use crate::events::PublishEvent;

pub const USER_AGENT: &str = "Rack-Registry-Webhook/1.0";

/// The JSON body, fields in this exact order (SPEC §7), serialized compactly.
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    name: &'a str,
    /// Absent from a registry's lifecycle event (`registry.deprecated`).
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    namespace: &'a str,
    timestamp: &'a str,
    path: &'a str,
    /// A lifecycle event's own fields (SPEC §18), after the common ones.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

pub use crate::clock::{epoch_ms, format_timestamp, now_ms};

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery of `event_name` about `event` to `hook`, queued at `at`: everything that goes on
/// the wire is fixed here, so every attempt resends identical bytes.
pub fn build(
    hook: &Webhook,
    event_name: &str,
    event: &PublishEvent,
    at: time::OffsetDateTime,
    seq: u64,
    after: Option<String>,
) -> Delivery {
    let timestamp = format_timestamp(at);
    let ms = epoch_ms(at);
    let body = serde_json::to_string(&Payload {
        event: event_name,
        name: &event.name,
        version: &event.version,
        namespace: &event.namespace,
        timestamp: &timestamp,
        path: &event.path,
        detail: event.lifecycle.as_ref().map(|l| &l.detail),
    })
    .expect("serializing strings");
    Delivery {
        format: super::outbox::FORMAT,
        id: delivery_id(ms),
        event: event_name.to_owned(),
        url: hook.url.clone(),
        webhook: hook.index,
        signature: sign(&hook.secret, body.as_bytes()),
        timestamp,
        body,
        after,
        attempts: 0,
        next_attempt_ms: ms,
        created_ms: ms,
        seq,
    }
}

/// The HTTP client for deliveries: per-attempt timeout, no redirects (a 3xx is a failure), and
/// a fresh connection per attempt (deliveries are rare; a pooled connection the receiver has
/// closed would only turn into a spurious failed attempt).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("building the webhook HTTP client")
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// A non-2xx answer or a network error/timeout: worth retrying.
    Failed(String),
    /// The request cannot even be built (an invalid URL): retrying cannot help.
    Invalid(String),
}

/// Send one attempt.
pub async fn attempt(client: &reqwest::Client, d: &Delivery) -> Outcome {
    let url = match reqwest::Url::parse(&d.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => return Outcome::Invalid(format!("unsupported URL scheme {:?}", u.scheme())),
        Err(e) => return Outcome::Invalid(format!("invalid URL: {e}")),
    };
    let req = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, USER_AGENT)
        .header("X-Webhook-Event", &d.event)
        .header("X-Webhook-Timestamp", &d.timestamp)
        .header("X-Webhook-Delivery", &d.id)
        .header("X-Webhook-Signature", &d.signature)
        .body(d.body.clone().into_bytes());
    match req.send().await {
        Ok(res) => {
            let status = res.status();
            // Read (a bounded part of) the answer so the exchange completes; its content is
            // not used.
            let _ = tokio::time::timeout(Duration::from_secs(1), res.bytes()).await;
            if status.is_success() {
                Outcome::Delivered(status.as_u16())
            } else {
                Outcome::Failed(format!("HTTP {}", status.as_u16()))
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // `without_url`: the URL may carry credentials of the receiver.
            Outcome::Failed(format!("{kind}: {}", error_chain(&e.without_url())))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::config::redact_url;
    use crate::webhooks::outbox::is_delivery_id;

    fn hook() -> Webhook {
        Webhook {
            index: 3,
            url: "http://127.0.0.1:1/hook?token=abc".into(),
            secret: "It's a Secret to Everybody".into(),
            events: vec!["uploaded".into()],
            enabled: true,
            description: None,
        }
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_is_compact_and_ordered() {
        let at = time::macros::datetime!(2026-11-26 05:42:24.682 UTC);
        let ev = PublishEvent {
            namespace: "@rack".into(),
            name: "vite".into(),
            version: "1.2.3".into(),
            path: "@rack/build/vite/1.2.3".into(),
            lifecycle: None,
        };
        let d = build(&hook(), "uploaded", &ev, at, 7, None);
        assert_eq!(
            d.body,
            r#"{"event":"uploaded","name":"vite","version":"1.2.3","namespace":"@rack","timestamp":"2026-11-26T05:42:24.682Z","path":"@rack/build/vite/1.2.3"}"#
        );
        assert_eq!(d.timestamp, "2026-11-26T05:42:24.682Z");
        assert_eq!(d.signature, sign("It's a Secret to Everybody", d.body.as_bytes()));
        assert!(d.id.starts_with("1795671744682-"), "{}", d.id);
        assert!(is_delivery_id(&d.id));
        assert_eq!((d.attempts, d.webhook, d.seq), (0, 3, 7));
        assert_eq!(d.next_attempt_ms, 1795671744682);
    }

    #[test]
    fn delivery_ids() {
        for _ in 0..100 {
            let id = delivery_id(1_700_000_000_000);
            assert!(is_delivery_id(&id), "{id}");
            assert_eq!(id.len(), "1700000000000-".len() + 6);
        }
        for bad in [
            "",
            "1-",
            "-abc",
            "1-ABC",
            "1-abcdefg",
            "1-a/b",
            "../x",
            "1-a.json",
        ] {
            assert!(!is_delivery_id(bad), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("https://user:pw@h.example:8443/p/q?token=x"),
            "https://h.example:8443/p/q?..."
        );
        assert_eq!(redact_url("http://127.0.0.1/x"), "http://127.0.0.1/x");
        assert_eq!(redact_url("nonsense"), "<invalid url>");
    }

    #[tokio::test]
    async fn invalid_urls_are_not_retried() {
        let mut d = build(
            &hook(),
            "uploaded",
            &PublishEvent {
                namespace: "@a".into(),
                name: "b".into(),
                version: "1.0.0".into(),
                path: "@a/b/1.0.0".into(),
                lifecycle: None,
            },
            time::OffsetDateTime::now_utc(),
            0,
            None,
        );
        let c = client(Duration::from_secs(1));
        d.url = "not a url".into();
        assert!(matches!(attempt(&c, &d).await, Outcome::Invalid(_)));
        d.url = "ftp://127.0.0.1/x".into();
        assert!(matches!(attempt(&c, &d).await, Outcome::Invalid(_)));
    }
}
