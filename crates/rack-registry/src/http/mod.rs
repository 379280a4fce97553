//! The HTTP layer: one axum fallback handler dispatches on the core crate's [`route`], so the URL
//! grammar lives in one pure function shared with the Worker, and every path (including the odd
//! ones: `//`, percent-escapes, traversal attempts) is judged by it, not by a router's own
//! normalization.

pub mod logging;
pub mod reads;
pub mod response;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use rack_core::auth::{extract_token, Credential, Ctx};
use rack_core::route::{route, Route};
use rack_core::ApiError;
use serde_json::json;

use crate::state::{now_ms, AppState};
use response::ErrorReply;

/// The route template of a request, left in the response extensions for the request log.
#[derive(Clone, Copy)]
pub struct RouteTemplate(pub &'static str);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            logging::log_requests,
        ))
        .with_state(state)
}

/// The presented token, if any (SPEC §6): hashed at once, never kept in clear.
pub fn credential(headers: &HeaderMap) -> Option<Credential> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    extract_token(get(header::AUTHORIZATION.as_str()), get("x-registry-token")).map(Credential::new)
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    client: Option<axum::Extension<logging::ClientIp>>,
    body: axum::body::Body,
) -> Response {
    let route = route(uri.path());
    let template = route.template();
    let client = client.map(|c| c.0 .0).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut res = if route == Route::Upload && method == Method::POST {
        crate::upload::handle(&state, &headers, client, body).await
    } else {
        handle(&state, &method, route, &headers, client).await
    };
    res.extensions_mut().insert(RouteTemplate(template));
    res
}

/// The namespace a request is about, when its path names one (for the audit trail).
fn route_namespace(route: &Route) -> Option<&str> {
    match route {
        Route::Registry(Ok(r)) => Some(&r.namespace),
        Route::NamespaceRegistries(Ok(ns)) => Some(ns),
        _ => None,
    }
}

async fn handle(
    state: &AppState,
    method: &Method,
    route: Route,
    headers: &HeaderMap,
    client: IpAddr,
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
    let result = match route {
        Route::Health => Ok(reads::health(state).await),
        Route::Metrics => Ok(response::Reply::ok(
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
            rack_core::route::CacheTier::NoStore,
        )),
        Route::Registry(res) => match res {
            Ok(res) => reads::registry(state, &ctx, res).await,
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
        Ok(reply) => reply.respond(headers),
        Err(e) => e.into_response(),
    }
}
