//! Configuration (SPEC §10): command-line flags over the environment over `.env` over defaults.
//!
//! clap collects the raw strings (flags and environment variables alike, so `--help` lists both);
//! every value is then parsed here by hand so that an invalid value stops startup with a message
//! that names the *variable* and the accepted values, never a silent fallback.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rack_core::auth::{parse_digest, Admin};
use rack_core::limits;

/// Raw server settings as given on the command line or in the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TCP port to listen on (0 picks a free one) [default: 8080]
    #[arg(long, env = "PORT", hide_env_values = true)]
    pub port: Option<String>,
    /// Address to bind [default: 0.0.0.0]
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
    /// trace, debug, info, warn or error [default: info]
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// json or pretty [default: json]
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// false, true, or a positive hop count [default: false]
    #[arg(long, env = "TRUST_PROXY")]
    pub trust_proxy: Option<String>,
    /// Storage backend: local (a directory), s3 (any S3 API) or r2 (Cloudflare R2)
    /// [default: local]
    #[arg(long, env = "STORAGE_BACKEND")]
    pub storage_backend: Option<String>,
    /// Storage root directory (local backend) [default: ./data]
    #[arg(long, env = "STORAGE_ROOT")]
    pub storage_root: Option<String>,
    /// Directory served by /schemas [default: <STORAGE_ROOT>/schema]
    #[arg(long, env = "SCHEMA_DIR")]
    pub schema_dir: Option<String>,
    /// Path of auth.json [default: ./config/auth.json]
    #[arg(long, env = "AUTH_CONFIG_PATH")]
    pub auth_config_path: Option<String>,
    /// Path of publishers.json, the trusted publishers of CI (SPEC §16)
    /// [default: ./config/publishers.json]
    #[arg(long, env = "PUBLISHERS_CONFIG_PATH")]
    pub publishers_config_path: Option<String>,
    /// The audience (`aud`) an ID token must be issued for [default: rack-registry]
    #[arg(long, env = "OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// true: accept http:// issuers on loopback hosts in publishers.json (tests only)
    /// [default: false]
    #[arg(long, env = "OIDC_ALLOW_INSECURE_ISSUERS")]
    pub oidc_allow_insecure_issuers: Option<String>,
    /// Path of webhooks.json [default: ./config/webhooks.json]
    #[arg(long, env = "WEBHOOK_CONFIG_PATH")]
    pub webhook_config_path: Option<String>,
    /// Path of upstreams.json: namespaces served from other registries [default: ./config/upstreams.json]
    #[arg(long, env = "UPSTREAMS_CONFIG_PATH")]
    pub upstreams_config_path: Option<String>,
    /// Durable webhook outbox directory [default: <STORAGE_ROOT>/.webhooks]
    #[arg(long, env = "WEBHOOK_OUTBOX_DIR")]
    pub webhook_outbox_dir: Option<String>,
    /// Attempts per webhook delivery, the first included [default: 4]
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<String>,
    /// Delay before the first retry in ms; doubles on every retry [default: 2000]
    #[arg(long, env = "WEBHOOK_BACKOFF_BASE_MS")]
    pub webhook_backoff_base_ms: Option<String>,
    /// Timeout of one delivery attempt in seconds [default: 30]
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS")]
    pub webhook_timeout_seconds: Option<String>,
    /// Most webhook deliveries in flight at once [default: 8]
    #[arg(long, env = "WEBHOOK_CONCURRENCY")]
    pub webhook_concurrency: Option<String>,
    /// Bucket outbox: seconds a replica's claim on a delivery lasts; more than
    /// WEBHOOK_TIMEOUT_SECONDS [default: WEBHOOK_TIMEOUT_SECONDS + 30]
    #[arg(long, env = "WEBHOOK_CLAIM_SECONDS")]
    pub webhook_claim_seconds: Option<String>,
    /// Bucket outbox: shortest interval in ms between two lists for orphaned deliveries
    /// [default: 5000]
    #[arg(long, env = "WEBHOOK_OUTBOX_POLL_MIN_MS")]
    pub webhook_outbox_poll_min_ms: Option<String>,
    /// Bucket outbox: longest interval in ms between two lists while the outbox is empty
    /// [default: 300000]
    #[arg(long, env = "WEBHOOK_OUTBOX_POLL_MAX_MS")]
    pub webhook_outbox_poll_max_ms: Option<String>,
    /// Admin token (prefer ADMIN_TOKEN_SHA256)
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Hex SHA-256 of the admin token
    #[arg(long, env = "ADMIN_TOKEN_SHA256", hide_env_values = true)]
    pub admin_token_sha256: Option<String>,
    /// Audit log file (JSON lines) [default: stdout]
    #[arg(long, env = "AUDIT_LOG_PATH")]
    pub audit_log_path: Option<String>,
    /// Cloudflare R2 bucket name
    #[arg(long, env = "R2_BUCKET_NAME")]
    pub r2_bucket_name: Option<String>,
    /// Cloudflare account ID of the R2 bucket
    #[arg(long, env = "R2_ACCOUNT_ID")]
    pub r2_account_id: Option<String>,
    /// R2 access key ID
    #[arg(long, env = "R2_ACCESS_KEY_ID", hide_env_values = true)]
    pub r2_access_key_id: Option<String>,
    /// R2 secret access key
    #[arg(long, env = "R2_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub r2_secret_access_key: Option<String>,
    /// S3 API endpoint URL
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1]
    #[arg(long, env = "S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 bucket name
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 access key ID
    #[arg(long, env = "S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key
    #[arg(long, env = "S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Key prefix inside the bucket, so one bucket can hold several registries [default: none]
    #[arg(long, env = "STORAGE_PREFIX")]
    pub storage_prefix: Option<String>,
    /// true: run on a bucket that ignores conditional writes, serializing them in this process
    /// (only one replica may then write) [default: false]
    #[arg(long, env = "STORAGE_SINGLE_WRITER")]
    pub storage_single_writer: Option<String>,
    /// Bucket backends: how long a mutable object read from the bucket is served without asking
    /// the bucket again, in ms [default: 1000]
    #[arg(long, env = "STORAGE_REVALIDATE_MS")]
    pub storage_revalidate_ms: Option<String>,
    /// Where the auth policy comes from: file (AUTH_CONFIG_PATH) or bucket (.auth/auth.json in
    /// the bucket, polled every 5 s) [default: file]
    #[arg(long, env = "AUTH_SOURCE")]
    pub auth_source: Option<String>,
    /// Bucket backends: lifetime of a publish lease in seconds, longer than any publish; a
    /// publisher that dies is cleaned up after it [default: 120]
    #[arg(long, env = "PUBLISH_LEASE_SECONDS")]
    pub publish_lease_seconds: Option<String>,
    /// Bucket backends: the most one storage request may take in seconds, retries included;
    /// past it the request fails (a hung store never hangs a client) [default: 30]
    #[arg(long, env = "STORAGE_TIMEOUT_SECONDS")]
    pub storage_timeout_seconds: Option<String>,
    /// Bucket backends: template files a publish writes at once, under its lease (1 to 64)
    /// [default: 8]
    #[arg(long, env = "PUBLISH_PARALLEL_WRITES")]
    pub publish_parallel_writes: Option<String>,
    /// Requests per client per window; 0 disables [default: 1200]
    #[arg(long, env = "RATE_LIMIT_MAX")]
    pub rate_limit_max: Option<String>,
    /// Rate-limit window in seconds [default: 60]
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECONDS")]
    pub rate_limit_window_seconds: Option<String>,
    /// Largest accepted upload body in bytes [default: 104857600]
    #[arg(long, env = "MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<String>,
    /// Most entries in an uploaded archive [default: 10000]
    #[arg(long, env = "MAX_ARCHIVE_ENTRIES")]
    pub max_archive_entries: Option<String>,
    /// Most bytes an uploaded archive may expand to [default: 536870912]
    #[arg(long, env = "MAX_EXTRACTED_BYTES")]
    pub max_extracted_bytes: Option<String>,
    /// Memory for the hot-object cache in bytes; 0 disables it [default: 67108864]
    #[arg(long, env = "CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<String>,
    /// Objects above the hot cache's 256 KiB per-object limit and up to this size are
    /// compressed once in the background and kept in a tier of half CACHE_MAX_BYTES; larger
    /// ones are always sent identity [default: 8388608]
    #[arg(long, env = "COMPRESS_MAX_BYTES")]
    pub compress_max_bytes: Option<String>,
    /// Largest accepted registry.json in bytes [default: 1048576]
    #[arg(long, env = "MAX_MANIFEST_BYTES")]
    pub max_manifest_bytes: Option<String>,
    /// Threads serving HTTP connections [default: the number of CPUs available]
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<String>,
    /// Seconds a new connection has to send its first request's headers; later, a connection
    /// with no request for one to two times this is closed, idle or mid-headers [default: 30]
    #[arg(long, env = "HEADER_TIMEOUT_SECONDS")]
    pub header_timeout_seconds: Option<String>,
    /// Most connections open at once; at the cap new ones wait in the listen backlog
    /// [default: the file-descriptor limit less a quarter (at least 64) for storage]
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Local storage: watch files with inotify so that hot reads need no stat (`auto`), or
    /// stat every hot read (`off`) [default: auto]
    #[arg(long, env = "FS_WATCH")]
    pub fs_watch: Option<String>,
    /// Local storage: serve files of 4 to 64 KiB from the page cache as read-only memory maps
    /// under read leases, needing FS_WATCH (`auto`), or copy every file into the heap cache
    /// (`off`) [default: auto]
    #[arg(long, env = "MAP_FILES")]
    pub map_files: Option<String>,
    /// Most uploads in progress at once; more wait in the upload queue [default: 4]
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: Option<String>,
    /// Most uploads waiting for a slot, their bodies unread; more are answered 503 with
    /// Retry-After; 0: none wait [default: 100]
    #[arg(long, env = "UPLOAD_QUEUE_MAX")]
    pub upload_queue_max: Option<String>,
    /// Longest wait in seconds for an upload slot; past it 503 with Retry-After [default: 60]
    #[arg(long, env = "UPLOAD_QUEUE_WAIT_SECONDS")]
    pub upload_queue_wait_seconds: Option<String>,
    /// Seconds within which an upload's whole body must arrive; a slower one is cut off with
    /// 408 [default: 300]
    #[arg(long, env = "UPLOAD_TIMEOUT_SECONDS")]
    pub upload_timeout_seconds: Option<String>,
    /// Seconds an upload's body may go without a byte; a stalled one is cut off with 408 and
    /// its slot freed [default: 15]
    #[arg(long, env = "UPLOAD_STALL_SECONDS")]
    pub upload_stall_seconds: Option<String>,
    /// Serve the web pages under /ui (true|false) [default: true]
    #[arg(long, env = "UI")]
    pub ui: Option<String>,
    /// Secret (at least 32 characters) the web-session cookies are signed with, the same on
    /// every replica [default: a key kept in the storage at .rack/ui/session-key]
    #[arg(long, env = "UI_SESSION_KEY", hide_env_values = true)]
    pub ui_session_key: Option<String>,
    /// Seconds a replica trusts that a web session was not signed out on another replica
    /// [default: 10]
    #[arg(long, env = "UI_SESSION_REVALIDATE_SECONDS")]
    pub ui_session_revalidate_seconds: Option<String>,
    /// Failed sign-ins per client and minute before the login form answers 429 [default: 10]
    #[arg(long, env = "UI_LOGIN_ATTEMPTS")]
    pub ui_login_attempts: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// How the client address of a request is found (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustProxy {
    /// The socket address.
    No,
    /// The left-most `X-Forwarded-For` address.
    All,
    /// Skip `n - 1` trusted proxies from the right of `X-Forwarded-For`.
    Hops(u32),
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings of an S3-compatible bucket (`r2` is S3 with a derived endpoint and region `auto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `None`: AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Access key id and secret; `None`: the standard AWS credential chain.
    pub credentials: Option<(String, Secret)>,
    /// `STORAGE_PREFIX`, normalized: empty or ending in `/`.
    pub prefix: String,
    /// `STORAGE_SINGLE_WRITER`.
    pub single_writer: bool,
    /// `STORAGE_REVALIDATE_MS`.
    pub revalidate: Duration,
    /// `PUBLISH_LEASE_SECONDS`.
    pub lease: Duration,
    /// `STORAGE_TIMEOUT_SECONDS`: bound of one storage call, retries included.
    pub timeout: Duration,
    /// `PUBLISH_PARALLEL_WRITES`: template files written at once by a publish.
    pub parallel: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Local,
    R2(BucketConfig),
    S3(BucketConfig),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub rate_limit_max: u64,
    pub rate_limit_window: Duration,
    pub max_upload_bytes: u64,
    pub max_archive_entries: u64,
    pub max_extracted_bytes: u64,
    pub max_manifest_bytes: u64,
    pub cache_max_bytes: u64,
    /// Objects larger than this are always served identity (never compressed).
    pub compress_max_bytes: u64,
    /// Uploads in progress at once (`MAX_CONCURRENT_UPLOADS`, >= 1).
    pub max_concurrent_uploads: usize,
    /// Time for an upload's whole body to arrive (`UPLOAD_TIMEOUT_SECONDS`).
    pub upload_timeout: Duration,
    /// Uploads waiting for a slot (`UPLOAD_QUEUE_MAX`, 0: none).
    pub upload_queue_max: usize,
    /// Longest wait for an upload slot (`UPLOAD_QUEUE_WAIT_SECONDS`).
    pub upload_queue_wait: Duration,
    /// Longest time an upload body may go without a byte (`UPLOAD_STALL_SECONDS`).
    pub upload_stall: Duration,
}

/// Webhook delivery policy (SPEC §7: 4 attempts, 2 s, 4 s, 8 s, 30 s per attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Attempts per delivery, the first included (>= 1).
    pub max_attempts: u32,
    /// Delay after the first failed attempt; doubled after each further failure.
    pub backoff_base: Duration,
    /// Timeout of one attempt (connect, send, response).
    pub timeout: Duration,
    /// Most attempts in flight at once (>= 1).
    pub concurrency: usize,
    /// Bucket outbox (SPEC §11.4): how long a claim on a delivery lasts; longer than an attempt.
    pub claim: Duration,
    /// Bucket outbox: shortest interval between two lists for orphaned deliveries.
    pub poll_min: Duration,
    /// Bucket outbox: longest interval, reached by doubling while the outbox stays empty.
    pub poll_max: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            max_attempts: 4,
            backoff_base: Duration::from_millis(2000),
            timeout: Duration::from_secs(30),
            concurrency: 8,
            claim: Duration::from_secs(60),
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(300),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub trust_proxy: TrustProxy,
    pub backend: Backend,
    pub storage_root: PathBuf,
    pub schema_dir: PathBuf,
    pub auth_config_path: PathBuf,
    /// `publishers.json` (SPEC §16).
    pub publishers_config_path: PathBuf,
    /// `OIDC_AUDIENCE`: the `aud` an ID token must carry.
    pub oidc_audience: String,
    /// `OIDC_ALLOW_INSECURE_ISSUERS`: loopback `http` issuers are accepted.
    pub oidc_allow_insecure_issuers: bool,
    pub webhook_config_path: PathBuf,
    /// `upstreams.json` (SPEC §17); missing: no upstream.
    pub upstreams_config_path: PathBuf,
    pub webhook_outbox_dir: PathBuf,
    /// A bucket backend without `WEBHOOK_OUTBOX_DIR`: the outbox is in the bucket (SPEC §11.4).
    pub webhook_outbox_in_bucket: bool,
    pub webhook: WebhookSettings,
    pub admin: Admin,
    pub audit_log_path: Option<PathBuf>,
    pub limits: Limits,
    /// Threads serving HTTP connections, each with its own event loop.
    pub http_workers: usize,
    /// Time allowed to send a request's headers (and to stay idle between requests).
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Whether the local backend may use inotify to skip the per-read stat (`FS_WATCH`).
    pub fs_watch: bool,
    /// Whether the local backend may serve small files as leased memory maps (`MAP_FILES`).
    pub map_files: bool,
    /// `AUTH_SOURCE=bucket`: the policy is `.auth/auth.json` in the bucket.
    pub auth_from_bucket: bool,
    /// Whether the web pages under `/ui` are served (`UI`, SPEC §15).
    pub ui: bool,
    /// Their sessions and sign-in throttle.
    pub ui_settings: crate::http::pages::UiSettings,
}

/// A configuration error: names the variable, the bad value (unless secret) and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn err(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// The default connection cap: the file-descriptor limit (raised to its hard maximum first),
/// less a quarter (at least 64) left for storage, logs, the config watcher and webhooks.
fn default_max_connections() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum) {
        if cur < max {
            let raised = rustix::process::Rlimit {
                current: Some(max.min(1 << 20)),
                maximum: Some(max),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                limit = raised;
            }
        }
    }
    let fds = limit.current.unwrap_or(1 << 20).min(1 << 20) as usize;
    fds.saturating_sub((fds / 4).max(64)).max(1)
}

/// Blank values count as unset.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_u64(var: &'static str, v: &Option<String>, default: u64, min: u64) -> Result<u64, ConfigError> {
    match given(v) {
        None => Ok(default),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| err(var, format!("{s:?} is not an integer >= {min}"))),
    }
}

/// `true` or `false` (any case), `default` when unset.
fn parse_bool(var: &'static str, v: &Option<String>, default: bool) -> Result<bool, ConfigError> {
    match given(v).map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(s) => Err(err(var, format!("{s:?} is not one of true, false"))),
    }
}

fn required(var: &'static str, v: &Option<String>, backend: &str) -> Result<String, ConfigError> {
    given(v)
        .map(str::to_owned)
        .ok_or_else(|| err(var, format!("is required when STORAGE_BACKEND={backend}")))
}

pub fn parse_trust_proxy(s: &str) -> Option<TrustProxy> {
    match s.to_ascii_lowercase().as_str() {
        "false" => Some(TrustProxy::No),
        "true" => Some(TrustProxy::All),
        n => n.parse::<u32>().ok().filter(|n| *n > 0).map(TrustProxy::Hops),
    }
}

/// The bucket settings shared by `r2` and `s3` (SPEC §11): prefix, single writer, revalidation.
fn bucket_settings(a: &ServeArgs) -> Result<BucketConfig, ConfigError> {
    let prefix = match given(&a.storage_prefix) {
        None => String::new(),
        Some(p) => {
            let p = format!("{}/", p.trim_end_matches('/'));
            crate::storage::validate_key(&p).map_err(|_| {
                err(
                    "STORAGE_PREFIX",
                    format!("{p:?} is not a relative key prefix (segments separated by /, no . or ..)"),
                )
            })?;
            p
        }
    };
    let single_writer = parse_bool("STORAGE_SINGLE_WRITER", &a.storage_single_writer, false)?;
    BucketConfig {
        endpoint: None,
        region: String::new(),
        bucket: String::new(),
        credentials: None,
        prefix,
        single_writer,
        revalidate: Duration::from_millis(parse_u64(
            "STORAGE_REVALIDATE_MS",
            &a.storage_revalidate_ms,
            1000,
            0,
        )?),
        lease: Duration::from_secs(parse_u64(
            "PUBLISH_LEASE_SECONDS",
            &a.publish_lease_seconds,
            120,
            1,
        )?),
        timeout: Duration::from_secs(parse_u64(
            "STORAGE_TIMEOUT_SECONDS",
            &a.storage_timeout_seconds,
            30,
            1,
        )?),
        parallel: match parse_u64("PUBLISH_PARALLEL_WRITES", &a.publish_parallel_writes, 8, 1)? {
            n @ 1..=64 => n as usize,
            n => return Err(err("PUBLISH_PARALLEL_WRITES", format!("{n} is over 64"))),
        },
    }
    .workable()
}

impl BucketConfig {
    /// The publish protocol's timings (SPEC §11.2).
    pub fn timing(&self) -> crate::storage::publish::Timing {
        crate::storage::publish::Timing {
            ttl: self.lease,
            call: self.timeout,
            parallel: self.parallel,
        }
    }

    /// A lease must leave room for a write after each renewal (a third of its lifetime), one
    /// storage call and the timestamp margin: otherwise every publish would be fenced off.
    fn workable(self) -> Result<BucketConfig, ConfigError> {
        let t = self.timing();
        if t.workable() {
            return Ok(self);
        }
        let least = (3 * (t.call + t.margin())).as_secs_f64() / 2.0;
        Err(err(
            "PUBLISH_LEASE_SECONDS",
            format!(
                "{} s leaves no room to write with STORAGE_TIMEOUT_SECONDS={}: use more than {least:.0} s \
                 (a third of the lease passes between renewals, then one storage call and a margin must fit)",
                self.lease.as_secs(),
                self.timeout.as_secs()
            ),
        ))
    }
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Result<Config, ConfigError> {
        let port = match given(&a.port) {
            None => 8080,
            Some(s) => s
                .parse::<u16>()
                .map_err(|_| err("PORT", format!("{s:?} is not a port number (0-65535)")))?,
        };
        let host = match given(&a.host) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(s) => s.parse().map_err(|_| {
                err(
                    "HOST",
                    format!("{s:?} is not an IP address (e.g. 0.0.0.0, 127.0.0.1, ::)"),
                )
            })?,
        };
        let log_level = match given(&a.log_level).map(str::to_ascii_lowercase).as_deref() {
            None | Some("info") => tracing::Level::INFO,
            Some("trace") => tracing::Level::TRACE,
            Some("debug") => tracing::Level::DEBUG,
            Some("warn") => tracing::Level::WARN,
            Some("error") => tracing::Level::ERROR,
            Some(s) => {
                return Err(err(
                    "LOG_LEVEL",
                    format!("{s:?} is not one of trace, debug, info, warn, error"),
                ))
            }
        };
        let log_format = match given(&a.log_format).map(str::to_ascii_lowercase).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(s) => return Err(err("LOG_FORMAT", format!("{s:?} is not one of json, pretty"))),
        };
        let trust_proxy = match given(&a.trust_proxy) {
            None => TrustProxy::No,
            Some(s) => parse_trust_proxy(s).ok_or_else(|| {
                err(
                    "TRUST_PROXY",
                    format!("{s:?} is not true, false or a positive hop count"),
                )
            })?,
        };
        let backend = match given(&a.storage_backend).map(str::to_ascii_lowercase).as_deref() {
            None | Some("local") => Backend::Local,
            Some("r2") => {
                let account = required("R2_ACCOUNT_ID", &a.r2_account_id, "r2")?;
                Backend::R2(BucketConfig {
                    bucket: required("R2_BUCKET_NAME", &a.r2_bucket_name, "r2")?,
                    endpoint: Some(format!("https://{account}.r2.cloudflarestorage.com")),
                    region: "auto".into(),
                    credentials: Some((
                        required("R2_ACCESS_KEY_ID", &a.r2_access_key_id, "r2")?,
                        Secret(required("R2_SECRET_ACCESS_KEY", &a.r2_secret_access_key, "r2")?),
                    )),
                    ..bucket_settings(a)?
                })
            }
            Some("s3") => {
                let credentials = match (given(&a.s3_access_key_id), given(&a.s3_secret_access_key)) {
                    (Some(id), Some(secret)) => Some((id.to_owned(), Secret(secret.to_owned()))),
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(err(
                            "S3_SECRET_ACCESS_KEY",
                            "is required when S3_ACCESS_KEY_ID is set",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(err(
                            "S3_ACCESS_KEY_ID",
                            "is required when S3_SECRET_ACCESS_KEY is set",
                        ))
                    }
                };
                Backend::S3(BucketConfig {
                    endpoint: given(&a.s3_endpoint).map(str::to_owned),
                    region: given(&a.s3_region).unwrap_or("us-east-1").to_owned(),
                    bucket: required("S3_BUCKET", &a.s3_bucket, "s3")?,
                    credentials,
                    ..bucket_settings(a)?
                })
            }
            Some(s) => {
                return Err(err(
                    "STORAGE_BACKEND",
                    format!("{s:?} is not one of local, r2, s3"),
                ))
            }
        };
        let storage_root = PathBuf::from(given(&a.storage_root).unwrap_or("./data"));
        let schema_dir = given(&a.schema_dir)
            .map(PathBuf::from)
            .unwrap_or_else(|| storage_root.join("schema"));
        let webhook_outbox_dir = given(&a.webhook_outbox_dir)
            .map(PathBuf::from)
            .unwrap_or_else(|| storage_root.join(".webhooks"));
        let admin_sha = match given(&a.admin_token_sha256) {
            None => None,
            Some(s) => Some(parse_digest(s).ok_or_else(|| {
                err(
                    "ADMIN_TOKEN_SHA256",
                    "is not a 64-character hex SHA-256 (value not shown)",
                )
            })?),
        };
        let admin = Admin::new(given(&a.admin_token), admin_sha);
        let limits = Limits {
            rate_limit_max: parse_u64("RATE_LIMIT_MAX", &a.rate_limit_max, 1200, 0)?,
            rate_limit_window: Duration::from_secs(parse_u64(
                "RATE_LIMIT_WINDOW_SECONDS",
                &a.rate_limit_window_seconds,
                60,
                1,
            )?),
            max_upload_bytes: parse_u64(
                "MAX_UPLOAD_BYTES",
                &a.max_upload_bytes,
                limits::MAX_UPLOAD_BYTES,
                1,
            )?,
            max_archive_entries: parse_u64(
                "MAX_ARCHIVE_ENTRIES",
                &a.max_archive_entries,
                limits::MAX_ARCHIVE_ENTRIES,
                1,
            )?,
            max_extracted_bytes: parse_u64(
                "MAX_EXTRACTED_BYTES",
                &a.max_extracted_bytes,
                512 * 1024 * 1024,
                1,
            )?,
            max_manifest_bytes: parse_u64(
                "MAX_MANIFEST_BYTES",
                &a.max_manifest_bytes,
                limits::MAX_MANIFEST_BYTES,
                1,
            )?,
            cache_max_bytes: parse_u64("CACHE_MAX_BYTES", &a.cache_max_bytes, 64 * 1024 * 1024, 0)?,
            compress_max_bytes: parse_u64("COMPRESS_MAX_BYTES", &a.compress_max_bytes, 8 * 1024 * 1024, 0)?,
            max_concurrent_uploads: parse_u64("MAX_CONCURRENT_UPLOADS", &a.max_concurrent_uploads, 4, 1)?
                as usize,
            upload_timeout: Duration::from_secs(parse_u64(
                "UPLOAD_TIMEOUT_SECONDS",
                &a.upload_timeout_seconds,
                300,
                1,
            )?),
            upload_queue_max: parse_u64("UPLOAD_QUEUE_MAX", &a.upload_queue_max, 100, 0)?.min(1 << 20)
                as usize,
            upload_queue_wait: Duration::from_secs(parse_u64(
                "UPLOAD_QUEUE_WAIT_SECONDS",
                &a.upload_queue_wait_seconds,
                60,
                1,
            )?),
            upload_stall: Duration::from_secs(parse_u64(
                "UPLOAD_STALL_SECONDS",
                &a.upload_stall_seconds,
                15,
                1,
            )?),
        };
        let webhook_timeout = parse_u64("WEBHOOK_TIMEOUT_SECONDS", &a.webhook_timeout_seconds, 30, 1)?;
        let poll_min = parse_u64(
            "WEBHOOK_OUTBOX_POLL_MIN_MS",
            &a.webhook_outbox_poll_min_ms,
            5000,
            1,
        )?;
        let webhook_outbox_in_bucket = backend != Backend::Local && given(&a.webhook_outbox_dir).is_none();
        let webhook = WebhookSettings {
            max_attempts: parse_u64("WEBHOOK_MAX_ATTEMPTS", &a.webhook_max_attempts, 4, 1)?
                .min(u32::MAX as u64) as u32,
            backoff_base: Duration::from_millis(parse_u64(
                "WEBHOOK_BACKOFF_BASE_MS",
                &a.webhook_backoff_base_ms,
                2000,
                0,
            )?),
            timeout: Duration::from_secs(webhook_timeout),
            concurrency: parse_u64("WEBHOOK_CONCURRENCY", &a.webhook_concurrency, 8, 1)?.min(4096) as usize,
            // A claim shorter than an attempt would let another replica deliver while this one
            // still waits for the receiver.
            claim: Duration::from_secs(parse_u64(
                "WEBHOOK_CLAIM_SECONDS",
                &a.webhook_claim_seconds,
                webhook_timeout.saturating_add(30),
                webhook_timeout.saturating_add(1),
            )?),
            poll_min: Duration::from_millis(poll_min),
            poll_max: Duration::from_millis(parse_u64(
                "WEBHOOK_OUTBOX_POLL_MAX_MS",
                &a.webhook_outbox_poll_max_ms,
                300_000.max(poll_min),
                poll_min,
            )?),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let http_workers = parse_u64("HTTP_WORKERS", &a.http_workers, cpus, 1)?.min(1024) as usize;
        let header_timeout = Duration::from_secs(parse_u64(
            "HEADER_TIMEOUT_SECONDS",
            &a.header_timeout_seconds,
            30,
            1,
        )?);
        let max_connections = match given(&a.max_connections) {
            None => default_max_connections(),
            Some(_) => parse_u64("MAX_CONNECTIONS", &a.max_connections, 0, 1)?.min(1 << 20) as usize,
        };
        let fs_watch = match given(&a.fs_watch).map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(s) => return Err(err("FS_WATCH", format!("{s:?} is not one of auto, off"))),
        };
        let map_files = match given(&a.map_files).map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(s) => return Err(err("MAP_FILES", format!("{s:?} is not one of auto, off"))),
        };
        let auth_from_bucket = match given(&a.auth_source).map(str::to_ascii_lowercase).as_deref() {
            None | Some("file") => false,
            Some("bucket") if backend != Backend::Local => true,
            Some("bucket") => {
                return Err(err(
                    "AUTH_SOURCE",
                    "bucket needs STORAGE_BACKEND=r2 or s3 (on disk use AUTH_CONFIG_PATH)",
                ))
            }
            Some(s) => return Err(err("AUTH_SOURCE", format!("{s:?} is not one of file, bucket"))),
        };
        let oidc_allow_insecure_issuers = parse_bool(
            "OIDC_ALLOW_INSECURE_ISSUERS",
            &a.oidc_allow_insecure_issuers,
            false,
        )?;
        let ui = parse_bool("UI", &a.ui, true)?;
        let session_key = match given(&a.ui_session_key) {
            None => None,
            Some(k) if k.len() < 32 => {
                return Err(err(
                    "UI_SESSION_KEY",
                    "is shorter than 32 characters (value not shown)",
                ))
            }
            Some(k) => {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"rack-registry ui session key\0");
                h.update(k.as_bytes());
                Some(h.finalize().into())
            }
        };
        let ui_settings = crate::http::pages::UiSettings {
            session_key,
            revalidate: Duration::from_secs(parse_u64(
                "UI_SESSION_REVALIDATE_SECONDS",
                &a.ui_session_revalidate_seconds,
                10,
                0,
            )?),
            login_attempts: parse_u64("UI_LOGIN_ATTEMPTS", &a.ui_login_attempts, 10, 1)?,
        };
        Ok(Config {
            auth_from_bucket,
            ui,
            ui_settings,
            fs_watch,
            map_files,
            http_workers,
            header_timeout,
            max_connections,
            host,
            port,
            log_level,
            log_format,
            trust_proxy,
            backend,
            storage_root,
            schema_dir,
            auth_config_path: PathBuf::from(given(&a.auth_config_path).unwrap_or("./config/auth.json")),
            publishers_config_path: PathBuf::from(
                given(&a.publishers_config_path).unwrap_or("./config/publishers.json"),
            ),
            oidc_audience: given(&a.oidc_audience).unwrap_or("rack-registry").to_owned(),
            oidc_allow_insecure_issuers,
            webhook_config_path: PathBuf::from(
                given(&a.webhook_config_path).unwrap_or("./config/webhooks.json"),
            ),
            upstreams_config_path: PathBuf::from(
                given(&a.upstreams_config_path).unwrap_or("./config/upstreams.json"),
            ),
            webhook_outbox_dir,
            webhook_outbox_in_bucket,
            webhook,
            admin,
            audit_log_path: given(&a.audit_log_path).map(PathBuf::from),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut ServeArgs)) -> Result<Config, ConfigError> {
        let mut a = ServeArgs::default();
        f(&mut a);
        Config::from_args(&a)
    }

    #[test]
    fn defaults() {
        let c = with(|_| {}).unwrap();
        assert!(c.ui);
        assert!(!with(|a| a.ui = Some("FALSE".into())).unwrap().ui);
        assert_eq!(c.ui_settings.login_attempts, 10);
        assert_eq!(c.ui_settings.revalidate, Duration::from_secs(10));
        assert!(c.ui_settings.session_key.is_none());
        let k = with(|a| a.ui_session_key = Some("k".repeat(32))).unwrap();
        let k2 = with(|a| a.ui_session_key = Some("k".repeat(32))).unwrap();
        assert_eq!(k.ui_settings.session_key, k2.ui_settings.session_key);
        assert!(!format!("{:?}", k.ui_settings).contains("kkkk"));
        assert_eq!(c.port, 8080);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.storage_root, PathBuf::from("./data"));
        assert_eq!(c.schema_dir, PathBuf::from("./data/schema"));
        assert_eq!(c.auth_config_path, PathBuf::from("./config/auth.json"));
        assert_eq!(c.webhook_config_path, PathBuf::from("./config/webhooks.json"));
        assert_eq!(
            c.publishers_config_path,
            PathBuf::from("./config/publishers.json")
        );
        assert_eq!(c.oidc_audience, "rack-registry");
        assert!(!c.oidc_allow_insecure_issuers);
        assert_eq!(c.trust_proxy, TrustProxy::No);
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.limits.rate_limit_max, 1200);
        assert_eq!(c.limits.max_upload_bytes, 104_857_600);
        assert_eq!(c.webhook, WebhookSettings::default());
        assert_eq!(c.webhook.max_attempts, 4);
        assert_eq!(c.webhook.backoff_base, Duration::from_secs(2));
        assert!(!c.admin.is_configured());
    }

    #[test]
    fn errors_name_the_variable() {
        type Setter = Box<dyn Fn(&mut ServeArgs)>;
        let cases: Vec<(&str, Setter)> = vec![
            ("PORT", Box::new(|a| a.port = Some("80x".into()))),
            ("PORT", Box::new(|a| a.port = Some("70000".into()))),
            ("HOST", Box::new(|a| a.host = Some("localhost:1".into()))),
            ("LOG_LEVEL", Box::new(|a| a.log_level = Some("loud".into()))),
            ("LOG_FORMAT", Box::new(|a| a.log_format = Some("xml".into()))),
            (
                "OIDC_ALLOW_INSECURE_ISSUERS",
                Box::new(|a| a.oidc_allow_insecure_issuers = Some("yes".into())),
            ),
            ("TRUST_PROXY", Box::new(|a| a.trust_proxy = Some("yes".into()))),
            ("TRUST_PROXY", Box::new(|a| a.trust_proxy = Some("0".into()))),
            (
                "STORAGE_BACKEND",
                Box::new(|a| a.storage_backend = Some("ftp".into())),
            ),
            ("S3_BUCKET", Box::new(|a| a.storage_backend = Some("s3".into()))),
            (
                "STORAGE_PREFIX",
                Box::new(|a| {
                    a.storage_backend = Some("s3".into());
                    a.s3_bucket = Some("b".into());
                    a.storage_prefix = Some("a/../b".into());
                }),
            ),
            (
                "STORAGE_SINGLE_WRITER",
                Box::new(|a| {
                    a.storage_backend = Some("s3".into());
                    a.s3_bucket = Some("b".into());
                    a.storage_single_writer = Some("yes".into());
                }),
            ),
            (
                "S3_SECRET_ACCESS_KEY",
                Box::new(|a| {
                    a.storage_backend = Some("s3".into());
                    a.s3_bucket = Some("b".into());
                    a.s3_access_key_id = Some("AK".into());
                }),
            ),
            (
                "R2_ACCOUNT_ID",
                Box::new(|a| a.storage_backend = Some("r2".into())),
            ),
            (
                "RATE_LIMIT_MAX",
                Box::new(|a| a.rate_limit_max = Some("-1".into())),
            ),
            (
                "RATE_LIMIT_WINDOW_SECONDS",
                Box::new(|a| a.rate_limit_window_seconds = Some("0".into())),
            ),
            (
                "MAX_UPLOAD_BYTES",
                Box::new(|a| a.max_upload_bytes = Some("lots".into())),
            ),
            (
                "ADMIN_TOKEN_SHA256",
                Box::new(|a| a.admin_token_sha256 = Some("abc".into())),
            ),
            (
                "WEBHOOK_MAX_ATTEMPTS",
                Box::new(|a| a.webhook_max_attempts = Some("0".into())),
            ),
            (
                "WEBHOOK_BACKOFF_BASE_MS",
                Box::new(|a| a.webhook_backoff_base_ms = Some("fast".into())),
            ),
            (
                "WEBHOOK_TIMEOUT_SECONDS",
                Box::new(|a| a.webhook_timeout_seconds = Some("0".into())),
            ),
            (
                "WEBHOOK_CONCURRENCY",
                Box::new(|a| a.webhook_concurrency = Some("-3".into())),
            ),
            (
                "WEBHOOK_CLAIM_SECONDS",
                // Not longer than an attempt (30 s by default).
                Box::new(|a| a.webhook_claim_seconds = Some("30".into())),
            ),
            (
                "WEBHOOK_OUTBOX_POLL_MAX_MS",
                Box::new(|a| {
                    a.webhook_outbox_poll_min_ms = Some("1000".into());
                    a.webhook_outbox_poll_max_ms = Some("999".into())
                }),
            ),
            ("HTTP_WORKERS", Box::new(|a| a.http_workers = Some("0".into()))),
            ("FS_WATCH", Box::new(|a| a.fs_watch = Some("on".into()))),
            ("MAP_FILES", Box::new(|a| a.map_files = Some("yes".into()))),
            ("AUTH_SOURCE", Box::new(|a| a.auth_source = Some("bucket".into()))),
            ("AUTH_SOURCE", Box::new(|a| a.auth_source = Some("s3".into()))),
            ("UI", Box::new(|a| a.ui = Some("yes".into()))),
            (
                "UI_SESSION_KEY",
                Box::new(|a| a.ui_session_key = Some("short".into())),
            ),
            (
                "UI_LOGIN_ATTEMPTS",
                Box::new(|a| a.ui_login_attempts = Some("0".into())),
            ),
            (
                "UI_SESSION_REVALIDATE_SECONDS",
                Box::new(|a| a.ui_session_revalidate_seconds = Some("x".into())),
            ),
            (
                "HEADER_TIMEOUT_SECONDS",
                Box::new(|a| a.header_timeout_seconds = Some("0".into())),
            ),
        ];
        for (var, f) in cases {
            let e = with(|a| f(a)).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var));
        }
    }

    #[test]
    fn trust_proxy_values() {
        assert_eq!(parse_trust_proxy("TRUE"), Some(TrustProxy::All));
        assert_eq!(parse_trust_proxy("false"), Some(TrustProxy::No));
        assert_eq!(parse_trust_proxy("2"), Some(TrustProxy::Hops(2)));
        assert_eq!(parse_trust_proxy("-1"), None);
    }

    #[test]
    fn blank_admin_token_is_unset_and_secrets_stay_hidden() {
        let c = with(|a| a.admin_token = Some("   ".into())).unwrap();
        assert!(!c.admin.is_configured());
        let c = with(|a| {
            a.admin_token = Some("super-secret-admin".into());
            a.storage_backend = Some("s3".into());
            a.s3_endpoint = Some("http://127.0.0.1:9000".into());
            a.s3_bucket = Some("b".into());
            a.s3_access_key_id = Some("AK".into());
            a.s3_secret_access_key = Some("very-secret-key".into());
        })
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("super-secret-admin") && !dbg.contains("very-secret-key"),
            "{dbg}"
        );
    }

    #[test]
    fn bucket_settings() {
        let c = with(|a| {
            a.storage_backend = Some("s3".into());
            a.s3_bucket = Some("b".into());
        })
        .unwrap();
        let Backend::S3(b) = c.backend else { panic!() };
        assert_eq!(
            (b.endpoint, b.region.as_str(), b.credentials, b.prefix.as_str()),
            (None, "us-east-1", None, "")
        );
        assert_eq!(b.revalidate, Duration::from_secs(1));
        assert_eq!(b.lease, Duration::from_secs(120));
        assert_eq!(b.timeout, Duration::from_secs(30));
        assert!(!b.single_writer);
        let c = with(|a| {
            a.storage_backend = Some("r2".into());
            a.r2_account_id = Some("acct".into());
            a.r2_bucket_name = Some("reg".into());
            a.r2_access_key_id = Some("AK".into());
            a.r2_secret_access_key = Some("SK".into());
            a.storage_prefix = Some("team/a/".into());
            a.storage_single_writer = Some("true".into());
        })
        .unwrap();
        let Backend::R2(b) = c.backend else { panic!() };
        assert_eq!(
            b.endpoint.as_deref(),
            Some("https://acct.r2.cloudflarestorage.com")
        );
        assert_eq!((b.region.as_str(), b.prefix.as_str()), ("auto", "team/a/"));
        assert!(b.single_writer);
    }

    #[test]
    fn storage_timeout() {
        let on_s3 = |v: &str| {
            with(|a| {
                a.storage_backend = Some("s3".into());
                a.s3_bucket = Some("b".into());
                a.storage_timeout_seconds = Some(v.into());
            })
        };
        let Backend::S3(b) = on_s3("2").unwrap().backend else {
            panic!()
        };
        assert_eq!(b.timeout, Duration::from_secs(2));
        for bad in ["0", "soon", "-1"] {
            assert_eq!(on_s3(bad).unwrap_err().var, "STORAGE_TIMEOUT_SECONDS", "{bad}");
        }
    }

    #[test]
    fn a_lease_must_leave_room_for_renewals_and_one_storage_call() {
        let on_s3 = |lease: &str, timeout: &str| {
            with(|a| {
                a.storage_backend = Some("s3".into());
                a.s3_bucket = Some("b".into());
                a.publish_lease_seconds = Some(lease.into());
                a.storage_timeout_seconds = Some(timeout.into());
            })
        };
        assert!(on_s3("6", "2").is_ok());
        assert!(on_s3("120", "30").is_ok());
        for (lease, timeout) in [("2", "30"), ("4", "2"), ("60", "40")] {
            let e = on_s3(lease, timeout).unwrap_err();
            assert_eq!(e.var, "PUBLISH_LEASE_SECONDS", "{lease}/{timeout}");
            assert!(e.to_string().contains("STORAGE_TIMEOUT_SECONDS"), "{e}");
        }
    }

    #[test]
    fn webhook_outbox_place_and_claims() {
        let local = with(|_| {}).unwrap();
        assert!(!local.webhook_outbox_in_bucket, "disk: the local outbox");
        let s3 = |a: &mut ServeArgs| {
            a.storage_backend = Some("s3".into());
            a.s3_bucket = Some("b".into());
        };
        assert!(
            with(s3).unwrap().webhook_outbox_in_bucket,
            "bucket: the bucket outbox"
        );
        let c = with(|a| {
            s3(a);
            a.webhook_outbox_dir = Some("/var/spool/rack".into());
        })
        .unwrap();
        assert!(
            !c.webhook_outbox_in_bucket,
            "WEBHOOK_OUTBOX_DIR keeps the local outbox"
        );
        // The claim follows the attempt timeout unless set.
        let c = with(|a| a.webhook_timeout_seconds = Some("100".into())).unwrap();
        assert_eq!(c.webhook.claim, Duration::from_secs(130));
        let c = with(|a| {
            a.webhook_timeout_seconds = Some("5".into());
            a.webhook_claim_seconds = Some("6".into());
            a.webhook_outbox_poll_min_ms = Some("200".into());
            a.webhook_outbox_poll_max_ms = Some("200".into());
        })
        .unwrap();
        assert_eq!(
            (c.webhook.claim, c.webhook.poll_min, c.webhook.poll_max),
            (
                Duration::from_secs(6),
                Duration::from_millis(200),
                Duration::from_millis(200)
            )
        );
        // A minimum above the default maximum raises the default maximum.
        let c = with(|a| a.webhook_outbox_poll_min_ms = Some("600000".into())).unwrap();
        assert_eq!(c.webhook.poll_max, Duration::from_secs(600));
    }

    #[test]
    fn upload_guards() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.limits.max_concurrent_uploads, 4);
        assert_eq!(c.limits.upload_timeout, Duration::from_secs(300));
        let c = with(|a| {
            a.max_concurrent_uploads = Some("16".into());
            a.upload_timeout_seconds = Some("5".into());
        })
        .unwrap();
        assert_eq!(c.limits.max_concurrent_uploads, 16);
        assert_eq!(c.limits.upload_timeout, Duration::from_secs(5));
        let e = with(|a| a.max_concurrent_uploads = Some("0".into())).unwrap_err();
        assert_eq!(e.var, "MAX_CONCURRENT_UPLOADS");
        let e = with(|a| a.upload_timeout_seconds = Some("soon".into())).unwrap_err();
        assert_eq!(e.var, "UPLOAD_TIMEOUT_SECONDS");
    }

    #[test]
    fn upload_queue_and_stall() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.limits.upload_queue_max, 100);
        assert_eq!(c.limits.upload_queue_wait, Duration::from_secs(60));
        assert_eq!(c.limits.upload_stall, Duration::from_secs(15));
        let c = with(|a| {
            a.upload_queue_max = Some("0".into());
            a.upload_queue_wait_seconds = Some("2".into());
            a.upload_stall_seconds = Some("3".into());
        })
        .unwrap();
        assert_eq!(c.limits.upload_queue_max, 0);
        assert_eq!(c.limits.upload_queue_wait, Duration::from_secs(2));
        assert_eq!(c.limits.upload_stall, Duration::from_secs(3));
        type Setter = fn(&mut ServeArgs, String);
        let cases: [(&str, Setter, &[&str]); 3] = [
            (
                "UPLOAD_QUEUE_MAX",
                |a, v| a.upload_queue_max = Some(v),
                &["-1", "many"],
            ),
            (
                "UPLOAD_QUEUE_WAIT_SECONDS",
                |a, v| a.upload_queue_wait_seconds = Some(v),
                &["0", "1m"],
            ),
            (
                "UPLOAD_STALL_SECONDS",
                |a, v| a.upload_stall_seconds = Some(v),
                &["0", "-5", "soon"],
            ),
        ];
        for (var, set, bad) in cases {
            for v in bad {
                let e = with(|a| set(a, v.to_string())).unwrap_err();
                assert_eq!(e.var, var, "{v}");
                assert!(e.to_string().contains(var) && e.to_string().contains(v), "{e}");
            }
        }
    }
}
