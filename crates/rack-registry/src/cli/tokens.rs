//! Operator commands for tokens (SPEC §6 BEYOND, §13):
//!
//! - `rack-registry token`: a fresh random token, printed once, with the `auth.json` entry that
//!   holds only its SHA-256 (so the file can be committed without secrets);
//! - `rack-registry auth check <file>`: what a policy file grants, without ever printing a token,
//!   and a non-zero exit if any namespace is rejected (what a CI job runs before pushing it);
//! - `rack-registry auth check-publishers <file>`: the same for `publishers.json` (SPEC §16):
//!   which CI identities may publish where, and a non-zero exit on any rejected namespace.
//!
//! The parsing is the server's own (`rack_core::auth::Policy`), so `auth check` can never disagree
//! with what the server will do with the file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rack_core::auth::{digest, parse_timestamp_ms, Policy};
use rack_core::publishers::{ParseOptions, Publishers};
use rand::TryRngCore;
use serde_json::{json, Map, Value};

/// Tokens that expire within this many days are flagged by `auth check`.
const EXPIRY_WARNING_DAYS: i64 = 14;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Namespace the entry is for (printed as a ready-to-paste `"@ns": [...]` snippet)
    #[arg(long)]
    pub namespace: Option<String>,
    /// Grant publishing (`"publish": true`)
    #[arg(long)]
    pub publish: bool,
    /// Expiry: a duration (`90d`, `12h`, `2w`) from now, or a date / RFC 3339 timestamp
    #[arg(long)]
    pub expires: Option<String>,
    /// A label for humans and logs (`"mark"`)
    #[arg(long)]
    pub mark: Option<String>,
    /// Print one JSON object `{"token": ..., "entry": {...}}` for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuthCommand {
    /// Check an auth.json: list namespaces, entries (never tokens), rejections and expiries
    Check {
        /// The auth.json file
        file: PathBuf,
    },
    /// Check an auth.json like `check` (refused on any rejected namespace), then write it to the
    /// configured storage as `.auth/auth.json` (the policy a bucket's replicas and Worker share)
    Push(Box<crate::cli::storage::AuthPush>),
    /// Check a publishers.json (trusted publishing): list who may publish where, and every
    /// rejected namespace (exit 1)
    CheckPublishers {
        /// The publishers.json file
        file: PathBuf,
        /// Accept http:// issuers on loopback hosts, as a server with
        /// OIDC_ALLOW_INSECURE_ISSUERS=true does
        #[arg(long)]
        allow_insecure_issuers: bool,
    },
}

/// 256 bits from the operating system's generator, hex-encoded, with a recognizable prefix
/// (secret scanners and humans can tell what leaked).
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| format!("OS random generator failed: {e}"))?;
    Ok(format!("rk_{}", hex::encode(bytes)))
}

/// Parse `--expires` into an RFC 3339 timestamp (UTC, seconds).
pub fn expiry(spec: &str, now: time::OffsetDateTime) -> Result<String, String> {
    let spec = spec.trim();
    let units = [('m', 60i64), ('h', 3600), ('d', 86_400), ('w', 604_800)];
    let relative = spec
        .char_indices()
        .last()
        .and_then(|(i, unit)| {
            units
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, secs)| (&spec[..i], *secs))
        })
        .and_then(|(n, secs)| n.parse::<i64>().ok().filter(|n| *n > 0).map(|n| n * secs));
    let at = match relative {
        Some(secs) => now + time::Duration::seconds(secs),
        None => {
            let ms = parse_timestamp_ms(spec).ok_or_else(|| {
                format!("--expires {spec:?}: expected a duration like 90d, 12h, 2w, 30m or a date/timestamp")
            })?;
            time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .map_err(|e| e.to_string())?
        }
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .map_err(|e| e.to_string())
}

/// The `auth.json` entry for a token: only its hash.
pub fn entry(token: &str, args: &TokenArgs, now: time::OffsetDateTime) -> Result<Value, String> {
    let mut e = Map::new();
    e.insert("tokenSha256".into(), json!(hex::encode(digest(token))));
    if let Some(m) = &args.mark {
        e.insert("mark".into(), json!(m));
    }
    if args.publish {
        e.insert("publish".into(), json!(true));
    }
    if let Some(x) = &args.expires {
        e.insert("expiresAt".into(), json!(expiry(x, now)?));
    }
    Ok(Value::Object(e))
}

pub fn run_token(args: TokenArgs) -> ExitCode {
    if let Some(ns) = &args.namespace {
        if !rack_core::names::is_namespace(ns) {
            eprintln!(
                "rack-registry token: --namespace {ns:?} does not match ^@[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$"
            );
            return ExitCode::from(2);
        }
    }
    let result = new_token().and_then(|t| entry(&t, &args, time::OffsetDateTime::now_utc()).map(|e| (t, e)));
    let (token, entry) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rack-registry token: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", json!({ "token": token, "entry": entry }));
        return ExitCode::SUCCESS;
    }
    println!("Token (shown once; store it in your secret manager now):\n\n  {token}\n");
    match &args.namespace {
        Some(ns) => println!("auth.json entry (only the hash):\n\n  \"{ns}\": [{entry}]\n"),
        None => println!("auth.json entry (only the hash):\n\n  {entry}\n"),
    }
    println!("Clients send it as `Authorization: Bearer <token>` or `X-Registry-Token: <token>`.");
    ExitCode::SUCCESS
}

fn describe_expiry(exp: Option<i64>, now_ms: i64) -> (String, bool) {
    let Some(exp) = exp else {
        return ("never expires".into(), false);
    };
    let when = time::OffsetDateTime::from_unix_timestamp_nanos(exp as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| exp.to_string());
    let days = (exp - now_ms).div_euclid(86_400_000);
    if exp <= now_ms {
        (format!("EXPIRED {when}"), true)
    } else if days < EXPIRY_WARNING_DAYS {
        (format!("expires {when} (in {days} days)"), true)
    } else {
        (format!("expires {when}"), false)
    }
}

/// The report of `auth check`, and whether the file passes (no namespace rejected).
pub fn check_report(text: &str, now_ms: i64) -> (String, bool) {
    let policy = match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            return (
                format!("INVALID: {e} (the server refuses to start on this file)\n"),
                false,
            )
        }
    };
    let mut out = String::new();
    let mut warnings = Vec::new();
    for (ns, p) in policy.namespaces() {
        if p.is_anonymous() {
            out.push_str(&format!(
                "{ns}: anonymous (anyone reads; only the admin token publishes)\n"
            ));
            continue;
        }
        out.push_str(&format!("{ns}: {} token(s)\n", p.entries.len()));
        for e in &p.entries {
            let mark = e.mark.as_deref().unwrap_or("(no mark)");
            let rights = if e.publish { "read+publish" } else { "read" };
            let kind = if e.hashed { "tokenSha256" } else { "plain token" };
            let (expiry, flag) = describe_expiry(e.expires_at_ms, now_ms);
            out.push_str(&format!("  - {mark}: {rights}, {kind}, {expiry}\n"));
            if flag {
                warnings.push(format!("WARNING {ns}: token {mark:?} {expiry}"));
            }
        }
    }
    for s in policy.skipped() {
        warnings.push(format!("WARNING {}: {} (entry skipped)", s.namespace, s.reason));
    }
    for w in &warnings {
        out.push_str(w);
        out.push('\n');
    }
    for r in policy.rejected() {
        out.push_str(&format!(
            "REJECTED {}: {} (it behaves as undeclared: 403 for everyone)\n",
            r.namespace, r.reason
        ));
    }
    let ok = policy.rejected().is_empty();
    out.push_str(if ok {
        "OK\n"
    } else {
        "FAILED: some namespaces are rejected\n"
    });
    (out, ok)
}

/// The report of `auth check-publishers`, and whether the file passes (no namespace rejected).
pub fn publishers_report(text: &str, opts: ParseOptions) -> (String, bool) {
    let publishers = match Publishers::parse(text, opts) {
        Ok(p) => p,
        Err(e) => {
            return (
                format!("INVALID: {e} (the server refuses to start on this file)\n"),
                false,
            )
        }
    };
    let mut out = String::new();
    let mut warnings = Vec::new();
    for (ns, entries) in publishers.namespaces() {
        out.push_str(&format!("{ns}: {} trusted publisher(s)\n", entries.len()));
        for (i, p) in entries.iter().enumerate() {
            let or_any = |v: &Option<String>, any: &str| v.clone().unwrap_or_else(|| any.to_owned());
            out.push_str(&format!(
                "  - {} {}: owner id {}, workflow {}, environment {}\n",
                p.issuer,
                p.repository,
                or_any(&p.repository_owner_id, "any"),
                or_any(&p.workflow, "any"),
                or_any(&p.environment, "any"),
            ));
            if p.repository_owner_id.is_none() {
                warnings.push(format!(
                    "WARNING {ns}: entry #{} names no repositoryOwnerId (whoever registers the owner name {:?} after it is freed would match)",
                    i + 1,
                    p.repository.split('/').next().unwrap_or_default()
                ));
            }
        }
    }
    for w in &warnings {
        out.push_str(w);
        out.push('\n');
    }
    for r in publishers.rejected() {
        out.push_str(&format!(
            "REJECTED {}: {} (no CI identity publishes to it)\n",
            r.namespace, r.reason
        ));
    }
    let ok = publishers.rejected().is_empty();
    out.push_str(if ok {
        "OK\n"
    } else {
        "FAILED: some namespaces are rejected\n"
    });
    (out, ok)
}

pub fn run_auth(cmd: AuthCommand) -> ExitCode {
    let (file, publishers) = match cmd {
        AuthCommand::Check { file } => (file, None),
        AuthCommand::CheckPublishers {
            file,
            allow_insecure_issuers,
        } => (
            file,
            Some(ParseOptions {
                allow_insecure_issuers,
            }),
        ),
        AuthCommand::Push(a) => return crate::cli::storage::run_auth_push(*a),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rack-registry auth check: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let (report, ok) = match publishers {
        None => check_report(&text, crate::state::now_ms()),
        Some(opts) => publishers_report(&text, opts),
    };
    print!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rack_core::auth::{Admin, Credential, Ctx};

    fn args() -> TokenArgs {
        TokenArgs {
            namespace: None,
            publish: true,
            expires: Some("90d".into()),
            mark: Some("CI".into()),
            json: false,
        }
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
    }

    #[test]
    fn entry_round_trips_through_the_policy() {
        let now = time::macros::datetime!(2026-11-26 00:00 UTC);
        let token = new_token().unwrap();
        let e = entry(&token, &args(), now).unwrap();
        assert_eq!(e["expiresAt"], "2027-02-24T00:00:00Z");
        assert!(!e.to_string().contains(&token));
        let policy = Policy::parse(&json!({ "@ci": [e] }).to_string()).unwrap();
        let cred = Credential::new(&token);
        let admin = Admin::default();
        let ctx = Ctx {
            policy: &policy,
            admin: &admin,
            credential: Some(&cred),
            now_ms: 1_795_000_000_000,
        };
        assert!(ctx.publish("@ci").is_ok());
    }

    #[test]
    fn expiry_forms() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert_eq!(expiry("12h", now).unwrap(), "2026-01-01T12:00:00Z");
        assert_eq!(expiry("2w", now).unwrap(), "2026-01-15T00:00:00Z");
        assert_eq!(expiry("2027-03-01", now).unwrap(), "2027-03-01T00:00:00Z");
        assert!(expiry("soon", now).is_err());
        assert!(expiry("0d", now).is_err());
    }

    #[test]
    fn check_publishers_lists_and_rejects() {
        let text = r#"{"@ok": [{"issuer": "https://token.actions.githubusercontent.com", "repository": "acme/t", "workflow": "publish.yml"}],
                       "@bad": [{"issuer": "http://127.0.0.1:1", "repository": "acme/t"}]}"#;
        let (report, ok) = publishers_report(text, ParseOptions::default());
        assert!(!ok, "{report}");
        assert!(report.contains("@ok: 1 trusted publisher(s)"), "{report}");
        assert!(
            report.contains("workflow publish.yml, environment any"),
            "{report}"
        );
        assert!(
            report.contains("WARNING @ok: entry #1 names no repositoryOwnerId"),
            "{report}"
        );
        assert!(report.contains("REJECTED @bad: entry #1: issuer"), "{report}");
        let (report, ok) = publishers_report(
            text,
            ParseOptions {
                allow_insecure_issuers: true,
            },
        );
        assert!(ok, "{report}");
        let (report, ok) = publishers_report("[]", ParseOptions::default());
        assert!(!ok && report.starts_with("INVALID:"), "{report}");
    }

    #[test]
    fn check_flags_rejections_and_expiry() {
        let now_ms = 1_790_000_000_000; // 2026-09-21
        let text = r#"{
            "@ok": [{"token": "secret-one", "mark": "CI", "publish": true}],
            "@soon": [{"token": "secret-two", "mark": "soon", "expiresAt": "2026-09-25"}],
            "@anon": [],
            "@bad": [{"token": "secret-three", "expiresAt": "whenever"}]
        }"#;
        let (report, ok) = check_report(text, now_ms);
        assert!(!ok);
        assert!(report.contains("REJECTED @bad"), "{report}");
        assert!(report.contains("WARNING @soon"), "{report}");
        assert!(report.contains("@anon: anonymous"), "{report}");
        assert!(
            report.contains("CI: read+publish, plain token, never expires"),
            "{report}"
        );
        for secret in ["secret-one", "secret-two", "secret-three"] {
            assert!(!report.contains(secret));
        }
        let (_, ok) = check_report(r#"{"@ok": []}"#, now_ms);
        assert!(ok);
        let (report, ok) = check_report("[]", now_ms);
        assert!(!ok && report.starts_with("INVALID"));
    }
}
