//! A real S3 server for the bucket tests: moto in server mode on 127.0.0.1.
//!
//! `RACK_S3_ENDPOINT` (set by `.ci/run` after `tools/moto/start`) names a running one;
//! otherwise, when `target/moto-venv` exists (made by `tools/moto/start`), each test binary
//! starts its own server once, which dies with the test process. Every test gets its own bucket.
//! Without either, the s3 variants are skipped with a loud message, unless `RACK_REQUIRE_S3=1`
//! (CI), which makes them fail instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{repo_root, run_cli, World};

/// Credentials moto accepts (it checks none).
pub const ACCESS_KEY: &str = "rack-test-key";
pub const SECRET_KEY: &str = "rack-test-secret";

fn moto_bin() -> PathBuf {
    repo_root().join("target/moto-venv/bin/moto_server")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ready(endpoint: &str) -> bool {
    reqwest::blocking::Client::new()
        .get(endpoint)
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok()
}

/// Start moto from the venv; it gets SIGKILL when the thread that spawned it ends, and that
/// thread lives as long as the test process.
fn start_moto() -> Option<String> {
    let bin = moto_bin();
    if !bin.is_file() {
        return None;
    }
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(Into::into)
            });
        }
        let child = cmd.spawn();
        let _ = tx.send(child.is_ok());
        if child.is_ok() {
            loop {
                std::thread::park();
            }
        }
    });
    if !rx.recv().unwrap_or(false) {
        return None;
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready(&endpoint) {
            return Some(endpoint);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto did not answer on {endpoint} within 60 s");
}

/// The S3 endpoint for this test process, or `None` (after a loud message) when there is none.
pub fn endpoint() -> Option<String> {
    static ENDPOINT: OnceLock<Option<String>> = OnceLock::new();
    let found = ENDPOINT
        .get_or_init(|| {
            std::env::var("RACK_S3_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .or_else(start_moto)
        })
        .clone();
    if found.is_none() {
        if std::env::var("RACK_REQUIRE_S3").is_ok_and(|v| v == "1") {
            panic!("RACK_REQUIRE_S3=1 but no S3 server: set RACK_S3_ENDPOINT or run tools/moto/start");
        }
        eprintln!(
            "\n*** SKIPPING the s3 variant: no S3 server (run tools/moto/start once, or set \
             RACK_S3_ENDPOINT) ***\n"
        );
    }
    found
}

/// A fresh, empty bucket on the test S3 server.
pub struct Bucket {
    pub endpoint: String,
    pub name: String,
}

impl Bucket {
    /// `None` when there is no S3 server (see [`endpoint`]).
    pub fn new() -> Option<Bucket> {
        static N: AtomicU32 = AtomicU32::new(0);
        let endpoint = endpoint()?;
        let name = format!(
            "rack-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        // moto takes unsigned requests: a path-style PUT creates the bucket.
        let r = reqwest::blocking::Client::new()
            .put(format!("{endpoint}/{name}"))
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket {name}: {}", r.status());
        Some(Bucket { endpoint, name })
    }

    /// Environment selecting this bucket as storage.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("STORAGE_BACKEND", "s3"),
            ("S3_ENDPOINT", self.endpoint.as_str()),
            ("S3_BUCKET", self.name.as_str()),
            ("S3_REGION", "us-east-1"),
            ("S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("S3_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `rack-registry storage <args>` on this bucket, which must succeed; its output.
    pub fn storage_cli(&self, cwd: &std::path::Path, args: &[&str]) -> String {
        let mut full = vec!["storage"];
        full.extend_from_slice(args);
        let (code, out) = run_cli(cwd, &self.env(), &full);
        assert_eq!(code, Some(0), "storage {args:?}:\n{out}");
        out
    }
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    format!("{:08x}", h.finish() as u32)
}

impl World {
    /// Bring the world's bucket (if the tests run on S3) up to date with its storage directory,
    /// after a test changed files there while its server runs.
    pub fn sync(&self) {
        if let Some(bucket) = self.bucket.get() {
            bucket.storage_cli(self.path(), &["push", &self.storage().display().to_string()]);
        }
    }

    /// Environment for a server on this world with its storage in `bucket` (seeded from the
    /// world's storage directory by `storage push`); `STORAGE_ROOT` becomes a scratch directory
    /// for upload staging, so nothing is read from the world's directory.
    pub fn env_on_bucket(&self, bucket: &Bucket) -> Vec<(String, String)> {
        let scratch = self.path().join("scratch");
        bucket.storage_cli(self.path(), &["push", &self.storage().display().to_string()]);
        let mut env: Vec<(String, String)> = self
            .local_env()
            .into_iter()
            .filter(|(k, _)| k != "STORAGE_ROOT")
            .collect();
        env.push(("STORAGE_ROOT".into(), scratch.display().to_string()));
        env.extend(bucket.env());
        env
    }
}

/// The target of the whole test binary: `RACK_TEST_TARGET=s3` runs every [`World`]'s server on
/// a bucket (the HTTP test binaries parameterised, not copied); default `local`.
pub fn test_target() -> Target {
    match std::env::var("RACK_TEST_TARGET").ok().as_deref() {
        Some("s3") => Target::S3,
        None | Some("") | Some("local") => Target::Local,
        Some("worker") => {
            panic!("RACK_TEST_TARGET=worker: the Worker serves reads only; use CONFORMANCE_TARGET=worker")
        }
        Some(other) => panic!("RACK_TEST_TARGET={other}: local or s3"),
    }
}

/// `true` (after a message) when this test binary runs on S3 (`RACK_TEST_TARGET=s3`) and the
/// test is about the local disk itself (`why`): the caller returns.
pub fn local_only(why: &str) -> bool {
    let skip = test_target() == Target::S3;
    if skip {
        eprintln!("skipped on s3: {why}");
    }
    skip
}

/// Where a test's server keeps its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Local,
    S3,
    /// The edge Worker in workerd (`crates/rack-worker/serve-local`, see `common/worker.rs`).
    Worker,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::S3 => "s3",
            Target::Worker => "worker",
        }
    }

    /// The targets to run on: `local`, and `s3` when an S3 server is available.
    pub fn all() -> Vec<Target> {
        let mut t = vec![Target::Local];
        if endpoint().is_some() {
            t.push(Target::S3);
        }
        t
    }
}

/// A server on `world` with its storage on `target` (the bucket is kept alive by the caller
/// through the returned value).
pub fn serve_on(world: &World, target: Target) -> (super::Server, Option<Bucket>) {
    match target {
        Target::Local => (super::Server::start(world.path(), &world.local_env()), None),
        Target::S3 => {
            let bucket = Bucket::new().expect("Target::all only offers s3 with a server");
            let env = world.env_on_bucket(&bucket);
            (super::Server::start(world.path(), &env), Some(bucket))
        }
        // serve-local seeds its simulated R2 bucket from the world's storage directory and
        // policy, with the server's variables.
        Target::Worker => (super::worker::start(world.path(), &world.local_env()), None),
    }
}
