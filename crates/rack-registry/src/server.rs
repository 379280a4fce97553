//! `rack-registry serve`: prepare storage, load the policy, bind, serve until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rack_core::auth::Policy;

use crate::audit::Audit;
use crate::auth::file as auth_file;
use crate::cache::large::LargeObjects;
use crate::cache::{HotCache, ListingCache};
use crate::config::{Backend, BucketConfig, Config};
use crate::http::body::Deadlines;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::reload::{self, Live};
use crate::state::AppState;
use crate::storage::s3::{Probe, S3Options, S3Storage};
use crate::storage::{local::TMP_DIR, LocalStorage, PutMode, Storage, StorageError};
use crate::timed_body::Deadline;
use crate::upload::admission::{self, Admission};
use crate::versions::{self, RegistryLocks};
use crate::webhooks::WebhookConfig;
use crate::{http, schemas, webhooks};
use bytes::Bytes;

/// How often config files are checked for changes (SPEC §14: within 5 s).
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Create a brand-new storage root with its health marker and the bundled schemas, so that a
/// first run serves something; an existing root is never modified beyond clearing staging.
fn prepare_local_root(root: &Path) -> Result<(), String> {
    let describe = |e: std::io::Error| format!("storage root {}: {e}", root.display());
    if !root.exists() {
        std::fs::create_dir_all(root.join("schema")).map_err(describe)?;
        std::fs::write(root.join(rack_core::layout::HEALTHCHECK_KEY), b"").map_err(describe)?;
        for (name, body) in schemas::BUNDLED {
            std::fs::write(root.join("schema").join(name), body).map_err(describe)?;
        }
        tracing::info!(root = %root.display(), "created a new storage root");
    } else if !root.is_dir() {
        return Err(format!("storage root {} is not a directory", root.display()));
    }
    Ok(())
}

/// A client for the configured bucket, checked reachable (one list call); the error names the
/// bucket and the endpoint.
pub async fn connect_bucket(bucket: &BucketConfig) -> Result<S3Storage, String> {
    let opts = S3Options {
        endpoint: bucket.endpoint.clone(),
        region: bucket.region.clone(),
        bucket: bucket.bucket.clone(),
        credentials: bucket
            .credentials
            .as_ref()
            .map(|(id, secret)| (id.clone(), secret.0.clone())),
        prefix: bucket.prefix.clone(),
    };
    let s3 = S3Storage::with_timeout(&opts, bucket.timeout)?
        .with_revalidate(bucket.revalidate)
        .with_timing(bucket.timing());
    let unreachable = |e: StorageError| {
        format!(
            "bucket {} at {} is not reachable: {e}",
            s3.bucket(),
            s3.endpoint()
        )
    };
    s3.list("", false, None, 1).await.map_err(unreachable)?;
    Ok(s3)
}

/// Open the bucket (SPEC §11.1): reachable, initialised when empty, conditional writes probed.
pub async fn open_bucket(bucket: &BucketConfig) -> Result<S3Storage, String> {
    let s3 = connect_bucket(bucket).await?;
    let unreachable = |e: StorageError| format!("bucket {} at {}: {e}", s3.bucket(), s3.endpoint());
    let first = s3.list("", false, None, 1).await.map_err(unreachable)?;
    if first.objects.is_empty() {
        // A bucket (or prefix) with nothing at all: a brand-new storage root.
        let marker = (rack_core::layout::HEALTHCHECK_KEY.to_owned(), "");
        let schemas = schemas::BUNDLED.iter().map(|(n, b)| (format!("schema/{n}"), *b));
        for (key, body) in std::iter::once(marker).chain(schemas) {
            match s3
                .put(&key, Bytes::from_static(body.as_bytes()), PutMode::Create)
                .await
            {
                Ok(_) | Err(StorageError::AlreadyExists(_)) => {}
                Err(e) => return Err(unreachable(e)),
            }
        }
        tracing::info!(storage = %s3.describe(), "initialised an empty bucket");
    }
    probe_bucket(s3, bucket.single_writer).await
}

/// The conditional-write probe (SPEC §11.1) of a connected bucket: the bucket back when it
/// honours conditional writes (or in single-writer emulation if allowed), an error saying so
/// otherwise.
pub async fn probe_bucket(s3: S3Storage, single_writer: bool) -> Result<S3Storage, String> {
    let unreachable = |e: StorageError| format!("bucket {} at {}: {e}", s3.bucket(), s3.endpoint());
    match s3.probe_conditional_writes().await.map_err(unreachable)? {
        Probe::Honoured => {
            if single_writer {
                tracing::info!(
                    "STORAGE_SINGLE_WRITER=true is not needed: the bucket honours conditional writes"
                );
            }
            Ok(s3)
        }
        failed if single_writer => {
            tracing::warn!(
                probe = ?failed,
                "the bucket does not honour conditional writes: STORAGE_SINGLE_WRITER=true, so \
                 conditional writes are serialized in this process; only ONE replica may write"
            );
            Ok(s3.single_writer())
        }
        failed => Err(format!(
            "bucket {} at {} does not honour conditional writes ({}): publishing would not be safe \
             across replicas; use a store that does, or set STORAGE_SINGLE_WRITER=true to run a \
             single writing replica",
            s3.bucket(),
            s3.endpoint(),
            match failed {
                Probe::Ignored(header) => format!("{header} was ignored"),
                Probe::Unsupported(e) => format!("a conditional write was refused: {e}"),
                Probe::Honoured => unreachable!(),
            }
        )),
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    /// A configuration problem found at startup: the bucket is unreachable or missing, refuses
    /// the credentials, or fails the conditional-write probe (SPEC §10: exit code 2, like an
    /// invalid variable).
    Config(String),
    /// Anything else (exit code 1).
    Failed(String),
}

impl ServeError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(m) | ServeError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for ServeError {
    fn from(m: String) -> Self {
        ServeError::Failed(m)
    }
}

pub async fn run(config: Config) -> Result<(), ServeError> {
    // Leased maps of small files (storage/mapped.rs) need the lease breaks heard first.
    let mut lease_breaks = None;
    let storage: Arc<dyn Storage> = match &config.backend {
        Backend::Local => {
            prepare_local_root(&config.storage_root)?;
            let local = LocalStorage::open(&config.storage_root)
                .map_err(|e| format!("storage root {}: {e}", config.storage_root.display()))?
                .require_marker();
            let mut local = if config.fs_watch {
                local.with_watcher()
            } else {
                local
            };
            if let Some((signal, maps)) = listen_for_lease_breaks(&config) {
                local = local.with_leased_maps(maps.clone());
                if local.maps_files() {
                    lease_breaks = Some((signal, maps));
                }
            }
            Arc::new(local)
        }
        Backend::R2(bucket) | Backend::S3(bucket) => {
            // STORAGE_ROOT is only local scratch space here: upload staging (`.tmp`) and the
            // default webhook outbox (`.webhooks`).
            std::fs::create_dir_all(&config.storage_root).map_err(|e| {
                format!(
                    "STORAGE_ROOT {} (upload staging): {e}",
                    config.storage_root.display()
                )
            })?;
            Arc::new(open_bucket(bucket).await.map_err(ServeError::Config)?)
        }
    };
    let (policy, auth_content) = if config.auth_from_bucket {
        auth_file::load_from_bucket(&storage).await?
    } else {
        auth_file::load(&config.auth_config_path)?
    };
    let publisher_opts = rack_core::publishers::ParseOptions {
        allow_insecure_issuers: config.oidc_allow_insecure_issuers,
    };
    let (publishers, publishers_content) =
        crate::auth::publishers::load(&config.publishers_config_path, publisher_opts)?;
    let (webhook_config, webhook_content) = webhooks::load_config(&config.webhook_config_path)?;
    let (upstream_config, upstream_content) = crate::upstream::load_config(&config.upstreams_config_path)?;
    log_loaded(&policy, config.admin.is_configured(), &webhook_config);
    let audit = Arc::new(match &config.audit_log_path {
        Some(p) => Audit::file(p).map_err(|e| format!("AUDIT_LOG_PATH {}: {e}", p.display()))?,
        None => Audit::stdout(),
    });
    let metrics = Arc::new(Metrics::new());
    let policy = Arc::new(Live::new(policy));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    reload::spawn(
        if config.auth_from_bucket {
            auth_file::watch_bucket(storage.clone())
        } else {
            auth_file::watch(&config.auth_config_path, RELOAD_INTERVAL)
        },
        policy.clone(),
        &auth_content,
        metrics.clone(),
        audit.clone(),
        shutdown_rx.clone(),
    );
    let publishers = Arc::new(Live::new(publishers));
    reload::spawn(
        crate::auth::publishers::watch(&config.publishers_config_path, RELOAD_INTERVAL, publisher_opts),
        publishers.clone(),
        &publishers_content,
        metrics.clone(),
        audit.clone(),
        shutdown_rx.clone(),
    );
    let oidc = Arc::new(crate::auth::oidc::Oidc::new(
        config.oidc_audience.clone(),
        config.oidc_allow_insecure_issuers,
        storage.clone(),
    )?);
    let webhook_config = Arc::new(Live::new(webhook_config));
    reload::spawn(
        webhooks::watch(&config.webhook_config_path, RELOAD_INTERVAL),
        webhook_config.clone(),
        &webhook_content,
        metrics.clone(),
        audit.clone(),
        shutdown_rx.clone(),
    );
    let upstream_counters = metrics.upstream.clone();
    let upstream_config = Arc::new(Live::new(upstream_config));
    reload::spawn(
        crate::upstream::watch(&config.upstreams_config_path, RELOAD_INTERVAL),
        upstream_config.clone(),
        &upstream_content,
        metrics.clone(),
        audit.clone(),
        shutdown_rx.clone(),
    );
    let outbox = if config.webhook_outbox_in_bucket {
        webhooks::OutboxPlace::Bucket(storage.clone())
    } else {
        webhooks::OutboxPlace::Dir(config.webhook_outbox_dir.clone())
    };
    let (webhook_sink, webhook_worker) = webhooks::start(
        webhook_config,
        outbox,
        config.webhook.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    )?;
    if !config.admin.is_configured() {
        tracing::info!("no ADMIN_TOKEN set: only namespace tokens can publish");
    }
    let upload_gauges = admission::Gauges {
        publishing: metrics.uploads_in_progress.with_label_values(&["publish"]),
        judging: metrics.uploads_in_progress.with_label_values(&["judge"]),
        queued: metrics.uploads_queued.clone(),
    };
    // Drops the web pages' search indexes on every publish of this replica.
    let search_sink = Arc::new(crate::http::pages::SearchSink::default());
    let ui = if config.ui {
        Some(Arc::new(crate::http::pages::Ui::new(
            storage.clone(),
            &config.ui_settings,
        )))
    } else {
        None
    };
    let state = Arc::new(AppState {
        storage: storage.clone(),
        policy,
        publishers,
        oidc,
        admin: config.admin.clone(),
        schemas: schemas::SchemaStore::new(
            matches!(config.backend, Backend::Local).then_some(config.storage_root.as_path()),
            &config.schema_dir,
            config.fs_watch,
        ),
        trust_proxy: config.trust_proxy,
        limits: config.limits.clone(),
        metrics,
        cache: HotCache::new(config.limits.cache_max_bytes),
        large: Arc::new(LargeObjects::new(
            config.limits.cache_max_bytes / 2,
            config.limits.compress_max_bytes,
        )),
        listings: ListingCache::default(),
        rate_limiter: RateLimiter::new(config.limits.rate_limit_max, config.limits.rate_limit_window),
        audit,
        staging_root: config.storage_root.join(TMP_DIR),
        registry_locks: RegistryLocks::default(),
        upstreams: crate::upstream::Upstreams::new(
            upstream_config,
            Some(upstream_counters),
            storage.clone(),
            config.storage_root.join(TMP_DIR),
            crate::upstream::store::Limits {
                max_manifest_bytes: config.limits.max_manifest_bytes,
                max_files: config.limits.max_archive_entries,
                max_total_bytes: config.limits.max_extracted_bytes,
            },
        ),
        lifecycles: Default::default(),
        uploads: Admission::new(
            admission::Settings {
                slots: config.limits.max_concurrent_uploads,
                queue_max: config.limits.upload_queue_max,
                queue_wait: config.limits.upload_queue_wait,
            },
            upload_gauges,
        ),
        bodies: Deadlines {
            upload: Deadline {
                stall: config.limits.upload_stall,
                total: config.limits.upload_timeout,
            },
            form: Deadline {
                stall: config.header_timeout,
                total: config.header_timeout,
            },
        },
        sinks: vec![
            webhook_sink as Arc<dyn crate::events::PublishSink>,
            search_sink.clone(),
        ],
        ui,
    });
    search_sink.bind(&state);
    // Finish publishes that a crash interrupted, then drop every other leftover of staging:
    // outside an in-flight upload it is empty. Storage that refuses writes (no `.healthcheck`)
    // is left as it is, journal included, for the first start with the marker in place.
    let writable = state.storage.check_writable().await;
    if let Err(e) = &writable {
        tracing::warn!(error = %e, "uploads are refused until the storage marker exists");
    }
    // On a bucket the publish leases are the journal (their sweep finishes such publishes, and
    // keeps the namespace index too).
    let repair = if writable.is_ok() && !state.storage.publish_lists_version() {
        versions::repair_journal(state.storage.as_ref(), &state.registry_locks, &state.staging_root).await
    } else {
        Ok(Vec::new())
    };
    match repair {
        Ok(fixed) if !fixed.is_empty() => {
            tracing::warn!(registries = ?fixed, "repaired versions.json of versions published before a crash")
        }
        Ok(_) => {}
        Err(e) => return Err(format!("startup repair of versions.json failed: {e}").into()),
    }
    if writable.is_ok() && state.staging_root.exists() {
        std::fs::remove_dir_all(&state.staging_root)
            .map_err(|e| format!("cannot clear staging {}: {e}", state.staging_root.display()))?;
    }
    if let Some((signal, maps)) = lease_breaks {
        spawn_lease_breaks(signal, maps, state.clone());
    }
    if let Backend::R2(bucket) | Backend::S3(bucket) = &config.backend {
        spawn_lease_sweep(state.clone(), bucket.timing(), shutdown_rx.clone());
    }
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        storage = %storage.describe(),
        workers = config.http_workers,
        max_connections = config.max_connections,
        "listening on http://{local}"
    );
    let settings = http::serve::Settings {
        workers: config.http_workers,
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    http::serve::serve(listener, http::service(state), settings, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    let _ = shutdown_tx.send(true);
    // Let in-flight webhook attempts settle (bounded); pending deliveries stay in the outbox.
    let _ = webhook_worker.await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Most namespace names listed in the startup line (the count is always complete).
const LOGGED_NAMESPACES: usize = 20;

/// One line that confirms what startup loaded, so an operator sees at once a wrong
/// `AUTH_CONFIG_PATH`, a missing admin token or webhooks that did not load. Never a secret.
fn log_loaded(policy: &Policy, admin_token: bool, webhooks: &WebhookConfig) {
    let mut names: Vec<&str> = policy.namespaces().map(|(ns, _)| ns).collect();
    names.sort_unstable();
    let mut shown = names
        .iter()
        .take(LOGGED_NAMESPACES)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if names.len() > LOGGED_NAMESPACES {
        shown.push_str(&format!(",... ({} more)", names.len() - LOGGED_NAMESPACES));
    }
    tracing::info!(
        namespaces = names.len(),
        namespace_names = %shown,
        admin_token = if admin_token { "set" } else { "not set" },
        webhooks = webhooks.webhooks.len(),
        webhooks_enabled = webhooks.enabled_count(),
        "configuration loaded"
    );
}

/// Start listening for `SIGIO` (lease breaks) and make the bounds of leased maps, when the
/// local backend may map files (`MAP_FILES`, with `FS_WATCH`, and a `/proc/locks` to read).
/// The listener must exist before the first lease: `SIGIO`'s default action ends the process.
fn listen_for_lease_breaks(
    config: &Config,
) -> Option<(tokio::signal::unix::Signal, Arc<crate::storage::mapped::Maps>)> {
    if !(config.map_files && config.fs_watch) {
        return None;
    }
    let maps = crate::storage::mapped::Maps::new(map_budget(config.limits.cache_max_bytes))?;
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::io()) {
        Ok(signal) => Some((signal, maps)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGIO: files are not memory-mapped");
            None
        }
    }
}

/// Bytes of files the leased maps may hold: eight times the hot cache's budget (512 MiB by
/// default). They are page cache the kernel can reclaim, not heap, but they count in the
/// process's resident memory once read.
fn map_budget(cache_max_bytes: u64) -> u64 {
    cache_max_bytes.saturating_mul(8)
}

/// On each `SIGIO`, give up the leases that are breaking: every map of those files becomes a
/// private copy of its bytes (responses in flight finish with them), which releases the lease
/// at once, so the writer waiting on it proceeds; and drop the files' cache entries.
fn spawn_lease_breaks(
    mut signal: tokio::signal::unix::Signal,
    maps: Arc<crate::storage::mapped::Maps>,
    state: Arc<AppState>,
) {
    tokio::spawn(async move {
        while signal.recv().await.is_some() {
            let keys = maps.break_leases();
            for key in &keys {
                state.cache.invalidate(key);
            }
            if !keys.is_empty() {
                tracing::debug!(
                    files = keys.len(),
                    "lease breaks: mapped files copied out and dropped from the cache"
                );
            }
        }
    });
}

/// Every replica finishes the publishes of dead replicas (SPEC §11.2), announcing their versions
/// to the webhook outbox: once at startup, then once per lease lifetime (one list call of
/// `.rack/leases/` when there is nothing to do).
fn spawn_lease_sweep(
    state: Arc<AppState>,
    timing: crate::storage::publish::Timing,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(timing.ttl);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let announcer = crate::events::Announcer(&state.sinks);
            match crate::storage::publish::sweep_all(state.storage.as_ref(), timing, &announcer).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(leases = n, "finished publishes left by a dead publisher"),
                Err(e) => tracing::error!(error = %e, "publish lease sweep failed"),
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
