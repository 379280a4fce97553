//! `rack-registry storage check [--deep] [--repair]` (SPEC §11.2): every violated invariant of
//! SPEC §3 and every version whose files do not match its integrity record, on disk and in a
//! bucket, and a repair that is safe while servers keep publishing.
//!
//! Invariants: each registry (a directory holding `versions.json` or a version directory) has a
//! `versions.json` listing exactly its versions that have a `registry.json` and are neither
//! yanked nor deleted (its `lifecycle.json`, SPEC §18, parses; a deleted version has no files
//! left), SemVer descending
//! (its formatting is not judged: the reference server's is accepted); no version directory lacks
//! its `registry.json` (unless its publish is in flight); no publish lease has expired
//! unfinished; every listed version matches its integrity record; on a bucket each namespace
//! index lists exactly the namespace's registries.
//!
//! The repair never overwrites what a publisher may be changing: `versions.json` and the indexes
//! change only by compare-and-swap merges on what was just read (a version published meanwhile
//! makes the swap fail and the merge start again), and nothing is deleted or unlisted except
//! under the version's publish lease, taken by the repair itself after confirming the version
//! is not visible. Integrity mismatches are reported, never "fixed": the bytes a client pinned
//! cannot be known from here.

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::Lifecycle;
use rack_core::names::{is_namespace, is_segment, is_version};

use super::integrity::{self, Finding};
use super::publish::{self, lease, Announce, Timing};
use super::{index, list_all, PutMode, Result, Storage, StorageError};

/// One violated invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key (or prefix) concerned.
    pub key: String,
    /// What is wrong, for people.
    pub what: String,
    fix: Fix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fix {
    /// Reconcile the registry's `versions.json` with its stored versions.
    Versions(String),
    /// Remove an abandoned version directory (no `registry.json`): registry, version.
    Abandoned(String, String),
    /// Finish expired leases (the sweep).
    Leases,
    /// Reconcile a namespace index.
    Index(String),
    /// Record the current bytes of a version without an integrity record.
    Record(String, String),
    /// Finish removing the files of a deleted version (SPEC §18): registry, version.
    Deleted(String, String),
    /// Nothing can be fixed from here.
    None,
}

/// Every registry directory under namespace `ns`, with its version directories and whether it
/// has a `versions.json`.
async fn registries(s: &dyn Storage, ns: &str, out: &mut Vec<(String, Vec<String>, bool)>) -> Result<()> {
    let mut stack = vec![format!("{ns}/")];
    while let Some(dir) = stack.pop() {
        let page = list_all(s, &dir, true).await?;
        let has_versions_json = page
            .objects
            .iter()
            .any(|o| o.key == format!("{dir}versions.json"));
        let mut versions = Vec::new();
        for p in page.prefixes {
            let name = p[dir.len()..].trim_end_matches('/');
            if is_version(name) {
                versions.push(name.to_owned());
            } else if is_segment(name) {
                stack.push(p);
            }
        }
        if has_versions_json || !versions.is_empty() {
            out.push((dir.trim_end_matches('/').to_owned(), versions, has_versions_json));
        }
    }
    Ok(())
}

/// Every violated invariant (`bucket`: also the namespace indexes; `deep`: hash every listed
/// version's files against its record instead of comparing sizes).
pub async fn check(s: &dyn Storage, bucket: bool, deep: bool) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let namespaces: Vec<String> = list_all(s, "", true)
        .await?
        .prefixes
        .iter()
        .map(|p| p.trim_end_matches('/').to_owned())
        .filter(|n| is_namespace(n))
        .collect();
    for ns in &namespaces {
        let mut regs = Vec::new();
        registries(s, ns, &mut regs).await?;
        for (registry, dirs, has_file) in regs {
            let doc = match super::lifecycle::load(s, &registry).await {
                Ok((doc, _)) => doc,
                Err(StorageError::Backend(what)) => {
                    problems.push(Problem {
                        key: rack_core::lifecycle::lifecycle_key(&registry),
                        what,
                        fix: Fix::None,
                    });
                    Lifecycle::default()
                }
                Err(e) => return Err(e),
            };
            let mut published = Vec::new();
            for v in &dirs {
                if doc.deleted.contains_key(v) {
                    // An interrupted deletion (SPEC §18): reads answer 410 already.
                    problems.push(Problem {
                        key: format!("{registry}/{v}/"),
                        what: format!("{registry}@{v} was deleted but files remain"),
                        fix: Fix::Deleted(registry.clone(), v.clone()),
                    });
                } else if s.head(&layout::manifest_key(&registry, v)).await?.is_some() {
                    published.push(v.clone());
                } else if lease::read(s, &lease::lease_key(&registry, v))
                    .await?
                    .is_none_or(|l| l.expired)
                {
                    // Not while its publish is in flight (a live lease).
                    let prefix = format!("{registry}/{v}/");
                    problems.push(Problem {
                        what: "version directory without registry.json".into(),
                        fix: Fix::Abandoned(registry.clone(), v.clone()),
                        key: prefix,
                    });
                }
            }
            // Yanked versions are stored, not listed (SPEC §18).
            let want = VersionsFile::from_versions(doc.listed(&published));
            let key = layout::versions_key(&registry);
            let listed = if has_file {
                s.get(&key).await?.map(|o| VersionsFile::parse(&o.body))
            } else {
                None
            };
            let what = match &listed {
                None => Some("missing versions.json".to_owned()),
                Some(None) => Some("versions.json is not {\"versions\": [...]}".to_owned()),
                Some(Some(f)) if f.versions != want.versions => Some(format!(
                    "versions.json lists {:?}, stored versions are {:?}",
                    f.versions, want.versions
                )),
                Some(Some(_)) => None,
            };
            if let Some(what) = what {
                problems.push(Problem {
                    key: key.clone(),
                    what,
                    fix: Fix::Versions(registry.clone()),
                });
            }
            for v in &published {
                for finding in integrity::verify(s, &registry, v, deep).await? {
                    let record = integrity::record_key(&registry, v);
                    problems.push(match finding {
                        Finding::NoRecord => Problem {
                            key: record,
                            what: format!("{registry}@{v} has no integrity record"),
                            fix: Fix::Record(registry.clone(), v.clone()),
                        },
                        Finding::Unreadable => Problem {
                            key: record,
                            what: "integrity record is unreadable".into(),
                            fix: Fix::None,
                        },
                        Finding::File(path, what) => Problem {
                            key: format!("{registry}/{v}/{path}"),
                            what: format!("does not match its integrity record: {what}"),
                            fix: Fix::None,
                        },
                    });
                }
            }
        }
        if bucket {
            let walked = index::walk(s, ns).await?.map(|l| l.to_vec()).unwrap_or_default();
            let key = index::index_key(ns);
            let stored = s.get(&key).await?.and_then(|o| index::parse(&o.body));
            if stored.as_ref().is_some_and(|l| *l != walked) {
                problems.push(Problem {
                    what: format!(
                        "namespace index lists {:?}, registries are {walked:?}",
                        stored.unwrap()
                    ),
                    key,
                    fix: Fix::Index(ns.clone()),
                });
            }
        }
    }
    for l in list_all(s, publish::LEASES, false).await?.objects {
        if lease::read(s, &l.key).await?.is_some_and(|f| f.expired) {
            problems.push(Problem {
                key: l.key,
                what: "expired publish lease (a publisher died mid-publish)".into(),
                fix: Fix::Leases,
            });
        }
    }
    Ok(problems)
}

/// Fix what [`check`] finds, safely while servers publish (see the module docs). Expired leases
/// of versions that became visible are left to a server's sweep when `announce` cannot
/// announce (their webhooks are due). Returns what is still wrong.
pub async fn repair(
    s: &dyn Storage,
    bucket: bool,
    deep: bool,
    t: Timing,
    announce: &dyn Announce,
) -> Result<Vec<Problem>> {
    publish::sweep_all(s, t, announce).await?;
    // A fix can reveal another (a registry given its versions.json now belongs in the
    // namespace index): a few passes.
    for _ in 0..3 {
        let problems = check(s, bucket, deep).await?;
        if problems.iter().all(|p| matches!(p.fix, Fix::None | Fix::Leases)) {
            break;
        }
        for p in &problems {
            match &p.fix {
                Fix::Abandoned(registry, version) => abandon(s, registry, version, t).await?,
                Fix::Versions(registry) => reconcile_versions(s, registry, t).await?,
                Fix::Record(registry, version) => integrity::record_stored(s, registry, version).await?,
                // Under its lease; a publish of that class in flight leaves it for next time.
                Fix::Deleted(registry, version) => {
                    match super::lifecycle::remove_version(s, registry, version, Some(t)).await {
                        Ok(()) | Err(StorageError::Fenced(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Fix::Index(ns) => reconcile_index(s, ns).await?,
                Fix::Leases | Fix::None => {}
            }
        }
    }
    check(s, bucket, deep).await
}

/// Remove a version directory without `registry.json`, under its lease, after confirming
/// under the lease that it is still not visible.
async fn abandon(s: &dyn Storage, registry: &str, version: &str, t: Timing) -> Result<()> {
    lease::with_lease(s, registry, version, t, async |held: &lease::Lease| {
        if s.head(&layout::manifest_key(registry, version)).await?.is_none() {
            held.ensure(s, false).await?;
            s.delete_prefix(&format!("{registry}/{version}/")).await?;
            held.ensure(s, false).await?;
            s.delete_prefix(&integrity::record_key(registry, version)).await?;
        }
        Ok(())
    })
    .await
    .map(drop)
}

/// Bring `versions.json` to the stored versions by compare-and-swap merges: stored versions are
/// added (and a corrupt or misordered file rewritten) against the ETag just read; a listed version
/// with no `registry.json` is unlisted only under its lease, once confirmed absent.
async fn reconcile_versions(s: &dyn Storage, registry: &str, t: Timing) -> Result<()> {
    let key = layout::versions_key(registry);
    loop {
        let current = s.get(&key).await?;
        let listed = current
            .as_ref()
            .and_then(|o| VersionsFile::parse(&o.body))
            .map(|f| f.versions)
            .unwrap_or_default();
        let stored = publish::listing::stored_versions(s, registry).await?;
        let mut keep: Vec<String> = stored.clone();
        for v in listed.iter().filter(|v| !stored.contains(v)) {
            // Listed, not stored: unlisted only when confirmed under the lease; kept otherwise.
            let gone = lease::with_lease(s, registry, v, t, async |_: &lease::Lease| {
                Ok(s.head(&layout::manifest_key(registry, v)).await?.is_none())
            })
            .await?;
            if gone != Some(true) {
                keep.push(v.clone());
            }
        }
        // Never a yanked or deleted version (read after versions.json, as every listing does).
        let (doc, _) = super::lifecycle::load(s, registry).await?;
        let keep = doc.listed(&keep);
        if keep.is_empty() && current.is_none() {
            // Only leftovers (removed by the same repair): no registry to create.
            return Ok(());
        }
        let want = VersionsFile::from_versions(&keep);
        let unchanged = current
            .as_ref()
            .and_then(|o| VersionsFile::parse(&o.body))
            .is_some_and(|f| f.versions == want.versions);
        if unchanged {
            return index::add_registry(s, registry).await;
        }
        let mode = match &current {
            Some(o) => PutMode::IfVersion(o.meta.version.clone()),
            None => PutMode::Create,
        };
        match s.put(&key, Bytes::from(want.render()), mode).await {
            Ok(_) => return index::add_registry(s, registry).await,
            Err(StorageError::PreconditionFailed(_) | StorageError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Bring a namespace index to the stored registries by compare-and-swap: missing registries
/// merged in, entries without a `versions.json` (confirmed right before the swap) taken out.
async fn reconcile_index(s: &dyn Storage, ns: &str) -> Result<()> {
    let key = index::index_key(ns);
    loop {
        let Some(current) = s.get(&key).await? else {
            return Ok(()); // readers walk and write it
        };
        let walked = index::walk(s, ns).await?.map(|l| l.to_vec()).unwrap_or_default();
        let listed = index::parse(&current.body).unwrap_or_default();
        let mut want = walked.clone();
        for r in listed.iter().filter(|r| !walked.contains(r)) {
            if s.head(&layout::versions_key(&format!("{ns}/{r}")))
                .await?
                .is_some()
            {
                want.push(r.clone());
            }
        }
        want.sort();
        want.dedup();
        if index::parse(&current.body).is_some_and(|l| l == want) {
            return Ok(());
        }
        match s
            .put(
                &key,
                index::render(&want),
                PutMode::IfVersion(current.meta.version),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StorageError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}
