//! `POST /registries` (SPEC §5): the upload pipeline.
//!
//! The checks run in exactly the SPEC's order (§5.1), each failure ending the request with
//! nothing left behind:
//!
//! 0. a token is present, judged from the headers before a byte of the body is read;
//! 1. the body is multipart;
//! 2. to 5. the body is streamed to a staging file, hashed on the way and cut off at the limit
//!    ([`receive`]); then file part, file type and checksum are checked;
//! 6. the archive is extracted into staging under the limits of §5.3 ([`extract`]);
//! 7. to 12. manifest identity, namespace and token, schema, declared files, entry kinds
//!    (rules from `rack_core::manifest`, shared with `rack-registry publish --dry-run`);
//! 13. the version does not exist yet.
//!
//! Then the staged tree is published in one step (a `rename` on local disk, manifest-last
//! create-only writes on a bucket), `versions.json` is rebuilt by compare-and-swap, publish
//! events are handed to the sinks, and the staging directory is removed before the 201 goes out.

pub mod extract;
pub mod receive;
pub mod staging;

use std::net::IpAddr;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rack_core::auth::{Credential, Ctx, Principal};
use rack_core::manifest::{self, EntryKind, Identity};
use rack_core::names::{is_segment, is_version};
use rack_core::{ApiError, ErrorKind};
use serde_json::json;

use crate::events::PublishEvent;
use crate::http::response::ErrorReply;
use crate::state::{now_ms, AppState};
use crate::storage::StorageError;
use crate::validate;
use crate::versions::{self, JournalEntry};
use extract::{ExtractError, ExtractLimits};
use receive::ReceiveError;
use staging::Staging;

/// Why an upload failed: an answer for the client, or an internal fault (logged, 500).
enum Failure {
    Api(ApiError),
    Internal(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

/// An answer that is sent before the body was (fully) read: drain the rest in the background
/// and close the connection afterwards, so the client can read it (SPEC §14).
fn refuse_early(e: ApiError, body: Body) -> Response {
    receive::drain(body);
    let mut res = ErrorReply(e).into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Record a failed upload (metrics and audit).
fn failed(state: &AppState, client: IpAddr, code: &str, identity: Option<&Identity>) {
    tracing::warn!(code, %client, namespace = identity.map(|i| i.namespace.as_str()), name = identity.map(|i| i.name.as_str()), version = identity.map(|i| i.version.as_str()), "publish failed");
    state.metrics.uploads.with_label_values(&["failure"]).inc();
    state.audit.record(
        "publish",
        &[
            ("outcome", json!("failure")),
            ("code", json!(code)),
            ("namespace", json!(identity.map(|i| &i.namespace))),
            ("name", json!(identity.map(|i| &i.name))),
            ("version", json!(identity.map(|i| &i.version))),
            ("client", json!(client.to_string())),
        ],
    );
}

pub async fn handle(state: &AppState, headers: &HeaderMap, client: IpAddr, body: Body) -> Response {
    // Check 0: a token, before the body.
    let Some(cred) = crate::http::credential(headers) else {
        let e = ApiError::unauthorized_upload();
        failed(state, client, e.code(), None);
        return refuse_early(e, body);
    };
    // Check 1: multipart.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
        .then(|| multer::parse_boundary(content_type).ok())
        .flatten();
    let Some(boundary) = boundary else {
        let e = ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "Content-Type must be multipart/form-data",
        );
        failed(state, client, e.code(), None);
        return refuse_early(e, body);
    };
    // Check 2, early: a declared length over the limit is refused without reading.
    let limit = state.limits.max_upload_bytes;
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limit) {
        let e = ApiError::payload_too_large(limit);
        failed(state, client, e.code(), None);
        return refuse_early(e, body);
    }

    let staging = match Staging::create(&state.staging_root).await {
        Ok(s) => s,
        Err(e) => {
            return internal(
                state,
                client,
                None,
                format!("cannot create staging directory: {e}"),
            )
        }
    };
    let mut identity = None;
    let result = pipeline(state, &cred, body, boundary, &staging, &mut identity).await;
    staging.remove().await;
    match result {
        Ok((identity, principal)) => {
            state.metrics.uploads.with_label_values(&["success"]).inc();
            tracing::info!(
                namespace = %identity.namespace,
                name = %identity.name,
                version = %identity.version,
                by = principal_label(&principal),
                "published"
            );
            state.audit.record(
                "publish",
                &[
                    ("outcome", json!("success")),
                    ("namespace", json!(identity.namespace)),
                    ("name", json!(identity.name)),
                    ("version", json!(identity.version)),
                    ("by", json!(principal_label(&principal))),
                    ("client", json!(client.to_string())),
                ],
            );
            let body = json!({
                "name": identity.name,
                "version": identity.version,
                "namespace": identity.namespace,
                "message": "Registry uploaded successfully",
                "path": identity.version_path(),
            });
            let len = body.to_string();
            let mut res = (StatusCode::CREATED, len).into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(Failure::Api(e)) => {
            failed(state, client, e.code(), identity.as_ref());
            let mut res = ErrorReply(e.clone()).into_response();
            if e.kind == ErrorKind::PayloadTooLarge {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
        Err(Failure::Internal(msg)) => internal(state, client, identity.as_ref(), msg),
    }
}

fn principal_label(p: &Principal) -> String {
    match p {
        Principal::Anonymous => "anonymous".into(),
        Principal::Admin => "admin".into(),
        Principal::Token { mark: Some(m) } => format!("token ({m})"),
        Principal::Token { mark: None } => "token".into(),
    }
}

fn internal(state: &AppState, client: IpAddr, identity: Option<&Identity>, msg: String) -> Response {
    failed(state, client, "INTERNAL_SERVER_ERROR", identity);
    tracing::error!(error = %msg, "upload failed");
    ErrorReply(ApiError::internal()).into_response()
}

async fn pipeline(
    state: &AppState,
    cred: &Credential,
    body: Body,
    boundary: String,
    staging: &Staging,
    known: &mut Option<Identity>,
) -> Result<(Identity, Principal), Failure> {
    // Checks 2 to 5.
    let package = staging.package();
    let received = receive::receive(body, boundary, state.limits.max_upload_bytes, &package)
        .await
        .map_err(|e| match e {
            ReceiveError::Api(e) => Failure::Api(e),
            ReceiveError::Io(e) => Failure::Internal(format!("writing the upload to staging: {e}")),
        })?;
    received.verify()?;

    // Check 6.
    let tree = staging.tree();
    let limits = ExtractLimits {
        max_entries: state.limits.max_archive_entries,
        max_bytes: state.limits.max_extracted_bytes,
        max_manifest_bytes: state.limits.max_manifest_bytes,
    };
    let tree2 = tree.clone();
    let entries = tokio::task::spawn_blocking(move || extract::extract(&package, &tree2, limits))
        .await
        .map_err(|e| Failure::Internal(format!("extraction task: {e}")))?
        .map_err(|e| match e {
            ExtractError::Api(e) => Failure::Api(e),
            ExtractError::Io(e) => Failure::Internal(format!("extracting into staging: {e}")),
        })?;

    // Check 7.
    if entries.get("registry.json") != Some(&EntryKind::File) {
        return Err(ApiError::manifest_not_found().into());
    }
    let manifest_bytes = tokio::fs::read(tree.join("registry.json"))
        .await
        .map_err(|e| Failure::Internal(format!("reading staged registry.json: {e}")))?;
    let (doc, identity) = manifest::identity(&manifest_bytes)?;
    *known = Some(identity.clone());

    // Checks 8 and 9.
    let policy = state.policy();
    let ctx = Ctx {
        policy: &policy,
        admin: &state.admin,
        credential: Some(cred),
        now_ms: now_ms(),
    };
    let principal = ctx.publish(&identity.namespace)?;

    // Check 10.
    let schema = validate::registry_item_schema(Some(&state.schema_dir)).map_err(Failure::Internal)?;
    if let Err(errors) = validate::validate(&schema, &doc).map_err(Failure::Internal)? {
        return Err(ApiError::schema_validation_failed(&errors).into());
    }
    // The schema (bundled or the operator's) should have ensured these; the storage key is
    // built from them, so they are checked again here regardless.
    if !identity.segments.iter().all(|s| is_segment(s)) || !is_version(&identity.version) {
        return Err(ApiError::new(
            ErrorKind::SchemaValidationFailed,
            "Schema validation failed: name, path or version is not usable as a storage path",
        )
        .into());
    }

    // Checks 11 and 12.
    manifest::check_entries(&entries, &manifest::declared_files(&doc))?;

    // Check 13, then publish (which re-checks atomically: of two racing uploads one wins).
    let registry = identity.registry_key();
    let exists = || {
        ApiError::new(
            ErrorKind::VersionExists,
            format!("Registry {registry}@{} already exists", identity.version),
        )
    };
    let dest = identity.version_path();
    let manifest_key = rack_core::layout::manifest_key(&registry, &identity.version);
    match state.storage.head(&manifest_key).await {
        Ok(Some(_)) => return Err(exists().into()),
        Ok(None) => {}
        Err(e) => return Err(Failure::Internal(e.to_string())),
    }
    let journal_entry = JournalEntry {
        registry: registry.clone(),
        version: identity.version.clone(),
    };
    versions::journal_begin(staging.path(), &journal_entry)
        .await
        .map_err(|e| Failure::Internal(format!("writing the publish journal: {e}")))?;
    let published = match state.storage.publish_dir(&tree, &dest).await {
        Ok(()) => versions::rebuild(
            state.storage.as_ref(),
            &state.registry_locks,
            &registry,
            Some(&identity.version),
        )
        .await
        .map(|_| ())
        .map_err(|e| Failure::Internal(format!("updating versions of {registry}: {e}"))),
        Err(StorageError::AlreadyExists(_)) => Err(exists().into()),
        Err(e) => Err(Failure::Internal(format!("publishing {dest}: {e}"))),
    };
    state
        .cache
        .invalidate(&rack_core::layout::versions_key(&registry));
    published?;

    let event = PublishEvent {
        namespace: identity.namespace.clone(),
        name: identity.name.clone(),
        version: identity.version.clone(),
        path: dest,
    };
    for sink in &state.sinks {
        sink.accept(&event).await;
    }
    Ok((identity, principal))
}
