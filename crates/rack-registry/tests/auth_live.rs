//! Live reload of `auth.json`, hashed tokens and the hashed admin token (SPEC §6 BEYOND, §10,
//! §14), over HTTP against the real server process.
//!
//! Reload tests poll with a 5 s deadline (SPEC §14: "take effect within 5 s") and assert that it
//! was not exceeded; tests run in parallel threads, so the seconds they wait overlap. Every test
//! ends by scanning the whole server output for every token and token hash it used.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{client, copy_tree, Server, World, ADMIN_TOKEN};
use pkg::Upload;
use serde_json::{json, Value};

/// Config reloads must take effect within this (SPEC §14).
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// A registry every test namespace gets a copy of (from the fixtures' `@rack`).
const REGISTRY: &str = "build/rollup";

use common::{sha256_hex, world_tokens};

/// A world with `auth` as its `auth.json` and a copy of `@rack/build/rollup` under each of
/// `namespaces`.
fn world_with(auth: &Value, namespaces: &[&str]) -> World {
    let world = World::new();
    for ns in namespaces {
        copy_tree(
            &world.storage().join("@rack").join(REGISTRY),
            &world.storage().join(ns).join(REGISTRY),
        );
    }
    write_in_place(&world.auth_path(), &pretty(auth));
    world
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

/// Overwrite the file itself (same inode: truncate and write), as an editor saving in place.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Write a sibling temporary file and rename it over `path` (new inode), as deploy tools do.
fn atomic_replace(path: &Path, text: &str) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Status and error code (if any) of `GET /registries/<ns>/build/rollup` with a bearer token.
fn read(server: &Server, ns: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client().get(server.url(&format!("/registries/{ns}/{REGISTRY}")));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap_or(Value::Null);
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    if status == 200 {
        assert_eq!(body["name"], "rollup", "{body}");
    }
    (status, code)
}

#[track_caller]
fn assert_read(server: &Server, ns: &str, token: Option<&str>, status: u16, code: &str) {
    let got = read(server, ns, token);
    assert_eq!(
        got,
        (status, code.to_owned()),
        "GET {ns}/{REGISTRY} with {token:?}\n{}",
        server.output()
    );
}

/// Poll `read` until it answers `(status, code)`; panics if that takes longer than the reload
/// deadline. Returns how long it took.
#[track_caller]
fn await_read(server: &Server, ns: &str, token: Option<&str>, status: u16, code: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = read(server, ns, token);
        if got == (status, code.to_owned()) {
            let took = start.elapsed();
            assert!(took <= RELOAD_DEADLINE, "took {took:?}");
            return took;
        }
        if start.elapsed() > RELOAD_DEADLINE {
            panic!(
                "GET {ns} with {token:?} still answers {got:?}, not ({status}, {code:?}), {RELOAD_DEADLINE:?} after the edit\n{}",
                server.output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Value of `registry_config_reloads_total{file="auth",outcome=<outcome>}` (0 when absent).
fn reloads(server: &Server, outcome: &str) -> u64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let series = format!("registry_config_reloads_total{{file=\"auth\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Wait until the server output after byte `from` holds a line that satisfies `pred` (within the
/// deadline).
#[track_caller]
fn await_log(server: &Server, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Some(l) = server.output()[from..].lines().find(|l| pred(l)) {
            return l.to_owned();
        }
        if start.elapsed() > RELOAD_DEADLINE {
            panic!(
                "no log line {what} within {RELOAD_DEADLINE:?}:\n{}",
                server.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every literal token and secret of this file (each test also passes its own).
const TOKENS: &[&str] = &[
    "live-edit-old-token",
    "live-edit-added-token",
    "live-edit-third-token",
    "live-broken-good-token",
    "live-broken-next-token",
    "live-removed-ns-token",
    "live-keep-token",
    "live-drop-token",
    "live-expiring-token",
    "live-lasting-token",
    "hashed-reader-secret-7f3a",
    "hashed-publisher-secret-91c2",
    "hashed-wrong-secret",
    "hashed-admin-secret-5d0e",
    "second-admin-secret-b81f",
    "not-a-sha256-but-maybe-a-secret",
];

/// The output (server log, audit lines) contains none of `secrets`, none of this file's tokens,
/// none of the conformance world's tokens, not the admin token, nor any of their SHA-256 in
/// either case.
#[track_caller]
fn assert_no_secrets(output: &str, secrets: &[&str]) {
    let mut all: Vec<String> = vec![ADMIN_TOKEN.to_owned()];
    all.extend(secrets.iter().chain(TOKENS).map(|s| s.to_string()));
    all.extend(world_tokens());
    for s in all.clone() {
        all.push(sha256_hex(&s));
        all.push(sha256_hex(&s).to_uppercase());
    }
    for s in &all {
        assert!(
            !output.contains(s.as_str()),
            "output contains the secret {s:?}:\n{output}"
        );
    }
}

/// Publish a small registry `@ns/build/<name>@1.0.0` with a bearer token.
fn publish(server: &Server, ns: &str, name: &str, token: &str) -> pkg::Reply {
    Upload::new(pkg::simple(ns, name, "1.0.0"))
        .bearer(token)
        .send(&server.base)
}

// ---------------------------------------------------------------------------------------------
// Live reload
// ---------------------------------------------------------------------------------------------

#[test]
fn in_place_edits_and_atomic_replacement_are_picked_up_within_5s() {
    let (old, added, third) = (
        "live-edit-old-token",
        "live-edit-added-token",
        "live-edit-third-token",
    );
    let world = world_with(
        &json!({"@rack": [], "@live": [{"token": old, "mark": "old"}]}),
        &["@live"],
    );
    let server = Server::world(&world);
    assert_read(&server, "@live", Some(old), 200, "");
    assert_read(&server, "@live", Some(added), 401, "INVALID_TOKEN");
    let success0 = reloads(&server, "success");

    // In place (same inode), and with the old mtime put back: detection is by content.
    let path = world.auth_path();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    write_in_place(
        &path,
        &pretty(&json!({"@rack": [], "@live": [{"token": old}, {"token": added, "mark": "added"}]})),
    );
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    await_read(&server, "@live", Some(added), 200, "");
    assert_read(&server, "@live", Some(old), 200, "");

    // Atomic replacement (new inode): the two old tokens are removed, a third one added.
    atomic_replace(
        &path,
        &pretty(&json!({"@rack": [], "@live": [{"token": third, "mark": "third"}]})),
    );
    await_read(&server, "@live", Some(third), 200, "");
    // Removing a token turns it into 401 INVALID_TOKEN at once.
    assert_read(&server, "@live", Some(old), 401, "INVALID_TOKEN");
    assert_read(&server, "@live", Some(added), 401, "INVALID_TOKEN");
    assert_read(&server, "@live", None, 401, "UNAUTHORIZED");

    let success = reloads(&server, "success");
    assert!(
        success >= success0 + 2,
        "two good reloads counted: {success0} -> {success}"
    );
    assert_no_secrets(&server.output(), &[old, added, third]);
}

#[test]
fn broken_edits_are_refused_and_the_last_good_policy_stays() {
    let (token, next) = ("live-broken-good-token", "live-broken-next-token");
    let good = json!({"@rack": [], "@live": [{"token": token, "mark": "good"}]});
    let world = world_with(&good, &["@live"]);
    let server = Server::world(&world);
    let path = world.auth_path();
    assert_read(&server, "@live", Some(token), 200, "");
    let failure0 = reloads(&server, "failure");

    // 1. Invalid JSON, edited in place.
    let from = server.output().len();
    write_in_place(&path, &format!("{{\"@live\": [{{\"token\": \"{next}\"}}"));
    let line = await_log(&server, from, "refusing invalid JSON", |l| {
        l.contains("refused") && l.contains("not valid JSON") && !l.contains("\"type\":\"audit\"")
    });
    assert!(line.contains("auth"), "{line}");
    std::thread::sleep(Duration::from_millis(2200));
    assert_read(&server, "@live", Some(token), 200, "");
    assert_read(&server, "@live", Some(next), 401, "INVALID_TOKEN");
    let failure1 = reloads(&server, "failure");
    assert!(failure1 > failure0, "refusal counted: {failure0} -> {failure1}");

    // 2. A top-level array, by atomic replacement.
    let from = server.output().len();
    atomic_replace(&path, &pretty(&json!([{"@live": [{"token": next}]}])));
    await_log(&server, from, "refusing a top-level array", |l| {
        l.contains("refused") && l.contains("array") && !l.contains("\"type\":\"audit\"")
    });
    std::thread::sleep(Duration::from_millis(2200));
    assert_read(&server, "@live", Some(token), 200, "");
    assert_read(&server, "@live", Some(next), 401, "INVALID_TOKEN");
    let failure2 = reloads(&server, "failure");
    assert!(failure2 > failure1, "refusal counted: {failure1} -> {failure2}");

    // 3. The watcher is not wedged by a refusal: a good file is picked up again.
    let success0 = reloads(&server, "success");
    write_in_place(
        &path,
        &pretty(&json!({"@rack": [], "@live": [{"token": token}, {"token": next}]})),
    );
    await_read(&server, "@live", Some(next), 200, "");
    assert!(reloads(&server, "success") > success0);
    assert_no_secrets(&server.output(), &[token, next]);
}

#[test]
fn a_removed_namespace_turns_forbidden() {
    let token = "live-removed-ns-token";
    let world = world_with(
        &json!({"@rack": [], "@gone": [{"token": token, "publish": true}], "@stays": []}),
        &["@gone", "@stays"],
    );
    let server = Server::world(&world);
    assert_read(&server, "@gone", Some(token), 200, "");
    assert_read(&server, "@gone", Some(ADMIN_TOKEN), 200, "");
    atomic_replace(&world.auth_path(), &pretty(&json!({"@rack": [], "@stays": []})));
    await_read(&server, "@gone", Some(token), 403, "FORBIDDEN_NAMESPACE");
    assert_read(&server, "@gone", Some(ADMIN_TOKEN), 403, "FORBIDDEN_NAMESPACE");
    assert_read(&server, "@gone", None, 403, "FORBIDDEN_NAMESPACE");
    assert_read(&server, "@stays", None, 200, "");
    // Publishing into it is refused as well (the admin token does not bypass the declaration).
    publish(&server, "@gone", "after-removal", token).assert_code(403, "NAMESPACE_NOT_ALLOWED");
    publish(&server, "@gone", "after-removal", ADMIN_TOKEN).assert_code(403, "NAMESPACE_NOT_ALLOWED");
    assert_no_secrets(&server.output(), &[token]);
}

#[test]
fn a_removed_token_turns_invalid_and_its_sibling_keeps_working() {
    let (keep, drop) = ("live-keep-token", "live-drop-token");
    let world = world_with(
        &json!({"@live": [{"token": keep}, {"token": drop, "publish": true}]}),
        &["@live"],
    );
    let server = Server::world(&world);
    assert_read(&server, "@live", Some(drop), 200, "");
    write_in_place(&world.auth_path(), &pretty(&json!({"@live": [{"token": keep}]})));
    await_read(&server, "@live", Some(drop), 401, "INVALID_TOKEN");
    assert_read(&server, "@live", Some(keep), 200, "");
    publish(&server, "@live", "after-removal", drop).assert_code(401, "INVALID_TOKEN");
    assert_no_secrets(&server.output(), &[keep, drop]);
}

#[test]
fn a_token_expires_on_time_without_any_reload() {
    let (expiring, lasting) = ("live-expiring-token", "live-lasting-token");
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let expires_at = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let world = world_with(
        &json!({"@live": [
            {"token": expiring, "publish": true, "expiresAt": expires_at},
            {"token": lasting}
        ]}),
        &["@live"],
    );
    let path = world.auth_path();
    let content = std::fs::read(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let server = Server::world(&world);
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_nanos(expires.unix_timestamp_nanos() as u64);
    assert_read(&server, "@live", Some(expiring), 200, "");
    assert!(
        SystemTime::now() < expiry,
        "the first read must happen before {expires_at}: the machine is too slow for this test"
    );
    let reloads0 = (reloads(&server, "success"), reloads(&server, "failure"));

    // Wait until just past the expiry, touching nothing.
    if let Ok(left) = expiry.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(300));
    }
    assert_read(&server, "@live", Some(expiring), 401, "TOKEN_EXPIRED");
    assert_read(&server, "@live", Some(lasting), 200, "");
    publish(&server, "@live", "expired", expiring).assert_code(401, "TOKEN_EXPIRED");

    assert_eq!(std::fs::read(&path).unwrap(), content, "auth.json untouched");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert_eq!(
        (reloads(&server, "success"), reloads(&server, "failure")),
        reloads0,
        "no reload happened"
    );
    assert!(
        !server.output().contains("config reloaded"),
        "{}",
        server.output()
    );
    assert_no_secrets(&server.output(), &[expiring, lasting]);
}

// ---------------------------------------------------------------------------------------------
// Hashed tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn hashed_entries_authenticate_and_wrong_tokens_fail() {
    let (reader, publisher, wrong) = (
        "hashed-reader-secret-7f3a",
        "hashed-publisher-secret-91c2",
        "hashed-wrong-secret",
    );
    let (reader_hash, publisher_hash) = (sha256_hex(reader), sha256_hex(publisher));
    let world = world_with(
        &json!({
            "@rack": [],
            "@hashed": [
                {"tokenSha256": reader_hash, "mark": "lower-case hex"},
                {"tokenSha256": publisher_hash.to_uppercase(), "mark": "upper-case hex", "publish": true}
            ]
        }),
        &["@hashed"],
    );
    let text = std::fs::read_to_string(world.auth_path()).unwrap();
    assert!(
        !text.contains(reader) && !text.contains(publisher),
        "no plaintext in the file"
    );
    let server = Server::world(&world);

    assert_read(&server, "@hashed", Some(reader), 200, "");
    assert_read(&server, "@hashed", Some(publisher), 200, "");
    let res = client()
        .get(server.url(&format!("/registries/@hashed/{REGISTRY}")))
        .header("X-Registry-Token", format!("  {reader}  "))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "X-Registry-Token, trimmed");
    assert_read(&server, "@hashed", Some(wrong), 401, "INVALID_TOKEN");
    assert_read(&server, "@hashed", Some(&reader_hash), 401, "INVALID_TOKEN");
    assert_read(
        &server,
        "@hashed",
        Some(&publisher_hash.to_uppercase()),
        401,
        "INVALID_TOKEN",
    );
    assert_read(&server, "@hashed", None, 401, "UNAUTHORIZED");

    let r = publish(&server, "@hashed", "by-hash", publisher);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["path"], "@hashed/build/by-hash/1.0.0");
    publish(&server, "@hashed", "by-reader", reader).assert_code(403, "INSUFFICIENT_PERMISSIONS");
    publish(&server, "@hashed", "by-wrong", wrong).assert_code(401, "INVALID_TOKEN");
    publish(&server, "@hashed", "by-digest", &publisher_hash).assert_code(401, "INVALID_TOKEN");
    assert_no_secrets(&server.output(), &[reader, publisher, wrong]);
}

/// The world's environment without `ADMIN_TOKEN`, plus `extra`.
fn env_without_admin(world: &World, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = world
        .env()
        .into_iter()
        .filter(|(k, _)| k != "ADMIN_TOKEN")
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

#[test]
fn the_admin_token_can_be_given_by_its_hash_only() {
    let admin = "hashed-admin-secret-5d0e";
    // Upper case: ADMIN_TOKEN_SHA256 is case-insensitive.
    let world = World::new();
    let env = env_without_admin(
        &world,
        &[("ADMIN_TOKEN_SHA256", sha256_hex(admin).to_uppercase())],
    );
    let server = Server::start(world.path(), &env);

    let res = client()
        .get(server.url("/registries/@company/core"))
        .bearer_auth(admin)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "admin by hash reads a gated namespace");
    let res = client()
        .get(server.url("/namespaces/@company/registries"))
        .header("X-Registry-Token", admin)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "admin by hash lists a gated namespace");
    // Neither the hash itself nor the (unset) plaintext admin token of the world is the admin.
    for t in [sha256_hex(admin), ADMIN_TOKEN.to_owned()] {
        let res = client()
            .get(server.url("/registries/@company/core"))
            .bearer_auth(&t)
            .send()
            .unwrap();
        assert_eq!(res.status(), 401);
    }

    let r = publish(&server, "@company", "admin-by-hash", admin);
    assert_eq!(r.status, 201, "{}", r.text);
    let r = publish(&server, "@rack", "admin-by-hash", admin);
    assert_eq!(
        r.status, 201,
        "admin publishes into an anonymous namespace: {}",
        r.text
    );
    publish(&server, "@rack", "not-admin", ADMIN_TOKEN).assert_code(403, "ANONYMOUS_UPLOAD_FORBIDDEN");
    publish(&server, "@company", "by-digest", &sha256_hex(admin)).assert_code(401, "INVALID_TOKEN");
    assert_no_secrets(&server.output(), &[admin]);
}

#[test]
fn with_both_admin_variables_either_token_works() {
    let hashed_admin = "second-admin-secret-b81f";
    let world = World::new();
    let mut env = world.env();
    env.push(("ADMIN_TOKEN_SHA256".into(), sha256_hex(hashed_admin)));
    let server = Server::start(world.path(), &env);
    for (i, admin) in [ADMIN_TOKEN, hashed_admin].into_iter().enumerate() {
        let res = client()
            .get(server.url("/registries/@company/core"))
            .bearer_auth(admin)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "admin #{i} reads");
        let r = publish(&server, "@company", &format!("either-admin-{i}"), admin);
        assert_eq!(r.status, 201, "admin #{i} publishes: {}", r.text);
    }
    assert_no_secrets(&server.output(), &[hashed_admin]);
}

#[test]
fn a_malformed_admin_token_sha256_is_a_startup_error_without_the_value() {
    let world = World::new();
    let bad = "not-a-sha256-but-maybe-a-secret";
    let env = env_without_admin(&world, &[("ADMIN_TOKEN_SHA256", bad.to_owned())]);
    let started = Instant::now();
    let failure = match Server::try_start(world.path(), &env) {
        Ok(_) => panic!("server started with ADMIN_TOKEN_SHA256={bad:?}"),
        Err(f) => f,
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(failure.code, Some(0), "{}", failure.output);
    assert!(failure.code.is_some(), "exited on its own: {}", failure.output);
    assert!(
        failure.output.contains("ADMIN_TOKEN_SHA256"),
        "{}",
        failure.output
    );
    assert!(!failure.output.contains(bad), "{}", failure.output);
}
