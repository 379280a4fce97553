//! Worker-only behaviour (SPEC §11.6), over HTTP against `crates/rack-worker/serve-local`
//! (workerd through miniflare): what the conformance cases cannot say because the server
//! differs or because it needs a broken bucket or the passing of time.
//!
//! Skipped (loudly) without Node and `npm ci` in `crates/rack-worker`, unless
//! `RACK_REQUIRE_WORKER=1` (CI). See `common/worker.rs`.

mod common;
#[path = "common/http.rs"]
mod raw_http;

use std::time::{Duration, Instant};

use common::{worker, World};
use raw_http::{RawClient, RawResponse};
use serde_json::Value;

fn error_of(r: &RawResponse) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_text()));
    (
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn assert_json_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body_text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.header("content-type")
    );
    assert_eq!(error_of(r).0, code);
}

#[test]
fn other_methods_are_405_json() {
    if !worker::available() {
        return;
    }
    let world = World::new();
    let server = worker::start(world.path(), &world.local_env());
    let client = RawClient::new(&server.base);
    let paths = [
        "/registries/@rack/build/rollup",
        "/registries/@rack/build/rollup/versions",
        "/presets/web",
        "/schemas/rack.json",
        "/namespaces",
        "/namespaces/@rack/registries",
        "/health",
    ];
    for path in paths {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = client.request(method, path, &[]).unwrap();
            assert_json_error(&r, 405, "METHOD_NOT_ALLOWED");
            assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"), "{method} {path}");
        }
    }
    // No uploads and no metrics at the edge: not routes there.
    for method in ["POST", "GET", "PUT"] {
        for path in ["/registries", "/metrics"] {
            let r = client.request(method, path, &[]).unwrap();
            assert_json_error(&r, 404, "NOT_FOUND");
        }
    }
    // The same paths read fine with GET.
    let r = client
        .request("GET", "/namespaces/@rack/registries", &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn bucket_errors_are_500_json() {
    if !worker::available() {
        return;
    }
    let world = World::new();
    let mut env = world.local_env();
    // Test-only knob of serve-local: every R2 read fails after seeding.
    env.push(("RACK_WORKER_TEST_FAULT".into(), "bucket-errors".into()));
    let server = worker::start(world.path(), &env);
    let client = RawClient::new(&server.base);
    for path in [
        "/registries/@rack/build/rollup/1.0.0",
        "/registries/@rack/build/rollup",
        "/presets/web",
        "/namespaces/@rack/registries",
    ] {
        let r = client.request("GET", path, &[]).unwrap();
        assert_json_error(&r, 500, "INTERNAL_SERVER_ERROR");
        assert_eq!(error_of(&r).1, "Internal server error", "{path}: no detail leaks");
    }
    let r = client.request("GET", "/health", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["checks"]["storage"]["error"], "storage marker unreadable");
}

#[test]
fn namespace_index_answers_listings() {
    if !worker::available() {
        return;
    }
    let world = World::new();
    // An index that lists less than the walk would find: the Worker must answer from it.
    std::fs::write(
        world.storage().join("@anon/.registries.json"),
        "{\"registries\":[\"kit\"]}\n",
    )
    .unwrap();
    let server = worker::start(world.path(), &world.local_env());
    let client = RawClient::new(&server.base);
    let r = client
        .request("GET", "/namespaces/@anon/registries", &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), r#"{"namespace":"@anon","registries":["kit"]}"#);
    // Without an index the namespace is walked.
    let r = client
        .request("GET", "/namespaces/@company/registries", &[])
        .unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.status, 401, "gated namespace without a token: {v}");
    let r = client
        .request(
            "GET",
            "/namespaces/@company/registries",
            &[("authorization".into(), format!("Bearer {}", common::ADMIN_TOKEN))],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["registries"],
        serde_json::json!(["core", "ui/button", "ui/forms/input"])
    );
}

/// A token added to `.auth/auth.json` is refused while the isolate's cached policy is younger
/// than `AUTH_CACHE_SECONDS`, and accepted once it is older.
#[test]
fn policy_is_cached_for_auth_cache_seconds() {
    if !worker::available() {
        return;
    }
    const CACHE: Duration = Duration::from_secs(8);
    let world = World::new();
    let mut env = world.local_env();
    env.push(("AUTH_CACHE_SECONDS".into(), CACHE.as_secs().to_string()));
    let server = worker::start(world.path(), &env);
    let client = RawClient::new(&server.base);
    let token = "fresh-token-added-later";
    let auth = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let path = "/registries/@company/core/versions";

    // Before the first read of the policy: this request loads (and caches) it.
    let loaded_before = Instant::now();
    let r = client.request("GET", path, &auth).unwrap();
    assert_json_error(&r, 401, "INVALID_TOKEN");

    // Add the token; serve-local pushes the changed file to the bucket (like `auth push`).
    let pushes = |s: &common::Server| s.output().matches("pushed .auth/auth.json").count();
    let before = pushes(&server);
    let mut policy: Value = serde_json::from_slice(&std::fs::read(world.auth_path()).unwrap()).unwrap();
    policy["@company"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"token": token, "mark": "added"}));
    std::fs::write(world.auth_path(), serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pushes(&server) == before {
        assert!(
            Instant::now() < deadline,
            "serve-local never pushed the new policy:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Still cached: refused. (Only asserted while the cache is surely still young: on a
    // stalled machine the window may already have passed, which proves nothing either way.)
    let r = client.request("GET", path, &auth).unwrap();
    if loaded_before.elapsed() < CACHE {
        assert_json_error(&r, 401, "INVALID_TOKEN");
    } else {
        eprintln!("machine too slow to observe the cached window; checking expiry only");
    }

    // Accepted once the cached policy has expired, and never earlier than that.
    let deadline = Instant::now() + CACHE + Duration::from_secs(60);
    loop {
        let r = client.request("GET", path, &auth).unwrap();
        if r.status == 200 {
            assert!(
                loaded_before.elapsed() >= CACHE,
                "new token accepted after {:?}, before AUTH_CACHE_SECONDS",
                loaded_before.elapsed()
            );
            break;
        }
        assert_json_error(&r, 401, "INVALID_TOKEN");
        assert!(
            Instant::now() < deadline,
            "new token still refused long after AUTH_CACHE_SECONDS"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM stops serve-local (and its workerd) cleanly.
#[test]
fn stops_cleanly_on_sigterm() {
    if !worker::available() {
        return;
    }
    let world = World::new();
    let server = worker::start(world.path(), &world.local_env());
    let base = server.base.clone();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let gone = RawClient::new(&base).request("GET", "/health", &[]);
    assert!(gone.is_err(), "still answering after SIGTERM: {gone:?}");
}

/// The lifecycle (SPEC §18) beyond what the conformance cases say (`cases/lifecycle.json`): a
/// 304 keeps the lifecycle headers of its 200, and a `lifecycle.json` that does not parse is a
/// 500 on every read of its registry (and on `/-/lifecycle`), never a silently live version.
#[test]
fn lifecycle_headers_survive_revalidation_and_a_corrupt_document_is_500() {
    if !worker::available() {
        return;
    }
    let world = World::new();
    std::fs::write(
        world.storage().join("@anon/kit/lifecycle.json"),
        "{\"yanked\": [1]}\n",
    )
    .unwrap();
    let server = worker::start(world.path(), &world.local_env());
    let client = RawClient::new(&server.base);

    let path = "/registries/@anon/retired/2.0.0";
    let r = client.request("GET", path, &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let etag = r.header("etag").expect("etag");
    let again = client
        .request("GET", path, &[("if-none-match".into(), etag.clone())])
        .unwrap();
    assert_eq!(again.status, 304, "{}", again.body_text());
    for name in ["x-rack-yanked", "deprecation", "link", "etag", "cache-control"] {
        assert_eq!(again.header(name), r.header(name), "{name} on the 304");
    }
    assert_eq!(
        again.header("x-rack-yanked").as_deref(),
        Some("Broken template: use 1.0.0")
    );

    for path in [
        "/registries/@anon/kit",
        "/registries/@anon/kit/versions",
        "/registries/@anon/kit/1.0.0",
        "/registries/@anon/kit/1.0.0/files/templates/kit.js",
        "/-/lifecycle/@anon/kit",
    ] {
        let r = client.request("GET", path, &[]).unwrap();
        assert_json_error(&r, 500, "INTERNAL_SERVER_ERROR");
    }
    assert!(
        server
            .output()
            .contains("corrupt lifecycle file \"@anon/kit/lifecycle.json\""),
        "the key is logged:\n{}",
        server.output()
    );
}
