//! Finishing what dead publishers left (SPEC §11.2, after step 7): every replica sweeps
//! expired leases in the background and before any publish to the same registry. A sweeper
//! takes the expired lease over by compare-and-swap (so two sweepers never finish one lease),
//! then settles the version its dead holder was publishing: listed and announced if its
//! `registry.json` made it, otherwise its leftovers removed, under the lease.

use rack_core::layout;
use rack_core::names::is_version;

use super::lease::{self, Lease, LeaseRecord, Timing, LEASES};
use super::listing::add_version;
use super::Announce;
use crate::storage::{integrity, Result, Storage};

/// Settle the publish of a dead holder of a lease we now hold: `previous` is its record, `key`
/// the lease key (old leases were keyed by the full version and carried none).
pub async fn settle(
    s: &dyn Storage,
    lease: &Lease,
    registry: &str,
    previous: Option<&LeaseRecord>,
    announce: &dyn Announce,
) -> Result<()> {
    let from_key = lease.key().rsplit('/').next().unwrap_or_default();
    let version = previous.and_then(|r| r.version.as_deref()).unwrap_or(from_key);
    if !is_version(version) {
        return Ok(());
    }
    match s.get(&layout::manifest_key(registry, version)).await? {
        Some(manifest) => {
            add_version(s, registry, version).await?;
            announce.listed(registry, version, &manifest.body).await;
        }
        None => {
            // Not visible, so abandoned: its files go (the dead holder may only have created
            // them; nobody else writes there without this lease).
            lease.ensure(s, false).await?;
            s.delete_prefix(&format!("{registry}/{version}/")).await?;
            s.delete_prefix(&integrity::record_key(registry, version)).await?;
        }
    }
    Ok(())
}

/// Finish the expired leases of one registry (one delimited list call when there are none).
pub async fn sweep_registry(
    s: &dyn Storage,
    registry: &str,
    t: Timing,
    announce: &dyn Announce,
) -> Result<u64> {
    sweep(s, &format!("{LEASES}{registry}/"), true, t, announce).await
}

/// Finish every expired lease (the background sweep, and `storage check --repair`).
pub async fn sweep_all(s: &dyn Storage, t: Timing, announce: &dyn Announce) -> Result<u64> {
    sweep(s, LEASES, false, t, announce).await
}

async fn sweep(
    s: &dyn Storage,
    prefix: &str,
    delimited: bool,
    t: Timing,
    announce: &dyn Announce,
) -> Result<u64> {
    let mut done = 0;
    let mut start: Option<String> = None;
    loop {
        let page = s.list(prefix, delimited, start.as_deref(), 1000).await?;
        for l in &page.objects {
            done += finish_if_expired(s, &l.key, t, announce).await? as u64;
        }
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(done),
        }
    }
}

/// Take over the lease at `key` if it has expired, settle its publish, release it.
async fn finish_if_expired(s: &dyn Storage, key: &str, t: Timing, announce: &dyn Announce) -> Result<bool> {
    let Some((registry, class)) = key.strip_prefix(LEASES).and_then(|d| d.rsplit_once('/')) else {
        return Ok(false);
    };
    if !registry.starts_with('@') || !is_version(class) {
        return Ok(false);
    }
    let Some(found) = lease::read(s, key).await? else {
        return Ok(false);
    };
    if !found.expired {
        return Ok(false);
    }
    if !announce.enabled() {
        let version = found
            .record
            .as_ref()
            .and_then(|r| r.version.as_deref())
            .unwrap_or(class);
        if !is_version(version) || s.head(&layout::manifest_key(registry, version)).await?.is_some() {
            return Ok(false);
        }
    }
    let Some(held) = lease::take_over(s, key, &found, class, t).await? else {
        return Ok(false);
    };
    settle(s, &held, registry, found.record.as_ref(), announce).await?;
    held.release(s).await?;
    Ok(true)
}
