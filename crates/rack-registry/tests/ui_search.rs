//! `/ui/search` (SPEC §15) over many registries: what a search asks of the bucket, counted by
//! the test-only S3 front (`common/faultproxy.rs`, no fault injected), as `s3_costs.rs` does.
//! A search is served from per-namespace indexes built once for concurrent callers, reused
//! within the revalidation window and dropped by a publish on the same replica; one request
//! examines at most 2,000 registries (`src/http/pages/search.rs`).

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use common::s3::Bucket;
use faultproxy::FaultProxy;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

/// A world with `count` more registries in the anonymous namespace `ns`: `<prefix>-NNNN`,
/// version 1.0.0, described as "bulk registry number N", tagged `bulk`.
fn world_with(ns: &str, prefix: &str, count: usize) -> common::World {
    let world = common::World::new();
    for i in 0..count {
        let name = format!("{prefix}-{i:04}");
        let dir = world.storage().join(ns).join(&name);
        std::fs::create_dir_all(dir.join("1.0.0")).unwrap();
        std::fs::write(dir.join("versions.json"), r#"{"versions":["1.0.0"]}"#).unwrap();
        let manifest = serde_json::json!({
            "name": name,
            "namespace": ns,
            "path": name,
            "version": "1.0.0",
            "type": "registry:feature",
            "description": format!("bulk registry number {i}"),
            "tags": ["bulk"],
            "files": [],
        });
        std::fs::write(
            dir.join("1.0.0/registry.json"),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    }
    // The namespace is declared, open to anyone.
    let auth = world.auth_path();
    let mut policy: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    policy[ns] = serde_json::json!([]);
    std::fs::write(&auth, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    world
}

/// A server on `world` in a fresh bucket behind the counting front.
fn counted_server(world: &common::World, proxy: &FaultProxy, bucket: &Bucket) -> common::Server {
    let front = proxy.bucket(bucket);
    let mut env = world.env_on_bucket(&front);
    // As in s3_costs.rs: the bucket outbox would list `.rack/outbox/` now and then. A long
    // window: a repeated search must cost nothing within it.
    env.push((
        "WEBHOOK_OUTBOX_DIR".into(),
        world.path().join("outbox").display().to_string(),
    ));
    env.push(("STORAGE_REVALIDATE_MS".into(), "600000".into()));
    common::Server::start(world.path(), &env)
}

fn search(server: &common::Server, q: &str, token: Option<&str>) -> String {
    let (status, body) = pkg::get(&server.base, &format!("/ui/search?q={q}"), token);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Bucket requests made by `f`.
fn cost(front: &FaultProxy, f: impl FnOnce()) -> usize {
    let before = front.requests();
    f();
    front.requests() - before
}

#[test]
fn a_repeated_search_asks_the_bucket_nothing_and_concurrent_ones_do_the_work_once() {
    let Some(bucket) = Bucket::new() else {
        return;
    };
    let world = world_with("@bulk", "s", 300);
    let front = FaultProxy::start(&bucket.endpoint);

    // One search on a cold server, then the same and other queries again.
    let server = counted_server(&world, &front, &bucket);
    let first = cost(&front, || {
        let body = search(&server, "bulk+registry+number+123", None);
        assert!(body.contains(r#"href="/ui/@bulk/s-0123""#), "{body}");
    });
    let again = cost(&front, || {
        for q in ["bulk+registry+number+123", "husky", "s-02", "zzz-nothing"] {
            search(&server, q, None);
        }
    });
    eprintln!("bucket requests: first search {first}, four more {again}");
    // Two reads a registry (versions.json, latest manifest), one listing, one index a namespace.
    assert!(
        first >= 600,
        "the first search read {first}: were the registries there?"
    );
    assert_eq!(
        again, 0,
        "searches within the revalidation window asked the bucket"
    );
    drop(server);

    // 50 concurrent first searches on a cold server cost what one does.
    let server = counted_server(&world, &front, &bucket);
    let concurrent = cost(&front, || {
        std::thread::scope(|s| {
            for i in 0..50 {
                let server = &server;
                s.spawn(move || {
                    let body = search(server, &format!("bulk+registry+number+{}", i + 100), None);
                    assert!(body.contains(&format!(r#"href="/ui/@bulk/s-{:04}""#, i + 100)));
                });
            }
        });
    });
    eprintln!("bucket requests: 50 concurrent first searches {concurrent}");
    assert!(
        concurrent * 10 <= first * 12 + 100,
        "50 concurrent searches cost {concurrent}, one costs {first}"
    );
}

#[test]
fn a_publish_on_this_replica_shows_in_the_next_search() {
    let Some(bucket) = Bucket::new() else {
        return;
    };
    let world = world_with("@bulk", "s", 20);
    let front = FaultProxy::start(&bucket.endpoint);
    let server = counted_server(&world, &front, &bucket);
    // Indexes built and current (the window is ten minutes).
    assert!(search(&server, "fresh-thing", Some(READ)).contains("0 result(s)"));
    assert!(search(&server, "bulk", Some(READ)).contains("20 result(s)"));
    assert_eq!(cost(&front, || drop(search(&server, "fresh", Some(READ)))), 0);

    let publish = |version: &str, description: &str| {
        let mut m = pkg::manifest(
            "@company",
            "fresh-thing",
            version,
            "registry:build",
            &["templates/a.txt"],
        );
        m["description"] = description.into();
        let p = pkg::package(&m, &[("templates/a.txt", version.as_bytes())]);
        let reply = pkg::Upload::new(p).bearer(PUBLISH).send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
    };
    // A new registry in a namespace already indexed.
    publish("1.0.0", "first of its name");
    let found = search(&server, "fresh-thing", Some(READ));
    assert!(
        found.contains(r#"href="/ui/@company/build/fresh-thing""#),
        "{found}"
    );
    assert!(found.contains("<code>1.0.0</code>"), "{found}");
    // A new version of it: its version and description.
    publish("1.1.0", "second words");
    let found = search(&server, "second+words", Some(READ));
    assert!(
        found.contains(r#"href="/ui/@company/build/fresh-thing""#),
        "{found}"
    );
    assert!(found.contains("<code>1.1.0</code>"), "{found}");
    assert!(search(&server, "first+of+its", Some(READ)).contains("0 result(s)"));
    // Not seen by a viewer who may not read the namespace.
    assert!(search(&server, "fresh-thing", None).contains("0 result(s)"));
}

#[test]
fn a_namespace_larger_than_the_bound_is_searched_up_to_it_and_says_so() {
    // The bound is the same on every backend: local disk keeps the test quick.
    let world = world_with("@aaa", "r", 2010);
    let server = common::Server::start(world.path(), &world.local_env());
    // The namespace sorts first: its first 2,000 registries are searched, the rest not.
    let within = search(&server, "r-1999", None);
    assert!(within.contains(r#"href="/ui/@aaa/r-1999""#), "{within}");
    let beyond = search(&server, "r-2005", None);
    assert!(beyond.contains("0 result(s)"), "{beyond}");
    assert!(
        beyond.contains("search stopped after 2000 registries"),
        "{beyond}"
    );
    // Results are capped too, and the page says so.
    let many = search(&server, "bulk", None);
    assert!(many.contains("50 result(s)"), "{many}");
    assert!(many.contains("the first 50 shown"), "{many}");
}
