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
use rack_core::names::{is_namespace, is_segment};
use serde::{Deserialize, Serialize};

use super::{walk_marked_dirs, PutMode, Result, Storage, StorageError};

pub const INDEX_FILE: &str = ".registries.json";

/// The index key of namespace `ns` (`@ns`).
pub fn index_key(ns: &str) -> String {
    format!("{ns}/{INDEX_FILE}")
}

/// Whether `key` is a namespace index (derived data: `storage pull` leaves it out).
pub fn is_index_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(ns, rest)| rest == INDEX_FILE && is_namespace(ns))
}

#[derive(Serialize, Deserialize)]
struct RegistryIndex {
    registries: Vec<String>,
}

pub fn parse(bytes: &[u8]) -> Option<Vec<String>> {
    serde_json::from_slice::<RegistryIndex>(bytes)
        .ok()
        .map(|i| i.registries)
}

pub fn render(registries: &[String]) -> Bytes {
    let mut list = registries.to_vec();
    list.sort();
    list.dedup();
    let mut out = serde_json::to_vec(&RegistryIndex { registries: list }).expect("serializable");
    out.push(b'\n');
    Bytes::from(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_and_format() {
        assert_eq!(index_key("@ns"), "@ns/.registries.json");
        assert!(is_index_key("@ns/.registries.json"));
        assert!(!is_index_key("@ns/a/.registries.json"));
        assert!(!is_index_key("presets/.registries.json"));
        let body = render(&["b/c".into(), "a".into(), "a".into()]);
        assert_eq!(&body[..], b"{\"registries\":[\"a\",\"b/c\"]}\n");
        assert_eq!(parse(&body).unwrap(), ["a", "b/c"]);
        assert!(parse(b"[]").is_none());
    }
}
