//! `auth.json` and every access decision (SPEC §6, §14).
//!
//! Parsing fails closed: a namespace whose configuration is doubtful is *rejected* (it behaves as
//! undeclared, so nobody reads it) while its siblings keep working; only a file that is not a
//! JSON object is refused as a whole.
//!
//! Secrets are never compared as strings: every token (plain `token` entries, `tokenSha256`
//! entries and the admin token) is reduced to its SHA-256 digest once, and a presented token is
//! hashed once per request and compared against every candidate digest in constant time
//! (`subtle`), so neither the position of a mismatch nor the token length leaks through timing.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::names::is_namespace;

pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Parse a hex SHA-256 (case-insensitive).
pub fn parse_digest(hex_str: &str) -> Option<TokenDigest> {
    let hex_str = hex_str.trim();
    if hex_str.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

/// A presented token, hashed once.
#[derive(Clone)]
pub struct Credential {
    digest: TokenDigest,
}

impl Credential {
    pub fn new(token: &str) -> Credential {
        Credential {
            digest: digest(token),
        }
    }

    /// A credential known only by its digest (a web session holds the digest, never the token).
    pub fn from_digest(digest: TokenDigest) -> Credential {
        Credential { digest }
    }

    fn matches(&self, other: &TokenDigest) -> bool {
        self.digest.ct_eq(other).into()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// The token of a request (SPEC §6, §14): `Authorization` counts only if it matches
/// `^bearer\s+(.+)$` case-insensitively; otherwise (or if blank) `X-Registry-Token` is tried.
/// Values are trimmed; blank values count as absent.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    x_registry_token: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|h| {
        let scheme = h.get(..6)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let rest = &h[6..];
        // `\s+` then at least one character.
        if !rest.starts_with(|c: char| c.is_whitespace()) {
            return None;
        }
        Some(rest.trim())
    });
    bearer
        .filter(|t| !t.is_empty())
        .or_else(|| x_registry_token.map(str::trim).filter(|t| !t.is_empty()))
}

/// One valid entry of a namespace. (`Debug` shows no digest.)
#[derive(Clone)]
pub struct TokenEntry {
    pub digest: TokenDigest,
    pub publish: bool,
    /// Unix milliseconds; `None` never expires.
    pub expires_at_ms: Option<i64>,
    pub mark: Option<String>,
    /// Whether the entry gave `tokenSha256` (no plaintext in the file).
    pub hashed: bool,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("publish", &self.publish)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("mark", &self.mark)
            .field("hashed", &self.hashed)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|exp| now_ms >= exp)
    }
}

/// A declared namespace: no entries means anonymous.
#[derive(Debug, Clone, Default)]
pub struct NamespacePolicy {
    pub entries: Vec<TokenEntry>,
}

impl NamespacePolicy {
    pub fn is_anonymous(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry matching `cred`, preferring an unexpired one. Every entry is compared, so the
    /// time taken does not depend on which one matches.
    fn find(&self, cred: &Credential, now_ms: i64) -> Match<'_> {
        let mut live = None;
        let mut expired = None;
        for e in &self.entries {
            if cred.matches(&e.digest) {
                if e.is_expired(now_ms) {
                    expired.get_or_insert(e);
                } else {
                    live.get_or_insert(e);
                }
            }
        }
        match (live, expired) {
            (Some(e), _) => Match::Live(e),
            (None, Some(_)) => Match::Expired,
            (None, None) => Match::None,
        }
    }
}

enum Match<'a> {
    Live(&'a TokenEntry),
    Expired,
    None,
}

/// A namespace that was declared but rejected, and why (for logs and `auth check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub namespace: String,
    pub reason: String,
}

/// A file that cannot be a policy at all: the server refuses to start on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("auth config is not valid JSON: {0}")]
    NotJson(String),
    #[error("auth config must be a JSON object keyed by namespace, found {0}")]
    NotObject(&'static str),
}

/// The parsed `auth.json`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    namespaces: BTreeMap<String, NamespacePolicy>,
    rejected: Vec<Rejection>,
    skipped: Vec<Rejection>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parse an `expiresAt` value: `Ok(None)` never expires; `Err` rejects the namespace.
pub fn parse_expires_at(v: Option<&Value>) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_timestamp_ms(s.trim())
            .map(Some)
            .ok_or_else(|| format!("expiresAt {s:?} is not an ISO 8601 timestamp or date")),
        Some(other) => Err(format!("expiresAt must be a string, found {}", json_type(other))),
    }
}

/// RFC 3339 (`2027-01-01T00:00:00Z`, with an offset, with fractions) or a plain date
/// (`2027-01-01`, midnight UTC), as unix milliseconds.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    use time::{Date, OffsetDateTime};
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()
        .or_else(|| {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            Date::parse(s, &fmt).ok().map(|d| d.midnight().assume_utc())
        })?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parse one entry: `Ok(Err(reason))` skips it (not an object, no usable token), `Err` rejects
/// the namespace (a bad `expiresAt`).
fn parse_entry(v: &Value) -> Result<Result<TokenEntry, String>, String> {
    let Value::Object(obj) = v else {
        return Ok(Err(format!("entry is {}, not an object", json_type(v))));
    };
    let expires_at_ms = parse_expires_at(obj.get("expiresAt"))?;
    let plain = obj
        .get("token")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let (digest, hashed) = match plain {
        Some(t) => (digest(t), false),
        None => match obj
            .get("tokenSha256")
            .and_then(Value::as_str)
            .and_then(parse_digest)
        {
            Some(d) => (d, true),
            None => {
                return Ok(Err(
                    "no non-empty \"token\" string and no 64-hex \"tokenSha256\"".to_owned()
                ))
            }
        },
    };
    Ok(Ok(TokenEntry {
        digest,
        // Exactly `true`: "yes", 1 or "true" grant nothing.
        publish: obj.get("publish") == Some(&Value::Bool(true)),
        expires_at_ms,
        mark: obj.get("mark").and_then(Value::as_str).map(str::to_owned),
        hashed,
    }))
}

fn parse_namespace(ns: &str, v: &Value, skipped: &mut Vec<Rejection>) -> Result<NamespacePolicy, String> {
    if !is_namespace(ns) {
        return Err("namespace does not match ^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$".into());
    }
    let Value::Array(items) = v else {
        return Err(format!(
            "value must be an array of token entries, found {}",
            json_type(v)
        ));
    };
    let mut entries = Vec::new();
    let mut skips = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_entry(item)? {
            Ok(e) => entries.push(e),
            Err(reason) => skips.push(Rejection {
                namespace: ns.to_owned(),
                reason: format!("entry #{}: {reason}", i + 1),
            }),
        }
    }
    if !items.is_empty() && entries.is_empty() {
        return Err(
            "no valid token entry (each needs a non-empty \"token\" or a 64-hex \"tokenSha256\")".into(),
        );
    }
    skipped.extend(skips);
    Ok(NamespacePolicy { entries })
}

impl Policy {
    /// The policy of a missing file: every namespace undeclared.
    pub fn empty() -> Policy {
        Policy::default()
    }

    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let v: Value = serde_json::from_str(text).map_err(|e| PolicyError::NotJson(e.to_string()))?;
        let Value::Object(map) = v else {
            return Err(PolicyError::NotObject(json_type(&v)));
        };
        let mut policy = Policy::default();
        for (ns, value) in &map {
            match parse_namespace(ns, value, &mut policy.skipped) {
                Ok(p) => {
                    policy.namespaces.insert(ns.clone(), p);
                }
                Err(reason) => policy.rejected.push(Rejection {
                    namespace: ns.clone(),
                    reason,
                }),
            }
        }
        Ok(policy)
    }

    /// Namespaces refused by fail-closed parsing, with the reason.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// Entries skipped inside accepted namespaces, with the reason (`entry #n: ...`).
    pub fn skipped(&self) -> &[Rejection] {
        &self.skipped
    }

    pub fn namespace(&self, ns: &str) -> Option<&NamespacePolicy> {
        self.namespaces.get(ns)
    }

    /// Whether reading `ns` needs a token: every namespace but one declared anonymous (`[]`).
    /// An undeclared or rejected namespace counts as needing one (nobody reads it anyway), so
    /// the answer fails closed. What a shared cache may keep depends on it (SPEC §4).
    pub fn needs_token(&self, ns: &str) -> bool {
        !self.namespace(ns).is_some_and(NamespacePolicy::is_anonymous)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &NamespacePolicy)> {
        self.namespaces.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// The admin token(s): from `ADMIN_TOKEN` and/or `ADMIN_TOKEN_SHA256`; either is accepted.
#[derive(Clone, Default)]
pub struct Admin {
    digests: Vec<TokenDigest>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admin({} token(s), <redacted>)", self.digests.len())
    }
}

impl Admin {
    pub fn new(plain: Option<&str>, sha256: Option<TokenDigest>) -> Admin {
        let mut digests = Vec::new();
        if let Some(t) = plain.map(str::trim).filter(|t| !t.is_empty()) {
            digests.push(digest(t));
        }
        digests.extend(sha256);
        Admin { digests }
    }

    pub fn is_configured(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn matches(&self, cred: Option<&Credential>) -> bool {
        let Some(cred) = cred else { return false };
        // Fold without short-circuit: constant time over the candidates.
        self.digests.iter().fold(false, |acc, d| acc | cred.matches(d))
    }
}

/// Everything an access decision needs.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    pub admin: &'a Admin,
    pub credential: Option<&'a Credential>,
    pub now_ms: i64,
}

/// Who was allowed (for audit logs): never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Admin,
    Token {
        mark: Option<String>,
    },
    /// A CI job with a verified ID token matching a trusted publisher (SPEC §16).
    Publisher(Box<crate::publishers::PublisherIdentity>),
}

impl Ctx<'_> {
    /// Read access to a namespace (SPEC §6).
    pub fn read(&self, ns: &str) -> Result<Principal, ApiError> {
        let Some(p) = self.policy.namespace(ns) else {
            return Err(ApiError::forbidden_namespace());
        };
        if p.is_anonymous() {
            return Ok(Principal::Anonymous);
        }
        let Some(cred) = self.credential else {
            return Err(ApiError::unauthorized_read());
        };
        if self.admin.matches(Some(cred)) {
            return Ok(Principal::Admin);
        }
        match p.find(cred, self.now_ms) {
            Match::Live(e) => Ok(Principal::Token { mark: e.mark.clone() }),
            Match::Expired => Err(ApiError::token_expired()),
            Match::None => Err(ApiError::invalid_token()),
        }
    }

    /// Whether `/namespaces` shows `ns` to this caller: a wrong token only hides.
    pub fn lists(&self, ns: &str) -> bool {
        if self.admin.matches(self.credential) {
            return true;
        }
        self.policy.namespace(ns).is_some() && self.read(ns).is_ok()
    }

    /// Whether [`Ctx::publish`] could succeed for *some* namespace: the admin token, or a live
    /// `publish: true` entry anywhere. When it is false, every upload with this credential ends
    /// in an error at checks 6 to 9 whatever the package holds, so the server can find which one
    /// without writing a byte (see the upload pipeline).
    pub fn may_publish_somewhere(&self) -> bool {
        if self.admin.matches(self.credential) {
            return true;
        }
        let Some(cred) = self.credential else {
            return false;
        };
        // Every namespace is looked at (no early exit), like `find`.
        self.policy.namespaces.values().fold(false, |acc, p| {
            acc | matches!(p.find(cred, self.now_ms), Match::Live(e) if e.publish)
        })
    }

    /// Whether the credential is the admin token or a live token of some declared namespace
    /// (what a web sign-in requires, and what keeps a web session alive).
    pub fn opens_any(&self) -> bool {
        if self.admin.matches(self.credential) {
            return true;
        }
        let Some(cred) = self.credential else {
            return false;
        };
        self.policy.namespaces.values().fold(false, |acc, p| {
            acc | matches!(p.find(cred, self.now_ms), Match::Live(_))
        })
    }

    /// Publish access (SPEC §5.1 checks 8 and 9; the token's presence is check 0).
    pub fn publish(&self, ns: &str) -> Result<Principal, ApiError> {
        let Some(p) = self.policy.namespace(ns) else {
            return Err(ApiError::namespace_not_allowed(ns));
        };
        if self.admin.matches(self.credential) {
            return Ok(Principal::Admin);
        }
        if p.is_anonymous() {
            return Err(ApiError::anonymous_upload_forbidden());
        }
        let Some(cred) = self.credential else {
            return Err(ApiError::unauthorized_upload());
        };
        match p.find(cred, self.now_ms) {
            Match::Live(e) if e.publish => Ok(Principal::Token { mark: e.mark.clone() }),
            Match::Live(_) => Err(ApiError::insufficient_permissions(ns)),
            Match::Expired => Err(ApiError::token_expired()),
            Match::None => Err(ApiError::invalid_token()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const NOW: i64 = 1_800_000_000_000; // 2027-01-15

    fn policy() -> Policy {
        Policy::parse(
            r#"{
              "@rack": [],
              "@company": [
                {"token": "  read  ", "mark": "CI"},
                {"token": "pub", "publish": true},
                {"token": "old", "expiresAt": "2020-01-01T00:00:00Z"},
                {"token": "later", "expiresAt": "2099-01-01"},
                {"token": "offset", "expiresAt": "2099-01-01T00:00:00+02:00", "publish": "true"},
                {"tokenSha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", "publish": true}
              ],
              "@other": [{"token": "other"}],
              "bad": [],
              "@bad-value": {"token": "x"},
              "@all-junk": [1, "x", {"token": ""}, {"token": 5}, {"mark": "m"}],
              "@bad-exp": [{"token": "t", "expiresAt": "soon"}],
              "@bad-exp-type": [{"token": "t", "expiresAt": 20270101}]
            }"#,
        )
        .unwrap()
    }

    fn ctx<'a>(p: &'a Policy, admin: &'a Admin, cred: Option<&'a Credential>) -> Ctx<'a> {
        Ctx {
            policy: p,
            admin,
            credential: cred,
            now_ms: NOW,
        }
    }

    fn read(token: Option<&str>, ns: &str) -> Result<Principal, ErrorKind> {
        let p = policy();
        let admin = Admin::new(Some("admin"), None);
        let cred = token.map(Credential::new);
        ctx(&p, &admin, cred.as_ref()).read(ns).map_err(|e| e.kind)
    }

    fn publish(token: Option<&str>, ns: &str) -> Result<Principal, ErrorKind> {
        let p = policy();
        let admin = Admin::new(Some("admin"), None);
        let cred = token.map(Credential::new);
        ctx(&p, &admin, cred.as_ref()).publish(ns).map_err(|e| e.kind)
    }

    #[test]
    fn opens_any_needs_a_live_token_or_the_admin() {
        let p = policy();
        let admin = Admin::new(Some("admin"), None);
        let opens = |t: Option<&str>| {
            let cred = t.map(Credential::new);
            ctx(&p, &admin, cred.as_ref()).opens_any()
        };
        assert!(opens(Some("read")));
        assert!(opens(Some("admin")));
        assert!(!opens(Some("old")), "expired");
        assert!(!opens(Some("nobody")));
        assert!(!opens(None));
        // By digest, as a web session holds it.
        let cred = Credential::from_digest(digest("pub"));
        assert!(ctx(&p, &admin, Some(&cred)).opens_any());
    }

    #[test]
    fn fail_closed_parsing() {
        let p = policy();
        let mut rejected: Vec<&str> = p.rejected().iter().map(|r| r.namespace.as_str()).collect();
        rejected.sort();
        assert_eq!(
            rejected,
            ["@all-junk", "@bad-exp", "@bad-exp-type", "@bad-value", "bad"]
        );
        assert!(p.namespace("@rack").unwrap().is_anonymous());
        assert_eq!(p.namespace("@company").unwrap().entries.len(), 6);
        for bad in ["[]", "\"x\"", "null", "{", "", "1"] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Policy::parse("{}").unwrap().namespace("@rack").is_none());
        let skipped: Vec<_> = p.skipped().iter().map(|r| r.namespace.as_str()).collect();
        assert!(skipped.is_empty(), "{skipped:?}");
        let p = Policy::parse(r#"{"@a": [{"token": "t"}, 5, {"mark": "m"}]}"#).unwrap();
        let reasons: Vec<_> = p.skipped().iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].starts_with("entry #2: "), "{reasons:?}");
        assert!(reasons[1].starts_with("entry #3: "), "{reasons:?}");
    }

    #[test]
    fn read_decisions() {
        use ErrorKind::*;
        assert_eq!(read(None, "@rack"), Ok(Principal::Anonymous));
        assert_eq!(read(Some("junk"), "@rack"), Ok(Principal::Anonymous));
        assert_eq!(read(None, "@company"), Err(Unauthorized));
        assert_eq!(
            read(Some("read"), "@company"),
            Ok(Principal::Token {
                mark: Some("CI".into())
            })
        );
        assert_eq!(read(Some("pub"), "@company"), Ok(Principal::Token { mark: None }));
        assert_eq!(read(Some("wrong"), "@company"), Err(InvalidToken));
        assert_eq!(read(Some("other"), "@company"), Err(InvalidToken));
        assert_eq!(read(Some("old"), "@company"), Err(TokenExpired));
        assert!(read(Some("later"), "@company").is_ok());
        assert!(read(Some("offset"), "@company").is_ok());
        assert!(read(Some("password"), "@company").is_ok(), "tokenSha256 entry");
        assert_eq!(read(Some("admin"), "@company"), Ok(Principal::Admin));
        assert_eq!(read(Some("admin"), "@secret"), Err(ForbiddenNamespace));
        assert_eq!(read(None, "@secret"), Err(ForbiddenNamespace));
        assert_eq!(read(Some("t"), "@bad-exp"), Err(ForbiddenNamespace));
        assert_eq!(read(Some("admin"), "@all-junk"), Err(ForbiddenNamespace));
    }

    #[test]
    fn publish_decisions() {
        use ErrorKind::*;
        assert_eq!(publish(Some("admin"), "@rack"), Ok(Principal::Admin));
        assert_eq!(publish(Some("admin"), "@company"), Ok(Principal::Admin));
        assert_eq!(publish(Some("admin"), "@secret"), Err(NamespaceNotAllowed));
        assert_eq!(publish(Some("pub"), "@rack"), Err(AnonymousUploadForbidden));
        assert_eq!(
            publish(Some("pub"), "@company"),
            Ok(Principal::Token { mark: None })
        );
        assert_eq!(publish(Some("read"), "@company"), Err(InsufficientPermissions));
        assert_eq!(
            publish(Some("offset"), "@company"),
            Err(InsufficientPermissions),
            "publish must be exactly true"
        );
        assert_eq!(publish(Some("old"), "@company"), Err(TokenExpired));
        assert_eq!(publish(Some("nope"), "@company"), Err(InvalidToken));
        assert_eq!(publish(None, "@company"), Err(Unauthorized));
    }

    #[test]
    fn may_publish_somewhere_agrees_with_publish() {
        let p = policy();
        let admin = Admin::new(Some("admin"), None);
        let namespaces: Vec<&str> = p.namespaces().map(|(ns, _)| ns).chain(["@secret"]).collect();
        let tokens = [
            None,
            Some("admin"),
            Some("pub"),
            Some("password"),
            Some("read"),
            Some("offset"),
            Some("old"),
            Some("later"),
            Some("other"),
            Some("nope"),
        ];
        for token in tokens {
            let cred = token.map(Credential::new);
            let c = ctx(&p, &admin, cred.as_ref());
            let any = namespaces.iter().any(|ns| c.publish(ns).is_ok());
            assert_eq!(c.may_publish_somewhere(), any, "{token:?}");
        }
        let pub_cred = Credential::new("pub");
        assert!(ctx(&p, &admin, Some(&pub_cred)).may_publish_somewhere());
        let read_cred = Credential::new("read");
        assert!(!ctx(&p, &admin, Some(&read_cred)).may_publish_somewhere());
        // An expiring publish entry stops counting once expired.
        let p2 =
            Policy::parse(r#"{"@a": [{"token": "t", "publish": true, "expiresAt": "2020-01-01"}]}"#).unwrap();
        let t = Credential::new("t");
        assert!(!ctx(&p2, &admin, Some(&t)).may_publish_somewhere());
    }

    #[test]
    fn listing_hides_but_never_errors() {
        let p = policy();
        let admin = Admin::new(Some("admin"), None);
        let none = ctx(&p, &admin, None);
        assert!(none.lists("@rack"));
        assert!(!none.lists("@company"));
        assert!(!none.lists("@secret"));
        let c = Credential::new("read");
        assert!(ctx(&p, &admin, Some(&c)).lists("@company"));
        let w = Credential::new("wrong");
        assert!(!ctx(&p, &admin, Some(&w)).lists("@company"));
        assert!(ctx(&p, &admin, Some(&w)).lists("@rack"));
        let a = Credential::new("admin");
        assert!(ctx(&p, &admin, Some(&a)).lists("@secret"));
    }

    #[test]
    fn only_anonymous_namespaces_need_no_token() {
        let p = policy();
        assert!(!p.needs_token("@rack"));
        assert!(p.needs_token("@company"));
        assert!(p.needs_token("@other"));
        // Undeclared and rejected namespaces fail closed.
        for ns in ["@secret", "@bad-value", "@all-junk", "@bad-exp", "@bad-exp-type"] {
            assert!(p.needs_token(ns), "{ns}");
        }
        assert!(Policy::empty().needs_token("@rack"));
    }

    #[test]
    fn admin_by_hash() {
        let admin = Admin::new(
            None,
            parse_digest("5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8"),
        );
        assert!(admin.matches(Some(&Credential::new("password"))));
        assert!(!admin.matches(Some(&Credential::new("Password"))));
        assert!(!Admin::new(Some("   "), None).is_configured());
    }

    #[test]
    fn token_extraction() {
        assert_eq!(extract_token(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(extract_token(Some("bearer   abc  "), None), Some("abc"));
        assert_eq!(extract_token(Some("BEARER\tabc"), Some("x")), Some("abc"));
        assert_eq!(extract_token(Some("Basic abc"), Some(" x ")), Some("x"));
        assert_eq!(extract_token(Some("Bearerabc"), Some("x")), Some("x"));
        assert_eq!(extract_token(Some("Bearer    "), Some("x")), Some("x"));
        assert_eq!(extract_token(Some("Bearer"), None), None);
        assert_eq!(extract_token(None, Some("   ")), None);
        assert_eq!(extract_token(None, None), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_timestamp_ms("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_timestamp_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_timestamp_ms("tomorrow"), None);
        assert_eq!(parse_timestamp_ms("2027-13-01"), None);
        assert_eq!(parse_expires_at(Some(&Value::String(String::new()))), Ok(None));
        assert!(parse_expires_at(Some(&Value::Bool(true))).is_err());
    }
}
