//! Trusted publishing (SPEC §16): `publishers.json`, parsed fail-closed, and the pure decision of
//! whether a *verified* OpenID Connect ID token may publish to a namespace.
//!
//! `{"@ns": [{"issuer": "https://token.actions.githubusercontent.com", "repository":
//! "acme/templates", "repositoryOwnerId": "1234", "workflow": "publish.yml", "environment":
//! "release"}]}`: `issuer` and `repository` are required, the other fields narrow further.
//!
//! Verifying the token (signature, audience, times, single use) needs keys fetched from the
//! issuer and a clock, so it lives in the server (`rack_registry::auth::oidc`); what arrives
//! here is either [`IdToken::Refused`] or the claims of a token that passed, [`IdClaims`].
//!
//! Parsing fails closed, like `auth.json`: a namespace whose entries are doubtful is *rejected*
//! (no CI identity publishes to it) while its siblings keep working, and only a file that is not
//! a JSON object is refused whole. An entry with an unknown field rejects its namespace: a
//! misspelt narrowing (`"enviroment"`) must not silently widen who may publish.
//!
//! Matching ([`TrustedPublisher::matches`]):
//! - `iss` equal to `issuer`, byte for byte (OpenID Connect compares issuers exactly);
//! - `repository` equal, ASCII case-insensitively (GitHub names are case-insensitive);
//! - `repository_owner_id` equal, when the entry names one: the owner's *stable* id, so that a
//!   deleted account whose name is registered again by someone else (repository resurrection)
//!   does not inherit the right to publish;
//! - the workflow *file name* taken from `workflow_ref`
//!   (`owner/repo/.github/workflows/publish.yml@refs/heads/main` gives `publish.yml`), equal
//!   byte for byte, when the entry names one. `workflow_ref` names the top-level workflow of the
//!   run, in the repository itself; `job_workflow_ref` would name a reusable workflow, which
//!   any repository can call, so it is never read;
//! - `environment` equal, ASCII case-insensitively (GitHub environments are), when the entry
//!   names one: a token without an environment then never matches.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use crate::auth::{Policy, Principal, Rejection};
use crate::error::ApiError;
use crate::names::is_namespace;

/// The longest accepted issuer URL (bytes).
pub const MAX_ISSUER_LEN: usize = 2048;

/// One CI identity allowed to publish to a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPublisher {
    pub issuer: String,
    /// `owner/name`, compared ASCII case-insensitively.
    pub repository: String,
    pub repository_owner_id: Option<String>,
    /// A workflow file name (`publish.yml`).
    pub workflow: Option<String>,
    pub environment: Option<String>,
}

/// The claims of an ID token that verification let through (signature, audience, times, issuer
/// named in `publishers.json`). GitHub Actions names them so; absent claims are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdClaims {
    pub issuer: String,
    pub repository: Option<String>,
    pub repository_owner_id: Option<String>,
    pub workflow_ref: Option<String>,
    pub environment: Option<String>,
    /// For the audit trail only.
    pub run_id: Option<String>,
    /// For the audit trail only.
    pub sha: Option<String>,
}

/// What the server made of a bearer that is a JWT of a configured issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdToken {
    /// Unverifiable (signature, audience, expiry, unknown key...) or already used: 401
    /// `INVALID_TOKEN` at check 9. The reason was logged by whoever refused it.
    Refused,
    Verified(IdClaims),
}

/// Who published with an ID token, for the audit trail (never the token or its `jti`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherIdentity {
    pub issuer: String,
    pub repository: String,
    /// The token's `workflow_ref`, whole (file and git ref).
    pub workflow: Option<String>,
    pub run_id: Option<String>,
    pub sha: Option<String>,
}

/// The workflow file name of a `workflow_ref` claim, when it has the shape
/// `<repository>/.github/workflows/<file>@<ref>` for `repository` (compared ASCII
/// case-insensitively); `None` otherwise (a workflow of another repository never matches).
pub fn workflow_file<'a>(workflow_ref: &'a str, repository: &str) -> Option<&'a str> {
    let (path, _git_ref) = workflow_ref.split_once('@')?;
    let head = path.get(..repository.len())?;
    if !head.eq_ignore_ascii_case(repository) {
        return None;
    }
    let file = path[repository.len()..].strip_prefix("/.github/workflows/")?;
    (!file.is_empty() && !file.contains('/')).then_some(file)
}

impl TrustedPublisher {
    /// Whether a verified token's claims are this publisher's (see the module docs).
    pub fn matches(&self, c: &IdClaims) -> bool {
        let Some(repository) = c.repository.as_deref() else {
            return false;
        };
        self.issuer == c.issuer
            && repository.eq_ignore_ascii_case(&self.repository)
            && self
                .repository_owner_id
                .as_ref()
                .is_none_or(|id| c.repository_owner_id.as_deref() == Some(id.as_str()))
            && self.workflow.as_ref().is_none_or(|w| {
                c.workflow_ref
                    .as_deref()
                    .and_then(|r| workflow_file(r, repository))
                    == Some(w.as_str())
            })
            && self.environment.as_ref().is_none_or(|e| {
                c.environment
                    .as_deref()
                    .is_some_and(|ce| ce.eq_ignore_ascii_case(e))
            })
    }
}

/// A file that cannot be a publishers configuration at all: refused whole (at startup the
/// server does not start; a live reload keeps the last good one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishersError {
    #[error("publishers config is not valid JSON: {0}")]
    NotJson(String),
    #[error("publishers config must be a JSON object keyed by namespace, found {0}")]
    NotObject(&'static str),
}

/// Parsing options: `OIDC_ALLOW_INSECURE_ISSUERS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept `http://` issuers on a loopback host (tests).
    pub allow_insecure_issuers: bool,
}

/// The parsed `publishers.json`.
#[derive(Debug, Clone, Default)]
pub struct Publishers {
    namespaces: BTreeMap<String, Vec<TrustedPublisher>>,
    rejected: Vec<Rejection>,
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

/// Whether `host` (an authority without user info; a port allowed) is a loopback host.
fn is_loopback_host(authority: &str) -> bool {
    if let Some(rest) = authority.strip_prefix("[::1]") {
        return rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port);
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if !port.is_none_or(is_port) {
        return false;
    }
    host.eq_ignore_ascii_case("localhost") || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// An issuer must be an `https` URL (no user info, query or fragment); an `http` URL only on a
/// loopback host and with `allow_insecure` (`OIDC_ALLOW_INSECURE_ISSUERS=true`, for tests).
pub fn check_issuer(issuer: &str, allow_insecure: bool) -> Result<(), String> {
    if issuer.len() > MAX_ISSUER_LEN {
        return Err(format!("issuer is longer than {MAX_ISSUER_LEN} bytes"));
    }
    if issuer.chars().any(|c| c.is_whitespace() || c.is_control()) || issuer.contains(['?', '#']) {
        return Err(format!(
            "issuer {issuer:?} is not a plain URL (no spaces, query or fragment)"
        ));
    }
    let lower = issuer.to_ascii_lowercase();
    let (secure, rest) = if lower.starts_with("https://") {
        (true, &issuer["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &issuer["http://".len()..])
    } else {
        return Err(format!("issuer {issuer:?} is not an https URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("issuer {issuer:?} has no host (or has user info)"));
    }
    if secure {
        return Ok(());
    }
    if !is_loopback_host(authority) {
        return Err(format!(
            "issuer {issuer:?} is not an https URL (http is accepted only for loopback hosts, with OIDC_ALLOW_INSECURE_ISSUERS=true)"
        ));
    }
    if !allow_insecure {
        return Err(format!(
            "issuer {issuer:?} is not an https URL (a loopback http issuer needs OIDC_ALLOW_INSECURE_ISSUERS=true)"
        ));
    }
    Ok(())
}

const FIELDS: [&str; 6] = [
    "issuer",
    "repository",
    "repositoryOwnerId",
    "workflow",
    "environment",
    "mark",
];

/// An optional non-empty string field (`Err` when present but not one).
fn optional_string(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Some(Value::String(_)) => Err(format!("\"{key}\" is empty")),
        Some(other) => Err(format!("\"{key}\" must be a string, found {}", json_type(other))),
    }
}

fn parse_entry(v: &Value, opts: ParseOptions) -> Result<TrustedPublisher, String> {
    let Value::Object(obj) = v else {
        return Err(format!("entry is {}, not an object", json_type(v)));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field \"{unknown}\" (accepted: issuer, repository, repositoryOwnerId, workflow, environment, mark)"
        ));
    }
    let issuer = optional_string(obj, "issuer")?.ok_or("\"issuer\" is required")?;
    check_issuer(&issuer, opts.allow_insecure_issuers)?;
    let repository = optional_string(obj, "repository")?.ok_or("\"repository\" is required")?;
    let shaped = repository
        .split_once('/')
        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        && !repository.contains(char::is_whitespace);
    if !shaped {
        return Err(format!("repository {repository:?} is not \"owner/name\""));
    }
    let repository_owner_id = match obj.get("repositoryOwnerId") {
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        _ => optional_string(obj, "repositoryOwnerId")?,
    };
    if repository_owner_id
        .as_deref()
        .is_some_and(|id| id.contains(char::is_whitespace))
    {
        return Err("\"repositoryOwnerId\" contains spaces".into());
    }
    let workflow = optional_string(obj, "workflow")?;
    if let Some(w) = &workflow {
        if w.contains(['/', '@']) {
            return Err(format!(
                "workflow {w:?} is not a file name (write \"publish.yml\", not a path or a ref)"
            ));
        }
    }
    let environment = optional_string(obj, "environment")?;
    optional_string(obj, "mark")?;
    Ok(TrustedPublisher {
        issuer,
        repository,
        repository_owner_id,
        workflow,
        environment,
    })
}

fn parse_namespace(ns: &str, v: &Value, opts: ParseOptions) -> Result<Vec<TrustedPublisher>, String> {
    if !is_namespace(ns) {
        return Err("namespace does not match ^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$".into());
    }
    let Value::Array(items) = v else {
        return Err(format!(
            "value must be an array of trusted publishers, found {}",
            json_type(v)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_entry(item, opts).map_err(|e| format!("entry #{}: {e}", i + 1)))
        .collect()
}

impl Publishers {
    /// The configuration of a missing file: no trusted publishers.
    pub fn empty() -> Publishers {
        Publishers::default()
    }

    pub fn parse(text: &str, opts: ParseOptions) -> Result<Publishers, PublishersError> {
        let v: Value = serde_json::from_str(text).map_err(|e| PublishersError::NotJson(e.to_string()))?;
        let Value::Object(map) = v else {
            return Err(PublishersError::NotObject(json_type(&v)));
        };
        let mut out = Publishers::default();
        for (ns, value) in &map {
            match parse_namespace(ns, value, opts) {
                Ok(entries) => {
                    out.namespaces.insert(ns.clone(), entries);
                }
                Err(reason) => out.rejected.push(Rejection {
                    namespace: ns.clone(),
                    reason,
                }),
            }
        }
        Ok(out)
    }

    /// Namespaces refused by fail-closed parsing, with the reason.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &[TrustedPublisher])> {
        self.namespaces.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Whether `iss` is the issuer of some accepted entry: only such tokens are verified as ID
    /// tokens; any other bearer is an ordinary token.
    pub fn is_issuer(&self, iss: &str) -> bool {
        self.namespaces.values().flatten().any(|p| p.issuer == iss)
    }

    /// The entry of `ns` that the claims match, if any.
    pub fn matching(&self, ns: &str, claims: &IdClaims) -> Option<&TrustedPublisher> {
        self.namespaces.get(ns)?.iter().find(|p| p.matches(claims))
    }

    /// Whether the claims match an entry of any namespace (an upload whose token matches none
    /// is refused whatever its package holds).
    pub fn matches_somewhere(&self, claims: &IdClaims) -> bool {
        self.namespaces.values().flatten().any(|p| p.matches(claims))
    }
}

/// Checks 8 and 9 of SPEC §5.1 for an upload whose bearer is an ID token of a configured issuer:
/// the namespace must be declared in `auth.json` (403 `NAMESPACE_NOT_ALLOWED`), the token
/// verified (401 `INVALID_TOKEN`), and its claims must match an entry of the namespace (403
/// `FORBIDDEN`). A match publishes in anonymous and gated namespaces alike.
pub fn authorize_publish(
    policy: &Policy,
    publishers: &Publishers,
    ns: &str,
    token: &IdToken,
) -> Result<Principal, ApiError> {
    if policy.namespace(ns).is_none() {
        return Err(ApiError::namespace_not_allowed(ns));
    }
    let IdToken::Verified(claims) = token else {
        return Err(ApiError::invalid_token());
    };
    if publishers.matching(ns, claims).is_none() {
        return Err(ApiError::trusted_publisher_forbidden(ns));
    }
    Ok(Principal::Publisher(Box::new(PublisherIdentity {
        issuer: claims.issuer.clone(),
        repository: claims.repository.clone().unwrap_or_default(),
        workflow: claims.workflow_ref.clone(),
        run_id: claims.run_id.clone(),
        sha: claims.sha.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const GH: &str = "https://token.actions.githubusercontent.com";

    fn claims() -> IdClaims {
        IdClaims {
            issuer: GH.into(),
            repository: Some("Acme/Templates".into()),
            repository_owner_id: Some("1234".into()),
            workflow_ref: Some("acme/templates/.github/workflows/publish.yml@refs/heads/main".into()),
            environment: Some("Release".into()),
            run_id: Some("42".into()),
            sha: Some("abc".into()),
        }
    }

    fn parse(text: &str) -> Publishers {
        Publishers::parse(text, ParseOptions::default()).unwrap()
    }

    #[test]
    fn workflow_file_comes_from_workflow_ref_of_the_repository() {
        let r = "acme/templates/.github/workflows/publish.yml@refs/heads/main";
        assert_eq!(workflow_file(r, "acme/templates"), Some("publish.yml"));
        assert_eq!(workflow_file(r, "ACME/Templates"), Some("publish.yml"));
        assert_eq!(workflow_file(r, "evil/templates"), None);
        assert_eq!(
            workflow_file("acme/templates/.github/workflows/publish.yml", "acme/templates"),
            None
        );
        assert_eq!(
            workflow_file(
                "acme/templates/.github/workflows/sub/x.yml@refs/tags/v1",
                "acme/templates"
            ),
            None
        );
        assert_eq!(
            workflow_file("acme/templates/other/publish.yml@main", "acme/templates"),
            None
        );
    }

    #[test]
    fn every_field_narrows() {
        let p = parse(&format!(
            r#"{{"@a": [{{"issuer": "{GH}", "repository": "acme/templates", "repositoryOwnerId": 1234,
                 "workflow": "publish.yml", "environment": "release"}}]}}"#
        ));
        assert!(p.matching("@a", &claims()).is_some());
        assert!(p.matching("@b", &claims()).is_none());
        let tweaks: [fn(&mut IdClaims); 9] = [
            |c| c.issuer = "https://other.example".into(),
            |c| c.repository = Some("acme/other".into()),
            |c| c.repository = None,
            |c| c.repository_owner_id = Some("999".into()),
            |c| c.repository_owner_id = None,
            |c| c.workflow_ref = Some("acme/templates/.github/workflows/ci.yml@refs/heads/main".into()),
            // A reusable workflow's file is in job_workflow_ref, never read: the caller counts.
            |c| c.workflow_ref = None,
            |c| c.environment = Some("staging".into()),
            |c| c.environment = None,
        ];
        for (i, tweak) in tweaks.iter().enumerate() {
            let mut c = claims();
            tweak(&mut c);
            assert!(p.matching("@a", &c).is_none(), "tweak #{i} still matched");
            assert!(!p.matches_somewhere(&c), "tweak #{i}");
        }
        // Only issuer and repository are required.
        let loose = parse(&format!(
            r#"{{"@a": [{{"issuer": "{GH}", "repository": "acme/templates"}}]}}"#
        ));
        let mut c = claims();
        c.environment = None;
        c.workflow_ref = None;
        c.repository_owner_id = None;
        assert!(loose.matching("@a", &c).is_some());
        assert!(loose.is_issuer(GH));
        assert!(!loose.is_issuer("https://token.actions.githubusercontent.com/"));
    }

    #[test]
    fn doubtful_namespaces_are_rejected_alone() {
        let p = parse(&format!(
            r#"{{"@ok": [{{"issuer": "{GH}", "repository": "a/b"}}],
                "@typo": [{{"issuer": "{GH}", "repository": "a/b", "enviroment": "x"}}],
                "@plain": [{{"issuer": "http://example.com", "repository": "a/b"}}],
                "@loop": [{{"issuer": "http://127.0.0.1:9000", "repository": "a/b"}}],
                "@norepo": [{{"issuer": "{GH}"}}],
                "@shape": [{{"issuer": "{GH}", "repository": "just-a-name"}}],
                "@path": [{{"issuer": "{GH}", "repository": "a/b", "workflow": ".github/workflows/p.yml"}}],
                "@type": {{"issuer": "{GH}"}},
                "Bad": []}}"#
        ));
        let mut rejected: Vec<&str> = p.rejected().iter().map(|r| r.namespace.as_str()).collect();
        rejected.sort_unstable();
        assert_eq!(
            rejected,
            ["@loop", "@norepo", "@path", "@plain", "@shape", "@type", "@typo", "Bad"]
        );
        assert!(p
            .rejected()
            .iter()
            .any(|r| r.reason.contains("OIDC_ALLOW_INSECURE_ISSUERS")));
        assert_eq!(p.namespaces().count(), 1);
        assert!(matches!(
            Publishers::parse("[]", ParseOptions::default()),
            Err(PublishersError::NotObject("an array"))
        ));
        assert!(matches!(
            Publishers::parse("{", ParseOptions::default()),
            Err(PublishersError::NotJson(_))
        ));
    }

    #[test]
    fn issuers() {
        assert!(check_issuer(GH, false).is_ok());
        assert!(check_issuer("HTTPS://gitlab.example.com/", false).is_ok());
        for insecure in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9",
            "http://127.1.2.3",
        ] {
            assert!(check_issuer(insecure, false).is_err(), "{insecure}");
            assert!(check_issuer(insecure, true).is_ok(), "{insecure}");
        }
        for bad in [
            "http://10.0.0.1",
            "http://example.com",
            "http://127.0.0.1.evil.com",
            "http://localhost:80x",
            "ftp://x",
            "https://",
            "https://user@host",
            "https://host/?q",
            "https://host/#f",
            "https://ho st",
            "token.actions.githubusercontent.com",
        ] {
            assert!(check_issuer(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn decision() {
        let policy = Policy::parse(r#"{"@anon": [], "@gated": [{"token": "t", "publish": true}]}"#).unwrap();
        let p = parse(&format!(
            r#"{{"@anon": [{{"issuer": "{GH}", "repository": "acme/templates"}}],
                "@gated": [{{"issuer": "{GH}", "repository": "acme/templates", "environment": "release"}}],
                "@undeclared": [{{"issuer": "{GH}", "repository": "acme/templates"}}],
                "@other": [{{"issuer": "{GH}", "repository": "acme/other"}}]}}"#
        ));
        let ok = IdToken::Verified(claims());
        for ns in ["@anon", "@gated"] {
            match authorize_publish(&policy, &p, ns, &ok) {
                Ok(Principal::Publisher(who)) => {
                    assert_eq!(who.repository, "Acme/Templates");
                    assert_eq!(who.run_id.as_deref(), Some("42"));
                }
                other => panic!("{ns}: {other:?}"),
            }
        }
        let kind = |ns: &str, t: &IdToken| authorize_publish(&policy, &p, ns, t).unwrap_err().kind;
        assert_eq!(kind("@undeclared", &ok), ErrorKind::NamespaceNotAllowed);
        assert_eq!(kind("@gated", &IdToken::Refused), ErrorKind::InvalidToken);
        assert_eq!(kind("@anon", &IdToken::Refused), ErrorKind::InvalidToken);
        let other_policy = Policy::parse(r#"{"@other": []}"#).unwrap();
        let e = authorize_publish(&other_policy, &p, "@other", &ok).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "FORBIDDEN"));
    }
}
