//! Publish events: what happened, for whoever listens (the webhook outbox).
//!
//! A sink's `accept` is awaited before the upload answers 201, so a durable sink can persist the
//! event first; it must only record the event, never deliver it inline.

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEvent {
    pub namespace: String,
    pub name: String,
    /// Empty for a change to a whole registry (`registry.deprecated`).
    pub version: String,
    /// `@ns/<segments>/<version>`, as in the 201 body (`@ns/<segments>` for a registry).
    pub path: String,
    /// `None` for a publish (`uploaded`, then `version.created`); a lifecycle change of SPEC §18
    /// otherwise, delivered as its own event.
    pub lifecycle: Option<LifecycleChange>,
}

/// A yank, unyank, deprecation, undeprecation or deletion (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChange {
    /// One of [`crate::webhooks::config::LIFECYCLE_EVENTS`].
    pub event: &'static str,
    /// Fields added to the payload after `path` (`reason`, `message`, `successor`, `by`).
    pub detail: serde_json::Map<String, serde_json::Value>,
}

#[async_trait]
pub trait PublishSink: Send + Sync + 'static {
    async fn accept(&self, event: &PublishEvent);
}

/// The sinks as the storage's publish protocol sees them ([`crate::storage::publish::Announce`]):
/// a bucket publish, or a sweep finishing a dead publisher's version, announces through them.
pub struct Announcer<'a>(pub &'a [std::sync::Arc<dyn PublishSink>]);

#[async_trait]
impl crate::storage::publish::Announce for Announcer<'_> {
    async fn listed(&self, registry: &str, version: &str, manifest: &[u8]) {
        let namespace = registry.split('/').next().unwrap_or(registry);
        // The manifest's name, as the upload's event has it (the last segment otherwise).
        let name = serde_json::from_slice::<serde_json::Value>(manifest)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_else(|| registry.rsplit('/').next().unwrap_or(registry).to_owned());
        let event = PublishEvent {
            namespace: namespace.to_owned(),
            name,
            version: version.to_owned(),
            path: format!("{registry}/{version}"),
            lifecycle: None,
        };
        for sink in self.0 {
            sink.accept(&event).await;
        }
    }
}
