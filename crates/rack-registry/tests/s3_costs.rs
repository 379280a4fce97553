//! What the server asks of the bucket (SPEC §11.2, §11.3), counted by a test-only S3 front:
//! a warm read asks nothing, and a publish costs the same number of requests whatever the
//! number of versions the registry already has.

mod common;
#[path = "common/pkg.rs"]
mod pkg;
#[path = "common/s3front.rs"]
mod s3front;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::s3::Bucket;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

fn counted_server(
    extra: &[(&str, &str)],
) -> Option<(common::World, common::Server, Arc<s3front::Behaviour>)> {
    let bucket = Bucket::new()?;
    let behaviour = Arc::new(s3front::Behaviour::default());
    let front = Bucket {
        endpoint: s3front::start(bucket.endpoint.clone(), behaviour.clone()),
        name: bucket.name.clone(),
    };
    let world = common::World::new();
    let mut env = world.env_on_bucket(&front);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let server = common::Server::start(world.path(), &env);
    Some((world, server, behaviour))
}

#[test]
fn warm_reads_do_not_call_the_bucket() {
    let Some((_world, server, front)) = counted_server(&[("STORAGE_REVALIDATE_MS", "600000")]) else {
        return;
    };
    let paths = [
        "/registries/@rack/build/rollup",
        "/registries/@rack/build/rollup/1.0.0",
        "/registries/@rack/build/rollup/versions",
        "/presets/node",
        "/schemas/rack.json",
        "/namespaces/@rack/registries",
    ];
    for p in paths {
        let (status, _) = pkg::get(&server.base, p, Some(READ));
        assert_eq!(status, 200, "{p}");
    }
    let cold = front.requests.load(Ordering::SeqCst);
    for _ in 0..10 {
        for p in paths {
            assert_eq!(pkg::get(&server.base, p, Some(READ)).0, 200, "{p}");
        }
    }
    assert_eq!(
        front.requests.load(Ordering::SeqCst),
        cold,
        "warm reads asked the bucket"
    );
}

#[test]
fn requests_per_publish_stay_flat_as_the_registry_grows() {
    let Some((_world, server, front)) = counted_server(&[]) else {
        return;
    };
    let mut costs = Vec::new();
    for minor in 0..25 {
        let version = format!("1.{minor}.0");
        let m = pkg::manifest(
            "@company",
            "growing",
            &version,
            "registry:build",
            &["templates/a.txt"],
        );
        let p = pkg::package(&m, &[("templates/a.txt", version.as_bytes())]);
        let before = front.requests.load(Ordering::SeqCst);
        let reply = pkg::Upload::new(p).bearer(PUBLISH).send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
        costs.push(front.requests.load(Ordering::SeqCst) - before);
    }
    eprintln!("requests per publish: {costs:?}");
    // The first publish creates the registry (versions.json, the namespace index); every later
    // one costs exactly the same.
    assert!(
        costs[1..].iter().all(|c| *c == costs[1]),
        "requests per publish: {costs:?}"
    );
    assert!(costs[1] <= 12, "requests per publish: {costs:?}");
}
