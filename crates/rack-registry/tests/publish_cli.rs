//! `rack-registry publish` (SPEC §5, §13), through the real binary: local checks of `--dry-run`
//! with the server's codes and messages, what gets packed, and round trips through a real server
//! on an empty storage root.

mod common;

use std::path::{Path, PathBuf};

use common::{client, copy_tree, fixtures_root, repo_root, run_cli, Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Every publishable directory of the fixtures: `(segments below @rack, directory)`, e.g.
/// `("build/rollup", .../@rack/build/rollup/1.0.0)`, sorted.
fn fixture_registries() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, segs: &mut Vec<String>, out: &mut Vec<(String, PathBuf)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if !entry.file_type().unwrap().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "1.0.0" && entry.path().join("registry.json").is_file() {
                out.push((segs.join("/"), entry.path()));
            } else {
                segs.push(name);
                walk(&entry.path(), segs, out);
                segs.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&fixtures_root().join("@rack"), &mut Vec::new(), &mut out);
    out.sort();
    assert_eq!(out.len(), 10, "the fixtures hold 10 registries: {out:?}");
    out
}

fn example_dir() -> PathBuf {
    repo_root().join("examples/hello")
}

/// The declared files of a manifest, normalized, as the server sees them.
fn declared(dir: &Path) -> Vec<String> {
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.join("registry.json")).unwrap()).unwrap();
    rack_core::manifest::declared_files(&doc).into_iter().collect()
}

fn publish(cwd: &Path, env: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["publish"];
    all.extend_from_slice(args);
    run_cli(cwd, env, &all)
}

fn dry_run(dir: &Path) -> (Option<i32>, String) {
    let cwd = tempfile::tempdir().unwrap();
    publish(cwd.path(), &[], &["--dry-run", dir.to_str().unwrap()])
}

/// The files listed by a successful dry run (indented lines).
fn listed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_owned)
        .collect()
}

/// The `sha256 <hex>` a dry run printed.
fn sha_of(out: &str) -> String {
    let at = out
        .find("sha256 ")
        .unwrap_or_else(|| panic!("no checksum in:\n{out}"));
    out[at + 7..at + 7 + 64].to_owned()
}

/// A writable copy of `from` in a fresh temporary directory.
fn copy_of(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(from, dir.path());
    dir
}

#[test]
fn dry_run_accepts_every_fixture_registry_and_the_example() {
    for (segs, dir) in fixture_registries() {
        let (code, out) = dry_run(&dir);
        assert_eq!(code, Some(0), "{segs}:\n{out}");
        assert!(
            out.contains(&format!("would publish @rack/{segs}/1.0.0\n")),
            "{segs}:\n{out}"
        );
        let mut want = vec!["registry.json".to_owned()];
        want.extend(declared(&dir));
        assert_eq!(listed(&out), want, "{segs}:\n{out}");
        // Fixture directories hold an undeclared smoke.json: never packed.
        assert!(!out.contains("smoke.json"), "{segs}:\n{out}");
        assert!(out.contains("nothing was uploaded"), "{out}");
    }
    let (code, out) = dry_run(&example_dir());
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("would publish @demo/features/hello/1.0.0\n"),
        "{out}"
    );
    assert_eq!(
        listed(&out),
        [
            "registry.json",
            "templates/README.md",
            "templates/hello.config.json"
        ]
    );
}

/// A dry run that fails with exit 1 and prints exactly the server's code and message.
fn assert_rejected(dir: &Path, code: &str, message: &str) {
    let (exit, out) = dry_run(dir);
    assert_eq!(exit, Some(1), "{out}");
    assert!(
        out.contains(&format!("{code}: {message}")),
        "want {code}: {message}\ngot:\n{out}"
    );
    assert!(!out.contains("would publish"), "{out}");
}

#[test]
fn dry_run_failures_use_the_server_codes_and_messages() {
    let dir = copy_of(&example_dir());
    let p = dir.path();
    let manifest = std::fs::read_to_string(p.join("registry.json")).unwrap();

    std::fs::remove_file(p.join("templates/README.md")).unwrap();
    assert_rejected(
        p,
        "FILE_NOT_FOUND",
        "File referenced in registry.json is missing or not a regular file: templates/README.md",
    );
    std::fs::write(p.join("templates/README.md"), "# back\n").unwrap();

    let mut doc: Value = serde_json::from_str(&manifest).unwrap();
    doc["priority"] = json!(-1);
    doc["surprise"] = json!(true);
    std::fs::write(p.join("registry.json"), doc.to_string()).unwrap();
    let (exit, out) = dry_run(p);
    assert_eq!(exit, Some(1), "{out}");
    assert!(
        out.contains("SCHEMA_VALIDATION_FAILED: Schema validation failed: "),
        "{out}"
    );
    assert!(out.contains("/priority") && out.contains("surprise"), "{out}");

    std::fs::write(p.join("registry.json"), "{\"name\": \"hello\",").unwrap();
    assert_rejected(p, "UPLOAD_FAILED", "registry.json is not valid JSON");

    std::fs::write(
        p.join("registry.json"),
        r#"{"namespace":"@demo","version":"1.0.0"}"#,
    )
    .unwrap();
    assert_rejected(p, "UPLOAD_FAILED", "name is required in registry.json");

    std::fs::write(
        p.join("registry.json"),
        r#"{"namespace":"@demo","name":"hello","version":"1.0.0","path":"legacy/other"}"#,
    )
    .unwrap();
    assert_rejected(
        p,
        "UPLOAD_FAILED",
        "path \"legacy/other\" must end with name \"hello\"",
    );

    std::fs::remove_file(p.join("registry.json")).unwrap();
    assert_rejected(p, "UPLOAD_FAILED", "registry.json not found in package");
}

#[cfg(unix)]
#[test]
fn dry_run_refuses_a_symlink_at_a_declared_path() {
    let dir = copy_of(&example_dir());
    let p = dir.path();
    let target = p.join("elsewhere.md");
    std::fs::rename(p.join("templates/README.md"), &target).unwrap();
    std::os::unix::fs::symlink(&target, p.join("templates/README.md")).unwrap();
    assert_rejected(
        p,
        "FILE_NOT_FOUND",
        "File referenced in registry.json is missing or not a regular file: templates/README.md",
    );
    // A real publish refuses it too, before uploading anything (no server is listening).
    let cwd = tempfile::tempdir().unwrap();
    let (exit, out) = publish(
        cwd.path(),
        &[],
        &["--url", "http://127.0.0.1:9", "--token", "t", p.to_str().unwrap()],
    );
    assert_eq!(exit, Some(1), "{out}");
    assert!(out.contains("FILE_NOT_FOUND"), "{out}");
}

#[test]
fn stray_files_are_not_packed_and_packing_is_deterministic() {
    let (_, clean) = dry_run(&example_dir());
    let dir = copy_of(&example_dir());
    std::fs::write(dir.path().join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    std::fs::write(dir.path().join("templates/.DS_Store"), b"junk").unwrap();
    std::fs::write(dir.path().join("templates/README.md~"), b"backup").unwrap();
    let (code, out) = dry_run(dir.path());
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(".DS_Store") && !out.contains("README.md~"), "{out}");
    // Another copy (other mtimes, other directory) with stray files: the very same package.
    assert_eq!(sha_of(&out), sha_of(&clean));
    let (_, again) = dry_run(dir.path());
    assert_eq!(sha_of(&again), sha_of(&out));
    for (segs, fixture) in fixture_registries() {
        let a = sha_of(&dry_run(&fixture).1);
        let b = sha_of(&dry_run(copy_of(&fixture).path()).1);
        assert_eq!(a, b, "{segs}");
    }
}

#[test]
fn no_token_is_a_usage_error_before_packing() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = example_dir();
    let (code, out) = publish(cwd.path(), &[], &[dir.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("RACK_REGISTRY_TOKEN"), "{out}");
    // Blank counts as absent, and the directory is not even looked at.
    let env = [("RACK_REGISTRY_TOKEN".to_owned(), "   ".to_owned())];
    let (code, out) = publish(cwd.path(), &env, &["/nonexistent/dir"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(!out.contains("registry.json"), "{out}");
}

#[test]
fn network_errors_are_clear_and_non_zero() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = example_dir();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, out) = publish(
        cwd.path(),
        &[],
        &["--url", &url, "--token", "t", dir.to_str().unwrap()],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!("upload to {url}/registries failed")),
        "{out}"
    );
    assert!(out.contains("onnection refused"), "{out}");
    // A URL without a scheme is a usage error, before anything is read.
    let (code, out) = publish(
        cwd.path(),
        &[],
        &["--url", "localhost:8080", "--token", "t", "/nonexistent"],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("invalid --url"), "{out}");
}

// ---- "not now" answers: 503 and 429 are retried ---------------------------------------------

/// A tiny HTTP/1.1 server that answers the requests it gets with `script` in turn (the last one
/// again once the script is spent), reading each request whole first. Returns its base URL and
/// a counter of the requests it answered.
fn scripted_server(
    script: Vec<(u16, Option<&'static str>, &'static str)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = BufReader::new(conn);
            let mut length = 0usize;
            let mut chunked = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
                if line == "\r\n" {
                    break;
                }
            }
            if chunked {
                // Up to the last chunk and its empty trailer.
                let mut tail = Vec::new();
                let mut byte = [0u8; 1];
                while !tail.ends_with(b"\r\n0\r\n\r\n") && reader.read(&mut byte).unwrap_or(0) == 1 {
                    tail.push(byte[0]);
                }
            } else {
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
            }
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, retry_after, body) = script[n.min(script.len() - 1)];
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(r) = retry_after {
                head.push_str(&format!("Retry-After: {r}\r\n"));
            }
            head.push_str("\r\n");
            let mut conn = reader.into_inner();
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        }
    });
    (base, count)
}

const BUSY: &str =
    r#"{"code":"SERVICE_UNAVAILABLE","message":"Too many uploads in progress. Try again in 1s"}"#;
const LIMITED: &str = r#"{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded. Try again in 1s"}"#;
const CREATED: &str = r#"{"name":"hello","version":"1.0.0","namespace":"@demo","message":"Registry uploaded successfully","path":"@demo/features/hello/1.0.0"}"#;

/// A 503 or a 429 means "not now": the upload is sent again after `Retry-After`, and succeeds.
/// Today's command gave up at the first 503 with exit status 1.
#[test]
fn publish_retries_503_and_429_after_retry_after() {
    let (url, count) = scripted_server(vec![
        (503, Some("1"), BUSY),
        (429, Some("1"), LIMITED),
        (201, None, CREATED),
    ]);
    let cwd = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, out) = publish(
        cwd.path(),
        &[],
        &["--url", &url, "--token", "t", example_dir().to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3, "{out}");
    assert!(out.contains("published @demo/features/hello/1.0.0"), "{out}");
    assert!(
        out.contains("SERVICE_UNAVAILABLE") && out.contains("RATE_LIMIT_EXCEEDED"),
        "{out}"
    );
    assert!(out.contains("retrying in 1 s"), "{out}");
    // It waited as told: two Retry-After of one second.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "{out}");
}

/// Still 503 after the last retry: exit status 3 ("retrying later may help"), not 1, after
/// exactly `--retries` more attempts; other refusals are never retried.
#[test]
fn publish_gives_up_after_its_retries_with_exit_3() {
    let (url, count) = scripted_server(vec![(503, Some("1"), BUSY)]);
    let cwd = tempfile::tempdir().unwrap();
    let dir = example_dir();
    let (code, out) = publish(
        cwd.path(),
        &[],
        &[
            "--url",
            &url,
            "--token",
            "t",
            "--retries",
            "2",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3, "{out}");
    assert!(
        out.contains("gave up after 3 attempts: 503 SERVICE_UNAVAILABLE"),
        "{out}"
    );

    // A 409 is an answer, not "not now": one attempt, exit 1.
    let exists =
        r#"{"code":"VERSION_EXISTS","message":"Registry @demo/features/hello@1.0.0 already exists"}"#;
    let (url, count) = scripted_server(vec![(409, Some("1"), exists)]);
    let (code, out) = publish(
        cwd.path(),
        &[],
        &["--url", &url, "--token", "t", dir.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1, "{out}");
}

// ---- round trips through a real server -------------------------------------------------------

/// A server on an empty storage root whose `auth.json` is `policy`.
fn empty_server(policy: Value) -> (World, Server) {
    let world = World::empty();
    std::fs::create_dir_all(world.auth_path().parent().unwrap()).unwrap();
    std::fs::write(world.auth_path(), policy.to_string()).unwrap();
    let server = Server::world(&world);
    (world, server)
}

fn publish_to(server: &Server, token: &str, dir: &Path) -> (Option<i32>, String) {
    let cwd = tempfile::tempdir().unwrap();
    publish(
        cwd.path(),
        &[("RACK_REGISTRY_TOKEN".to_owned(), token.to_owned())],
        &["--url", &server.base, dir.to_str().unwrap()],
    )
}

fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    let res = client()
        .get(server.url(path))
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = res.status().as_u16();
    (status, res.bytes().unwrap().to_vec())
}

fn get_ok(server: &Server, path: &str) -> Vec<u8> {
    let (status, body) = get(server, path);
    assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
    body
}

#[test]
fn round_trip_every_fixture_registry() {
    let (world, server) = empty_server(json!({"@rack": []}));
    for (segs, dir) in fixture_registries() {
        let (code, out) = publish_to(&server, ADMIN_TOKEN, &dir);
        assert_eq!(code, Some(0), "{segs}:\n{out}\n--- server:\n{}", server.output());
        let path = format!("@rack/{segs}/1.0.0");
        assert!(out.contains(&format!("published {path}\n")), "{out}");
        assert!(
            out.contains(&format!("{}/registries/{path}\n", server.base)),
            "{out}"
        );

        let base = format!("/registries/@rack/{segs}");
        let manifest = std::fs::read(dir.join("registry.json")).unwrap();
        assert_eq!(get_ok(&server, &format!("{base}/1.0.0")), manifest, "{segs}");
        assert_eq!(get_ok(&server, &base), manifest, "{segs}: latest");
        let versions: Value = serde_json::from_slice(&get_ok(&server, &format!("{base}/versions"))).unwrap();
        assert_eq!(versions, json!({"versions": ["1.0.0"]}), "{segs}");
        for file in declared(&dir) {
            let want = std::fs::read(dir.join(&file)).unwrap();
            assert_eq!(
                get_ok(&server, &format!("{base}/1.0.0/files/{file}")),
                want,
                "{segs} {file}"
            );
        }
        // The undeclared smoke.json never travelled.
        assert_eq!(get(&server, &format!("{base}/1.0.0/files/smoke.json")).0, 404);
        assert!(!world.storage().join(format!("{path}/smoke.json")).exists());
    }
}

#[test]
fn publishing_a_version_twice_is_version_exists() {
    let (_world, server) = empty_server(json!({"@rack": [], "@demo": []}));
    let dir = example_dir();
    let (code, out) = publish_to(&server, ADMIN_TOKEN, &dir);
    assert_eq!(code, Some(0), "{out}\n--- server:\n{}", server.output());
    assert!(out.contains("published @demo/features/hello/1.0.0\n"), "{out}");
    let (code, out) = publish_to(&server, ADMIN_TOKEN, &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("409 VERSION_EXISTS: Registry @demo/features/hello@1.0.0 already exists"),
        "{out}"
    );
}

/// A copy of the example in namespace `ns`.
fn example_in(ns: &str) -> tempfile::TempDir {
    let dir = copy_of(&example_dir());
    let path = dir.path().join("registry.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["namespace"] = json!(ns);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    dir
}

#[test]
fn server_authorization_answers_are_printed() {
    let (_world, server) = empty_server(json!({
        "@rack": [],
        "@gated": [
            {"token": "gated-read-token", "mark": "read only"},
            {"token": "gated-publish-token", "publish": true}
        ]
    }));
    let gated = example_in("@gated");
    let (code, out) = publish_to(&server, "gated-read-token", gated.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "403 INSUFFICIENT_PERMISSIONS: Token does not have publish permission for namespace @gated"
        ),
        "{out}"
    );
    let (code, out) = publish_to(&server, "not-a-token", gated.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("401 INVALID_TOKEN: Provided token is invalid"),
        "{out}"
    );
    let (code, out) = publish_to(&server, "gated-publish-token", gated.path());
    assert_eq!(code, Some(0), "{out}\n--- server:\n{}", server.output());
    assert!(out.contains("published @gated/features/hello/1.0.0\n"), "{out}");

    let (code, out) = publish_to(&server, "anything", &example_dir());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("403 NAMESPACE_NOT_ALLOWED: Namespace @demo is not allowed"),
        "{out}"
    );
    let anon = example_in("@rack");
    let (code, out) = publish_to(&server, "gated-publish-token", anon.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("403 ANONYMOUS_UPLOAD_FORBIDDEN: "), "{out}");
}

#[test]
fn dry_run_refuses_duplicate_keys_like_the_server() {
    let dir = copy_of(&example_dir());
    let p = dir.path();
    let manifest = std::fs::read_to_string(p.join("registry.json")).unwrap();
    assert_eq!(dry_run(p).0, Some(0), "the example passes as it is");
    // The second `namespace` would silently win in a plain JSON parser.
    let doubled = manifest.replacen('{', "{\"namespace\": \"@elsewhere\",", 1);
    std::fs::write(p.join("registry.json"), doubled).unwrap();
    assert_rejected(
        p,
        "INVALID_MANIFEST",
        "registry.json has a duplicate key \"namespace\" at the top level",
    );
}
