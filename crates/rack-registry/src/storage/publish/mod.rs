//! Publishing to a bucket safely with any number of replicas (SPEC §11.2).
//!
//! There is no rename in a bucket, so the guarantees of SPEC §5.2 rest on create-only and
//! compare-and-swap writes, and on one rule above all: **a publisher that may have lost its
//! lease never writes again** (a replica can stall past any lease: a paused VM, a slow link, a
//! package of thousands of files).
//!
//! 1. (the caller has staged and verified the package locally; dead publishers of the registry
//!    are finished first, [`sweep`]);
//! 2. take the lease of the version's precedence class ([`lease`]): create-only, or taken over
//!    by compare-and-swap once expired on the *bucket's* clock; a taken-over lease's dead
//!    holder is settled (its version listed if visible, else its leftovers removed);
//! 3. a version of equal precedence already published: 409 (the lease is released); leftovers
//!    of an earlier failed attempt under this version's prefix are removed (we hold the lease
//!    and the version is not visible, so they are nobody's);
//! 4. template files are written **create-only**, at most [`Timing::parallel`] at a time, each
//!    after [`lease::Lease::ensure`] (which renews by compare-and-swap every third of the lifetime and
//!    fences the publisher off when too little is left); an object already there is someone
//!    else's: stop ([`StorageError::Fenced`], 503, nothing visible);
//! 5. renew once more, list the version's prefix and check every file holds the ETag the bucket
//!    gave us (and nothing else is there); write the integrity record ([`integrity`]), then
//!    `registry.json`, both create-only: the version is visible;
//! 6. merge it into `versions.json` and the namespace index by compare-and-swap ([`listing`]);
//! 7. announce it (the webhook outbox) and release the lease, both only while it is still ours;
//!    then the caller answers 201.
//!
//! On failure before step 5 the publisher deletes the objects it created, by key, only while its
//! lease still fences everyone else off; otherwise it leaves them to whoever takes the lease
//! next. After `registry.json` nothing is ever deleted: a publisher that fails there keeps its
//! lease, which expires, and a sweep finishes the listing and the announcement.

pub mod lease;
pub mod listing;
pub mod sweep;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rack_core::layout::{self, VersionsFile};
use rack_core::names::is_version;

use super::integrity::{self, Entry, Record};
use super::{list_all, staged_files, PutMode, Result, Storage, StorageError};

pub use lease::{version_core, LeaseRecord, Timing, DEFAULT_LEASE, LEASES};
pub use listing::add_version;
pub use sweep::{sweep_all, sweep_registry};

/// Who hears that a version is listed (the webhook outbox). Called before the lease is released,
/// so that a publisher killed in between leaves the announcement to the sweep: at least once.
#[async_trait]
pub trait Announce: Send + Sync {
    /// `version` of `registry` (`@ns/<segments>`) is listed; `manifest` is its `registry.json`.
    /// Must have recorded the announcement durably when it returns.
    async fn listed(&self, registry: &str, version: &str, manifest: &[u8]);

    /// `false` for a caller that cannot announce (`storage check --repair`: no webhook
    /// outbox): a dead publisher's *visible* version is then left to a server's sweep.
    fn enabled(&self) -> bool {
        true
    }

    /// Whether a version that `versions.json` lists counts as published in step 3. `false` when
    /// storing a version fetched from an upstream registry (SPEC §17): that list is the
    /// upstream's, stored before the versions it names are fetched; the version's own
    /// `registry.json` (and the lifecycle) still decide.
    fn listing_decides(&self) -> bool {
        true
    }
}

/// An [`Announce`] for callers that cannot announce (see [`Announce::enabled`]).
pub struct Unable;

#[async_trait]
impl Announce for Unable {
    async fn listed(&self, _registry: &str, _version: &str, _manifest: &[u8]) {}
    fn enabled(&self) -> bool {
        false
    }
}

/// An [`Announce`] that tells nobody (tools without webhooks, tests).
pub struct Silent;

#[async_trait]
impl Announce for Silent {
    async fn listed(&self, _registry: &str, _version: &str, _manifest: &[u8]) {}
}

/// `@ns/segs/version` split into registry and version.
fn split_dest(dest: &str) -> Result<(&str, &str)> {
    dest.rsplit_once('/')
        .filter(|(r, v)| r.starts_with('@') && is_version(v))
        .ok_or_else(|| StorageError::InvalidKey(dest.to_owned()))
}

fn exists(registry: &str, version: &str) -> StorageError {
    StorageError::AlreadyExists(layout::manifest_key(registry, version))
}

/// Publish the staged version directory `staged` at `dest` (`@ns/<segments>/<version>`): the
/// protocol of the module docs. [`StorageError::AlreadyExists`] if a version of equal precedence
/// exists or is being published; [`StorageError::Fenced`] if the publish stopped because it
/// may have lost its lease (nothing of it is visible).
pub async fn publish_dir(
    s: &dyn Storage,
    staged: &Path,
    dest: &str,
    t: &Timing,
    announce: &dyn Announce,
) -> Result<()> {
    let (registry, version) = split_dest(dest)?;
    sweep::sweep_registry(s, registry, *t, announce).await?;
    let key = lease::lease_key(registry, version);
    let lease = match lease::acquire(s, &key, version, *t).await? {
        lease::Acquired::Busy => return Err(exists(registry, version)),
        lease::Acquired::Held { lease, .. } => lease,
    };
    let mut run = Publish {
        s,
        lease: &lease,
        staged,
        registry,
        version,
        t: *t,
        created: Mutex::new(Vec::new()),
        visible: false,
        settled: false,
    };
    let mut result = run.under_lease(announce).await;
    if let Err(e) = &result {
        // Whatever failed (a call cut by its timeout after a stall, say), a publisher whose
        // lease is no longer safely its own says so: 503, retry; nothing of it is visible.
        let plain = !matches!(e, StorageError::AlreadyExists(_) | StorageError::Fenced(_));
        if plain && run.visible {
            result = Err(StorageError::Pending(format!("{dest}: {e}")));
        } else if plain && !lease.usable().await {
            result = Err(StorageError::Fenced(format!("{key}: lease lost after: {e}")));
        }
        if !run.visible {
            run.clean_up().await;
        }
    }
    result
}

/// One publish under its lease.
struct Publish<'a> {
    s: &'a dyn Storage,
    lease: &'a lease::Lease,
    staged: &'a Path,
    registry: &'a str,
    version: &'a str,
    t: Timing,
    /// Keys this publish created (create-only, so they hold its objects).
    created: Mutex<Vec<String>>,
    /// `registry.json` is written: nothing may be deleted any more.
    visible: bool,
    /// What dead holders of the lease left is settled: the lease may be released.
    settled: bool,
}

impl Publish<'_> {
    fn prefix(&self) -> String {
        format!("{}/{}/", self.registry, self.version)
    }

    async fn under_lease(&mut self, announce: &dyn Announce) -> Result<()> {
        let (s, lease) = (self.s, self.lease);
        // Step 2: what dead holders of this lease left (nothing for a lease created fresh).
        sweep::settle(s, lease, self.registry, announce).await?;
        self.settled = true;
        // Step 3.
        self.not_published(announce.listing_decides()).await?;
        if !s.list(&self.prefix(), false, None, 1).await?.objects.is_empty() {
            lease.ensure(s, false).await?;
            s.delete_prefix(&self.prefix()).await?;
        }
        // Step 4.
        let files: Vec<String> = staged_files(self.staged)?
            .into_iter()
            .filter(|f| f != "registry.json")
            .collect();
        let written: HashMap<String, (Entry, String)> = futures::stream::iter(files)
            .map(|rel| self.write_file(rel))
            .buffer_unordered(self.t.parallel.max(1))
            .try_collect()
            .await?;
        // Step 5.
        lease.ensure(s, true).await?;
        self.check_prefix(&written).await?;
        let manifest = read_staged(self.staged, "registry.json").await?;
        let mut record = Record::default();
        for (rel, (entry, _)) in &written {
            record.files.insert(rel.clone(), entry.clone());
        }
        record.files.insert("registry.json".into(), Entry::of(&manifest));
        let record_key = integrity::record_key(self.registry, self.version);
        match self.create(&record_key, record.render()).await {
            Ok(_) => {}
            // A record left by an earlier attempt that never made its version visible (the
            // version has no registry.json: checked in step 3, and only the lease holder
            // writes one). Ours to replace, once, under the lease.
            Err(StorageError::Fenced(_)) => {
                lease.ensure(s, false).await?;
                s.delete_prefix(&record_key).await?;
                self.create(&record_key, record.render()).await?;
            }
            Err(e) => return Err(e),
        }
        let manifest_key = layout::manifest_key(self.registry, self.version);
        lease.ensure(s, false).await?;
        match create_or_own(s, &manifest_key, manifest.clone()).await {
            Ok(_) => self.visible = true,
            Err(StorageError::AlreadyExists(_)) => {
                return Err(StorageError::Fenced(format!(
                    "{manifest_key}: written by another publisher"
                )))
            }
            Err(e) => {
                // The write may have landed: visible or not, only a sweep may judge now.
                self.visible = true;
                return Err(e);
            }
        }
        // Step 6 (no lease needed: merges). On failure the lease is kept for the sweep.
        add_version(s, self.registry, self.version).await?;
        // Step 7.
        if lease.usable().await {
            announce.listed(self.registry, self.version, &manifest).await;
            lease.release(s).await?;
        }
        // Otherwise the lease may be taken over any moment: its taker announces.
        Ok(())
    }

    /// Step 3: 409 when a version of equal precedence is stored, listed, yanked or deleted.
    async fn not_published(&self, listing_decides: bool) -> Result<()> {
        let s = self.s;
        if s.head(&layout::manifest_key(self.registry, self.version))
            .await?
            .is_some()
        {
            return Err(exists(self.registry, self.version));
        }
        let listed = match listing_decides {
            true => s.get(&layout::versions_key(self.registry)).await?,
            false => None,
        };
        if let Some(obj) = listed {
            let listed = VersionsFile::parse(&obj.body)
                .map(|f| f.versions)
                .unwrap_or_default();
            if let Some(v) = rack_core::version::equal_in_precedence(self.version, &listed) {
                return Err(exists(self.registry, v));
            }
        }
        // Read after versions.json, under the lease (SPEC §18): a yanked version is unlisted
        // but stays, and a deleted one never comes back under other bytes.
        let (doc, _) = super::lifecycle::load(s, self.registry).await?;
        if let Some(v) = doc.blocks_publish_of(self.version) {
            return Err(exists(self.registry, v));
        }
        Ok(())
    }

    /// One template file, create-only under the fence: its hash and the ETag it got.
    async fn write_file(&self, rel: String) -> Result<(String, (Entry, String))> {
        let body = read_staged(self.staged, &rel).await?;
        let entry = Entry::of(&body);
        let key = format!("{}{rel}", self.prefix());
        let etag = self.create(&key, body).await?;
        Ok((rel, (entry, etag)))
    }

    /// A create-only write under the fence; an object already there is someone else's.
    async fn create(&self, key: &str, body: Bytes) -> Result<String> {
        self.lease.ensure(self.s, false).await?;
        let created = create_or_own(self.s, key, body).await;
        // Ours to remove under the lease, also when the outcome is unknown (it may have landed).
        if !matches!(created, Err(StorageError::AlreadyExists(_))) {
            self.created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key.to_owned());
        }
        created.map_err(|e| match e {
            StorageError::AlreadyExists(_) => {
                StorageError::Fenced(format!("{key}: another publisher's object is there"))
            }
            e => e,
        })
    }

    /// Step 5: every file we wrote still holds our object, and nothing else is under the prefix.
    async fn check_prefix(&self, written: &HashMap<String, (Entry, String)>) -> Result<()> {
        let prefix = self.prefix();
        let mut seen = 0;
        for o in list_all(self.s, &prefix, false).await?.objects {
            match written.get(&o.key[prefix.len()..]) {
                Some((_, etag)) if same_etag(etag, &o.version) => seen += 1,
                _ => {
                    return Err(StorageError::Fenced(format!(
                        "{}: not the object this publish wrote",
                        o.key
                    )))
                }
            }
        }
        if seen != written.len() {
            return Err(StorageError::Fenced(format!(
                "{prefix}: {} of {} files are missing",
                written.len() - seen,
                written.len()
            )));
        }
        Ok(())
    }

    /// Delete what this publish created while the lease still fences everyone else off, then
    /// release the lease; otherwise leave both to whoever takes the lease next.
    async fn clean_up(&self) {
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        for key in created {
            if self.lease.ensure(self.s, false).await.is_err() {
                return;
            }
            if self.s.delete_prefix(&key).await.is_err() {
                return;
            }
        }
        // A lease whose dead holders' versions are not settled is left to expire: its record
        // hands them on to the next taker.
        if self.settled {
            let _ = self.lease.release(self.s).await;
        }
    }
}

/// ETags as a listing and a PUT answer give them (some stores quote one and not the other).
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// A create-only put of `body` that also succeeds when the object holds exactly `body` already
/// (a store may apply a write and still answer 5xx; the client's retry is then refused as
/// "exists" although the object is ours): the object's ETag.
async fn create_or_own(s: &dyn Storage, key: &str, body: Bytes) -> Result<String> {
    match s.put(key, body.clone(), PutMode::Create).await {
        Ok(meta) => Ok(meta.version),
        Err(StorageError::AlreadyExists(k)) => match s.get(key).await? {
            Some(current) if current.body == body => Ok(current.meta.version),
            _ => Err(StorageError::AlreadyExists(k)),
        },
        Err(e) => Err(e),
    }
}

async fn read_staged(staged: &Path, rel: &str) -> Result<Bytes> {
    tokio::fs::read(staged.join(rel))
        .await
        .map(Bytes::from)
        .map_err(|source| StorageError::Io {
            key: rel.to_owned(),
            source,
        })
}
