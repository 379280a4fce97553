//! Two server processes on one bucket (SPEC §11.2, §11.3): racing uploads split across both
//! replicas, and a version published on one read on the other.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use common::s3::Bucket;
use serde_json::json;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

fn replicas(bucket: &Bucket) -> (common::World, common::Server, common::Server) {
    let world = common::World::new();
    let mut env = world.env_on_bucket(bucket);
    env.push(("MAX_CONCURRENT_UPLOADS".into(), "32".into()));
    let a = common::Server::start(world.path(), &env);
    // Its own staging directory, as on another machine.
    let mut env_b: Vec<(String, String)> = env.iter().filter(|(k, _)| k != "STORAGE_ROOT").cloned().collect();
    env_b.push((
        "STORAGE_ROOT".into(),
        world.path().join("scratch-b").display().to_string(),
    ));
    let b = common::Server::start(world.path(), &env_b);
    (world, a, b)
}

#[test]
fn twenty_racing_uploads_across_two_replicas_publish_one_winner_intact() {
    let Some(bucket) = Bucket::new() else { return };
    let (world, a, b) = replicas(&bucket);
    let packages: Vec<(serde_json::Value, Vec<u8>)> = (0..20)
        .map(|i| {
            let mut m = pkg::manifest(
                "@company",
                "racer",
                "1.0.0",
                "registry:build",
                &["templates/a.txt"],
            );
            m["description"] = json!(format!("publisher {i}"));
            let body = format!("bytes of publisher {i}\n");
            let p = pkg::package(&m, &[("templates/a.txt", body.as_bytes())]);
            (m, p)
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = packages
            .iter()
            .enumerate()
            .map(|(i, (_, p))| {
                let base = if i % 2 == 0 {
                    a.base.clone()
                } else {
                    b.base.clone()
                };
                scope.spawn(move || pkg::Upload::new(p.clone()).bearer(PUBLISH).send(&base).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");

    // Both replicas serve the winner's manifest and the winner's bytes.
    let (status, manifest) = pkg::get(&a.base, "/registries/@company/build/racer/1.0.0", Some(READ));
    assert_eq!(status, 200);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let winner: usize = manifest["description"].as_str().unwrap()["publisher ".len()..]
        .parse()
        .unwrap();
    assert_eq!(manifest, packages[winner].0);
    for server in [&a, &b] {
        let (status, body) = pkg::get(
            &server.base,
            "/registries/@company/build/racer/1.0.0/files/templates/a.txt",
            Some(READ),
        );
        assert_eq!(
            (status, body),
            (200, format!("bytes of publisher {winner}\n").into_bytes())
        );
    }
    let back = world.path().join("back");
    bucket.storage_cli(world.path(), &["pull", &back.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(back.join("@company/build/racer/versions.json")).unwrap(),
        pkg::versions_json(&["1.0.0"])
    );
}

#[test]
fn a_version_published_on_one_replica_is_read_on_the_other() {
    let Some(bucket) = Bucket::new() else { return };
    let (_world, a, b) = replicas(&bucket);
    let publish = |server: &common::Server, version: &str| {
        let m = pkg::manifest(
            "@company",
            "shared",
            version,
            "registry:build",
            &["templates/a.txt"],
        );
        let p = pkg::package(&m, &[("templates/a.txt", version.as_bytes())]);
        let reply = pkg::Upload::new(p).bearer(PUBLISH).send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
    };
    let listing = |server: &common::Server| {
        let (status, body) = pkg::get(&server.base, "/namespaces/@company/registries", Some(READ));
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["registries"].clone()
    };
    let before = listing(&a);
    assert!(
        !before.as_array().unwrap().contains(&json!("build/shared")),
        "{before}"
    );
    publish(&a, "1.0.0");
    // The publishing replica lists the new registry at once (its own index change).
    assert!(listing(&a).as_array().unwrap().contains(&json!("build/shared")));
    let (status, _) = pkg::get(&b.base, "/registries/@company/build/shared/1.0.0", Some(READ));
    assert_eq!(status, 200);
    // B has versions.json cached now; a publish on A shows on B once the revalidation window
    // (STORAGE_REVALIDATE_MS, 1 s by default) has passed.
    publish(&a, "2.0.0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = pkg::get(&b.base, "/registries/@company/build/shared", Some(READ));
        assert_eq!(status, 200);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if m["version"] == json!("2.0.0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replica B never saw 2.0.0");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
