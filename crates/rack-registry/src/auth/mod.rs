//! Authentication on the server side: the token a request presents ([`credential`]) and the
//! policy file it is judged against ([`file`]: `auth.json` loaded and live-reloaded). The
//! decisions themselves are pure and live in `rack_core::auth`, shared with the Worker.
//!
//! Trusted publishing (SPEC §16): [`publishers`] (`publishers.json`, loaded and live-reloaded
//! by the same machinery) and [`oidc`] (ID-token verification, issuer keys, single use); the
//! decision is `rack_core::publishers`.

pub mod file;
pub mod oidc;
pub mod publishers;

use http::{header, HeaderMap, HeaderName};
use rack_core::auth::{extract_token, Credential};

/// The token header of SPEC §6, beside `Authorization: Bearer`.
pub const X_REGISTRY_TOKEN: HeaderName = HeaderName::from_static("x-registry-token");

/// The presented token, if any (SPEC §6): hashed at once, never kept in clear.
pub fn credential(headers: &HeaderMap) -> Option<Credential> {
    bearer(headers).map(Credential::new)
}

/// The presented token in clear (for the upload's ID-token check only; never logged or kept).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    extract_token(get(header::AUTHORIZATION), get(X_REGISTRY_TOKEN))
}
