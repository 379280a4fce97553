//! The server on a bucket (SPEC §11.1, §11.3), against a real S3 server (moto, `common/s3.rs`):
//! startup on an empty, a missing and an unreachable bucket, and the revalidation policy.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use common::s3::Bucket;
use serde_json::json;

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

/// Replace one object in the bucket as another replica would (through `storage push`).
fn write_in_bucket(bucket: &Bucket, rel: &str, body: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    bucket.storage_cli(dir.path(), &["push", &dir.path().display().to_string()]);
}

#[test]
fn an_empty_bucket_is_initialised_like_a_new_storage_root() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::empty();
    let mut env = bucket.env();
    env.push((
        "STORAGE_ROOT".into(),
        world.path().join("scratch").display().to_string(),
    ));
    let server = common::Server::start(world.path(), &env);
    let c = common::client();
    let health = c.get(server.url("/health")).send().unwrap();
    assert_eq!(health.status(), 200, "the marker was written");
    for (name, body) in [
        ("registry-item.json", "registry-item"),
        ("preset.json", "preset"),
        ("rack.json", "rack"),
    ] {
        let r = c.get(server.url(&format!("/schemas/{name}"))).send().unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(r.text().unwrap().contains("$schema"), "{body}");
    }
    // The probe left nothing behind, and a pull sees exactly the initial objects.
    let back = world.path().join("back");
    bucket.storage_cli(world.path(), &["pull", &back.display().to_string()]);
    let mut names: Vec<String> = std::fs::read_dir(back.join("schema"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["preset.json", "rack.json", "registry-item.json"]);
    assert!(back.join(".healthcheck").is_file());
    assert!(!back.join(".rack").exists());
}

#[test]
fn a_missing_or_unreachable_bucket_stops_startup_naming_bucket_and_endpoint() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let world = common::World::empty();
    let base = Bucket {
        endpoint: endpoint.clone(),
        name: "rack-no-such-bucket".into(),
    };
    let (code, out) = common::run_cli(world.path(), &base.env(), &["serve"]);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}\n{out}");
    assert!(
        out.contains("rack-no-such-bucket") && out.contains(&endpoint),
        "{out}"
    );
    assert!(out.contains("does not exist"), "{out}");

    // Nothing listens on port 1 of loopback.
    let dead = Bucket {
        endpoint: "http://127.0.0.1:1".into(),
        name: "rack-unreachable".into(),
    };
    let (code, out) = common::run_cli(world.path(), &dead.env(), &["serve"]);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}\n{out}");
    assert!(
        out.contains("rack-unreachable at http://127.0.0.1:1 is not reachable"),
        "{out}"
    );
    assert!(
        !out.contains(common::s3::SECRET_KEY),
        "no secret in errors:\n{out}"
    );
}

#[test]
fn warm_reads_trust_the_cache_within_storage_revalidate_ms() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let mut env = world.env_on_bucket(&bucket);
    env.push(("STORAGE_REVALIDATE_MS".into(), "3600000".into()));
    let server = common::Server::start(world.path(), &env);
    let c = common::client();
    let first = c.get(server.url("/presets/node")).send().unwrap().text().unwrap();
    write_in_bucket(&bucket, "presets/node/preset.json", "{\"changed\":true}");
    let warm = c.get(server.url("/presets/node")).send().unwrap().text().unwrap();
    assert_eq!(
        warm, first,
        "within the window a warm read does not ask the bucket"
    );
    drop(server);

    // With STORAGE_REVALIDATE_MS=0 every read asks the bucket: a change is seen at once.
    let mut env = bucket.env();
    env.extend(world.local_env().into_iter().filter(|(k, _)| k != "STORAGE_ROOT"));
    env.push((
        "STORAGE_ROOT".into(),
        world.path().join("scratch").display().to_string(),
    ));
    env.push(("STORAGE_REVALIDATE_MS".into(), "0".into()));
    let server = common::Server::start(world.path(), &env);
    let r = c.get(server.url("/presets/node")).send().unwrap().text().unwrap();
    assert_eq!(r, "{\"changed\":true}");
    write_in_bucket(&bucket, "presets/node/preset.json", "{\"changed\":2}");
    let r = c.get(server.url("/presets/node")).send().unwrap().text().unwrap();
    assert_eq!(r, "{\"changed\":2}");
}

#[test]
fn publishing_to_a_bucket_stores_the_version_and_keeps_the_first_upload() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let env = world.env_on_bucket(&bucket);
    let server = common::Server::start(world.path(), &env);
    let m1 = pkg::manifest(
        "@company",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let first = pkg::package(&m1, &[("templates/a.txt", b"first\n")]);
    let reply = pkg::Upload::new(first).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json()["path"], json!("@company/build/widget/1.0.0"));

    let mut m2 = m1.clone();
    m2["description"] = json!("second");
    let second = pkg::package(&m2, &[("templates/a.txt", b"second\n")]);
    let reply = pkg::Upload::new(second).bearer(PUBLISH).send(&server.base);
    reply.assert_error(
        409,
        "VERSION_EXISTS",
        "Registry @company/build/widget@1.0.0 already exists",
    );
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/build/widget/1.0.0/files/templates/a.txt",
        Some(READ),
    );
    assert_eq!((status, body), (200, b"first\n".to_vec()));
    let (status, body) = pkg::get(&server.base, "/registries/@company/build/widget", Some(READ));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), m1);

    // In the bucket itself: the layout of SPEC §3, nothing of staging.
    let back = world.path().join("back");
    bucket.storage_cli(world.path(), &["pull", &back.display().to_string()]);
    let reg = back.join("@company/build/widget");
    assert_eq!(
        std::fs::read_to_string(reg.join("versions.json")).unwrap(),
        pkg::versions_json(&["1.0.0"])
    );
    assert_eq!(
        std::fs::read(reg.join("1.0.0/templates/a.txt")).unwrap(),
        b"first\n"
    );
    assert_eq!(
        std::fs::read(reg.join("1.0.0/registry.json")).unwrap(),
        serde_json::to_vec_pretty(&m1).unwrap()
    );
    assert!(!back.join(".tmp").exists());
    let scratch = world.path().join("scratch/.tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging is cleaned: {left:?}");
}

#[test]
fn auth_source_bucket_reads_and_reloads_the_policy_from_the_bucket() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let mut env = world.env_on_bucket(&bucket);
    env.push(("AUTH_SOURCE".into(), "bucket".into()));
    // The file policy (which declares @rack) is not used: nothing in the bucket yet.
    let server = common::Server::start(world.path(), &env);
    let c = common::client();
    let status = |path: &str| c.get(server.url(path)).send().unwrap().status().as_u16();
    assert_eq!(
        status("/registries/@rack/build/rollup"),
        403,
        "undeclared without a policy"
    );

    let policy = world.path().join("policy.json");
    std::fs::write(&policy, "{\"@rack\": []}\n").unwrap();
    let (code, out) = common::run_cli(
        world.path(),
        &bucket.env(),
        &["auth", "push", &policy.display().to_string()],
    );
    assert_eq!(code, Some(0), "{out}");
    // Polled every 5 s (by ETag): wait for the change to be picked up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status("/registries/@rack/build/rollup") != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket policy was never loaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // A broken policy in the bucket is refused; the last good one stays in force.
    write_in_bucket(&bucket, ".auth/auth.json", "not json");
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(status("/registries/@rack/build/rollup"), 200);
    assert!(
        server.output().contains("config change refused"),
        "{}",
        server.output()
    );
}
