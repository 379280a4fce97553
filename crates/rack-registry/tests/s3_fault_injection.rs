//! Fault injection on the bucket path (issue 15): a test-only injector between the server and
//! moto (`common/faultproxy.rs`) adds latency, 5xx answers, dropped connections and hangs to one
//! kind of S3 request at a time, while one server process keeps running.
//!
//! For each cell of {GET object, LIST, PUT, conditional PUT} x {latency, 500, 503, drop, hang,
//! one 503, one 500 after the store applied the request}: a read is either right (200, the exact
//! bytes) or a clear 5xx with the JSON error body, and it always answers (the storage calls are
//! bounded by `STORAGE_TIMEOUT_SECONDS`); a publish either completes (201, readable) or leaves
//! nothing visible (the version is 404, `versions.json` and the listing are unchanged, `storage
//! check` has nothing to say); and once the fault is removed the same process serves again.
//! The matrix is printed (`--nocapture`) as the rows of docs/RELIABILITY.md.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::time::{Duration, Instant};

use common::s3::Bucket;
use faultproxy::{Fault, FaultProxy, Rule};

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";
/// The server's `STORAGE_TIMEOUT_SECONDS` here: short, so that a hang costs little.
const TIMEOUT_SECONDS: &str = "2";
const REGISTRY: &str = "/registries/@company/build/faulty";

fn bytes_of(version: &str) -> Vec<u8> {
    format!("bytes of {version}\n").into_bytes()
}

fn package(version: &str) -> Vec<u8> {
    let m = pkg::manifest(
        "@company",
        "faulty",
        version,
        "registry:build",
        &["templates/a.txt", "templates/b.txt"],
    );
    let body = bytes_of(version);
    pkg::package(&m, &[("templates/a.txt", &body), ("templates/b.txt", &body)])
}

/// The faults of the matrix: name, fault, whether the operation must still succeed.
fn faults() -> Vec<(&'static str, Rule, bool)> {
    let r = |f| Rule::new("", "", f);
    vec![
        (
            "latency 300 ms",
            r(Fault::Latency(Duration::from_millis(300))),
            true,
        ),
        ("500 (every attempt)", r(Fault::Status(500)), false),
        ("503 (every attempt)", r(Fault::Status(503)), false),
        ("connection dropped", r(Fault::Drop), false),
        ("hang (no answer)", r(Fault::Hang), false),
        ("one 503, then healthy", r(Fault::Status(503)).times(1), true),
        (
            "one 500 after the store applied it",
            r(Fault::StatusAfter(500)).times(1),
            true,
        ),
    ]
}

/// A bucket with the conformance world and `@company/build/faulty@1.0.0`, and a server that
/// reaches it through a fault injector.
struct Rig {
    bucket: Bucket,
    world: common::World,
    proxy: FaultProxy,
    server: common::Server,
}

fn rig() -> Option<Rig> {
    let bucket = Bucket::new()?;
    let world = common::World::new();
    let proxy = FaultProxy::start(&bucket.endpoint);
    let mut env = world.env_on_bucket(&bucket);
    for (k, v) in env.iter_mut() {
        if k == "S3_ENDPOINT" {
            *v = proxy.url.clone();
        }
    }
    env.extend(
        [
            ("STORAGE_TIMEOUT_SECONDS", TIMEOUT_SECONDS),
            // Short leases: a publish that fails after its registry.json is listed by the
            // sweep within seconds.
            ("PUBLISH_LEASE_SECONDS", "6"),
            // Every read goes to the bucket: nothing is served from memory.
            ("CACHE_MAX_BYTES", "0"),
            ("STORAGE_REVALIDATE_MS", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let server = common::Server::start(world.path(), &env);
    let rig = Rig {
        bucket,
        world,
        proxy,
        server,
    };
    let reply = rig.publish("1.0.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    Some(rig)
}

impl Rig {
    fn get(&self, path: &str) -> pkg::Reply {
        // Far above STORAGE_TIMEOUT_SECONDS: a reply that does not come is a hang.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        pkg::send(client.get(self.server.url(path)).bearer_auth(READ))
    }

    fn publish(&self, version: &str) -> pkg::Reply {
        pkg::Upload::new(package(version))
            .bearer(PUBLISH)
            .send(&self.server.base)
    }

    fn versions(&self) -> serde_json::Value {
        let r = self.get(&format!("{REGISTRY}/versions"));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    /// What `storage check` reports about this test's registry and leases.
    fn check(&self) -> Vec<String> {
        let (_, out) = common::run_cli(self.world.path(), &self.bucket.env(), &["storage", "check"]);
        out.lines()
            .filter(|l| l.contains("faulty") || l.contains("lease"))
            .map(str::to_owned)
            .collect()
    }

    /// Apply `rule`, run `op`, remove the fault; the reply and how long it took.
    fn under(&self, rule: Rule, op: impl FnOnce() -> pkg::Reply) -> (pkg::Reply, Duration) {
        self.proxy.inject(rule);
        let start = Instant::now();
        let reply = op();
        let took = start.elapsed();
        self.proxy.clear();
        (reply, took)
    }
}

/// A failed operation is a clear 5xx: the JSON error body, nothing of the object.
#[track_caller]
fn assert_clear_5xx(reply: &pkg::Reply, cell: &str) {
    assert!(reply.status >= 500, "{cell}: {} {}", reply.status, reply.text);
    reply.assert_code(500, "INTERNAL_SERVER_ERROR");
}

fn row(op: &str, fault: &str, reply: &pkg::Reply, took: Duration, after: &str) {
    let code = reply.json_code();
    eprintln!(
        "| {op} | {fault} | {} {code} | {:.1} s | {after} |",
        reply.status,
        took.as_secs_f64()
    );
}

trait Code {
    fn json_code(&self) -> String;
}

impl Code for pkg::Reply {
    fn json_code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.text)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A read under every fault: right or a clear 5xx, then right again once the fault is gone.
fn read_matrix(op: &str, method: &'static str, contains: &str, path: &str, good: impl Fn(&pkg::Reply)) {
    let Some(rig) = rig() else { return };
    for (name, mut rule, succeeds) in faults() {
        (rule.method, rule.contains) = (method, contains.to_owned());
        let before = rig.proxy.faulted();
        let (reply, took) = rig.under(rule, || rig.get(path));
        assert!(
            rig.proxy.faulted() > before,
            "{op} / {name}: the fault was never applied"
        );
        if succeeds {
            good(&reply);
        } else {
            assert_clear_5xx(&reply, &format!("{op} / {name}"));
        }
        // The same process serves again as soon as the store does.
        let again = rig.get(path);
        good(&again);
        row(op, name, &reply, took, "200 at once");
    }
}

#[test]
fn get_object_under_every_fault() {
    let path = format!("{REGISTRY}/1.0.0/files/templates/a.txt");
    read_matrix(
        "GET object (a template file)",
        "GET",
        "/faulty/1.0.0/templates/a.txt",
        &path,
        |r| {
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.text.as_bytes(), bytes_of("1.0.0"), "never a wrong body");
        },
    );
}

#[test]
fn list_under_every_fault() {
    read_matrix("LIST (`/namespaces`)", "GET", "list-type=2", "/namespaces", |r| {
        assert_eq!(r.status, 200, "{}", r.text);
        let names = r.json()["namespaces"].clone();
        assert!(
            names.as_array().unwrap().iter().any(|n| n == "@company"),
            "{}",
            r.text
        );
    });
}

/// A publish under every fault on `contains` (a PUT, conditional or not): a 201 with the
/// version readable, or a 5xx with nothing visible; the same version publishes once the fault
/// is gone. `after_commit`: the PUT comes after `registry.json` (SPEC §11.2 step 6), so a
/// failure leaves the version visible (a published version is never taken back): 503, and the
/// lease sweep lists it.
fn publish_matrix(op: &str, contains: &str, conditional: bool, after_commit: bool) {
    let Some(rig) = rig() else { return };
    let mut listed = vec!["1.0.0".to_owned()];
    for (i, (name, mut rule, succeeds)) in faults().into_iter().enumerate() {
        let version = format!("1.0.{}", i + 1);
        (rule.method, rule.contains, rule.conditional) = ("PUT", contains.to_owned(), conditional);
        let registries = rig.get("/namespaces/@company/registries").text;
        let before = rig.proxy.faulted();
        let (reply, took) = rig.under(rule, || rig.publish(&version));
        assert!(
            rig.proxy.faulted() > before,
            "{op} / {name}: the fault was never applied"
        );
        let manifest = rig.get(&format!("{REGISTRY}/{version}"));
        let after = if succeeds {
            assert_eq!(reply.status, 201, "{op} / {name}: {}", reply.text);
            assert_eq!(manifest.status, 200, "{}", manifest.text);
            listed.insert(0, version.clone());
            "published"
        } else if after_commit {
            assert_eq!(reply.status, 503, "{op} / {name}: {}", reply.text);
            assert_eq!(manifest.status, 200, "{op} / {name}: visible: {}", manifest.text);
            let deadline = Instant::now() + Duration::from_secs(40);
            while !rig.versions()["versions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == version.as_str())
            {
                assert!(
                    Instant::now() < deadline,
                    "{op} / {name}: the sweep never listed it"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            assert_eq!(rig.check(), Vec::<String>::new(), "{op} / {name}");
            assert_eq!(rig.publish(&version).status, 409, "{op} / {name}");
            listed.insert(0, version.clone());
            "visible at once, listed by the sweep"
        } else {
            assert_clear_5xx(&reply, &format!("{op} / {name}"));
            // Nothing of the failed publish is visible.
            assert_eq!(manifest.status, 404, "{op} / {name}: {}", manifest.text);
            let file = rig.get(&format!("{REGISTRY}/{version}/files/templates/a.txt"));
            assert_eq!(file.status, 404, "{op} / {name}: {}", file.text);
            assert_eq!(rig.check(), Vec::<String>::new(), "{op} / {name}");
            // The same process publishes the same version once the store is healthy.
            let again = rig.publish(&version);
            assert_eq!(again.status, 201, "{op} / {name}, healthy again: {}", again.text);
            listed.insert(0, version.clone());
            "nothing visible; 201 at once"
        };
        assert_eq!(
            rig.versions()["versions"],
            serde_json::json!(listed),
            "{op} / {name}"
        );
        assert_eq!(rig.get("/namespaces/@company/registries").text, registries);
        let file = rig.get(&format!("{REGISTRY}/{version}/files/templates/b.txt"));
        assert_eq!(file.text.as_bytes(), bytes_of(&version), "{op} / {name}");
        row(op, name, &reply, took, after);
    }
    assert_eq!(rig.check(), Vec::<String>::new());
}

#[test]
fn put_under_every_fault() {
    // The template files: create-only PUTs under the lease.
    publish_matrix("PUT (template files)", "/templates/", false, false);
}

#[test]
fn conditional_put_under_every_fault() {
    // `versions.json` by compare-and-swap (`If-Match`): the last write, after the manifest.
    publish_matrix(
        "conditional PUT (`versions.json`)",
        "/faulty/versions.json",
        true,
        true,
    );
}

// ---------------------------------------------------------------------------------------------
// Findings: a create-only write that the store applied but answered 5xx. The client retries, the
// retry is refused ("exists"), and the publish took its own write for someone else's.
// ---------------------------------------------------------------------------------------------

/// Publish `version` while the first conditional PUT whose path holds `contains` is applied by
/// the store and answered 500: a 201, the version listed, nothing left behind.
fn lost_answer(contains: &str, version: &str) {
    let Some(rig) = rig() else { return };
    let rule = Rule::new("PUT", contains, Fault::StatusAfter(500))
        .conditional()
        .times(1);
    let (reply, _) = rig.under(rule, || rig.publish(version));
    assert_eq!(rig.proxy.faulted(), 1, "the fault was never applied");
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(rig.versions()["versions"], serde_json::json!([version, "1.0.0"]));
    assert_eq!(
        rig.check(),
        Vec::<String>::new(),
        "a lease or a partial version is left"
    );
    // Nothing blocks the next publish of the registry.
    assert_eq!(rig.publish("2.0.0").status, 201);
}

#[test]
fn a_lost_answer_to_the_lease_write_is_not_a_conflict() {
    // The first conditional PUT under the version is its lease (`.rack/leases/...`).
    lost_answer("/faulty/1.1.0", "1.1.0");
}

#[test]
fn a_lost_answer_to_the_manifest_write_is_not_a_conflict() {
    lost_answer("/faulty/1.1.0/registry.json", "1.1.0");
}
