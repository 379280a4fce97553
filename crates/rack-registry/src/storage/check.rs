//! `rack-registry storage check [--repair]` (SPEC §11.2): every violated invariant of SPEC §3,
//! on disk and in a bucket, and how to fix it.
//!
//! Invariants: each registry (a directory holding `versions.json` or a version directory) has a
//! `versions.json` listing exactly its versions that have a `registry.json`, SemVer descending
//! (its formatting is not judged: the reference server's is accepted); no version directory lacks its
//! `registry.json`; no publish lease has expired unfinished; on a bucket each namespace index
//! lists exactly the namespace's registries.

use bytes::Bytes;
use rack_core::layout::{self, VersionsFile};
use rack_core::names::{is_namespace, is_segment, is_version};

use super::{index, publish, PutMode, Result, Storage};

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
    /// Write this `versions.json`.
    Versions(String, VersionsFile),
    /// Remove a version directory without `registry.json`.
    Delete(String),
    /// Finish expired leases ([`publish::sweep_all`]).
    Leases,
    /// Rebuild a namespace index.
    Index(String),
}

/// Every registry directory under `dir` (a namespace or deeper), depth first.
async fn registries(s: &dyn Storage, ns: &str, out: &mut Vec<(String, Vec<String>, bool)>) -> Result<()> {
    let mut stack = vec![format!("{ns}/")];
    while let Some(dir) = stack.pop() {
        let (mut versions, mut has_versions_json) = (Vec::new(), false);
        let mut start: Option<String> = None;
        loop {
            let page = s.list(&dir, true, start.as_deref(), 1000).await?;
            has_versions_json |= page
                .objects
                .iter()
                .any(|o| o.key == format!("{dir}versions.json"));
            for p in &page.prefixes {
                let name = p[dir.len()..].trim_end_matches('/');
                if is_version(name) {
                    versions.push(name.to_owned());
                } else if is_segment(name) {
                    stack.push(p.clone());
                }
            }
            match page.next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
        if has_versions_json || !versions.is_empty() {
            out.push((dir.trim_end_matches('/').to_owned(), versions, has_versions_json));
        }
    }
    Ok(())
}

/// Every violated invariant (`bucket`: also the namespace indexes).
pub async fn check(s: &dyn Storage, bucket: bool) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut namespaces = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = s.list("", true, start.as_deref(), 1000).await?;
        namespaces.extend(
            page.prefixes
                .iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .filter(|n| is_namespace(n)),
        );
        match page.next {
            Some(n) => start = Some(n),
            None => break,
        }
    }
    for ns in &namespaces {
        let mut regs = Vec::new();
        registries(s, ns, &mut regs).await?;
        for (registry, dirs, has_file) in regs {
            let mut published = Vec::new();
            for v in &dirs {
                if s.head(&layout::manifest_key(&registry, v)).await?.is_some() {
                    published.push(v.clone());
                } else {
                    let prefix = format!("{registry}/{v}/");
                    // Not while its publish is in flight (a live lease): the sweep decides.
                    if s.head(&format!("{}{registry}/{v}", publish::LEASES))
                        .await?
                        .is_none()
                    {
                        problems.push(Problem {
                            what: "version directory without registry.json".into(),
                            fix: Fix::Delete(prefix.clone()),
                            key: prefix,
                        });
                    }
                }
            }
            let want = VersionsFile::from_versions(&published);
            let key = layout::versions_key(&registry);
            let what = if !has_file {
                Some("missing versions.json".to_owned())
            } else {
                match s.get(&key).await? {
                    None => Some("missing versions.json".to_owned()),
                    Some(obj) => match VersionsFile::parse(&obj.body) {
                        None => Some("versions.json is not {\"versions\": [...]}".to_owned()),
                        Some(f) if f.versions != want.versions => Some(format!(
                            "versions.json lists {:?}, stored versions are {:?}",
                            f.versions, want.versions
                        )),
                        Some(_) => None,
                    },
                }
            };
            if let Some(what) = what {
                problems.push(Problem {
                    key: key.clone(),
                    what,
                    fix: Fix::Versions(key, want),
                });
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
    let now = crate::clock::now_ms();
    let mut start: Option<String> = None;
    loop {
        let page = s.list(publish::LEASES, false, start.as_deref(), 1000).await?;
        for lease in &page.objects {
            let expired = match s.get(&lease.key).await? {
                Some(o) => serde_json::from_slice::<publish::LeaseRecord>(&o.body)
                    .map_or(true, |r| r.expires_at <= now),
                None => false,
            };
            if expired {
                problems.push(Problem {
                    key: lease.key.clone(),
                    what: "expired publish lease (a publisher died mid-publish)".into(),
                    fix: Fix::Leases,
                });
            }
        }
        match page.next {
            Some(n) => start = Some(n),
            None => break,
        }
    }
    Ok(problems)
}

/// Fix every problem [`check`] finds: first finish expired leases (which can settle other
/// problems), then check again and fix the rest. Returns what is still wrong (nothing, unless
/// the storage changed meanwhile).
pub async fn repair(s: &dyn Storage, bucket: bool) -> Result<Vec<Problem>> {
    publish::sweep_all(s).await?;
    // A fix can reveal another (a registry given its versions.json now belongs in the
    // namespace index): a few passes.
    for _ in 0..3 {
        let problems = check(s, bucket).await?;
        if problems.is_empty() {
            break;
        }
        for p in &problems {
            if let Fix::Delete(prefix) = &p.fix {
                s.delete_prefix(prefix).await?;
            }
        }
        for p in &problems {
            if let Fix::Versions(key, file) = &p.fix {
                s.put(key, Bytes::from(file.render()), PutMode::Overwrite).await?;
            }
        }
        for p in &problems {
            if let Fix::Index(ns) = &p.fix {
                index::rebuild(s, ns).await?;
            }
        }
    }
    check(s, bucket).await
}
