//! Web pages for people (SPEC §15): a server-rendered catalogue under `/ui`.
//!
//! Every page is a view over the API's own reads: the access decisions of
//! [`rack_core::auth::Ctx`], the namespace and registry listings of [`super::reads`], and
//! `versions.json` and manifests through the hot cache. A page therefore shows exactly what the
//! same request to the API would return, and an API error becomes an HTML page carrying the
//! same status and code. Templates are `maud` macros: checked at compile time, and every
//! interpolated value is HTML-escaped (see docs/decisions.md "Web pages").
//!
//! One module per page (`home`, `namespace`, `registry`, `file`, `preset`, `search`, `login`),
//! each a view built from the reads plus its markup; `layout` is the shared shell and
//! stylesheet; `session` the signed cookie and the CSRF token; `revoke` signing out on every
//! replica.

mod file;
mod home;
mod layout;
mod login;
mod namespace;
mod preset;
mod registry;
pub mod revoke;
mod search;
pub mod session;

pub use search::SearchSink;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use maud::Markup;
use rack_core::auth::{Credential, Ctx};
use rack_core::layout::{manifest_key, VersionsFile};
use rack_core::lifecycle::{lifecycle_key, Lifecycle};
use rack_core::{ApiError, ErrorKind};
use serde_json::Value;

use super::reads;
use super::response::ErrorReply;
use crate::cache::Cached;
use crate::config::TrustProxy;
use crate::state::{now_ms, AppState};
use layout::Shell;

/// The metrics and log label of every `/ui` request (a fixed set, never the raw path).
pub const TEMPLATE: &str = "/ui/*";

/// Registries (or namespaces) per page.
pub const PAGE_SIZE: usize = 50;

/// The web pages' own state: the session and CSRF signing key, signed-out sessions and the
/// sign-in throttle.
pub struct Ui {
    /// Resolved at the first page that needs it ([`Ui::keys`]), so that starting the server
    /// writes nothing to the storage.
    keys: tokio::sync::OnceCell<session::Keys>,
    storage: Arc<dyn crate::storage::Storage>,
    pub revocations: revoke::Revocations,
    /// The search indexes (`search`).
    pub search: search::Index,
    /// Failed sign-ins per client and minute (`UI_LOGIN_ATTEMPTS`; bounded memory, see
    /// [`crate::ratelimit`]).
    pub login_failures: crate::ratelimit::RateLimiter,
    /// The audit lines about failed sign-ins, bounded per minute.
    pub login_audit: login::LoginAudit,
}

/// The pages' settings (SPEC §10 naming: `UI_SESSION_KEY`, `UI_SESSION_REVALIDATE_SECONDS`,
/// `UI_LOGIN_ATTEMPTS`).
#[derive(Clone)]
pub struct UiSettings {
    /// Derived from `UI_SESSION_KEY`; `None`: the key in the storage.
    pub session_key: Option<[u8; 32]>,
    pub revalidate: Duration,
    /// Failed sign-ins a client may make per minute (at least 1).
    pub login_attempts: u64,
}

impl std::fmt::Debug for UiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiSettings")
            .field("session_key", &self.session_key.map(|_| "<redacted>"))
            .field("revalidate", &self.revalidate)
            .field("login_attempts", &self.login_attempts)
            .finish()
    }
}

/// Where the shared signing key is kept when `UI_SESSION_KEY` is not set.
pub const KEY_OBJECT: &str = ".rack/ui/session-key";

impl Ui {
    pub fn new(storage: Arc<dyn crate::storage::Storage>, settings: &UiSettings) -> Ui {
        Ui {
            keys: match settings.session_key {
                Some(k) => tokio::sync::OnceCell::new_with(Some(session::Keys::new(k))),
                None => tokio::sync::OnceCell::new(),
            },
            revocations: revoke::Revocations::new(storage.clone(), settings.revalidate),
            search: Default::default(),
            storage,
            login_failures: crate::ratelimit::RateLimiter::new(
                settings.login_attempts,
                Duration::from_secs(60),
            ),
            login_audit: login::LoginAudit::default(),
        }
    }

    /// The signing key: `UI_SESSION_KEY`'s, or the one in the storage ([`KEY_OBJECT`], created
    /// by the first replica that needs it); a random one of this process when the storage can
    /// neither give nor take it (logged).
    pub async fn keys(&self) -> &session::Keys {
        self.keys
            .get_or_init(|| async {
                let key = stored_key(self.storage.as_ref()).await.unwrap_or_else(|e| {
                    tracing::warn!(
                        error = %e,
                        "no shared web-session key (set UI_SESSION_KEY): sessions hold on this replica only"
                    );
                    rand::random()
                });
                session::Keys::new(key)
            })
            .await
    }
}

/// The key in [`KEY_OBJECT`]: read, or created create-only by the first replica (a replica that
/// loses the race reads the winner's).
async fn stored_key(storage: &dyn crate::storage::Storage) -> Result<[u8; 32], String> {
    let parse = |body: &[u8]| -> Result<[u8; 32], String> {
        let text = std::str::from_utf8(body).map_err(|_| format!("{KEY_OBJECT} is not text"))?;
        hex::decode(text.trim())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| format!("{KEY_OBJECT} is not 64 hex digits"))
    };
    if let Some(o) = storage.get(KEY_OBJECT).await.map_err(|e| e.to_string())? {
        return parse(&o.body);
    }
    let key: [u8; 32] = rand::random();
    let body = bytes::Bytes::from(hex::encode(key) + "\n");
    match storage
        .put(KEY_OBJECT, body, crate::storage::PutMode::Create)
        .await
    {
        Ok(_) => Ok(key),
        Err(crate::storage::StorageError::AlreadyExists(_)) => {
            match storage.get(KEY_OBJECT).await.map_err(|e| e.to_string())? {
                Some(o) => parse(&o.body),
                None => Err(format!("{KEY_OBJECT} vanished")),
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `path` belongs to the pages.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// `GET /` from a browser (an `Accept` naming `text/html`) goes to the catalogue.
pub fn wants_html(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

pub fn redirect(location: &str) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Who is looking: the credential every read decision of this request is made with.
pub struct Viewer {
    credential: Option<Credential>,
    /// A valid session cookie was sent (and its token is still in the policy): the sign-out
    /// form's CSRF field for it.
    logout_csrf: Option<[u8; 32]>,
    /// A session cookie was sent that no longer opens anything: it is cleared.
    stale_session: bool,
}

/// Everything a page handler needs.
pub struct Req<'a> {
    pub state: &'a AppState,
    pub ui: &'a Ui,
    /// The client address (per `TRUST_PROXY`): what sign-ins are throttled by.
    pub client: IpAddr,
    pub ctx: Ctx<'a>,
    pub shell: Shell,
    pub query: Option<&'a str>,
}

impl Req<'_> {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let q = self.query?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// `?page=` (1-based; anything unparsable is page 1).
    pub fn page_number(&self) -> usize {
        self.param("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1)
    }
}

/// What a page handler returns: a rendered page, or a finished response (redirects, assets),
/// or the API's error (rendered as an error page).
pub enum Out {
    Page(StatusCode, Markup),
    Raw(Response),
}

pub type PageResult = Result<Out, ErrorReply>;

pub fn ok(m: Markup) -> PageResult {
    Ok(Out::Page(StatusCode::OK, m))
}

/// Whether the request reached us over HTTPS: per `TRUST_PROXY`'s `X-Forwarded-Proto` (the
/// server itself speaks plain HTTP).
pub fn is_https(headers: &HeaderMap, trust: TrustProxy) -> bool {
    trust != TrustProxy::No
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Every `/ui` request. The caller has applied the rate limit and will log the request.
pub async fn handle(state: &AppState, ui: &Ui, parts: &Parts, body: Body, client: IpAddr) -> Response {
    let policy = state.policy();
    let now = now_ms();
    let viewer = viewer(state, ui, &parts.headers, &policy, now).await;
    let ctx = Ctx {
        policy: &policy,
        admin: &state.admin,
        credential: viewer.credential.as_ref(),
        now_ms: now,
    };
    let req = Req {
        state,
        ui,
        client,
        ctx,
        shell: Shell {
            logout_csrf: viewer.logout_csrf,
        },
        query: parts.uri.query(),
    };
    let secure = is_https(&parts.headers, state.trust_proxy);
    let head = parts.method == Method::HEAD;
    let path = &parts.uri.path()["/ui".len()..];
    let result = dispatch(&req, &parts.method, path, &parts.headers, body, secure).await;
    let mut res = match result {
        Ok(Out::Page(status, m)) => html(status, m),
        Ok(Out::Raw(res)) => res,
        Err(ErrorReply(e)) => error_response(req.shell, &e),
    };
    if viewer.stale_session {
        append_cookie(
            &mut res,
            &session::set_cookie(session::SESSION_COOKIE, "", 0, secure),
        );
    }
    security_headers(&mut res);
    if head {
        *res.body_mut() = Body::empty();
    }
    res
}

async fn dispatch(
    req: &Req<'_>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
    secure: bool,
) -> PageResult {
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        "/login" if method == Method::POST => login::submit(req, headers, body, secure).await,
        "/login" if read => login::form(req, headers, secure, None).await,
        "/logout" if method == Method::POST => login::logout(req, headers, body, secure).await,
        "/logout" if read => login::logout_form(req),
        _ if !read => {
            let mut res = error_response(req.shell, &ApiError::method_not_allowed());
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            Ok(Out::Raw(res))
        }
        "" | "/" => home::page(req).await,
        "/search" => search::page(req).await,
        p if p.starts_with("/assets/") => Ok(Out::Raw(asset(p))),
        p if p.starts_with("/presets/") => preset::page(req, &p["/presets/".len()..]).await,
        p if p.starts_with("/@") => {
            let rest = &p[1..];
            let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            if parts.len() == 1 {
                let ns = rack_core::route::percent_decode(parts[0])
                    .filter(|ns| rack_core::names::is_namespace(ns))
                    .ok_or_else(ApiError::invalid_namespace)?;
                namespace::page(req, &ns).await
            } else {
                let res = rack_core::route::parse_registry_path(rest)?;
                registry::dispatch(req, res).await
            }
        }
        _ => Err(ApiError::route_not_found().into()),
    }
}

/// The viewer of a request: an API token header counts as under the API; otherwise a valid
/// session cookie whose token still opens something in the current policy.
async fn viewer(
    state: &AppState,
    ui: &Ui,
    headers: &HeaderMap,
    policy: &rack_core::auth::Policy,
    now: i64,
) -> Viewer {
    let session = session::cookie(headers, session::SESSION_COOKIE);
    let keys = match session {
        Some(_) => Some(ui.keys().await),
        None => None,
    };
    let mut from_session = session.zip(keys).and_then(|(v, keys)| keys.open_session(v, now));
    if let Some(s) = &from_session {
        if ui.revocations.is_revoked(&s.id, s.expires_s).await {
            from_session = None;
        }
    }
    let live = from_session.map(|s| s.credential).filter(|cred| {
        Ctx {
            policy,
            admin: &state.admin,
            credential: Some(cred),
            now_ms: now,
        }
        .opens_any()
    });
    let stale_session = session.is_some() && live.is_none();
    let logout_csrf = session
        .filter(|_| live.is_some())
        .zip(keys)
        .map(|(v, keys)| keys.logout_token(v));
    let credential = super::credential(headers).or(live);
    Viewer {
        credential,
        logout_csrf,
        stale_session,
    }
}

pub fn html(status: StatusCode, m: Markup) -> Response {
    let mut res = Response::new(Body::from(m.into_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

/// An API error as an HTML page with the API's status and code.
fn error_response(shell: Shell, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = html(
        status,
        layout::error_page(shell, e.status(), e.code(), &e.message),
    );
    // For the error counters, as on the API.
    res.extensions_mut().insert(e.kind);
    if matches!(e.kind, ErrorKind::PayloadTooLarge | ErrorKind::RequestTimeout) {
        // The rest of the body is not read: the connection cannot be reused.
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

pub fn append_cookie(res: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// SPEC §15's headers on every answer under `/ui`; pages depend on the viewer, so none of
/// them is stored by a cache (the stylesheet, which does not, keeps its own tier).
fn security_headers(res: &mut Response) {
    const CSP: HeaderValue = HeaderValue::from_static(
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    );
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, CSP);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// `/ui/assets/style.<hash>.css`; any other asset path is a 404 page.
fn asset(path: &str) -> Response {
    if format!("/ui{path}") != layout::style_path() {
        return error_response(Shell::default(), &ApiError::not_found());
    }
    let mut res = Response::new(Body::from(layout::STYLE));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    res
}

// Data helpers: the API's reads, shaped for pages.

/// A registry's `versions.json` (through the hot cache): `None` if absent, 500 if corrupt.
pub async fn versions(state: &AppState, registry: &str) -> Result<Option<Arc<Cached>>, ErrorReply> {
    reads::versions_file(state, registry).await
}

pub fn versions_of(obj: &Cached) -> &VersionsFile {
    obj.versions_file()
        .expect("reads::versions_file checked it parses")
}

/// A registry's `lifecycle.json` (SPEC §18) through the same hot cache as `versions.json`: the
/// empty document when it has none; a corrupt one is a 500 (logged with its key), as on the API.
pub async fn lifecycle(state: &AppState, registry: &str) -> Result<Lifecycle, ErrorReply> {
    let key = lifecycle_key(registry);
    let Some(obj) = reads::get(state, &key).await? else {
        return Ok(Lifecycle::default());
    };
    Lifecycle::parse(&obj.body).ok_or_else(|| reads::internal(format!("corrupt lifecycle file {key:?}")))
}

/// A version's manifest as JSON (through the hot cache); `None` if absent. An unparsable
/// manifest is shown as empty rather than failing the page (the API serves its bytes as-is).
pub async fn manifest(state: &AppState, registry: &str, version: &str) -> Result<Option<Value>, ErrorReply> {
    let Some(obj) = reads::get(state, &manifest_key(registry, version)).await? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&obj.body).unwrap_or(Value::Null)))
}

/// The latest version and its manifest, if the registry has any.
pub async fn latest(state: &AppState, registry: &str) -> Result<Option<(String, Value)>, ErrorReply> {
    let Some(v) = versions(state, registry).await? else {
        return Ok(None);
    };
    let Some(latest) = versions_of(&v).latest().map(str::to_owned) else {
        return Ok(None);
    };
    Ok(manifest(state, registry, &latest).await?.map(|m| (latest, m)))
}

pub fn str_field<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

pub fn tags(m: &Value) -> Vec<&str> {
    m.get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The `[start, end)` slice of page `page` over `len` items, and the number of pages.
pub fn page_bounds(len: usize, page: usize) -> (usize, usize, usize) {
    let pages = len.div_ceil(PAGE_SIZE).max(1);
    let start = (page - 1).saturating_mul(PAGE_SIZE).min(len);
    (start, (start + PAGE_SIZE).min(len), pages)
}

/// Previous/next links of a paginated list at `base` (which has no query yet).
pub fn pager(base: &str, page: usize, pages: usize) -> Markup {
    maud::html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page > 1 { a rel="prev" href={ (base) "?page=" (page - 1) } { "← Previous" } }
                span.muted { "Page " (page) " of " (pages) }
                @if page < pages { a rel="next" href={ (base) "?page=" (page + 1) } { "Next →" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_fifty() {
        assert_eq!(page_bounds(0, 1), (0, 0, 1));
        assert_eq!(page_bounds(120, 1), (0, 50, 3));
        assert_eq!(page_bounds(120, 3), (100, 120, 3));
        assert_eq!(page_bounds(120, 9), (120, 120, 3));
    }

    #[test]
    fn only_html_accepting_gets_and_heads_are_browsers() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&Method::GET, &h));
        h.insert(header::ACCEPT, "text/html,application/xhtml+xml".parse().unwrap());
        assert!(wants_html(&Method::GET, &h));
        assert!(!wants_html(&Method::POST, &h));
    }
}
