//! The management routes of SPEC §18 under `/-/`: authorization exactly as check 9 of §5.1
//! judges an upload (and the admin token alone for a deletion), a small JSON body validated by
//! the core's rules, then [`crate::lifecycle::apply`]. Answers are JSON:
//! `{"registry", "version"?, "message", "changed", "lifecycle"}`.

use axum::body::Body;
use http::Method;
use rack_core::auth::{Ctx, Principal};
use rack_core::lifecycle::{DeprecateRequest, YankRequest};
use rack_core::route::{Action, CacheTier, Target};
use rack_core::ApiError;
use serde_json::json;

use super::response::{ApiResult, ErrorReply, Reply};
use crate::lifecycle::{Change, LifecycleBody};
use crate::state::AppState;

/// A management body is a reason or a message of at most 500 characters (up to 4 bytes each)
/// and a registry identifier, in JSON: a few kilobytes at most.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// One management request (the route and method are already known to match).
pub async fn handle(
    state: &AppState,
    ctx: &Ctx<'_>,
    method: &Method,
    action: Action,
    target: Target,
    body: Body,
) -> ApiResult {
    let ns = target.namespace();
    if action == Action::Lifecycle {
        ctx.read(ns)?;
        if let Some(up) = state.upstreams.of(ns) {
            crate::http::reads::from_upstream_registry(state, &up, target.registry_key()).await?;
        }
        return lifecycle_document(state, ctx, &target).await;
    }
    // Check 8 and 9 of §5.1, as for an upload; a deletion is for the operator alone.
    let principal = ctx.publish(ns)?;
    // An upstream namespace's lifecycle is the upstream's (SPEC §17).
    if state.upstreams.of(ns).is_some() {
        return Err(ApiError::forbidden_namespace().into());
    }
    if action == Action::Delete && principal != Principal::Admin {
        return Err(ApiError::insufficient_permissions(ns).into());
    }
    let by = match principal {
        Principal::Admin => "admin".to_owned(),
        Principal::Token { mark: Some(mark) } => mark,
        Principal::Token { mark: None } | Principal::Anonymous => "token".to_owned(),
        // `Ctx::publish` never answers this: ID tokens only publish (SPEC §16), they never
        // yank, deprecate or delete.
        Principal::Publisher(who) => format!("trusted publisher ({})", who.repository),
    };
    let change = match (action, method == Method::PUT) {
        (Action::Yank, true) => {
            let r =
                YankRequest::parse(&read_body(body).await?).map_err(|e| ApiError::invalid_request(e.0))?;
            Change::Yank { reason: r.reason }
        }
        (Action::Yank, false) => Change::Unyank,
        (Action::Deprecate, true) => {
            let r = DeprecateRequest::parse(&read_body(body).await?)
                .map_err(|e| ApiError::invalid_request(e.0))?;
            Change::Deprecate {
                message: r.message,
                successor: r.successor,
            }
        }
        (Action::Deprecate, false) => Change::Undeprecate,
        _ => Change::Delete,
    };
    let out = crate::lifecycle::apply(state, &target, change, &by).await?;
    let mut body = json!({
        "registry": target.registry_key(),
        "message": out.message,
        "changed": out.changed,
        "lifecycle": out.doc,
    });
    if let Some(v) = &target.version {
        body["version"] = json!(v);
    }
    Ok(Reply::json(&body, CacheTier::NoStore))
}

async fn lifecycle_document(state: &AppState, ctx: &Ctx<'_>, target: &Target) -> ApiResult {
    let tier = CacheTier::Short.in_namespace(ctx.policy, target.namespace());
    match crate::lifecycle::document(state, target.registry_key()).await? {
        Some(LifecycleBody::Stored(obj)) => Ok(Reply::object(obj, "application/json", tier)),
        Some(LifecycleBody::Default(text)) => Ok(Reply::ok(text, "application/json", tier)),
        None => Err(ApiError::not_found().into()),
    }
}

/// The body: at most [`MAX_BODY_BYTES`] (else 413), within its deadline (else 408).
async fn read_body(body: Body) -> Result<bytes::Bytes, ErrorReply> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        ErrorReply(match crate::timed_body::timeout_of(&e) {
            Some(t) => ApiError::body_timeout(t.after.as_secs()),
            None => ApiError::payload_too_large(MAX_BODY_BYTES as u64),
        })
    })
}
