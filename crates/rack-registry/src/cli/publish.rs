//! `rack-registry publish <dir>`: pack a registry directory the way the server expects, compute
//! its checksum and upload it to `POST /registries` (SPEC §5, §13).
//!
//! # Design
//!
//! The command is a small pipeline of separate, unit-testable steps:
//!
//! 1. [`read_manifest`]: `<dir>/registry.json` must be a regular file (a symlink or directory is
//!    "not found", as in an archive), at most 1 MiB, and pass
//!    [`rack_core::manifest::identity`] (check 7).
//! 2. [`scan`]: the archive is EXACTLY `registry.json` plus the files the manifest declares
//!    ([`rack_core::manifest::declared_files`], which only yields valid
//!    [`rack_core::names::is_file_path`] paths, normalized without `./`). Nothing else in the
//!    directory is looked at, so a stray `.DS_Store` or editor backup can never cause
//!    `UNDECLARED_FILE`. Each path is examined with `symlink_metadata`, component by component:
//!    a symlink (at the path or at one of its parent directories), a directory or a special file
//!    is not a regular file, exactly like a link entry at a declared path on the server.
//! 3. [`check_limits`] then [`pack`]: a gzip'd tar of regular-file entries only, in a fixed
//!    order (`registry.json` first, then the declared paths sorted), with mtime 0, uid/gid 0, no
//!    owner names and mode 0644 (0755 when the file is executable on disk), so the same directory
//!    always gives the same bytes and the same [`checksum`] (lowercase hex SHA-256).
//! 4. `--dry-run` only: schema validation with the bundled registry-item schema
//!    ([`crate::validate`], check 10).
//! 5. [`rack_core::manifest::check_entries`] over what [`scan`] saw (check 11: every declared
//!    file is a regular file).
//! 6. [`upload`]: `multipart/form-data` with the file part `package`
//!    (`<name>-<version>.tar.gz`, `application/gzip`) and the text field `checksum`, token in
//!    `Authorization: Bearer`; [`interpret`] turns the answer into the published path or the
//!    server's `code` and `message`.
//!
//! The rules are never re-implemented here: every check calls the same `rack-core` or
//! [`crate::validate`] function as the server's upload pipeline and fails with the same
//! [`ApiError`] (code and message of SPEC §12). Where the server checks things that depend on
//! the manifest (limits, checks 2 and 6) before the manifest itself (check 7), the local order
//! has to read the manifest first; otherwise the order is the server's. The server-only checks
//! (token, namespace declared, permissions, version exists: checks 0, 8, 9, 13) are left to the
//! server.
//!
//! A real publish runs the same local checks except the schema: the server validates against
//! its own `SCHEMA_DIR/registry-item.json`, which an operator may have changed, so the server is
//! the judge there. A missing or non-regular declared file is refused before uploading
//! (it could not be packed anyway), with the server's `FILE_NOT_FOUND` code and message.
//!
//! A `503` (the server's upload queue is full, or storage is briefly unavailable) or `429`
//! (rate limit) means "not now": the upload is sent again after the answer's `Retry-After`
//! (at most [`MAX_RETRY_WAIT`]; without one, a doubling delay), at most `--retries` times
//! ([`upload_with_retries`]).
//!
//! Exit status: 0 success, 1 the package was rejected (locally or by the server) or could not
//! be read, 2 usage error (no token), 3 the upload could not be completed (network error,
//! timeout, an answer that is not the registry's JSON, such as a proxy's 502, or still 503 or
//! 429 after the last retry): retrying later may help.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rack_core::manifest::{check_entries, declared_files, identity, EntryKind, Identity};
use rack_core::ApiError;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Directory holding registry.json and the files it declares
    pub dir: PathBuf,
    /// Registry server URL
    #[arg(long, env = "RACK_REGISTRY_URL", default_value = "http://localhost:8080")]
    pub url: String,
    /// Token with publish rights (or the admin token)
    #[arg(long, env = "RACK_REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run the server's checks locally and upload nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Times to send the upload again after a 503 or 429 answer (each after the answer's
    /// Retry-After, at most 60 s)
    #[arg(long, env = "RACK_REGISTRY_RETRIES", default_value_t = 5)]
    pub retries: u32,
}

/// The server's default upload limits (SPEC §5.1 check 2, §5.3, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MAX_UPLOAD_BYTES`: the package (the request body adds a few hundred bytes).
    pub upload_bytes: u64,
    /// `MAX_EXTRACTED_BYTES`: the sum of the packed files' sizes.
    pub extracted_bytes: u64,
    /// `MAX_MANIFEST_BYTES`: `registry.json`.
    pub manifest_bytes: u64,
    /// `MAX_ARCHIVE_ENTRIES`: entries of the archive.
    pub entries: u64,
}

pub const DEFAULT_LIMITS: Limits = Limits {
    upload_bytes: rack_core::limits::MAX_UPLOAD_BYTES,
    extracted_bytes: rack_core::limits::MAX_EXTRACTED_BYTES,
    manifest_bytes: rack_core::limits::MAX_MANIFEST_BYTES,
    entries: rack_core::limits::MAX_ARCHIVE_ENTRIES,
};

/// Why a publish failed, and so the exit status.
#[derive(Debug)]
pub enum Failure {
    /// A check of the upload pipeline refused the package, locally or on the server.
    Rejected(Rejection),
    /// A local file could not be read (permissions, I/O error...).
    Local(String),
    /// No token and not a dry run.
    Usage(String),
    /// The upload could not be completed, or the answer was not the registry's.
    Transport(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Rejected(_) | Failure::Local(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Transport(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Rejected(r) => r.fmt(f),
            Failure::Local(m) | Failure::Usage(m) | Failure::Transport(m) => f.write_str(m),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Rejected(Rejection {
            status: e.status(),
            code: e.code().to_owned(),
            message: e.message,
        })
    }
}

/// An error answer of the upload pipeline: status, `code` and `message` (SPEC §12). Kept as
/// strings so that a code this client does not know is still shown verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// `registry.json` as read from the directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub doc: Value,
    pub identity: Identity,
}

/// A file to put in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path inside the archive (normalized, no leading `./`).
    pub path: String,
    /// Where it is on disk.
    pub source: PathBuf,
    pub size: u64,
    pub executable: bool,
}

/// What [`scan`] found: the kind of every archive path that exists (for
/// [`check_entries`]) and the regular files to pack, in archive order.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub entries: BTreeMap<String, EntryKind>,
    pub files: Vec<SourceFile>,
}

/// A package ready to upload.
#[derive(Debug, Clone)]
pub struct Package {
    pub identity: Identity,
    /// Archive paths, in archive order.
    pub files: Vec<String>,
    pub bytes: Vec<u8>,
    pub checksum: String,
}

impl Package {
    /// The file name of the upload part: `<name>-<version>.tar.gz`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.tar.gz", self.identity.name, self.identity.version)
    }
}

fn local(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::Local(format!("cannot {what} {}: {e}", path.display()))
}

/// Step 1: `<dir>/registry.json`, checked like the server checks the archive's (checks 6, 7).
pub fn read_manifest(dir: &Path, limits: &Limits) -> Result<Manifest, Failure> {
    if !dir.is_dir() {
        return Err(Failure::Local(format!("{} is not a directory", dir.display())));
    }
    let path = dir.join("registry.json");
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => m,
        Ok(_) => return Err(not_found_manifest().into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found_manifest().into()),
        Err(e) => return Err(local("read", &path, e)),
    };
    if meta.len() > limits.manifest_bytes {
        return Err(ApiError::manifest_too_large(limits.manifest_bytes).into());
    }
    let bytes = std::fs::read(&path).map_err(|e| local("read", &path, e))?;
    let (doc, identity) = identity(&bytes)?;
    Ok(Manifest { bytes, doc, identity })
}

fn not_found_manifest() -> ApiError {
    ApiError::manifest_not_found()
}

/// The archive paths of a manifest: `registry.json` first, then every declared file, sorted
/// (a declared `registry.json` is not packed twice).
pub fn archive_paths(doc: &Value) -> Vec<String> {
    let declared = declared_files(doc);
    std::iter::once("registry.json".to_owned())
        .chain(declared.into_iter().filter(|p| p != "registry.json"))
        .collect()
}

/// Step 2: what each archive path is on disk, without following any symlink. Paths that do not
/// exist are left out of `entries`; only regular files go to `files`.
pub fn scan(dir: &Path, paths: &[String]) -> Result<Scan, Failure> {
    let mut out = Scan::default();
    for rel in paths {
        let Some((kind, meta)) = kind_of(dir, rel)? else {
            continue;
        };
        out.entries.insert(rel.clone(), kind);
        if kind == EntryKind::File {
            out.files.push(SourceFile {
                path: rel.clone(),
                source: dir.join(rel),
                size: meta.len(),
                executable: is_executable(&meta),
            });
        }
    }
    Ok(out)
}

/// The kind of `dir/rel`, walking `rel` one component at a time with `symlink_metadata`: a
/// symlink anywhere on the way is [`EntryKind::Special`], a missing component or a parent that
/// is not a directory is `None`.
fn kind_of(dir: &Path, rel: &str) -> Result<Option<(EntryKind, std::fs::Metadata)>, Failure> {
    debug_assert!(rack_core::names::is_file_path(rel), "{rel}");
    let segments: Vec<&str> = rel.split('/').collect();
    let mut at = dir.to_path_buf();
    for (i, seg) in segments.iter().enumerate() {
        at.push(seg);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(local("inspect", &at, e)),
        };
        let ty = meta.file_type();
        let last = i + 1 == segments.len();
        let kind = if ty.is_symlink() {
            EntryKind::Special
        } else if ty.is_dir() {
            EntryKind::Dir
        } else if ty.is_file() {
            EntryKind::File
        } else {
            EntryKind::Special
        };
        match (last, kind) {
            (true, _) => return Ok(Some((kind, meta))),
            (false, EntryKind::Dir) => {}
            (false, EntryKind::Special) => return Ok(Some((EntryKind::Special, meta))),
            (false, EntryKind::File) => return Ok(None),
        }
    }
    unreachable!("a file path has at least one segment")
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Step 3a: the extraction limits of SPEC §5.3 (check 6), before anything is read.
pub fn check_limits(files: &[SourceFile], limits: &Limits) -> Result<(), ApiError> {
    if files.len() as u64 > limits.entries {
        return Err(ApiError::too_many_entries(limits.entries));
    }
    let expanded: u64 = files.iter().map(|f| f.size).sum();
    if expanded > limits.extracted_bytes {
        return Err(ApiError::expands_past(limits.extracted_bytes));
    }
    Ok(())
}

/// Step 3b: the deterministic gzip'd tar of `files`, in the order given.
pub fn pack(files: &[SourceFile]) -> io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for file in files {
        let data = std::fs::read(&file.source)?;
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(if file.executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, &file.path, data.as_slice())?;
    }
    tar.into_inner()?.finish()
}

/// Lowercase hex SHA-256 of the package bytes: the `checksum` field.
pub fn checksum(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Step 3c: the upload limit (check 2).
pub fn check_upload_size(len: u64, limits: &Limits) -> Result<(), ApiError> {
    if len > limits.upload_bytes {
        return Err(ApiError::payload_too_large(limits.upload_bytes));
    }
    Ok(())
}

/// Step 4: schema validation with the bundled registry-item schema (check 10).
pub fn check_schema(doc: &Value) -> Result<(), Failure> {
    let schema = crate::validate::registry_item_schema(None).map_err(Failure::Local)?;
    match crate::validate::validate(&schema, doc).map_err(Failure::Local)? {
        Ok(()) => Ok(()),
        Err(errors) => Err(ApiError::schema_validation_failed(&errors).into()),
    }
}

/// Steps 1 to 5: read, check and pack `dir`. `schema` runs the schema check (dry run).
pub fn prepare(dir: &Path, limits: &Limits, schema: bool) -> Result<Package, Failure> {
    let manifest = read_manifest(dir, limits)?;
    let scan = scan(dir, &archive_paths(&manifest.doc))?;
    check_limits(&scan.files, limits)?;
    let bytes = pack(&scan.files).map_err(|e| local("pack", dir, e))?;
    check_upload_size(bytes.len() as u64, limits)?;
    if schema {
        check_schema(&manifest.doc)?;
    }
    check_entries(&scan.entries, &declared_files(&manifest.doc))?;
    Ok(Package {
        checksum: checksum(&bytes),
        identity: manifest.identity,
        files: scan.files.into_iter().map(|f| f.path).collect(),
        bytes,
    })
}

/// `--dry-run`: every local check, schema included, with the server's default limits.
pub fn dry_run(dir: &Path) -> Result<Package, Failure> {
    prepare(dir, &DEFAULT_LIMITS, true)
}

/// `<url>/registries`, tolerating a trailing `/` on the base URL.
pub fn endpoint(url: &str) -> String {
    format!("{}/registries", url.trim_end_matches('/'))
}

/// The base URL must be an absolute `http://` or `https://` URL.
fn check_url(url: &str) -> Result<(), Failure> {
    match reqwest::Url::parse(&endpoint(url)) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => Err(Failure::Usage(format!(
            "invalid --url {url:?}: expected http://host[:port] or https://host[:port]"
        ))),
        Err(e) => Err(Failure::Usage(format!("invalid --url {url:?}: {e}"))),
    }
}

/// The longest wait before a retry, whatever `Retry-After` says.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Whether an answer means "not now, try again" (503: the upload queue is full or storage is
/// briefly unavailable; 429: the rate limit).
pub fn retryable(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// How long to wait before retry number `retry` (1-based): the answer's `Retry-After` in
/// seconds (an HTTP date is not used), else 1, 2, 4... seconds; at least 1 s, at most
/// [`MAX_RETRY_WAIT`].
pub fn retry_wait(retry_after: Option<&str>, retry: u32) -> Duration {
    let secs = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| 1u64 << retry.saturating_sub(1).min(6));
    Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_RETRY_WAIT)
}

/// Step 6 with retries: [`upload`], sent again after a retryable answer ([`retryable`]) at most
/// `retries` times, waiting [`retry_wait`] before each. `on_retry` hears about each wait. Still
/// refused after the last: [`Failure::Transport`] (exit 3: later may work).
pub async fn upload_with_retries(
    url: &str,
    token: &str,
    package: &Package,
    retries: u32,
    mut on_retry: impl FnMut(&Rejection, Duration, u32),
) -> Result<String, Failure> {
    let mut retry = 0;
    loop {
        let (status, retry_after, body) = upload(url, token, package).await?;
        let answer = interpret(status, &body);
        if !retryable(status) {
            return answer;
        }
        let rejection = match answer {
            Err(Failure::Rejected(r)) => r,
            // Not the registry's JSON (a proxy's 503 page): shown as such.
            Err(other) => Rejection {
                status,
                code: "SERVICE_UNAVAILABLE".into(),
                message: other.to_string(),
            },
            Ok(path) => return Ok(path),
        };
        if retry == retries {
            return Err(Failure::Transport(format!(
                "gave up after {} attempts: {rejection}",
                retries + 1
            )));
        }
        retry += 1;
        let wait = retry_wait(retry_after.as_deref(), retry);
        on_retry(&rejection, wait, retry);
        tokio::time::sleep(wait).await;
    }
}

/// Step 6: upload `package` once: the answer's status, `Retry-After` and body ([`interpret`]
/// reads it).
pub async fn upload(
    url: &str,
    token: &str,
    package: &Package,
) -> Result<(u16, Option<String>, bytes::Bytes), Failure> {
    use reqwest::multipart::{Form, Part};
    let part = Part::bytes(package.bytes.clone())
        .file_name(package.file_name())
        .mime_str("application/gzip")
        .map_err(|e| Failure::Local(e.to_string()))?;
    let form = Form::new()
        .part("package", part)
        .text("checksum", package.checksum.clone());
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("rack-registry-publish/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::Transport(format!("cannot create the HTTP client: {e}")))?;
    let target = endpoint(url);
    let transport =
        |e: reqwest::Error| Failure::Transport(format!("upload to {target} failed: {}", chain(&e)));
    let res = client
        .post(&target)
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .map_err(transport)?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.bytes().await.map_err(transport)?;
    Ok((status, retry_after, body))
}

/// An error and its sources, `: `-separated (reqwest's own message alone says too little).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The server's answer: the 201 body's `path`, or its `code` and `message`.
pub fn interpret(status: u16, body: &[u8]) -> Result<String, Failure> {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| doc.as_ref().and_then(|d| d.get(k)).and_then(Value::as_str);
    if (200..300).contains(&status) {
        if let Some(path) = field("path") {
            return Ok(path.to_owned());
        }
    } else if let (Some(code), Some(message)) = (field("code"), field("message")) {
        return Err(Failure::Rejected(Rejection {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }));
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.chars().take(200).collect();
    Err(Failure::Transport(format!(
        "unexpected answer from the server (HTTP {status}): {excerpt}"
    )))
}

/// The token to send: `--token` or `RACK_REGISTRY_TOKEN`, trimmed; blank counts as absent.
fn token(args: &PublishArgs) -> Option<String> {
    args.token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn describe(package: &Package) -> String {
    format!(
        "{}: {} files, {} bytes, sha256 {}",
        package.file_name(),
        package.files.len(),
        package.bytes.len(),
        package.checksum
    )
}

fn publish(args: &PublishArgs) -> Result<(), Failure> {
    let token = token(args).ok_or_else(|| {
        Failure::Usage(
            "no token: pass --token or set RACK_REGISTRY_TOKEN (the admin token or a namespace \
             token with \"publish\": true)"
                .to_owned(),
        )
    })?;
    check_url(&args.url)?;
    let package = prepare(&args.dir, &DEFAULT_LIMITS, false)?;
    eprintln!("uploading {} to {}", describe(&package), endpoint(&args.url));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Local(format!("cannot start the runtime: {e}")))?;
    let retries = args.retries;
    let path = runtime.block_on(upload_with_retries(
        &args.url,
        &token,
        &package,
        retries,
        |why, wait, retry| {
            eprintln!(
                "server busy ({why}): retrying in {} s (retry {retry} of {retries})",
                wait.as_secs()
            )
        },
    ))?;
    println!("published {path}");
    println!("{}/{path}", endpoint(&args.url));
    Ok(())
}

fn report_dry_run(package: &Package) {
    println!("dry run: would publish {}", package.identity.version_path());
    println!("package {}", describe(package));
    for file in &package.files {
        println!("  {file}");
    }
    println!("nothing was uploaded");
}

pub fn run(args: PublishArgs) -> ExitCode {
    let result = if args.dry_run {
        dry_run(&args.dir).map(|p| report_dry_run(&p))
    } else {
        publish(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let what = if args.dry_run {
                "dry run failed"
            } else {
                "publish failed"
            };
            eprintln!("{what}: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn write(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    fn manifest(files: &[&str]) -> String {
        let files: Vec<Value> = files
            .iter()
            .map(|p| serde_json::json!({"target": p, "type": "registry:config", "path": p}))
            .collect();
        serde_json::json!({
            "name": "x", "namespace": "@a", "version": "1.0.0",
            "type": "registry:build", "priority": 0, "files": files
        })
        .to_string()
    }

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "registry.json", &manifest(&["./t/b.json", "a.md"]));
        write(dir.path(), "a.md", "# a\n");
        write(dir.path(), "t/b.json", "{}\n");
        write(dir.path(), ".DS_Store", "junk");
        dir
    }

    /// `(path, mode, mtime, uid, gid, bytes)` of every entry.
    fn entries(gz: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                assert_eq!(h.entry_type(), tar::EntryType::Regular);
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                (
                    path,
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    body,
                )
            })
            .collect()
    }

    #[test]
    fn packs_exactly_the_declared_files_deterministically() {
        let dir = sample();
        let a = dry_run(dir.path()).unwrap();
        assert_eq!(a.files, ["registry.json", "a.md", "t/b.json"]);
        let got = entries(&a.bytes);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["registry.json", "a.md", "t/b.json"]);
        for (_, mode, mtime, uid, gid, _) in &got {
            assert_eq!((*mode, *mtime, *uid, *gid), (0o644, 0, 0, 0));
        }
        assert_eq!(got[2].5, b"{}\n");
        assert_eq!(a.checksum, checksum(&a.bytes));
        assert_eq!(a.checksum.len(), 64);
        assert!(a
            .checksum
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(a.file_name(), "x-1.0.0.tar.gz");
        assert_eq!(a.identity.version_path(), "@a/build/x/1.0.0");

        // Same directory, later, with a new mtime: the same bytes.
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.md"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let b = dry_run(dir.path()).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.checksum, b.checksum);
    }

    #[cfg(unix)]
    #[test]
    fn executable_files_keep_0755() {
        use std::os::unix::fs::PermissionsExt;
        let dir = sample();
        let p = dir.path().join("a.md");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let got = entries(&dry_run(dir.path()).unwrap().bytes);
        assert_eq!(got[1].0, "a.md");
        assert_eq!(got[1].1, 0o755);
        assert_eq!(got[2].1, 0o644);
    }

    #[test]
    fn checksum_is_lowercase_hex_sha256() {
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn code(r: Result<Package, Failure>) -> (String, String) {
        match r {
            Err(Failure::Rejected(r)) => (r.code, r.message),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn server_codes_and_messages() {
        let dir = sample();
        std::fs::remove_file(dir.path().join("t/b.json")).unwrap();
        assert_eq!(
            code(dry_run(dir.path())),
            (
                "FILE_NOT_FOUND".into(),
                "File referenced in registry.json is missing or not a regular file: t/b.json".into()
            )
        );
        std::fs::create_dir(dir.path().join("t/b.json")).unwrap();
        assert_eq!(code(dry_run(dir.path())).0, "FILE_NOT_FOUND");

        write(dir.path(), "registry.json", "{\"name\": ");
        assert_eq!(
            code(dry_run(dir.path())),
            ("UPLOAD_FAILED".into(), "registry.json is not valid JSON".into())
        );
        write(dir.path(), "registry.json", r#"{"name":"x","version":"1.0.0"}"#);
        assert_eq!(
            code(dry_run(dir.path())).1,
            "namespace is required in registry.json"
        );
        std::fs::remove_file(dir.path().join("registry.json")).unwrap();
        assert_eq!(
            code(dry_run(dir.path())),
            (
                "UPLOAD_FAILED".into(),
                "registry.json not found in package".into()
            )
        );
        std::fs::create_dir(dir.path().join("registry.json")).unwrap();
        assert_eq!(code(dry_run(dir.path())).1, "registry.json not found in package");
        let missing = dry_run(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, Failure::Local(_)), "{missing:?}");
        assert_eq!(missing.exit_code(), 1);
    }

    #[test]
    fn schema_is_checked_before_files_and_only_in_dry_runs() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "registry.json",
            r#"{"name":"x","namespace":"@a","version":"1.0.0","priority":0,"files":[{"path":"gone","target":"g","type":"registry:lib"}]}"#,
        );
        let (c, m) = code(dry_run(dir.path()));
        assert_eq!(c, "SCHEMA_VALIDATION_FAILED");
        assert!(m.starts_with("Schema validation failed: "), "{m}");
        assert!(m.contains("type"), "{m}");
        // A real publish leaves the schema to the server but still cannot pack a missing file.
        assert_eq!(
            code(prepare(dir.path(), &DEFAULT_LIMITS, false)).0,
            "FILE_NOT_FOUND"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_never_followed() {
        let dir = sample();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "b.json", "secret");
        std::fs::remove_file(dir.path().join("t/b.json")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("b.json"), dir.path().join("t/b.json")).unwrap();
        assert_eq!(code(dry_run(dir.path())).0, "FILE_NOT_FOUND");

        // A symlinked parent directory is refused too.
        std::fs::remove_dir_all(dir.path().join("t")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("t")).unwrap();
        assert_eq!(code(dry_run(dir.path())).0, "FILE_NOT_FOUND");

        // A symlinked registry.json is not found, as in an archive.
        let d2 = tempfile::tempdir().unwrap();
        write(outside.path(), "registry.json", &manifest(&[]));
        std::os::unix::fs::symlink(
            outside.path().join("registry.json"),
            d2.path().join("registry.json"),
        )
        .unwrap();
        assert_eq!(code(dry_run(d2.path())).1, "registry.json not found in package");
    }

    #[test]
    fn limits() {
        let dir = sample();
        let small = |f: fn(&mut Limits)| {
            let mut l = DEFAULT_LIMITS;
            f(&mut l);
            code(prepare(dir.path(), &l, true))
        };
        let (c, m) = small(|l| l.entries = 2);
        assert_eq!(c, "INVALID_ARCHIVE");
        assert!(
            m.starts_with("Uploaded file is not a valid tar.gz archive: "),
            "{m}"
        );
        assert_eq!(small(|l| l.extracted_bytes = 10).0, "INVALID_ARCHIVE");
        assert_eq!(small(|l| l.manifest_bytes = 10).0, "INVALID_ARCHIVE");
        let (c, m) = small(|l| l.upload_bytes = 10);
        assert_eq!(c, "PAYLOAD_TOO_LARGE");
        assert!(m.contains("10 bytes"), "{m}");
        assert_eq!(DEFAULT_LIMITS.upload_bytes, 104_857_600);
    }

    #[test]
    fn declared_registry_json_is_packed_once() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "registry.json", &manifest(&["registry.json", "./z"]));
        write(dir.path(), "z", "z");
        assert_eq!(dry_run(dir.path()).unwrap().files, ["registry.json", "z"]);
    }

    #[test]
    fn retry_waits_follow_retry_after_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(retry_wait(Some("5"), 1), s(5));
        assert_eq!(retry_wait(Some(" 7 "), 3), s(7));
        assert_eq!(retry_wait(Some("0"), 1), s(1), "at least a second");
        assert_eq!(retry_wait(Some("86400"), 1), MAX_RETRY_WAIT, "at most a minute");
        // No usable Retry-After (absent, an HTTP date): 1, 2, 4... s, capped.
        assert_eq!(retry_wait(None, 1), s(1));
        assert_eq!(retry_wait(None, 3), s(4));
        assert_eq!(retry_wait(Some("Wed, 21 Oct 2015 07:28:00 GMT"), 2), s(2));
        assert_eq!(retry_wait(None, 30), MAX_RETRY_WAIT);
    }

    #[test]
    fn answers() {
        assert_eq!(
            interpret(201, br#"{"path":"@a/build/x/1.0.0","name":"x"}"#).unwrap(),
            "@a/build/x/1.0.0"
        );
        match interpret(
            409,
            br#"{"code":"VERSION_EXISTS","message":"Registry @a/x@1 already exists"}"#,
        ) {
            Err(f @ Failure::Rejected(_)) => {
                assert_eq!(f.exit_code(), 1);
                assert_eq!(
                    f.to_string(),
                    "409 VERSION_EXISTS: Registry @a/x@1 already exists"
                );
            }
            other => panic!("{other:?}"),
        }
        for (status, body) in [(502, &b"<html>bad gateway</html>"[..]), (200, b"ok")] {
            let f = interpret(status, body).unwrap_err();
            assert_eq!(f.exit_code(), 3, "{f}");
            assert!(f.to_string().contains(&status.to_string()), "{f}");
        }
        assert!(retryable(503) && retryable(429));
        assert!(!retryable(500) && !retryable(502) && !retryable(409) && !retryable(408));
        assert_eq!(endpoint("http://h:1/"), "http://h:1/registries");
        assert_eq!(endpoint("http://h:1/base"), "http://h:1/base/registries");
        assert!(check_url("https://registry.example.com").is_ok());
        for bad in ["localhost:8080", "registry.example.com", "ftp://h", "/x"] {
            assert_eq!(check_url(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
