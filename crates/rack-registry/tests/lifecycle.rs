//! Version lifecycle (SPEC §18) over HTTP, against a real server: on disk, and on a bucket with
//! `RACK_TEST_TARGET=s3` (the same tests; CI runs both). Two replicas racing on one bucket are
//! in `replicas_racing_yanks_and_unyanks_lose_nothing` (needs an S3 server).
//!
//! Every refusal is checked to change nothing: the lifecycle document and `versions.json` are
//! read back after it.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

fn publish(base: &str, name: &str, version: &str) -> pkg::Reply {
    pkg::Upload::new(pkg::simple("@company", name, version))
        .bearer(PUBLISH)
        .send(base)
}

/// A management request: `(status, headers, JSON body)`.
fn manage(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = common::client();
    let mut req = client.request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, json)
}

fn read(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let res = common::client()
        .get(format!("{base}{path}"))
        .bearer_auth(READ)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().unwrap().to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

fn listed(base: &str, registry: &str) -> Vec<String> {
    let (status, _, body) = read(base, &format!("/registries/{registry}/versions"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_value(json_of(&body)["versions"].clone()).unwrap()
}

fn lifecycle(base: &str, registry: &str) -> Value {
    let (status, _, body) = read(base, &format!("/-/lifecycle/{registry}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    json_of(&body)
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn a_yanked_version_leaves_the_listing_stays_readable_and_comes_back_when_unyanked() {
    let world = World::new();
    let server = Server::world(&world);
    let base = &server.base;
    let reg = "@company/build/lc";
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        assert_eq!(publish(base, "lc", v).status, 201);
    }
    assert_eq!(listed(base, reg), ["2.0.0", "1.1.0", "1.0.0"]);

    let (status, _, body) = manage(
        base,
        "PUT",
        "/-/yank/@company/build/lc/2.0.0",
        Some(PUBLISH),
        Some(json!({"reason": "broken template: ünïcode kept"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["registry"], reg);
    assert_eq!(body["version"], "2.0.0");
    assert_eq!(body["changed"], true);
    assert_eq!(body["message"], "Yanked @company/build/lc@2.0.0");
    let y = &body["lifecycle"]["yanked"]["2.0.0"];
    assert_eq!(y["reason"], "broken template: ünïcode kept");
    assert_eq!(y["by"], "CI publish", "the token's mark");

    // Out of the listing, so the latest (what `rk add @company/build/lc` resolves) is 1.1.0.
    assert_eq!(listed(base, reg), ["1.1.0", "1.0.0"]);
    let (status, h, latest) = read(base, "/registries/@company/build/lc");
    assert_eq!(status, 200);
    assert_eq!(json_of(&latest)["version"], "1.1.0");
    assert!(header(&h, "x-rack-yanked").is_none());
    // Pinned: still served, with the reason.
    let (status, h, pinned) = read(base, "/registries/@company/build/lc/2.0.0");
    assert_eq!(status, 200);
    assert_eq!(json_of(&pinned)["version"], "2.0.0");
    assert_eq!(
        h.get("x-rack-yanked").unwrap().as_bytes(),
        "broken template: ünïcode kept".as_bytes()
    );
    let (status, h, _) = read(base, "/registries/@company/build/lc/2.0.0/files/templates/a.txt");
    assert_eq!(status, 200);
    assert!(h.get("x-rack-yanked").is_some(), "a file of a yanked version too");
    // A 304 of the pinned version keeps the header.
    let etag = header(&h, "etag").unwrap().to_owned();
    let res = common::client()
        .get(format!(
            "{base}/registries/@company/build/lc/2.0.0/files/templates/a.txt"
        ))
        .bearer_auth(READ)
        .header("if-none-match", etag)
        .send()
        .unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.headers().get("x-rack-yanked").is_some());

    // Never published again, in any spelling of equal precedence.
    publish(base, "lc", "2.0.0").assert_error(
        409,
        "VERSION_EXISTS",
        "Registry @company/build/lc@2.0.0 already exists",
    );
    publish(base, "lc", "2.0.0+rebuild").assert_code(409, "VERSION_EXISTS");
    // Yanking again with the same reason changes nothing (and fires nothing).
    let (status, _, body) = manage(
        base,
        "PUT",
        "/-/yank/@company/build/lc/2.0.0",
        Some(PUBLISH),
        Some(json!({"reason": "broken template: ünïcode kept"})),
    );
    assert_eq!((status, &body["changed"]), (200, &json!(false)));

    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/yank/@company/build/lc/2.0.0",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Unyanked @company/build/lc@2.0.0");
    assert_eq!(body["lifecycle"]["yanked"], json!({}));
    assert_eq!(listed(base, reg), ["2.0.0", "1.1.0", "1.0.0"]);
    let (_, h, latest) = read(base, "/registries/@company/build/lc");
    assert_eq!(json_of(&latest)["version"], "2.0.0");
    let (_, h2, _) = read(base, "/registries/@company/build/lc/2.0.0");
    assert!(header(&h, "x-rack-yanked").is_none() && header(&h2, "x-rack-yanked").is_none());

    // Every version yanked: no latest.
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        let path = format!("/-/yank/@company/build/lc/{v}");
        let (status, _, _) = manage(
            base,
            "PUT",
            &path,
            Some(PUBLISH),
            Some(json!({"reason": "all bad"})),
        );
        assert_eq!(status, 200);
    }
    assert!(listed(base, reg).is_empty());
    let (status, _, body) = read(base, "/registries/@company/build/lc");
    assert_eq!(status, 404);
    assert_eq!(json_of(&body)["message"], "No versions available");
    // The audit trail names each change and who made it.
    let out = server.output();
    assert!(
        out.lines()
            .any(|l| l.contains("\"version.yanked\"") && l.contains("CI publish")),
        "{out}"
    );
    assert!(out
        .lines()
        .any(|l| l.contains("\"version.unyanked\"") && l.contains("\"admin\"")));
}

#[test]
fn a_deprecated_registry_says_so_on_every_read_until_undeprecated() {
    let world = World::new();
    let server = Server::world(&world);
    let base = &server.base;
    assert_eq!(publish(base, "old", "1.0.0").status, 201);
    // No document yet: the default one.
    assert_eq!(
        lifecycle(base, "@company/build/old"),
        json!({"yanked": {}, "deprecated": null, "deleted": {}})
    );
    let (status, _, body) = manage(
        base,
        "PUT",
        "/-/deprecate/@company/build/old",
        Some(PUBLISH),
        Some(json!({"message": "use new instead", "successor": "@company/build/new"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Deprecated @company/build/old");
    assert!(body.get("version").is_none());
    let at = body["lifecycle"]["deprecated"]["at"].as_str().unwrap().to_owned();
    let secs = time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    for path in [
        "/registries/@company/build/old",
        "/registries/@company/build/old/versions",
        "/registries/@company/build/old/1.0.0",
        "/registries/@company/build/old/1.0.0/files/templates/a.txt",
    ] {
        let (status, h, _) = read(base, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&h, "deprecation"),
            Some(format!("@{secs}").as_str()),
            "{path}"
        );
        assert_eq!(
            header(&h, "link"),
            Some("</registries/@company/build/new>; rel=\"successor-version\""),
            "{path}"
        );
    }
    let doc = lifecycle(base, "@company/build/old");
    assert_eq!(doc["deprecated"]["message"], "use new instead");
    assert_eq!(doc["deprecated"]["by"], "CI publish");

    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/deprecate/@company/build/old",
        Some(PUBLISH),
        None,
    );
    assert_eq!((status, &body["changed"]), (200, &json!(true)));
    let (_, h, _) = read(base, "/registries/@company/build/old");
    assert!(header(&h, "deprecation").is_none() && header(&h, "link").is_none());
    // Undeprecating again: nothing to do.
    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/deprecate/@company/build/old",
        Some(PUBLISH),
        None,
    );
    assert_eq!((status, &body["changed"]), (200, &json!(false)));
    // A registry that does not exist has no lifecycle.
    let (status, _, body) = read(base, "/-/lifecycle/@company/build/nothing-here");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_deleted_version_is_gone_for_good_and_only_the_admin_may_delete() {
    let world = World::new();
    let server = Server::world(&world);
    let base = &server.base;
    for v in ["1.0.0", "1.1.0"] {
        assert_eq!(publish(base, "gone", v).status, 201);
    }
    // A publish token may yank, not delete.
    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/versions/@company/build/gone/1.1.0",
        Some(PUBLISH),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_PERMISSIONS");
    assert_eq!(listed(base, "@company/build/gone"), ["1.1.0", "1.0.0"]);

    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/versions/@company/build/gone/1.1.0",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Deleted @company/build/gone@1.1.0");
    assert_eq!(body["lifecycle"]["deleted"]["1.1.0"]["by"], "admin");
    for path in [
        "/registries/@company/build/gone/1.1.0",
        "/registries/@company/build/gone/1.1.0/files/templates/a.txt",
    ] {
        let (status, _, body) = read(base, path);
        assert_eq!(status, 410, "{path}");
        let body = json_of(&body);
        assert_eq!(body["code"], "VERSION_DELETED");
        assert_eq!(body["message"], "Registry @company/build/gone@1.1.0 was deleted");
    }
    assert_eq!(listed(base, "@company/build/gone"), ["1.0.0"]);
    let (_, _, latest) = read(base, "/registries/@company/build/gone");
    assert_eq!(json_of(&latest)["version"], "1.0.0");
    // Never again, whoever asks.
    publish(base, "gone", "1.1.0").assert_error(
        409,
        "VERSION_EXISTS",
        "Registry @company/build/gone@1.1.0 already exists",
    );
    let (status, _, body) = manage(
        base,
        "PUT",
        "/-/yank/@company/build/gone/1.1.0",
        Some(PUBLISH),
        Some(json!({"reason": "x"})),
    );
    assert_eq!((status, body["code"].as_str()), (410, Some("VERSION_DELETED")));
    // Deleting again finishes an interrupted deletion, and changes nothing else.
    let (status, _, body) = manage(
        base,
        "DELETE",
        "/-/versions/@company/build/gone/1.1.0",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!((status, &body["changed"]), (200, &json!(false)));
    // The files and the integrity record are gone; storage check finds nothing wrong.
    let storage = world.storage();
    if !storage.join("@company/build/gone/1.0.0").is_dir() {
        // On a bucket (the local directory is only the seed): ask the bucket.
    } else {
        assert!(!storage.join("@company/build/gone/1.1.0").exists());
        assert!(!storage
            .join(".rack/integrity/@company/build/gone/1.1.0.json")
            .exists());
    }
    let (code, out) = common::run_cli(world.path(), &world.env(), &["storage", "check", "--deep"]);
    let about: Vec<&str> = out.lines().filter(|l| l.contains("/gone")).collect();
    assert!(about.is_empty(), "storage check: {code:?} {out}");
    let out = server.output();
    assert!(out.lines().any(|l| l.contains("\"version.deleted\"")), "{out}");
}

/// method, path, token, body, expected status and code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<Value>, u16, &'a str);

#[test]
fn refused_changes_change_nothing() {
    let world = World::new();
    let server = Server::world(&world);
    let base = &server.base;
    assert_eq!(publish(base, "guarded", "1.0.0").status, 201);
    let yank = "/-/yank/@company/build/guarded/1.0.0";
    let body = || Some(json!({"reason": "r"}));
    let cases: Vec<Case> = vec![
        ("PUT", yank, None, body(), 401, "UNAUTHORIZED"),
        ("PUT", yank, Some(READ), body(), 403, "INSUFFICIENT_PERMISSIONS"),
        (
            "PUT",
            yank,
            Some("other-read-token"),
            body(),
            401,
            "INVALID_TOKEN",
        ),
        (
            "PUT",
            yank,
            Some("company-expired-token"),
            body(),
            401,
            "TOKEN_EXPIRED",
        ),
        (
            "DELETE",
            "/-/deprecate/@company/build/guarded",
            Some(READ),
            None,
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
        (
            "DELETE",
            "/-/versions/@company/build/guarded/1.0.0",
            None,
            None,
            401,
            "UNAUTHORIZED",
        ),
        // An anonymous namespace takes only the admin token; an undeclared one nobody's.
        (
            "PUT",
            "/-/yank/@rack/build/vite/1.0.0",
            Some(PUBLISH),
            body(),
            403,
            "ANONYMOUS_UPLOAD_FORBIDDEN",
        ),
        (
            "PUT",
            "/-/yank/@nowhere/x/1.0.0",
            Some(ADMIN_TOKEN),
            body(),
            403,
            "NAMESPACE_NOT_ALLOWED",
        ),
        // Bodies: validated and bounded.
        (
            "PUT",
            yank,
            Some(PUBLISH),
            Some(json!({"why": "r"})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "PUT",
            yank,
            Some(PUBLISH),
            Some(json!({"reason": ""})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "PUT",
            yank,
            Some(PUBLISH),
            Some(json!({"reason": "a\u{7}b"})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "PUT",
            yank,
            Some(PUBLISH),
            Some(json!({"reason": "x".repeat(501)})),
            400,
            "INVALID_REQUEST",
        ),
        (
            "PUT",
            yank,
            Some(PUBLISH),
            Some(json!({"reason": "x".repeat(9000)})),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "PUT",
            "/-/deprecate/@company/build/guarded",
            Some(PUBLISH),
            Some(json!({"message": "m", "successor": "not/an/identifier"})),
            400,
            "INVALID_REQUEST",
        ),
        // What does not exist.
        (
            "PUT",
            "/-/yank/@company/build/guarded/9.9.9",
            Some(PUBLISH),
            body(),
            404,
            "NOT_FOUND",
        ),
        (
            "PUT",
            "/-/deprecate/@company/build/nothing",
            Some(PUBLISH),
            Some(json!({"message": "m"})),
            404,
            "NOT_FOUND",
        ),
        (
            "PUT",
            "/-/yank/@company/build/guarded",
            Some(PUBLISH),
            body(),
            400,
            "INVALID_PATH",
        ),
        ("GET", yank, Some(PUBLISH), None, 405, "METHOD_NOT_ALLOWED"),
    ];
    for (method, path, token, body, status, code) in cases {
        let (got, headers, reply) = manage(base, method, path, token, body);
        assert_eq!(
            (got, reply["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {token:?}: {reply}"
        );
        if status == 405 {
            assert_eq!(header(&headers, "allow"), Some("PUT, DELETE"));
        }
    }
    assert_eq!(
        lifecycle(base, "@company/build/guarded"),
        json!({"yanked": {}, "deprecated": null, "deleted": {}}),
        "nothing changed"
    );
    assert_eq!(listed(base, "@company/build/guarded"), ["1.0.0"]);
    // The audit trail has the refusals.
    assert!(server.output().contains("access_denied"));
}

#[test]
fn a_gated_lifecycle_document_needs_a_read_token() {
    let world = World::new();
    let server = Server::world(&world);
    let base = &server.base;
    assert_eq!(publish(base, "gated", "1.0.0").status, 201);
    let res = common::client()
        .get(format!("{base}/-/lifecycle/@company/build/gated"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = common::client()
        .get(format!("{base}/-/lifecycle/@company/build/gated"))
        .bearer_auth(READ)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "cache-control"),
        Some("private, max-age=60"),
        "a gated namespace's document is for the client's own cache only"
    );
}

/// Requests a webhook receiver got: their JSON bodies.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().unwrap().push(v);
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn every_change_fires_its_webhook_event() {
    let world = World::new();
    let (url, got) = receiver();
    let events = [
        "version.yanked",
        "version.unyanked",
        "registry.deprecated",
        "registry.undeprecated",
        "version.deleted",
    ];
    let hooks = json!({"webhooks": [{"url": url, "secret": "s3cret", "events": events, "enabled": true}]});
    let path = world.path().join("config/webhooks.json");
    std::fs::write(&path, hooks.to_string()).unwrap();
    let env = world.env_with(&[("WEBHOOK_CONFIG_PATH", path.to_str().unwrap())]);
    let server = Server::start(world.path(), &env);
    let base = &server.base;
    assert_eq!(publish(base, "hooked", "1.0.0").status, 201);
    let v = "/-/yank/@company/build/hooked/1.0.0";
    assert_eq!(
        manage(base, "PUT", v, Some(PUBLISH), Some(json!({"reason": "bad"}))).0,
        200
    );
    assert_eq!(manage(base, "DELETE", v, Some(PUBLISH), None).0, 200);
    let r = "/-/deprecate/@company/build/hooked";
    let msg = json!({"message": "moved", "successor": "@company/build/next"});
    assert_eq!(manage(base, "PUT", r, Some(PUBLISH), Some(msg)).0, 200);
    assert_eq!(manage(base, "DELETE", r, Some(PUBLISH), None).0, 200);
    let d = "/-/versions/@company/build/hooked/1.0.0";
    assert_eq!(manage(base, "DELETE", d, Some(ADMIN_TOKEN), None).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = got.lock().unwrap().clone();
    let mut names: Vec<&str> = got.iter().map(|e| e["event"].as_str().unwrap()).collect();
    names.sort();
    let mut want = events.to_vec();
    want.sort();
    assert_eq!(names, want, "{got:?}");
    let yanked = got.iter().find(|e| e["event"] == "version.yanked").unwrap();
    assert_eq!(yanked["path"], "@company/build/hooked/1.0.0");
    assert_eq!(
        (yanked["reason"].as_str(), yanked["by"].as_str()),
        (Some("bad"), Some("CI publish"))
    );
    let deprecated = got.iter().find(|e| e["event"] == "registry.deprecated").unwrap();
    assert_eq!(deprecated["path"], "@company/build/hooked");
    assert!(deprecated.get("version").is_none());
    assert_eq!(deprecated["successor"], "@company/build/next");
    // No publish event was subscribed to: none was sent.
    assert!(got.iter().all(|e| e["event"] != "uploaded"));
}

/// Two replicas on one bucket: one yanks and unyanks a version over and over while the other
/// does the opposite and also yanks other versions. The end state is consistent (the version
/// is listed exactly when the document says it is not yanked) and no other yank is lost.
#[test]
fn replicas_racing_yanks_and_unyanks_lose_nothing() {
    let Some(bucket) = common::s3::Bucket::new() else {
        return;
    };
    let world = World::new();
    let a = Server::start(world.path(), &world.env_on_bucket(&bucket));
    let b = Server::start(world.path(), &world.env_on_bucket(&bucket));
    let versions: Vec<String> = (0..9).map(|i| format!("1.0.{i}")).collect();
    for v in &versions {
        assert_eq!(publish(&a.base, "race", v).status, 201);
    }
    let contested = "/-/yank/@company/build/race/1.0.0";
    let (base_a, base_b) = (a.base.clone(), b.base.clone());
    let flipper = std::thread::spawn(move || {
        for i in 0..12 {
            let method = if i % 2 == 0 { "PUT" } else { "DELETE" };
            let body = (method == "PUT").then(|| json!({"reason": "from A"}));
            assert_eq!(manage(&base_a, method, contested, Some(PUBLISH), body).0, 200);
        }
    });
    let others: Vec<String> = versions[1..].to_vec();
    let other_thread = std::thread::spawn(move || {
        for (i, v) in others.iter().enumerate() {
            let method = if i % 2 == 0 { "DELETE" } else { "PUT" };
            let body = (method == "PUT").then(|| json!({"reason": "from B"}));
            assert_eq!(manage(&base_b, method, contested, Some(ADMIN_TOKEN), body).0, 200);
            let path = format!("/-/yank/@company/build/race/{v}");
            assert_eq!(
                manage(
                    &base_b,
                    "PUT",
                    &path,
                    Some(ADMIN_TOKEN),
                    Some(json!({"reason": "other"}))
                )
                .0,
                200
            );
        }
    });
    flipper.join().unwrap();
    other_thread.join().unwrap();
    // Read where neither cached anything: a third replica.
    let c = Server::start(world.path(), &world.env_on_bucket(&bucket));
    let doc = lifecycle(&c.base, "@company/build/race");
    let yanked = doc["yanked"].as_object().unwrap();
    for v in &versions[1..] {
        assert_eq!(yanked[v.as_str()]["reason"], "other", "{v}: {doc}");
    }
    let contested_yanked = yanked.contains_key("1.0.0");
    let listing = listed(&c.base, "@company/build/race");
    assert_eq!(
        listing.contains(&"1.0.0".to_owned()),
        !contested_yanked,
        "listing {listing:?} against {doc}"
    );
    assert_eq!(listing.len(), usize::from(!contested_yanked));
}

/// The replica that yanks shows it at once; another replica on the bucket within its
/// revalidation interval (`STORAGE_REVALIDATE_MS`), caches warm on both.
#[test]
fn other_replicas_see_a_change_within_their_revalidation_interval() {
    let Some(bucket) = common::s3::Bucket::new() else {
        return;
    };
    let world = World::new();
    let mut env = world.env_on_bucket(&bucket);
    env.push(("STORAGE_REVALIDATE_MS".into(), "1500".into()));
    let a = Server::start(world.path(), &env);
    let b = Server::start(world.path(), &env);
    for v in ["1.0.0", "2.0.0"] {
        assert_eq!(publish(&a.base, "seen", v).status, 201);
    }
    let latest = |base: &str| {
        let (status, _, body) = read(base, "/registries/@company/build/seen");
        assert_eq!(status, 200);
        json_of(&body)["version"].as_str().unwrap().to_owned()
    };
    let yanked_header = |base: &str| {
        let (_, h, _) = read(base, "/registries/@company/build/seen/2.0.0");
        h.get("x-rack-yanked").is_some()
    };
    // Warm both replicas' caches.
    for _ in 0..3 {
        assert_eq!(latest(&a.base), "2.0.0");
        assert_eq!(latest(&b.base), "2.0.0");
        assert!(!yanked_header(&b.base));
    }
    let path = "/-/yank/@company/build/seen/2.0.0";
    assert_eq!(
        manage(&a.base, "PUT", path, Some(PUBLISH), Some(json!({"reason": "r"}))).0,
        200
    );
    let changed_at = Instant::now();
    assert_eq!(latest(&a.base), "1.0.0", "at once on the replica that yanked");
    assert!(yanked_header(&a.base));
    while latest(&b.base) != "1.0.0" || !yanked_header(&b.base) {
        assert!(
            changed_at.elapsed() < Duration::from_millis(1500) + Duration::from_secs(3),
            "replica B still serves the old state after {:?}",
            changed_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CLI against the real server: yank, undo, deprecate, delete-version.
#[test]
fn the_cli_commands_change_the_state_on_a_real_server() {
    let world = World::new();
    let server = Server::world(&world);
    let base = server.base.clone();
    assert_eq!(publish(&base, "cli", "1.0.0").status, 201);
    assert_eq!(publish(&base, "cli", "1.1.0").status, 201);
    let env: Vec<(String, String)> = Vec::new();
    let run = |token: &str, args: &[&str]| {
        let mut all = vec!["--url", base.as_str(), "--token", token];
        all.splice(0..0, args.iter().copied());
        common::run_cli(world.path(), &env, &all)
    };
    let (code, out) = run(
        PUBLISH,
        &["yank", "@company/build/cli@1.1.0", "--reason", "broken"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Yanked @company/build/cli@1.1.0"), "{out}");
    assert_eq!(listed(&base, "@company/build/cli"), ["1.0.0"]);
    let (code, out) = run(PUBLISH, &["yank", "@company/build/cli@1.1.0", "--undo"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(listed(&base, "@company/build/cli"), ["1.1.0", "1.0.0"]);
    let (code, out) = run(
        PUBLISH,
        &[
            "deprecate",
            "@company/build/cli",
            "--message",
            "moved",
            "--successor",
            "@company/build/next",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        lifecycle(&base, "@company/build/cli")["deprecated"]["successor"],
        "@company/build/next"
    );
    // A publish token cannot delete: exit 1, nothing deleted.
    let (code, out) = run(PUBLISH, &["delete-version", "@company/build/cli@1.0.0"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("INSUFFICIENT_PERMISSIONS"), "{out}");
    assert_eq!(listed(&base, "@company/build/cli"), ["1.1.0", "1.0.0"]);
    let (code, out) = run(ADMIN_TOKEN, &["delete-version", "@company/build/cli@1.0.0"]);
    assert_eq!(code, Some(0), "{out}");
    let (status, _, _) = read(&base, "/registries/@company/build/cli/1.0.0");
    assert_eq!(status, 410);
}
