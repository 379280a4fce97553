//! Trusted publishing (SPEC §16): a CI job publishes with the OpenID Connect ID token its
//! platform issued, instead of a stored secret.
//!
//! An upload's bearer goes down this path only when it is a JWT whose *unverified* `iss` is an
//! issuer named in `publishers.json` ([`Oidc::candidate`]); any other bearer, a JWT of another
//! issuer included, is an ordinary token, judged against `auth.json` as before. Reads never
//! come here: an ID token on a read is just an unknown token.
//!
//! [`Oidc::verify`] then checks, in this order, and refuses with a reason that is logged (never
//! the token, nor its `jti`):
//! 1. the header: `alg` RS256 or ES256 (nothing else, `none` and HMAC included), a `kid`;
//! 2. the key: `kid` in the issuer's key set ([`jwks`]: discovery, cache, bounded refetch);
//! 3. the signature, `iss` (again, now signed), `aud` equal to `OIDC_AUDIENCE` (a token with
//!    no `aud` is refused too), `exp` and `nbf` with [`LEEWAY_S`] of leeway (`jsonwebtoken`),
//!    and `iat` not in the future beyond the leeway;
//! 4. a `jti`, and that it was not used before ([`replay`]; the early look, a read).
//!
//! What the claims may do (match a trusted publisher of the namespace) is decided by
//! `rack_core::publishers`; the upload pipeline records the `jti` ([`replay::Replays::record`],
//! create-only) after checks 9 to 12 passed and before check 13 and the publish, so that of two
//! uploads with one token exactly one can publish, on any number of replicas.

pub mod jwks;
pub mod replay;

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rack_core::publishers::{IdClaims, Publishers};
use serde::Deserialize;
use serde_json::Value;

use crate::storage::Storage;

/// Leeway on `exp`, `nbf` and `iat`, in seconds (SPEC §16).
pub const LEEWAY_S: i64 = 60;
/// A bearer longer than this is never taken for an ID token (GitHub's are about 1.2 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest accepted `jti` and `kid`.
const MAX_ID_BYTES: usize = 256;

/// A bearer that looks like an ID token of a configured issuer (nothing verified yet).
pub struct Candidate<'a> {
    token: &'a str,
    pub issuer: String,
}

/// A token that passed [`Oidc::verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: IdClaims,
    /// Its single-use record ([`replay::record_key`]).
    pub record: String,
    /// When it stops verifying (`exp` plus the leeway), unix seconds.
    pub until_s: i64,
}

/// Why a token was refused: logged, never sent (the client sees 401 `INVALID_TOKEN`). No
/// variant carries the token or a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("algorithm {0:?} is not accepted (RS256 or ES256)")]
    Algorithm(Algorithm),
    #[error("no kid in the header")]
    NoKid,
    #[error("{0} too long")]
    TooLong(&'static str),
    #[error("{0}")]
    Key(#[from] jwks::KeyError),
    #[error("the key with this kid is not for the token's algorithm")]
    KeyMismatch,
    /// What `jsonwebtoken` refused ([`Jwt`]).
    #[error("{0}")]
    Jwt(Jwt),
    #[error("no {0} claim")]
    Missing(&'static str),
    #[error("issued in the future (iat)")]
    IssuedInFuture,
    #[error("already used (jti seen before)")]
    Replayed,
}

/// `jsonwebtoken`'s refusals, in words that never quote the token or a claim value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Jwt {
    #[error("bad signature")]
    Signature,
    #[error("expired (exp)")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("audience (aud) is not OIDC_AUDIENCE")]
    Audience,
    #[error("issuer (iss) mismatch")]
    Issuer,
    #[error("a required claim (exp, iss or aud) is missing")]
    MissingClaim,
    #[error("algorithm does not fit the key")]
    Algorithm,
    #[error("the issuer's key is unusable")]
    UnusableKey,
    #[error("malformed token")]
    Malformed,
    #[error("verification failed")]
    Other,
}

impl From<jsonwebtoken::errors::Error> for Refusal {
    fn from(e: jsonwebtoken::errors::Error) -> Refusal {
        use jsonwebtoken::errors::ErrorKind as K;
        Refusal::Jwt(match e.kind() {
            K::InvalidSignature => Jwt::Signature,
            K::ExpiredSignature => Jwt::Expired,
            K::ImmatureSignature => Jwt::NotYetValid,
            K::InvalidAudience => Jwt::Audience,
            K::InvalidIssuer => Jwt::Issuer,
            K::MissingRequiredClaim(_) => Jwt::MissingClaim,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => Jwt::Algorithm,
            K::InvalidKeyFormat | K::InvalidRsaKey(_) | K::InvalidEcdsaKey => Jwt::UnusableKey,
            K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken | K::InvalidClaimFormat(_) => {
                Jwt::Malformed
            }
            _ => Jwt::Other,
        })
    }
}

/// Only `iss`, read before anything is verified.
#[derive(Deserialize)]
struct Unverified {
    iss: Option<Value>,
}

/// The claims read after verification (GitHub Actions' names). Values are taken as JSON and
/// turned to text leniently (a number id is its decimal form).
#[derive(Deserialize)]
struct Claims {
    iss: String,
    jti: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
    repository: Option<Value>,
    repository_owner_id: Option<Value>,
    workflow_ref: Option<Value>,
    environment: Option<Value>,
    run_id: Option<Value>,
    sha: Option<Value>,
}

fn text(v: &Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The trusted-publishing verifier of a server.
pub struct Oidc {
    audience: String,
    keys: jwks::KeyCache,
    pub replays: replay::Replays,
}

impl Oidc {
    pub fn new(
        audience: String,
        allow_insecure_issuers: bool,
        storage: Arc<dyn Storage>,
    ) -> Result<Oidc, String> {
        Ok(Oidc {
            audience,
            keys: jwks::KeyCache::new(allow_insecure_issuers)?,
            replays: replay::Replays::new(storage),
        })
    }

    /// `bearer` if it is a JWT (three dot-separated parts, a JSON header) whose unverified
    /// `iss` is an issuer named in `publishers`.
    pub fn candidate<'a>(&self, bearer: &'a str, publishers: &Publishers) -> Option<Candidate<'a>> {
        if bearer.len() > MAX_TOKEN_BYTES || bearer.bytes().filter(|b| *b == b'.').count() != 2 {
            return None;
        }
        jsonwebtoken::decode_header(bearer).ok()?;
        let data = jsonwebtoken::dangerous::insecure_decode::<Unverified>(bearer).ok()?;
        let Some(Value::String(iss)) = data.claims.iss else {
            return None;
        };
        publishers.is_issuer(&iss).then_some(Candidate {
            token: bearer,
            issuer: iss,
        })
    }

    /// Verify a candidate (see the module docs). `now_s`: unix seconds.
    pub async fn verify(&self, c: &Candidate<'_>, now_s: i64) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(c.token)?;
        let alg = header.alg;
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Refusal::Algorithm(alg));
        }
        let kid = header.kid.ok_or(Refusal::NoKid)?;
        if kid.len() > MAX_ID_BYTES {
            return Err(Refusal::TooLong("kid"));
        }
        let jwk = self.keys.key(&c.issuer, &kid).await?;
        let key = decoding_key(&jwk, alg)?;
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_S as u64;
        v.validate_nbf = true;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&c.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(c.token, &key, &v)?;
        let claims = data.claims;
        let number = |v: &Option<Value>| v.as_ref().and_then(Value::as_f64);
        let iat = number(&claims.iat).ok_or(Refusal::Missing("iat"))?;
        if iat > (now_s + LEEWAY_S) as f64 {
            return Err(Refusal::IssuedInFuture);
        }
        let exp = number(&claims.exp).ok_or(Refusal::Missing("exp"))?;
        let jti = text(&claims.jti).ok_or(Refusal::Missing("jti"))?;
        if jti.len() > MAX_ID_BYTES {
            return Err(Refusal::TooLong("jti"));
        }
        let until_s = (exp as i64).saturating_add(LEEWAY_S);
        let record = replay::record_key(&claims.iss, &jti, until_s);
        match self.replays.used(&record).await {
            Ok(false) => {}
            Ok(true) => return Err(Refusal::Replayed),
            // The create-only record decides later; storage trouble shows there.
            Err(e) => tracing::warn!(error = %e, "cannot look up an ID-token record"),
        }
        Ok(Verified {
            claims: IdClaims {
                issuer: claims.iss,
                repository: text(&claims.repository),
                repository_owner_id: text(&claims.repository_owner_id),
                workflow_ref: text(&claims.workflow_ref),
                environment: text(&claims.environment),
                run_id: text(&claims.run_id),
                sha: text(&claims.sha),
            },
            record,
            until_s,
        })
    }
}

/// The verification key of `jwk` for `alg`: RSA for RS256, P-256 for ES256, and the key's own
/// `alg`, when it names one, must be `alg`.
fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, Refusal> {
    let fits = matches!(
        (&jwk.algorithm, alg),
        (AlgorithmParameters::RSA(_), Algorithm::RS256)
            | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
    );
    let named = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !fits || !named {
        return Err(Refusal::KeyMismatch);
    }
    Ok(DecodingKey::from_jwk(jwk)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use rack_core::publishers::ParseOptions;

    /// A JWT with this `iss` (HMAC-signed: candidates are picked before any verification).
    fn jwt(iss: Value) -> String {
        let claims = serde_json::json!({"iss": iss, "aud": "rack-registry"});
        let key = jsonwebtoken::EncodingKey::from_secret(b"k");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn only_jwts_of_configured_issuers_are_candidates() {
        let oidc = Oidc::new("rack-registry".into(), false, Arc::new(MemoryStorage::default())).unwrap();
        let publishers = Publishers::parse(
            r#"{"@a": [{"issuer": "https://issuer.example", "repository": "o/r"}]}"#,
            ParseOptions::default(),
        )
        .unwrap();
        let ok = jwt(serde_json::json!("https://issuer.example"));
        assert_eq!(
            oidc.candidate(&ok, &publishers).map(|c| c.issuer),
            Some("https://issuer.example".to_owned())
        );
        for other in [
            jwt(serde_json::json!("https://issuer.example/")),
            jwt(serde_json::json!("https://elsewhere.example")),
            jwt(serde_json::json!(7)),
            "company-publish-token".to_owned(),
            "a.b.c".to_owned(),
            format!("{ok}.extra"),
            format!("{}{}", ok, "x".repeat(MAX_TOKEN_BYTES)),
        ] {
            assert!(oidc.candidate(&other, &publishers).is_none(), "{other:.40}");
        }
        assert!(oidc.candidate(&ok, &Publishers::empty()).is_none());
    }
}
