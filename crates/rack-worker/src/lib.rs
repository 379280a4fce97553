//! # rack-worker
//!
//! The edge Worker of SPEC §11.6: the read API of SPEC §4 served straight from the R2 binding
//! `BUCKET`. Every rule of the contract (URL grammar, keys, MIME types, versions, auth parsing
//! and decisions, ETags, error bodies, listing and `/health` bodies) comes from `rack-core`, the
//! crate the server uses, so both answer the same bytes; this crate only moves them between R2
//! and HTTP. The conformance suite (`conformance/`) runs against it through `serve-local`.
//!
//! The version lifecycle (SPEC §18) is applied as the server applies it, from the registry's
//! `lifecycle.json` ([`rack_core::lifecycle`]), read beside the object of every registry read
//! (one more bucket read, concurrent with the first, uncached like `versions.json`, so a yank,
//! a deletion or a deprecation shows on the very next request): an exact version that was
//! deleted is 410 `VERSION_DELETED`, one that was yanked carries `X-Rack-Yanked: <reason>`, and
//! every 200 and 304 of a deprecated registry carries `Deprecation` and `Link`.
//! `GET /-/lifecycle/@ns/<segs>` serves the document under the namespace's read rules. The
//! management writes (`PUT`/`DELETE` on `/-/yank/...`, `/-/deprecate/...`,
//! `/-/versions/...`) are not routes at the edge, like `POST /registries`: 404 "Route not
//! found" whatever the method; they go to the server.

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::future::join;
use rack_core::auth::{extract_token, parse_digest, Admin, Credential, Ctx, Policy};
use rack_core::etag::{etag_of, if_none_match};
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::{lifecycle_key, Lifecycle, VersionState};
use rack_core::listing::{self, Walk};
use rack_core::mime::content_type;
use rack_core::route::{
    route, Action, CacheTier, RegistryResource, ResourceKind, Route, NOSNIFF, SANDBOX_CSP,
};
use rack_core::ApiError;
use worker::{console_error, console_warn, event, Bucket, Context, Date, Env, Headers, Response};

/// Policy cache lifetime when `AUTH_CACHE_SECONDS` is not set (SPEC §11.6).
const DEFAULT_AUTH_CACHE_SECONDS: u64 = 60;

/// Objects per R2 list call (R2's maximum).
const LIST_PAGE: u32 = 1000;

/// Why a request failed: a contract error for the client, or an internal one (500, logged).
enum Fail {
    Api(ApiError),
    Internal(String),
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail::Api(e)
    }
}

impl From<worker::Error> for Fail {
    fn from(e: worker::Error) -> Fail {
        Fail::Internal(e.to_string())
    }
}

type Result<T, E = Fail> = std::result::Result<T, E>;

/// A successful answer before it becomes a response.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    cache: CacheTier,
    /// Headers of the lifecycle (SPEC §18), on the 200 and on its 304.
    lifecycle: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(body: impl Into<Vec<u8>>, cache: CacheTier) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            content_type: "application/json",
            cache,
            lifecycle: Vec::new(),
        }
    }
}

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let method = req.inner().method();
    let url = req.inner().url();
    let path = raw_path(&url);
    let headers = req.headers();
    let head = method == "HEAD";
    let route = route(path);
    // What the route adds to every answer, whatever its status (SPEC §4, as on the server):
    // the sandbox of template files; the `Vary` of `/namespaces`.
    let (sandboxed, vary) = (route.sandboxed(), route.vary());
    let mut res = match route {
        // No metrics, no uploads, no management writes (SPEC §18) and no API document at the
        // edge (SPEC §11.6): not routes here, whatever the method.
        Route::NotFound | Route::Metrics | Route::Upload | Route::OpenApi => {
            error(&ApiError::route_not_found(), head)?
        }
        Route::Manage(action, _) if action != Action::Lifecycle => error(&ApiError::route_not_found(), head)?,
        r if !r.allows(&method) => method_not_allowed(r.allowed_methods(), head)?,
        r => match read(&env, headers, r).await {
            Ok(reply) => respond(reply, headers, head)?,
            Err(Fail::Api(e)) => error(&e, head)?,
            Err(Fail::Internal(detail)) => {
                console_error!("internal error on {method} {path}: {detail}");
                error(&ApiError::internal(), head)?
            }
        },
    };
    if sandboxed {
        let out = res.headers_mut();
        out.set("content-security-policy", SANDBOX_CSP)?;
        out.set("x-content-type-options", NOSNIFF)?;
    }
    if let Some(v) = vary.filter(|_| matches!(res.status_code(), 200 | 304)) {
        res.headers_mut().set("vary", v)?;
    }
    Ok(res)
}

/// The request target's path exactly as the runtime hands it over (no query, no fragment).
fn raw_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

async fn read(env: &Env, headers: &Headers, route: Route) -> Result<Reply> {
    let bucket = env.bucket("BUCKET")?;
    match route {
        Route::Health => Ok(health(&bucket).await),
        Route::Preset(name) => {
            let body = get(&bucket, &layout::preset_key(&name?))
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(Reply::json(body, CacheTier::Day))
        }
        Route::Schema(file) => {
            let body = get(&bucket, &layout::schema_key(file?))
                .await?
                .ok_or_else(ApiError::schema_not_found)?;
            Ok(Reply::json(body, CacheTier::Day))
        }
        Route::Registry(res) => {
            let res = res?;
            let (policy, admin, cred) = access(env, &bucket, headers).await?;
            ctx(&policy, &admin, cred.as_ref()).read(res.namespace())?;
            let cache = res.cache_tier(&policy);
            registry(&bucket, res, cache).await
        }
        Route::Manage(Action::Lifecycle, ref target) => {
            let target = target.clone()?;
            let (policy, admin, cred) = access(env, &bucket, headers).await?;
            ctx(&policy, &admin, cred.as_ref()).read(target.namespace())?;
            let cache = route.cache_tier(&policy);
            lifecycle_document(&bucket, target.registry_key(), cache).await
        }
        Route::Namespaces => {
            let (policy, admin, cred) = access(env, &bucket, headers).await?;
            let names = namespaces(&bucket, &ctx(&policy, &admin, cred.as_ref())).await?;
            Ok(Reply::json(listing::namespaces_body(&names), CacheTier::Short))
        }
        Route::NamespaceRegistries(ns) => {
            let ns = ns?;
            let (policy, admin, cred) = access(env, &bucket, headers).await?;
            ctx(&policy, &admin, cred.as_ref()).read(&ns)?;
            let list = registries(&bucket, &ns)
                .await?
                .ok_or_else(|| ApiError::namespace_not_found(&ns))?;
            Ok(Reply::json(
                listing::registries_body(&ns, &list),
                CacheTier::Short.in_namespace(&policy, &ns),
            ))
        }
        // Answered before any storage access in `fetch`.
        Route::NotFound | Route::Metrics | Route::Upload | Route::OpenApi | Route::Manage(..) => {
            Err(ApiError::route_not_found().into())
        }
    }
}

fn ctx<'a>(policy: &'a Policy, admin: &'a Admin, cred: Option<&'a Credential>) -> Ctx<'a> {
    Ctx {
        policy,
        admin,
        credential: cred,
        now_ms: Date::now().as_millis() as i64,
    }
}

/// A read under `/registries/`, answered with the `cache` tier the policy gives it, and with
/// the registry's lifecycle applied (SPEC §18). `lifecycle.json` is read concurrently with the
/// first object the read needs: one more bucket read, no extra round trip.
async fn registry(bucket: &Bucket, res: RegistryResource, cache: CacheTier) -> Result<Reply> {
    let registry = res.registry_key();
    match &res.kind {
        ResourceKind::Versions => {
            let (file, lifecycle) = join(versions(bucket, registry), lifecycle(bucket, registry)).await;
            let (body, _) = file?.ok_or_else(ApiError::not_found)?;
            let mut reply = Reply::json(body, cache);
            reply.lifecycle = lifecycle_headers(lifecycle?.as_ref(), None);
            Ok(reply)
        }
        ResourceKind::Latest => {
            // `versions.json` lists no yanked or deleted version: its first is the latest.
            let (file, lifecycle) = join(versions(bucket, registry), lifecycle(bucket, registry)).await;
            let (_, file) = file?.ok_or_else(ApiError::no_versions)?;
            let latest = file.latest().ok_or_else(ApiError::no_versions)?;
            let lifecycle = lifecycle?;
            let body = get(bucket, &layout::manifest_key(registry, latest))
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(Reply {
                lifecycle: lifecycle_headers(lifecycle.as_ref(), None),
                ..Reply::json(body, cache)
            })
        }
        ResourceKind::Version(version) | ResourceKind::File { version, .. } => {
            let (key, content_type) = match &res.kind {
                ResourceKind::File { path, .. } => {
                    (layout::file_key(registry, version, path), content_type(path))
                }
                _ => (layout::manifest_key(registry, version), "application/json"),
            };
            let (body, lifecycle) = join(get(bucket, &key), lifecycle(bucket, registry)).await;
            let lifecycle = lifecycle?;
            // A deleted version is 410 whether or not an object of it is still there.
            if lifecycle
                .as_ref()
                .is_some_and(|l| l.state(version) == VersionState::Deleted)
            {
                return Err(ApiError::version_deleted(registry, version).into());
            }
            let body = body?.ok_or_else(ApiError::not_found)?;
            Ok(Reply {
                status: 200,
                body,
                content_type,
                cache,
                lifecycle: lifecycle_headers(lifecycle.as_ref(), Some(version)),
            })
        }
    }
}

/// What a read adds for the lifecycle: `X-Rack-Yanked` when it is of a yanked `version`, and
/// the deprecation headers of a deprecated registry.
fn lifecycle_headers(lifecycle: Option<&Lifecycle>, version: Option<&str>) -> Vec<(&'static str, String)> {
    let Some(lifecycle) = lifecycle else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(VersionState::Yanked(reason)) = version.map(|v| lifecycle.state(v)) {
        out.push(("X-Rack-Yanked", reason.to_owned()));
    }
    out.extend(lifecycle.deprecation_headers());
    out
}

/// `lifecycle.json` of `registry`, parsed; `None` when it has none (nothing yanked, deprecated
/// or deleted). A corrupt one is a 500 with its key in the log, as for `versions.json`.
async fn lifecycle(bucket: &Bucket, registry: &str) -> Result<Option<Lifecycle>> {
    let key = lifecycle_key(registry);
    let Some(body) = get(bucket, &key).await? else {
        return Ok(None);
    };
    match Lifecycle::parse(&body) {
        Some(l) => Ok(Some(l)),
        None => Err(Fail::Internal(format!("corrupt lifecycle file {key:?}"))),
    }
}

/// `GET /-/lifecycle/@ns/<segs>` (SPEC §18): the stored document, byte for byte; the empty
/// document for a registry that has none; 404 when there is no such registry.
async fn lifecycle_document(bucket: &Bucket, registry: &str, cache: CacheTier) -> Result<Reply> {
    let key = lifecycle_key(registry);
    if let Some(body) = get(bucket, &key).await? {
        if Lifecycle::parse(&body).is_none() {
            return Err(Fail::Internal(format!("corrupt lifecycle file {key:?}")));
        }
        return Ok(Reply::json(body, cache));
    }
    match get(bucket, &layout::versions_key(registry)).await? {
        Some(_) => Ok(Reply::json(Lifecycle::default().render(), cache)),
        None => Err(ApiError::not_found().into()),
    }
}

/// `versions.json` of `registry`, raw and parsed; a corrupt file is a 500 (SPEC §12).
async fn versions(bucket: &Bucket, registry: &str) -> Result<Option<(Vec<u8>, VersionsFile)>> {
    let key = layout::versions_key(registry);
    let Some(body) = get(bucket, &key).await? else {
        return Ok(None);
    };
    match VersionsFile::parse(&body) {
        Some(file) => Ok(Some((body, file))),
        None => Err(Fail::Internal(format!("corrupt versions file {key:?}"))),
    }
}

/// The object at `key`, whole, or `None`.
async fn get(bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>> {
    let Some(obj) = bucket.get(key).execute().await? else {
        return Ok(None);
    };
    match obj.body() {
        Some(body) => Ok(Some(body.bytes().await?)),
        None => Err(Fail::Internal(format!("object {key:?} has no body"))),
    }
}

/// `/health` (SPEC §8): the marker is read from the bucket on every request.
async fn health(bucket: &Bucket) -> Reply {
    let problem = match get(bucket, layout::HEALTHCHECK_KEY).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(listing::health_marker_missing()),
        Err(Fail::Internal(e)) => {
            console_error!("health check failed: {e}");
            Some(listing::HEALTH_MARKER_UNREADABLE.to_owned())
        }
        Err(Fail::Api(e)) => Some(e.message),
    };
    let (status, body) = listing::health_body(problem.as_deref());
    Reply {
        status,
        ..Reply::json(body, CacheTier::NoStore)
    }
}

/// One page of a delimited listing under `prefix`.
async fn list_page(bucket: &Bucket, prefix: &str, cursor: Option<String>) -> Result<worker::Objects> {
    let mut list = bucket.list().delimiter("/").limit(LIST_PAGE);
    if !prefix.is_empty() {
        list = list.prefix(prefix);
    }
    if let Some(c) = cursor {
        list = list.cursor(c);
    }
    Ok(list.execute().await?)
}

/// The namespaces `ctx` may list, sorted, from paginated root listings.
async fn namespaces(bucket: &Bucket, ctx: &Ctx<'_>) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_page(bucket, "", cursor).await?;
        for p in page.delimited_prefixes() {
            if let Some(ns) = listing::namespace_of_prefix(&p).filter(|ns| ctx.lists(ns)) {
                names.push(ns.to_owned());
            }
        }
        cursor = page.cursor().filter(|_| page.truncated());
        if cursor.is_none() {
            break;
        }
    }
    names.sort();
    Ok(names)
}

/// The registries of `ns`: the namespace index (one GET, SPEC §3), or a walk when it is
/// missing or unreadable. `None`: nothing stored under the namespace.
async fn registries(bucket: &Bucket, ns: &str) -> Result<Option<Vec<String>>> {
    let key = listing::index_key(ns);
    if let Some(body) = get(bucket, &key).await? {
        match listing::parse_index(&body) {
            Some(list) => return Ok(Some(list)),
            None => console_warn!("corrupt namespace index {key:?}: walking the namespace"),
        }
    }
    let mut walk = Walk::registries(ns);
    while let Some(dir) = walk.next_dir() {
        let mut cursor = None;
        loop {
            let page = list_page(bucket, &dir, cursor).await?;
            let objects: Vec<String> = page.objects().iter().map(|o| o.key()).collect();
            let prefixes = page.delimited_prefixes();
            walk.page(
                &dir,
                objects.iter().map(String::as_str),
                prefixes.iter().map(String::as_str),
            );
            cursor = page.cursor().filter(|_| page.truncated());
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(walk.finish())
}

/// The isolate's cached policy: when it was read, and what it was.
struct CachedPolicy {
    read_at_ms: u64,
    policy: Rc<Policy>,
}

thread_local! {
    // A Worker isolate runs one request at a time on one thread: a thread-local is the
    // isolate's memory, kept between requests for as long as the isolate lives.
    static POLICY: RefCell<Option<CachedPolicy>> = const { RefCell::new(None) };
}

/// Everything an access decision needs: the policy, the admin token, the request's token.
async fn access(
    env: &Env,
    bucket: &Bucket,
    headers: &Headers,
) -> Result<(Rc<Policy>, Admin, Option<Credential>)> {
    let policy = policy(env, bucket).await?;
    let secret = |name: &str| {
        env.secret(name)
            .ok()
            .map(|s| s.to_string().trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let sha = match secret("ADMIN_TOKEN_SHA256") {
        Some(hex) => Some(
            parse_digest(&hex)
                .ok_or_else(|| Fail::Internal("ADMIN_TOKEN_SHA256 is not 64 hex digits".into()))?,
        ),
        None => None,
    };
    let admin = Admin::new(secret("ADMIN_TOKEN").as_deref(), sha);
    let header = |name: &str| headers.get(name).ok().flatten();
    let (authorization, x_token) = (header("authorization"), header("x-registry-token"));
    let cred = extract_token(authorization.as_deref(), x_token.as_deref()).map(Credential::new);
    Ok((policy, admin, cred))
}

/// The policy from `.auth/auth.json`, read at most once per `AUTH_CACHE_SECONDS` per isolate.
/// A missing file declares nothing (every namespace 403); a broken one keeps the last good
/// policy of this isolate, or fails closed (500) when there is none.
async fn policy(env: &Env, bucket: &Bucket) -> Result<Rc<Policy>> {
    let ttl_ms = auth_cache_seconds(env)?.saturating_mul(1000);
    let now = Date::now().as_millis();
    let cached = POLICY.with_borrow(|c| {
        c.as_ref()
            .filter(|c| now.saturating_sub(c.read_at_ms) < ttl_ms)
            .map(|c| c.policy.clone())
    });
    if let Some(p) = cached {
        return Ok(p);
    }
    let fresh = match get(bucket, layout::BUCKET_AUTH_KEY).await? {
        None => Ok(Policy::empty()),
        Some(body) => String::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|text| Policy::parse(&text).map_err(|e| e.to_string())),
    };
    let policy = match fresh {
        Ok(p) => {
            for r in p.rejected() {
                console_warn!("auth.json: namespace {} rejected: {}", r.namespace, r.reason);
            }
            Rc::new(p)
        }
        Err(e) => {
            let last = POLICY.with_borrow(|c| c.as_ref().map(|c| c.policy.clone()));
            match last {
                Some(p) => {
                    console_error!(
                        "{} refused, keeping the last good policy: {e}",
                        layout::BUCKET_AUTH_KEY
                    );
                    p
                }
                None => {
                    return Err(Fail::Internal(format!(
                        "{} invalid: {e}",
                        layout::BUCKET_AUTH_KEY
                    )))
                }
            }
        }
    };
    POLICY.with_borrow_mut(|c| {
        *c = Some(CachedPolicy {
            read_at_ms: now,
            policy: policy.clone(),
        })
    });
    Ok(policy)
}

/// `AUTH_CACHE_SECONDS` (default 60; 0 reads the policy on every request). An invalid value is
/// a configuration error: every request that needs the policy answers 500 and the log says why.
fn auth_cache_seconds(env: &Env) -> Result<u64> {
    match env.var("AUTH_CACHE_SECONDS") {
        Err(_) => Ok(DEFAULT_AUTH_CACHE_SECONDS),
        Ok(v) => {
            let v = v.to_string();
            let v = v.trim();
            if v.is_empty() {
                return Ok(DEFAULT_AUTH_CACHE_SECONDS);
            }
            v.parse().map_err(|_| {
                Fail::Internal(format!(
                    "AUTH_CACHE_SECONDS={v:?}: expected a whole number of seconds (0 or more)"
                ))
            })
        }
    }
}

/// A 200 as the server sends it (SPEC §9): strong content ETag, 304 on a matching
/// `If-None-Match`, no validator on `no-store` answers. Bodies go out identity-encoded; the
/// Cloudflare edge compresses them for clients that accept it.
fn respond(reply: Reply, headers: &Headers, head: bool) -> worker::Result<Response> {
    let out = Headers::new();
    out.set("cache-control", reply.cache.header())?;
    // A yank reason may hold any character but a control one: workerd sends a header value's
    // UTF-8 bytes, as the server does (the conformance case `lifecycle-yanked-reason-is-utf8`).
    for (name, value) in &reply.lifecycle {
        out.set(name, value)?;
    }
    if reply.status != 200 || reply.cache == CacheTier::NoStore {
        out.set("content-type", reply.content_type)?;
        return Ok(body_response(reply.status, out, reply.body, head));
    }
    let etag = etag_of(&reply.body);
    out.set("etag", &etag)?;
    let matched = headers
        .get("if-none-match")?
        .is_some_and(|v| if_none_match(&v, &etag));
    if matched {
        return Ok(Response::builder().with_status(304).with_headers(out).empty());
    }
    out.set("content-type", reply.content_type)?;
    Ok(body_response(200, out, reply.body, head))
}

/// A response with a fixed-length body; HEAD gets none but announces the same
/// `Content-Length` (SPEC §14), which the runtime would drop from a HEAD with a body.
fn body_response(status: u16, headers: Headers, body: Vec<u8>, head: bool) -> Response {
    if head {
        let _ = headers.set("content-length", &body.len().to_string());
        return Response::builder()
            .with_status(status)
            .with_headers(headers)
            .empty();
    }
    Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(body)
}

/// An error answer (SPEC §4, §12): JSON `{"code","message"}`, `no-store`.
fn error(e: &ApiError, head: bool) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", CacheTier::NoStore.header())?;
    Ok(body_response(e.status(), headers, e.body().into_bytes(), head))
}

/// 405 with the methods the path allows.
fn method_not_allowed(allow: &str, head: bool) -> worker::Result<Response> {
    let mut res = error(&ApiError::method_not_allowed(), head)?;
    res.headers_mut().set("allow", allow)?;
    Ok(res)
}
