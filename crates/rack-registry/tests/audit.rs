//! The audit trail (SPEC §6, §10 `AUDIT_LOG_PATH`): one JSON object per line for every publish
//! (success and failure), every 401/403 on reads, and every config reload (accepted or
//! refused); never a token or a token hash. Over HTTP against the real server process.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, Server, World, ADMIN_TOKEN};
use pkg::Upload;
use serde_json::{json, Value};

/// A token whose entry is only its hash (`tokenSha256`), with publish rights.
const HASHED_PUBLISHER: &str = "audit-hashed-publisher-secret-4e1b";
/// Tokens that no entry knows.
const WRONG: &str = "audit-wrong-token-c0ffee";
const COOKIE_SECRET: &str = "audit-cookie-secret-77aa";
const BASIC_SECRET: &str = "audit-basic-secret-19de";
/// Added by a live reload.
const RELOADED: &str = "audit-reloaded-token-a5a5";

use common::sha256_hex;

/// The conformance world's `auth.json` plus a hashed publisher in `@company`.
fn world() -> World {
    let world = World::new();
    let mut auth: Value = serde_json::from_str(&std::fs::read_to_string(world.auth_path()).unwrap()).unwrap();
    auth["@company"].as_array_mut().unwrap().push(json!({
        "tokenSha256": sha256_hex(HASHED_PUBLISHER),
        "mark": "hashed deployer",
        "publish": true
    }));
    std::fs::write(world.auth_path(), serde_json::to_string_pretty(&auth).unwrap()).unwrap();
    world
}

/// Every token and token hash these tests know: the world's tokens (trimmed, except one that
/// an operator also wrote into a mark), the ones above, and the admin token; each with its
/// SHA-256 in both cases.
fn secrets(auth_path: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(auth_path).unwrap()).unwrap();
    let entries: Vec<&Value> = v
        .as_object()
        .unwrap()
        .values()
        .flat_map(|e| match e {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        })
        .collect();
    let field = |name: &'static str| -> Vec<String> {
        entries
            .iter()
            .filter_map(|e| e.get(name).and_then(Value::as_str))
            .map(|s| s.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let marks = field("mark");
    let mut plain: Vec<String> = field("token")
        .into_iter()
        .filter(|t| !marks.iter().any(|m| m.contains(t.as_str())))
        .collect();
    assert!(plain.len() > 10, "world tokens found: {plain:?}");
    plain.extend(
        [
            HASHED_PUBLISHER,
            WRONG,
            COOKIE_SECRET,
            BASIC_SECRET,
            RELOADED,
            ADMIN_TOKEN,
        ]
        .map(str::to_owned),
    );
    let mut all = plain.clone();
    for t in &plain {
        all.push(sha256_hex(t));
        all.push(sha256_hex(t).to_uppercase());
    }
    // Hashes written in the file itself (tokenSha256 entries), in both cases.
    for h in field("tokenSha256") {
        all.push(h.to_lowercase());
        all.push(h.to_uppercase());
    }
    all
}

#[track_caller]
fn assert_no_secrets(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} contains the secret {s:?}:\n{text}"
        );
    }
}

/// Parse every line as one audit object: `timestamp` (RFC 3339, UTC), `type: "audit"`, `event`.
#[track_caller]
fn parse_audit_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Value> {
    lines
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert_eq!(v["type"], "audit", "{l}");
            let ts = v["timestamp"]
                .as_str()
                .unwrap_or_else(|| panic!("no timestamp: {l}"));
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("timestamp {ts:?} ({e}): {l}"));
            assert!(ts.ends_with('Z'), "UTC: {l}");
            assert!(
                ["publish", "access_denied", "config_reload"].contains(&v["event"].as_str().unwrap_or("")),
                "{l}"
            );
            v
        })
        .collect()
}

/// The audit file: every line parsed; the file ends with a newline (no partial line).
fn read_audit_file(path: &Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    let lines = parse_audit_lines(text.lines());
    (text, lines)
}

/// Wait until `events()` holds one that satisfies `pred`.
#[track_caller]
fn await_event(what: &str, events: impl Fn() -> Vec<Value>, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let all = events();
        if let Some(e) = all.iter().find(|e| pred(e)) {
            return e.clone();
        }
        if start.elapsed() > Duration::from_secs(5) {
            panic!("no audit event {what} within 5 s: {all:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET (or HEAD) with optional headers; the status.
fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = client().request(method.parse().unwrap(), server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap().status().as_u16()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Subset match: every field of `want` is in `got` with the same value.
fn has(got: &Value, want: &Value) -> bool {
    want.as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| got.get(k) == Some(v))
}

fn publish(server: &Server, ns: &str, name: &str, token: Option<&str>) -> pkg::Reply {
    let up = Upload::new(pkg::simple(ns, name, "1.0.0"));
    match token {
        Some(t) => up.bearer(t),
        None => up,
    }
    .send(&server.base)
}

#[test]
fn every_event_class_goes_to_the_audit_log_file_as_json_lines() {
    let world = world();
    let audit_path = world.path().join("audit.log");
    let mut env = world.env();
    env.push(("AUDIT_LOG_PATH".into(), audit_path.display().to_string()));
    let server = Server::start(world.path(), &env);
    let secrets = secrets(&world.auth_path());

    // --- Publishes: successes (by a plain token, by a hashed token, by the admin) -------------
    for (name, token) in [
        ("audit-plain", "company-publish-token"),
        ("audit-hashed", HASHED_PUBLISHER),
        ("audit-admin", ADMIN_TOKEN),
    ] {
        let r = publish(&server, "@company", name, Some(token));
        assert_eq!(r.status, 201, "{name}: {}", r.text);
    }
    // --- Publish failures, each with its code (and the namespace when the package named it) ---
    publish(&server, "@company", "audit-reader", Some("company-read-token"))
        .assert_code(403, "INSUFFICIENT_PERMISSIONS");
    publish(&server, "@company", "audit-wrong", Some(WRONG)).assert_code(401, "INVALID_TOKEN");
    publish(
        &server,
        "@company",
        "audit-expired",
        Some("company-expired-token"),
    )
    .assert_code(401, "TOKEN_EXPIRED");
    publish(&server, "@company", "audit-anonymous", None).assert_code(401, "UNAUTHORIZED");
    publish(&server, "@secret", "audit-undeclared", Some(ADMIN_TOKEN))
        .assert_code(403, "NAMESPACE_NOT_ALLOWED");
    publish(&server, "@rack", "audit-anon-ns", Some("company-publish-token"))
        .assert_code(403, "ANONYMOUS_UPLOAD_FORBIDDEN");
    publish(&server, "@company", "audit-plain", Some("company-publish-token"))
        .assert_code(409, "VERSION_EXISTS");
    Upload::new(pkg::simple("@company", "audit-checksum", "1.0.0"))
        .bearer("company-publish-token")
        .checksum(Some(&"0".repeat(64)))
        .send(&server.base)
        .assert_code(400, "CHECKSUM_MISMATCH");

    // --- Reads: allowed ones leave no trace; every 401/403 does --------------------------------
    assert_eq!(
        request(
            &server,
            "GET",
            "/registries/@company/core",
            &[("Authorization", &bearer("company-read-token"))]
        ),
        200
    );
    assert_eq!(
        request(&server, "GET", "/registries/@rack/build/rollup", &[]),
        200
    );
    assert_eq!(
        request(
            &server,
            "GET",
            "/namespaces",
            &[("Authorization", &bearer(WRONG))]
        ),
        200
    );
    let denied = [
        (
            "GET",
            "/registries/@company/core",
            None,
            401,
            "UNAUTHORIZED",
            "@company",
        ),
        (
            "GET",
            "/registries/@company/core",
            Some(WRONG),
            401,
            "INVALID_TOKEN",
            "@company",
        ),
        (
            "GET",
            "/registries/@company/core/versions",
            Some("company-expired-token"),
            401,
            "TOKEN_EXPIRED",
            "@company",
        ),
        (
            "GET",
            "/registries/@company/core/1.0.0",
            Some("other-read-token"),
            401,
            "INVALID_TOKEN",
            "@company",
        ),
        (
            "HEAD",
            "/registries/@company/core/1.0.0/files/templates/index.js",
            None,
            401,
            "UNAUTHORIZED",
            "@company",
        ),
        (
            "GET",
            "/registries/@secret/tool",
            Some(ADMIN_TOKEN),
            403,
            "FORBIDDEN_NAMESPACE",
            "@secret",
        ),
        (
            "GET",
            "/registries/@badexpiry/tool",
            Some("badexpiry-good-token"),
            403,
            "FORBIDDEN_NAMESPACE",
            "@badexpiry",
        ),
        (
            "GET",
            "/namespaces/@secret/registries",
            None,
            403,
            "FORBIDDEN_NAMESPACE",
            "@secret",
        ),
        (
            "GET",
            "/namespaces/@company/registries",
            Some(WRONG),
            401,
            "INVALID_TOKEN",
            "@company",
        ),
    ];
    for (method, path, token, status, _, _) in denied {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        assert_eq!(
            request(&server, method, path, &headers),
            status,
            "{method} {path}"
        );
    }

    // --- Config reloads: one accepted, one refused ---------------------------------------------
    let events = || read_audit_file(&audit_path).1;
    let mut auth: Value = serde_json::from_str(&std::fs::read_to_string(world.auth_path()).unwrap()).unwrap();
    auth["@company"]
        .as_array_mut()
        .unwrap()
        .push(json!({"token": RELOADED, "mark": "reloaded"}));
    std::fs::write(world.auth_path(), serde_json::to_string_pretty(&auth).unwrap()).unwrap();
    await_event("config_reload accepted", events, |e| {
        has(
            e,
            &json!({"event": "config_reload", "file": "auth", "outcome": "accepted"}),
        )
    });
    assert_eq!(
        request(
            &server,
            "GET",
            "/registries/@company/core",
            &[("Authorization", &bearer(RELOADED))]
        ),
        200
    );
    let tmp = world.path().join("auth.json.new");
    std::fs::write(&tmp, format!("[{{\"@company\": [{{\"token\": \"{WRONG}\"}}]}}]")).unwrap();
    std::fs::rename(&tmp, world.auth_path()).unwrap();
    let refused = await_event("config_reload refused", events, |e| {
        has(
            e,
            &json!({"event": "config_reload", "file": "auth", "outcome": "refused"}),
        )
    });
    assert!(
        refused["reason"].as_str().unwrap_or("").contains("array"),
        "{refused}"
    );

    // --- What the file says ---------------------------------------------------------------------
    let (text, lines) = read_audit_file(&audit_path);
    let publishes: Vec<&Value> = lines.iter().filter(|e| e["event"] == "publish").collect();
    for (name, by) in [
        ("audit-plain", "CI publish"),
        ("audit-hashed", "hashed deployer"),
        ("audit-admin", "admin"),
    ] {
        let e = publishes
            .iter()
            .find(|e| e["outcome"] == "success" && e["name"] == name)
            .unwrap_or_else(|| panic!("no publish success of {name}: {text}"));
        assert!(
            has(
                e,
                &json!({"namespace": "@company", "version": "1.0.0", "client": "127.0.0.1"})
            ),
            "{e}"
        );
        assert!(
            e["by"].as_str().unwrap_or("").contains(by),
            "by names {by:?}: {e}"
        );
    }
    assert_eq!(
        publishes.iter().filter(|e| e["outcome"] == "success").count(),
        3,
        "{text}"
    );
    for want in [
        json!({"code": "INSUFFICIENT_PERMISSIONS", "namespace": "@company", "name": "audit-reader", "version": "1.0.0"}),
        json!({"code": "INVALID_TOKEN", "namespace": "@company", "name": "audit-wrong"}),
        json!({"code": "TOKEN_EXPIRED", "namespace": "@company", "name": "audit-expired"}),
        json!({"code": "UNAUTHORIZED"}),
        json!({"code": "NAMESPACE_NOT_ALLOWED", "namespace": "@secret", "name": "audit-undeclared"}),
        json!({"code": "ANONYMOUS_UPLOAD_FORBIDDEN", "namespace": "@rack", "name": "audit-anon-ns"}),
        json!({"code": "VERSION_EXISTS", "namespace": "@company", "name": "audit-plain"}),
        json!({"code": "CHECKSUM_MISMATCH"}),
    ] {
        let mut want = want;
        want["outcome"] = json!("failure");
        want["client"] = json!("127.0.0.1");
        assert!(
            publishes.iter().any(|e| has(e, &want)),
            "no publish failure {want}:\n{text}"
        );
    }
    assert_eq!(publishes.len(), 3 + 8, "one publish event per upload:\n{text}");

    let access: Vec<(String, String)> = lines
        .iter()
        .filter(|e| e["event"] == "access_denied")
        .map(|e| {
            assert_eq!(e["client"], "127.0.0.1", "{e}");
            (
                e["code"].as_str().unwrap_or("").to_owned(),
                e["namespace"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = denied
        .iter()
        .map(|(_, _, _, _, code, ns)| (code.to_string(), ns.to_string()))
        .collect();
    assert_eq!(
        access, expected,
        "one access_denied per refused read, in order:\n{text}"
    );

    // Nothing of this went to stdout, and nothing anywhere holds a secret.
    let output = server.output();
    assert!(
        !output.contains("\"type\":\"audit\""),
        "audit lines on stdout:\n{output}"
    );
    assert_no_secrets("the audit log", &text, &secrets);
    assert_no_secrets("the server output", &output, &secrets);
}

/// Every refused upload is a publish failure in the audit log, including one refused at check 1
/// (not multipart) before anything else is known (the metrics count it as a failure too).
#[test]
fn an_upload_that_is_not_multipart_is_audited_as_a_publish_failure() {
    let world = world();
    let audit_path = world.path().join("audit.log");
    let mut env = world.env();
    env.push(("AUDIT_LOG_PATH".into(), audit_path.display().to_string()));
    let server = Server::start(world.path(), &env);
    let r = pkg::send(
        pkg::client()
            .post(server.url("/registries"))
            .bearer_auth("company-publish-token")
            .header("Content-Type", "application/json")
            .body("{}"),
    );
    r.assert_code(415, "UNSUPPORTED_MEDIA_TYPE");
    let e = await_event(
        "publish failure UNSUPPORTED_MEDIA_TYPE",
        || read_audit_file(&audit_path).1,
        |e| e["event"] == "publish",
    );
    assert!(
        has(
            &e,
            &json!({"outcome": "failure", "code": "UNSUPPORTED_MEDIA_TYPE", "client": "127.0.0.1"})
        ),
        "{e}"
    );
    assert_no_secrets(
        "the audit log",
        &read_audit_file(&audit_path).0,
        &secrets(&world.auth_path()),
    );
}

#[test]
fn without_audit_log_path_audit_lines_go_to_stdout() {
    let world = world();
    let server = Server::world(&world);
    let secrets = secrets(&world.auth_path());
    assert_eq!(
        request(
            &server,
            "GET",
            "/registries/@company/core",
            &[("X-Registry-Token", WRONG)]
        ),
        401
    );
    let r = publish(&server, "@company", "audit-stdout", Some(HASHED_PUBLISHER));
    assert_eq!(r.status, 201, "{}", r.text);
    let audit_lines = || {
        let output = server.output();
        let lines: Vec<String> = output
            .lines()
            .filter(|l| l.contains("\"type\":\"audit\""))
            .map(str::to_owned)
            .collect();
        parse_audit_lines(lines.iter().map(String::as_str))
    };
    await_event("access_denied", audit_lines, |e| {
        has(
            e,
            &json!({"event": "access_denied", "code": "INVALID_TOKEN", "namespace": "@company"}),
        )
    });
    let e = await_event("publish", audit_lines, |e| {
        has(
            e,
            &json!({"event": "publish", "outcome": "success", "name": "audit-stdout"}),
        )
    });
    assert!(e["by"].as_str().unwrap_or("").contains("hashed deployer"), "{e}");
    assert_no_secrets("the server output", &server.output(), &secrets);
}

#[test]
fn credentials_are_never_logged_at_any_level() {
    let world = world();
    let audit_path = world.path().join("audit.log");
    let mut env = world.env();
    env.push(("LOG_LEVEL".into(), "trace".into()));
    env.push(("AUDIT_LOG_PATH".into(), audit_path.display().to_string()));
    let server = Server::start(world.path(), &env);
    let secrets = secrets(&world.auth_path());
    let basic = format!("Basic {BASIC_SECRET}");
    let cookie = format!("session={COOKIE_SECRET}");
    for token in [
        "company-read-token",
        "company-publish-token",
        WRONG,
        ADMIN_TOKEN,
        HASHED_PUBLISHER,
    ] {
        let b = bearer(token);
        for headers in [
            vec![("Authorization", b.as_str())],
            vec![("X-Registry-Token", token)],
            vec![("Authorization", basic.as_str()), ("X-Registry-Token", token)],
            vec![("Cookie", cookie.as_str()), ("Authorization", b.as_str())],
        ] {
            for path in [
                "/registries/@company/core",
                "/namespaces",
                "/registries/@secret/tool",
            ] {
                request(&server, "GET", path, &headers);
            }
        }
        publish(&server, "@company", "never-logged", Some(token));
    }
    // Let the last lines reach the pipes and the file.
    std::thread::sleep(Duration::from_millis(300));
    let (text, lines) = read_audit_file(&audit_path);
    assert!(lines.len() >= 10, "{text}");
    assert_no_secrets("the audit log", &text, &secrets);
    assert_no_secrets("the server output", &server.output(), &secrets);
}
