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
//! 7. to 12. manifest identity (a duplicate key is `INVALID_MANIFEST`), namespace and token,
//!    schema, declared files, entry kinds (rules from `rack_core::manifest`, shared with
//!    `rack-registry publish --dry-run`). A bearer that is a CI job's ID token (trusted
//!    publishing, SPEC §16) is verified before the body is read ([`crate::auth::oidc`]), judged
//!    at check 9 by `rack_core::publishers`, and spent (its `jti` recorded, create-only) once
//!    check 12 passed, before check 13: of two uploads with one token, one can publish;
//! 13. no version of the registry equal in SemVer precedence exists (`1.0.0+b` is refused
//!     next to `1.0.0+a`), judged under the registry's lock, which is held until
//!     `versions.json` is rewritten, so two racing uploads of such versions have one winner.
//!
//! Then the staged tree is published in one step (a `rename` on local disk, manifest-last
//! create-only writes on a bucket), `versions.json` is rebuilt by compare-and-swap, publish
//! events are handed to the sinks, and the staging directory is removed before the 201 goes out.
//!
//! Guards around the checks (not SPEC checks; they never change a check's answer):
//! - after the header checks 0 to 2 and before a byte of the body is read, an upload is
//!   admitted ([`admission`]): one that may publish takes one of `MAX_CONCURRENT_UPLOADS`
//!   slots, waiting for one in a bounded queue if need be (a full queue or a long wait: 503 and
//!   `Retry-After`); one whose token can publish nowhere takes a judge slot of its own, so
//!   that such uploads, stalled or not, never hold a publishing slot;
//! - the body comes under its deadlines (`http::body`): a body with no byte for
//!   `UPLOAD_STALL_SECONDS`, or not whole within `UPLOAD_TIMEOUT_SECONDS`, is answered 408 with
//!   the connection closed, and its slot is free at once;
//! - a token that can publish nowhere ends in an error at checks 3 to 9 whatever the package
//!   holds: such an upload is judged as it streams ([`dry`]), and nothing is written for it.
//!
//! Log lines and audit records carry at most [`CLIP`] bytes of any client-supplied string.

pub mod admission;
pub mod dry;
pub mod extract;
pub mod receive;
pub mod staging;

use std::net::IpAddr;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rack_core::auth::{Ctx, Principal};
use rack_core::manifest::{self, clip, EntryKind, Identity, CLIP};
use rack_core::names::{is_segment, is_version};
use rack_core::publishers::{IdToken, Publishers};
use rack_core::{ApiError, ErrorKind};
use serde_json::json;

use crate::api_error::ErrorReply;
use crate::auth::oidc::replay::Recorded;
use crate::auth::oidc::Verified;
use crate::events::PublishEvent;
use crate::state::{now_ms, AppState};
use crate::storage::StorageError;
use crate::validate;
use crate::versions::{self, JournalEntry};
use extract::{ExtractError, ExtractLimits};
use receive::{ReceiveError, Target};
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
    sent_early(ErrorReply(e).into_response(), body)
}

/// [`refuse_early`] for a reply already made.
fn sent_early(mut res: Response, body: Body) -> Response {
    receive::drain(body);
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Record a failed upload (metrics and audit).
fn failed(state: &AppState, client: IpAddr, code: &str, identity: Option<&Identity>) {
    // Client-supplied names by a bounded prefix only (they may be kilobytes long).
    let bounded = |f: fn(&Identity) -> &str| identity.map(|i| clip(f(i), CLIP).into_owned());
    tracing::warn!(
        code,
        %client,
        namespace = bounded(|i| &i.namespace),
        name = bounded(|i| &i.name),
        version = bounded(|i| &i.version),
        "publish failed"
    );
    state.metrics.uploads.with_label_values(&["failure"]).inc();
    state.audit.record(
        "publish",
        &[
            ("outcome", json!("failure")),
            ("code", json!(code)),
            ("namespace", json!(identity.map(|i| clip(&i.namespace, CLIP)))),
            ("name", json!(identity.map(|i| clip(&i.name, CLIP)))),
            ("version", json!(identity.map(|i| clip(&i.version, CLIP)))),
            ("client", json!(client.to_string())),
        ],
    );
}

/// The extraction limits of the configuration.
fn extract_limits(state: &AppState) -> ExtractLimits {
    ExtractLimits {
        max_entries: state.limits.max_archive_entries,
        max_bytes: state.limits.max_extracted_bytes,
        max_manifest_bytes: state.limits.max_manifest_bytes,
    }
}

/// The answer to a failed upload (after its body was read, or cut off).
fn refuse(state: &AppState, client: IpAddr, identity: Option<&Identity>, failure: Failure) -> Response {
    match failure {
        Failure::Api(e) => {
            failed(state, client, e.code(), identity);
            ErrorReply(e).after_body()
        }
        Failure::Internal(msg) => internal(state, client, identity, msg),
    }
}

pub async fn handle(state: &AppState, headers: &HeaderMap, client: IpAddr, body: Body) -> Response {
    // Check 0: a token, before the body.
    let Some(cred) = crate::auth::credential(headers) else {
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

    // Trusted publishing (SPEC §16): a bearer that is an ID token of a configured issuer is
    // verified now, before the body is read; its verdict is given at check 9.
    let publishers = state.publishers.get();
    let id_token = match crate::auth::bearer(headers).and_then(|b| state.oidc.candidate(b, &publishers)) {
        None => None,
        Some(candidate) => Some(
            match state.oidc.verify(&candidate, now_ms().div_euclid(1000)).await {
                Ok(v) => Bearer::Verified(v),
                Err(reason) => {
                    tracing::warn!(%client, issuer = %clip(&candidate.issuer, CLIP), %reason, "ID token refused");
                    Bearer::Refused
                }
            },
        ),
    };

    // Not SPEC checks: admission, before the body is read. A credential that can publish
    // nowhere (judged by the policy in force now, which also decides checks 8 and 9 for it)
    // takes a judge slot, never a publishing one; a publishing upload may wait for its slot.
    let policy = state.policy();
    let ctx = Ctx {
        policy: &policy,
        admin: &state.admin,
        credential: Some(&cred),
        now_ms: now_ms(),
    };
    let auth = Auth {
        ctx,
        publishers: &publishers,
        id_token: id_token.as_ref(),
    };
    let hopeless = !auth.may_publish_somewhere();
    let admitted = if hopeless {
        state.uploads.judging()
    } else {
        state.uploads.publishing().await
    };
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            let e = ApiError::uploads_busy(crate::api_error::RETRY_AFTER_SECS);
            tracing::info!(%client, reason = refusal.reason(), "upload refused: no slot");
            failed(state, client, e.code(), None);
            let mut res = refuse_early(e, body);
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::api_error::RETRY_AFTER_SECS),
            );
            return res;
        }
    };

    // Storage gone (root removed, marker missing): refuse before staging, which would write
    // into the root.
    if let Err(e) = state.storage.check_writable().await {
        tracing::error!(error = %e, "upload refused: storage unavailable");
        let e = ApiError::storage_unavailable();
        failed(state, client, e.code(), None);
        return refuse_early(e, body);
    }

    // A token that can publish nowhere: judged as the package streams, nothing written.
    if hopeless {
        let mut identity = None;
        let failure = judge(state, &auth, body, boundary, &mut identity).await;
        return refuse(state, client, identity.as_ref(), failure);
    }

    let staging = match Staging::create(&state.staging_root).await {
        Ok(s) => s,
        Err(e) => {
            // Answered before the body was read (a read-only or full disk): drained like any
            // early refusal, or the client sees a reset instead of the 500.
            let msg = format!("cannot create staging directory: {e}");
            return sent_early(internal(state, client, None, msg), body);
        }
    };
    let mut identity = None;
    let result = pipeline(state, &auth, body, boundary, &staging, &mut identity).await;
    staging.remove().await;
    match result {
        Ok((identity, principal)) => {
            state.metrics.uploads.with_label_values(&["success"]).inc();
            tracing::info!(
                namespace = %clip(&identity.namespace, CLIP),
                name = %clip(&identity.name, CLIP),
                version = %clip(&identity.version, CLIP),
                by = principal_label(&principal),
                "published"
            );
            let mut fields = vec![
                ("outcome", json!("success")),
                ("namespace", json!(clip(&identity.namespace, CLIP))),
                ("name", json!(clip(&identity.name, CLIP))),
                ("version", json!(clip(&identity.version, CLIP))),
                ("by", json!(principal_label(&principal))),
                ("client", json!(client.to_string())),
            ];
            if let Principal::Publisher(who) = &principal {
                // SPEC §16: who in CI published (claims, bounded; never the token or its jti).
                let opt = |v: &Option<String>| json!(v.as_deref().map(|s| clip(s, CLIP)));
                fields.extend([
                    ("issuer", json!(clip(&who.issuer, CLIP))),
                    ("repository", json!(clip(&who.repository, CLIP))),
                    ("workflow", opt(&who.workflow)),
                    ("run_id", opt(&who.run_id)),
                    ("sha", opt(&who.sha)),
                ]);
            }
            state.audit.record("publish", &fields);
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
        Err(failure) => refuse(state, client, identity.as_ref(), failure),
    }
}

/// Checks 3 to 9 of an upload whose token can publish nowhere ([`dry`]): the same answer as
/// [`pipeline`] would give, without a byte written. It always ends in a failure.
async fn judge(
    state: &AppState,
    auth: &Auth<'_>,
    body: Body,
    boundary: String,
    known: &mut Option<Identity>,
) -> Failure {
    let verdict = async {
        let target = Target::Judge(extract_limits(state));
        let received = receive::receive(body, boundary, state.limits.max_upload_bytes, target)
            .await
            .map_err(receive_failure)?;
        // Checks 3 to 5.
        received.verify()?;
        // Check 6.
        let scanned = received
            .scanned
            .ok_or_else(|| Failure::Internal("a file part without a verdict".into()))?
            .map_err(extract_failure)?;
        // Check 7.
        if scanned.entries.get("registry.json") != Some(&EntryKind::File) {
            return Err(ApiError::manifest_not_found().into());
        }
        let bytes = scanned
            .manifest
            .ok_or_else(|| Failure::Internal("registry.json was not kept".into()))?;
        let (_, identity) = manifest::identity(&bytes)?;
        *known = Some(identity.clone());
        // Checks 8 and 9: refused by construction.
        match auth.publish(&identity.namespace) {
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    };
    match verdict.await {
        Err(failure) => failure,
        Ok(()) => Failure::Internal("a token that can publish nowhere was allowed to publish".into()),
    }
}

fn receive_failure(e: ReceiveError) -> Failure {
    match e {
        ReceiveError::Api(e) => Failure::Api(e),
        ReceiveError::Io(e) => Failure::Internal(format!("writing the upload to staging: {e}")),
    }
}

fn extract_failure(e: ExtractError) -> Failure {
    match e {
        ExtractError::Api(e) => Failure::Api(e),
        ExtractError::Io(e) => Failure::Internal(format!("extracting into staging: {e}")),
    }
}

fn principal_label(p: &Principal) -> String {
    match p {
        Principal::Anonymous => "anonymous".into(),
        Principal::Admin => "admin".into(),
        Principal::Token { mark: Some(m) } => format!("token ({m})"),
        Principal::Token { mark: None } => "token".into(),
        Principal::Publisher(who) => format!("trusted publisher ({})", clip(&who.repository, CLIP)),
    }
}

/// What an upload's bearer is, when it is an ID token of a configured issuer (SPEC §16).
enum Bearer {
    /// Unverifiable or used before (the reason was logged): 401 at check 9.
    Refused,
    Verified(Verified),
}

/// Everything checks 8 and 9 need: the token's context, and the ID-token verdict if the bearer
/// is one.
struct Auth<'a> {
    ctx: Ctx<'a>,
    publishers: &'a Publishers,
    id_token: Option<&'a Bearer>,
}

impl Auth<'_> {
    fn claims(&self) -> IdToken {
        match self.id_token {
            Some(Bearer::Verified(v)) => IdToken::Verified(v.claims.clone()),
            _ => IdToken::Refused,
        }
    }

    /// Checks 8 and 9: an ID token by `rack_core::publishers`, any other token by its policy.
    fn publish(&self, ns: &str) -> Result<Principal, ApiError> {
        match self.id_token {
            None => self.ctx.publish(ns),
            Some(_) => {
                rack_core::publishers::authorize_publish(self.ctx.policy, self.publishers, ns, &self.claims())
            }
        }
    }

    /// Whether checks 8 and 9 could pass for some namespace ([`Ctx::may_publish_somewhere`]).
    fn may_publish_somewhere(&self) -> bool {
        match self.id_token {
            None => self.ctx.may_publish_somewhere(),
            Some(Bearer::Refused) => false,
            Some(Bearer::Verified(v)) => self.publishers.matches_somewhere(&v.claims),
        }
    }

    /// Spend the ID token, if the bearer is one (create-only, SPEC §16): after checks 9 to 12
    /// passed, before check 13 and the publish. A token used meanwhile (a replay racing this
    /// upload, on any replica) is 401 `INVALID_TOKEN`. Whatever happens after this, the token
    /// stays spent: a publish that then fails (409, storage) needs a fresh token, which a CI
    /// job can always ask for; the alternative, forgetting the record, would reopen the token
    /// to a replay.
    async fn spend(&self, state: &AppState) -> Result<(), Failure> {
        let Some(Bearer::Verified(v)) = self.id_token else {
            return Ok(());
        };
        match state
            .oidc
            .replays
            .record(&v.record, v.until_s, now_ms().div_euclid(1000))
            .await
        {
            Ok(Recorded::First) => Ok(()),
            Ok(Recorded::Replay) => {
                tracing::warn!(issuer = %clip(&v.claims.issuer, CLIP), "ID token refused: already used (jti seen before)");
                Err(ApiError::invalid_token().into())
            }
            Err(e @ StorageError::Unavailable(_)) => {
                tracing::error!(error = %e, "publish refused: storage unavailable");
                Err(ApiError::storage_unavailable().into())
            }
            Err(e) => Err(Failure::Internal(format!("recording an ID token's use: {e}"))),
        }
    }
}

fn internal(state: &AppState, client: IpAddr, identity: Option<&Identity>, msg: String) -> Response {
    failed(state, client, "INTERNAL_SERVER_ERROR", identity);
    // The message may hold client-derived keys (bounded by check 10) and storage details.
    tracing::error!(error = %clip(&msg, 4 * CLIP), "upload failed");
    ErrorReply(ApiError::internal()).into_response()
}

async fn pipeline(
    state: &AppState,
    auth: &Auth<'_>,
    body: Body,
    boundary: String,
    staging: &Staging,
    known: &mut Option<Identity>,
) -> Result<(Identity, Principal), Failure> {
    // Checks 2 to 5.
    let package = staging.package();
    let received = receive::receive(
        body,
        boundary,
        state.limits.max_upload_bytes,
        Target::Stage(&package),
    )
    .await
    .map_err(receive_failure)?;
    received.verify()?;

    // Check 6.
    let tree = staging.tree();
    let limits = extract_limits(state);
    let tree2 = tree.clone();
    let entries = tokio::task::spawn_blocking(move || extract::extract(&package, &tree2, limits))
        .await
        .map_err(|e| Failure::Internal(format!("extraction task: {e}")))?
        .map_err(extract_failure)?;

    // Check 7.
    if entries.get("registry.json") != Some(&EntryKind::File) {
        return Err(ApiError::manifest_not_found().into());
    }
    let manifest_bytes = tokio::fs::read(tree.join("registry.json"))
        .await
        .map_err(|e| Failure::Internal(format!("reading staged registry.json: {e}")))?;
    let (doc, identity) = manifest::identity(&manifest_bytes)?;
    *known = Some(identity.clone());

    // Checks 8 and 9, by the policy in force now (an ID token's verdict was reached before
    // the body was read; a changed publishers.json counts too).
    let policy = state.policy();
    let publishers = state.publishers.get();
    let now = Auth {
        ctx: Ctx {
            policy: &policy,
            admin: &state.admin,
            credential: auth.ctx.credential,
            now_ms: now_ms(),
        },
        publishers: &publishers,
        id_token: auth.id_token,
    };
    let principal = now.publish(&identity.namespace)?;
    // A namespace served from an upstream is published there (SPEC §17).
    if state.upstreams.of(&identity.namespace).is_some() {
        return Err(ApiError::forbidden_namespace().into());
    }

    // Check 10.
    let schema = state
        .schemas
        .registry_item(&state.storage, &state.cache)
        .await
        .map_err(Failure::Internal)?;
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
    // The schema bounds no length; a key no storage can hold is refused here, not by a 500.
    if let Some(why) = manifest::unstorable_path(&identity.version_path()) {
        return Err(ApiError::new(
            ErrorKind::SchemaValidationFailed,
            format!("Schema validation failed: the registry path is too long to store: {why}"),
        )
        .into());
    }

    // Checks 11 and 12.
    manifest::check_entries(&entries, &manifest::declared_files(&doc))?;

    // An ID token is spent now, or never (SPEC §16).
    now.spend(state).await?;

    // Check 13 and the publish, under the registry's lock: the check sees every version
    // published before, and the publish (create-only, so of two racing uploads of one version
    // one wins, across replicas too) cannot interleave with another of this registry.
    let registry = identity.registry_key();
    let exists = |version: &str| {
        ApiError::new(
            ErrorKind::VersionExists,
            format!("Registry {registry}@{version} already exists"),
        )
    };
    let lock = state.registry_locks.get(&registry);
    let publishing = lock.lock().await;
    let dest = identity.version_path();
    // On disk, check 13 here; a bucket's publish protocol makes the same checks under its lease
    // (SPEC §11.2 step 3), so they are not asked of the bucket twice.
    if !state.storage.publish_lists_version() {
        let manifest_key = rack_core::layout::manifest_key(&registry, &identity.version);
        match state.storage.head(&manifest_key).await {
            Ok(Some(_)) => return Err(exists(&identity.version).into()),
            Ok(None) => {}
            Err(e) => return Err(Failure::Internal(e.to_string())),
        }
        // Equal precedence is the same version for every reader (`1.0.0+b` next to `1.0.0+a`:
        // which is the latest?), so it exists already; the message names the stored spelling.
        let known = versions::known_versions(state.storage.as_ref(), &registry)
            .await
            .map_err(|e| Failure::Internal(format!("listing versions of {}: {e}", clip(&registry, CLIP))))?;
        if let Some(stored) = rack_core::version::equal_in_precedence(&identity.version, &known) {
            return Err(exists(stored).into());
        }
        // Yanked versions are stored (seen above); deleted ones are not, but never come back
        // (SPEC §18). Read after the versions, as every lifecycle rule wants.
        let (doc, _) = crate::storage::lifecycle::load(state.storage.as_ref(), &registry)
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?;
        if let Some(stored) = doc.blocks_publish_of(&identity.version) {
            return Err(exists(stored).into());
        }
    }
    let journal_entry = JournalEntry {
        registry: registry.clone(),
        version: identity.version.clone(),
    };
    versions::journal_begin(staging.path(), &journal_entry)
        .await
        .map_err(|e| Failure::Internal(format!("writing the publish journal: {e}")))?;
    let announcer = crate::events::Announcer(&state.sinks);
    let published = match state.storage.publish_dir(&tree, &dest, &announcer).await {
        // A bucket's publish protocol has merged the version into versions.json already.
        Ok(()) if state.storage.publish_lists_version() => Ok(()),
        Ok(()) => versions::rebuild_locked(state.storage.as_ref(), &registry, Some(&identity.version))
            .await
            .map(|_| ())
            .map_err(|e| Failure::Internal(format!("updating versions of {}: {e}", clip(&registry, CLIP)))),
        // The key names the stored spelling (`1.0.0+a` when `1.0.0+b` was sent).
        Err(StorageError::AlreadyExists(key)) => {
            let stored = key
                .strip_suffix("/registry.json")
                .and_then(|k| k.rsplit('/').next())
                .filter(|v| is_version(v))
                .unwrap_or(&identity.version);
            Err(exists(stored).into())
        }
        Err(e @ StorageError::Unavailable(_)) => {
            tracing::error!(error = %e, "publish refused: storage unavailable");
            Err(ApiError::storage_unavailable().into())
        }
        // SPEC §11.2 step 4: the publish may have lost its lease; nothing of it is visible.
        Err(e @ StorageError::Fenced(_)) => {
            tracing::warn!(error = %e, "publish stopped: it may have lost its lease");
            Err(ApiError::publish_fenced().into())
        }
        Err(e @ StorageError::Pending(_)) => {
            tracing::error!(error = %e, "publish stored but not listed: the lease sweep lists it");
            Err(ApiError::publish_pending(&format!("{registry}@{}", identity.version)).into())
        }
        Err(e) => Err(Failure::Internal(format!(
            "publishing {}: {e}",
            clip(&dest, CLIP)
        ))),
    };
    state
        .cache
        .invalidate(&rack_core::layout::versions_key(&registry));
    drop(publishing);
    published?;

    // A bucket's publish protocol announced the version itself, before releasing its lease.
    if !state.storage.publish_lists_version() {
        let event = PublishEvent {
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            version: identity.version.clone(),
            path: dest,
            lifecycle: None,
        };
        for sink in &state.sinks {
            sink.accept(&event).await;
        }
    }
    Ok((identity, principal))
}
