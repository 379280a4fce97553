//! The headers SPEC §4 (BEYOND) adds to reads (issue 25, items 3 and 5), on every path an
//! answer can take, where the conformance cases cannot reach: files small enough for the hot
//! cache, memory-mapped ones, streamed ones, their compressed forms and their 304s, on disk and
//! on a bucket; and a policy reload that gates or opens a namespace while its answers sit in
//! the hot cache (server on disk, server on a bucket, the Worker).

mod common;
#[path = "common/http.rs"]
mod raw_http;

use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::{Bucket, Target};
use common::{worker, Server, World};
use raw_http::{RawClient, RawResponse};
use serde_json::json;

const CSP: &str = "default-src 'none'; sandbox";

/// A one-version registry `registry` (a storage key: `@ns/name`) holding `files`, written
/// straight into the storage directory.
fn write_registry(storage: &Path, registry: &str, files: &[(&str, &[u8])]) {
    let dir = storage.join(registry);
    let (ns, name) = registry.split_once('/').unwrap();
    std::fs::create_dir_all(dir.join("1.0.0")).unwrap();
    std::fs::write(dir.join("versions.json"), r#"{"versions":["1.0.0"]}"#).unwrap();
    let declared: Vec<_> = files
        .iter()
        .map(|(p, _)| json!({"target": p, "type": "registry:asset", "path": p}))
        .collect();
    let manifest =
        json!({"name": name, "namespace": ns, "version": "1.0.0", "priority": 0, "files": declared});
    std::fs::write(dir.join("1.0.0/registry.json"), manifest.to_string()).unwrap();
    for (p, body) in files {
        std::fs::write(dir.join("1.0.0").join(p), body).unwrap();
    }
}

fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[track_caller]
fn request(c: &RawClient, method: &str, path: &str, h: &[(&str, &str)]) -> RawResponse {
    c.request(method, path, &headers(h))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Read leases the process `pid` holds (`/proc/locks`): one per memory-mapped file.
fn leases_of(pid: u32) -> usize {
    let ours = format!(" {pid} ");
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" LEASE ") && l.contains(&ours))
        .count()
}

/// The sandbox and the tier on one answer.
#[track_caller]
fn assert_file_headers(r: &RawResponse, status: u16, cache: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body_text());
    assert_eq!(
        r.header_all("content-security-policy").as_deref(),
        Some(CSP),
        "{what}"
    );
    assert_eq!(
        r.header_all("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header_all("cache-control").as_deref(), Some(cache), "{what}");
}

/// Every file answer carries the sandbox CSP and `nosniff`, and its namespace's tier, whether
/// it comes from the heap cache, a memory map (local disk) or a stream, compressed or not, to
/// GET, HEAD or a conditional GET, the first time or from the cache.
#[test]
fn files_are_sandboxed_and_tiered_on_every_serving_path() {
    for target in Target::all() {
        let world = World::new();
        let small = b"<!doctype html><script>parent.x = 1</script>\n".to_vec();
        // 4 to 64 KiB: memory-mapped under a read lease (MAP_FILES=auto) on disk.
        let mapped = b"<p onclick=\"x()\">mapped</p>\n".repeat(600);
        // Above the hot cache's 256 KiB per-object limit: streamed.
        let streamed = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>x()</script></svg>\n".repeat(5000);
        let files: [(&str, &[u8]); 3] = [
            ("small.html", &small),
            ("mapped.html", &mapped),
            ("streamed.svg", &streamed),
        ];
        for registry in ["@anon/sizes", "@company/sizes"] {
            write_registry(&world.storage(), registry, &files);
        }
        let (server, _bucket) = match target {
            Target::Local => {
                let mut env = world.local_env();
                env.push(("MAP_FILES".into(), "auto".into()));
                (Server::start(world.path(), &env), None)
            }
            Target::S3 => {
                let bucket = Bucket::new().expect("Target::all offers s3 only with a server");
                let env = world.env_on_bucket(&bucket);
                (Server::start(world.path(), &env), Some(bucket))
            }
            Target::Worker => unreachable!("Target::all is local and s3"),
        };
        let c = RawClient::new(&server.base);
        let token = ("authorization", "Bearer company-read-token");
        for (registry, cache, auth) in [
            ("@anon/sizes", "public, max-age=31536000, immutable", None),
            (
                "@company/sizes",
                "private, max-age=31536000, immutable",
                Some(token),
            ),
        ] {
            for (file, body) in files {
                let path = format!("/registries/{registry}/1.0.0/files/{file}");
                let what = |how: &str| format!("[{}] {how} {path}", target.name());
                let base: Vec<(&str, &str)> = auth.into_iter().collect();
                for round in ["first", "cached"] {
                    let r = request(&c, "GET", &path, &base);
                    assert_file_headers(&r, 200, cache, &what(&format!("GET ({round})")));
                    assert_eq!(r.body, body, "{}", what("GET"));
                    let tag = r.header("etag").expect("an ETag");
                    let h = request(&c, "HEAD", &path, &base);
                    assert_file_headers(&h, 200, cache, &what("HEAD"));
                    let mut cond = base.clone();
                    cond.push(("if-none-match", &tag));
                    let n = request(&c, "GET", &path, &cond);
                    assert_file_headers(&n, 304, cache, &what("conditional GET"));
                    let mut gz = base.clone();
                    gz.push(("accept-encoding", "gzip"));
                    let z = request(&c, "GET", &path, &gz);
                    assert_file_headers(&z, 200, cache, &what("GET gzip"));
                    let zh = request(&c, "HEAD", &path, &gz);
                    assert_file_headers(&zh, 200, cache, &what("HEAD gzip"));
                }
            }
        }
        if target == Target::Local {
            assert!(
                leases_of(server.pid()) >= 1,
                "mapped.html was not served from a memory map: the mapped path went untested"
            );
        }
        // The manifest of the same version is no file: no sandbox, the namespace's tier.
        let m = request(&c, "GET", "/registries/@company/sizes/1.0.0", &[token]);
        assert_eq!(m.status, 200);
        assert_eq!(m.header("content-security-policy"), None);
        assert_eq!(m.header("x-content-type-options"), None);
        assert_eq!(
            m.header("cache-control").as_deref(),
            Some("private, max-age=31536000, immutable")
        );
    }
}

/// The four answers of a namespace that its tier applies to, and the tier each has when the
/// namespace is anonymous.
const ROUTES: [(&str, &str); 4] = [
    ("/registries/@flip/build/rollup/versions", "public, max-age=60"),
    ("/registries/@flip/build/rollup", "public, max-age=60"),
    (
        "/registries/@flip/build/rollup/1.0.0",
        "public, max-age=31536000, immutable",
    ),
    (
        "/registries/@flip/build/rollup/1.0.0/files/templates/rollup.config.mjs",
        "public, max-age=31536000, immutable",
    ),
];

const FLIP_TOKEN: &str = "flip-reader-token";

/// Poll until an anonymous read of `@flip` answers `status` (the policy change is in force).
#[track_caller]
fn await_status(c: &RawClient, server: &Server, status: u16, deadline: Duration) {
    let start = Instant::now();
    loop {
        let r = request(c, "GET", ROUTES[0].0, &[]);
        if r.status == status {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "the policy change never took effect (still {}):\n{}",
            r.status,
            server.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every route of `@flip` (and its registry list), warm in the hot cache, answers with the tier
/// of the policy in force: `private` when gated, `public` when anonymous, on 200s and 304s.
#[track_caller]
fn assert_tiers(c: &RawClient, gated: bool, tags: &mut Vec<String>, what: &str) {
    let auth = [("x-registry-token", FLIP_TOKEN)];
    let tier = |public: &str| {
        if gated {
            public.replacen("public", "private", 1)
        } else {
            public.to_owned()
        }
    };
    let list = ("/namespaces/@flip/registries", "public, max-age=60");
    for (i, (path, public)) in ROUTES.iter().chain([&list]).enumerate() {
        let r = request(c, "GET", path, &auth);
        assert_eq!(r.status, 200, "{what}: {path}: {}", r.body_text());
        assert_eq!(
            r.header("cache-control"),
            Some(tier(public)),
            "{what}: GET {path}"
        );
        let tag = r.header("etag").expect("an ETag");
        // The same bytes as before the reload: the same tag, now answered with the new tier.
        if let Some(old) = tags.get(i) {
            assert_eq!(&tag, old, "{what}: {path}: the content did not change");
        } else {
            tags.push(tag.clone());
        }
        let n = request(c, "GET", path, &[auth[0], ("if-none-match", &tag)]);
        assert_eq!(n.status, 304, "{what}: {path}");
        assert_eq!(
            n.header("cache-control"),
            Some(tier(public)),
            "{what}: 304 {path}"
        );
        let h = request(c, "HEAD", path, &auth);
        assert_eq!(
            h.header("cache-control"),
            Some(tier(public)),
            "{what}: HEAD {path}"
        );
    }
}

/// An `auth.json` reload that gates an anonymous namespace makes its very next answers
/// `private`, though their bytes sit in the hot cache with a `public` past; one that opens it
/// again makes them `public`. Server on disk, server on a bucket, and the Worker (its policy
/// re-read on every request with `AUTH_CACHE_SECONDS=0`).
#[test]
fn a_reload_that_gates_or_opens_a_namespace_changes_the_next_answer() {
    let mut targets = Target::all();
    if worker::available() {
        targets.push(Target::Worker);
    }
    for target in targets {
        let world = World::new();
        common::copy_tree(
            &world.storage().join("@rack/build/rollup"),
            &world.storage().join("@flip/build/rollup"),
        );
        let open = json!({"@rack": [], "@flip": []});
        let gated = json!({"@rack": [], "@flip": [{"token": FLIP_TOKEN, "mark": "flip"}]});
        std::fs::write(world.auth_path(), open.to_string()).unwrap();
        let (server, _bucket) = match target {
            Target::Worker => {
                let mut env = world.local_env();
                env.push(("AUTH_CACHE_SECONDS".into(), "0".into()));
                (worker::start(world.path(), &env), None)
            }
            t => common::s3::serve_on(&world, t),
        };
        let c = RawClient::new(&server.base);
        let name = target.name();
        let deadline = Duration::from_secs(if target == Target::Worker { 60 } else { 5 });
        let mut tags = Vec::new();
        // Warm: every answer cached, public.
        assert_tiers(&c, false, &mut tags, &format!("[{name}] anonymous"));
        assert_tiers(&c, false, &mut tags, &format!("[{name}] anonymous, cached"));

        std::fs::write(world.auth_path(), serde_json::to_vec_pretty(&gated).unwrap()).unwrap();
        await_status(&c, &server, 401, deadline);
        assert_tiers(&c, true, &mut tags, &format!("[{name}] gated by a reload"));

        std::fs::write(world.auth_path(), serde_json::to_vec_pretty(&open).unwrap()).unwrap();
        await_status(&c, &server, 200, deadline);
        assert_tiers(
            &c,
            false,
            &mut tags,
            &format!("[{name}] opened again by a reload"),
        );
    }
}

/// `/namespaces` answers by token, so it varies on both token headers, on its 200s and 304s,
/// whoever asks; a namespace's registry list does not vary (its tier says who may keep it).
#[test]
fn the_namespace_list_varies_on_the_token_headers() {
    let world = World::new();
    let server = Server::world(&world);
    let c = RawClient::new(&server.base);
    for auth in [None, Some(("authorization", "Bearer company-read-token"))] {
        let base: Vec<(&str, &str)> = auth.into_iter().collect();
        let r = request(&c, "GET", "/namespaces", &base);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header_all("vary").as_deref(),
            Some("Authorization, X-Registry-Token"),
            "{auth:?}"
        );
        assert_eq!(r.header("cache-control").as_deref(), Some("public, max-age=60"));
        let tag = r.header("etag").unwrap();
        let mut cond = base.clone();
        cond.push(("if-none-match", &tag));
        let n = request(&c, "GET", "/namespaces", &cond);
        assert_eq!(n.status, 304);
        assert_eq!(
            n.header_all("vary").as_deref(),
            Some("Authorization, X-Registry-Token")
        );
    }
    let r = request(&c, "GET", "/namespaces/@rack/registries", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary"), None);
}
