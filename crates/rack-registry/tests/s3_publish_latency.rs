//! Benchmark (ignored; `bench/s3_publish_latency.sh`): a 50-file publish to a bucket over a
//! link that adds a fixed latency to every request (the test-only S3 front), with template files
//! written one at a time and `PUBLISH_PARALLEL_WRITES` at a time (SPEC §11.2 step 4): wall time
//! and bucket requests per publish, side by side in one run.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::time::{Duration, Instant};

use common::s3::Bucket;
use faultproxy::{Fault, FaultProxy, Rule};

fn package(name: &str, version: &str, files: usize) -> Vec<u8> {
    let paths: Vec<String> = (0..files).map(|i| format!("templates/f{i:03}.txt")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let m = pkg::manifest("@company", name, version, "registry:build", &refs);
    let body = vec![b'x'; 2048];
    let files: Vec<(&str, &[u8])> = refs.iter().map(|p| (*p, body.as_slice())).collect();
    pkg::package(&m, &files)
}

#[test]
#[ignore = "benchmark: bench/s3_publish_latency.sh"]
fn bench_publish_over_a_slow_link() {
    let Some(bucket) = Bucket::new() else { return };
    let latency_ms: u64 = std::env::var("RACK_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let files: usize = std::env::var("RACK_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rounds = 3;
    let world = common::World::new();
    println!(
        "| writes at once | files | latency per request | publish time (median of {rounds}) | bucket requests per publish |"
    );
    println!("|---|---|---|---|---|");
    for parallel in ["1", "8"] {
        let proxy = FaultProxy::start(&bucket.endpoint);
        let mut env = world.env_on_bucket(&proxy.bucket(&bucket));
        env.push(("PUBLISH_PARALLEL_WRITES".into(), parallel.into()));
        let server = common::Server::start(world.path(), &env);
        proxy.inject(Rule::new(
            "",
            "",
            Fault::Latency(Duration::from_millis(latency_ms)),
        ));
        let mut times = Vec::new();
        let mut requests = Vec::new();
        for round in 0..rounds {
            let body = package(&format!("latency-{parallel}"), &format!("1.{round}.0"), files);
            let before = proxy.requests();
            let started = Instant::now();
            let reply = pkg::Upload::new(body)
                .bearer("company-publish-token")
                .send(&server.base);
            times.push(started.elapsed());
            requests.push(proxy.requests() - before);
            assert_eq!(reply.status, 201, "{}", reply.text);
        }
        times.sort();
        requests.sort();
        println!(
            "| {parallel} | {files} | {latency_ms} ms | {:.2} s | {} |",
            times[rounds / 2].as_secs_f64(),
            requests[rounds / 2]
        );
    }
}
