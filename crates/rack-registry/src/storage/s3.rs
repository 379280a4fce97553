//! S3-compatible bucket storage (AWS S3, Cloudflare R2, MinIO, moto, ...) through the
//! `object_store` crate (SPEC §11.1).
//!
//! Keys are those of the disk layout (SPEC §3) under an optional `STORAGE_PREFIX`. The ETag is
//! the object's version: create-only puts send `If-None-Match: *`, compare-and-swap puts
//! `If-Match: <etag>`, so two replicas can never both win a create nor lose each other's swap.
//! `object_store` retries 5xx, throttling and transport errors with jittered exponential
//! backoff ([`retry`]). Every storage call, retries included, is bounded by
//! `STORAGE_TIMEOUT_SECONDS` ([`S3Storage::with_timeout`]): a store that hangs or keeps failing
//! turns into an error within that time, never into a request that hangs.
//!
//! Errors never carry a response body: an S3 error document can echo the access key id and the
//! request being signed, so only the status line and the S3 error code are kept ([`scrub`]).
//!
//! A store that silently ignores conditional headers cannot keep publishing safe across
//! replicas; [`S3Storage::probe_conditional_writes`] finds out at startup, and
//! [`S3Storage::single_writer`] is the explicit escape hatch: conditional puts are then checked
//! under one in-process lock (safe for one writing replica only).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

use super::{
    validate_key, validate_prefix, walk_marked_dirs, DirFilter, ListPage, Object, ObjectMeta, ObjectStream,
    PutMode, Result, Storage, StorageError,
};

/// Where and how to reach a bucket.
#[derive(Clone)]
pub struct S3Options {
    /// `None`: AWS itself (virtual-hosted addressing); otherwise any S3 API, path-style.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// `None`: the standard AWS credential chain (environment, profile-less web identity,
    /// container and instance metadata).
    pub credentials: Option<(String, String)>,
    /// Key prefix inside the bucket (`STORAGE_PREFIX`): empty, or ending in `/`.
    pub prefix: String,
}

/// What the conditional-write probe found (SPEC §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Both `If-None-Match: *` and `If-Match` are honoured.
    Honoured,
    /// The store accepted a write it should have refused (which header it ignored).
    Ignored(&'static str),
    /// The store refused a conditional write outright (an error: not implemented, ...).
    Unsupported(String),
}

/// Retries with jittered exponential backoff (100 ms doubling, at most 4 s apart) on 5xx,
/// 429/`SlowDown` and transport errors: at most 5 retries, none started after `timeout`.
pub fn retry(timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: timeout,
    }
}

/// Default bound of one storage call, retries included (`STORAGE_TIMEOUT_SECONDS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The least time one HTTP exchange with the bucket may take, body included: what a large
/// object streamed to a client has to arrive whole (other calls are cut at their timeout).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

pub struct S3Storage {
    store: AmazonS3,
    bucket: String,
    /// For messages: the endpoint as configured (`AWS` when unset).
    endpoint: String,
    prefix: String,
    /// `STORAGE_SINGLE_WRITER` on a store without conditional writes: conditional puts are
    /// checked and written under this lock instead.
    emulate: Option<tokio::sync::Mutex<()>>,
    /// [`Storage::revalidate_after`] for mutable objects (`STORAGE_REVALIDATE_MS`).
    revalidate: Duration,
    /// The publish protocol's timings ([`super::publish`]: `PUBLISH_LEASE_SECONDS`,
    /// `PUBLISH_PARALLEL_WRITES`, and the bound of one call below).
    publish: super::publish::Timing,
    /// Bound of one storage call, retries included (`STORAGE_TIMEOUT_SECONDS`).
    timeout: Duration,
    /// The bucket's clock, from the `Date` of its responses ([`BucketClock`]).
    clock: Arc<BucketClock>,
    /// Namespace indexes read recently ([`super::index`]), by namespace: the same shared list
    /// while the index is unchanged (so its rendering is reused), trusted for `revalidate`.
    indexes: std::sync::Mutex<HashMap<String, IndexEntry>>,
}

struct IndexEntry {
    etag: String,
    list: Arc<[String]>,
    checked: std::time::Instant,
}

/// Objects under a version directory never change once published (SPEC §3); they are asked for
/// again only this often, in case an operator removed them.
pub const IMMUTABLE_REVALIDATE: Duration = Duration::from_secs(60);

/// Whether `key` lies under a version directory (`@ns/<segments>/<version>/...`): registry path
/// segments have no dots, so the first segment that parses as a version is the version.
pub fn under_version_dir(key: &str) -> bool {
    let mut segs = key.split('/');
    key.starts_with('@') && segs.next().is_some() && {
        let mut inner: Vec<&str> = segs.collect();
        inner.pop();
        inner.into_iter().any(rack_core::names::is_version)
    }
}

/// The status line and S3 error code of an `object_store` error message, without the response
/// body (which may echo the access key id or the string to sign), bounded in length.
pub fn scrub(text: &str) -> String {
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim());
    let head = text.find('<').map_or(text, |i| &text[..i]);
    let head = head.trim_end_matches([' ', ':', '\n']);
    let head = super::bounded(head, 512);
    match code {
        Some(c) if !c.is_empty() => format!("{head} ({})", super::bounded(c, 64)),
        _ => head.into_owned(),
    }
}

/// The bucket's clock as this process sees it (SPEC §11.2: leases expire on the bucket's
/// clock): the latest `Date` header heard, advanced by the monotonic clock since. `Date` is cut
/// to the second and sent before the answer travels, so this runs up to a second (and a
/// network trip) behind the bucket: a lease is judged expired late, never early.
#[derive(Debug, Default)]
pub struct BucketClock {
    heard: std::sync::Mutex<Option<(i64, std::time::Instant)>>,
}

/// An observation older than this is not trusted (the bucket's clock may have been stepped).
const CLOCK_FRESH: Duration = Duration::from_secs(30);

impl BucketClock {
    fn estimate(heard: &Option<(i64, std::time::Instant)>) -> Option<i64> {
        heard.map(|(date, at)| date + at.elapsed().as_millis() as i64)
    }

    /// A response's `Date`, in Unix milliseconds.
    pub fn heard(&self, date_ms: i64) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let stale = heard.is_none_or(|(_, at)| at.elapsed() > CLOCK_FRESH);
        if stale || BucketClock::estimate(&heard).is_some_and(|now| date_ms >= now) {
            *heard = Some((date_ms, std::time::Instant::now()));
        }
    }

    /// Now on the bucket's clock, if something fresh was heard.
    pub fn now_ms(&self) -> Option<i64> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .filter(|(_, at)| at.elapsed() <= CLOCK_FRESH)
            .and_then(|_| BucketClock::estimate(&heard))
    }
}

/// `object_store`'s own HTTP client, listening to the `Date` of every response (the crate
/// exposes no response header; this is its documented extension point).
#[derive(Debug)]
struct DateWatch(Arc<BucketClock>);

#[derive(Debug)]
struct DateWatching {
    inner: HttpClient,
    clock: Arc<BucketClock>,
}

impl HttpConnector for DateWatch {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(DateWatching {
            inner,
            clock: self.0.clone(),
        }))
    }
}

#[async_trait]
impl HttpService for DateWatching {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        let response = self.inner.execute(req).await?;
        if let Some(date) = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
        {
            if let Ok(d) = date.duration_since(std::time::UNIX_EPOCH) {
                self.clock.heard(d.as_millis() as i64);
            }
        }
        Ok(response)
    }
}

impl S3Storage {
    /// A client for the bucket (nothing is asked of the bucket yet), with the default timeout.
    pub fn new(opts: &S3Options) -> std::result::Result<S3Storage, String> {
        S3Storage::with_timeout(opts, DEFAULT_TIMEOUT)
    }

    /// A client whose every call (each attempt, and all retries together) ends within
    /// `timeout` (`STORAGE_TIMEOUT_SECONDS`). The body of an object streamed to a client is
    /// bounded by the HTTP client's own timeout instead, which covers the whole transfer: at
    /// least [`STREAM_TIMEOUT`], so that a large object is not cut by a short `timeout`.
    pub fn with_timeout(opts: &S3Options, timeout: Duration) -> std::result::Result<S3Storage, String> {
        let mut b = match &opts.credentials {
            Some((id, secret)) => AmazonS3Builder::new()
                .with_access_key_id(id)
                .with_secret_access_key(secret),
            None => AmazonS3Builder::from_env(),
        };
        b = b
            .with_bucket_name(&opts.bucket)
            .with_region(&opts.region)
            .with_retry(retry(timeout))
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(opts.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
                    .with_connect_timeout(timeout.min(Duration::from_secs(5)))
                    .with_timeout(timeout.max(STREAM_TIMEOUT)),
            );
        let clock = Arc::new(BucketClock::default());
        b = b.with_http_connector(DateWatch(clock.clone()));
        b = match &opts.endpoint {
            Some(e) => b.with_endpoint(e).with_virtual_hosted_style_request(false),
            None => b.with_virtual_hosted_style_request(true),
        };
        let store = b.build().map_err(|e| {
            format!(
                "bucket {} at {}: {}",
                opts.bucket,
                opts.endpoint.as_deref().unwrap_or("AWS"),
                scrub(&e.to_string())
            )
        })?;
        Ok(S3Storage {
            store,
            bucket: opts.bucket.clone(),
            endpoint: opts.endpoint.clone().unwrap_or_else(|| "AWS".into()),
            prefix: opts.prefix.clone(),
            emulate: None,
            revalidate: Duration::from_secs(1),
            publish: super::publish::Timing {
                call: timeout,
                ..Default::default()
            },
            timeout,
            clock,
            indexes: Default::default(),
        })
    }

    /// Check conditional puts in-process (`STORAGE_SINGLE_WRITER=true` on a store that ignores
    /// them): correct only while this process is the only writer.
    pub fn single_writer(mut self) -> S3Storage {
        self.emulate = Some(tokio::sync::Mutex::new(()));
        self
    }

    /// How long a mutable object read from the bucket is trusted (`STORAGE_REVALIDATE_MS`).
    pub fn with_revalidate(mut self, every: Duration) -> S3Storage {
        self.revalidate = every;
        self
    }

    /// The publish protocol's timings (`BucketConfig::timing`: its `call` is the timeout this
    /// client was built with).
    pub fn with_timing(mut self, t: super::publish::Timing) -> S3Storage {
        self.publish = t;
        self
    }

    pub fn timing(&self) -> super::publish::Timing {
        self.publish
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `call` on `key`, failed once the storage timeout has passed: `object_store` stops
    /// retrying after it, but an attempt started just before would run one timeout more.
    async fn bounded<T>(&self, key: &str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Backend(format!(
                "s3://{}/{}{}: no answer within {} s (STORAGE_TIMEOUT_SECONDS)",
                self.bucket,
                self.prefix,
                super::bounded(key, super::MAX_LOGGED_KEY),
                self.timeout.as_secs_f64()
            ))),
        }
    }

    /// The bucket path of a validated key.
    fn path(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        Path::parse(format!("{}{key}", self.prefix)).map_err(|_| StorageError::InvalidKey(key.to_owned()))
    }

    /// A bucket key back to a storage key (`None` if outside the prefix).
    fn unprefix<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.prefix.as_str())
    }

    fn meta(&self, key: &str, m: &object_store::ObjectMeta) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: m.size,
            version: m.e_tag.clone().unwrap_or_default(),
            modified_ms: Some(m.last_modified.timestamp_millis()),
        }
    }

    /// Map an error of a request on `key`; `mode` decides what a refused condition means.
    fn error(&self, key: &str, mode: Option<&PutMode>, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        match (e, mode) {
            (E::AlreadyExists { .. } | E::Precondition { .. }, Some(PutMode::Create)) => {
                StorageError::AlreadyExists(key.to_owned())
            }
            (
                E::AlreadyExists { .. } | E::Precondition { .. } | E::NotFound { .. },
                Some(PutMode::IfVersion(_)),
            ) => StorageError::PreconditionFailed(key.to_owned()),
            (E::NotImplemented, _) => StorageError::Backend(format!(
                "bucket {} at {}: conditional writes are not supported by this store",
                self.bucket, self.endpoint
            )),
            (e, _) => {
                let text = e.to_string();
                if text.contains("NoSuchBucket") {
                    return StorageError::Unavailable(format!(
                        "bucket {} does not exist at {}",
                        self.bucket, self.endpoint
                    ));
                }
                StorageError::Backend(format!(
                    "s3://{}/{}{}: {}",
                    self.bucket,
                    self.prefix,
                    super::bounded(key, super::MAX_LOGGED_KEY),
                    scrub(&text)
                ))
            }
        }
    }

    /// `Ok(None)` for a missing object (but not for a missing bucket).
    /// A GET of `key` (a "directory" key ending in `/` is no object): its metadata and the
    /// response, whose body is read whole or streamed by the caller.
    async fn open(&self, key: &str) -> Result<Option<(ObjectMeta, object_store::GetResult)>> {
        let path = self.path(key)?;
        if key.ends_with('/') {
            return Ok(None);
        }
        match self.store.get(&path).await {
            Ok(r) => Ok(Some((self.meta(key, &r.meta), r))),
            Err(e) => self.absent(key, e),
        }
    }

    fn absent<T>(&self, key: &str, e: object_store::Error) -> Result<Option<T>> {
        match e {
            object_store::Error::NotFound { ref source, .. }
                if !source.to_string().contains("NoSuchBucket") =>
            {
                Ok(None)
            }
            e => Err(self.error(key, None, e)),
        }
    }

    /// SPEC §11.1: write a scratch key under `.rack/probe/` create-only twice (the second must be
    /// refused), then compare-and-swap it against a wrong ETag (must be refused too), and remove
    /// it. Always asks the store itself, never the in-process emulation.
    pub async fn probe_conditional_writes(&self) -> Result<Probe> {
        let key = format!(".rack/probe/{:016x}", rand::random::<u64>());
        let path = self.path(&key)?;
        let put = |mode: object_store::PutMode| {
            self.store.put_opts(
                &path,
                PutPayload::from_static(b"probe"),
                PutOptions {
                    mode,
                    ..Default::default()
                },
            )
        };
        let verdict = async {
            if let Err(e) = put(object_store::PutMode::Create).await {
                return Ok(Probe::Unsupported(scrub(&e.to_string())));
            }
            match put(object_store::PutMode::Create).await {
                Ok(_) => return Ok(Probe::Ignored("If-None-Match")),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(self.error(&key, None, e)),
            }
            let wrong = UpdateVersion {
                e_tag: Some("\"00000000000000000000000000000000\"".into()),
                version: None,
            };
            match put(object_store::PutMode::Update(wrong)).await {
                Ok(_) => Ok(Probe::Ignored("If-Match")),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    Ok(Probe::Honoured)
                }
                Err(e) => Err(self.error(&key, None, e)),
            }
        }
        .await;
        let _ = self.store.delete(&path).await;
        verdict
    }

    /// A put, with conditional writes checked in-process under `STORAGE_SINGLE_WRITER`.
    async fn put_checked(&self, key: &str, path: &Path, body: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let Some(lock) = &self.emulate else {
            return self.put_raw(key, path, body, &mode).await;
        };
        if mode == PutMode::Overwrite {
            return self.put_raw(key, path, body, &mode).await;
        }
        let _guard = lock.lock().await;
        let current = self.head(key).await?;
        match (&mode, current) {
            (PutMode::Create, Some(_)) => Err(StorageError::AlreadyExists(key.to_owned())),
            (PutMode::IfVersion(v), Some(m)) if &m.version == v => {
                self.put_raw(key, path, body, &PutMode::Overwrite).await
            }
            (PutMode::IfVersion(_), _) => Err(StorageError::PreconditionFailed(key.to_owned())),
            _ => self.put_raw(key, path, body, &PutMode::Overwrite).await,
        }
    }

    async fn put_raw(&self, key: &str, path: &Path, body: Bytes, mode: &PutMode) -> Result<ObjectMeta> {
        let size = body.len() as u64;
        let os_mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
            PutMode::IfVersion(v) => object_store::PutMode::Update(UpdateVersion {
                e_tag: Some(v.clone()),
                version: None,
            }),
        };
        let r = self
            .store
            .put_opts(
                path,
                PutPayload::from_bytes(body),
                PutOptions {
                    mode: os_mode,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(key, Some(mode), e))?;
        match r.e_tag {
            Some(tag) => Ok(ObjectMeta {
                key: key.to_owned(),
                size,
                version: tag,
                modified_ms: None,
            }),
            // A store that answers without an ETag: ask for it.
            None => self
                .head(key)
                .await?
                .ok_or_else(|| StorageError::Backend(format!("{key} vanished after write"))),
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.bounded(key, async {
            let Some((meta, r)) = self.open(key).await? else {
                return Ok(None);
            };
            let body = match r.bytes().await {
                Ok(b) => b,
                Err(e) => return self.absent(key, e),
            };
            Ok(Some(Object { meta, body }))
        })
        .await
    }

    async fn get_stream(&self, key: &str) -> Result<Option<ObjectStream>> {
        let Some((meta, r)) = self.bounded(key, self.open(key)).await? else {
            return Ok(None);
        };
        let body = r
            .into_stream()
            .map_err(|e| std::io::Error::other(scrub(&e.to_string())))
            .boxed();
        Ok(Some(ObjectStream { meta, body }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        if key.ends_with('/') {
            return Ok(None);
        }
        match self
            .bounded(key, async { Ok(self.store.head(&path).await) })
            .await?
        {
            Ok(m) => Ok(Some(self.meta(key, &m))),
            Err(e) => self.absent(key, e),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        validate_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        // After a rolled-up prefix `a/b/`, S3's start-after must skip every key under it, not
        // only `a/b/` itself (keys are compared as UTF-8 bytes; U+10FFFF sorts last).
        let offset = start_after.map(|s| {
            if s.ends_with('/') {
                format!("{}{s}\u{10FFFF}", self.prefix)
            } else {
                format!("{}{s}", self.prefix)
            }
        });
        let mut token: Option<String> = None;
        loop {
            let opts = PaginatedListOptions {
                offset: if token.is_none() { offset.clone() } else { None },
                delimiter: delimiter.then_some("/".into()),
                max_keys: Some(limit.clamp(1, 1000)),
                page_token: token.take(),
                ..Default::default()
            };
            let call = async {
                self.store
                    .list_paginated((!full.is_empty()).then_some(full.as_str()), opts)
                    .await
                    .map_err(|e| self.error(prefix, None, e))
            };
            let r = self.bounded(prefix, call).await?;
            let after = |k: &str| start_after.is_none_or(|s| k > s);
            let mut page = ListPage::default();
            for o in &r.result.objects {
                if let Some(k) = self.unprefix(o.location.as_ref()).filter(|k| after(k)) {
                    page.objects.push(self.meta(k, o));
                }
            }
            for p in &r.result.common_prefixes {
                if let Some(k) = self.unprefix(p.as_ref()) {
                    let k = format!("{k}/");
                    if after(&k) {
                        page.prefixes.push(k);
                    }
                }
            }
            page.objects.sort_by(|a, b| a.key.cmp(&b.key));
            page.prefixes.sort();
            if r.page_token.is_some() {
                let last_obj = page.objects.last().map(|o| o.key.as_str());
                let last_prefix = page.prefixes.last().map(String::as_str);
                match last_obj.max(last_prefix) {
                    Some(last) => page.next = Some(last.to_owned()),
                    // Everything on this page was filtered out: read on.
                    None => {
                        token = r.page_token;
                        continue;
                    }
                }
            }
            return Ok(page);
        }
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        if key.ends_with('/') {
            return Err(StorageError::InvalidKey(key.to_owned()));
        }
        if super::index::is_index_key(key) {
            // This replica's own index change is seen by its next listing at once.
            let ns = key.split_once('/').map_or(key, |(ns, _)| ns);
            self.indexes.lock().unwrap_or_else(|e| e.into_inner()).remove(ns);
        }
        self.bounded(key, self.put_checked(key, &path, body, mode)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let path = self.path(prefix)?;
        if !prefix.ends_with('/') {
            let call = async {
                match self.store.head(&path).await {
                    Ok(_) => {
                        self.store
                            .delete(&path)
                            .await
                            .map_err(|e| self.error(prefix, None, e))?;
                        Ok(1)
                    }
                    Err(e) => self.absent::<()>(prefix, e).map(|_| 0),
                }
            };
            return self.bounded(prefix, call).await;
        }
        let mut deleted = 0;
        loop {
            // Always from the start: what was listed is gone once deleted.
            let page = self.list(prefix, false, None, 1000).await?;
            if page.objects.is_empty() {
                return Ok(deleted);
            }
            let paths: Vec<object_store::Result<Path>> = page
                .objects
                .iter()
                .map(|o| Ok(self.path(&o.key).expect("listed keys are valid")))
                .collect();
            let call = async {
                let mut n = 0;
                let mut results = self.store.delete_stream(futures::stream::iter(paths).boxed());
                while let Some(r) = results.next().await {
                    match r {
                        Ok(_) => n += 1,
                        Err(e @ object_store::Error::NotFound { .. }) => drop(e),
                        Err(e) => return Err(self.error(prefix, None, e)),
                    }
                }
                Ok(n)
            };
            deleted += self.bounded(prefix, call).await?;
            if page.next.is_none() {
                return Ok(deleted);
            }
        }
    }
    /// Registries of a namespace from its index (SPEC §3): one GET (none within the revalidation
    /// window) instead of a list call per directory; a missing index is walked and written.
    async fn find_marked_dirs(
        &self,
        prefix: &str,
        marker: &str,
        descend: DirFilter,
    ) -> Result<Option<Arc<[String]>>> {
        use super::index;
        let ns = prefix
            .strip_suffix('/')
            .filter(|ns| marker == "versions.json" && rack_core::names::is_namespace(ns));
        let Some(ns) = ns else {
            return walk_marked_dirs(self, prefix, marker, descend).await;
        };
        let lock = || self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = lock().get(ns) {
            if hit.checked.elapsed() < self.revalidate {
                return Ok(Some(hit.list.clone()));
            }
        }
        let key = index::index_key(ns);
        if let Some(obj) = self.get(&key).await? {
            if let Some(list) = index::parse(&obj.body) {
                let mut map = lock();
                let list = match map.get(ns) {
                    Some(hit) if hit.etag == obj.meta.version => hit.list.clone(),
                    _ => Arc::from(list),
                };
                if map.len() >= 1024 {
                    map.clear();
                }
                map.insert(
                    ns.to_owned(),
                    IndexEntry {
                        etag: obj.meta.version,
                        list: list.clone(),
                        checked: std::time::Instant::now(),
                    },
                );
                return Ok(Some(list));
            }
        }
        let found = walk_marked_dirs(self, prefix, marker, descend).await?;
        if let Some(list) = &found {
            // Create-only: a publish's index (which may list more) always wins.
            match self.put(&key, index::render(list), PutMode::Create).await {
                Ok(_) | Err(StorageError::AlreadyExists(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not write the namespace index"),
            }
        }
        Ok(found)
    }

    /// The lease protocol of SPEC §11.2 ([`super::publish`]).
    async fn publish_dir(
        &self,
        staged: &std::path::Path,
        dest: &str,
        announce: &dyn super::publish::Announce,
    ) -> Result<()> {
        super::publish::publish_dir(self, staged, dest, &self.timing(), announce).await
    }

    /// The bucket's `Date`, as last seen and advanced by this machine's monotonic clock; asked
    /// of the bucket (a HEAD of the health marker) when nothing was heard for a while.
    async fn store_now_ms(&self) -> Result<i64> {
        if let Some(now) = self.clock.now_ms() {
            return Ok(now);
        }
        self.head(rack_core::layout::HEALTHCHECK_KEY).await?;
        self.clock.now_ms().ok_or_else(|| {
            StorageError::Backend(format!(
                "bucket {} at {} sends no Date header: publish leases cannot expire",
                self.bucket, self.endpoint
            ))
        })
    }

    fn publish_lists_version(&self) -> bool {
        true
    }

    fn publish_timing(&self) -> Option<super::publish::Timing> {
        Some(self.timing())
    }

    fn revalidate_after(&self, key: &str) -> Option<Duration> {
        if under_version_dir(key) {
            Some(IMMUTABLE_REVALIDATE)
        } else {
            Some(self.revalidate).filter(|d| !d.is_zero())
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{} ({})", self.bucket, self.prefix, self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::{scrub, under_version_dir};

    #[test]
    fn version_directories_are_told_apart() {
        for yes in [
            "@ns/a/1.0.0/registry.json",
            "@ns/a/b/2.0.0-rc.1/src/x.ts",
            "@ns/a/1.0.0/lib/3.0.0/y",
        ] {
            assert!(under_version_dir(yes), "{yes}");
        }
        for no in [
            "@ns/a/versions.json",
            "@ns/a/b/versions.json",
            "@ns/.registries.json",
            "presets/1.0.0/preset.json",
            "schema/rack.json",
            "@ns/a/1.0.0",
        ] {
            assert!(!under_version_dir(no), "{no}");
        }
    }

    #[test]
    fn error_bodies_never_reach_a_message() {
        let text = "Generic S3 error: Error performing PUT http://127.0.0.1:9000/b/k in 3ms - Server \
                    returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error>\
                    <Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIDSECRETISH</AWSAccessKeyId>\
                    <StringToSign>AWS4-HMAC-SHA256</StringToSign></Error>";
        let s = scrub(text);
        assert!(!s.contains("AKIDSECRETISH") && !s.contains("StringToSign"), "{s}");
        assert!(
            s.contains("403 Forbidden") && s.ends_with("(SignatureDoesNotMatch)"),
            "{s}"
        );
        assert_eq!(scrub("plain transport error"), "plain transport error");
    }
}
