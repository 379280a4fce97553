//! `rack-registry storage push|pull <dir>` (SPEC §11.5): copy a storage root to the configured
//! storage (a bucket, or a local root) and back, skipping objects that are already identical.
//!
//! Identical means same size and same MD5: a bucket's ETag of a single-part upload is the
//! quoted MD5 of its bytes (S3, R2, MinIO, moto), so a second push reads nothing but one
//! listing. Where the version is not an MD5 (the local backend, multipart uploads) the object is
//! read and compared. The server's own working state (`.tmp/`, `.webhooks/`, leases, the bucket outbox) is
//! never copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::{Args, Subcommand};
use md5::{Digest, Md5};

use crate::config::{Backend, Config, ServeArgs};
use crate::server::ServeError;
use crate::storage::{check, index, staged_files, validate_key, LocalStorage, ObjectMeta, PutMode, Storage};

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Upload a storage root directory to the configured storage, skipping identical objects
    Push(Transfer),
    /// Download the configured storage into a directory (a backup), skipping identical files
    Pull(Transfer),
    /// Report every violated storage invariant (exit 1 if any); --repair fixes them
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AuthPush {
    /// The auth.json file
    pub file: PathBuf,
    #[command(flatten)]
    pub storage: ServeArgs,
}

/// Where `auth push` writes the policy (SPEC §3, bucket only by convention).
pub const AUTH_KEY: &str = ".auth/auth.json";

/// `auth push <file>`: the same verdict as `auth check` (nothing written on any rejection), then
/// the file's bytes to `.auth/auth.json`.
pub fn run_auth_push(a: AuthPush) -> ExitCode {
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rack-registry auth push: cannot read {}: {e}", a.file.display());
            return ExitCode::from(2);
        }
    };
    let (report, ok) = crate::cli::tokens::check_report(&text, crate::state::now_ms());
    print!("{report}");
    if !ok {
        eprintln!("rack-registry auth push: refused (fix the rejected namespaces first); nothing written");
        return ExitCode::FAILURE;
    }
    let config = match Config::from_args(&a.storage) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rack-registry auth push: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let storage = open(&config).await.map_err(ServeError::Config)?;
        storage
            .put(AUTH_KEY, Bytes::from(text.into_bytes()), PutMode::Overwrite)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, ServeError>(storage.describe())
    });
    match result {
        Ok(target) => {
            println!("{target}: wrote {AUTH_KEY}");
            ExitCode::SUCCESS
        }
        Err(e) => failed("auth push", e),
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Fix what is found (safe while servers publish: compare-and-swap merges, deletions only
    /// under a publish lease this command holds)
    #[arg(long)]
    pub repair: bool,
    /// Hash every listed version's files against its integrity record (default: sizes only)
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub storage: ServeArgs,
}

#[derive(Debug, Args)]
pub struct Transfer {
    /// The local storage root directory
    pub dir: PathBuf,
    /// Only print what would be copied
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub storage: ServeArgs,
}

/// The server's working state, never data. Integrity records (`.rack/integrity/`) are data:
/// they travel with their versions.
const WORKING_STATE: [&str; 8] = [
    ".tmp/",
    ".webhooks/",
    ".rack/leases/",
    ".rack/oidc/",
    ".rack/outbox/",
    ".rack/probe/",
    ".rack/sessions/",
    ".rack/ui/",
];

fn is_working_state(key: &str) -> bool {
    WORKING_STATE.iter().any(|p| key.starts_with(p))
}

/// What a push or pull did (or would do, with `--dry-run`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub copied: u64,
    pub unchanged: u64,
    /// Files whose name is not a storage key (pushed nowhere).
    pub skipped: u64,
    /// Namespace indexes rebuilt after a push.
    pub indexes: u64,
}

fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Whether `remote` (metadata) holds exactly `body`, reading it only if its version is not an MD5.
async fn same(storage: &dyn Storage, remote: &ObjectMeta, body: &[u8]) -> Result<bool, String> {
    if remote.size != body.len() as u64 {
        return Ok(false);
    }
    let tag = remote.version.trim_matches('"');
    if tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(tag.eq_ignore_ascii_case(&md5_hex(body)));
    }
    let current = storage.get(&remote.key).await.map_err(|e| e.to_string())?;
    Ok(current.is_some_and(|o| o.body[..] == *body))
}

/// Every object of `storage` except working state, by key.
async fn listing(storage: &dyn Storage) -> Result<HashMap<String, ObjectMeta>, String> {
    let mut all = HashMap::new();
    let mut start: Option<String> = None;
    loop {
        let page = storage
            .list("", false, start.as_deref(), 1000)
            .await
            .map_err(|e| e.to_string())?;
        for o in page.objects {
            if !is_working_state(&o.key) {
                all.insert(o.key.clone(), o);
            }
        }
        match page.next {
            Some(n) => start = Some(n),
            None => return Ok(all),
        }
    }
}

/// Upload every file under `dir` that differs from what `storage` holds; on a bucket
/// (`rebuild_indexes`), then rewrite the index of every namespace pushed (SPEC §11.5).
pub async fn push(
    storage: &dyn Storage,
    dir: &Path,
    dry_run: bool,
    rebuild_indexes: bool,
) -> Result<Counts, String> {
    let files = staged_files(dir).map_err(|e| e.to_string())?;
    let remote = listing(storage).await?;
    let mut counts = Counts::default();
    for rel in files.iter().filter(|f| !is_working_state(f)) {
        if validate_key(rel).is_err() {
            eprintln!("skipped (not a storage key): {rel:?}");
            counts.skipped += 1;
            continue;
        }
        let body = std::fs::read(dir.join(rel)).map_err(|e| format!("{}: {e}", dir.join(rel).display()))?;
        if let Some(meta) = remote.get(rel) {
            if same(storage, meta, &body).await? {
                counts.unchanged += 1;
                continue;
            }
        }
        counts.copied += 1;
        if !dry_run {
            storage
                .put(rel, Bytes::from(body), PutMode::Overwrite)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if rebuild_indexes && !dry_run {
        let mut namespaces: Vec<&str> = files
            .iter()
            .filter_map(|f| f.split_once('/').map(|(ns, _)| ns))
            .filter(|ns| rack_core::names::is_namespace(ns))
            .collect();
        namespaces.dedup();
        for ns in namespaces {
            if index::rebuild(storage, ns)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                counts.indexes += 1;
            }
        }
    }
    Ok(counts)
}

/// Download every object of `storage` (but working state) that differs from the file under `dir`.
pub async fn pull(storage: &dyn Storage, dir: &Path, dry_run: bool) -> Result<Counts, String> {
    let mut remote: Vec<ObjectMeta> = listing(storage).await?.into_values().collect();
    remote.sort_by(|a, b| a.key.cmp(&b.key));
    let mut counts = Counts::default();
    for meta in remote {
        // Namespace indexes are derived (push rebuilds them); keys come back from storage
        // validated on the way in, and are checked again before they become a path.
        if index::is_index_key(&meta.key) {
            continue;
        }
        if validate_key(&meta.key).is_err() || meta.key.ends_with('/') {
            counts.skipped += 1;
            continue;
        }
        let path = dir.join(&meta.key);
        if let Ok(local) = std::fs::read(&path) {
            if same(storage, &meta, &local).await? {
                counts.unchanged += 1;
                continue;
            }
        }
        counts.copied += 1;
        if dry_run {
            continue;
        }
        let Some(obj) = storage.get(&meta.key).await.map_err(|e| e.to_string())? else {
            counts.copied -= 1; // deleted since the listing
            continue;
        };
        let parent = path.parent().expect("a key has a parent under dir");
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        std::io::Write::write_all(&mut tmp, &obj.body).map_err(|e| format!("{}: {e}", path.display()))?;
        tmp.persist(&path)
            .map_err(|e| format!("{}: {}", path.display(), e.error))?;
    }
    Ok(counts)
}

/// Report a command's failure: an unusable storage (unreachable or missing bucket, refused
/// credentials, failed probe, missing root) is a configuration error, exit 2 as for `serve`
/// (SPEC §10); a failure of the work itself is exit 1.
fn failed(command: &str, e: ServeError) -> ExitCode {
    eprintln!("rack-registry {command}: {e}");
    ExitCode::from(e.exit_code())
}

/// [`open`], and for a command whose writes rely on compare-and-swap (`check --repair`) the
/// conditional-write probe of a bucket too, as `serve` runs it (`STORAGE_SINGLE_WRITER=true`
/// accepts a store that fails it).
async fn open_for_cas(config: &Config) -> Result<Arc<dyn Storage>, String> {
    match &config.backend {
        Backend::Local => open(config).await,
        Backend::R2(b) | Backend::S3(b) => {
            let s3 = crate::server::connect_bucket(b).await?;
            Ok(Arc::new(crate::server::probe_bucket(s3, b.single_writer).await?))
        }
    }
}

/// The configured storage, for an operator command: a bucket must be reachable; a local root
/// must exist (it is never created here).
pub async fn open(config: &Config) -> Result<Arc<dyn Storage>, String> {
    match &config.backend {
        Backend::Local => {
            let local = LocalStorage::open(&config.storage_root)
                .map_err(|e| format!("storage root {}: {e}", config.storage_root.display()))?;
            Ok(Arc::new(local))
        }
        Backend::R2(b) | Backend::S3(b) => Ok(Arc::new(crate::server::connect_bucket(b).await?)),
    }
}

/// `storage check [--repair]`.
fn run_check(a: CheckArgs) -> ExitCode {
    let config = match Config::from_args(&a.storage) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rack-registry storage check: {e}");
            return ExitCode::from(2);
        }
    };
    let bucket = !matches!(config.backend, Backend::Local);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let storage = if a.repair {
            open_for_cas(&config).await
        } else {
            open(&config).await
        }
        .map_err(ServeError::Config)?;
        let found = check::check(storage.as_ref(), bucket, a.deep)
            .await
            .map_err(|e| e.to_string())?;
        let timing = match &config.backend {
            Backend::Local => crate::storage::publish::Timing::default(),
            Backend::R2(b) | Backend::S3(b) => crate::storage::publish::Timing {
                ttl: b.lease,
                call: b.timeout,
                ..Default::default()
            },
        };
        let left = if a.repair && !found.is_empty() {
            // No webhook outbox here: a dead publisher's visible version is left to a
            // server's sweep, which announces it.
            check::repair(
                storage.as_ref(),
                bucket,
                a.deep,
                timing,
                &crate::storage::publish::Unable,
            )
            .await
            .map_err(|e| e.to_string())?
        } else {
            found.clone()
        };
        Ok::<_, ServeError>((storage.describe(), found, left))
    });
    match result {
        Ok((target, found, left)) => {
            for p in &found {
                println!("{}: {}", p.key, p.what);
            }
            if found.is_empty() {
                println!("{target}: clean");
            } else if a.repair {
                println!(
                    "{target}: {} problem(s) found, {} left after repair",
                    found.len(),
                    left.len()
                );
            } else {
                println!("{target}: {} problem(s) found (fix with --repair)", found.len());
            }
            if left.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failed("storage check", e),
    }
}

pub fn run(cmd: StorageCommand) -> ExitCode {
    let (name, t, is_push) = match cmd {
        StorageCommand::Push(t) => ("push", t, true),
        StorageCommand::Pull(t) => ("pull", t, false),
        StorageCommand::Check(a) => return run_check(a),
    };
    let config = match Config::from_args(&t.storage) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rack-registry storage {name}: {e}");
            return ExitCode::from(2);
        }
    };
    if is_push && !t.dir.is_dir() {
        eprintln!(
            "rack-registry storage push: {} is not a directory",
            t.dir.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let storage = open(&config).await.map_err(ServeError::Config)?;
        if is_push {
            let bucket = !matches!(config.backend, Backend::Local);
            push(storage.as_ref(), &t.dir, t.dry_run, bucket).await
        } else {
            pull(storage.as_ref(), &t.dir, t.dry_run).await
        }
        .map(|c| (storage.describe(), c))
        .map_err(ServeError::Failed)
    });
    match result {
        Ok((target, c)) => {
            let verb = match (is_push, t.dry_run) {
                (true, false) => "uploaded",
                (true, true) => "would upload",
                (false, false) => "downloaded",
                (false, true) => "would download",
            };
            println!(
                "{target}: {verb} {}, unchanged {}, skipped {}, namespace indexes rebuilt {}",
                c.copied, c.unchanged, c.skipped, c.indexes
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed(&format!("storage {name}"), e),
    }
}

/// The async runtime of a command (a failure to start it is reported and is the exit status).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("rack-registry: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}
