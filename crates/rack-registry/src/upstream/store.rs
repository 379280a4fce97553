//! One version fetched from an upstream, verified, and stored with the publish rules of the
//! configured storage (SPEC §17): the same keys, one `rename(2)` on disk, the lease protocol of
//! §11.2 on a bucket (two replicas fetching one version at once store it once), an integrity
//! record either way. Shared by reads of upstream namespaces and `rack-registry mirror`.
//!
//! Nothing is stored unless all of it holds: `registry.json` is JSON and names exactly the
//! requested namespace, registry and version (SPEC §5.4's path rules decide the registry);
//! within the upload limits of §5.3 (manifest size, number of files, total size, each body
//! abandoned as soon as it crosses what is left); only the files the manifest declares are
//! fetched, at keys validated like every key; every declared file exists upstream.

use std::path::Path;

use rack_core::layout;
use rack_core::manifest::{declared_files, identity};

use super::config::Upstream;
use super::fetch::{Client, Failure, Got};
use crate::storage::{validate_key, Storage, StorageError};

/// The limits a fetched version must respect (those of uploads).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    pub max_files: u64,
    pub max_total_bytes: u64,
}

/// Who hears that a fetched version is stored on a bucket: nobody (it was announced where it
/// was published); and the upstream's `versions.json`, stored already, does not make it
/// "published" here.
struct FromUpstream;

#[async_trait::async_trait]
impl crate::storage::publish::Announce for FromUpstream {
    async fn listed(&self, _registry: &str, _version: &str, _manifest: &[u8]) {}
    fn listing_decides(&self) -> bool {
        false
    }
}

/// What became of a fetch.
#[derive(Debug)]
pub enum Fetched {
    /// Stored now (or by someone else meanwhile).
    Stored,
    /// The upstream has no such version (404), or deleted it (410).
    Gone(u16),
}

/// Why a version could not be stored.
#[derive(Debug)]
pub enum StoreError {
    Upstream(Failure),
    Storage(StorageError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Upstream(failure) => write!(f, "upstream {failure}"),
            StoreError::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> StoreError {
        StoreError::Upstream(f)
    }
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> StoreError {
        StoreError::Storage(e)
    }
}

fn hostile(up: &Upstream, why: String) -> StoreError {
    tracing::warn!(upstream = %up.url, reason = %why, "upstream version refused: nothing stored");
    StoreError::Upstream(Failure::Refused(why))
}

/// Fetch `registry@version` from `up` and store it (see the module docs). `staging_root` is the
/// storage root's `.tmp`.
pub async fn fetch_version(
    client: &Client,
    up: &Upstream,
    storage: &dyn Storage,
    staging_root: &Path,
    limits: Limits,
    registry: &str,
    version: &str,
) -> Result<Fetched, StoreError> {
    let base = format!("/registries/{registry}/{version}");
    let manifest = match client.get(up, &base, None, limits.max_manifest_bytes).await? {
        Got::Body { bytes, .. } => bytes,
        Got::Gone(code) => return Ok(Fetched::Gone(code)),
        Got::NotModified => return Err(Failure::Refused("unexpected 304".into()).into()),
    };
    let (doc, id) = identity(&manifest).map_err(|e| {
        hostile(
            up,
            format!("registry.json of {registry}@{version}: {}", e.message),
        )
    })?;
    let wanted = format!("{registry}/{version}");
    if id.version_path() != wanted {
        return Err(hostile(
            up,
            format!(
                "asked for {wanted}, registry.json names {}",
                crate::storage::bounded(&id.version_path(), 256)
            ),
        ));
    }
    let files = declared_files(&doc);
    if files.len() as u64 > limits.max_files {
        return Err(hostile(
            up,
            format!("{wanted} declares more than {} files", limits.max_files),
        ));
    }
    for path in &files {
        validate_key(&format!("{wanted}/{path}"))
            .map_err(|_| hostile(up, format!("{wanted} declares an unusable path")))?;
        if path == "registry.json" {
            return Err(hostile(
                up,
                format!("{wanted} declares registry.json as a template file"),
            ));
        }
    }

    let staging = crate::upload::staging::Staging::create(staging_root)
        .await
        .map_err(|e| StorageError::Io {
            key: staging_root.display().to_string(),
            source: e,
        })?;
    let tree = staging.tree();
    let outcome = async {
        let io = |e: std::io::Error| StorageError::Io {
            key: tree.display().to_string(),
            source: e,
        };
        tokio::fs::create_dir(&tree).await.map_err(io)?;
        tokio::fs::write(tree.join("registry.json"), &manifest)
            .await
            .map_err(io)?;
        let mut left = limits.max_total_bytes.saturating_sub(manifest.len() as u64);
        for path in &files {
            let dest = tree.join(path);
            match client
                .get_to_file(up, &format!("{base}/files/{path}"), &dest, left)
                .await?
            {
                Ok(n) => left -= n,
                Err(code) => {
                    return Err(hostile(
                        up,
                        format!("{wanted} declares {path}, which the upstream answers {code}"),
                    ));
                }
            }
        }
        let announce = FromUpstream;
        match storage.publish_dir(&tree, &wanted, &announce).await {
            Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(StoreError::Storage(e)),
        }
        // A bucket's publish lists the version; on disk it is merged here, so a registry never
        // holds a version without a versions.json (a refresh from upstream replaces it anyway).
        if !storage.publish_lists_version() {
            crate::storage::lifecycle::relist(storage, registry, Some(version)).await?;
        }
        Ok(Fetched::Stored)
    }
    .await;
    staging.remove().await;
    if matches!(outcome, Ok(Fetched::Stored)) {
        tracing::info!(upstream = %up.url, version = %wanted, files = files.len(), "stored a version from upstream");
    }
    outcome
}

/// Whether `registry@version` is stored (its `registry.json` exists).
pub async fn is_stored(storage: &dyn Storage, registry: &str, version: &str) -> Result<bool, StorageError> {
    Ok(storage
        .head(&layout::manifest_key(registry, version))
        .await?
        .is_some())
}
