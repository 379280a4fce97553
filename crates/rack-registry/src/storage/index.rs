//! The namespace index `@ns/.registries.json` (SPEC §3): `{"registries": ["a", "b/c", ...]}`,
//! sorted. On a bucket it answers `/namespaces/@ns/registries` with one GET instead of one list
//! call per directory; where it is missing, readers walk and write it. The leading dot means it
//! can never be a registry path.
//!
//! It only ever grows by compare-and-swap: a publish that creates a new registry merges it in.
//! A publish that finds no index walks the namespace and creates one create-only (its own
//! registry is already visible to that walk); if a reader's walk created one first, possibly
//! from before the new registry, the create fails and the publish merges instead, so no registry
//! is ever left out. `storage push` rebuilds the indexes of the namespaces it pushed.

use std::sync::Arc;

use bytes::Bytes;
use rack_core::names::is_segment;

use super::{walk_marked_dirs, PutMode, Result, Storage, StorageError};

// Key, format and parsing are the core's (shared with the edge Worker).
pub use rack_core::listing::{index_key, is_index_key, parse_index as parse, INDEX_FILE};

pub fn render(registries: &[String]) -> Bytes {
    Bytes::from(rack_core::listing::render_index(registries))
}

/// The registries of namespace `ns` by walking its directories (`None`: nothing stored).
pub async fn walk<S: Storage + ?Sized>(s: &S, ns: &str) -> Result<Option<Arc<[String]>>> {
    walk_marked_dirs(s, &format!("{ns}/"), "versions.json", is_segment).await
}

/// Add `registry` (`@ns/<segments>`) to its namespace's index (see the module docs).
pub async fn add_registry(s: &dyn Storage, registry: &str) -> Result<()> {
    let Some((ns, name)) = registry.split_once('/') else {
        return Err(StorageError::InvalidKey(registry.to_owned()));
    };
    let key = index_key(ns);
    loop {
        let (mut list, mode) = match s.get(&key).await? {
            Some(obj) => match parse(&obj.body) {
                Some(list) => (list, PutMode::IfVersion(obj.meta.version)),
                // Corrupt: replaced from a walk, by swap.
                None => (walked(s, ns).await?, PutMode::IfVersion(obj.meta.version)),
            },
            None => (walked(s, ns).await?, PutMode::Create),
        };
        if list.iter().any(|r| r == name) && mode != PutMode::Create {
            return Ok(());
        }
        list.push(name.to_owned());
        match s.put(&key, render(&list), mode).await {
            Ok(_) => return Ok(()),
            Err(StorageError::PreconditionFailed(_) | StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn walked(s: &dyn Storage, ns: &str) -> Result<Vec<String>> {
    Ok(walk(s, ns).await?.map(|l| l.to_vec()).unwrap_or_default())
}

/// Rewrite the index of `ns` from a walk (after `storage push`); how many registries it lists
/// (`None`: nothing stored under `ns`, no index written).
pub async fn rebuild(s: &dyn Storage, ns: &str) -> Result<Option<usize>> {
    let Some(list) = walk(s, ns).await? else {
        return Ok(None);
    };
    s.put(&index_key(ns), render(&list), PutMode::Overwrite).await?;
    Ok(Some(list.len()))
}
