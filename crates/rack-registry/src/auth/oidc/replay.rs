//! Single use of ID tokens (SPEC §16): the `jti` of every token that publishes is recorded in
//! the storage with a create-only write, so that a second upload with the same token, on this
//! replica or any other on the same storage, finds it and is refused (401 `INVALID_TOKEN`).
//!
//! The record is `.rack/oidc/jti/<hour>/<sha256(issuer, jti)>` (a few bytes): `<hour>` is the
//! hour (since the epoch) in which the token stops verifying (`exp` plus the leeway), so a whole
//! hour of records can be deleted once it is over, with no listing of live records. The sweep
//! runs opportunistically, after a record is written, at most once per [`SWEEP_EVERY`] per
//! process, and looks at one listing page (at most [`SWEEP_PAGE`] hours).
//!
//! The key is a hash of the issuer and the `jti`: a `jti` is issuer-chosen text of any shape,
//! and a hash is always a valid storage key, never names the token, and keeps the two issuers'
//! `jti`s apart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::storage::{PutMode, Storage, StorageError};

pub const PREFIX: &str = ".rack/oidc/jti/";
const HOUR_S: i64 = 3600;
const SWEEP_EVERY: Duration = Duration::from_secs(600);
const SWEEP_PAGE: usize = 1000;

/// The record of token `jti` of `issuer` that stops verifying at `until_s` (unix seconds).
pub fn record_key(issuer: &str, jti: &str, until_s: i64) -> String {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(jti.as_bytes());
    format!(
        "{PREFIX}{}/{}",
        until_s.div_euclid(HOUR_S),
        hex::encode(h.finalize())
    )
}

/// What recording a token found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// First use: recorded now.
    First,
    /// The record exists: the token was used before.
    Replay,
}

pub struct Replays {
    storage: Arc<dyn Storage>,
    last_sweep: Mutex<Option<Instant>>,
}

impl Replays {
    pub fn new(storage: Arc<dyn Storage>) -> Replays {
        Replays {
            storage,
            last_sweep: Mutex::new(None),
        }
    }

    /// Whether the token of `key` was used already (a read: the early answer; the create-only
    /// write of [`Replays::record`] is the one that decides).
    pub async fn used(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.storage.head(key).await?.is_some())
    }

    /// Record the token of `key` (create-only): of two uploads with one token, on any replica,
    /// exactly one is [`Recorded::First`].
    pub async fn record(&self, key: &str, until_s: i64, now_s: i64) -> Result<Recorded, StorageError> {
        let body = Bytes::from(format!("{{\"until\":{until_s}}}\n"));
        let recorded = match self.storage.put(key, body, PutMode::Create).await {
            Ok(_) => Recorded::First,
            Err(StorageError::AlreadyExists(_)) => Recorded::Replay,
            Err(e) => return Err(e),
        };
        self.sweep(now_s).await;
        Ok(recorded)
    }

    /// Delete the records of hours that are over (at most once per [`SWEEP_EVERY`]).
    async fn sweep(&self, now_s: i64) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this_hour = now_s.div_euclid(HOUR_S);
        let page = match self.storage.list(PREFIX, true, None, SWEEP_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list ID-token records to sweep");
                return;
            }
        };
        for p in page.prefixes {
            let hour = p
                .strip_prefix(PREFIX)
                .and_then(|h| h.strip_suffix('/'))
                .and_then(|h| h.parse::<i64>().ok());
            if hour.is_some_and(|h| h < this_hour) {
                if let Err(e) = self.storage.delete_prefix(&p).await {
                    tracing::warn!(error = %e, "cannot delete expired ID-token records");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn once_per_token_across_replicas_and_old_hours_are_swept() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let (a, b) = (Replays::new(storage.clone()), Replays::new(storage.clone()));
        let now = 1_000 * HOUR_S + 10;
        let key = record_key("https://i", "j1", now + 300);
        assert!(!a.used(&key).await.unwrap());
        assert_eq!(a.record(&key, now + 300, now).await.unwrap(), Recorded::First);
        assert!(b.used(&key).await.unwrap());
        assert_eq!(b.record(&key, now + 300, now).await.unwrap(), Recorded::Replay);
        // The same jti of another issuer is another token.
        assert_ne!(key, record_key("https://other", "j1", now + 300));
        // A record of an hour that is over goes at the next sweep (a fresh replica sweeps at
        // once); the live one stays.
        let old = record_key("https://i", "j0", now - 2 * HOUR_S);
        storage
            .put(&old, Bytes::from_static(b"{}"), PutMode::Create)
            .await
            .unwrap();
        let key2 = record_key("https://i", "j2", now + 300);
        Replays::new(storage.clone())
            .record(&key2, now + 300, now)
            .await
            .unwrap();
        assert!(storage.head(&old).await.unwrap().is_none());
        assert!(storage.head(&key).await.unwrap().is_some());
        assert!(storage.head(&key2).await.unwrap().is_some());
    }
}
