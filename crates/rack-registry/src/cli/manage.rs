//! `rack-registry yank`, `deprecate` and `delete-version`: the version lifecycle of SPEC §18
//! from the command line, over the server's management routes.
//!
//! | Command | Request |
//! |---|---|
//! | `yank @ns/<segs>@<version> --reason R` | `PUT /-/yank/@ns/<segs>/<version>` `{"reason": R}` |
//! | `yank @ns/<segs>@<version> --undo` | `DELETE /-/yank/@ns/<segs>/<version>` |
//! | `deprecate @ns/<segs> --message M [--successor S]` | `PUT /-/deprecate/@ns/<segs>` `{"message": M, "successor": S}` |
//! | `deprecate @ns/<segs> --undo` | `DELETE /-/deprecate/@ns/<segs>` |
//! | `delete-version @ns/<segs>@<version>` | `DELETE /-/versions/@ns/<segs>/<version>` (admin token) |
//!
//! URL, token and retries are `publish`'s ([`ServerArgs`]: `--url`/`RACK_REGISTRY_URL`,
//! `--token`/`RACK_REGISTRY_TOKEN`, `--retries`/`RACK_REGISTRY_RETRIES`), and so are the
//! request, the retry of 503 and 429 after `Retry-After` and the exit statuses
//! ([`super::client`]). Arguments are checked before anything is sent: a malformed identifier
//! is a usage error (exit 2); a reason, message or successor the server would refuse is
//! refused here with the server's own rules ([`rack_core::lifecycle`]) and its 400
//! `INVALID_REQUEST` (exit 1). On success the server's `message` is printed.

use std::process::ExitCode;

use clap::Args;
use rack_core::lifecycle::{is_registry_identifier, DeprecateRequest, YankRequest};
use rack_core::names::is_version;
use rack_core::ApiError;
use serde_json::{json, Value};

use super::client::{self, check_url, refusal, unexpected, Failure, ServerArgs};

#[derive(Debug, Clone, Args)]
pub struct YankArgs {
    /// The version to yank: @ns/<segments>@<version>
    pub version: String,
    /// Why (plain text, at most 500 characters): sent with every read of the version as
    /// X-Rack-Yanked
    #[arg(long, required_unless_present = "undo", conflicts_with = "undo")]
    pub reason: Option<String>,
    /// Unyank the version instead
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeprecateArgs {
    /// The registry to deprecate: @ns/<segments>
    pub registry: String,
    /// What users should know (plain text, at most 500 characters)
    #[arg(long, required_unless_present = "undo", conflicts_with = "undo")]
    pub message: Option<String>,
    /// The registry that replaces it: @ns/<segments>
    #[arg(long, conflicts_with = "undo")]
    pub successor: Option<String>,
    /// Undeprecate the registry instead
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteVersionArgs {
    /// The version to delete for good (admin token only): @ns/<segments>@<version>
    pub version: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// One management request, checked and ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: reqwest::Method,
    /// From the server's root: `/-/yank/@ns/a/1.0.0`.
    pub path: String,
    /// A JSON body, for `PUT`.
    pub body: Option<String>,
}

/// `@ns/<segs>@<version>`: the registry and the version. The version is full SemVer (SPEC §2).
pub fn parse_versioned(arg: &str) -> Result<(String, String), Failure> {
    let usage = || {
        Failure::Usage(format!(
            "{arg:?} is not a version identifier: expected @namespace/registry@version, e.g. @acme/ui/button@1.2.0"
        ))
    };
    let at = arg.get(1..).and_then(|rest| rest.find('@')).ok_or_else(usage)? + 1;
    let (registry, version) = (&arg[..at], &arg[at + 1..]);
    if !is_registry_identifier(registry) || !is_version(version) {
        return Err(usage());
    }
    Ok((registry.to_owned(), version.to_owned()))
}

/// `@ns/<segs>`: a registry identifier, without a version.
pub fn parse_registry(arg: &str) -> Result<String, Failure> {
    if is_registry_identifier(arg) {
        return Ok(arg.to_owned());
    }
    Err(Failure::Usage(format!(
        "{arg:?} is not a registry identifier: expected @namespace/registry, e.g. @acme/ui/button"
    )))
}

/// A body the server would refuse is refused here, with its answer.
fn checked(
    body: Value,
    check: impl Fn(&[u8]) -> Result<(), rack_core::lifecycle::Invalid>,
) -> Result<String, Failure> {
    let text = body.to_string();
    check(text.as_bytes()).map_err(|e| Failure::from(ApiError::invalid_request(e.0)))?;
    Ok(text)
}

impl YankArgs {
    pub fn request(&self) -> Result<Request, Failure> {
        let (registry, version) = parse_versioned(&self.version)?;
        let path = format!("/-/yank/{registry}/{version}");
        match (&self.reason, self.undo) {
            (_, true) => Ok(Request {
                method: reqwest::Method::DELETE,
                path,
                body: None,
            }),
            (Some(reason), false) => Ok(Request {
                method: reqwest::Method::PUT,
                path,
                body: Some(checked(json!({ "reason": reason }), |b| {
                    YankRequest::parse(b).map(drop)
                })?),
            }),
            (None, false) => Err(Failure::Usage("--reason or --undo is required".into())),
        }
    }
}

impl DeprecateArgs {
    pub fn request(&self) -> Result<Request, Failure> {
        let registry = parse_registry(&self.registry)?;
        let path = format!("/-/deprecate/{registry}");
        match (&self.message, self.undo) {
            (_, true) => Ok(Request {
                method: reqwest::Method::DELETE,
                path,
                body: None,
            }),
            (Some(message), false) => {
                let mut body = json!({ "message": message });
                if let Some(s) = &self.successor {
                    body["successor"] = json!(s);
                }
                Ok(Request {
                    method: reqwest::Method::PUT,
                    path,
                    body: Some(checked(body, |b| DeprecateRequest::parse(b).map(drop))?),
                })
            }
            (None, false) => Err(Failure::Usage("--message or --undo is required".into())),
        }
    }
}

impl DeleteVersionArgs {
    pub fn request(&self) -> Result<Request, Failure> {
        let (registry, version) = parse_versioned(&self.version)?;
        Ok(Request {
            method: reqwest::Method::DELETE,
            path: format!("/-/versions/{registry}/{version}"),
            body: None,
        })
    }
}

/// A success's `message` (SPEC §18: `{"registry", "version", "message", "lifecycle"}`), or the
/// server's refusal.
pub fn interpret(status: u16, body: &[u8]) -> Result<String, Failure> {
    if !(200..300).contains(&status) {
        return Err(refusal(status, body));
    }
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    match doc
        .as_ref()
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
    {
        Some(m) => Ok(m.to_owned()),
        None => Err(unexpected(status, body)),
    }
}

/// Send `request` (with retries) and print the server's message.
fn call(server: &ServerArgs, request: Result<Request, Failure>, who: &str) -> Result<(), Failure> {
    let request = request?;
    let token = server.require_token(who)?;
    check_url(&server.url)?;
    let target = server.endpoint(&request.path);
    let http = client::http_client("manage")?;
    let retries = server.retries;
    let attempt = || {
        let mut req = http.request(request.method.clone(), &target);
        if let Some(body) = &request.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let doing = format!("{} {target}", request.method);
        let token = token.clone();
        async move { client::send(req, &token, &doing).await }
    };
    let message = client::runtime()?.block_on(client::with_retries(
        retries,
        attempt,
        interpret,
        |why, wait, retry| {
            eprintln!(
                "server busy ({why}): retrying in {} s (retry {retry} of {retries})",
                wait.as_secs()
            )
        },
    ))?;
    println!("{message}");
    Ok(())
}

fn finish(what: &str, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{what} failed: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

const PUBLISHERS: &str = "the admin token or a namespace token with \"publish\": true";

pub fn run_yank(args: YankArgs) -> ExitCode {
    let what = if args.undo { "unyank" } else { "yank" };
    finish(what, call(&args.server, args.request(), PUBLISHERS))
}

pub fn run_deprecate(args: DeprecateArgs) -> ExitCode {
    let what = if args.undo { "undeprecate" } else { "deprecate" };
    finish(what, call(&args.server, args.request(), PUBLISHERS))
}

pub fn run_delete_version(args: DeleteVersionArgs) -> ExitCode {
    finish(
        "delete-version",
        call(&args.server, args.request(), "the admin token"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerArgs {
        ServerArgs {
            url: "http://localhost:8080".into(),
            token: Some("t".into()),
            retries: 0,
        }
    }

    fn usage<T: std::fmt::Debug>(r: Result<T, Failure>) -> String {
        match r {
            Err(f @ Failure::Usage(_)) => f.to_string(),
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn versioned_identifiers() {
        let ok = |s: &str| parse_versioned(s).unwrap();
        assert_eq!(ok("@acme/button@1.2.0"), ("@acme/button".into(), "1.2.0".into()));
        assert_eq!(
            ok("@acme/ui/forms/input@0.1.0"),
            ("@acme/ui/forms/input".into(), "0.1.0".into())
        );
        assert_eq!(
            ok("@a-b/x@1.0.0-rc.1+build.5"),
            ("@a-b/x".into(), "1.0.0-rc.1+build.5".into()),
            "prerelease and build metadata"
        );
        for bad in [
            "@acme/button",
            "@acme@1.0.0",
            "acme/button@1.0.0",
            "@acme/button@v1.0.0",
            "@acme/button@1.0",
            "@acme/button@01.0.0",
            "@acme/Button@1.0.0",
            "@acme/a/../b@1.0.0",
            "@acme//b@1.0.0",
            "@acme/b/@1.0.0",
            "@acme/b@1.0.0@2.0.0",
            "@acme/b@",
            "@",
            "",
            "@acme/b 1.0.0",
        ] {
            let msg = usage(parse_versioned(bad));
            assert!(msg.contains("@namespace/registry@version"), "{bad}: {msg}");
        }
    }

    #[test]
    fn registry_identifiers() {
        assert_eq!(parse_registry("@acme/ui/button").unwrap(), "@acme/ui/button");
        for bad in [
            "@acme",
            "@acme/button@1.0.0",
            "acme/button",
            "@acme/Button",
            "@acme/b/",
            "@ACME/b",
        ] {
            assert!(
                usage(parse_registry(bad)).contains("@namespace/registry"),
                "{bad}"
            );
        }
    }

    #[test]
    fn requests_are_built_and_checked_before_sending() {
        let yank = |reason: Option<&str>, undo: bool| YankArgs {
            version: "@acme/ui/button@1.2.0".into(),
            reason: reason.map(str::to_owned),
            undo,
            server: server(),
        };
        assert_eq!(
            yank(Some("broken \"template\""), false).request().unwrap(),
            Request {
                method: reqwest::Method::PUT,
                path: "/-/yank/@acme/ui/button/1.2.0".into(),
                body: Some(r#"{"reason":"broken \"template\""}"#.into()),
            }
        );
        assert_eq!(
            yank(None, true).request().unwrap(),
            Request {
                method: reqwest::Method::DELETE,
                path: "/-/yank/@acme/ui/button/1.2.0".into(),
                body: None,
            }
        );
        let refused = |r: Result<Request, Failure>| match r {
            Err(Failure::Rejected(r)) => {
                assert_eq!((r.status, r.code.as_str()), (400, "INVALID_REQUEST"));
                r.message
            }
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        };
        let long = "x".repeat(rack_core::lifecycle::MAX_TEXT_CHARS + 1);
        assert!(refused(yank(Some(&long), false).request()).contains("500"));
        assert!(refused(yank(Some("  "), false).request()).contains("empty"));
        assert!(refused(yank(Some("two\nlines"), false).request()).contains("plain text"));
        assert!(
            yank(Some(&"é".repeat(500)), false).request().is_ok(),
            "characters, not bytes"
        );

        let deprecate = |message: Option<&str>, successor: Option<&str>, undo: bool| DeprecateArgs {
            registry: "@acme/old".into(),
            message: message.map(str::to_owned),
            successor: successor.map(str::to_owned),
            undo,
            server: server(),
        };
        let r = deprecate(Some("moved"), Some("@acme/new/thing"), false)
            .request()
            .unwrap();
        assert_eq!(
            (r.method, r.path.as_str()),
            (reqwest::Method::PUT, "/-/deprecate/@acme/old")
        );
        assert_eq!(
            r.body.unwrap(),
            r#"{"message":"moved","successor":"@acme/new/thing"}"#
        );
        let r = deprecate(Some("gone"), None, false).request().unwrap();
        assert_eq!(
            r.body.unwrap(),
            r#"{"message":"gone"}"#,
            "no successor: none sent"
        );
        assert_eq!(
            deprecate(None, None, true).request().unwrap().method,
            reqwest::Method::DELETE
        );
        assert!(
            refused(deprecate(Some("m"), Some("@acme/new@1.0.0"), false).request()).contains("successor")
        );
        assert!(refused(deprecate(Some(""), None, false).request()).contains("empty"));

        let delete = DeleteVersionArgs {
            version: "@acme/x@2.0.0".into(),
            server: server(),
        };
        assert_eq!(
            delete.request().unwrap(),
            Request {
                method: reqwest::Method::DELETE,
                path: "/-/versions/@acme/x/2.0.0".into(),
                body: None,
            }
        );
        let bad = DeleteVersionArgs {
            version: "@acme/x".into(),
            server: server(),
        };
        assert_eq!(bad.request().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn answers() {
        let ok = br#"{"registry":"@a/b","version":"1.0.0","message":"Yanked @a/b@1.0.0","lifecycle":{}}"#;
        assert_eq!(interpret(200, ok).unwrap(), "Yanked @a/b@1.0.0");
        let f = interpret(
            403,
            br#"{"code":"INSUFFICIENT_PERMISSIONS","message":"Token cannot publish to @a"}"#,
        )
        .unwrap_err();
        assert_eq!(f.exit_code(), 1);
        assert_eq!(
            f.to_string(),
            "403 INSUFFICIENT_PERMISSIONS: Token cannot publish to @a"
        );
        assert_eq!(interpret(200, b"{}").unwrap_err().exit_code(), 3);
        assert_eq!(interpret(502, b"<html>").unwrap_err().exit_code(), 3);
    }
}
