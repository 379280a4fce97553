//! Read handlers (SPEC §4). Each one is a thin translation: access decision from the core crate,
//! one or two storage reads, a [`Reply`].

use std::sync::Arc;

use bytes::Bytes;
use rack_core::auth::Ctx;
use rack_core::layout::{self, VersionsFile};
use rack_core::lifecycle::VersionState;
use rack_core::listing::{
    health_body, health_marker_missing, namespace_of_prefix, namespaces_body, registries_body,
    HEALTH_MARKER_UNREADABLE,
};
use rack_core::mime::content_type;
use rack_core::names::is_segment;
use rack_core::route::{CacheTier, RegistryResource, ResourceKind};
use rack_core::ApiError;

use super::response::{ApiResult, ErrorReply, Reply, Streamed};
use crate::cache::{Cached, Found};
use crate::state::AppState;
use crate::storage::{bounded, StorageError};

/// At most this many bytes of an error go into the log line (it may quote client input).
const MAX_LOGGED_ERROR: usize = 1024;

/// A storage failure is a 500 for the client and a log line (with the key) for the operator.
pub fn internal(e: impl std::fmt::Display) -> ErrorReply {
    let e = e.to_string();
    tracing::error!(error = %bounded(&e, MAX_LOGGED_ERROR), "storage failure");
    ErrorReply(ApiError::internal())
}

/// The object at `key` as a reply: from the hot cache, or streamed when it is too large for
/// it. `None` if absent.
async fn object(
    state: &AppState,
    key: &str,
    content_type: &'static str,
    cache: CacheTier,
) -> Result<Option<Reply>, ErrorReply> {
    match state
        .cache
        .lookup(state.storage.as_ref(), key)
        .await
        .map_err(internal)?
    {
        None => Ok(None),
        Some(Found::Small(obj)) => Ok(Some(Reply::object(obj, content_type, cache))),
        // Boxed: the rare path's state would otherwise enlarge every request's future.
        Some(Found::Large(_)) => Box::pin(large(state, key, content_type, cache)).await,
    }
}

async fn large(
    state: &AppState,
    key: &str,
    content_type: &'static str,
    cache: CacheTier,
) -> Result<Option<Reply>, ErrorReply> {
    let opened = state
        .large
        .open(state.storage.as_ref(), key)
        .await
        .map_err(internal)?;
    Ok(opened.map(|(etag, stream)| {
        let streamed = Streamed {
            key: key.to_owned(),
            etag,
            stream,
            storage: state.storage.clone(),
            large: state.large.clone(),
        };
        Reply::streamed(streamed, content_type, cache)
    }))
}

/// The current object at `key`, through the hot cache (which revalidates against storage).
pub(crate) async fn get(state: &AppState, key: &str) -> Result<Option<Arc<Cached>>, ErrorReply> {
    state
        .cache
        .get(state.storage.as_ref(), key)
        .await
        .map_err(internal)
}

/// Read and validate `versions.json`: `None` if absent; a corrupt file is a 500. The parsed
/// form lives in the cache entry ([`Cached::versions_file`]).
pub(crate) async fn versions_file(
    state: &AppState,
    registry: &str,
) -> Result<Option<Arc<Cached>>, ErrorReply> {
    let key = layout::versions_key(registry);
    let Some(obj) = get(state, &key).await? else {
        return Ok(None);
    };
    match obj.versions_file() {
        Some(_) => Ok(Some(obj)),
        None => Err(internal(format!("corrupt versions file {key:?}"))),
    }
}

/// Response headers a read adds beyond its reply's own.
pub type Annotations = Vec<(http::HeaderName, http::HeaderValue)>;

/// `X-Rack-Yanked` (SPEC §18).
pub const X_RACK_YANKED: http::HeaderName = http::HeaderName::from_static("x-rack-yanked");

/// The lifecycle of a registry read (SPEC §18): a deleted version is 410 before anything is
/// looked up; a yanked one is served with `X-Rack-Yanked`; a deprecated registry's reads carry
/// `Deprecation` and `Link`. Latest and the version list need nothing more: `versions.json`
/// already leaves out yanked and deleted versions.
async fn lifecycle_of(
    state: &AppState,
    res: &RegistryResource,
    out: &mut Annotations,
) -> Result<(), ErrorReply> {
    let registry = res.registry_key();
    let Some(doc) = state
        .lifecycles
        .get(state.storage.as_ref(), registry)
        .await
        .map_err(internal)?
    else {
        return Ok(());
    };
    let version = match &res.kind {
        ResourceKind::Version(v) | ResourceKind::File { version: v, .. } => Some(v),
        ResourceKind::Versions | ResourceKind::Latest => None,
    };
    if let Some(v) = version {
        match doc.state(v) {
            VersionState::Deleted => return Err(ApiError::version_deleted(registry, v).into()),
            VersionState::Yanked(reason) => {
                // Plain text without control characters (checked when yanked); a hand-edited
                // file may hold anything, which is then left out rather than failing the read.
                if let Ok(value) = http::HeaderValue::from_bytes(reason.as_bytes()) {
                    out.push((X_RACK_YANKED, value));
                }
            }
            VersionState::Live => {}
        }
    }
    for (name, value) in doc.deprecation_headers() {
        // The core names them as RFC 9745 spells them; `from_bytes` takes any case.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            out.push((name, value));
        }
    }
    Ok(())
}

/// Refresh an upstream registry's `versions.json` and `lifecycle.json` (SPEC §17), dropping
/// what this replica cached of them when they changed.
pub(crate) async fn from_upstream_registry(
    state: &AppState,
    up: &crate::upstream::Upstream,
    registry: &str,
) -> Result<(), ErrorReply> {
    let changed = state
        .upstreams
        .refresh_registry(up, registry)
        .await
        .map_err(|m| ErrorReply(m.to_api(registry, None)))?;
    if changed {
        state.cache.invalidate(&layout::versions_key(registry));
        state
            .cache
            .invalidate(&rack_core::lifecycle::lifecycle_key(registry));
        state.lifecycles.invalidate(registry);
    }
    Ok(())
}

/// Make storage hold what a read of `res` in an upstream namespace needs (SPEC §17): the
/// registry's documents, refreshed when stale, and the version read (the latest for
/// `/registries/@ns/<segs>`), fetched once.
async fn from_upstream(
    state: &AppState,
    up: &crate::upstream::Upstream,
    res: &RegistryResource,
) -> Result<(), ErrorReply> {
    use crate::upstream::Miss;
    let registry = res.registry_key();
    let version = match &res.kind {
        ResourceKind::Versions => return from_upstream_registry(state, up, registry).await,
        ResourceKind::Latest => {
            from_upstream_registry(state, up, registry).await?;
            match state.upstreams.stored_latest(registry).await {
                Ok(Some(v)) => v,
                // No version: the read answers "No versions available".
                Ok(None) => return Ok(()),
                Err(m) => return Err(ErrorReply(m.to_api(registry, None))),
            }
        }
        ResourceKind::Version(v) | ResourceKind::File { version: v, .. } => {
            // The lifecycle (a yank upstream shows here too); the version itself may be
            // stored even when the list cannot be had.
            match from_upstream_registry(state, up, registry).await {
                Err(ErrorReply(e)) if e.kind == rack_core::ErrorKind::Internal => return Err(ErrorReply(e)),
                _ => {}
            }
            let deleted = state
                .lifecycles
                .get(state.storage.as_ref(), registry)
                .await
                .map_err(internal)?
                .is_some_and(|doc| doc.deleted.contains_key(v.as_str()));
            if deleted {
                return Ok(());
            }
            v.clone()
        }
    };
    match state.upstreams.ensure_version(up, registry, &version).await {
        Ok(()) => Ok(()),
        Err(m @ (Miss::Gone(_) | Miss::Unavailable(_) | Miss::Storage(_))) => {
            Err(ErrorReply(m.to_api(registry, Some(&version))))
        }
    }
}

pub async fn registry(
    state: &AppState,
    ctx: &Ctx<'_>,
    res: RegistryResource,
    annotations: &mut Annotations,
) -> ApiResult {
    ctx.read(res.namespace())?;
    if let Some(up) = state.upstreams.of(res.namespace()) {
        from_upstream(state, &up, &res).await?;
    }
    lifecycle_of(state, &res, annotations).await?;
    let registry = res.registry_key();
    let cache = res.cache_tier(ctx.policy);
    match &res.kind {
        ResourceKind::Versions => {
            let obj = versions_file(state, registry)
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(Reply::object(obj, "application/json", cache))
        }
        ResourceKind::Latest => {
            let versions = versions_file(state, registry)
                .await?
                .ok_or_else(ApiError::no_versions)?;
            let latest = versions
                .versions_file()
                .and_then(VersionsFile::latest)
                .ok_or_else(ApiError::no_versions)?;
            let key = layout::manifest_key(registry, latest);
            Ok(object(state, &key, "application/json", cache)
                .await?
                .ok_or_else(ApiError::not_found)?)
        }
        ResourceKind::Version(v) => {
            let key = layout::manifest_key(registry, v);
            Ok(object(state, &key, "application/json", cache)
                .await?
                .ok_or_else(ApiError::not_found)?)
        }
        ResourceKind::File { version, path } => {
            let key = layout::file_key(registry, version, path);
            Ok(object(state, &key, content_type(path), cache)
                .await?
                .ok_or_else(ApiError::not_found)?)
        }
    }
}

pub async fn preset(state: &AppState, name: &str) -> ApiResult {
    Ok(object(
        state,
        &layout::preset_key(name),
        "application/json",
        CacheTier::Day,
    )
    .await?
    .ok_or_else(ApiError::not_found)?)
}

/// `/schemas/<file>` serves `schema/<file>` from storage, or `<SCHEMA_DIR>/<file>`, byte for
/// byte, through the hot cache (`file` is from the allowlist).
pub async fn schema(state: &AppState, file: &'static str) -> ApiResult {
    let (storage, key) = state
        .schemas
        .locate(&state.storage, file)
        .ok_or_else(ApiError::schema_not_found)?;
    let obj = state
        .cache
        .get(storage.as_ref(), &key)
        .await
        .map_err(internal)?
        .ok_or_else(ApiError::schema_not_found)?;
    Ok(Reply::object(obj, "application/json", CacheTier::Day))
}

pub async fn namespaces(state: &AppState, ctx: &Ctx<'_>) -> ApiResult {
    let names = namespace_names(state, ctx).await?;
    Ok(Reply::ok(
        namespaces_body(&names),
        "application/json",
        CacheTier::Short,
    ))
}

/// The namespaces `ctx` may list (SPEC §4 `/namespaces`), sorted. Shared with the web pages.
pub(crate) async fn namespace_names(state: &AppState, ctx: &Ctx<'_>) -> Result<Vec<String>, ErrorReply> {
    let mut names = stored_namespaces(state).await?;
    // An upstream namespace is listed before anything of it is stored here (SPEC §17).
    names.extend(state.upstreams.namespaces());
    names.sort();
    names.dedup();
    names.retain(|ns| ctx.lists(ns));
    Ok(names)
}

/// Every namespace stored, whoever asks (the web pages' search decides access per request),
/// sorted.
pub(crate) async fn stored_namespaces(state: &AppState) -> Result<Vec<String>, ErrorReply> {
    let root = crate::storage::list_all(state.storage.as_ref(), "", true)
        .await
        .map_err(internal)?;
    let mut names: Vec<String> = root
        .prefixes
        .iter()
        .filter_map(|p| namespace_of_prefix(p))
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

pub async fn namespace_registries(state: &AppState, ctx: &Ctx<'_>, ns: &str) -> ApiResult {
    let registries = registry_names(state, ctx, ns).await?;
    let cached = state
        .listings
        .get_or_render(ns, &registries, || Bytes::from(registries_body(ns, &registries)));
    Ok(Reply::object(
        cached,
        "application/json",
        CacheTier::Short.in_namespace(ctx.policy, ns),
    ))
}

/// The registries of `ns` (paths below the namespace, sorted), after the access checks: what
/// `/namespaces/<ns>/registries` lists. Shared with the web pages.
pub(crate) async fn registry_names(
    state: &AppState,
    ctx: &Ctx<'_>,
    ns: &str,
) -> Result<Arc<[String]>, ErrorReply> {
    ctx.read(ns)?;
    if let Some(up) = state.upstreams.of(ns) {
        // The upstream's listing, refreshed when stale (SPEC §17).
        let body = state.upstreams.listing(&up, ns).await.map_err(|m| match m {
            crate::upstream::Miss::Gone(_) => ErrorReply(ApiError::namespace_not_found(ns)),
            m => ErrorReply(m.to_api(ns, None)),
        })?;
        let list = body
            .as_deref()
            .and_then(rack_core::listing::parse_index)
            .ok_or_else(|| internal(format!("corrupt upstream listing of {ns}")))?;
        return Ok(Arc::from(list));
    }
    // Registries are found only through directories named like registry segments: version
    // directories and anything else that could never be addressed are not descended.
    let found = state
        .storage
        .find_marked_dirs(&format!("{ns}/"), "versions.json", is_segment)
        .await
        .map_err(|e: StorageError| internal(e))?;
    Ok(found.ok_or_else(|| ApiError::namespace_not_found(ns))?)
}

/// `/health`: the storage marker is opened and read on every request (SPEC §8: *readable*, so
/// a marker that exists but cannot be read is unhealthy), never cached.
pub async fn health(state: &AppState) -> Reply {
    let problem = match state.storage.get(layout::HEALTHCHECK_KEY).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(health_marker_missing()),
        // The storage root itself is gone: the marker with it (the detail goes to the log).
        Err(e @ StorageError::Unavailable(_)) => {
            tracing::warn!(error = %e, "health check failed");
            Some(health_marker_missing())
        }
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            Some(HEALTH_MARKER_UNREADABLE.to_owned())
        }
    };
    let (status, body) = health_body(problem.as_deref());
    Reply {
        status: http::StatusCode::from_u16(status).expect("200 or 503"),
        ..Reply::ok(body, "application/json", CacheTier::NoStore)
    }
}
