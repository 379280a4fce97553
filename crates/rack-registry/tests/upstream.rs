//! Upstream registries (SPEC §17) with two real servers of ours: A is the upstream (the
//! fixtures' `@rack`), B proxies `@rack` from A. B's storage is its world's (a bucket with
//! `RACK_TEST_TARGET=s3`). A slow upstream is A behind the test proxy that delays; a hostile one
//! is a small fake upstream in this file.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Server, World, ADMIN_TOKEN};
use faultproxy::{Fault, FaultProxy, Rule};
use serde_json::{json, Value};

/// B's world: an empty storage (with its marker) and A's auth.json (`@rack` anonymous), plus
/// `upstreams.json` naming `url` for `@rack`.
fn b_world(url: &str, max_age: u64, timeout: u64) -> World {
    b_world_with(url, max_age, timeout, None)
}

/// [`b_world`] with a token for the upstream.
fn b_world_with(url: &str, max_age: u64, timeout: u64, token: Option<&str>) -> World {
    let world = World::empty();
    std::fs::create_dir_all(world.storage()).unwrap();
    std::fs::write(world.storage().join(".healthcheck"), "OK\n").unwrap();
    std::fs::create_dir_all(world.path().join("config")).unwrap();
    std::fs::copy(common::world_dir().join("auth.json"), world.auth_path()).unwrap();
    let mut config = json!({"upstreams": [{
        "url": url, "namespaces": ["@rack"], "maxAgeSeconds": max_age, "timeoutSeconds": timeout
    }]});
    if let Some(t) = token {
        config["upstreams"][0]["token"] = json!(t);
    }
    std::fs::write(world.path().join("config/upstreams.json"), config.to_string()).unwrap();
    world
}

fn start_b(world: &World) -> Server {
    let path = world.path().join("config/upstreams.json");
    let env = world.env_with(&[("UPSTREAMS_CONFIG_PATH", path.to_str().unwrap())]);
    Server::start(world.path(), &env)
}

/// `(status, content type, cache control, body)`.
fn get(base: &str, path: &str) -> (u16, String, String, Vec<u8>) {
    let res = common::client().get(format!("{base}{path}")).send().unwrap();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, ct, cc) = (
        res.status().as_u16(),
        header("content-type"),
        header("cache-control"),
    );
    (status, ct, cc, res.bytes().unwrap().to_vec())
}

/// The value of one series of `name` in a server's /metrics whose labels contain `labels`.
fn metric(base: &str, name: &str, labels: &[&str]) -> f64 {
    let (_, _, _, body) = get(base, "/metrics");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn first_file(base: &str, registry: &str) -> String {
    let (_, _, _, body) = get(base, &format!("/registries/{registry}/1.0.0"));
    let m: Value = serde_json::from_slice(&body).unwrap();
    m["files"][0]["path"]
        .as_str()
        .unwrap()
        .trim_start_matches("./")
        .to_owned()
}

#[test]
fn reads_through_the_proxy_equal_the_upstream_and_outlive_it() {
    let world_a = World::new();
    let a = Server::world(&world_a);
    let world_b = b_world(&a.base, 0, 5);
    let b = start_b(&world_b);
    let file = first_file(&a.base, "@rack/build/rollup");
    let paths = [
        "/registries/@rack/build/rollup".to_owned(),
        "/registries/@rack/build/rollup/versions".to_owned(),
        "/registries/@rack/build/rollup/1.0.0".to_owned(),
        format!("/registries/@rack/build/rollup/1.0.0/files/{file}"),
        "/namespaces/@rack/registries".to_owned(),
        "/-/lifecycle/@rack/build/rollup".to_owned(),
    ];
    let mut served = HashMap::new();
    for p in &paths {
        let from_a = get(&a.base, p);
        let from_b = get(&b.base, p);
        assert_eq!(from_a.0, 200, "{p}");
        assert_eq!(from_b, from_a, "{p}: status, content type, cache tier and bytes");
        served.insert(p.clone(), from_b);
    }
    // Asked again (maxAgeSeconds 0): conditional GETs, answered 304 by A.
    for p in &paths {
        assert_eq!(get(&b.base, p), served[p]);
    }
    assert!(
        metric(
            &a.base,
            "http_request_duration_seconds_count",
            &["status_code=\"304\""]
        ) >= 1.0,
        "B revalidates by ETag"
    );
    // The version is stored in B's storage, under the same keys.
    if common::s3::test_target() == common::s3::Target::Local {
        assert!(world_b
            .storage()
            .join("@rack/build/rollup/1.0.0/registry.json")
            .is_file());
        assert!(world_b
            .storage()
            .join(".rack/integrity/@rack/build/rollup/1.0.0.json")
            .is_file());
    }
    // Publishing or yanking here is refused: @rack is published upstream.
    let upload = pkg::Upload::new(pkg::simple("@rack", "mine", "1.0.0"))
        .bearer(ADMIN_TOKEN)
        .send(&b.base);
    upload.assert_error(403, "FORBIDDEN_NAMESPACE", "Namespace not allowed");
    let res = common::client()
        .put(format!("{}/-/yank/@rack/build/rollup/1.0.0", b.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"reason": "x"}"#)
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);

    // The upstream goes away: everything B served is still served, as it was.
    let a_url = a.base.clone();
    a.terminate();
    for p in &paths {
        assert_eq!(get(&b.base, p), served[p], "{p} after the upstream is gone");
    }
    assert!(metric(&b.base, "registry_upstream_stale_total", &[]) >= 1.0);
    // What was never fetched cannot be served.
    let (status, _, _, body) = get(&b.base, "/registries/@rack/build/typescript/1.0.0");
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        err["message"],
        format!("Upstream {a_url} is unavailable and no copy is stored")
    );
    // A 404 upstream is a 404 here (while it was up): checked in the next test.
}

#[test]
fn upstream_404s_are_404s_and_new_versions_and_yanks_arrive_after_max_age() {
    let world_a = World::new();
    let a = Server::world(&world_a);
    let world_b = b_world(&a.base, 2, 5);
    let b = start_b(&world_b);
    assert_eq!(get(&b.base, "/registries/@rack/build/nothing").0, 404);
    assert_eq!(get(&b.base, "/registries/@rack/build/rollup/9.9.9").0, 404);

    let versions = |base: &str| -> Vec<String> {
        let (status, _, _, body) = get(base, "/registries/@rack/build/rollup/versions");
        assert_eq!(status, 200);
        serde_json::from_value(serde_json::from_slice::<Value>(&body).unwrap()["versions"].clone()).unwrap()
    };
    assert_eq!(versions(&b.base), ["1.0.0"]);
    let m = pkg::manifest("@rack", "rollup", "1.1.0", "registry:build", &["templates/a.txt"]);
    let up = pkg::Upload::new(pkg::package(&m, &[("templates/a.txt", b"new\n")]))
        .bearer(ADMIN_TOKEN)
        .send(&a.base);
    assert_eq!(up.status, 201, "{}", up.text);
    assert_eq!(versions(&b.base), ["1.0.0"], "fresh for maxAgeSeconds");
    let deadline = Instant::now() + Duration::from_secs(10);
    while versions(&b.base) != ["1.1.0", "1.0.0"] {
        assert!(Instant::now() < deadline, "1.1.0 never appeared on B");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, _, _, latest) = get(&b.base, "/registries/@rack/build/rollup");
    assert_eq!(
        serde_json::from_slice::<Value>(&latest).unwrap()["version"],
        "1.1.0"
    );

    // Yanked upstream: it leaves B's list after maxAgeSeconds and stays readable when pinned.
    let res = common::client()
        .put(format!("{}/-/yank/@rack/build/rollup/1.1.0", a.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"reason": "bad build"}"#)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while versions(&b.base) != ["1.0.0"] {
        assert!(Instant::now() < deadline, "the yank never reached B");
        std::thread::sleep(Duration::from_millis(200));
    }
    let res = common::client()
        .get(format!("{}/registries/@rack/build/rollup/1.1.0", b.base))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-rack-yanked"], "bad build");
}

#[test]
fn a_slow_upstream_never_holds_a_read_past_its_timeout_and_a_failing_one_is_skipped() {
    let world_a = World::new();
    let a = Server::world(&world_a);
    let proxy = FaultProxy::start(&a.base);
    // A's admin token as the upstream token: it may read anything there, and must never be
    // logged here.
    let world_b = b_world_with(&proxy.url, 0, 1, Some(ADMIN_TOKEN));
    let b = start_b(&world_b);
    let path = "/registries/@rack/build/rollup/versions";
    let stored = get(&b.base, path);
    assert_eq!(stored.0, 200);
    proxy.inject(Rule::new("GET", "/", Fault::Latency(Duration::from_secs(8))));
    for i in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&b.base, path), stored, "read {i}: the stored copy");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "read {i} waited {:?} for a 1 s timeout",
            started.elapsed()
        );
    }
    assert_eq!(metric(&b.base, "registry_upstream_breaker_open", &[]), 1.0);
    // Three failures: the upstream is skipped, not asked at all.
    let asked = proxy.requests();
    for _ in 0..5 {
        assert_eq!(get(&b.base, path), stored);
    }
    assert_eq!(proxy.requests(), asked, "the breaker skips the upstream");
    assert!(
        metric(
            &b.base,
            "registry_upstream_requests_total",
            &["outcome=\"skipped\""]
        ) >= 5.0
    );
    assert!(
        metric(
            &b.base,
            "registry_upstream_requests_total",
            &["outcome=\"timeout\""]
        ) >= 3.0
    );
    let logs = b.output();
    assert!(logs.contains(&proxy.url), "the logs name the upstream");
    assert!(!logs.contains(ADMIN_TOKEN), "never its token");
}

#[test]
fn fifty_concurrent_misses_cause_one_upstream_request() {
    let world_a = World::new();
    let a = Server::world(&world_a);
    let world_b = b_world(&a.base, 300, 10);
    let b = start_b(&world_b);
    let route = "route=\"/registries/:registry/:version\"";
    let before = metric(&a.base, "http_request_duration_seconds_count", &[route]);
    let barrier = Arc::new(Barrier::new(50));
    let bodies: Vec<_> = (0..50)
        .map(|_| {
            let (base, barrier) = (b.base.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&base, "/registries/@rack/build/typescript/1.0.0")
            })
        })
        .collect();
    let got: Vec<_> = bodies.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        got.iter().all(|r| r.0 == 200 && r.3 == got[0].3),
        "50 identical 200s"
    );
    let after = metric(&a.base, "http_request_duration_seconds_count", &[route]);
    assert_eq!(after - before, 1.0, "one request for the manifest at A");
}

/// A fake upstream answering fixed bodies by path (anything else 404), counting requests.
fn fake_upstream(routes: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("/").to_owned();
            log.lock().unwrap().push(path.clone());
            let (status, body) = match routes.get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => (
                    "404 Not Found",
                    br#"{"code":"NOT_FOUND","message":"Resource not found"}"#.to_vec(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
        }
    });
    (url, seen)
}

#[test]
fn a_hostile_upstream_stores_nothing() {
    let manifest = |name: &str, version: &str| {
        serde_json::to_vec(&pkg::manifest(
            "@rack",
            name,
            version,
            "registry:build",
            &["templates/a.txt"],
        ))
        .unwrap()
    };
    let mut routes = HashMap::new();
    // Asked for 1.0.0, names 2.0.0.
    routes.insert(
        "/registries/@rack/build/liar/1.0.0".to_owned(),
        manifest("liar", "2.0.0"),
    );
    // Not JSON.
    routes.insert(
        "/registries/@rack/build/garbled/1.0.0".to_owned(),
        b"<html>".to_vec(),
    );
    // Names another registry.
    routes.insert(
        "/registries/@rack/build/other/1.0.0".to_owned(),
        manifest("elsewhere", "1.0.0"),
    );
    // A declared file over the size limit.
    routes.insert(
        "/registries/@rack/build/huge/1.0.0".to_owned(),
        manifest("huge", "1.0.0"),
    );
    routes.insert(
        "/registries/@rack/build/huge/1.0.0/files/templates/a.txt".to_owned(),
        vec![b'x'; 300_000],
    );
    // A declared file missing upstream.
    routes.insert(
        "/registries/@rack/build/holey/1.0.0".to_owned(),
        manifest("holey", "1.0.0"),
    );
    // A fine version whose upstream also serves a file the manifest does not declare.
    routes.insert(
        "/registries/@rack/build/fine/1.0.0".to_owned(),
        manifest("fine", "1.0.0"),
    );
    routes.insert(
        "/registries/@rack/build/fine/1.0.0/files/templates/a.txt".to_owned(),
        b"ok\n".to_vec(),
    );
    routes.insert(
        "/registries/@rack/build/fine/1.0.0/files/secret.txt".to_owned(),
        b"never stored".to_vec(),
    );
    let (url, _seen) = fake_upstream(routes);
    let world_b = b_world(&url, 300, 5);
    let path = world_b.path().join("config/upstreams.json");
    let env = world_b.env_with(&[
        ("UPSTREAMS_CONFIG_PATH", path.to_str().unwrap()),
        ("MAX_EXTRACTED_BYTES", "200000"),
    ]);
    let b = Server::start(world_b.path(), &env);
    for name in ["liar", "garbled", "other", "huge", "holey"] {
        let (status, _, _, body) = get(&b.base, &format!("/registries/@rack/build/{name}/1.0.0"));
        assert_eq!(status, 502, "{name}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(
        get(
            &b.base,
            "/registries/@rack/build/fine/1.0.0/files/templates/a.txt"
        )
        .3,
        b"ok\n"
    );
    assert_eq!(
        get(&b.base, "/registries/@rack/build/fine/1.0.0/files/secret.txt").0,
        404
    );
    // Nothing of the refused versions, and no undeclared file, is in storage.
    let (code, listing) = common::run_cli(world_b.path(), &world_b.env(), &["storage", "check"]);
    assert_eq!(code, Some(0), "{listing}");
    if common::s3::test_target() == common::s3::Target::Local {
        let build = world_b.storage().join("@rack/build");
        let stored: Vec<String> = std::fs::read_dir(&build)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(stored, ["fine"], "only the fine version is stored");
        assert!(!build.join("fine/1.0.0/secret.txt").exists());
        let tmp = world_b.storage().join(".tmp");
        assert!(
            !tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none(),
            "no staging left behind"
        );
    }
}

fn mirror(
    cwd: &std::path::Path,
    env: &[(String, String)],
    url: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let mut args = vec!["mirror", url, "--namespace", "@rack"];
    args.extend_from_slice(extra);
    common::run_cli(cwd, env, &args)
}

/// Every `@rack` read of A, compared with the same read of `other`.
fn assert_same_rack(a: &str, other: &str) {
    let (_, _, _, listing) = get(a, "/namespaces/@rack/registries");
    let regs: Vec<String> =
        serde_json::from_value(serde_json::from_slice::<Value>(&listing).unwrap()["registries"].clone())
            .unwrap();
    assert_eq!(regs.len(), 10);
    for r in regs {
        let (_, _, _, body) = get(a, &format!("/registries/@rack/{r}/1.0.0"));
        let m: Value = serde_json::from_slice(&body).unwrap();
        let files: Vec<String> = m["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["path"].as_str())
            .map(|p| format!("/registries/@rack/{r}/1.0.0/files/{}", p.trim_start_matches("./")))
            .collect();
        let reads = [
            format!("/registries/@rack/{r}"),
            format!("/registries/@rack/{r}/versions"),
        ];
        for p in reads.into_iter().chain(files) {
            assert_eq!(get(other, &p), get(a, &p), "{p}");
        }
    }
}

#[test]
fn mirror_copies_a_namespace_skips_what_is_stored_and_resumes_after_a_failure() {
    let world_a = World::new();
    let a = Server::world(&world_a);
    let proxy = FaultProxy::start(&a.base);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("offline");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let env: Vec<(String, String)> = vec![(
        "STORAGE_ROOT".into(),
        scratch.path().join("unused").display().to_string(),
    )];
    // An interrupted run: two registries' files fail; what was copied is kept, whole.
    proxy.inject(Rule::new(
        "GET",
        "/build/typescript/1.0.0/files/",
        Fault::Status(500),
    ));
    proxy.inject(Rule::new(
        "GET",
        "/testing/vitest/1.0.0/files/",
        Fault::Status(500),
    ));
    let (code, out) = mirror(scratch.path(), &env, &proxy.url, &["--dir", &dir_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("8 versions copied, 0 already there, 2 failed"),
        "{out}"
    );
    assert!(
        !dir.join("@rack/build/typescript/1.0.0").exists(),
        "no partial version"
    );
    proxy.clear();
    let (code, out) = mirror(scratch.path(), &env, &proxy.url, &["--dir", &dir_arg, "--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("2 versions copied, 8 already there, 0 failed"),
        "{out}"
    );
    let (code, out) = mirror(scratch.path(), &env, &proxy.url, &["--dir", &dir_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 versions copied, 10 already there"), "{out}");
    assert!(
        dir.join("schema/registry-item.json").is_file(),
        "--all copies the schemas"
    );
    // The copy is a storage root: check finds nothing wrong, and a server on it serves what A does.
    let check_env = vec![("STORAGE_ROOT".to_owned(), dir_arg.clone())];
    let (code, out) = common::run_cli(scratch.path(), &check_env, &["storage", "check", "--deep"]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::create_dir_all(scratch.path().join("config")).unwrap();
    std::fs::copy(
        common::world_dir().join("auth.json"),
        scratch.path().join("config/auth.json"),
    )
    .unwrap();
    let offline = Server::start(
        scratch.path(),
        &[
            ("STORAGE_ROOT".to_owned(), dir_arg.clone()),
            (
                "AUTH_CONFIG_PATH".to_owned(),
                scratch.path().join("config/auth.json").display().to_string(),
            ),
        ],
    );
    assert_same_rack(&a.base, &offline.base);
}

#[test]
fn mirror_into_a_bucket() {
    let Some(bucket) = common::s3::Bucket::new() else {
        return;
    };
    let world_a = World::new();
    let a = Server::world(&world_a);
    let scratch = tempfile::tempdir().unwrap();
    let mut env = bucket.env();
    env.push((
        "STORAGE_ROOT".into(),
        scratch.path().join("staging").display().to_string(),
    ));
    let (code, out) = mirror(scratch.path(), &env, &a.base, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("10 versions copied"), "{out}");
    let (code, out) = mirror(scratch.path(), &env, &a.base, &[]);
    assert!(
        code == Some(0) && out.contains("0 versions copied, 10 already there"),
        "{out}"
    );
    let (code, out) = common::run_cli(scratch.path(), &env, &["storage", "check", "--deep"]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::create_dir_all(scratch.path().join("config")).unwrap();
    std::fs::copy(
        common::world_dir().join("auth.json"),
        scratch.path().join("config/auth.json"),
    )
    .unwrap();
    env.push((
        "AUTH_CONFIG_PATH".into(),
        scratch.path().join("config/auth.json").display().to_string(),
    ));
    let served = Server::start(scratch.path(), &env);
    assert_same_rack(&a.base, &served.base);
}

#[test]
fn upstreams_check_gives_the_servers_verdict_and_a_broken_file_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"upstreams": [{"url": "https://registry.rackjs.com", "namespaces": ["@rack"], "token": "sekrit-token"}]}"#,
    )
    .unwrap();
    let (code, out) = common::run_cli(dir.path(), &[], &["upstreams", "check", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("https://registry.rackjs.com: @rack") && !out.contains("sekrit-token"),
        "{out}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"upstreams": [{"url": "https://u:p@x", "namespaces": ["@rack"]}]}"#,
    )
    .unwrap();
    let (code, out) = common::run_cli(dir.path(), &[], &["upstreams", "check", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("credentials in the URL are refused"), "{out}");
    // The server refuses to start on it (fail-closed), saying why.
    let world = World::new();
    let env = world.env_with(&[("UPSTREAMS_CONFIG_PATH", bad.to_str().unwrap())]);
    let Err(failure) = Server::try_start(world.path(), &env) else {
        panic!("started with a malformed upstreams.json");
    };
    assert!(
        failure.output.contains("UPSTREAMS_CONFIG_PATH"),
        "{}",
        failure.output
    );
}

/// Two replicas on one bucket fetching the same version at once store it once: both serve the
/// upstream's bytes, and the bucket holds one whole version with its integrity record.
#[test]
fn two_replicas_fetching_one_version_at_once_store_it_once() {
    let Some(bucket) = common::s3::Bucket::new() else {
        return;
    };
    let world_a = World::new();
    let a = Server::world(&world_a);
    let world_b = b_world(&a.base, 300, 10);
    let path = world_b.path().join("config/upstreams.json");
    let mut env = world_b.env_on_bucket(&bucket);
    env.push(("UPSTREAMS_CONFIG_PATH".into(), path.display().to_string()));
    let b1 = Server::start(world_b.path(), &env);
    let b2 = Server::start(world_b.path(), &env);
    let file = format!(
        "/registries/@rack/build/rollup/1.0.0/files/{}",
        first_file(&a.base, "@rack/build/rollup")
    );
    let barrier = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 {
                b1.base.clone()
            } else {
                b2.base.clone()
            };
            let (barrier, file) = (barrier.clone(), file.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&base, &file)
            })
        })
        .collect();
    let want = get(&a.base, &file);
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
    let (code, out) = common::run_cli(world_b.path(), &env, &["storage", "check", "--deep"]);
    assert_eq!(code, Some(0), "{out}");
}
