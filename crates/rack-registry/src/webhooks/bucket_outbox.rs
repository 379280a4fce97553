//! The outbox in the bucket (SPEC §11.4), shared by every replica: one object per pending
//! delivery, `.rack/outbox/<delivery id>.json`, holding the delivery (everything that goes on
//! the wire, as in the local outbox; never a secret) and the current claim.
//!
//! - Enqueue: a create-only write, already claimed by the enqueuing replica, which attempts it
//!   at once; the others leave it alone while the claim lasts.
//! - Before every attempt the replica claims the delivery by compare-and-swap on the object's
//!   ETag (If-Match), with an expiry longer than an attempt. A lost race means another replica
//!   has it: this one forgets it.
//! - After the attempt: delete the object (2xx, or the last attempt failed), or record the
//!   attempt count and next time, still claimed by this replica until a claim's length after
//!   the retry (CAS on the claim's ETag).
//! - A replica that dies leaves its claims to expire; the others list the outbox (at an
//!   interval that backs off while it is empty, [`super::schedule::PollBackoff`]) and take over
//!   expired claims. Delivery is at least once; `X-Webhook-Delivery` never changes.
//! - A replica stopped gracefully hands its claims back ([`OutboxStore::release_claims`]): the
//!   others take its deliveries at their next list rather than after the claims expire.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::delivery::now_ms;
use super::outbox::{is_delivery_id, Delivery, FORMAT};
use super::schedule::{self, Claim};
use super::store::{OutboxStore, Scan};
use crate::storage::{PutMode, Storage, StorageError};

/// Where the deliveries live in the bucket.
pub const PREFIX: &str = ".rack/outbox/";

/// The stored object: the delivery and who holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    delivery: Delivery,
    #[serde(default)]
    claim: Option<Claim>,
}

pub struct BucketOutbox {
    storage: Arc<dyn Storage>,
    /// This replica's claim owner id (random per process start).
    owner: String,
    /// How long a claim lasts (`WEBHOOK_CLAIM_SECONDS`).
    claim: Duration,
    /// ETag of each object this replica has claimed, for the next compare-and-swap.
    held: Mutex<HashMap<String, String>>,
    /// Objects already reported unreadable (reported once, never retried).
    corrupt: Mutex<HashSet<String>>,
}

pub fn key(id: &str) -> String {
    format!("{PREFIX}{id}.json")
}

fn encode(r: &Record) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(r).expect("serializing a delivery"))
}

fn decode(id: &str, body: &[u8]) -> Result<Record, String> {
    let r: Record = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if r.delivery.id != id {
        Err("object name and delivery id differ".into())
    } else if r.delivery.format != FORMAT {
        Err(format!("unknown format {}", r.delivery.format))
    } else {
        Ok(r)
    }
}

impl BucketOutbox {
    pub fn new(storage: Arc<dyn Storage>, claim: Duration) -> BucketOutbox {
        BucketOutbox {
            storage,
            owner: super::outbox::delivery_id(now_ms()),
            claim,
            held: Mutex::default(),
            corrupt: Mutex::default(),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn hold(&self, id: &str, etag: String) {
        self.held.lock().unwrap().insert(id.to_owned(), etag);
    }

    fn release(&self, id: &str) -> Option<String> {
        self.held.lock().unwrap().remove(id)
    }

    /// The record of `id`, or `None` when gone or unreadable (reported once).
    async fn read(&self, id: &str) -> Result<Option<(Record, String)>, String> {
        let Some(obj) = self.storage.get(&key(id)).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        match decode(id, &obj.body) {
            Ok(r) => Ok(Some((r, obj.meta.version))),
            Err(reason) => {
                if self.corrupt.lock().unwrap().insert(id.to_owned()) {
                    tracing::error!(key = %key(id), error = %reason, "unreadable webhook delivery in the bucket outbox: left as it is");
                }
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl OutboxStore for BucketOutbox {
    async fn enqueue(&self, ds: &[Delivery]) -> Result<(), String> {
        let claim = schedule::claim_for_attempt(&self.owner, now_ms(), self.claim);
        for d in ds {
            let record = Record {
                delivery: d.clone(),
                claim: Some(claim.clone()),
            };
            let meta = self
                .storage
                .put(&key(&d.id), encode(&record), PutMode::Create)
                .await
                .map_err(|e| e.to_string())?;
            self.hold(&d.id, meta.version);
        }
        Ok(())
    }

    async fn claim(&self, d: &Delivery) -> Result<Option<Delivery>, String> {
        let Some((record, etag)) = self.read(&d.id).await? else {
            self.release(&d.id);
            return Ok(None);
        };
        if !schedule::claimable(record.claim.as_ref(), &self.owner, now_ms()) {
            self.release(&d.id);
            return Ok(None);
        }
        let claimed = Record {
            claim: Some(schedule::claim_for_attempt(&self.owner, now_ms(), self.claim)),
            delivery: record.delivery,
        };
        match self
            .storage
            .put(&key(&d.id), encode(&claimed), PutMode::IfVersion(etag))
            .await
        {
            Ok(meta) => {
                self.hold(&d.id, meta.version);
                Ok(Some(claimed.delivery))
            }
            // Another replica claimed (or finished) it between the read and the write.
            Err(StorageError::PreconditionFailed(_)) => {
                self.release(&d.id);
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn settle(&self, d: &Delivery, done: bool) -> Result<(), String> {
        let etag = self.release(&d.id);
        if done {
            // Unconditional: even if a replica took the claim over meanwhile, the delivery is
            // done (it may deliver once more, which at-least-once allows).
            return self
                .storage
                .delete_prefix(&key(&d.id))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let Some(etag) = etag else {
            return Err("the delivery was not claimed by this replica".into());
        };
        let record = Record {
            delivery: d.clone(),
            claim: Some(schedule::claim_until_retry(
                &self.owner,
                d.next_attempt_ms,
                self.claim,
            )),
        };
        match self
            .storage
            .put(&key(&d.id), encode(&record), PutMode::IfVersion(etag))
            .await
        {
            Ok(meta) => {
                self.hold(&d.id, meta.version);
                Ok(())
            }
            Err(StorageError::PreconditionFailed(_)) => {
                // Our claim expired and another replica took the delivery over: it is theirs
                // (the next claim here fails and forgets it).
                tracing::info!(delivery = %d.id, "webhook delivery taken over by another replica");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn scan(&self, known: &HashSet<String>) -> Result<Scan, String> {
        let mut scan = Scan::default();
        let mut ids = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = self
                .storage
                .list(PREFIX, true, start.as_deref(), 1000)
                .await
                .map_err(|e| e.to_string())?;
            for o in &page.objects {
                let Some(id) = o.key.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if is_delivery_id(id) {
                    scan.pending += 1;
                    if !known.contains(id) {
                        ids.push(id.to_owned());
                    }
                }
            }
            match page.next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
        let now = now_ms();
        for id in ids {
            if self.corrupt.lock().unwrap().contains(&id) {
                continue;
            }
            if let Some((record, _)) = self.read(&id).await? {
                if schedule::claimable(record.claim.as_ref(), &self.owner, now) {
                    scan.found.push(record.delivery);
                }
            }
        }
        scan.found
            .sort_by(|a, b| (a.created_ms, a.seq, &a.id).cmp(&(b.created_ms, b.seq, &b.id)));
        Ok(scan)
    }

    async fn release_claims(&self) -> usize {
        let held: Vec<(String, String)> = self.held.lock().unwrap().drain().collect();
        let mut released = 0;
        for (id, etag) in held {
            // Only an object unchanged since our last write is still ours: a compare-and-swap
            // on that ETag never undoes another replica's claim or a removal.
            let record = match self.read(&id).await {
                Ok(Some((record, current))) if current == etag => record,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "cannot release a webhook delivery: its claim will expire");
                    continue;
                }
            };
            let unclaimed = Record {
                claim: None,
                delivery: record.delivery,
            };
            match self
                .storage
                .put(&key(&id), encode(&unclaimed), PutMode::IfVersion(etag))
                .await
            {
                Ok(_) => released += 1,
                Err(StorageError::PreconditionFailed(_)) => {}
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "cannot release a webhook delivery: its claim will expire")
                }
            }
        }
        released
    }

    fn shared(&self) -> bool {
        true
    }

    fn exists(&self, _id: &str) -> bool {
        // Ids carry 6 random characters after the millisecond; the create-only write refuses
        // the improbable collision anyway.
        false
    }

    fn describe(&self) -> String {
        format!("{} {PREFIX}", self.storage.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn delivery(id: &str) -> Delivery {
        Delivery {
            format: FORMAT,
            id: id.into(),
            event: "uploaded".into(),
            url: "http://127.0.0.1:1/".into(),
            webhook: 0,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            signature: "sha256=00".into(),
            body: "{}".into(),
            after: None,
            attempts: 0,
            next_attempt_ms: 1,
            created_ms: 1,
            seq: 0,
        }
    }

    fn storage() -> (tempfile::TempDir, Arc<dyn Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        (dir, Arc::new(s))
    }

    /// Two replicas on one store: the enqueuer holds its delivery, the other cannot take it
    /// until the claim expires, and a lost claim is forgotten.
    #[tokio::test]
    async fn claims_exclude_other_replicas_until_they_expire() {
        let (_dir, s) = storage();
        let a = BucketOutbox::new(s.clone(), Duration::from_secs(600));
        let b = BucketOutbox::new(s.clone(), Duration::from_secs(600));
        let d = delivery("5-abc");
        a.enqueue(std::slice::from_ref(&d)).await.unwrap();
        let none = HashSet::new();
        let seen = b.scan(&none).await.unwrap();
        assert_eq!((seen.pending, seen.found.len()), (1, 0), "held by a");
        assert!(b.claim(&d).await.unwrap().is_none());
        assert_eq!(a.claim(&d).await.unwrap(), Some(d.clone()), "a holds it");
        // a "dies" holding the claim, and its claim expires (written as time would leave it).
        let expired = Record {
            delivery: d.clone(),
            claim: Some(Claim {
                owner: a.owner().to_owned(),
                expires_ms: now_ms() - 1,
            }),
        };
        s.put(&key(&d.id), encode(&expired), PutMode::Overwrite)
            .await
            .unwrap();
        let seen = b.scan(&none).await.unwrap();
        assert_eq!(seen.found, vec![d.clone()]);
        let mut taken = b.claim(&d).await.unwrap().expect("expired claim taken over");
        // a comes back: its claim was taken over, its update is refused, and it forgets it.
        taken.attempts = 1;
        let mut stale = d.clone();
        stale.attempts = 1;
        a.settle(&stale, false).await.unwrap();
        assert!(a.claim(&d).await.unwrap().is_none(), "b holds it now");
        // b records a failed attempt, keeps it until the retry, then finishes it.
        taken.next_attempt_ms = now_ms() + 60_000;
        b.settle(&taken, false).await.unwrap();
        let obj = s.get(&key(&d.id)).await.unwrap().unwrap();
        let rec: Record = serde_json::from_slice(&obj.body).unwrap();
        assert_eq!(rec.delivery.attempts, 1);
        assert_eq!(rec.claim.as_ref().map(|c| c.owner.as_str()), Some(b.owner()));
        assert!(
            a.scan(&none).await.unwrap().found.is_empty(),
            "held until the retry"
        );
        assert_eq!(b.claim(&d).await.unwrap().map(|x| x.attempts), Some(1));
        b.settle(&taken, true).await.unwrap();
        assert!(s.get(&key(&d.id)).await.unwrap().is_none(), "removed when done");
        assert!(a.claim(&d).await.unwrap().is_none());
        assert_eq!(a.scan(&none).await.unwrap().pending, 0);
    }

    /// A replica stopping hands its claims back (attempt count and retry time kept), so another
    /// takes them at once; a delivery another replica took over meanwhile is left alone.
    #[tokio::test]
    async fn released_claims_are_taken_at_once_by_another_replica() {
        let (_dir, s) = storage();
        let a = BucketOutbox::new(s.clone(), Duration::from_secs(600));
        let b = BucketOutbox::new(s.clone(), Duration::from_secs(600));
        let (fresh, mut retried, lost) = (delivery("1-a"), delivery("2-b"), delivery("3-c"));
        a.enqueue(&[fresh.clone(), retried.clone(), lost.clone()])
            .await
            .unwrap();
        retried.attempts = 1;
        retried.next_attempt_ms = now_ms() + 60_000;
        a.claim(&retried).await.unwrap().unwrap();
        a.settle(&retried, false).await.unwrap();
        // `lost`: a's claim expired and b took it over (a still remembers its old ETag).
        let expired = Record {
            delivery: lost.clone(),
            claim: Some(Claim {
                owner: a.owner().to_owned(),
                expires_ms: now_ms() - 1,
            }),
        };
        s.put(&key(&lost.id), encode(&expired), PutMode::Overwrite)
            .await
            .unwrap();
        b.claim(&lost).await.unwrap().expect("expired claim taken over");
        // b's worker schedules `lost`: its scans skip it.
        let none: HashSet<String> = [lost.id.clone()].into();
        assert!(b.scan(&none).await.unwrap().found.is_empty(), "held by a");

        assert_eq!(a.release_claims().await, 2);
        let found = b.scan(&none).await.unwrap().found;
        assert_eq!(found, vec![fresh.clone(), retried.clone()], "schedule kept");
        let obj = s.get(&key(&lost.id)).await.unwrap().unwrap();
        let rec: Record = serde_json::from_slice(&obj.body).unwrap();
        assert_eq!(
            rec.claim.map(|c| c.owner),
            Some(b.owner().to_owned()),
            "b's claim kept"
        );
        assert_eq!(a.release_claims().await, 0, "nothing held any more");
    }

    #[tokio::test]
    async fn scan_skips_known_and_unreadable_objects() {
        let (_dir, s) = storage();
        let a = BucketOutbox::new(s.clone(), Duration::ZERO);
        a.enqueue(&[delivery("1-a"), delivery("2-b")]).await.unwrap();
        s.put(&key("3-c"), Bytes::from_static(b"{not json"), PutMode::Overwrite)
            .await
            .unwrap();
        s.put(&format!("{PREFIX}notes.txt"), Bytes::new(), PutMode::Overwrite)
            .await
            .unwrap();
        let known: HashSet<String> = ["1-a".to_owned()].into();
        let b = BucketOutbox::new(s.clone(), Duration::ZERO);
        let seen = b.scan(&known).await.unwrap();
        assert_eq!(seen.pending, 3);
        let ids: Vec<&str> = seen.found.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec!["2-b"], "claims of zero length expire at once");
        assert!(
            s.get(&key("3-c")).await.unwrap().is_some(),
            "left for the operator"
        );
    }
}
