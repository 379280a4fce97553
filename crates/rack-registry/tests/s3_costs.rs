//! What the server asks of the bucket (SPEC §11.2, §11.3), counted by the test-only S3 front
//! (`common/faultproxy.rs`, no fault injected):
//! a warm read asks nothing, and a publish costs the same number of requests whatever the
//! number of versions the registry already has.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use common::s3::Bucket;
use faultproxy::FaultProxy;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

fn counted_server(extra: &[(&str, &str)]) -> Option<(common::World, common::Server, FaultProxy)> {
    let bucket = Bucket::new()?;
    let proxy = FaultProxy::start(&bucket.endpoint);
    let front = proxy.bucket(&bucket);
    let world = common::World::new();
    let mut env = world.env_on_bucket(&front);
    // The webhook outbox on local disk: the bucket outbox lists `.rack/outbox/` now and then
    // (SPEC §11.4), which would land in the counts of reads and publishes measured here.
    env.push((
        "WEBHOOK_OUTBOX_DIR".into(),
        world.path().join("outbox").display().to_string(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let server = common::Server::start(world.path(), &env);
    Some((world, server, proxy))
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
    let cold = front.requests();
    for _ in 0..10 {
        for p in paths {
            assert_eq!(pkg::get(&server.base, p, Some(READ)).0, 200, "{p}");
        }
    }
    assert_eq!(front.requests(), cold, "warm reads asked the bucket");
}

/// Publish `count` versions of one registry; the bucket requests each publish made (and, in
/// `times`, how long each took).
fn publish_costs(
    server: &common::Server,
    front: &FaultProxy,
    count: usize,
    times: &mut Vec<std::time::Duration>,
) -> Vec<usize> {
    let mut costs = Vec::new();
    for n in 0..count {
        let version = format!("1.{n}.0");
        let m = pkg::manifest(
            "@company",
            "growing",
            &version,
            "registry:build",
            &["templates/a.txt"],
        );
        let p = pkg::package(&m, &[("templates/a.txt", version.as_bytes())]);
        let before = front.requests();
        let t0 = std::time::Instant::now();
        let reply = pkg::Upload::new(p).bearer(PUBLISH).send(&server.base);
        times.push(t0.elapsed());
        assert_eq!(reply.status, 201, "{}", reply.text);
        costs.push(front.requests() - before);
    }
    costs
}

#[test]
fn requests_per_publish_stay_flat_as_the_registry_grows() {
    // Uploads validate against the bucket's served registry-item schema, a mutable object
    // revalidated once per STORAGE_REVALIDATE_MS: with the default 1 s window a publish would
    // now and then add that one HEAD. A long window keeps the count exact.
    let Some((_world, server, front)) = counted_server(&[("STORAGE_REVALIDATE_MS", "600000")]) else {
        return;
    };
    let costs = publish_costs(&server, &front, 25, &mut Vec::new());
    eprintln!("requests per publish: {costs:?}");
    // The first publish creates the registry (versions.json, the namespace index); every later
    // one costs exactly the same.
    assert!(
        costs[1..].iter().all(|c| *c == costs[1]),
        "requests per publish: {costs:?}"
    );
    // SPEC §11.2, one-file publish: 17 measured (docs/object-storage.md, "Requests per
    // publish"): 11 before fenced leases, renewals and integrity records, 15 before the version
    // lifecycle (SPEC §18: lifecycle.json read under the lease in step 3, and again after
    // versions.json by the listing merge).
    assert!(costs[1] <= 17, "requests per publish: {costs:?}");
}

/// The benchmark behind docs/PERFORMANCE.md (run by `bench/s3_publish.sh`, not in CI: a
/// thousand publishes take minutes): `RACK_BENCH_VERSIONS` versions (default 1,000) of one
/// registry, the requests of each publish, summarised per range of registry sizes.
#[test]
#[ignore = "benchmark: bench/s3_publish.sh"]
fn bench_requests_per_publish_up_to_1000_versions() {
    let count: usize = std::env::var("RACK_BENCH_VERSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let Some((_world, server, front)) = counted_server(&[]) else {
        panic!("the benchmark needs an S3 server (RACK_S3_ENDPOINT or tools/ministack/start)");
    };
    let started = std::time::Instant::now();
    let mut times = Vec::new();
    let costs = publish_costs(&server, &front, count, &mut times);
    println!("versions published: {count} in {:?}", started.elapsed());
    println!("first publish (creates the registry): {} requests", costs[0]);
    let mut lo = 1;
    while lo < count {
        let hi = (lo * 10).min(count);
        let range = &costs[lo..hi];
        let (min, max) = (range.iter().min().unwrap(), range.iter().max().unwrap());
        let mean = range.iter().sum::<usize>() as f64 / range.len() as f64;
        let ms = times[lo..hi].iter().map(|t| t.as_secs_f64()).sum::<f64>() * 1000.0 / range.len() as f64;
        println!(
            "publishes {:>4} to {:>4} (registry holding {} to {} versions): requests min {min}, max {max}, mean {mean:.2}; mean time {ms:.1} ms",
            lo + 1,
            hi,
            lo,
            hi - 1
        );
        lo = hi;
    }
    // Flat: every later publish costs the same, except the rare one during which the
    // background lease sweep (one list per PUBLISH_LEASE_SECONDS, 120 s) also asked the bucket.
    let base = costs[1];
    let extra: Vec<usize> = (1..count).filter(|&i| costs[i] != base).collect();
    println!(
        "publishes costing other than {base}: {:?}",
        extra.iter().map(|&i| (i, costs[i])).collect::<Vec<_>>()
    );
    let sweeps = (started.elapsed().as_secs() / 120 + 1) as usize;
    assert!(
        extra.iter().all(|&i| costs[i] == base + 1) && extra.len() <= sweeps,
        "requests per publish are not flat: {costs:?}"
    );
}
