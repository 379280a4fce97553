//! Listing a published version (SPEC §11.2 step 6): `versions.json` and the namespace index
//! grow by compare-and-swap merges, re-read on every conflict, so no version or registry is ever
//! lost and no publish lists every version. Anyone may merge (a publisher, a sweep, a repair):
//! a merge adds what is stored and visible, so it needs no lease.

use rack_core::layout;
use rack_core::names::is_version;

use crate::storage::{index, list_all, Result, Storage};

/// Merge `version` into the registry's `versions.json` by compare-and-swap
/// ([`lifecycle::relist`](crate::storage::lifecycle::relist)), then make sure the registry is in
/// its namespace's index (one GET when it is: a publisher killed between the two left it out,
/// and whoever lists next puts it in). A corrupt `versions.json` is rebuilt from the stored
/// versions.
pub async fn add_version(s: &dyn Storage, registry: &str, version: &str) -> Result<()> {
    // Unless it was yanked or deleted meanwhile (SPEC §18): `relist` reads the lifecycle after
    // versions.json, so a yank that races this merge is never undone by it.
    super::super::lifecycle::relist(s, registry, Some(version)).await?;
    index::add_registry(s, registry).await
}

/// Version directories of `registry` holding a `registry.json` (only for a corrupt
/// `versions.json`: a listing and one HEAD per version).
pub async fn stored_versions(s: &dyn Storage, registry: &str) -> Result<Vec<String>> {
    let prefix = format!("{registry}/");
    let mut names = Vec::new();
    for p in list_all(s, &prefix, true).await?.prefixes {
        let name = p[prefix.len()..].trim_end_matches('/');
        if is_version(name) && s.head(&layout::manifest_key(registry, name)).await?.is_some() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
