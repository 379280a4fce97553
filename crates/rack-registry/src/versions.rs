//! Keeping `versions.json` true to what is stored (SPEC §3, §5.2, §14).
//!
//! `versions.json` is always *rebuilt* from the version directories that hold a `registry.json`
//! (plus the version just published) rather than edited, and written by compare-and-swap, so a
//! racing writer (another request, another replica) can never make it lose a version: the loser
//! of a swap rebuilds and tries again. Inside one process, publishes of one registry are also
//! serialized by a lock (held by the upload from check 13 to the rewrite of `versions.json`), so
//! the swap rarely has to retry, and of two versions equal in precedence (`1.0.0+a`, `1.0.0+b`)
//! racing each other only the first is published.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::names::is_version;

use crate::storage::{PutMode, Storage, StorageError};

/// Per-registry locks of this process.
///
/// Only locks in use are worth keeping: one nobody holds (no `Arc` outside the map) can be
/// dropped and made anew later without losing anything. Once the map reaches [`LOCKS_SWEEP_AT`]
/// entries, an insertion drops every such lock, so a publisher creating registry after
/// registry cannot grow the map past the locks actually held plus that many.
#[derive(Default)]
pub struct RegistryLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Entries kept before unused locks are swept (the sweep runs once per this many insertions at
/// worst, so its cost per publish stays O(1) on average).
const LOCKS_SWEEP_AT: usize = 1024;

impl RegistryLocks {
    pub fn get(&self, registry: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(registry) {
            return lock.clone();
        }
        if map.len() >= LOCKS_SWEEP_AT {
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        map.entry(registry.to_owned()).or_default().clone()
    }

    /// Locks held in the map.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Version directory names under a registry that hold a `registry.json`.
pub async fn stored_versions(storage: &dyn Storage, registry: &str) -> Result<Vec<String>, StorageError> {
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
    rebuild_locked(storage, registry, also).await
}

/// [`rebuild`], for a caller that already holds the registry's lock.
pub async fn rebuild_locked(
    storage: &dyn Storage,
    registry: &str,
    also: Option<&str>,
) -> Result<VersionsFile, StorageError> {
    let key = layout::versions_key(registry);
    loop {
        // versions.json first, then the lifecycle (see `storage::lifecycle`): a yank between
        // the two makes the swap below fail.
        let current = storage.head(&key).await?;
        let mut names = stored_versions(storage, registry).await?;
        names.extend(also.map(str::to_owned));
        names.sort();
        names.dedup();
        let (doc, _) = crate::storage::lifecycle::load(storage, registry).await?;
        let file = VersionsFile::from_versions(doc.listed(names));
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

/// Every version a registry has, as far as check 13 is concerned: the version directories that
/// hold a `registry.json`, and what `versions.json` lists (an unreadable `versions.json` lists
/// nothing: the publish rewrites it from the directories anyway).
pub async fn known_versions(storage: &dyn Storage, registry: &str) -> Result<Vec<String>, StorageError> {
    // A bucket's publish protocol keeps versions.json complete (SPEC §11.2: every version is
    // merged in, a dead publisher's by the sweep), so one GET answers whatever the number of
    // versions; the walk below is for a missing or corrupt file.
    if storage.publish_lists_version() {
        if let Some(obj) = storage.get(&layout::versions_key(registry)).await? {
            if let Some(file) = VersionsFile::parse(&obj.body) {
                return Ok(file.versions);
            }
        }
    }
    let mut names = stored_versions(storage, registry).await?;
    if let Some(obj) = storage.get(&layout::versions_key(registry)).await? {
        if let Some(file) = VersionsFile::parse(&obj.body) {
            names.extend(file.versions);
        }
    }
    Ok(names)
}

/// A record, kept while a publish is in flight, of the version being published: if the process
/// dies between "version visible" and "versions.json rewritten", the next start finds the record
/// and finishes the job. Only versions this server was publishing are repaired; whatever else an
/// operator keeps in storage is served as it is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JournalEntry {
    pub registry: String,
    pub version: String,
}

/// The journal record's file name inside an upload's staging directory.
pub const JOURNAL_FILE: &str = "journal.json";

/// Write the journal record of an upload durably into its staging directory `dir` (it goes
/// away with that directory once `versions.json` is written).
pub async fn journal_begin(dir: &Path, entry: &JournalEntry) -> std::io::Result<()> {
    let dir = dir.to_owned();
    let body = serde_json::to_vec(entry).expect("serializable");
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(dir.join(JOURNAL_FILE))?;
        std::io::Write::write_all(&mut f, &body)?;
        f.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Startup repair from the journal: for every staging directory under `staging_root` holding a
/// journal record whose version is visible, rebuild that registry's `versions.json`. (The caller
/// then clears staging.) Returns the registries repaired.
pub async fn repair_journal(
    storage: &dyn Storage,
    locks: &RegistryLocks,
    staging_root: &Path,
) -> Result<Vec<String>, StorageError> {
    let mut repaired = Vec::new();
    let records: Vec<PathBuf> = match std::fs::read_dir(staging_root) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path().join(JOURNAL_FILE))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => return Ok(repaired),
    };
    for path in records {
        let entry: Option<JournalEntry> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(e) = entry else { continue };
        let valid = crate::storage::validate_key(&e.registry).is_ok() && is_version(&e.version);
        if valid
            && storage
                .head(&layout::manifest_key(&e.registry, &e.version))
                .await?
                .is_some()
        {
            rebuild(storage, locks, &e.registry, None).await?;
            // Killed between the rename and the integrity record: the published bytes are
            // the version's (a rename is whole), so they are recorded now.
            let record = crate::storage::integrity::record_key(&e.registry, &e.version);
            if storage.head(&record).await?.is_none() {
                crate::storage::integrity::record_stored(storage, &e.registry, &e.version).await?;
            }
            repaired.push(e.registry);
        }
    }
    repaired.sort();
    repaired.dedup();
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::Counting;
    use crate::storage::LocalStorage;

    #[tokio::test]
    async fn registry_locks_keep_only_what_is_held_past_the_sweep() {
        let locks = RegistryLocks::default();
        let held = locks.get("@a/held");
        let guard = held.lock().await;
        for i in 0..10 * LOCKS_SWEEP_AT {
            drop(locks.get(&format!("@a/r-{i}")));
            assert!(locks.len() <= LOCKS_SWEEP_AT, "{} locks after {i}", locks.len());
        }
        // A lock in use survives every sweep: the same mutex is handed out again.
        let again = locks.get("@a/held");
        assert!(Arc::ptr_eq(&held, &again));
        assert!(again.try_lock().is_err(), "still held by `guard`");
        drop(guard);
        // Below the threshold nothing is swept: a lock stays the same while the map is small.
        let small = RegistryLocks::default();
        let first = small.get("@a/x");
        drop(small.get("@a/y"));
        assert!(Arc::ptr_eq(&first, &small.get("@a/x")));
        assert_eq!(small.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn on_a_bucket_check_13_reads_versions_json_without_walking() {
        let dir = tempfile::tempdir().unwrap();
        let s = Counting {
            bucket: true,
            ..Counting::new(LocalStorage::open(dir.path()).unwrap())
        };
        // A new registry: nothing stored, the walk finds nothing.
        assert!(known_versions(&s, "@a/x").await.unwrap().is_empty());
        for v in ["1.0.0", "2.0.0", "3.0.0"] {
            s.put(
                &format!("@a/x/{v}/registry.json"),
                Bytes::from_static(b"{}"),
                PutMode::Create,
            )
            .await
            .unwrap();
        }
        let file = VersionsFile::from_versions(["1.0.0", "2.0.0", "3.0.0"]);
        s.put("@a/x/versions.json", Bytes::from(file.render()), PutMode::Create)
            .await
            .unwrap();
        let walks = s.asked();
        assert_eq!(
            known_versions(&s, "@a/x").await.unwrap(),
            ["3.0.0", "2.0.0", "1.0.0"]
        );
        assert_eq!(s.asked(), walks, "no list, no HEAD per version");
        // Corrupt: the directories decide.
        s.put(
            "@a/x/versions.json",
            Bytes::from_static(b"oops"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        let mut found = known_versions(&s, "@a/x").await.unwrap();
        found.sort();
        assert_eq!(found, ["1.0.0", "2.0.0", "3.0.0"]);
    }
}
