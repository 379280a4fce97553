//! Publishing to a bucket safely with any number of replicas (SPEC §11.2).
//!
//! There is no rename in a bucket, so the guarantees of SPEC §5.2 rest on create-only and
//! compare-and-swap writes:
//!
//! 1. (the caller has staged and verified the package locally);
//! 2. take the version's *publish lease*: a create-only write of `.rack/leases/<dest>` holding
//!    `{"owner","uploadId","expiresAt"}`. A live lease of someone else means another publish of
//!    this version is in flight ([`StorageError::AlreadyExists`], 409). An expired one is taken
//!    over by compare-and-swap on its ETag, and what its dead holder left is finished: the
//!    version added to `versions.json` if its `registry.json` exists, else its partial files
//!    removed;
//! 3. `registry.json` already there: the version exists (the lease is released);
//! 4. template files, then `registry.json` create-only: only the lease holder ever writes under
//!    the version's prefix, so a racing publisher can never leave its bytes under the winner's
//!    manifest;
//! 5. the version is merged into `versions.json` by compare-and-swap (create-only when it does
//!    not exist yet), re-reading on every conflict: one GET and one PUT per publish, whatever
//!    the number of versions;
//! 6. the lease is deleted.
//!
//! A publisher that dies leaves an expired lease; [`sweep_registry`] (run before every publish to
//! that registry) and [`sweep_all`] (run periodically by every replica) finish it.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::names::is_version;
use serde::{Deserialize, Serialize};

use super::{staged_files, PutMode, Result, Storage, StorageError};

/// Where leases live (the server's working state: never served, never pushed or pulled).
pub const LEASES: &str = ".rack/leases/";

/// Default lease lifetime (`PUBLISH_LEASE_SECONDS`): longer than any publish.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// The stored lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub owner: String,
    pub upload_id: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// This process, as a lease owner (pid and a random tag: pids repeat across machines).
fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>()))
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

fn lease_body(ttl: Duration) -> Bytes {
    let rec = LeaseRecord {
        owner: owner().to_owned(),
        upload_id: format!("{:016x}", rand::random::<u64>()),
        expires_at: now_ms() + ttl.as_millis() as i64,
    };
    Bytes::from(serde_json::to_vec(&rec).expect("serializable"))
}

/// `@ns/segs/version` split into registry and version.
fn split_dest(dest: &str) -> Result<(&str, &str)> {
    dest.rsplit_once('/')
        .filter(|(r, v)| r.starts_with('@') && is_version(v))
        .ok_or_else(|| StorageError::InvalidKey(dest.to_owned()))
}

/// Publish the staged version directory `staged` at `dest` (`@ns/<segments>/<version>`) under
/// its lease, then add it to `versions.json`. [`StorageError::AlreadyExists`] if the version
/// exists or another publish of it is in flight.
pub async fn publish_dir(s: &dyn Storage, staged: &Path, dest: &str, ttl: Duration) -> Result<()> {
    let (registry, version) = split_dest(dest)?;
    let manifest = layout::manifest_key(registry, version);
    // A dead publisher of this registry is finished before anything else happens to it.
    sweep_registry(s, registry).await?;
    let lease_key = format!("{LEASES}{dest}");
    acquire(s, &lease_key, dest, ttl).await?;
    let result = async {
        if s.head(&manifest).await?.is_some() {
            return Err(StorageError::AlreadyExists(manifest.clone()));
        }
        let files = staged_files(staged)?;
        for rel in files.iter().filter(|f| f.as_str() != "registry.json") {
            let body = read(staged, rel).await?;
            s.put(&format!("{dest}/{rel}"), body, PutMode::Overwrite).await?;
        }
        let body = read(staged, "registry.json").await?;
        create_or_own(s, &manifest, body).await?;
        add_version(s, registry, version).await
    }
    .await;
    match &result {
        Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
        // Ours alone to clean (we hold the lease); a manifest we wrote goes too, since the
        // version could not be listed.
        Err(_) => {
            let _ = s.delete_prefix(&format!("{dest}/")).await;
        }
    }
    let _ = s.delete_prefix(&lease_key).await;
    result
}

/// A create-only put of `body` that also succeeds when the object holds exactly `body` already:
/// a store may apply a write and still answer 5xx; the client's retry is then refused as
/// "exists" although the object is ours (it cannot be anyone else's: our bytes carry a random
/// upload id, or only the lease holder writes there).
async fn create_or_own(s: &dyn Storage, key: &str, body: Bytes) -> Result<()> {
    match s.put(key, body.clone(), PutMode::Create).await {
        Ok(_) => Ok(()),
        Err(StorageError::AlreadyExists(k)) => match s.get(key).await? {
            Some(current) if current.body == body => Ok(()),
            _ => Err(StorageError::AlreadyExists(k)),
        },
        Err(e) => Err(e),
    }
}

/// Whether the object at `key` holds exactly `body` (our own write whose answer was lost).
async fn holds(s: &dyn Storage, key: &str, body: &Bytes) -> Result<bool> {
    Ok(s.get(key).await?.is_some_and(|current| current.body == *body))
}

async fn read(staged: &Path, rel: &str) -> Result<Bytes> {
    tokio::fs::read(staged.join(rel))
        .await
        .map(Bytes::from)
        .map_err(|source| StorageError::Io {
            key: rel.to_owned(),
            source,
        })
}

/// Take the lease at `key` for the version `dest`: create it, or take over an expired one (and
/// finish its dead holder's work).
async fn acquire(s: &dyn Storage, key: &str, dest: &str, ttl: Duration) -> Result<()> {
    let busy = || StorageError::AlreadyExists(format!("{dest}/registry.json"));
    loop {
        match create_or_own(s, key, lease_body(ttl)).await {
            Ok(()) => return Ok(()),
            Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let Some(current) = s.get(key).await? else {
            continue; // released meanwhile: try again
        };
        let record: Option<LeaseRecord> = serde_json::from_slice(&current.body).ok();
        if record.is_some_and(|r| r.expires_at > now_ms()) {
            return Err(busy());
        }
        let mine = lease_body(ttl);
        let taken = match s
            .put(key, mine.clone(), PutMode::IfVersion(current.meta.version))
            .await
        {
            Ok(_) => true,
            // Refused: someone else took it over, or our own swap landed and its answer was lost.
            Err(StorageError::PreconditionFailed(_)) => holds(s, key, &mine).await?,
            Err(e) => return Err(e),
        };
        if !taken {
            return Err(busy());
        }
        finish(s, dest).await?;
        return Ok(());
    }
}

/// Complete the publish of `dest` left by a dead lease holder: list the version if its manifest
/// made it, else remove its partial files.
async fn finish(s: &dyn Storage, dest: &str) -> Result<()> {
    let (registry, version) = split_dest(dest)?;
    if s.head(&layout::manifest_key(registry, version)).await?.is_some() {
        add_version(s, registry, version).await
    } else {
        s.delete_prefix(&format!("{dest}/")).await.map(drop)
    }
}

/// Merge `version` into the registry's `versions.json` by compare-and-swap, re-reading on every
/// conflict (never a lost version). A corrupt file is rebuilt from the stored versions.
pub async fn add_version(s: &dyn Storage, registry: &str, version: &str) -> Result<()> {
    let key = layout::versions_key(registry);
    loop {
        let (mut versions, mode) = match s.get(&key).await? {
            Some(obj) => {
                let listed = match VersionsFile::parse(&obj.body) {
                    Some(f) => f.versions,
                    None => stored_versions(s, registry).await?,
                };
                (listed, PutMode::IfVersion(obj.meta.version))
            }
            None => (Vec::new(), PutMode::Create),
        };
        if versions.iter().any(|v| v == version) {
            return Ok(());
        }
        versions.push(version.to_owned());
        let body = Bytes::from(VersionsFile::from_versions(versions).render());
        let new_registry = mode == PutMode::Create;
        match s.put(&key, body, mode).await {
            // A new registry joins its namespace's index (SPEC §3).
            Ok(_) if new_registry => return super::index::add_registry(s, registry).await,
            Ok(_) => return Ok(()),
            Err(StorageError::PreconditionFailed(_) | StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Version directories of `registry` holding a `registry.json` (only for a corrupt
/// `versions.json`: a listing and one HEAD per version).
async fn stored_versions(s: &dyn Storage, registry: &str) -> Result<Vec<String>> {
    let prefix = format!("{registry}/");
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = s.list(&prefix, true, start.as_deref(), 1000).await?;
        for p in &page.prefixes {
            let name = p[prefix.len()..].trim_end_matches('/');
            if is_version(name) && s.head(&layout::manifest_key(registry, name)).await?.is_some() {
                names.push(name.to_owned());
            }
        }
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(names),
        }
    }
}

/// Finish the expired leases of one registry (one delimited list call when there are none).
pub async fn sweep_registry(s: &dyn Storage, registry: &str) -> Result<u64> {
    let prefix = format!("{LEASES}{registry}/");
    let mut done = 0;
    let mut start: Option<String> = None;
    loop {
        let page = s.list(&prefix, true, start.as_deref(), 1000).await?;
        for lease in &page.objects {
            done += finish_if_expired(s, &lease.key).await? as u64;
        }
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(done),
        }
    }
}

/// Finish every expired lease in the bucket (the background sweep).
pub async fn sweep_all(s: &dyn Storage) -> Result<u64> {
    let mut done = 0;
    let mut start: Option<String> = None;
    loop {
        let page = s.list(LEASES, false, start.as_deref(), 1000).await?;
        for lease in &page.objects {
            done += finish_if_expired(s, &lease.key).await? as u64;
        }
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(done),
        }
    }
}

/// Take over the lease at `key` if it has expired, finish its publish, delete it.
async fn finish_if_expired(s: &dyn Storage, key: &str) -> Result<bool> {
    let Some(dest) = key.strip_prefix(LEASES) else {
        return Ok(false);
    };
    if split_dest(dest).is_err() {
        return Ok(false);
    }
    let Some(current) = s.get(key).await? else {
        return Ok(false);
    };
    let record: Option<LeaseRecord> = serde_json::from_slice(&current.body).ok();
    if record.is_some_and(|r| r.expires_at > now_ms()) {
        return Ok(false);
    }
    // Ours for a moment (a short lease: only this cleanup runs under it).
    match s
        .put(
            key,
            lease_body(Duration::from_secs(30)),
            PutMode::IfVersion(current.meta.version),
        )
        .await
    {
        Ok(_) => {}
        Err(StorageError::PreconditionFailed(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    finish(s, dest).await?;
    s.delete_prefix(key).await?;
    Ok(true)
}
