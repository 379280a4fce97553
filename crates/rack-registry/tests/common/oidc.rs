//! A real OpenID Connect issuer on loopback, for the trusted-publishing tests (SPEC §16).
//!
//! [`Issuer::start`] serves `/.well-known/openid-configuration` and `/jwks` over HTTP on
//! `127.0.0.1` (axum, on a thread of its own), publishing the public halves of signing keys made
//! fresh for every run ([`Key::rsa`] for RS256, [`Key::ec`] for ES256). The key set can be
//! replaced while it runs ([`Issuer::publish_keys`], a rotation), the issuer can stop answering
//! altogether ([`Issuer::go_down`]: connections are then refused), and it counts the key-set
//! fetches it served. [`Runner`] plays the GitHub Actions runner's ID-token endpoint
//! (`ACTIONS_ID_TOKEN_REQUEST_URL`) for `rack-registry publish --oidc`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The audience the server expects by default (`OIDC_AUDIENCE`).
pub const AUDIENCE: &str = "rack-registry";

/// A signing key and its public JWK.
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Jwk,
}

impl Key {
    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Key {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Key {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    /// A fresh 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let private = rsa::RsaPrivateKey::new(&mut rand_core06::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        Key::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()))
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Key {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand_core06::OsRng);
        let der = secret.to_pkcs8_der().unwrap();
        Key::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes()))
    }

    /// `claims` signed with this key, the header naming its own `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(claims, &self.kid)
    }

    /// `claims` signed with this key, the header naming `kid` (another key's, or none known).
    pub fn sign_as(&self, claims: &Value, kid: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims as GitHub Actions issues them for `acme/templates` (owner id 1234), workflow
/// `publish.yml` on `main`, environment `release`, valid for five minutes, with a fresh `jti`;
/// then `changes` applied (a `null` removes the claim).
pub fn claims(issuer: &str, changes: Value) -> Value {
    let now = now_s();
    let mut c = json!({
        "jti": format!("jti-{:016x}", rand::random::<u64>()),
        "sub": "repo:acme/templates:environment:release",
        "aud": AUDIENCE,
        "iss": issuer,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        "repository": "acme/templates",
        "repository_id": "5678",
        "repository_owner": "acme",
        "repository_owner_id": "1234",
        "workflow": "Publish",
        "workflow_ref": "acme/templates/.github/workflows/publish.yml@refs/heads/main",
        "job_workflow_ref": "acme/templates/.github/workflows/publish.yml@refs/heads/main",
        "ref": "refs/heads/main",
        "environment": "release",
        "run_id": "9876543210",
        "run_attempt": "1",
        "sha": "4f2a0c1d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49",
        "actor": "octocat",
        "event_name": "push",
    });
    let obj = c.as_object_mut().unwrap();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

struct Shared {
    url: String,
    keys: Mutex<Vec<Jwk>>,
    jwks_fetches: AtomicUsize,
}

/// A local OpenID Connect issuer (see the module docs).
pub struct Issuer {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A fresh loopback port, bound.
fn bind() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// Serve `app` on `listener` on a thread of its own until the returned sender fires.
fn serve(
    listener: std::net::TcpListener,
    app: Router,
) -> (tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
    });
    (tx, thread)
}

impl Issuer {
    /// Start an issuer publishing `keys`.
    pub fn start(keys: &[&Key]) -> Issuer {
        let (listener, port) = bind();
        let url = format!("http://127.0.0.1:{port}");
        let shared = Arc::new(Shared {
            url: url.clone(),
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        async fn discovery(State(s): State<Arc<Shared>>) -> Json<Value> {
            Json(json!({
                "issuer": s.url,
                "jwks_uri": format!("{}/jwks", s.url),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }))
        }
        async fn jwks(State(s): State<Arc<Shared>>) -> Json<Value> {
            s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys = s.keys.lock().unwrap().clone();
            Json(json!({ "keys": keys }))
        }
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let (stop, thread) = serve(listener, app);
        Issuer {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Replace the published key set (a key rotation).
    pub fn publish_keys(&self, keys: &[&Key]) {
        *self.shared.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// How many times the key set was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Stop serving: from now on connections to the issuer are refused.
    pub fn go_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Claims of a matching token of this issuer, with `changes` ([`claims`]).
    pub fn claims(&self, changes: Value) -> Value {
        claims(&self.url, changes)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// What the fake runner endpoint saw.
#[derive(Default, Debug, Clone)]
pub struct RunnerLog {
    /// The `audience` query parameter of each request (with `api-version` beside it).
    pub audiences: Vec<String>,
    pub api_versions: Vec<String>,
    /// Requests whose `Authorization` was not `bearer <request token>`.
    pub refused: usize,
}

/// The GitHub Actions runner's ID-token endpoint: `GET /token?api-version=2.0&audience=<aud>`
/// with `Authorization: bearer <request token>` answers `{"value": <ID token>}`, the token
/// signed by `key` for the issuer `issuer` and the requested audience.
pub struct Runner {
    /// The value for `ACTIONS_ID_TOKEN_REQUEST_URL`.
    pub request_url: String,
    pub log: Arc<Mutex<RunnerLog>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    pub fn start(issuer: &str, key: Key, request_token: &str) -> Runner {
        let log: Arc<Mutex<RunnerLog>> = Arc::default();
        let state = (
            Arc::new(key),
            issuer.to_owned(),
            request_token.to_owned(),
            log.clone(),
        );
        type St = (Arc<Key>, String, String, Arc<Mutex<RunnerLog>>);
        async fn token(
            State((key, issuer, request_token, log)): State<St>,
            uri: Uri,
            headers: HeaderMap,
        ) -> Result<Json<Value>, StatusCode> {
            let q: std::collections::HashMap<String, String> =
                form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            let mut log = log.lock().unwrap();
            if auth != Some(format!("bearer {request_token}").as_str()) {
                log.refused += 1;
                return Err(StatusCode::UNAUTHORIZED);
            }
            let aud = q.get("audience").cloned().unwrap_or_default();
            log.audiences.push(aud.clone());
            log.api_versions
                .push(q.get("api-version").cloned().unwrap_or_default());
            let token = key.sign(&claims(&issuer, json!({ "aud": aud })));
            Ok(Json(json!({ "count": 1, "value": token })))
        }
        let app = Router::new().route("/token", get(token)).with_state(state);
        let (listener, port) = bind();
        let (stop, thread) = serve(listener, app);
        Runner {
            request_url: format!("http://127.0.0.1:{port}/token?api-version=2.0"),
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
