//! The bucket publish protocol of SPEC §11.2 against the defects of issue 24, with real server
//! processes on the atomic test S3 server (`common/s3.rs`), and the test-only S3 front
//! (`common/faultproxy.rs`) for slow links and held requests:
//!
//! - a slow publisher outliving its first lease keeps it by renewing (the other replica: 409),
//!   and a publisher paused past its lease (SIGSTOP, a paused VM) never writes again after
//!   another replica took over: either way every file of the version is the winner's;
//! - replicas whose clocks run minutes apart neither steal a live lease nor keep a dead one;
//! - `1.0.0+a` and `1.0.0+b` on two replicas: one 201;
//! - a publisher killed between `versions.json` and the namespace index: the sweep indexes it;
//! - a version finished by the sweep fires its webhooks;
//! - orphans under a version's prefix never become part of a later publish of it;
//! - `storage check --repair` in a loop during 200 publishes on two replicas loses nothing.
//!
//! Leases are 6 s with `STORAGE_TIMEOUT_SECONDS=2` (the shortest pair the server accepts).

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::Bucket;
use faultproxy::{Fault, FaultProxy, Rule};

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";
const LEASE: Duration = Duration::from_secs(6);

/// A package of `@company/build/<name>@<version>` with `n` files, every byte naming `tag`.
fn package(name: &str, version: &str, tag: &str, n: usize) -> Vec<u8> {
    let paths: Vec<String> = (0..n).map(|i| format!("templates/f{i:03}.txt")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let m = pkg::manifest("@company", name, version, "registry:build", &refs);
    let body = format!("{tag}\n");
    let files: Vec<(&str, &[u8])> = refs.iter().map(|p| (*p, body.as_bytes())).collect();
    pkg::package(&m, &files)
}

fn env(world: &common::World, bucket: &Bucket, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = world.env_on_bucket(bucket);
    env.push(("PUBLISH_LEASE_SECONDS".into(), LEASE.as_secs().to_string()));
    env.push(("STORAGE_TIMEOUT_SECONDS".into(), "2".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn upload(base: &str, body: Vec<u8>) -> pkg::Reply {
    pkg::Upload::new(body).bearer(PUBLISH).send(base)
}

/// Every file of `name@version` as served: all `n` must hold `tag`'s bytes.
fn assert_all_files_are(base: &str, name: &str, version: &str, tag: &str, n: usize) {
    for i in 0..n {
        let path = format!("/registries/@company/build/{name}/{version}/files/templates/f{i:03}.txt");
        let (status, body) = pkg::get(base, &path, Some(READ));
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{tag}\n"),
            "{path} is not {tag}'s"
        );
    }
}

/// `storage check --deep` lines about registry `name`, or about leases.
fn problems(world: &common::World, bucket: &Bucket, name: &str) -> Vec<String> {
    let (_, out) = common::run_cli(world.path(), &bucket.env(), &["storage", "check", "--deep"]);
    out.lines()
        .filter(|l| {
            l.contains(&format!("/{name}/")) || l.contains(&format!("/{name}@")) || l.contains("lease")
        })
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(server: &common::Server, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Replica A behind a slow link (every template PUT delayed by `latency_ms`) and replica B
/// (with `b_env` added) on the same bucket; the delay starts once both are up (their startup
/// pushes the world through the front).
fn slow_and_direct(
    world: &common::World,
    bucket: &Bucket,
    latency_ms: u64,
    b_env: &[(&str, &str)],
) -> (FaultProxy, common::Server, common::Server) {
    let proxy = FaultProxy::start(&bucket.endpoint);
    let a = common::Server::start(world.path(), &env(world, &proxy.bucket(bucket), &[]));
    let b = common::Server::start(world.path(), &env(world, bucket, b_env));
    proxy.inject(Rule::new(
        "PUT",
        "/templates/",
        Fault::Latency(Duration::from_millis(latency_ms)),
    ));
    (proxy, a, b)
}

#[test]
fn a_slow_publisher_keeps_its_lease_by_renewing_and_the_other_replica_gets_409() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    // A's link: every template PUT takes 0.4 s; 160 files, 8 at a time: ~8 s, past its
    // first lease (6 s). Without renewals B would take the lease over and mix files in.
    let (_proxy, a, b) = slow_and_direct(&world, &bucket, 400, &[]);
    let base = a.base.clone();
    let slow = std::thread::spawn(move || upload(&base, package("slow", "1.0.0", "A", 160)));
    std::thread::sleep(LEASE + Duration::from_secs(1));
    let second = upload(&b.base, package("slow", "1.0.0", "B", 160));
    assert_eq!(second.status, 409, "{}", second.text);
    let first = slow.join().unwrap();
    assert_eq!(first.status, 201, "{}", first.text);
    assert_all_files_are(&b.base, "slow", "1.0.0", "A", 160);
    assert_eq!(problems(&world, &bucket, "slow"), Vec::<String>::new());
}

#[test]
fn a_replica_paused_past_its_lease_never_writes_again_after_another_took_over() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let (proxy, a, b) = slow_and_direct(&world, &bucket, 300, &[]);
    let base = a.base.clone();
    let paused = std::thread::spawn(move || upload(&base, package("paused", "1.0.0", "A", 40)));
    wait_for("A writes its files", Duration::from_secs(30), || {
        proxy.count(&["PUT", "/paused/1.0.0/templates/"]) >= 8
    });
    // A paused VM: A's lease expires on the bucket's clock while A cannot act.
    signal(&a, rustix::process::Signal::STOP);
    std::thread::sleep(LEASE + Duration::from_secs(2));
    let other = upload(&b.base, package("paused", "1.0.0", "B", 40));
    assert_eq!(
        other.status, 201,
        "B takes the expired lease over: {}",
        other.text
    );
    signal(&a, rustix::process::Signal::CONT);
    let resumed = paused.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        resumed.status,
        503,
        "A stops, fenced off: {}\n{}",
        resumed.text,
        a.output()
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&resumed.text).unwrap()["code"],
        "SERVICE_UNAVAILABLE"
    );
    // Let anything A still had in flight land, then look.
    std::thread::sleep(Duration::from_secs(2));
    assert_all_files_are(&b.base, "paused", "1.0.0", "B", 40);
    assert_eq!(problems(&world, &bucket, "paused"), Vec::<String>::new());
}

#[test]
fn replicas_with_clocks_minutes_apart_neither_steal_a_live_lease_nor_keep_a_dead_one() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    // B runs ten minutes ahead: on its own clock A's lease expired long ago.
    let (proxy, a, ahead) = slow_and_direct(&world, &bucket, 400, &[("RACK_TEST_CLOCK_OFFSET_MS", "600000")]);
    let base = a.base.clone();
    let slow = std::thread::spawn(move || upload(&base, package("skew", "1.0.0", "A", 100)));
    wait_for("A holds the lease", Duration::from_secs(30), || {
        proxy.count(&["PUT", "/skew/1.0.0/templates/"]) >= 1
    });
    let stolen = upload(&ahead.base, package("skew", "1.0.0", "B", 100));
    assert_eq!(stolen.status, 409, "{}", stolen.text);
    assert_eq!(slow.join().unwrap().status, 201);
    assert_all_files_are(&ahead.base, "skew", "1.0.0", "A", 100);

    // A publisher dies holding the lease of 2.0.0; a replica ten minutes *behind* takes it
    // over once it expires on the bucket's clock, not ten minutes later.
    proxy.clear();
    proxy.inject(Rule::new("PUT", "/skew/2.0.0/registry.json", Fault::Hang));
    let base = a.base.clone();
    std::thread::spawn(move || upload(&base, package("skew", "2.0.0", "dead", 4)));
    wait_for("the publish is held", Duration::from_secs(30), || {
        proxy.hung() > 0
    });
    a.kill9();
    let behind = common::Server::start(
        world.path(),
        &env(&world, &bucket, &[("RACK_TEST_CLOCK_OFFSET_MS", "-600000")]),
    );
    let started = Instant::now();
    let mut reply = upload(&behind.base, package("skew", "2.0.0", "C", 4));
    while reply.status == 409 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        reply = upload(&behind.base, package("skew", "2.0.0", "C", 4));
    }
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_all_files_are(&behind.base, "skew", "2.0.0", "C", 4);
}

#[test]
fn equal_precedence_on_two_replicas_gives_one_201() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let proxy = FaultProxy::start(&bucket.endpoint);
    let a = common::Server::start(world.path(), &env(&world, &proxy.bucket(&bucket), &[]));
    let b = common::Server::start(world.path(), &env(&world, &proxy.bucket(&bucket), &[]));
    proxy.inject(Rule::new(
        "PUT",
        "/templates/",
        Fault::Latency(Duration::from_millis(300)),
    ));
    let mut results = Vec::new();
    for round in 0..3 {
        let version = format!("1.{round}.0");
        let (va, vb) = (format!("{version}+a"), format!("{version}+b"));
        let (ba, bb) = (a.base.clone(), b.base.clone());
        let ta = std::thread::spawn(move || upload(&ba, package("build", &va, "A", 16)).status);
        let tb = std::thread::spawn(move || upload(&bb, package("build", &vb, "B", 16)).status);
        let mut got = [ta.join().unwrap(), tb.join().unwrap()];
        got.sort();
        results.push(got);
    }
    assert_eq!(results, [[201, 409]; 3]);
    let (status, body) = pkg::get(&a.base, "/registries/@company/build/build/versions", Some(READ));
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["versions"].as_array().unwrap().len(), 3, "{listed}");
}

/// Start a server through a front that holds the PUTs whose path contains `held`, upload, and
/// SIGKILL the server once the upload is held there.
fn kill_publisher_at(world: &common::World, bucket: &Bucket, held: &str, name: &str) {
    let proxy = FaultProxy::start(&bucket.endpoint);
    let server = common::Server::start(world.path(), &env(world, &proxy.bucket(bucket), &[]));
    proxy.inject(Rule::new("PUT", held, Fault::Hang));
    let base = server.base.clone();
    let body = package(name, "1.0.0", "dead", 2);
    std::thread::spawn(move || upload(&base, body));
    wait_for("the publish is held", Duration::from_secs(30), || {
        proxy.hung() > 0
    });
    server.kill9();
}

#[test]
fn killed_between_versions_json_and_the_namespace_index_the_sweep_indexes_the_registry() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    kill_publisher_at(&world, &bucket, "/.registries.json", "unindexed");
    let server = common::Server::start(world.path(), &env(&world, &bucket, &[]));
    wait_for("the sweep indexes the registry", Duration::from_secs(40), || {
        let (_, body) = pkg::get(&server.base, "/namespaces/@company/registries", Some(READ));
        String::from_utf8_lossy(&body).contains("\"build/unindexed\"")
    });
    assert_eq!(problems(&world, &bucket, "unindexed"), Vec::<String>::new());
}

/// A webhook receiver: every request body, answered 200.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok() {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                let mut w = conn;
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            });
        }
    });
    (url, bodies)
}

#[test]
fn a_version_finished_by_the_sweep_fires_its_webhooks() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    kill_publisher_at(&world, &bucket, "/swept/versions.json", "swept");
    let (url, bodies) = receiver();
    let hooks = world.path().join("config/webhooks.json");
    let config = serde_json::json!({"webhooks": [{"url": url, "secret": "s3cret",
        "events": ["uploaded", "version.created"], "enabled": true}]});
    std::fs::write(&hooks, config.to_string()).unwrap();
    let hooks = hooks.display().to_string();
    let _server = common::Server::start(
        world.path(),
        &env(&world, &bucket, &[("WEBHOOK_CONFIG_PATH", hooks.as_str())]),
    );
    wait_for("the sweep's webhooks arrive", Duration::from_secs(60), || {
        let got = bodies.lock().unwrap();
        ["uploaded", "version.created"].iter().all(|e| {
            got.iter().any(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
                v["event"] == *e && v["version"] == "1.0.0" && v["path"] == "@company/build/swept/1.0.0"
            })
        })
    });
}

#[test]
fn orphans_under_a_version_never_enter_a_later_publish_of_it() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let server = common::Server::start(world.path(), &env(&world, &bucket, &[]));
    // What a failed cleanup can leave: objects under the version's prefix, no registry.json,
    // no lease. One has the name of a file the next package declares.
    let orphans = world.path().join("orphans");
    for (rel, body) in [
        ("@company/build/orphaned/1.0.0/templates/f000.txt", "orphan\n"),
        ("@company/build/orphaned/1.0.0/templates/stray.txt", "orphan\n"),
        // and the integrity record of an attempt that never made the version visible
        (
            ".rack/integrity/@company/build/orphaned/1.0.0.json",
            "{\"files\":{}}\n",
        ),
        (".healthcheck", ""),
    ] {
        let p = orphans.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    bucket.storage_cli(world.path(), &["push", &orphans.display().to_string()]);
    let reply = upload(&server.base, package("orphaned", "1.0.0", "live", 3));
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_all_files_are(&server.base, "orphaned", "1.0.0", "live", 3);
    let (status, _) = pkg::get(
        &server.base,
        "/registries/@company/build/orphaned/1.0.0/files/templates/stray.txt",
        Some(READ),
    );
    assert_eq!(status, 404, "an orphan became part of the version");
    assert_eq!(problems(&world, &bucket, "orphaned"), Vec::<String>::new());
}

#[test]
fn storage_check_repair_in_a_loop_during_200_publishes_on_two_replicas_loses_nothing() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let a = common::Server::start(world.path(), &env(&world, &bucket, &[]));
    let b = common::Server::start(world.path(), &env(&world, &bucket, &[]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let repairs = {
        let (done, env, cwd) = (done.clone(), bucket.env(), world.path().to_owned());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                // Problems may be found (publishes in flight): only its exit matters here.
                let out = common::command(&cwd, &env, &["storage", "check", "--repair"])
                    .output()
                    .unwrap();
                assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
                runs += 1;
            }
            runs
        })
    };
    let published: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (bases, published) = ([a.base.clone(), b.base.clone()], published.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    let name = format!("loop{}", i % 5);
                    let version = format!("{w}.{i}.0");
                    let reply = upload(&bases[i % 2], package(&name, &version, &version, 2));
                    assert_eq!(reply.status, 201, "{name}@{version}: {}", reply.text);
                    published.lock().unwrap().push((name, version));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = repairs.join().unwrap();
    assert!(runs >= 1, "the repair ran {runs} times");
    let published = published.lock().unwrap();
    assert_eq!(published.len(), 200);
    for r in 0..5 {
        let name = format!("loop{r}");
        let (status, body) = pkg::get(
            &a.base,
            &format!("/registries/@company/build/{name}/versions"),
            Some(READ),
        );
        assert_eq!(status, 200);
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let listed: Vec<&str> = listed["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for (_, v) in published.iter().filter(|(n, _)| *n == name) {
            assert!(listed.contains(&v.as_str()), "{name}@{v} was lost: {listed:?}");
        }
        assert_eq!(listed.len(), 40, "{name}: {listed:?}");
    }
    let (_, body) = pkg::get(&b.base, "/namespaces/@company/registries", Some(READ));
    let text = String::from_utf8_lossy(&body);
    for r in 0..5 {
        assert!(text.contains(&format!("\"build/loop{r}\"")), "{text}");
    }
}
