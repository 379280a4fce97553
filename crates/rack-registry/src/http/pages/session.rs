//! Web sessions and the login form's CSRF token (SPEC §15).
//!
//! The `rack_ui` cookie never holds the token, nor anything computed from it without the
//! server's key: it is `v2.<sid>.<issued>.<expires>.<wrapped>.<sig>` where `sid` is a random
//! session id, `wrapped` the token's SHA-256 digest XORed with `HMAC(key, "wrap" + sid)` (a
//! one-time pad only the key can produce, so a leaked cookie allows no offline guessing of the
//! token), and `sig` an HMAC-SHA256 over the rest. The key is shared by every replica
//! (`UI_SESSION_KEY`, or `.rack/ui/session-key` in the storage, created create-only by the first
//! replica that needs it: see [`super::Ui::keys`]), so any replica opens any replica's cookie. The digest is
//! matched against the policy in force on every request, so a token removed from `auth.json`
//! ends its sessions at once; signing out records the session id in the storage
//! ([`super::revoke`]), which ends it on every replica.
//! The cookie is read under `/ui` only; the API never looks at cookies.
//!
//! CSRF: the login form carries `HMAC(key, "csrf:" + nonce)` where the nonce lives in a
//! `SameSite=Strict` cookie; a forged cross-site POST can know neither. Sign-out is a POST
//! whose field is `HMAC(key, "logout:" + session cookie)`: another site can neither read the
//! `HttpOnly` cookie nor make the browser send it, so it cannot sign a viewer out.

use hmac::{Hmac, Mac};
use http::{header, HeaderMap};
use rack_core::auth::{Credential, TokenDigest};
use sha2::Sha256;

pub const SESSION_COOKIE: &str = "rack_ui";
pub const CSRF_COOKIE: &str = "rack_csrf";
/// Sessions last 12 hours (SPEC §15).
pub const SESSION_SECS: i64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// The signing key (shared by every replica, see the module comment).
pub struct Keys {
    key: [u8; 32],
}

impl Default for Keys {
    /// A random key: sessions of this process only (unit tests).
    fn default() -> Self {
        Keys { key: rand::random() }
    }
}

/// An opened session cookie.
pub struct Session {
    /// The random session id (32 hex digits): what signing out revokes.
    pub id: String,
    /// Unix seconds.
    pub expires_s: i64,
    pub credential: Credential,
}

impl Keys {
    pub fn new(key: [u8; 32]) -> Keys {
        Keys { key }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
            // A separator, so that ("ab","c") and ("a","bc") sign differently.
            mac.update(b"\0");
        }
        mac
    }

    /// The digest XORed with the pad of session `sid` (the same call unwraps).
    fn wrap(&self, sid: &str, digest: &TokenDigest) -> TokenDigest {
        let pad: [u8; 32] = self
            .mac(&[b"wrap", sid.as_bytes()])
            .finalize()
            .into_bytes()
            .into();
        std::array::from_fn(|i| digest[i] ^ pad[i])
    }

    fn session_sig(&self, sid: &str, issued: &str, expires: &str, wrapped: &str) -> HmacSha256 {
        self.mac(&[
            b"session-v2",
            sid.as_bytes(),
            issued.as_bytes(),
            expires.as_bytes(),
            wrapped.as_bytes(),
        ])
    }

    /// The cookie value of a new session for `digest`, issued at `issued_s` and ending at
    /// `expires_s` (unix seconds), with a fresh random id.
    pub fn session_value(&self, digest: &TokenDigest, issued_s: i64, expires_s: i64) -> String {
        let sid = nonce();
        let (i, e) = (issued_s.to_string(), expires_s.to_string());
        let w = hex::encode(self.wrap(&sid, digest));
        let sig = hex::encode(self.session_sig(&sid, &i, &e, &w).finalize().into_bytes());
        format!("v2.{sid}.{i}.{e}.{w}.{sig}")
    }

    /// The session of a well-signed, unexpired session value (revocation and the policy check
    /// are the caller's: [`super::revoke`], [`rack_core::auth::Ctx::opens_any`]).
    pub fn open_session(&self, value: &str, now_ms: i64) -> Option<Session> {
        let mut it = value.split('.');
        let (v, sid, i, e, w, sig) = (
            it.next()?,
            it.next()?,
            it.next()?,
            it.next()?,
            it.next()?,
            it.next()?,
        );
        if v != "v2" || it.next().is_some() {
            return None;
        }
        let sig = hex::decode(sig).ok()?;
        // `verify_slice` compares in constant time.
        self.session_sig(sid, i, e, w).verify_slice(&sig).ok()?;
        let expires_s: i64 = e.parse().ok()?;
        if now_ms / 1000 >= expires_s || sid.len() != 32 {
            return None;
        }
        let wrapped: TokenDigest = hex::decode(w).ok()?.try_into().ok()?;
        Some(Session {
            id: sid.to_owned(),
            expires_s,
            credential: Credential::from_digest(self.wrap(sid, &wrapped)),
        })
    }

    /// The form field that goes with the CSRF cookie's `nonce`.
    pub fn csrf_token(&self, nonce: &str) -> String {
        hex::encode(self.mac(&[b"csrf", nonce.as_bytes()]).finalize().into_bytes())
    }

    /// Whether `token` (from the form) matches `nonce` (from the cookie), in constant time.
    pub fn csrf_ok(&self, nonce: &str, token: &str) -> bool {
        let Ok(sig) = hex::decode(token) else {
            return false;
        };
        !nonce.is_empty() && self.mac(&[b"csrf", nonce.as_bytes()]).verify_slice(&sig).is_ok()
    }

    /// The sign-out form's field for the session cookie `session` (as sent by the browser).
    pub fn logout_token(&self, session: &str) -> [u8; 32] {
        self.mac(&[b"logout", session.as_bytes()])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `token` (hex, from the form) is the sign-out field of `session`, in constant time.
    pub fn logout_ok(&self, session: &str, token: &str) -> bool {
        let Ok(sig) = hex::decode(token) else {
            return false;
        };
        !session.is_empty()
            && self
                .mac(&[b"logout", session.as_bytes()])
                .verify_slice(&sig)
                .is_ok()
    }
}

/// A fresh random nonce (hex).
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value under `/ui`: `HttpOnly; SameSite=Strict`, `Secure` over HTTPS;
/// `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_values_are_signed_and_expire() {
        let keys = Keys::default();
        let d = rack_core::auth::digest("tok");
        let v = keys.session_value(&d, 10, 1_000);
        let s = keys.open_session(&v, 999_000).unwrap();
        assert!(rack_core::auth::Admin::new(None, Some(d)).matches(Some(&s.credential)));
        assert_eq!(s.expires_s, 1_000);
        assert!(keys.open_session(&v, 1_000_000).is_none(), "expired");
        // Another key, or a changed expiry or wrapped digest, fails the signature.
        assert!(Keys::default().open_session(&v, 0).is_none());
        let forged = v.replacen(".1000.", ".9999.", 1);
        assert!(keys.open_session(&forged, 0).is_none());
        let parts: Vec<&str> = v.split('.').collect();
        let other = hex::encode(rack_core::auth::digest("other"));
        let swapped = [parts[0], parts[1], parts[2], parts[3], &other, parts[5]].join(".");
        assert!(keys.open_session(&swapped, 0).is_none());
        // The same key (another replica) opens it.
        assert!(Keys::new(keys.key).open_session(&v, 0).is_some());
        // Every session has its own id, and neither the digest nor its hex is in the cookie.
        let v2 = keys.session_value(&d, 10, 1_000);
        assert_ne!(keys.open_session(&v2, 0).unwrap().id, s.id);
        assert!(!v.contains(&hex::encode(d)));
        assert!(!v.contains(&hex::encode(d)[..16]));
    }

    #[test]
    fn csrf_tokens_bind_to_the_nonce() {
        let keys = Keys::default();
        let t = keys.csrf_token("abc");
        assert!(keys.csrf_ok("abc", &t));
        assert!(!keys.csrf_ok("abd", &t));
        assert!(!keys.csrf_ok("", &keys.csrf_token("")));
        assert!(!keys.csrf_ok("abc", "zz"));
    }

    #[test]
    fn logout_tokens_bind_to_the_session_cookie() {
        let keys = Keys::default();
        let t = hex::encode(keys.logout_token("sess"));
        assert!(keys.logout_ok("sess", &t));
        assert!(!keys.logout_ok("sesS", &t));
        assert!(!Keys::default().logout_ok("sess", &t), "another key");
        // The login form's token for the same string is not a sign-out token.
        assert!(!keys.logout_ok("sess", &keys.csrf_token("sess")));
        assert!(!keys.logout_ok("", &hex::encode(keys.logout_token(""))));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "rack_ui_x=1; rack_ui=abc; other=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "rack_ui"), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
