//! The signing keys of each issuer: OpenID Connect discovery
//! (`<issuer>/.well-known/openid-configuration`, whose `jwks_uri` names the key set), then the
//! key set (JWKS), cached per issuer.
//!
//! - A key is looked up by `kid`. A `kid` the cache does not know makes it fetch the set again,
//!   at most once per [`REFETCH_MIN`] per issuer: a flood of tokens with made-up `kid`s costs
//!   the issuer one request a minute, and a key the issuer has just rotated in is found at once.
//!   A set older than [`MAX_AGE`] is fetched again under the same limit (keys the issuer
//!   withdrew stop working).
//! - A failed fetch (issuer down, slow, answering nonsense) keeps the last good set: tokens
//!   signed with known keys still verify. With no set at all, fetches are retried at most once
//!   per [`REFETCH_MIN`] too.
//! - Every fetch has a [`TIMEOUT`] (connection and body), a size limit ([`MAX_DISCOVERY_BYTES`],
//!   [`MAX_JWKS_BYTES`]) enforced while reading, and keeps at most [`MAX_KEYS`] usable keys.
//!   `jwks_uri` must pass the same URL rule as the issuer (https, or loopback http when
//!   insecure issuers are allowed), and the discovery document must name the same issuer.
//! - Fetches of one issuer are serialized (a per-issuer async lock): a burst of requests with
//!   a new `kid` makes one fetch, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use serde_json::Value;

/// The least time between two fetches of one issuer's keys once it has (or tried to have) some.
pub const REFETCH_MIN: Duration = Duration::from_secs(60);
/// A key set older than this is fetched again (under [`REFETCH_MIN`]).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest one fetch (discovery or key set) may take, body included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Usable keys kept per issuer (the rest of a larger set is ignored).
pub const MAX_KEYS: usize = 64;
/// Issuers remembered at once; past it the memory is emptied (which costs fetches, never a
/// wrong answer). Only issuers named in `publishers.json` ever get here.
const MAX_ISSUERS: usize = 256;

/// Why no key was found for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key with this kid in the issuer's key set")]
    UnknownKid,
    #[error("the issuer's keys could not be fetched: {0}")]
    Unavailable(String),
}

#[derive(Default)]
struct State {
    /// The last good key set and when it was fetched.
    keys: Option<(Vec<Jwk>, Instant)>,
    /// The last fetch made while a set was cached (a refetch).
    last_refetch: Option<Instant>,
    /// The last failed fetch and why it failed.
    last_failure: Option<(Instant, String)>,
}

#[derive(Default)]
struct IssuerKeys {
    state: tokio::sync::Mutex<State>,
}

/// Key sets of every issuer, fetched on demand.
pub struct KeyCache {
    client: reqwest::Client,
    allow_insecure: bool,
    issuers: Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

fn find<'a>(keys: &'a [Jwk], kid: &str) -> Option<&'a Jwk> {
    keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid))
}

/// RSA keys and EC keys on P-256: what RS256 and ES256 verify with.
fn usable(k: &Jwk) -> bool {
    k.common.key_id.is_some()
        && match &k.algorithm {
            AlgorithmParameters::RSA(_) => true,
            AlgorithmParameters::EllipticCurve(ec) => ec.curve == EllipticCurve::P256,
            _ => false,
        }
}

impl KeyCache {
    pub fn new(allow_insecure: bool) -> Result<KeyCache, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .https_only(!allow_insecure)
            .user_agent(concat!("rack-registry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot create the OIDC HTTP client: {e}"))?;
        Ok(KeyCache {
            client,
            allow_insecure,
            issuers: Mutex::default(),
        })
    }

    fn entry(&self, issuer: &str) -> Arc<IssuerKeys> {
        let mut map = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ISSUERS && !map.contains_key(issuer) {
            map.clear();
        }
        map.entry(issuer.to_owned()).or_default().clone()
    }

    /// The key `kid` of `issuer` (see the module docs for when the set is fetched).
    pub async fn key(&self, issuer: &str, kid: &str) -> Result<Jwk, KeyError> {
        let entry = self.entry(issuer);
        let mut st = entry.state.lock().await;
        let fresh = st.keys.as_ref().is_some_and(|(_, at)| at.elapsed() < MAX_AGE);
        if fresh {
            if let Some(k) = st.keys.as_ref().and_then(|(keys, _)| find(keys, kid)) {
                return Ok(k.clone());
            }
        }
        // The first fetch is not a refetch; a failed one is retried under the same limit.
        let since = |t: &Option<Instant>| t.is_none_or(|t| t.elapsed() >= REFETCH_MIN);
        let may_fetch = match &st.keys {
            None => since(&st.last_failure.as_ref().map(|(t, _)| *t)),
            Some(_) => since(&st.last_refetch),
        };
        if may_fetch {
            if st.keys.is_some() {
                st.last_refetch = Some(Instant::now());
            }
            match self.fetch(issuer).await {
                Ok(keys) => {
                    tracing::info!(issuer, keys = keys.len(), "fetched the issuer's signing keys");
                    st.keys = Some((keys, Instant::now()));
                    st.last_failure = None;
                }
                Err(e) => {
                    tracing::warn!(issuer, error = %e, "cannot fetch the issuer's signing keys; keeping the last good ones");
                    st.last_failure = Some((Instant::now(), e));
                }
            }
        }
        if let Some(k) = st.keys.as_ref().and_then(|(keys, _)| find(keys, kid)) {
            return Ok(k.clone());
        }
        match (&st.keys, &st.last_failure) {
            (None, Some((_, e))) => Err(KeyError::Unavailable(e.clone())),
            _ => Err(KeyError::UnknownKid),
        }
    }

    /// Discovery, then the key set.
    async fn fetch(&self, issuer: &str) -> Result<Vec<Jwk>, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc: Value = serde_json::from_slice(&self.get(&discovery, MAX_DISCOVERY_BYTES).await?)
            .map_err(|e| format!("discovery document is not JSON: {e}"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err("the discovery document names another issuer".into());
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        rack_core::publishers::check_issuer(jwks_uri, self.allow_insecure)
            .map_err(|e| format!("jwks_uri refused: {}", e.replace("issuer", "URL")))?;
        let set: Value = serde_json::from_slice(&self.get(jwks_uri, MAX_JWKS_BYTES).await?)
            .map_err(|e| format!("key set is not JSON: {e}"))?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no \"keys\" array")?;
        // Keys of other kinds (or malformed ones) are skipped one by one, never the whole set.
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(usable)
            .take(MAX_KEYS)
            .collect())
    }

    /// GET `url`, its body at most `limit` bytes (checked while it arrives).
    async fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        let mut res = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", res.status().as_u16()));
        }
        if res.content_length().is_some_and(|n| n > limit as u64) {
            return Err(format!("GET {url}: larger than {limit} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > limit {
                return Err(format!("GET {url}: larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
