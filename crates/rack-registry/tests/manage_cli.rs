//! `rack-registry yank`, `deprecate` and `delete-version` (SPEC §18), through the real binary
//! against a small axum server in the test that records every request (method, path, body,
//! token header) and answers from a script as the server's management routes do: what is sent,
//! how the answer is printed, the retry of a 503 after `Retry-After`, and the exit statuses.
//! (End-to-end runs against the real server come with its management routes.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use common::run_cli;

/// One request as the scripted server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    body: String,
    authorization: Option<String>,
    content_type: Option<String>,
}

/// A scripted answer: status, `Retry-After`, JSON body.
type Answer = (u16, Option<&'static str>, String);

struct Scripted {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A server on 127.0.0.1 answering the `n`th request with `script[n]` (the last one again when
/// the script is shorter), recording each request.
fn scripted(script: Vec<Answer>) -> Scripted {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let record = seen.clone();
    let script = Arc::new(script);
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let record = record.clone();
        let script = script.clone();
        async move {
            let header = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            let n = {
                let mut seen = record.lock().unwrap();
                seen.push(Seen {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    authorization: header("authorization"),
                    content_type: header("content-type"),
                });
                seen.len() - 1
            };
            let (status, retry_after, body) = script[n.min(script.len() - 1)].clone();
            let mut res = (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                body,
            )
                .into_response();
            if let Some(r) = retry_after {
                res.headers_mut().insert("retry-after", r.parse().unwrap());
            }
            res
        }
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(handler);
            axum::serve(listener, app).await.unwrap();
        });
    });
    Scripted { base, seen }
}

impl Scripted {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn ok_answer(registry: &str, version: Option<&str>, message: &str) -> Answer {
    let mut body = serde_json::json!({
        "registry": registry,
        "message": message,
        "lifecycle": {"yanked": {}, "deprecated": null, "deleted": {}},
    });
    if let Some(v) = version {
        body["version"] = v.into();
    }
    (200, None, body.to_string())
}

fn error_answer(status: u16, retry_after: Option<&'static str>, code: &str, message: &str) -> Answer {
    (
        status,
        retry_after,
        serde_json::json!({"code": code, "message": message}).to_string(),
    )
}

fn cli(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let cwd = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    run_cli(cwd.path(), &env, args)
}

#[test]
fn yank_and_unyank_send_the_management_routes_and_print_the_answer() {
    let server = scripted(vec![
        ok_answer("@acme/ui/button", Some("1.2.0"), "Yanked @acme/ui/button@1.2.0"),
        ok_answer("@acme/ui/button", Some("1.2.0"), "Unyanked @acme/ui/button@1.2.0"),
    ]);
    let (code, out) = cli(
        &[],
        &[
            "yank",
            "@acme/ui/button@1.2.0",
            "--reason",
            "broken \"template\" — sorry",
            "--url",
            &format!("{}/", server.base),
            "--token",
            "publish-token",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Yanked @acme/ui/button@1.2.0\n"), "{out}");
    // URL and token from the environment, as publish takes them.
    let (code, out) = cli(
        &[
            ("RACK_REGISTRY_URL", &server.base),
            ("RACK_REGISTRY_TOKEN", "  env-token  "),
        ],
        &["yank", "@acme/ui/button@1.2.0", "--undo"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Unyanked @acme/ui/button@1.2.0"), "{out}");

    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        Seen {
            method: "PUT".into(),
            path: "/-/yank/@acme/ui/button/1.2.0".into(),
            body: r#"{"reason":"broken \"template\" — sorry"}"#.into(),
            authorization: Some("Bearer publish-token".into()),
            content_type: Some("application/json".into()),
        }
    );
    assert_eq!(
        seen[1],
        Seen {
            method: "DELETE".into(),
            path: "/-/yank/@acme/ui/button/1.2.0".into(),
            body: String::new(),
            authorization: Some("Bearer env-token".into()),
            content_type: None,
        }
    );
}

#[test]
fn deprecate_undeprecate_and_delete_version() {
    let server = scripted(vec![
        ok_answer("@acme/old", None, "Deprecated @acme/old"),
        ok_answer("@acme/old", None, "Deprecated @acme/old"),
        ok_answer("@acme/old", None, "Undeprecated @acme/old"),
        ok_answer("@acme/old", Some("2.0.0"), "Deleted @acme/old@2.0.0"),
    ]);
    let env = [("RACK_REGISTRY_URL", server.base.as_str())];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token", "t"]);
        cli(&env, &all)
    };
    let (code, out) = run(&[
        "deprecate",
        "@acme/old",
        "--message",
        "Use the new one",
        "--successor",
        "@acme/new/thing",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Deprecated @acme/old"), "{out}");
    assert_eq!(run(&["deprecate", "@acme/old", "--message", "Gone"]).0, Some(0));
    assert_eq!(run(&["deprecate", "@acme/old", "--undo"]).0, Some(0));
    let (code, out) = run(&["delete-version", "@acme/old@2.0.0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Deleted @acme/old@2.0.0"), "{out}");

    let seen: Vec<(String, String, String)> = server
        .seen()
        .into_iter()
        .map(|s| (s.method, s.path, s.body))
        .collect();
    let s = |m: &str, p: &str, b: &str| (m.to_owned(), p.to_owned(), b.to_owned());
    assert_eq!(
        seen,
        [
            s(
                "PUT",
                "/-/deprecate/@acme/old",
                r#"{"message":"Use the new one","successor":"@acme/new/thing"}"#
            ),
            s("PUT", "/-/deprecate/@acme/old", r#"{"message":"Gone"}"#),
            s("DELETE", "/-/deprecate/@acme/old", ""),
            s("DELETE", "/-/versions/@acme/old/2.0.0", ""),
        ]
    );
}

/// A 503 with `Retry-After` is "not now": sent again after it, like a publish. A 403 is an
/// answer: printed, one attempt, exit 1.
#[test]
fn a_503_is_retried_after_retry_after_and_a_403_exits_1() {
    let server = scripted(vec![
        error_answer(
            503,
            Some("1"),
            "SERVICE_UNAVAILABLE",
            "Storage is briefly unavailable",
        ),
        ok_answer("@acme/x", Some("1.0.0"), "Yanked @acme/x@1.0.0"),
    ]);
    let started = Instant::now();
    let (code, out) = cli(
        &[],
        &[
            "yank",
            "@acme/x@1.0.0",
            "--reason",
            "r",
            "--url",
            &server.base,
            "--token",
            "t",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("SERVICE_UNAVAILABLE") && out.contains("retrying in 1 s"),
        "{out}"
    );
    assert!(out.contains("Yanked @acme/x@1.0.0"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as told: {out}"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], seen[1], "the same request again");

    let server = scripted(vec![error_answer(
        403,
        None,
        "INSUFFICIENT_PERMISSIONS",
        "Token does not have publish permission for namespace @acme",
    )]);
    let (code, out) = cli(
        &[],
        &[
            "deprecate",
            "@acme/x",
            "--message",
            "m",
            "--url",
            &server.base,
            "--token",
            "read-only",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("deprecate failed: 403 INSUFFICIENT_PERMISSIONS: Token does not have publish permission for namespace @acme"),
        "{out}"
    );
    assert_eq!(server.seen().len(), 1);

    // Still 503 after the last retry: exit 3, as for publish.
    let server = scripted(vec![error_answer(503, Some("1"), "SERVICE_UNAVAILABLE", "busy")]);
    let (code, out) = cli(
        &[],
        &[
            "delete-version",
            "@acme/x@1.0.0",
            "--url",
            &server.base,
            "--token",
            "t",
            "--retries",
            "1",
        ],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("gave up after 2 attempts"), "{out}");
    assert_eq!(server.seen().len(), 2);
}

/// What the server would refuse is refused before anything is sent.
#[test]
fn arguments_are_checked_before_sending() {
    let server = scripted(vec![ok_answer("@acme/x", None, "unexpected")]);
    let url = server.base.clone();
    let long = "x".repeat(501);
    let cases: [(&[&str], i32, &str); 7] = [
        (
            &["yank", "@acme/x@1.0.0", "--reason", &long],
            1,
            "400 INVALID_REQUEST: reason is longer than 500 characters",
        ),
        (
            &["yank", "@acme/x@1.0.0", "--reason", "a\nb"],
            1,
            "INVALID_REQUEST",
        ),
        (
            &["yank", "@acme/x", "--reason", "r"],
            2,
            "is not a version identifier",
        ),
        (
            &["delete-version", "@acme/x@v1"],
            2,
            "is not a version identifier",
        ),
        (
            &["deprecate", "@acme/x@1.0.0", "--message", "m"],
            2,
            "is not a registry identifier",
        ),
        (
            &["deprecate", "@acme/x", "--message", "m", "--successor", "acme/y"],
            1,
            "successor",
        ),
        (&["yank", "@acme/x@1.0.0"], 2, "--reason"),
    ];
    for (args, want, text) in cases {
        let mut all = args.to_vec();
        all.extend(["--url", &url, "--token", "t"]);
        let (code, out) = cli(&[], &all);
        assert_eq!(code, Some(want), "{args:?}: {out}");
        assert!(out.contains(text), "{args:?}: {out}");
    }
    let (code, out) = cli(&[], &["yank", "@acme/x@1.0.0", "--undo", "--url", &url]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no token"), "{out}");
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    for cmd in ["yank", "deprecate", "delete-version"] {
        let (code, out) = cli(&[], &[cmd, "--help"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("--token") && out.contains("RACK_REGISTRY_URL"),
            "{out}"
        );
    }
}
