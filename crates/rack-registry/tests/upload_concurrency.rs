//! Publishing under concurrency and crashes (SPEC §5.2): no lost `versions.json` update, exactly
//! one winner per version with the winner's bytes stored, and a SIGKILL at any moment leaves the
//! whole version or nothing (staging cleaned at startup, interrupted publishes repaired).

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Server, World};
use pkg::Upload;
use serde_json::{json, Value};

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";
const MIB: usize = 1 << 20;

use common::start_with;

fn racer(version: &str, tag: &str) -> Vec<u8> {
    let mut m = pkg::manifest(
        "@company",
        "racer",
        version,
        "registry:build",
        &["templates/a.txt"],
    );
    m["description"] = json!(tag);
    pkg::package(&m, &[("templates/a.txt", tag.as_bytes())])
}

/// With the default settings (4 upload slots): the uploads over the slots wait their turn in the
/// queue instead of being refused (today's code answered 46 of them 503).
#[test]
fn fifty_versions_at_once_all_listed_in_order() {
    let (world, server) = start_with(&[]);
    // 40 releases and 10 prereleases whose numeric identifiers must compare as numbers.
    let mut versions: Vec<String> = (0..40).map(|i| format!("1.{i}.0")).collect();
    let betas = [1, 2, 3, 5, 7, 8, 10, 11, 20, 100];
    versions.extend(betas.iter().map(|b| format!("2.0.0-beta.{b}")));
    assert_eq!(versions.len(), 50);
    let barrier = Arc::new(Barrier::new(versions.len()));
    let handles: Vec<_> = versions
        .iter()
        .map(|v| {
            let (v, base, barrier) = (v.clone(), server.base.clone(), barrier.clone());
            let up = Upload::new(racer(&v, &v)).bearer(PUBLISH);
            std::thread::spawn(move || {
                barrier.wait();
                (v, up.send(&base))
            })
        })
        .collect();
    for h in handles {
        let (v, reply) = h.join().unwrap();
        assert_eq!(reply.status, 201, "{v}: {}", reply.text);
        assert_eq!(reply.json()["path"], format!("@company/build/racer/{v}"));
    }
    let mut expected: Vec<String> = betas.iter().rev().map(|b| format!("2.0.0-beta.{b}")).collect();
    expected.extend((0..40).rev().map(|i| format!("1.{i}.0")));
    let refs: Vec<&str> = expected.iter().map(String::as_str).collect();
    let text = std::fs::read_to_string(world.storage().join("@company/build/racer/versions.json")).unwrap();
    assert_eq!(text, pkg::versions_json(&refs));
    pkg::assert_tmp_clean(&world.storage());
    for v in &versions {
        let stored = world
            .storage()
            .join(format!("@company/build/racer/{v}/templates/a.txt"));
        assert_eq!(std::fs::read_to_string(stored).unwrap(), *v);
    }
}

/// With the default settings, as above: exactly one 201 and nineteen 409 per round (today's
/// code answered most of them 503).
#[test]
fn twenty_uploads_of_one_version_one_winner() {
    let (world, server) = start_with(&[]);
    let reg = world.storage().join("@company/build/racer");
    let mut published: Vec<String> = Vec::new();
    for round in 0..5 {
        let version = format!("3.{round}.0");
        let barrier = Arc::new(Barrier::new(20));
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let tag = format!("round {round} contender {i}");
                let package = racer(&version, &tag);
                let (base, barrier) = (server.base.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let up = Upload::new(package.clone()).bearer(PUBLISH);
                    barrier.wait();
                    (tag, package, up.send(&base))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|r| r.2.status == 201).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            results.iter().map(|r| r.2.status).collect::<Vec<_>>()
        );
        for (_, _, reply) in results.iter().filter(|r| r.2.status != 201) {
            reply.assert_error(
                409,
                "VERSION_EXISTS",
                &format!("Registry @company/build/racer@{version} already exists"),
            );
        }
        // The stored bytes are the winner's.
        let (tag, package, _) = winners[0];
        let stored = reg.join(&version);
        let manifest = std::fs::read(stored.join("registry.json")).unwrap();
        let sent = extract_manifest(package);
        assert_eq!(
            manifest, sent,
            "round {round}: stored registry.json is the winner's"
        );
        assert_eq!(
            std::fs::read_to_string(stored.join("templates/a.txt")).unwrap(),
            *tag
        );
        let (status, body) = pkg::get(
            &server.base,
            &format!("/registries/@company/build/racer/{version}"),
            Some(READ),
        );
        assert_eq!((status, body), (200, sent));
        pkg::assert_tmp_clean(&world.storage());
        published.insert(0, version.clone());
        let refs: Vec<&str> = published.iter().map(String::as_str).collect();
        assert_eq!(
            std::fs::read_to_string(reg.join("versions.json")).unwrap(),
            pkg::versions_json(&refs),
            "round {round}"
        );
    }
}

/// `registry.json` bytes inside a package built by `pkg::package`.
fn extract_manifest(package: &[u8]) -> Vec<u8> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(package));
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("registry.json") {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut out).unwrap();
            return out;
        }
    }
    panic!("no registry.json in package");
}

/// A big package: 60 MiB of incompressible template content.
fn big_package(version: &str) -> (Vec<u8>, Vec<u8>) {
    let content = pkg::noise(60 * MIB, 42);
    let m = pkg::manifest(
        "@company",
        "crashy",
        version,
        "registry:build",
        &["templates/blob.bin"],
    );
    let tar = pkg::tar_bytes(&[
        pkg::raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        pkg::file("templates/blob.bin", &content),
    ]);
    (pkg::gzip_level(&tar, flate2::Compression::none()), content)
}

/// A multipart request for `package`, as raw bytes after the headers, and its head.
fn raw_upload(package: &[u8]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let boundary = "crashtestboundary7MA4YWxkTrZu0gW";
    let sum = pkg::sha256_hex(package);
    let body = pkg::multipart_body(
        boundary,
        &[
            ("checksum", None, None, sum.as_bytes()),
            (
                "package",
                Some("package.tar.gz"),
                Some("application/gzip"),
                package,
            ),
        ],
    );
    let head = vec![
        ("Authorization", format!("Bearer {PUBLISH}")),
        (
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ),
        ("Content-Length", body.len().to_string()),
    ];
    (head, body)
}

fn versions_of(world: &World, registry: &str) -> Option<Value> {
    let path = world.storage().join(registry).join("versions.json");
    std::fs::read(path)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// SIGKILL while the body is being received: after a restart nothing of the version is
/// visible, staging is gone, and the retry succeeds.
#[test]
fn crash_mid_upload_leaves_nothing_and_retry_succeeds() {
    let world = World::new();
    let env = world.env_with(&[("MAX_UPLOAD_BYTES", "209715200")]);
    let server = Server::start(world.path(), &env);
    let (package, content) = big_package("1.0.0");
    let (head, body) = raw_upload(&package);

    let mut s = pkg::raw_request_head(&server.base, &head);
    // Send about half, then wait until the server has staged some of it.
    let half = body.len() / 2;
    s.write_all(&body[..half]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pkg::du(&world.storage().join(".tmp")) < 8 * MIB as u64 {
        assert!(Instant::now() < deadline, "the server never staged the upload");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9();
    let _ = s.write_all(&body[half..]);
    drop(s);

    let server = Server::start(world.path(), &env);
    pkg::assert_tmp_empty_or_absent(&world.storage());
    assert!(!world.storage().join("@company/build/crashy").exists());
    assert_eq!(versions_of(&world, "@company/build/crashy"), None);
    let (status, _) = pkg::get(
        &server.base,
        "/registries/@company/build/crashy/1.0.0",
        Some(READ),
    );
    assert_eq!(status, 404);

    let reply = Upload::new(package).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let stored = std::fs::read(
        world
            .storage()
            .join("@company/build/crashy/1.0.0/templates/blob.bin"),
    )
    .unwrap();
    assert!(stored == content, "stored file is the uploaded one");
    assert_eq!(
        versions_of(&world, "@company/build/crashy"),
        Some(json!({"versions": ["1.0.0"]}))
    );
    pkg::assert_tmp_clean(&world.storage());
}

/// SIGKILL right after the body was sent, at various moments of extraction and publishing:
/// after a restart the version is either complete (and listed) or absent.
#[test]
fn crash_around_publish_is_all_or_nothing() {
    let world = World::new();
    let env = world.env_with(&[]);
    let content = pkg::noise(4 * MIB, 9);
    let m = pkg::manifest(
        "@company",
        "atomic",
        "1.0.0",
        "registry:build",
        &["templates/blob.bin"],
    );
    let package = pkg::package(&m, &[("templates/blob.bin", &content)]);
    let (head, body) = raw_upload(&package);
    let manifest = serde_json::to_vec_pretty(&m).unwrap();
    let dir = world.storage().join("@company/build/atomic/1.0.0");
    // How long a whole upload takes here (debug build, this machine): the kills are spread over it.
    let full_ms = {
        let server = Server::start(world.path(), &env);
        let t = Instant::now();
        let mut s = pkg::raw_request_head(&server.base, &head);
        s.write_all(&body).unwrap();
        let (status, _, _) = pkg::read_response(&mut s).expect("response");
        assert_eq!(status, 201);
        let ms = t.elapsed().as_millis() as u64;
        drop(server);
        std::fs::remove_dir_all(world.storage().join("@company/build/atomic")).unwrap();
        ms
    };
    let mut outcomes = Vec::new();
    for delay_ms in (0..=10).map(|k| full_ms * k / 8) {
        let server = Server::start(world.path(), &env);
        let mut s = pkg::raw_request_head(&server.base, &head);
        s.write_all(&body).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill9();
        drop(s);

        let server = Server::start(world.path(), &env);
        pkg::assert_tmp_empty_or_absent(&world.storage());
        let listed = versions_of(&world, "@company/build/atomic");
        if dir.exists() {
            // Whole version: manifest and file intact, listed.
            assert_eq!(std::fs::read(dir.join("registry.json")).unwrap(), manifest);
            assert!(std::fs::read(dir.join("templates/blob.bin")).unwrap() == content);
            assert_eq!(
                listed,
                Some(json!({"versions": ["1.0.0"]})),
                "delay {delay_ms} ms"
            );
            let (status, _) = pkg::get(
                &server.base,
                "/registries/@company/build/atomic/1.0.0",
                Some(READ),
            );
            assert_eq!(status, 200);
            outcomes.push((delay_ms, "published"));
            // Start over for the next delay.
            drop(server);
            std::fs::remove_dir_all(world.storage().join("@company/build/atomic")).unwrap();
        } else {
            assert!(
                listed.is_none() || listed == Some(json!({"versions": []})),
                "delay {delay_ms} ms: {listed:?}"
            );
            let (status, _) = pkg::get(
                &server.base,
                "/registries/@company/build/atomic/1.0.0",
                Some(READ),
            );
            assert_eq!(status, 404);
            outcomes.push((delay_ms, "absent"));
            drop(server);
            let _ = std::fs::remove_dir_all(world.storage().join("@company/build/atomic"));
        }
    }
    eprintln!("full upload {full_ms} ms; outcomes: {outcomes:?}");
    // Killed right after the 201: the version is there, complete and listed.
    let server = Server::start(world.path(), &env);
    let mut s = pkg::raw_request_head(&server.base, &head);
    s.write_all(&body).unwrap();
    let (status, _, _) = pkg::read_response(&mut s).expect("response");
    assert_eq!(status, 201);
    server.kill9();
    let _server = Server::start(world.path(), &env);
    assert_eq!(std::fs::read(dir.join("registry.json")).unwrap(), manifest);
    assert!(std::fs::read(dir.join("templates/blob.bin")).unwrap() == content);
    assert_eq!(
        versions_of(&world, "@company/build/atomic"),
        Some(json!({"versions": ["1.0.0"]}))
    );
    pkg::assert_tmp_empty_or_absent(&world.storage());
}

/// A crash between "version visible" and "versions.json rewritten". The server repairs this from
/// its publish journal (`journal.json` in the upload's staging directory under `.tmp/`,
/// docs/decisions.md); the test recreates exactly the state such a crash leaves: the version
/// directory, a `versions.json` without it, the staging directory with its journal record.
#[test]
fn startup_repairs_versions_json_after_a_crash_before_it_was_written() {
    let world = World::new();
    let env = world.env_with(&[]);
    let server = Server::start(world.path(), &env);
    for v in ["1.0.0", "1.1.0"] {
        let reply = Upload::new(racer(v, v)).bearer(PUBLISH).send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    server.terminate();
    let reg = world.storage().join("@company/build/racer");
    std::fs::write(reg.join("versions.json"), pkg::versions_json(&["1.0.0"])).unwrap();
    let staging = world.storage().join(".tmp/upload-00000000deadbeef");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("journal.json"),
        serde_json::to_vec(&json!({"registry": "@company/build/racer", "version": "1.1.0"})).unwrap(),
    )
    .unwrap();

    let server = Server::start(world.path(), &env);
    assert_eq!(
        std::fs::read_to_string(reg.join("versions.json")).unwrap(),
        pkg::versions_json(&["1.1.0", "1.0.0"])
    );
    pkg::assert_tmp_empty_or_absent(&world.storage());
    let (status, body) = pkg::get(&server.base, "/registries/@company/build/racer", Some(READ));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["version"],
        "1.1.0"
    );
}

/// SPEC §14: on publish, `versions.json` is rebuilt from every version directory that holds a
/// `registry.json`, so a version missing from the list (hand edit, crash) comes back with the
/// next publish of that registry.
#[test]
fn next_publish_relists_versions_missing_from_versions_json() {
    let world = World::new();
    let env = world.env_with(&[]);
    let server = Server::start(world.path(), &env);
    for v in ["1.0.0", "1.1.0"] {
        let reply = Upload::new(racer(v, v)).bearer(PUBLISH).send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    server.terminate();
    let reg = world.storage().join("@company/build/racer");
    std::fs::write(reg.join("versions.json"), pkg::versions_json(&["1.0.0"])).unwrap();
    let server = Server::start(world.path(), &env);
    let reply = Upload::new(racer("0.5.0", "0.5.0"))
        .bearer(PUBLISH)
        .send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(
        std::fs::read_to_string(reg.join("versions.json")).unwrap(),
        pkg::versions_json(&["1.1.0", "1.0.0", "0.5.0"])
    );
}
