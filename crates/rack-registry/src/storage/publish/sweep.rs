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
use crate::storage::{integrity, list_all, Result, Storage};

/// Settle what dead holders of a lease we now hold left ([`Lease::to_settle`]): each version
/// listed and announced if its `registry.json` made it, its objects removed otherwise. Until this
/// returns `Ok`, the lease must not be released (its record hands the work on).
pub async fn settle(s: &dyn Storage, lease: &Lease, registry: &str, announce: &dyn Announce) -> Result<()> {
    for version in lease.to_settle().await {
        if !is_version(&version) {
            continue;
        }
        match s.get(&layout::manifest_key(registry, &version)).await? {
            Some(manifest) => {
                add_version(s, registry, &version).await?;
                announce.listed(registry, &version, &manifest.body).await;
            }
            None => {
                // Not visible, so abandoned: its files go (the dead holder may only have
                // created them; nobody else writes there without this lease). The fence is
                // checked before each delete: a slow first one must not let the second land
                // after the lease was lost.
                lease.ensure(s, false).await?;
                s.delete_prefix(&format!("{registry}/{version}/")).await?;
                lease.ensure(s, false).await?;
                s.delete_prefix(&integrity::record_key(registry, &version))
                    .await?;
            }
        }
    }
    lease.settled().await;
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
    for l in list_all(s, prefix, delimited).await?.objects {
        done += finish_if_expired(s, &l.key, t, announce).await? as u64;
    }
    Ok(done)
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
        // A visible version to finish needs announcing, which this caller cannot do.
        let records = found.record.as_ref();
        for version in LeaseRecord::left_unsettled(records, key) {
            if is_version(&version) && s.head(&layout::manifest_key(registry, &version)).await?.is_some() {
                return Ok(false);
            }
        }
    }
    let Some(held) = lease::take_over(s, key, &found, None, t).await? else {
        return Ok(false);
    };
    settle(s, &held, registry, announce).await?;
    held.release(s).await?;
    Ok(true)
}
