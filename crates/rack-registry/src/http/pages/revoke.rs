//! Signing out, on every replica: a signed-out session's id is written to the storage,
//! `.rack/sessions/<expiry day>/<session id>` (create-only, a few bytes), and every replica
//! checks that key before it honours a session cookie.
//!
//! A replica remembers what it found for a session for `UI_SESSION_REVALIDATE_SECONDS` (default
//! 10): the replica that signs a viewer out forgets the session at once; the others stop
//! honouring it within that interval. A revoked session is remembered until it expires. The
//! memory is bounded ([`CACHE_CAP`] sessions; a full cache is emptied, which costs re-checks,
//! never a wrong answer). A storage error while checking leaves the session as it was last
//! seen (live if never seen), logged: the pages need the storage anyway.
//!
//! Markers are grouped by the UTC day their session expires, so that signing out also deletes
//! the groups of days that are over (at most once an hour), with no listing of live markers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::storage::{PutMode, Storage, StorageError};

pub const PREFIX: &str = ".rack/sessions/";
/// Sessions remembered per replica.
pub const CACHE_CAP: usize = 10_000;
const DAY_S: i64 = 86_400;
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy)]
struct Seen {
    revoked: bool,
    at: Instant,
}

pub struct Revocations {
    storage: Arc<dyn Storage>,
    revalidate: Duration,
    seen: Mutex<HashMap<String, Seen>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// The marker of session `sid` that expires at `expires_s`.
pub fn marker_key(sid: &str, expires_s: i64) -> String {
    format!("{PREFIX}{}/{sid}", expires_s.div_euclid(DAY_S))
}

impl Revocations {
    pub fn new(storage: Arc<dyn Storage>, revalidate: Duration) -> Revocations {
        Revocations {
            storage,
            revalidate,
            seen: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
        }
    }

    fn remember(&self, sid: &str, revoked: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= CACHE_CAP && !seen.contains_key(sid) {
            seen.clear();
        }
        seen.insert(
            sid.to_owned(),
            Seen {
                revoked,
                at: Instant::now(),
            },
        );
    }

    /// Whether session `sid` (ending at `expires_s`) was signed out, here or on another replica.
    pub async fn is_revoked(&self, sid: &str, expires_s: i64) -> bool {
        let known = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .copied();
        match known {
            Some(s) if s.revoked => return true,
            Some(s) if s.at.elapsed() < self.revalidate => return false,
            _ => {}
        }
        match self.storage.head(&marker_key(sid, expires_s)).await {
            Ok(found) => {
                self.remember(sid, found.is_some());
                found.is_some()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether a web session was signed out");
                false
            }
        }
    }

    /// Sign session `sid` out everywhere. `Err` when the marker could not be written (the
    /// session then still ends on this replica).
    pub async fn revoke(&self, sid: &str, expires_s: i64, now_s: i64) -> Result<(), StorageError> {
        self.remember(sid, true);
        let body = Bytes::from(format!("{{\"expires\":{expires_s}}}\n"));
        let written = match self
            .storage
            .put(&marker_key(sid, expires_s), body, PutMode::Create)
            .await
        {
            Ok(_) | Err(StorageError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        };
        self.sweep(now_s).await;
        written
    }

    /// Delete the markers of days that are over (at most once per [`SWEEP_EVERY`]).
    async fn sweep(&self, now_s: i64) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let today = now_s.div_euclid(DAY_S);
        let Ok(page) = self.storage.list(PREFIX, true, None, 1000).await else {
            return;
        };
        for p in page.prefixes {
            let rel = p.strip_prefix(PREFIX).unwrap_or(&p);
            let day = rel.strip_suffix('/').and_then(|d| d.parse::<i64>().ok());
            if day.is_some_and(|d| d < today) {
                if let Err(e) = self.storage.delete_prefix(&format!("{PREFIX}{rel}")).await {
                    tracing::warn!(error = %e, "cannot delete expired session markers");
                }
            }
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn a_revocation_reaches_other_replicas_and_expired_days_are_swept() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let a = Revocations::new(storage.clone(), Duration::ZERO);
        let b = Revocations::new(storage.clone(), Duration::from_secs(3600));
        let now = 100 * DAY_S;
        assert!(!b.is_revoked("s1", now + 10).await);
        a.revoke("s1", now + 10, now).await.unwrap();
        assert!(a.is_revoked("s1", now + 10).await);
        // `b` saw it live within its revalidation interval; a fresh replica sees it revoked.
        assert!(!b.is_revoked("s1", now + 10).await);
        let c = Revocations::new(storage.clone(), Duration::from_secs(3600));
        assert!(c.is_revoked("s1", now + 10).await);
        // Signing out twice is fine.
        a.revoke("s1", now + 10, now).await.unwrap();
        // An old day's markers go at the next sweep (forced here by a fresh replica).
        let old = Revocations::new(storage.clone(), Duration::ZERO);
        old.revoke("s0", now - 2 * DAY_S, now - 3 * DAY_S).await.unwrap();
        assert!(storage
            .head(&marker_key("s0", now - 2 * DAY_S))
            .await
            .unwrap()
            .is_some());
        Revocations::new(storage.clone(), Duration::ZERO)
            .revoke("s2", now + 20, now)
            .await
            .unwrap();
        assert!(storage
            .head(&marker_key("s0", now - 2 * DAY_S))
            .await
            .unwrap()
            .is_none());
        assert!(storage.head(&marker_key("s1", now + 10)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let r = Revocations::new(storage, Duration::from_secs(3600));
        for i in 0..(CACHE_CAP * 3) {
            r.is_revoked(&format!("{i:032x}"), DAY_S).await;
            assert!(r.remembered() <= CACHE_CAP);
        }
    }
}
