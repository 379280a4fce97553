//! `lifecycle.json` in storage (SPEC §18): reading it, changing it by compare-and-swap, and
//! keeping `versions.json` true to it.
//!
//! The rules that make yank, unyank, deprecate and delete safe beside publishes, sweeps and
//! repairs, on any number of replicas:
//!
//! - `lifecycle.json` changes only by compare-and-swap on the version just read ([`update`]):
//!   two replicas yanking different versions of one registry at once both take effect, and of a
//!   yank and an unyank racing, the one applied last decides, losing nothing else.
//! - Every writer of `versions.json` reads `versions.json` **first**, then `lifecycle.json`, and
//!   writes by compare-and-swap on what it read ([`relist`]; the disk's rebuild in
//!   `crate::versions` in the same order); every lifecycle change writes `lifecycle.json`, then
//!   rewrites `versions.json`. So a listing that missed a yank is always replaced: either its
//!   swap fails (the yanker's rewrite came between its two reads), or the yanker's rewrite comes
//!   after it and reads it.
//! - A publish reads `lifecycle.json` after the versions it checks (check 13, and step 3 of the
//!   bucket protocol under its lease), and a deletion writes `lifecycle.json` before it removes
//!   a file: a version deleted can never come back under other bytes.

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::{lifecycle_key, Lifecycle};

use super::publish::{lease, Timing};
use super::{PutMode, Result, Storage, StorageError};

/// A stored `lifecycle.json` is at most this large (a registry yanking every one of thousands of
/// versions with 500-character reasons stays far below it); larger is treated as corrupt.
pub const MAX_LIFECYCLE_BYTES: usize = 4 * 1024 * 1024;

/// The document of `registry` with its storage version (`None`: no file, the default state).
/// A file that is not a lifecycle document is an error: a publish or a listing must not guess.
pub async fn load(s: &dyn Storage, registry: &str) -> Result<(Lifecycle, Option<String>)> {
    let key = lifecycle_key(registry);
    match s.get(&key).await? {
        None => Ok((Lifecycle::default(), None)),
        Some(obj) => match parse(&obj.body) {
            Some(doc) => Ok((doc, Some(obj.meta.version))),
            None => Err(corrupt(&key)),
        },
    }
}

/// A stored document, `None` when corrupt or too large.
pub fn parse(body: &[u8]) -> Option<Lifecycle> {
    (body.len() <= MAX_LIFECYCLE_BYTES)
        .then(|| Lifecycle::parse(body))
        .flatten()
}

pub fn corrupt(key: &str) -> StorageError {
    StorageError::Backend(format!("corrupt lifecycle document {key:?}"))
}

/// Apply `change` to the stored document by compare-and-swap, re-reading and re-applying it on
/// every conflict. `change` returns `Ok(false)` when there is nothing to write (the state is
/// already what was asked), or an error of its own that stops everything. Returns the document
/// as stored afterwards and whether this call wrote it.
pub async fn update<E>(
    s: &dyn Storage,
    registry: &str,
    mut change: impl FnMut(&mut Lifecycle) -> std::result::Result<bool, E>,
) -> std::result::Result<(Lifecycle, bool), E>
where
    E: From<StorageError>,
{
    let key = lifecycle_key(registry);
    loop {
        let (mut doc, version) = load(s, registry).await?;
        if !change(&mut doc)? {
            return Ok((doc, false));
        }
        let mode = match version {
            Some(v) => PutMode::IfVersion(v),
            None => PutMode::Create,
        };
        match s.put(&key, Bytes::from(doc.render()), mode).await {
            Ok(_) => return Ok((doc, true)),
            Err(StorageError::PreconditionFailed(_) | StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bring `versions.json` of `registry` to what it lists plus `add` (a version that is stored),
/// minus what `lifecycle.json` yanks or deletes, by compare-and-swap (see the module docs for
/// the order of the reads). A missing or corrupt `versions.json` is rebuilt from the stored
/// versions. Nothing is written when nothing changes. Returns the listed versions.
pub async fn relist(s: &dyn Storage, registry: &str, add: Option<&str>) -> Result<Vec<String>> {
    let key = layout::versions_key(registry);
    loop {
        let current = s.get(&key).await?;
        let (listed, mode) = match &current {
            Some(obj) => match VersionsFile::parse(&obj.body) {
                Some(f) => (f.versions, PutMode::IfVersion(obj.meta.version.clone())),
                None => (
                    super::publish::listing::stored_versions(s, registry).await?,
                    PutMode::IfVersion(obj.meta.version.clone()),
                ),
            },
            None if add.is_none() => {
                // Nothing listed and nothing to add: a registry without versions.json stays so.
                return Ok(Vec::new());
            }
            None => (Vec::new(), PutMode::Create),
        };
        let (doc, _) = load(s, registry).await?;
        let mut seen = std::collections::HashSet::new();
        let candidates = listed
            .iter()
            .map(String::as_str)
            .chain(add)
            .filter(|v| seen.insert(*v));
        let unique = doc.listed(candidates);
        if current.is_some() && unique == listed {
            return Ok(unique);
        }
        let body = Bytes::from(VersionsFile::from_versions(&unique).render());
        match s.put(&key, body, mode).await {
            Ok(_) => return Ok(unique),
            Err(StorageError::PreconditionFailed(_) | StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The files of a deleted version, `registry.json` first (so a partial removal never looks like
/// a version), then everything else under its prefix and its integrity record.
pub async fn remove_version(
    s: &dyn Storage,
    registry: &str,
    version: &str,
    lease_timing: Option<Timing>,
) -> Result<()> {
    let manifest = layout::manifest_key(registry, version);
    let prefix = format!("{registry}/{version}/");
    let record = super::integrity::record_key(registry, version);
    match lease_timing {
        // A bucket: under the lease of the version's precedence class, so that no publisher
        // of that class writes meanwhile; checked before each delete.
        Some(t) => {
            let done = lease::with_lease(s, registry, version, t, async |held: &lease::Lease| {
                held.ensure(s, false).await?;
                s.delete_prefix(&manifest).await?;
                held.ensure(s, false).await?;
                s.delete_prefix(&prefix).await?;
                held.ensure(s, false).await?;
                s.delete_prefix(&record).await?;
                Ok(())
            })
            .await?;
            done.ok_or_else(|| StorageError::Fenced(format!("lease of {registry}@{version} is held")))
        }
        // On disk, under the registry's lock (the server's; `storage check` runs with the
        // server stopped or on a bucket).
        None => {
            s.delete_prefix(&manifest).await?;
            s.delete_prefix(&prefix).await?;
            s.delete_prefix(&record).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use rack_core::lifecycle::Yank;

    fn yank(v: &str) -> impl FnMut(&mut Lifecycle) -> Result<bool> + '_ {
        move |doc| {
            let y = Yank {
                reason: "r".into(),
                at: "2026-12-07T10:00:00Z".into(),
                by: "admin".into(),
            };
            Ok(doc.yanked.insert(v.to_owned(), y).is_none())
        }
    }

    async fn publish(s: &MemoryStorage, v: &str) {
        s.put(
            &layout::manifest_key("@a/x", v),
            Bytes::from_static(b"{}"),
            PutMode::Create,
        )
        .await
        .unwrap();
        relist(s, "@a/x", Some(v)).await.unwrap();
    }

    #[tokio::test]
    async fn yanks_leave_the_listing_and_unyanks_come_back() {
        let s = MemoryStorage::new();
        for v in ["1.0.0", "2.0.0", "1.5.0"] {
            publish(&s, v).await;
        }
        assert_eq!(
            relist(&s, "@a/x", None).await.unwrap(),
            ["2.0.0", "1.5.0", "1.0.0"]
        );
        let (doc, wrote) = update(&s, "@a/x", yank("2.0.0")).await.unwrap();
        assert!(wrote && doc.yanked.contains_key("2.0.0"));
        let (_, again) = update(&s, "@a/x", yank("2.0.0")).await.unwrap();
        assert!(!again, "already yanked: nothing written");
        assert_eq!(relist(&s, "@a/x", None).await.unwrap(), ["1.5.0", "1.0.0"]);
        // A publish racing the yank cannot bring the yanked version back.
        assert_eq!(
            relist(&s, "@a/x", Some("2.0.0")).await.unwrap(),
            ["1.5.0", "1.0.0"]
        );
        update(&s, "@a/x", |doc: &mut Lifecycle| {
            Ok::<_, StorageError>(doc.yanked.remove("2.0.0").is_some())
        })
        .await
        .unwrap();
        assert_eq!(
            relist(&s, "@a/x", Some("2.0.0")).await.unwrap(),
            ["2.0.0", "1.5.0", "1.0.0"]
        );
        let stored = s.get("@a/x/versions.json").await.unwrap().unwrap();
        assert_eq!(
            VersionsFile::parse(&stored.body).unwrap().versions,
            ["2.0.0", "1.5.0", "1.0.0"]
        );
    }

    #[tokio::test]
    async fn concurrent_changes_to_one_document_all_take_effect() {
        let s = std::sync::Arc::new(MemoryStorage::new());
        let versions: Vec<String> = (0..16).map(|i| format!("1.0.{i}")).collect();
        let tasks: Vec<_> = versions
            .iter()
            .cloned()
            .map(|v| {
                let s = s.clone();
                tokio::spawn(async move { update(s.as_ref(), "@a/x", yank(&v)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (doc, _) = load(s.as_ref(), "@a/x").await.unwrap();
        assert_eq!(doc.yanked.len(), versions.len(), "no yank lost");
    }

    #[tokio::test]
    async fn a_corrupt_document_stops_publishes_and_listings() {
        let s = MemoryStorage::new();
        publish(&s, "1.0.0").await;
        s.put(
            "@a/x/lifecycle.json",
            Bytes::from_static(b"[1]"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        assert!(load(&s, "@a/x").await.is_err());
        assert!(relist(&s, "@a/x", Some("1.0.1")).await.is_err());
        let listed = s.get("@a/x/versions.json").await.unwrap().unwrap();
        assert_eq!(VersionsFile::parse(&listed.body).unwrap().versions, ["1.0.0"]);
    }
}
