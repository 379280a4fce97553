//! `rack-registry mirror <url> --namespace @ns [--token T] [--dir DIR] [--all]` (SPEC §17): copy
//! every registry and version of a namespace from a registry's read API into storage (a
//! directory, or the configured backend), the way to prepare an offline network.
//!
//! Each version is fetched, verified and stored exactly as the server's pull-through cache
//! stores it ([`crate::upstream::store`]): atomically, so an interrupted run leaves whole
//! versions only, and a second run skips what is stored (it resumes). A registry's
//! `versions.json` and `lifecycle.json` are the upstream's, written once all its versions are
//! stored. A progress bar on a terminal, a summary at the end, exit 1 if anything failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::lifecycle_key;
use rack_core::names::is_namespace;

use crate::config::{Config, ServeArgs};
use crate::storage::{LocalStorage, PutMode, Storage};
use crate::upstream::config::{base_url, Upstream};
use crate::upstream::fetch::{Client, Got};
use crate::upstream::store::{self, Fetched, Limits};
use crate::upstream::MAX_DOCUMENT_BYTES;

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The registry to copy from (its base URL, e.g. https://registry.rackjs.com)
    pub url: String,
    /// The namespace to copy (@name)
    #[arg(long)]
    pub namespace: String,
    /// A token for a namespace that needs one [env: RACK_MIRROR_TOKEN]
    #[arg(long, env = "RACK_MIRROR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Copy into this storage root directory (created if missing) instead of the configured
    /// storage (STORAGE_ROOT, or the bucket of STORAGE_BACKEND)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also copy the JSON Schemas (/schemas/<file>)
    #[arg(long)]
    pub all: bool,
    /// Seconds each request may take
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub storage: ServeArgs,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub registries: usize,
    pub copied: usize,
    pub present: usize,
    pub failed: Vec<String>,
}

pub fn run(a: MirrorArgs) -> ExitCode {
    if !is_namespace(&a.namespace) {
        eprintln!(
            "rack-registry mirror: {:?} is not a namespace (@name)",
            a.namespace
        );
        return ExitCode::from(2);
    }
    let url = match base_url(&a.url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("rack-registry mirror: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_args(&a.storage) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rack-registry mirror: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rack-registry mirror: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let up = Upstream {
        url: url.clone(),
        namespaces: vec![a.namespace.clone()],
        token: a.token.clone().filter(|t| !t.trim().is_empty()),
        max_age: Duration::ZERO,
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let limits = Limits {
        max_manifest_bytes: config.limits.max_manifest_bytes,
        max_files: config.limits.max_archive_entries,
        max_total_bytes: config.limits.max_extracted_bytes,
    };
    let result = runtime.block_on(async {
        let (storage, staging): (Arc<dyn Storage>, PathBuf) = match &a.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let marker = dir.join(layout::HEALTHCHECK_KEY);
                if !marker.exists() {
                    std::fs::write(&marker, "OK\n").map_err(|e| format!("{}: {e}", marker.display()))?;
                }
                let local = LocalStorage::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                (Arc::new(local), dir.join(".tmp"))
            }
            None => (
                crate::cli::storage::open(&config).await?,
                config.storage_root.join(".tmp"),
            ),
        };
        std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
        let target = storage.describe();
        let summary = mirror(
            &Client::new(None),
            &up,
            storage.as_ref(),
            &staging,
            limits,
            &a.namespace,
            a.all,
        )
        .await?;
        Ok::<_, String>((target, summary))
    });
    match result {
        Ok((target, s)) => {
            println!(
                "mirrored {} from {url} into {target}: {} registries, {} versions copied, {} already there, {} failed",
                a.namespace,
                s.registries,
                s.copied,
                s.present,
                s.failed.len()
            );
            for f in &s.failed {
                eprintln!("  failed: {f}");
            }
            if s.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("rack-registry mirror: run it again to retry what failed (what is stored is kept)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("rack-registry mirror: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A document of the upstream: `None` for a 404.
async fn document(client: &Client, up: &Upstream, path: &str) -> Result<Option<Bytes>, String> {
    match client.get(up, path, None, MAX_DOCUMENT_BYTES).await {
        Ok(Got::Body { bytes, .. }) => Ok(Some(bytes)),
        Ok(Got::Gone(_)) => Ok(None),
        Ok(Got::NotModified) => Err(format!("{path}: unexpected 304")),
        Err(e) => Err(format!("{}{path}: {e}", up.url)),
    }
}

/// Copy namespace `ns` of `up` into `storage` (see the module docs).
pub async fn mirror(
    client: &Client,
    up: &Upstream,
    storage: &dyn Storage,
    staging: &std::path::Path,
    limits: Limits,
    ns: &str,
    all: bool,
) -> Result<Summary, String> {
    let listing = document(client, up, &format!("/namespaces/{ns}/registries"))
        .await?
        .ok_or_else(|| format!("{} has no namespace {ns}", up.url))?;
    let registries = rack_core::listing::parse_index(&listing)
        .filter(|l| l.iter().all(|r| r.split('/').all(rack_core::names::is_segment)))
        .ok_or_else(|| format!("{}: the registry listing of {ns} is not one", up.url))?;
    // The version lists first, so the progress bar knows its length.
    let mut plan = Vec::new();
    let mut summary = Summary {
        registries: registries.len(),
        ..Summary::default()
    };
    for name in &registries {
        let registry = format!("{ns}/{name}");
        let path = format!("/registries/{registry}/versions");
        match document(client, up, &path).await {
            Ok(Some(body)) => match VersionsFile::parse(&body) {
                Some(f) => plan.push((registry, body, f.versions)),
                None => summary
                    .failed
                    .push(format!("{registry}: versions.json is not one")),
            },
            Ok(None) => summary.failed.push(format!("{registry}: listed but not found")),
            Err(e) => summary.failed.push(e),
        }
    }
    let total: u64 = plan.iter().map(|(_, _, v)| v.len() as u64).sum();
    let bar = progress(total);
    for (registry, versions_body, versions) in plan {
        let mut complete = true;
        for v in &versions {
            bar.set_message(format!("{registry}@{v}"));
            match store::is_stored(storage, &registry, v).await {
                Ok(true) => summary.present += 1,
                Ok(false) => {
                    match store::fetch_version(client, up, storage, staging, limits, &registry, v).await {
                        Ok(Fetched::Stored) => summary.copied += 1,
                        Ok(Fetched::Gone(code)) => {
                            complete = false;
                            summary
                                .failed
                                .push(format!("{registry}@{v}: listed, but the upstream answers {code}"));
                        }
                        Err(e) => {
                            complete = false;
                            summary.failed.push(format!("{registry}@{v}: {e}"));
                        }
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
            bar.inc(1);
        }
        if complete {
            // The upstream's own documents, byte for byte, once every version they name is here.
            let key = layout::versions_key(&registry);
            storage
                .put(&key, versions_body, PutMode::Overwrite)
                .await
                .map_err(|e| e.to_string())?;
            let lc_key = lifecycle_key(&registry);
            match document(client, up, &format!("/-/lifecycle/{registry}")).await {
                Ok(Some(body)) if crate::storage::lifecycle::parse(&body).is_some() => {
                    storage
                        .put(&lc_key, body, PutMode::Overwrite)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(_) => {}
                Err(e) => summary.failed.push(e),
            }
        }
    }
    bar.finish_and_clear();
    if storage.publish_lists_version() {
        crate::storage::index::rebuild(storage, ns)
            .await
            .map_err(|e| e.to_string())?;
    }
    if all {
        for file in rack_core::route::SCHEMA_FILES {
            match document(client, up, &format!("/schemas/{file}")).await {
                Ok(Some(body)) => storage
                    .put(&format!("schema/{file}"), body, PutMode::Overwrite)
                    .await
                    .map_err(|e| e.to_string())?,
                Ok(None) => continue,
                Err(e) => {
                    summary.failed.push(e);
                    continue;
                }
            };
        }
    }
    Ok(summary)
}

/// A progress bar on a terminal (stderr), nothing otherwise.
fn progress(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} versions {msg}") {
        bar.set_style(style);
    }
    bar
}
