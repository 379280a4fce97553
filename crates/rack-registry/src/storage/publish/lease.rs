//! Publish leases (SPEC §11.2 steps 2 and 4): who may write under a version's prefix, for how
//! long, and the fence that keeps a publisher that may have lost its lease from writing again.
//!
//! A lease is one object, `.rack/leases/<ns>/<segs>/<version-core>`: one per *precedence class*
//! (`1.0.0+a` and `1.0.0+b` share `1.0.0`), so two replicas can never both publish versions that
//! readers could not tell apart. It is taken create-only, renewed and taken over by
//! compare-and-swap on its ETag, and every write changes its bytes (`seq`), so a swap against an
//! ETag read before a renewal always fails.
//!
//! Expiry is judged on the store's clock: the lease's `Last-Modified` plus its `ttlMs` against
//! [`Storage::store_now_ms`] (the `Date` of the bucket's own responses). A replica whose clock
//! runs minutes ahead or behind neither steals a live lease nor keeps a dead one.
//!
//! The holder never needs the store's clock: it measures its lease from the instant it *sent*
//! the write that took or renewed it (the store stamped `Last-Modified` no earlier), with
//! tokio's monotonic clock. It stops ([`StorageError::Fenced`]) as soon as what is left is
//! shorter than one storage call plus a margin for the store's one-second timestamps
//! ([`Timing::margin`]): any write it starts ends (or is cut by the client) before anyone else
//! may judge the lease expired.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::storage::{PutMode, Result, Storage, StorageError};

/// Where leases live (the server's working state: never served, pushed or pulled).
pub const LEASES: &str = ".rack/leases/";

/// Default lease lifetime (`PUBLISH_LEASE_SECONDS`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// How long leases last and how long one storage call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Lifetime of a lease from its last write (`PUBLISH_LEASE_SECONDS`).
    pub ttl: Duration,
    /// Bound of one storage call, retries included (`STORAGE_TIMEOUT_SECONDS`).
    pub call: Duration,
    /// Writes under the lease run at most this many at a time.
    pub parallel: usize,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ttl: DEFAULT_LEASE,
            call: Duration::from_secs(30),
            parallel: 8,
        }
    }
}

impl Timing {
    /// Slack for the store's timestamps: `Last-Modified` and `Date` have one-second resolution
    /// (another replica may judge a lease expired up to a second early), plus 1 % of the
    /// lifetime for clocks that run at slightly different rates.
    pub fn margin(&self) -> Duration {
        Duration::from_secs(1) + self.ttl / 100
    }

    /// Whether a holder could ever write: a renewal is due after a third of the lifetime, and
    /// a write may start only while a call and the margin fit in what is left.
    pub fn workable(&self) -> bool {
        self.ttl / 3 + self.call + self.margin() < self.ttl
    }
}

/// The stored lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// The process holding it (for people reading the bucket).
    pub owner: String,
    /// This publish: a lease that still carries it is ours.
    pub upload_id: String,
    /// Lifetime from the object's `Last-Modified`, in milliseconds.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The exact version being published (`1.0.0+b`), for whoever finishes a dead holder's work.
    #[serde(default)]
    pub version: Option<String>,
    /// Bumped by every renewal, so that no two writes of a lease have the same bytes (and ETag).
    #[serde(default)]
    pub seq: u64,
    /// Unix milliseconds on the writer's clock: only for replicas older than the bucket-clock
    /// protocol, which judged expiry by it. Never read here.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Versions that dead holders of this lease left unsettled (SPEC §11.2 step 2), carried by
    /// whoever takes the lease over until it has settled them: a taker that dies or fails first
    /// hands them on to the next, so no dead publisher's version is ever forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle: Vec<String>,
}

impl LeaseRecord {
    fn new(version: Option<&str>, ttl: Duration) -> LeaseRecord {
        LeaseRecord {
            owner: owner().to_owned(),
            upload_id: format!("{:016x}", rand::random::<u64>()),
            ttl_ms: Some(ttl.as_millis() as u64),
            version: version.map(str::to_owned),
            seq: 0,
            expires_at: Some(crate::clock::now_ms() + ttl.as_millis() as i64),
            settle: Vec::new(),
        }
    }

    /// What a taker of the lease `key` this record was found at must settle: what its holder
    /// still had to settle, then its own version (a record without one, from the old key layout
    /// or unreadable: the key's last segment).
    pub fn left_unsettled(found: Option<&LeaseRecord>, key: &str) -> Vec<String> {
        let mut out: Vec<String> = found.map(|r| r.settle.clone()).unwrap_or_default();
        let own = match found.and_then(|r| r.version.clone()) {
            Some(v) => v,
            None => key.rsplit('/').next().unwrap_or_default().to_owned(),
        };
        if !own.is_empty() && !out.contains(&own) {
            out.push(own);
        }
        out
    }

    fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("serializable"))
    }

    /// The lease's lifetime (a record without one, or no record at all: the default).
    pub fn ttl(record: Option<&LeaseRecord>) -> Duration {
        record
            .and_then(|r| r.ttl_ms)
            .map_or(DEFAULT_LEASE, Duration::from_millis)
    }
}

/// This process, as a lease owner (pid and a random tag: pids repeat across machines).
fn owner() -> &'static str {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>()))
}

/// The lease key of `version` of `registry` (`@ns/<segments>`): its precedence class.
pub fn lease_key(registry: &str, version: &str) -> String {
    format!("{LEASES}{registry}/{}", version_core(version))
}

/// The version without build metadata: versions equal in precedence share it.
pub fn version_core(version: &str) -> &str {
    version.split_once('+').map_or(version, |(core, _)| core)
}

/// A lease as read from the store.
#[derive(Debug, Clone)]
pub struct Found {
    pub record: Option<LeaseRecord>,
    pub etag: String,
    pub expired: bool,
}

/// Read the lease at `key` and judge it on the store's clock (`None`: no lease).
pub async fn read(s: &dyn Storage, key: &str) -> Result<Option<Found>> {
    let Some(obj) = s.get(key).await? else {
        return Ok(None);
    };
    let record: Option<LeaseRecord> = serde_json::from_slice(&obj.body).ok();
    let ttl = LeaseRecord::ttl(record.as_ref()).as_millis() as i64;
    // A store that gives no modification time cannot date a lease: it never expires (the
    // operator removes it); every store we support gives one.
    let expired = match obj.meta.modified_ms {
        Some(modified) => s.store_now_ms().await? >= modified + ttl,
        None => false,
    };
    Ok(Some(Found {
        record,
        etag: obj.meta.version,
        expired,
    }))
}

/// What [`acquire`] got.
pub enum Acquired {
    /// The lease is ours; `taken_over`: from a dead holder, whose unsettled versions its record
    /// now carries ([`Lease::to_settle`]).
    Held { lease: Box<Lease>, taken_over: bool },
    /// Someone else holds it and it is live.
    Busy,
}

/// Take the lease at `key` for `version`: create it, or take over an expired one by
/// compare-and-swap.
pub async fn acquire(s: &dyn Storage, key: &str, version: &str, t: Timing) -> Result<Acquired> {
    let record = LeaseRecord::new(Some(version), t.ttl);
    loop {
        let sent = Instant::now();
        match s.put(key, record.body(), PutMode::Create).await {
            Ok(meta) => {
                return Ok(Acquired::Held {
                    lease: Box::new(Lease::new(key, record, meta.version, sent, t)),
                    taken_over: false,
                })
            }
            Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let Some(found) = read(s, key).await? else {
            continue; // released meanwhile
        };
        if found
            .record
            .as_ref()
            .is_some_and(|r| r.upload_id == record.upload_id)
        {
            // Our own create landed and its answer was lost (the client retried).
            return Ok(Acquired::Held {
                lease: Box::new(Lease::new(key, record, found.etag, sent, t)),
                taken_over: false,
            });
        }
        if !found.expired {
            return Ok(Acquired::Busy);
        }
        return Ok(match take_over(s, key, &found, Some(version), t).await? {
            Some(lease) => Acquired::Held {
                lease: Box::new(lease),
                taken_over: true,
            },
            None => Acquired::Busy,
        });
    }
}

/// Take over the expired lease `found` at `key` by compare-and-swap on its ETag, to publish
/// `version` (`None`: only to settle it, as a sweep does); `None` back: someone renewed or took it
/// first. The new record carries what the dead holder left unsettled ([`Lease::to_settle`]).
pub async fn take_over(
    s: &dyn Storage,
    key: &str,
    found: &Found,
    version: Option<&str>,
    t: Timing,
) -> Result<Option<Lease>> {
    let mut record = LeaseRecord::new(version, t.ttl);
    record.settle = LeaseRecord::left_unsettled(found.record.as_ref(), key);
    let sent = Instant::now();
    match s
        .put(key, record.body(), PutMode::IfVersion(found.etag.clone()))
        .await
    {
        Ok(meta) => Ok(Some(Lease::new(key, record, meta.version, sent, t))),
        // Our own swap may have landed with its answer lost.
        Err(StorageError::PreconditionFailed(_)) => match read(s, key).await? {
            Some(now)
                if now
                    .record
                    .as_ref()
                    .is_some_and(|r| r.upload_id == record.upload_id) =>
            {
                Ok(Some(Lease::new(key, record, now.etag, sent, t)))
            }
            _ => Ok(None),
        },
        Err(e) => Err(e),
    }
}

/// A lease this publisher holds, and the fence around its writes.
pub struct Lease {
    key: String,
    t: Timing,
    state: Mutex<Held>,
}

impl Held {
    /// Whether a write may still start: one storage call and the margin fit in what is left.
    fn room(&self, t: &Timing) -> bool {
        !self.lost && self.since.elapsed() + t.call + t.margin() < t.ttl
    }
}

struct Held {
    record: LeaseRecord,
    etag: String,
    /// When the write that took or last renewed the lease was sent.
    since: Instant,
    /// A renewal failed: never write again.
    lost: bool,
}

impl Lease {
    fn new(key: &str, record: LeaseRecord, etag: String, since: Instant, t: Timing) -> Lease {
        Lease {
            key: key.to_owned(),
            t,
            state: Mutex::new(Held {
                record,
                etag,
                since,
                lost: false,
            }),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn fenced(&self, why: &str) -> StorageError {
        StorageError::Fenced(format!("{}: {why}", self.key))
    }

    /// `Ok` when a write may start now: the lease is ours for at least one storage call and
    /// the margin more. Renews it first when a third of its lifetime has passed (or `force`).
    pub async fn ensure(&self, s: &dyn Storage, force: bool) -> Result<()> {
        let mut held = self.state.lock().await;
        if held.lost {
            return Err(self.fenced("the lease was lost"));
        }
        if !held.room(&self.t) {
            held.lost = true;
            return Err(self.fenced("too little of the lease is left for another write"));
        }
        if force || held.since.elapsed() >= self.t.ttl / 3 {
            let mut next = held.record.clone();
            next.seq += 1;
            next.expires_at = Some(crate::clock::now_ms() + self.t.ttl.as_millis() as i64);
            let sent = Instant::now();
            let body = next.body();
            let renewed = match s
                .put(&self.key, body.clone(), PutMode::IfVersion(held.etag.clone()))
                .await
            {
                Ok(meta) => Some(meta.version),
                // Our own swap may have landed with its answer lost.
                Err(StorageError::PreconditionFailed(_)) => match s.get(&self.key).await {
                    Ok(Some(o)) if o.body == body => Some(o.meta.version),
                    _ => None,
                },
                Err(_) => None,
            };
            let Some(etag) = renewed else {
                held.lost = true;
                return Err(self.fenced("renewing the lease failed"));
            };
            held.record = next;
            held.etag = etag;
            held.since = sent;
            if !held.room(&self.t) {
                held.lost = true;
                return Err(self.fenced("the renewal came back too late"));
            }
        }
        Ok(())
    }

    /// Whether the lease is still ours for a write (without renewing it).
    pub async fn usable(&self) -> bool {
        self.state.lock().await.room(&self.t)
    }

    /// Delete the lease if it is still ours; `false` when it was left to expire (too little
    /// time left to be sure nobody took it over meanwhile).
    pub async fn release(&self, s: &dyn Storage) -> Result<bool> {
        if !self.usable().await {
            return Ok(false);
        }
        // While our lease is live nobody can take it over, so the key holds our lease until
        // this delete lands.
        s.delete_prefix(&self.key).await?;
        Ok(true)
    }

    /// The versions dead holders of this lease left unsettled (SPEC §11.2 step 2).
    pub async fn to_settle(&self) -> Vec<String> {
        self.state.lock().await.record.settle.clone()
    }

    /// Everything [`to_settle`](Lease::to_settle) named is settled: the next renewal writes the
    /// lease without it (until then a taker would settle it again, which is harmless).
    pub async fn settled(&self) {
        self.state.lock().await.record.settle.clear();
    }
}

/// Run `f` under the publish lease of `version` of `registry`, if it can be had now (`None`: a
/// publish of that precedence class is in flight).
pub async fn with_lease<T>(
    s: &dyn Storage,
    registry: &str,
    version: &str,
    t: Timing,
    f: impl AsyncFnOnce(&Lease) -> Result<T>,
) -> Result<Option<T>> {
    let key = lease_key(registry, version);
    // Any lease there, live or expired, is a publish in flight or a dead one for the sweep to
    // settle (announcing it): not the repair's.
    if read(s, &key).await?.is_some() {
        return Ok(None);
    }
    let held = match acquire(s, &key, version, t).await? {
        Acquired::Busy => return Ok(None),
        // Taken over after all (it appeared and expired meanwhile): its record hands the dead
        // holder's version on; left to expire for the sweep, never released unsettled.
        Acquired::Held { taken_over: true, .. } => return Ok(None),
        Acquired::Held { lease, .. } => lease,
    };
    let out = f(&held).await;
    held.release(s).await?;
    out.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_classes_share_a_lease() {
        assert_eq!(lease_key("@a/b", "1.0.0+x"), lease_key("@a/b", "1.0.0+y"));
        assert_eq!(lease_key("@a/b", "1.0.0"), ".rack/leases/@a/b/1.0.0");
        assert_ne!(lease_key("@a/b", "1.0.0-rc.1"), lease_key("@a/b", "1.0.0"));
        assert_eq!(version_core("1.0.0-rc.1+build.5"), "1.0.0-rc.1");
    }

    #[test]
    fn timings_that_leave_no_room_to_write_are_not_workable() {
        assert!(Timing::default().workable());
        let short = Timing {
            ttl: Duration::from_secs(2),
            call: Duration::from_secs(30),
            parallel: 8,
        };
        assert!(!short.workable());
        let test = Timing {
            ttl: Duration::from_secs(6),
            call: Duration::from_secs(2),
            parallel: 8,
        };
        assert!(test.workable(), "{:?}", test.margin());
    }

    #[test]
    fn old_and_new_records_parse() {
        let old: LeaseRecord = serde_json::from_str(r#"{"owner":"o","uploadId":"u","expiresAt":5}"#).unwrap();
        assert_eq!(LeaseRecord::ttl(Some(&old)), DEFAULT_LEASE);
        let new = LeaseRecord::new(Some("1.0.0+b"), Duration::from_secs(7));
        let back: LeaseRecord = serde_json::from_slice(&new.body()).unwrap();
        assert_eq!(back, new);
        assert_eq!(LeaseRecord::ttl(Some(&back)), Duration::from_secs(7));
    }
}
