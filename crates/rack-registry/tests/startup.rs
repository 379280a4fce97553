//! Startup, configuration, health, shutdown and request logging of the real `rack-registry`
//! binary (SPEC §3, §8, §10, §13, §14).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, run_cli, Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

const HEALTH_OK: &str = r#"{"status":"ok","checks":{"storage":{"status":"ok"}}}"#;

fn s(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().get(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().unwrap().to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(base: &str, path: &str) -> Reply {
    get_with(base, path, &[])
}

fn assert_health_error(r: &Reply) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["checks"]["storage"]["status"], "error", "{v}");
    assert!(v["checks"]["storage"]["error"].is_string(), "{v}");
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["checks", "status"], "{v}");
}

fn assert_health_ok(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), HEALTH_OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

/// Sorted names of the entries of a directory.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A server process started with explicit arguments (the harness always runs plain `serve`).
struct Proc {
    child: Child,
    base: String,
    output: Arc<Mutex<String>>,
}

impl Proc {
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn the binary with `args` in `cwd` with exactly the harness defaults plus `env` (no other
/// environment), and capture its output.
fn spawn(
    cwd: &Path,
    env: &[(String, String)],
    args: &[&str],
) -> (Child, Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let mut child = common::command(cwd, env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rack-registry");
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<String>();
    let streams = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let output = output.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
                if let Some(url) = common::listening_url(&line) {
                    let _ = tx.send(url);
                }
            }
        });
    }
    (child, output, rx)
}

/// Start with `args` and wait for the `listening on` line.
fn start_with_args(cwd: &Path, env: &[(String, String)], args: &[&str]) -> Proc {
    let (mut child, output, rx) = spawn(cwd, env, args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(base) = rx.recv_timeout(Duration::from_millis(50)) {
            return Proc { child, base, output };
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "rack-registry {args:?} exited ({status}):\n{}",
                output.lock().unwrap()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "rack-registry {args:?} never said it was listening:\n{}",
                output.lock().unwrap()
            );
        }
    }
}

/// A port that was free a moment ago (for runs whose log level hides the `listening on` line).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start on a fixed port and wait until `/health` answers (does not rely on any log line).
fn start_and_poll(cwd: &Path, env: &[(String, String)]) -> Proc {
    let port = free_port();
    let mut env = env.to_vec();
    env.push(s("PORT", &port.to_string()));
    let (mut child, output, _rx) = spawn(cwd, &env, &["serve"]);
    let base = format!("http://127.0.0.1:{port}");
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if quick.get(format!("{base}/health")).send().is_ok() {
            return Proc { child, base, output };
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!("server exited ({status}):\n{}", output.lock().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server never answered on {base}:\n{}", output.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (bounded) for a child to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// First run and storage root handling
// ---------------------------------------------------------------------------------------------

#[test]
fn first_run_creates_data_dir_with_marker_and_bundled_schemas() {
    let world = World::empty();
    let server = Server::start(world.path(), &[]);
    let data = world.path().join("data");
    assert!(data.is_dir(), "./data was not created");
    let marker = data.join(".healthcheck");
    assert!(marker.is_file(), ".healthcheck missing");
    assert_eq!(
        std::fs::metadata(&marker).unwrap().len(),
        0,
        ".healthcheck is not empty"
    );
    let bundled = [
        (
            "registry-item.json",
            include_str!("../schemas/registry-item.json"),
        ),
        ("preset.json", include_str!("../schemas/preset.json")),
        ("rack.json", include_str!("../schemas/rack.json")),
    ];
    for (name, body) in bundled {
        let path = data.join("schema").join(name);
        let written = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(written, body.as_bytes(), "{name} differs from the bundled schema");
    }

    assert_health_ok(&get(&server.base, "/health"));

    let r = get(&server.base, "/schemas/rack.json");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, std::fs::read(data.join("schema/rack.json")).unwrap());
    for name in ["registry-item.json", "preset.json"] {
        let r = get(&server.base, &format!("/schemas/{name}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.body, std::fs::read(data.join("schema").join(name)).unwrap());
    }

    // No auth.json: every namespace is undeclared, so nothing is listed.
    let r = get(&server.base, "/namespaces");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"namespaces": []}));
}

#[test]
fn existing_storage_root_is_not_modified() {
    let world = World::empty();
    let root = world.path().join("existing");
    std::fs::create_dir_all(root.join("@acme/tool")).unwrap();
    std::fs::write(root.join("@acme/tool/versions.json"), b"{\"versions\":[]}\n").unwrap();
    std::fs::write(root.join("notes.txt"), b"operator notes\n").unwrap();
    let before = entries(&root);

    let server = Server::start(world.path(), &[s("STORAGE_ROOT", &root.display().to_string())]);
    assert!(
        !root.join("schema").exists(),
        "schema/ written into an existing root"
    );
    assert!(
        !root.join(".healthcheck").exists(),
        ".healthcheck written into an existing root"
    );
    let after: Vec<String> = entries(&root).into_iter().filter(|n| n != ".webhooks").collect();
    assert_eq!(after, before);
    assert_eq!(
        std::fs::read(root.join("notes.txt")).unwrap(),
        b"operator notes\n"
    );
    assert_eq!(
        std::fs::read(root.join("@acme/tool/versions.json")).unwrap(),
        b"{\"versions\":[]}\n"
    );

    // Without the marker the storage is reported unhealthy, and asking does not create it.
    assert_health_error(&get(&server.base, "/health"));
    assert_health_error(&get(&server.base, "/health"));
    assert!(!root.join(".healthcheck").exists());

    // A missing schema directory never blocks startup; the schema route is simply 404.
    let r = get(&server.base, "/schemas/rack.json");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"code": "NOT_FOUND", "message": "Schema not found"})
    );
    assert!(!root.join("schema").exists());
}

#[test]
fn existing_empty_default_data_dir_is_left_alone() {
    let world = World::empty();
    std::fs::create_dir(world.path().join("data")).unwrap();
    let server = Server::start(world.path(), &[]);
    assert!(entries(&world.path().join("data"))
        .iter()
        .all(|n| n == ".webhooks"));
    assert_health_error(&get(&server.base, "/health"));
}

/// Every file under `dir` (relative path and contents), skipping the server's own working
/// directories (`.tmp` staging, `.webhooks` outbox).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".tmp" || rel == ".webhooks" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn an_existing_world_is_served_as_it_is() {
    let world = World::new();
    let before = snapshot(&world.storage());
    let server = Server::world(&world);
    assert_health_ok(&get(&server.base, "/health"));
    let after = snapshot(&world.storage());
    let names = |s: &[(String, Vec<u8>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let added: Vec<_> = names(&after)
        .into_iter()
        .filter(|n| !names(&before).contains(n))
        .collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|b| !after.contains(b))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        added.is_empty() && changed.is_empty(),
        "startup modified an existing storage root: added {added:?}, changed or removed {changed:?}"
    );
    // `@noreg/stuff` holds a version directory but no versions.json: it stays that way.
    let r = get(&server.base, "/registries/@noreg/stuff");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"code": "NOT_FOUND", "message": "No versions available"})
    );
}

#[test]
fn leftover_tmp_dir_is_removed_at_startup() {
    let world = World::new();
    let tmp = world.storage().join(".tmp");
    std::fs::create_dir_all(tmp.join("upload-123/nested")).unwrap();
    std::fs::write(tmp.join("upload-123/nested/package.tar.gz"), b"partial").unwrap();
    std::fs::write(tmp.join("stray"), b"x").unwrap();
    let server = Server::world(&world);
    // SPEC §5.3: outside an in-flight upload the staging directory is empty or absent.
    assert!(
        !tmp.exists() || entries(&tmp).is_empty(),
        "leftovers in <root>/.tmp/ survived startup: {:?}",
        entries(&tmp)
    );
    // The rest of the root is intact and served.
    assert!(world.storage().join(".healthcheck").is_file());
    assert_health_ok(&get(&server.base, "/health"));
    let r = get(&server.base, "/registries/@rack/build/rollup");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn health_follows_the_marker_on_the_very_next_request() {
    let world = World::new();
    let server = Server::world(&world);
    let marker = world.storage().join(".healthcheck");
    assert_health_ok(&get(&server.base, "/health"));
    assert_health_ok(&get(&server.base, "/health"));

    std::fs::remove_file(&marker).unwrap();
    assert_health_error(&get(&server.base, "/health"));

    std::fs::write(&marker, b"").unwrap();
    assert_health_ok(&get(&server.base, "/health"));

    std::fs::remove_file(&marker).unwrap();
    assert_health_error(&get(&server.base, "/health"));
    std::fs::write(&marker, b"").unwrap();
    assert_health_ok(&get(&server.base, "/health"));
}

// ---------------------------------------------------------------------------------------------
// .env, environment and flags
// ---------------------------------------------------------------------------------------------

#[test]
fn real_environment_wins_over_dotenv() {
    let world = World::empty();
    // Every one of these would be a configuration error if `.env` won over the real environment
    // (the harness sets PORT=0, HOST=127.0.0.1, LOG_FORMAT=json, RATE_LIMIT_MAX=0).
    std::fs::write(
        world.path().join(".env"),
        "PORT=abc\nHOST=nope\nLOG_FORMAT=xml\nRATE_LIMIT_MAX=-1\n",
    )
    .unwrap();
    let server = match Server::try_start(world.path(), &[]) {
        Ok(s) => s,
        Err(f) => panic!(
            ".env overrode the real environment (code {:?}):\n{}",
            f.code, f.output
        ),
    };
    assert!(server.base.starts_with("http://127.0.0.1:"), "{}", server.base);
    assert_health_ok(&get(&server.base, "/health"));
}

#[test]
fn variables_only_in_dotenv_are_applied() {
    let world = World::new();
    std::fs::write(
        world.path().join(".env"),
        "# comment line\nSTORAGE_ROOT=storage\nADMIN_TOKEN=dotenv-admin-token-42\n",
    )
    .unwrap();
    // Neither STORAGE_ROOT nor ADMIN_TOKEN in the real environment.
    let env = [s("AUTH_CONFIG_PATH", &world.auth_path().display().to_string())];
    let server = Server::start(world.path(), &env);
    assert!(
        !world.path().join("data").exists(),
        "the default ./data was used instead of STORAGE_ROOT from .env"
    );
    assert_health_ok(&get(&server.base, "/health"));

    // `@secret` is stored in the world but undeclared: only the admin sees it in the listing.
    let admin = get_with(
        &server.base,
        "/namespaces",
        &[("Authorization", "Bearer dotenv-admin-token-42")],
    );
    assert_eq!(admin.status, 200, "{}", admin.text());
    let listed = admin.json()["namespaces"].clone();
    assert!(
        listed.as_array().unwrap().contains(&json!("@secret")),
        "admin token from .env not applied: {listed}"
    );
    let anon = get(&server.base, "/namespaces").json();
    assert!(!anon["namespaces"].as_array().unwrap().contains(&json!("@secret")));
    let r = get(&server.base, "/registries/@rack/build/rollup");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn dotenv_storage_root_creates_a_fresh_root_relative_to_the_working_directory() {
    let world = World::empty();
    std::fs::write(world.path().join(".env"), "STORAGE_ROOT=./from-dotenv\n").unwrap();
    let server = Server::start(world.path(), &[]);
    let root = world.path().join("from-dotenv");
    assert!(root.join(".healthcheck").is_file());
    assert!(root.join("schema/rack.json").is_file());
    assert!(!world.path().join("data").exists());
    assert_health_ok(&get(&server.base, "/health"));
}

#[test]
fn command_line_flags_win_over_environment_and_dotenv() {
    let world = World::empty();
    std::fs::write(world.path().join(".env"), "STORAGE_ROOT=dotenv-root\n").unwrap();
    let env = [s("STORAGE_ROOT", "env-root"), s("LOG_LEVEL", "loud")];
    let proc = start_with_args(
        world.path(),
        &env,
        &["serve", "--storage-root", "flag-root", "--log-level", "info"],
    );
    assert!(world.path().join("flag-root/.healthcheck").is_file());
    assert!(world.path().join("flag-root/schema/rack.json").is_file());
    assert!(
        !world.path().join("env-root").exists(),
        "environment won over the flag"
    );
    assert!(
        !world.path().join("dotenv-root").exists(),
        ".env won over the flag"
    );
    assert_health_ok(&get(&proc.base, "/health"));
}

#[test]
fn flags_work_without_the_serve_subcommand() {
    let world = World::empty();
    let env = [s("PORT", "abc")];
    let proc = start_with_args(world.path(), &env, &["--port", "0", "--storage-root", "plain"]);
    assert!(world.path().join("plain/.healthcheck").is_file());
    assert_health_ok(&get(&proc.base, "/health"));
    drop(proc);

    // And no arguments at all is `serve`.
    let proc = start_with_args(world.path(), &[], &[]);
    assert!(world.path().join("data/.healthcheck").is_file());
    assert_health_ok(&get(&proc.base, "/health"));
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

/// `serve` with `env` must exit non-zero within 5 s; returns the output.
fn config_error(vars: &[(&str, &str)]) -> String {
    let world = World::empty();
    let env: Vec<(String, String)> = vars.iter().map(|(k, v)| s(k, v)).collect();
    let started = Instant::now();
    let (code, output) = run_cli(world.path(), &env, &["serve"]);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{vars:?}: took {elapsed:?} to fail"
    );
    assert!(
        matches!(code, Some(c) if c != 0),
        "{vars:?}: expected a non-zero exit, got {code:?}:\n{output}"
    );
    assert!(
        !output.contains("listening on"),
        "{vars:?}: started listening:\n{output}"
    );
    output
}

#[test]
fn invalid_values_are_startup_errors_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PORT", "abc")], "PORT"),
        (&[("PORT", "70000")], "PORT"),
        (&[("PORT", "-1")], "PORT"),
        (&[("HOST", "nope")], "HOST"),
        (&[("LOG_LEVEL", "loud")], "LOG_LEVEL"),
        (&[("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (&[("TRUST_PROXY", "maybe")], "TRUST_PROXY"),
        (&[("TRUST_PROXY", "0")], "TRUST_PROXY"),
        (&[("TRUST_PROXY", "-2")], "TRUST_PROXY"),
        (&[("STORAGE_BACKEND", "ftp")], "STORAGE_BACKEND"),
        // S3_ENDPOINT is optional (unset: AWS, SPEC 11.1); the bucket is not.
        (
            &[
                ("STORAGE_BACKEND", "s3"),
                ("S3_ACCESS_KEY_ID", "ak"),
                ("S3_SECRET_ACCESS_KEY", "sk"),
            ],
            "S3_BUCKET",
        ),
        (
            &[
                ("STORAGE_BACKEND", "s3"),
                ("S3_BUCKET", "b"),
                ("STORAGE_PREFIX", "../x"),
            ],
            "STORAGE_PREFIX",
        ),
        (&[("RATE_LIMIT_MAX", "-1")], "RATE_LIMIT_MAX"),
        (&[("RATE_LIMIT_MAX", "many")], "RATE_LIMIT_MAX"),
        (&[("MAX_UPLOAD_BYTES", "x")], "MAX_UPLOAD_BYTES"),
        (&[("ADMIN_TOKEN_SHA256", "abc")], "ADMIN_TOKEN_SHA256"),
    ];
    let mut failures = Vec::new();
    for (vars, name) in cases {
        let output = config_error(vars);
        if !output.contains(name) {
            failures.push(format!("{vars:?}: message does not name {name}:\n{output}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// docs/decisions.md: a configuration error exits with status 2. r2 and s3 are not served yet:
/// they are refused at once, before any credential is asked for.
#[test]
fn object_storage_configuration_errors_exit_2_at_once() {
    // A bucket backend without its bucket: a configuration error naming the variable, before
    // anything is created or any network is tried.
    for (backend, var) in [("r2", "R2_"), ("s3", "S3_BUCKET")] {
        let world = World::empty();
        let (code, output) = run_cli(world.path(), &[s("STORAGE_BACKEND", backend)], &["serve"]);
        assert_eq!(code, Some(2), "{backend}:\n{output}");
        assert!(output.contains(var), "{backend}:\n{output}");
        assert!(!world.path().join("data").exists(), "{backend}: created storage");
    }
    let world = World::empty();
    let (code, output) = run_cli(world.path(), &[s("PORT", "abc")], &["serve"]);
    assert_eq!(code, Some(2), "{output}");
}

#[test]
fn admin_token_sha256_error_does_not_echo_the_value() {
    for value in [
        "abc",
        "not-a-digest-but-a-secret-7f3a9c",
        "zz9a5e1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab",
    ] {
        let output = config_error(&[("ADMIN_TOKEN_SHA256", value)]);
        assert!(output.contains("ADMIN_TOKEN_SHA256"), "{output}");
        assert!(
            !output.contains(value),
            "the ADMIN_TOKEN_SHA256 value was echoed:\n{output}"
        );
    }
}

#[test]
fn unknown_variables_are_ignored() {
    let world = World::empty();
    let env = [
        s("NODE_ENV", "production"),
        s("SOME_UNKNOWN_SETTING", "whatever"),
        s("DEBUG", "*"),
    ];
    let server = Server::start(world.path(), &env);
    assert_health_ok(&get(&server.base, "/health"));
}

#[test]
fn invalid_value_in_dotenv_is_a_startup_error_too() {
    let world = World::empty();
    std::fs::write(world.path().join(".env"), "LOG_LEVEL=loud\n").unwrap();
    let started = Instant::now();
    let (code, output) = run_cli(world.path(), &[], &["serve"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(code, Some(c) if c != 0), "{code:?}:\n{output}");
    assert!(output.contains("LOG_LEVEL"), "{output}");
}

#[test]
fn accepted_values_start_the_server() {
    let cases: &[&[(&str, &str)]] = &[
        &[("TRUST_PROXY", "true")],
        &[("TRUST_PROXY", "false")],
        &[("TRUST_PROXY", "2")],
        &[("LOG_FORMAT", "pretty")],
        &[("STORAGE_BACKEND", "local")],
        &[("RATE_LIMIT_MAX", "5"), ("RATE_LIMIT_WINDOW_SECONDS", "60")],
        &[("MAX_UPLOAD_BYTES", "1048576")],
        &[("ADMIN_TOKEN", "")],
    ];
    for vars in cases {
        let world = World::empty();
        let env: Vec<(String, String)> = vars.iter().map(|(k, v)| s(k, v)).collect();
        match Server::try_start(world.path(), &env) {
            Ok(server) => assert_health_ok(&get(&server.base, "/health")),
            Err(f) => panic!("{vars:?} refused (code {:?}):\n{}", f.code, f.output),
        }
    }
}

use common::sha256_hex;

/// Is `token` the admin? `@secret` is stored in the world but undeclared: only the admin lists it.
fn is_admin(base: &str, token: &str) -> bool {
    let bearer = format!("Bearer {token}");
    let r = get_with(base, "/namespaces", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("@secret"))
}

#[test]
fn admin_token_is_trimmed_and_sha256_is_case_insensitive() {
    let world = World::new();
    let base_env = || {
        vec![
            s("STORAGE_ROOT", &world.storage().display().to_string()),
            s("AUTH_CONFIG_PATH", &world.auth_path().display().to_string()),
        ]
    };

    let mut env = base_env();
    env.push(s("ADMIN_TOKEN", "   padded-admin-token   "));
    let server = Server::start(world.path(), &env);
    assert!(is_admin(&server.base, "padded-admin-token"));
    assert!(!is_admin(&server.base, "wrong-token"));
    drop(server);

    let mut env = base_env();
    env.push(s(
        "ADMIN_TOKEN_SHA256",
        &sha256_hex("hashed-admin-token").to_uppercase(),
    ));
    let server = Server::start(world.path(), &env);
    assert!(is_admin(&server.base, "hashed-admin-token"));
    assert!(!is_admin(&server.base, "wrong-token"));
    drop(server);

    // Both set: either token is accepted.
    let mut env = base_env();
    env.push(s("ADMIN_TOKEN", "plain-admin-token"));
    env.push(s("ADMIN_TOKEN_SHA256", &sha256_hex("hashed-admin-token")));
    let server = Server::start(world.path(), &env);
    assert!(is_admin(&server.base, "plain-admin-token"));
    assert!(is_admin(&server.base, "hashed-admin-token"));
    assert!(!is_admin(&server.base, "wrong-token"));
    let output = server.output();
    assert!(!output.contains("plain-admin-token"), "{output}");
    assert!(!output.contains(&sha256_hex("hashed-admin-token")), "{output}");
}

#[test]
fn every_log_level_is_accepted() {
    for level in ["trace", "debug", "info", "warn", "error"] {
        let world = World::empty();
        let proc = start_and_poll(world.path(), &[s("LOG_LEVEL", level)]);
        let r = get(&proc.base, "/health");
        assert_eq!(r.status, 200, "LOG_LEVEL={level}: {}", r.text());
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_exits_cleanly_and_promptly() {
    let world = World::new();
    let server = Server::world(&world);
    assert_health_ok(&get(&server.base, "/health"));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(server.terminate());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no exit within 10 s of SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_exits_cleanly_and_promptly() {
    let world = World::empty();
    let mut proc = start_with_args(world.path(), &[], &["serve"]);
    assert_health_ok(&get(&proc.base, "/health"));
    let status = Command::new("kill")
        .arg("-INT")
        .arg(proc.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut proc.child, Duration::from_secs(5)).expect("no exit within 5 s of SIGINT");
    assert_eq!(status.code(), Some(0), "{}", proc.output());
}

// ---------------------------------------------------------------------------------------------
// Request logs
// ---------------------------------------------------------------------------------------------

const SECRETS: [&str; 3] = ["some-secret-value-123", "another-secret-456", "cookie-secret-789"];

/// Look a field up at the top level of a JSON log line, or under `fields`.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get(name)
        .or_else(|| line.get("fields").and_then(|f| f.get(name)))
}

fn request_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| field(v, "route").is_some() && field(v, "status").is_some())
        .collect()
}

fn lines_for<'a>(lines: &'a [Value], route: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| field(v, "route").and_then(Value::as_str) == Some(route))
        .collect()
}

fn status_of(v: &Value) -> Option<u64> {
    match field(v, "status")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Poll the server output until `ok` holds (logs are written asynchronously).
fn wait_for_output(output: impl Fn() -> String, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = output();
        if ok(&out) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send_secret_requests(base: &str) {
    let secret_headers = [
        ("Authorization", "Bearer some-secret-value-123"),
        ("X-Registry-Token", "another-secret-456"),
        ("Cookie", "session=cookie-secret-789"),
    ];
    let r = get(base, "/health");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with(base, "/registries/@rack/build/rollup", &secret_headers);
    assert_eq!(r.status, 200, "{}", r.text());
    // Failures (401 on a gated namespace) and the admin token must not be logged either.
    let r = get_with(base, "/registries/@company/ui/button", &secret_headers);
    assert_eq!(r.status, 401, "{}", r.text());
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let r = get_with(base, "/namespaces", &[("Authorization", &admin)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with(base, "/namespaces", &[("X-Registry-Token", ADMIN_TOKEN)]);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn assert_no_secrets(output: &str) {
    for secret in SECRETS.iter().chain([&ADMIN_TOKEN]) {
        assert!(
            !output.contains(secret),
            "the log contains the secret {secret:?}:\n{output}"
        );
    }
}

#[test]
fn one_structured_request_line_per_request_and_no_secrets() {
    let world = World::new();
    let mut env = world.env();
    env.push(s("LOG_LEVEL", "trace"));
    let server = Server::start(world.path(), &env);
    send_secret_requests(&server.base);

    let output = wait_for_output(
        || server.output(),
        |out| {
            let lines = request_lines(out);
            lines_for(&lines, "/namespaces").len() >= 2
                && !lines_for(&lines, "/health").is_empty()
                && !lines_for(&lines, "/registries/:registry").is_empty()
        },
    );
    let lines = request_lines(&output);

    let health = lines_for(&lines, "/health");
    assert_eq!(health.len(), 1, "one /health request, lines:\n{output}");
    let registry = lines_for(&lines, "/registries/:registry");
    assert_eq!(
        registry.len(),
        2,
        "two /registries/:registry requests, lines:\n{output}"
    );
    let namespaces = lines_for(&lines, "/namespaces");
    assert_eq!(namespaces.len(), 2, "two /namespaces requests, lines:\n{output}");

    for line in health.iter().chain(&registry).chain(&namespaces) {
        assert_eq!(
            field(line, "method").and_then(Value::as_str),
            Some("GET"),
            "{line}"
        );
        assert!(field(line, "duration_ms").is_some_and(Value::is_number), "{line}");
        let id = field(line, "request_id").and_then(Value::as_str).unwrap_or("");
        assert!(!id.is_empty(), "{line}");
        // The client address (a port after it would be tolerated).
        let client = field(line, "client").and_then(Value::as_str).unwrap_or("");
        assert!(client.starts_with("127.0.0.1"), "{line}");
    }
    assert_eq!(status_of(health[0]), Some(200), "{}", health[0]);
    let mut statuses: Vec<_> = registry.iter().map(|l| status_of(l)).collect();
    statuses.sort();
    assert_eq!(statuses, [Some(200), Some(401)], "{output}");
    // Request ids differ between requests.
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| field(l, "request_id").and_then(Value::as_str))
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "request ids repeat:\n{output}");
    // The raw path is not the route.
    assert!(
        lines
            .iter()
            .all(|l| field(l, "route").and_then(Value::as_str) != Some("/registries/@rack/build/rollup")),
        "{output}"
    );

    assert_no_secrets(&output);
    drop(server);
}

#[test]
fn pretty_logs_do_not_contain_secrets_either() {
    let world = World::new();
    let mut env = world.env();
    env.push(s("LOG_LEVEL", "trace"));
    env.push(s("LOG_FORMAT", "pretty"));
    let server = Server::start(world.path(), &env);
    send_secret_requests(&server.base);
    let output = wait_for_output(|| server.output(), |out| out.matches("/namespaces").count() >= 2);
    assert!(output.contains("/registries/:registry"), "{output}");
    assert_no_secrets(&output);
}

// ---------------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_is_available_for_the_binary_and_serve() {
    let world = World::empty();
    for args in [&["--help"][..], &["serve", "--help"][..], &["help"][..]] {
        let (code, output) = run_cli(world.path(), &[], args);
        assert_eq!(code, Some(0), "{args:?}:\n{output}");
        assert!(
            output.contains("PORT"),
            "{args:?} does not mention PORT:\n{output}"
        );
    }
    let (code, output) = run_cli(world.path(), &[], &["serve", "--help"]);
    assert_eq!(code, Some(0));
    for var in ["STORAGE_ROOT", "ADMIN_TOKEN", "LOG_LEVEL"] {
        assert!(
            output.contains(var),
            "serve --help does not mention {var}:\n{output}"
        );
    }
    // Help is not a server start: nothing is created.
    assert!(!world.path().join("data").exists());
}

/// clap shows `[env: HOST=]` for an unset variable (reads as "set to empty") and the value of a
/// set one: help shows the names only, and every flag says what it is.
#[test]
fn help_shows_variable_names_not_values() {
    let world = World::empty();
    let env = [
        s("STORAGE_ROOT", "/some/where/else"),
        s("R2_BUCKET_NAME", "bucket-name-in-env"),
    ];
    for args in [
        &["--help"][..],
        &["serve", "--help"][..],
        &["publish", "--help"][..],
    ] {
        let (code, output) = run_cli(world.path(), &env, args);
        assert_eq!(code, Some(0), "{args:?}:\n{output}");
        for (i, _) in output.match_indices("[env: ") {
            let tag = &output[i..i + output[i..].find(']').unwrap() + 1];
            assert!(!tag.contains('='), "{args:?}: {tag}:\n{output}");
        }
        for value in ["/some/where/else", "bucket-name-in-env", "127.0.0.1"] {
            assert!(!output.contains(value), "{args:?} shows {value}:\n{output}");
        }
    }
    let (_, output) = run_cli(world.path(), &[], &["serve", "--help"]);
    assert!(output.contains("[env: HOST]"), "{output}");
    let backend = output
        .lines()
        .find(|l| l.contains("[env: STORAGE_BACKEND]"))
        .unwrap();
    assert!(backend.contains("s3") && backend.contains("r2"), "{backend}");
    for var in [
        "R2_BUCKET_NAME",
        "R2_ACCOUNT_ID",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
        "S3_ENDPOINT",
        "S3_REGION",
        "S3_BUCKET",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
    ] {
        let tag = format!("[env: {var}]");
        let line = output
            .lines()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no {tag}:\n{output}"));
        let description = line[..line.find(&tag).unwrap()].trim();
        assert!(!description.is_empty(), "{var} has no description:\n{output}");
    }
    let (_, output) = run_cli(world.path(), &[], &["publish", "--help"]);
    assert!(output.contains("[env: RACK_REGISTRY_TOKEN]"), "{output}");
}

// ---------------------------------------------------------------------------------------------
// What startup and failures log
// ---------------------------------------------------------------------------------------------

fn log_line<'a>(lines: &'a [Value], message: &str) -> Option<&'a Value> {
    lines
        .iter()
        .find(|v| field(v, "message").and_then(Value::as_str) == Some(message))
}

fn json_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[test]
fn startup_confirms_namespaces_admin_token_and_webhooks_without_secrets() {
    let world = World::empty();
    let dir = world.path();
    std::fs::write(
        dir.join("auth.json"),
        r#"{"@zeta": [], "@alpha": [], "@BAD": []}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("webhooks.json"),
        r#"{"webhooks": [
            {"url": "http://127.0.0.1:9/a", "secret": "webhook-secret-1", "events": ["uploaded"], "enabled": true},
            {"url": "http://127.0.0.1:9/b", "secret": "webhook-secret-2", "events": ["uploaded"], "enabled": false}
        ]}"#,
    )
    .unwrap();
    let files = [
        s("AUTH_CONFIG_PATH", &dir.join("auth.json").display().to_string()),
        s(
            "WEBHOOK_CONFIG_PATH",
            &dir.join("webhooks.json").display().to_string(),
        ),
    ];
    let mut env = files.to_vec();
    env.push(s("ADMIN_TOKEN", ADMIN_TOKEN));
    let server = Server::start(dir, &env);
    let output = server.output();
    let lines = json_lines(&output);
    let line = log_line(&lines, "configuration loaded").unwrap_or_else(|| panic!("{output}"));
    assert_eq!(field(line, "level"), Some(&json!("INFO")), "{line}");
    // @BAD is rejected by fail-closed parsing: not loaded, not counted.
    assert_eq!(field(line, "namespaces"), Some(&json!(2)), "{line}");
    assert_eq!(
        field(line, "namespace_names"),
        Some(&json!("@alpha,@zeta")),
        "{line}"
    );
    assert_eq!(field(line, "admin_token"), Some(&json!("set")), "{line}");
    assert_eq!(field(line, "webhooks"), Some(&json!(2)), "{line}");
    assert_eq!(field(line, "webhooks_enabled"), Some(&json!(1)), "{line}");
    for secret in [ADMIN_TOKEN, "webhook-secret-1", "webhook-secret-2"] {
        assert!(!output.contains(secret), "{secret} logged:\n{output}");
    }
    drop(server);

    let server = Server::start(dir, &files);
    let output = server.output();
    let lines = json_lines(&output);
    let line = log_line(&lines, "configuration loaded").unwrap_or_else(|| panic!("{output}"));
    assert_eq!(field(line, "admin_token"), Some(&json!("not set")), "{line}");
}

#[test]
fn pretty_logs_are_not_coloured_when_not_a_terminal() {
    let world = World::new();
    let mut env = world.env();
    env.push(s("LOG_FORMAT", "pretty"));
    let server = Server::start(world.path(), &env);
    let r = get(&server.base, "/health");
    assert_eq!(r.status, 200);
    let output = wait_for_output(|| server.output(), |out| out.contains("/health"));
    assert!(output.contains("listening on"), "{output}");
    assert!(!output.contains('\u{1b}'), "escape codes in a pipe:\n{output:?}");
}

#[test]
fn a_failed_publish_logs_a_warning_with_its_code() {
    let world = World::new();
    let server = Server::world(&world);
    let form = reqwest::blocking::multipart::Form::new().text("checksum", "0".repeat(64));
    let r = client()
        .post(format!("{}/registries", server.base))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let code = r.json::<Value>().unwrap()["code"].as_str().unwrap().to_owned();
    let output = wait_for_output(|| server.output(), |out| out.contains("publish failed"));
    let lines = json_lines(&output);
    let line = log_line(&lines, "publish failed").unwrap_or_else(|| panic!("{output}"));
    assert_eq!(field(line, "level"), Some(&json!("WARN")), "{line}");
    assert_eq!(field(line, "code"), Some(&json!(code)), "{line}");
}

#[test]
fn fixtures_are_found_only_where_documented() {
    let nowhere = tempfile::tempdir().unwrap();
    // No RACK_FIXTURES and no ../shared next to this "repository": an error, whatever other
    // directory this machine has (the old code fell back to /work/shared).
    let e = common::locate_fixtures(None, &nowhere.path().join("repo")).unwrap_err();
    assert!(e.contains("../shared") && e.contains("RACK_FIXTURES"), "{e}");
    let e = common::locate_fixtures(Some(nowhere.path().into()), &common::repo_root()).unwrap_err();
    assert!(e.contains("RACK_FIXTURES"), "{e}");
    let fixtures = common::fixtures_root();
    assert_eq!(
        common::locate_fixtures(Some(fixtures.clone().into()), &nowhere.path().join("repo")),
        Ok(fixtures)
    );
}
