//! Keeping `versions.json` true to what is stored (SPEC §3, §5.2, §14).
//!
//! `versions.json` is always *rebuilt* from the version directories that hold a `registry.json`
//! (plus the version just published) rather than edited, and written by compare-and-swap, so a
//! racing writer (another request, another replica) can never make it lose a version: the loser
//! of a swap rebuilds and tries again. Inside one process, updates of one registry are also
//! serialized by a lock, so the swap rarely has to retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::names::{is_namespace, is_segment, is_version};

use crate::storage::{PutMode, Storage, StorageError};

/// Per-registry locks of this process.
#[derive(Default)]
pub struct RegistryLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl RegistryLocks {
    pub fn get(&self, registry: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(registry.to_owned())
            .or_default()
            .clone()
    }
}

/// Version directory names under a registry that hold a `registry.json`.
async fn stored_versions(storage: &dyn Storage, registry: &str) -> Result<Vec<String>, StorageError> {
    let prefix = format!("{registry}/");
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = storage.list(&prefix, true, start.as_deref(), 1000).await?;
        for p in &page.prefixes {
            let name = p[prefix.len()..].trim_end_matches('/');
            if is_version(name)
                && storage
                    .head(&layout::manifest_key(registry, name))
                    .await?
                    .is_some()
            {
                names.push(name.to_owned());
            }
        }
        match page.next {
            Some(n) => start = Some(n),
            None => break,
        }
    }
    Ok(names)
}

/// Rebuild and write `versions.json` of `registry`, including `also` (a version just published).
pub async fn rebuild(
    storage: &dyn Storage,
    locks: &RegistryLocks,
    registry: &str,
    also: Option<&str>,
) -> Result<VersionsFile, StorageError> {
    let lock = locks.get(registry);
    let _guard = lock.lock().await;
    let key = layout::versions_key(registry);
    loop {
        let current = storage.head(&key).await?;
        let mut names = stored_versions(storage, registry).await?;
        names.extend(also.map(str::to_owned));
        let file = VersionsFile::from_versions(names);
        let mode = match current {
            Some(meta) => PutMode::IfVersion(meta.version),
            None => PutMode::Create,
        };
        match storage.put(&key, Bytes::from(file.render()), mode).await {
            Ok(_) => return Ok(file),
            Err(StorageError::PreconditionFailed(_)) | Err(StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Startup repair after a crash between "version visible" and "versions.json rewritten": every
/// registry whose stored versions differ from its `versions.json` (or that has none) is rebuilt.
/// Returns the registries repaired.
pub async fn repair(storage: &dyn Storage, locks: &RegistryLocks) -> Result<Vec<String>, StorageError> {
    let mut repaired = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let root = storage.list("", true, None, usize::MAX).await?;
    for p in root.prefixes {
        if is_namespace(p.trim_end_matches('/')) {
            stack.push(p);
        }
    }
    while let Some(dir) = stack.pop() {
        let page = storage.list(&dir, true, None, usize::MAX).await?;
        let registry = dir.trim_end_matches('/');
        let has_versions_file = page.objects.iter().any(|o| o.key.ends_with("/versions.json"));
        let mut has_version_dir = false;
        for p in &page.prefixes {
            let name = p[dir.len()..].trim_end_matches('/');
            if is_segment(name) {
                stack.push(p.clone());
            } else if is_version(name) {
                has_version_dir = true;
            }
        }
        if !has_version_dir && !has_versions_file {
            continue;
        }
        let stored = VersionsFile::from_versions(stored_versions(storage, registry).await?);
        let listed = match storage.get(&layout::versions_key(registry)).await? {
            Some(o) => VersionsFile::parse(&o.body),
            None => None,
        };
        let missing = listed
            .as_ref()
            .is_none_or(|l| stored.versions.iter().any(|v| !l.versions.contains(v)));
        // A corrupt versions.json is left for the operator (it is a 500 and logged); only
        // missing or incomplete lists are rebuilt.
        let corrupt = has_versions_file && listed.is_none();
        if missing && !corrupt && !stored.versions.is_empty() {
            rebuild(storage, locks, registry, None).await?;
            repaired.push(registry.to_owned());
        }
    }
    repaired.sort();
    Ok(repaired)
}
