//! Where pending deliveries live, behind one small trait: a local directory
//! ([`super::outbox::Outbox`], one replica) or the bucket ([`super::bucket_outbox`], shared by
//! every replica, SPEC §11.4). The worker in [`super`] schedules and attempts deliveries the
//! same way over both.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::outbox::{Delivery, Outbox};

/// What a look for pending deliveries found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Deliveries this replica may take (not among the known ones).
    pub found: Vec<Delivery>,
    /// Deliveries pending in the outbox in all, taken or not (drives the polling backoff).
    pub pending: usize,
}

#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Persist new deliveries, queued by this replica (which attempts them); durable when this
    /// returns.
    async fn enqueue(&self, ds: &[Delivery]) -> Result<(), String>;

    /// Take the right to attempt `d` now: the delivery as stored (the authoritative attempt
    /// count), or `None` when it is gone (delivered) or another replica holds it.
    async fn claim(&self, d: &Delivery) -> Result<Option<Delivery>, String>;

    /// After an attempt: forget the delivery (`done`: delivered or given up), or record its
    /// attempt count and next attempt time.
    async fn settle(&self, d: &Delivery, done: bool) -> Result<(), String>;

    /// Pending deliveries not among `known` that this replica may take.
    async fn scan(&self, known: &HashSet<String>) -> Result<Scan, String>;

    /// On shutdown, after the last attempt: hand back the deliveries this replica holds, so
    /// another replica takes them at its next list instead of after the claims expire. Returns
    /// how many were released. A local outbox has no claims.
    async fn release_claims(&self) -> usize {
        0
    }

    /// Whether other replicas share this outbox, so it must be listed again and again for
    /// deliveries they leave orphaned (a local directory is read once, at startup).
    fn shared(&self) -> bool;

    /// Whether a delivery with this id may already exist (ids are random; this only matters
    /// for the rare collision within one millisecond).
    fn exists(&self, id: &str) -> bool;

    /// Where the outbox is, for logs.
    fn describe(&self) -> String;
}

/// The local directory: this replica owns every delivery in it, so claims always succeed.
pub struct LocalOutbox(pub Arc<Outbox>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[async_trait]
impl OutboxStore for LocalOutbox {
    async fn enqueue(&self, ds: &[Delivery]) -> Result<(), String> {
        let (ob, ds) = (self.0.clone(), ds.to_vec());
        blocking(move || ob.write_all(&ds)).await
    }

    async fn claim(&self, d: &Delivery) -> Result<Option<Delivery>, String> {
        Ok(Some(d.clone()))
    }

    async fn settle(&self, d: &Delivery, done: bool) -> Result<(), String> {
        let (ob, d) = (self.0.clone(), d.clone());
        blocking(move || {
            if done {
                ob.remove(&d.id)
            } else {
                ob.write_all(std::slice::from_ref(&d))
            }
        })
        .await
    }

    async fn scan(&self, known: &HashSet<String>) -> Result<Scan, String> {
        let ob = self.0.clone();
        let (all, corrupt) = blocking(move || ob.load()).await?;
        for c in &corrupt {
            tracing::error!(file = %c, "unreadable webhook outbox file set aside (renamed to .corrupt)");
        }
        let pending = all.len();
        let found = all.into_iter().filter(|d| !known.contains(&d.id)).collect();
        Ok(Scan { found, pending })
    }

    fn shared(&self) -> bool {
        false
    }

    fn exists(&self, id: &str) -> bool {
        self.0.exists(id)
    }

    fn describe(&self) -> String {
        self.0.dir().display().to_string()
    }
}
