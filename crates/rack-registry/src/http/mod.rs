//! The HTTP layer: one axum fallback handler dispatches on the core crate's [`route`], so the URL
//! grammar lives in one pure function shared with the Worker, and every path (including the odd
//! ones: `//`, percent-escapes, traversal attempts) is judged by it, not by a router's own
//! normalization. The web pages (`/ui`, [`pages`]) are dispatched first, when enabled; they
//! are built on the same read functions ([`reads`]). Only the routes listed in [`body::ROUTES`]
//! are handed the request body, under a deadline.

pub mod body;
pub mod logging;
pub mod manage;
pub mod openapi;
pub mod pages;
pub mod reads;
pub mod response;
pub mod serve;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use rack_core::auth::Ctx;
use rack_core::route::{route, Route};
use rack_core::ApiError;
use serde_json::json;

use crate::state::{now_ms, AppState};
use response::ErrorReply;

/// The whole HTTP application as one function. There is no axum `Router`: every path is
/// judged by the core crate's [`route`], so the router would only ever reach its fallback.
pub fn service(state: Arc<AppState>) -> impl serve::App {
    move |req, peer| entry(state.clone(), req, peer)
}

/// Header names of ours, parsed once (a `&str` name is parsed again on every lookup).
pub mod names {
    pub use crate::auth::X_REGISTRY_TOKEN;
    use http::HeaderName;
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
}

pub use crate::auth::credential;

/// Every request: client address and rate limit (every route counts, SPEC §14), dispatch on the
/// route, then what every answer gets ([`logging::finish`]). One function rather than a
/// middleware stack: the request is taken apart once, without copying its headers.
async fn entry(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let client = logging::client_ip(peer.ip(), &parts.headers, state.trust_proxy);
    // The web pages (SPEC §15) are dispatched before the API's grammar; with `UI=false` their
    // paths fall through to it and are the API's 404.
    let ui = state
        .ui
        .as_deref()
        .filter(|_| pages::is_ui_path(parts.uri.path()));
    let browser_root =
        state.ui.is_some() && parts.uri.path() == "/" && pages::wants_html(&parts.method, &parts.headers);
    let route = route(parts.uri.path());
    let template = if ui.is_some() {
        pages::TEMPLATE
    } else {
        route.template()
    };
    // The body goes to the routes listed in `body::ROUTES` only, under their deadline.
    let body = body::admit(
        &parts.method,
        parts.uri.path(),
        state.ui.is_some(),
        body,
        &state.bodies,
    );
    let decision = state
        .rate_limiter
        .enabled()
        .then(|| state.rate_limiter.check(client, start));
    let mut res = match decision {
        Some(d) if !d.allowed => logging::rate_limited(&state, d, body),
        _ if ui.is_some() => pages::handle(&state, ui.expect("checked"), &parts, body, client).await,
        _ if browser_root => pages::redirect("/ui"),
        _ if route == Route::Upload && parts.method == Method::POST => {
            crate::upload::handle(&state, &parts.headers, client, body).await
        }
        _ => handle(&state, &parts.method, route, &parts.headers, client, body).await,
    };
    logging::finish(&state, &parts.method, template, client, decision, start, &mut res);
    res
}

/// The namespace a request is about, when its path names one (for the audit trail).
fn route_namespace(route: &Route) -> Option<&str> {
    match route {
        Route::Registry(Ok(r)) => Some(r.namespace()),
        Route::NamespaceRegistries(Ok(ns)) => Some(ns),
        Route::Manage(_, Ok(t)) => Some(t.namespace()),
        _ => None,
    }
}

/// An API request, with the headers its route adds to every answer (SPEC §4, BEYOND): on a
/// template file, `Content-Security-Policy: default-src 'none'; sandbox` and `nosniff`, on
/// every status (a 200 or 304 from the hot cache, a stream, a memory map, or an error: the
/// route decides, not the path an answer took); on `/namespaces`, whose body depends on the
/// token, `Vary: Authorization, X-Registry-Token` on its 200s and 304s.
async fn handle(
    state: &AppState,
    method: &Method,
    route: Route,
    headers: &HeaderMap,
    client: IpAddr,
    body: axum::body::Body,
) -> Response {
    let sandboxed = route.sandboxed();
    let vary = route.vary();
    let mut res = answer(state, method, route, headers, client, body).await;
    if sandboxed {
        let h = res.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, SANDBOX_CSP);
        h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    }
    if let Some(v) = vary {
        if matches!(res.status(), StatusCode::OK | StatusCode::NOT_MODIFIED) {
            // Appended: a `Vary: Accept-Encoding` of the compression stays, as a second field.
            res.headers_mut()
                .append(header::VARY, HeaderValue::from_static(v));
        }
    }
    res
}

const SANDBOX_CSP: HeaderValue = HeaderValue::from_static(rack_core::route::SANDBOX_CSP);
const NOSNIFF: HeaderValue = HeaderValue::from_static(rack_core::route::NOSNIFF);

async fn answer(
    state: &AppState,
    method: &Method,
    route: Route,
    headers: &HeaderMap,
    client: IpAddr,
    body: axum::body::Body,
) -> Response {
    if route == Route::NotFound {
        return ErrorReply(ApiError::route_not_found()).into_response();
    }
    if !route.allows(method.as_str()) {
        let mut res = ErrorReply(ApiError::method_not_allowed()).into_response();
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(route.allowed_methods()));
        return res;
    }
    let cred = credential(headers);
    let policy = state.policy();
    let ctx = Ctx {
        policy: &policy,
        admin: &state.admin,
        credential: cred.as_ref(),
        now_ms: now_ms(),
    };
    let namespace = route_namespace(&route).map(str::to_owned);
    // Headers of SPEC §18 on a registry read (`X-Rack-Yanked`, `Deprecation`, `Link`), sent
    // with its 200 or 304.
    let mut lifecycle = reads::Annotations::new();
    let result = match route {
        Route::Health => Ok(reads::health(state).await),
        Route::Metrics => Ok(response::Reply::ok(
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
            rack_core::route::CacheTier::NoStore,
        )),
        Route::OpenApi => Ok(openapi::reply()),
        Route::Registry(res) => match res {
            Ok(res) => reads::registry(state, &ctx, res, &mut lifecycle).await,
            Err(e) => Err(e.into()),
        },
        Route::Preset(name) => match name {
            Ok(name) => reads::preset(state, &name).await,
            Err(e) => Err(e.into()),
        },
        Route::Schema(file) => match file {
            Ok(file) => reads::schema(state, file).await,
            Err(e) => Err(e.into()),
        },
        Route::Namespaces => reads::namespaces(state, &ctx).await,
        Route::NamespaceRegistries(ns) => match ns {
            Ok(ns) => reads::namespace_registries(state, &ctx, &ns).await,
            Err(e) => Err(e.into()),
        },
        Route::Manage(action, target) => match target {
            Ok(target) => manage::handle(state, &ctx, method, action, target, body).await,
            Err(e) => Err(e.into()),
        },
        // Uploads are dispatched before; NotFound was answered above.
        Route::Upload | Route::NotFound => Err(ApiError::route_not_found().into()),
    };
    if let Err(ErrorReply(e)) = &result {
        if matches!(e.status(), 401 | 403) {
            state.audit.record(
                "access_denied",
                &[
                    ("code", json!(e.code())),
                    ("namespace", json!(namespace)),
                    ("client", json!(client.to_string())),
                ],
            );
        }
    }
    match result {
        Ok(reply) => {
            let mut res = reply.respond(headers, method == Method::HEAD).finish().await;
            if matches!(res.status(), StatusCode::OK | StatusCode::NOT_MODIFIED) {
                res.headers_mut().extend(lifecycle);
            }
            res
        }
        // A management body may be left unread, a publish lease may be in the way.
        Err(e) => e.after_body(),
    }
}
