//! Trusted publishing (SPEC §16): CI publishes with its OpenID Connect ID token.
//!
//! Every test starts a real issuer on loopback (`common/oidc.rs`: discovery, JWKS, RS256 and
//! ES256 keys made per run) and real server processes on a fresh world, whose `auth.json` gains
//! `@tp-open` (anonymous), `@tp-gated` (a read token only) and `@tp-other`, and whose
//! `publishers.json` names the issuer for them. Every refusal also checks that nothing was
//! written (no version, no single-use record), and the servers' whole output (logs and audit)
//! is searched for the tokens and their parts.

mod common;
#[path = "common/oidc.rs"]
mod oidc;
#[path = "common/pkg.rs"]
mod pkg;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_cli, Server, World};
use oidc::{Issuer, Key, Runner};
use pkg::{Reply, Snapshot, Upload};
use serde_json::{json, Value};

const READER: &str = "tp-gated-reader-token";

fn publishers(issuer: &str) -> Value {
    json!({
        "@tp-open": [{"issuer": issuer, "repository": "acme/templates", "repositoryOwnerId": "1234",
                      "workflow": "publish.yml", "environment": "release"}],
        "@tp-gated": [{"issuer": issuer, "repository": "Acme/Templates", "repositoryOwnerId": 1234,
                       "workflow": "publish.yml", "environment": "Release"}],
        "@tp-other": [{"issuer": issuer, "repository": "acme/other"}],
    })
}

fn publishers_path(world: &World) -> std::path::PathBuf {
    world.path().join("config/publishers.json")
}

/// A world whose auth.json declares the test namespaces and whose publishers.json trusts
/// `issuer` for them.
fn world_for(issuer: &str) -> World {
    let world = World::new();
    let mut auth: Value = serde_json::from_slice(&std::fs::read(world.auth_path()).unwrap()).unwrap();
    auth["@tp-open"] = json!([]);
    auth["@tp-gated"] = json!([{"token": READER}]);
    auth["@tp-other"] = json!([]);
    std::fs::write(world.auth_path(), auth.to_string()).unwrap();
    std::fs::write(publishers_path(&world), publishers(issuer).to_string()).unwrap();
    world
}

fn env(world: &World) -> Vec<(String, String)> {
    let mut env = world.local_env();
    env.push((
        "PUBLISHERS_CONFIG_PATH".into(),
        publishers_path(world).display().to_string(),
    ));
    env.push(("OIDC_ALLOW_INSECURE_ISSUERS".into(), "true".into()));
    env
}

fn upload(server: &Server, ns: &str, name: &str, version: &str, token: &str) -> Reply {
    Upload::new(pkg::simple(ns, name, version))
        .bearer(token)
        .send(&server.base)
}

fn stored(world: &World, ns: &str, name: &str, version: &str) -> bool {
    world
        .storage()
        .join(format!("{ns}/build/{name}/{version}/registry.json"))
        .is_file()
}

/// The upload is refused with `status` and `code`, and nothing at all changed on disk.
#[track_caller]
fn refused(world: &World, server: &Server, ns: &str, token: &str, status: u16, code: &str, why: &str) {
    let before = Snapshot::take(world.path());
    let r = upload(server, ns, "tp-refused", "9.9.9", token);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (status, Some(code)),
        "{why}: {}",
        r.text
    );
    r.assert_code(status, code);
    before.assert_unchanged(world.path());
}

/// No token, nor any of its three parts, nor its `jti`, appears in `output`.
#[track_caller]
fn assert_secret_free(output: &str, tokens: &[&str]) {
    for t in tokens {
        assert!(!output.contains(t), "a token appears in the output");
        for part in t.split('.').filter(|p| p.len() > 16) {
            assert!(!output.contains(part), "a part of a token appears in the output");
        }
        let payload: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(t)
            .unwrap()
            .claims;
        if let Some(jti) = payload["jti"].as_str() {
            assert!(!output.contains(jti), "a jti appears in the output");
        }
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn matching_tokens_publish_once_in_anonymous_and_gated_namespaces() {
    let (rsa, ec) = (Key::rsa("rsa-1"), Key::ec("ec-1"));
    let issuer = Issuer::start(&[&rsa, &ec]);
    let world = world_for(&issuer.url);
    let server = Server::start(world.path(), &env(&world));

    // RS256 into an anonymous namespace (where only the admin token publishes otherwise).
    let t1 = rsa.sign(&issuer.claims(json!({})));
    let r = upload(&server, "@tp-open", "tp-a", "1.0.0", &t1);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["path"], "@tp-open/build/tp-a/1.0.0");
    assert!(stored(&world, "@tp-open", "tp-a", "1.0.0"));
    // ES256 into a gated namespace, repository and environment in another case.
    let t2 = ec.sign(&issuer.claims(json!({"repository": "ACME/templates", "environment": "RELEASE"})));
    let r = upload(&server, "@tp-gated", "tp-b", "1.0.0", &t2);
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(stored(&world, "@tp-gated", "tp-b", "1.0.0"));
    // Another namespace's publisher is not this one's (acme/other only).
    refused(
        &world,
        &server,
        "@tp-other",
        &rsa.sign(&issuer.claims(json!({}))),
        403,
        "FORBIDDEN",
        "another namespace",
    );

    // A replay is refused, here and on a second server process on the same storage.
    refused(&world, &server, "@tp-open", &t1, 401, "INVALID_TOKEN", "replay");
    let second = Server::start(world.path(), &env(&world));
    refused(
        &world,
        &second,
        "@tp-gated",
        &t2,
        401,
        "INVALID_TOKEN",
        "replay on another process",
    );
    // Two uploads racing with one fresh token: exactly one publishes.
    let t3 = rsa.sign(&issuer.claims(json!({})));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| upload(&server, "@tp-open", "tp-race", "1.0.0", &t3));
        let b = s.spawn(|| upload(&second, "@tp-open", "tp-race", "2.0.0", &t3));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 401], "{} / {}", a.text, b.text);
    let raced = ["1.0.0", "2.0.0"]
        .iter()
        .filter(|v| stored(&world, "@tp-open", "tp-race", v))
        .count();
    assert_eq!(raced, 1);

    // An ID token never opens a read: on a gated namespace it is an unknown token.
    let t4 = ec.sign(&issuer.claims(json!({})));
    let (status, body) = pkg::get(&server.base, "/registries/@tp-gated/build/tp-b/1.0.0", Some(&t4));
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["code"],
        "INVALID_TOKEN"
    );
    let (status, _) = pkg::get(
        &server.base,
        "/registries/@tp-gated/build/tp-b/1.0.0",
        Some(READER),
    );
    assert_eq!(status, 200);

    // The audit trail says who in CI published.
    wait_for("the replay's reason in the log", || {
        server.output().contains("already used")
    });
    let out = server.output();
    let audit: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "audit" && v["event"] == "publish" && v["outcome"] == "success")
        .collect();
    let first = audit
        .iter()
        .find(|v| v["name"] == "tp-a")
        .expect("audit record of tp-a");
    assert_eq!(first["issuer"], issuer.url);
    assert_eq!(first["repository"], "acme/templates");
    assert_eq!(
        first["workflow"],
        "acme/templates/.github/workflows/publish.yml@refs/heads/main"
    );
    assert_eq!(first["run_id"], "9876543210");
    assert_eq!(first["sha"], "4f2a0c1d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49");
    assert_eq!(first["by"], "trusted publisher (acme/templates)");
    assert_secret_free(&(out + &second.output()), &[&t1, &t2, &t3, &t4]);
}

#[test]
fn every_mismatch_is_refused_and_writes_nothing() {
    let (rsa, ec) = (Key::rsa("rsa-1"), Key::ec("ec-1"));
    let stranger = Key::rsa("rsa-1"); // the same kid, another key: a forged signature
    let issuer = Issuer::start(&[&rsa, &ec]);
    let unknown_issuer = Issuer::start(&[&stranger]);
    let world = world_for(&issuer.url);
    let server = Server::start(world.path(), &env(&world));
    let now = oidc::now_s();
    let c = |changes: Value| issuer.claims(changes);

    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &h,
            &c(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap()
    };
    let tampered = {
        // A valid token whose payload is swapped for one naming another repository.
        let good = rsa.sign(&c(json!({})));
        let other = rsa.sign(&c(json!({"repository": "evil/templates"})));
        let g: Vec<&str> = good.split('.').collect();
        let o: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", g[0], o[1], g[2])
    };
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        // Not verifiable: 401 INVALID_TOKEN, in a gated and in an anonymous namespace alike.
        (
            "audience",
            rsa.sign(&c(json!({"aud": "someone-else"}))),
            "@tp-gated",
            401,
            "INVALID_TOKEN",
        ),
        (
            "no audience",
            rsa.sign(&c(json!({"aud": null}))),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        (
            "expired",
            rsa.sign(&c(json!({"iat": now - 900, "nbf": now - 900, "exp": now - 120}))),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        (
            "not yet valid",
            ec.sign(&c(json!({"nbf": now + 300}))),
            "@tp-gated",
            401,
            "INVALID_TOKEN",
        ),
        (
            "issued in the future",
            ec.sign(&c(json!({"iat": now + 300}))),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        (
            "wrong signature",
            stranger.sign(&c(json!({}))),
            "@tp-gated",
            401,
            "INVALID_TOKEN",
        ),
        ("tampered payload", tampered, "@tp-open", 401, "INVALID_TOKEN"),
        (
            "unknown kid",
            rsa.sign_as(&c(json!({})), "no-such-kid"),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        (
            "key of another algorithm",
            ec.sign_as(&c(json!({})), "rsa-1"),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        ("HS256", hs256, "@tp-gated", 401, "INVALID_TOKEN"),
        (
            "no jti",
            rsa.sign(&c(json!({"jti": null}))),
            "@tp-open",
            401,
            "INVALID_TOKEN",
        ),
        // An issuer that publishers.json does not name: an ordinary (unknown) token.
        (
            "issuer",
            stranger.sign(&unknown_issuer.claims(json!({}))),
            "@tp-gated",
            401,
            "INVALID_TOKEN",
        ),
        (
            "issuer, anonymous",
            stranger.sign(&unknown_issuer.claims(json!({}))),
            "@tp-open",
            403,
            "ANONYMOUS_UPLOAD_FORBIDDEN",
        ),
        // Verified, but the claims match no entry of the namespace: 403 FORBIDDEN.
        (
            "repository",
            rsa.sign(&c(json!({"repository": "acme/templates2"}))),
            "@tp-open",
            403,
            "FORBIDDEN",
        ),
        (
            "owner id (a resurrected owner name)",
            rsa.sign(&c(json!({"repository_owner_id": "666"}))),
            "@tp-gated",
            403,
            "FORBIDDEN",
        ),
        (
            "no owner id",
            rsa.sign(&c(json!({"repository_owner_id": null}))),
            "@tp-open",
            403,
            "FORBIDDEN",
        ),
        (
            "workflow",
            ec.sign(&c(
                json!({"workflow_ref": "acme/templates/.github/workflows/ci.yml@refs/heads/main"}),
            )),
            "@tp-open",
            403,
            "FORBIDDEN",
        ),
        (
            "reusable workflow named publish.yml, called from another workflow",
            ec.sign(&c(json!({
                "workflow_ref": "acme/templates/.github/workflows/ci.yml@refs/heads/main",
                "job_workflow_ref": "acme/templates/.github/workflows/publish.yml@refs/heads/main",
            }))),
            "@tp-gated",
            403,
            "FORBIDDEN",
        ),
        (
            "workflow of another repository",
            ec.sign(&c(
                json!({"workflow_ref": "evil/x/.github/workflows/publish.yml@refs/heads/main"}),
            )),
            "@tp-open",
            403,
            "FORBIDDEN",
        ),
        (
            "environment",
            rsa.sign(&c(json!({"environment": "staging"}))),
            "@tp-gated",
            403,
            "FORBIDDEN",
        ),
        (
            "no environment",
            rsa.sign(&c(json!({"environment": null}))),
            "@tp-open",
            403,
            "FORBIDDEN",
        ),
        (
            "another namespace",
            rsa.sign(&c(json!({}))),
            "@tp-other",
            403,
            "FORBIDDEN",
        ),
        // Check 8 comes first: a namespace auth.json does not declare.
        (
            "undeclared namespace",
            rsa.sign(&c(json!({}))),
            "@tp-nowhere",
            403,
            "NAMESPACE_NOT_ALLOWED",
        ),
    ];
    for (why, token, ns, status, code) in &cases {
        refused(&world, &server, ns, token, *status, code, why);
    }
    assert!(
        !world.storage().join(".rack/oidc").exists(),
        "no refused token was recorded"
    );
    // The reasons are logged (never the tokens).
    wait_for("the last reason in the log", || {
        server.output().contains("no jti claim")
    });
    let out = server.output();
    for reason in [
        "audience (aud) is not OIDC_AUDIENCE",
        "expired (exp)",
        "not valid yet (nbf)",
        "issued in the future (iat)",
        "bad signature",
        "no key with this kid",
        "not for the token's algorithm",
        "algorithm HS256 is not accepted",
        "no jti claim",
    ] {
        assert!(out.contains(reason), "reason {reason:?} not logged");
    }
    let tokens: Vec<&str> = cases.iter().map(|c| c.1.as_str()).collect();
    assert_secret_free(&out, &tokens);
    // None of it spent or broke anything: a matching token still publishes.
    let r = upload(&server, "@tp-open", "tp-after", "1.0.0", &rsa.sign(&c(json!({}))));
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn a_key_rotation_is_picked_up_and_cached_keys_outlive_the_issuer() {
    let (a, b) = (Key::rsa("key-a"), Key::ec("key-b"));
    let mut issuer = Issuer::start(&[&a]);
    let world = world_for(&issuer.url);
    let server = Server::start(world.path(), &env(&world));

    let r = upload(
        &server,
        "@tp-open",
        "tp-rot",
        "1.0.0",
        &a.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(issuer.jwks_fetches(), 1);
    let r = upload(
        &server,
        "@tp-open",
        "tp-rot",
        "1.0.1",
        &a.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(issuer.jwks_fetches(), 1, "known keys are cached");

    // The issuer rotates to key B: the first token signed with it makes one refetch.
    issuer.publish_keys(&[&b]);
    let r = upload(
        &server,
        "@tp-open",
        "tp-rot",
        "1.1.0",
        &b.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(issuer.jwks_fetches(), 2);
    // Made-up kids do not make the server hammer the issuer: at most one refetch a minute.
    for i in 0..3 {
        let t = b.sign_as(&issuer.claims(json!({})), &format!("made-up-{i}"));
        refused(
            &world,
            &server,
            "@tp-open",
            &t,
            401,
            "INVALID_TOKEN",
            "made-up kid",
        );
    }
    assert_eq!(issuer.jwks_fetches(), 2);

    // The issuer goes down: cached keys keep publishing working, and reads never needed it.
    issuer.go_down();
    assert!(std::net::TcpStream::connect(issuer.url.trim_start_matches("http://")).is_err());
    let r = upload(
        &server,
        "@tp-open",
        "tp-rot",
        "1.2.0",
        &b.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let (status, _) = pkg::get(&server.base, "/registries/@tp-open/build/tp-rot/1.2.0", None);
    assert_eq!(status, 200);
    let (status, _) = pkg::get(&server.base, "/registries/@tp-gated/build/tp-rot", Some(READER));
    assert_eq!(status, 404, "a gated read answers as usual (no such registry)");
    let (status, _) = pkg::get(&server.base, "/health", None);
    assert_eq!(status, 200);
    // A server that never saw the keys cannot verify anything while the issuer is down.
    let fresh = Server::start(world.path(), &env(&world));
    let t = b.sign(&issuer.claims(json!({})));
    refused(
        &world,
        &fresh,
        "@tp-open",
        &t,
        401,
        "INVALID_TOKEN",
        "issuer down, no keys",
    );
    wait_for("the reason in the log", || {
        fresh.output().contains("keys could not be fetched")
    });
    let (status, _) = pkg::get(&fresh.base, "/registries/@tp-open/build/tp-rot/1.2.0", None);
    assert_eq!(status, 200);
}

#[test]
fn publishers_json_is_validated_live_reloaded_and_fail_closed() {
    let key = Key::ec("ec-1");
    let issuer = Issuer::start(&[&key]);
    let world = world_for(&issuer.url);

    // Startup: a file that is not an object refuses to start; an http issuer without
    // OIDC_ALLOW_INSECURE_ISSUERS only rejects its namespaces (logged).
    std::fs::write(publishers_path(&world), "[]").unwrap();
    let failure = Server::try_start(world.path(), &env(&world))
        .err()
        .expect("refused to start");
    assert!(failure.output.contains("publishers config"), "{}", failure.output);
    std::fs::write(publishers_path(&world), publishers(&issuer.url).to_string()).unwrap();
    let secure_only: Vec<(String, String)> = env(&world)
        .into_iter()
        .filter(|(k, _)| k != "OIDC_ALLOW_INSECURE_ISSUERS")
        .collect();
    let strict = Server::start(world.path(), &secure_only);
    assert!(strict.output().contains("OIDC_ALLOW_INSECURE_ISSUERS"));
    // Its namespaces trust nobody: the token is an ordinary (unknown) one there.
    refused(
        &world,
        &strict,
        "@tp-gated",
        &key.sign(&issuer.claims(json!({}))),
        401,
        "INVALID_TOKEN",
        "rejected",
    );
    drop(strict);

    let server = Server::start(world.path(), &env(&world));
    let r = upload(
        &server,
        "@tp-open",
        "tp-live",
        "1.0.0",
        &key.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // A broken edit is refused and the last good file stays in force.
    std::fs::write(publishers_path(&world), "{ not json").unwrap();
    wait_for("the refused reload", || {
        server.output().contains("config change refused")
    });
    let r = upload(
        &server,
        "@tp-open",
        "tp-live",
        "1.0.1",
        &key.sign(&issuer.claims(json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // Removing the namespace's publisher takes effect without a restart.
    let mut p = publishers(&issuer.url);
    p.as_object_mut().unwrap().remove("@tp-open");
    std::fs::write(publishers_path(&world), p.to_string()).unwrap();
    wait_for("the reload", || {
        server
            .output()
            .lines()
            .any(|l| l.contains("config reloaded") && l.contains("publishers"))
    });
    refused(
        &world,
        &server,
        "@tp-open",
        &key.sign(&issuer.claims(json!({}))),
        403,
        "FORBIDDEN",
        "publisher removed",
    );

    // `auth check-publishers` says the same as the server.
    std::fs::write(publishers_path(&world), publishers(&issuer.url).to_string()).unwrap();
    let path = publishers_path(&world).display().to_string();
    let (code, out) = run_cli(world.path(), &[], &["auth", "check-publishers", &path]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("REJECTED @tp-open"), "{out}");
    let (code, out) = run_cli(
        world.path(),
        &[],
        &["auth", "check-publishers", "--allow-insecure-issuers", &path],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("@tp-gated: 1 trusted publisher(s)"), "{out}");
}

fn registry_dir(root: &Path, ns: &str, name: &str, version: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    let m = pkg::manifest(ns, name, version, "registry:build", &["templates/a.txt"]);
    std::fs::write(dir.join("registry.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    std::fs::write(dir.join("templates/a.txt"), "hello\n").unwrap();
    dir
}

#[test]
fn publish_oidc_gets_the_id_token_from_the_runner() {
    let key = Key::rsa("rsa-1");
    let issuer = Issuer::start(&[&key]);
    let world = world_for(&issuer.url);
    let server = Server::start(world.path(), &env(&world));
    const REQUEST_TOKEN: &str = "runner-request-token-0123456789abcdef";
    let runner = Runner::start(&issuer.url, key, REQUEST_TOKEN);
    let dir = registry_dir(world.path(), "@tp-gated", "tp-cli", "1.0.0");
    let dir_arg = dir.display().to_string();
    let actions = |url: &str, token: &str| {
        vec![
            ("ACTIONS_ID_TOKEN_REQUEST_URL".to_owned(), url.to_owned()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN".to_owned(), token.to_owned()),
            // A stored token in the environment is ignored with --oidc.
            ("RACK_REGISTRY_TOKEN".to_owned(), "not-a-token".to_owned()),
        ]
    };

    let args = [
        "publish",
        dir_arg.as_str(),
        "--oidc",
        "--url",
        server.base.as_str(),
    ];
    let (code, out) = run_cli(world.path(), &actions(&runner.request_url, REQUEST_TOKEN), &args);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("published @tp-gated/build/tp-cli/1.0.0"), "{out}");
    assert!(stored(&world, "@tp-gated", "tp-cli", "1.0.0"));
    {
        let log = runner.log.lock().unwrap();
        assert_eq!(log.audiences, ["rack-registry"]);
        assert_eq!(log.api_versions, ["2.0"], "the runner's own query is kept");
    }
    assert!(!out.contains(REQUEST_TOKEN));
    assert!(!server.output().contains(REQUEST_TOKEN));

    // Another audience is asked for with --audience (and then refused by this server).
    let dir = registry_dir(world.path(), "@tp-gated", "tp-cli2", "1.0.0");
    let dir_arg = dir.display().to_string();
    let args = [
        "publish",
        dir_arg.as_str(),
        "--oidc",
        "--audience",
        "elsewhere",
        "--url",
        server.base.as_str(),
    ];
    let before = Snapshot::take(world.path());
    let (code, out) = run_cli(world.path(), &actions(&runner.request_url, REQUEST_TOKEN), &args);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401 INVALID_TOKEN"), "{out}");
    assert_eq!(runner.log.lock().unwrap().audiences.last().unwrap(), "elsewhere");
    before.assert_unchanged(world.path());

    // A wrong request token: the runner refuses, nothing is uploaded (exit 3), no secret shown.
    let args = [
        "publish",
        dir_arg.as_str(),
        "--oidc",
        "--url",
        server.base.as_str(),
    ];
    let (code, out) = run_cli(
        world.path(),
        &actions(&runner.request_url, "wrong-request-token"),
        &args,
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("HTTP 401") && !out.contains("wrong-request-token"),
        "{out}"
    );
    assert_eq!(runner.log.lock().unwrap().refused, 1);
    // Outside GitHub Actions: a usage error (exit 2).
    let (code, out) = run_cli(world.path(), &[], &args);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ACTIONS_ID_TOKEN_REQUEST_URL"), "{out}");
    before.assert_unchanged(world.path());
}
