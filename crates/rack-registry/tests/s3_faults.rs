//! Publishers SIGKILLed mid-publish on a bucket (SPEC §11.2): the test-only S3 front
//! (`common/faultproxy.rs`) holds one PUT of the publish forever, so the server is killed at a
//! known step; the next publish or the sweep repairs what it left, and `storage check` is clean
//! afterwards.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::time::{Duration, Instant};

use common::s3::Bucket;
use faultproxy::{Fault, FaultProxy, Rule};
use serde_json::json;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

fn package(version: &str, bytes: &str) -> Vec<u8> {
    let m = pkg::manifest(
        "@company",
        "crashy",
        version,
        "registry:build",
        &["templates/a.txt", "templates/b.txt"],
    );
    pkg::package(
        &m,
        &[
            ("templates/a.txt", bytes.as_bytes()),
            ("templates/b.txt", bytes.as_bytes()),
        ],
    )
}

/// Start a server through a front that holds the PUTs whose path contains `suffix` (a key's
/// end: nothing else a publish writes contains it), upload, and SIGKILL the server once the
/// upload is held there.
fn kill_publisher_at(bucket: &Bucket, world: &common::World, suffix: &str, version: &str) {
    let proxy = FaultProxy::start(&bucket.endpoint);
    let mut env = world.env_on_bucket(&proxy.bucket(bucket));
    env.push(("PUBLISH_LEASE_SECONDS".into(), "6".into()));
    env.push(("STORAGE_TIMEOUT_SECONDS".into(), "2".into()));
    let server = common::Server::start(world.path(), &env);
    proxy.inject(Rule::new("PUT", suffix, Fault::Hang));
    let base = server.base.clone();
    let body = package(version, "dead bytes\n");
    std::thread::spawn(move || pkg::Upload::new(body).bearer(PUBLISH).send(&base));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.hung() == 0 {
        assert!(Instant::now() < deadline, "the publish never reached {suffix}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
}

/// `storage check` output about this test's registry (the conformance world keeps a few
/// deliberate violations of its own elsewhere).
fn check(bucket: &Bucket, world: &common::World) -> Vec<String> {
    let (_, out) = common::run_cli(world.path(), &bucket.env(), &["storage", "check"]);
    out.lines()
        .filter(|l| l.contains("crashy") || l.contains("lease"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn killed_after_some_template_files_the_next_publish_repairs_the_version() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    kill_publisher_at(&bucket, &world, "/1.0.0/registry.json", "1.0.0");
    // The lease (6 s, on the bucket's clock) expires; a new server publishes the same version
    // with other bytes.
    std::thread::sleep(Duration::from_millis(7500));
    let mut env = world.env_on_bucket(&bucket);
    env.push(("PUBLISH_LEASE_SECONDS".into(), "6".into()));
    env.push(("STORAGE_TIMEOUT_SECONDS".into(), "2".into()));
    let server = common::Server::start(world.path(), &env);
    let reply = pkg::Upload::new(package("1.0.0", "live bytes\n"))
        .bearer(PUBLISH)
        .send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    for file in ["a.txt", "b.txt"] {
        let (status, body) = pkg::get(
            &server.base,
            &format!("/registries/@company/build/crashy/1.0.0/files/templates/{file}"),
            Some(READ),
        );
        assert_eq!((status, body), (200, b"live bytes\n".to_vec()));
    }
    // The dead publisher's partial files were removed before the new publish wrote its own.
    let back = world.path().join("back");
    bucket.storage_cli(world.path(), &["pull", &back.display().to_string()]);
    let version = back.join("@company/build/crashy/1.0.0");
    assert!(version.join("templates/a.txt").is_file());
    assert!(
        !version.join("templates/dead-only.txt").exists(),
        "a dead publisher's file remains"
    );
    assert_eq!(check(&bucket, &world), Vec::<String>::new());
}

#[test]
fn killed_before_versions_json_the_sweep_lists_the_version() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    kill_publisher_at(&bucket, &world, "/crashy/versions.json", "1.0.0");
    let found = check(&bucket, &world);
    assert!(
        found
            .iter()
            .any(|l| l.contains("crashy/versions.json: missing versions.json")),
        "the kill left a version without versions.json: {found:?}"
    );
    // A restarted replica sweeps expired leases in the background: the version gets listed.
    let mut env = world.env_on_bucket(&bucket);
    env.push(("PUBLISH_LEASE_SECONDS".into(), "6".into()));
    env.push(("STORAGE_TIMEOUT_SECONDS".into(), "2".into()));
    let server = common::Server::start(world.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = pkg::get(&server.base, "/registries/@company/build/crashy", Some(READ));
        if status == 200 {
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(m["version"], json!("1.0.0"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep never listed 1.0.0 ({status})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(check(&bucket, &world), Vec::<String>::new());
}
