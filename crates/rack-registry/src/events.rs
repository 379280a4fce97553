//! Publish events: what happened, for whoever listens (the webhook outbox).
//!
//! A sink's `accept` is awaited before the upload answers 201, so a durable sink can persist the
//! event first; it must only record the event, never deliver it inline.

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEvent {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// `@ns/<segments>/<version>`, as in the 201 body.
    pub path: String,
}

#[async_trait]
pub trait PublishSink: Send + Sync + 'static {
    async fn accept(&self, event: &PublishEvent);
}
