//! Real S3 servers for the bucket tests, on 127.0.0.1.
//!
//! Two servers ([`S3Server`]):
//! - **ministack** (the default, [`Bucket::new`], [`endpoint`]): PyPI's `ministack`, whose S3
//!   handlers run on one asyncio event loop with no await between the check of
//!   `If-None-Match`/`If-Match` and the store, so conditional writes are atomic: racing writers
//!   get exactly one winner. Every race and compare-and-swap test runs on it.
//! - **moto** ([`Bucket::on`]`(S3Server::Moto)`): checks the conditions and stores without a lock
//!   on a threaded server, so a race can have two winners; kept so that the storage contract also
//!   runs on a second implementation, with the outcome of races left unasserted there.
//!
//! For each, an environment variable names a running server (`RACK_S3_ENDPOINT` for ministack,
//! `RACK_S3_MOTO_ENDPOINT` for moto; `.ci/run` sets both from `tools/ministack/start` and
//! `tools/moto/start`); otherwise, when its venv exists (`target/ministack-venv`,
//! `target/moto-venv`, made by those scripts), each test binary starts its own server once, which
//! dies with the test process. Every test gets its own bucket. Without either, the test is skipped
//! with a loud message, unless `RACK_REQUIRE_S3=1` (CI), which makes it fail instead.
//! `RACK_S3_ENDPOINT` must name a server with atomic conditional writes (not moto).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{repo_root, run_cli, World};

/// Credentials the test servers accept (they check none).
pub const ACCESS_KEY: &str = "rack-test-key";
pub const SECRET_KEY: &str = "rack-test-secret";

/// A test S3 server (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Server {
    /// Atomic conditional writes: the default.
    Ministack,
    /// Conditional writes checked without a lock: races may have two winners.
    Moto,
}

impl S3Server {
    pub fn name(self) -> &'static str {
        match self {
            S3Server::Ministack => "ministack",
            S3Server::Moto => "moto",
        }
    }

    /// Whether racing conditional writes on this server always have exactly one winner, so that
    /// a test may assert the outcome of a race.
    pub fn atomic(self) -> bool {
        self == S3Server::Ministack
    }

    /// The variable naming a running server of this kind.
    pub fn env_var(self) -> &'static str {
        match self {
            S3Server::Ministack => "RACK_S3_ENDPOINT",
            S3Server::Moto => "RACK_S3_MOTO_ENDPOINT",
        }
    }

    fn start_script(self) -> &'static str {
        match self {
            S3Server::Ministack => "tools/ministack/start",
            S3Server::Moto => "tools/moto/start",
        }
    }

    /// This server's endpoint for this test process, or `None` (after a loud message) when there
    /// is none; with `RACK_REQUIRE_S3=1` a missing server panics instead.
    pub fn endpoint(self) -> Option<String> {
        static MINISTACK: OnceLock<Option<String>> = OnceLock::new();
        static MOTO: OnceLock<Option<String>> = OnceLock::new();
        let cell = match self {
            S3Server::Ministack => &MINISTACK,
            S3Server::Moto => &MOTO,
        };
        let found = cell
            .get_or_init(|| {
                std::env::var(self.env_var())
                    .ok()
                    .filter(|e| !e.is_empty())
                    .or_else(|| self.start())
            })
            .clone();
        if found.is_none() {
            if std::env::var("RACK_REQUIRE_S3").is_ok_and(|v| v == "1") {
                panic!(
                    "RACK_REQUIRE_S3=1 but no {} S3 server: set {} or run {}",
                    self.name(),
                    self.env_var(),
                    self.start_script()
                );
            }
            eprintln!(
                "\n*** SKIPPING the s3 variant on {}: no server (run {} once, or set {}) ***\n",
                self.name(),
                self.start_script(),
                self.env_var()
            );
        }
        found
    }

    /// The servers present (each missing one after its message; see [`S3Server::endpoint`]).
    pub fn all() -> Vec<S3Server> {
        [S3Server::Ministack, S3Server::Moto]
            .into_iter()
            .filter(|s| s.endpoint().is_some())
            .collect()
    }

    /// Start this server from its venv on a free port; `None` without the venv.
    fn start(self) -> Option<String> {
        let root = repo_root();
        let port = free_port();
        let (venv, program, args, env): (PathBuf, &str, Vec<String>, Vec<(&str, String)>) = match self {
            // ministack reads its port and address from the environment; TMPDIR keeps its pid
            // file (removed below) out of /tmp; LOG_LEVEL=WARNING: no line per request.
            S3Server::Ministack => {
                let venv = root.join("target/ministack-venv");
                let env = vec![
                    ("GATEWAY_PORT", port.to_string()),
                    ("BIND_HOST", "127.0.0.1".into()),
                    ("TMPDIR", venv.display().to_string()),
                    ("LOG_LEVEL", "WARNING".into()),
                ];
                (venv, "ministack", vec![], env)
            }
            S3Server::Moto => (
                root.join("target/moto-venv"),
                "moto_server",
                vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()],
                vec![],
            ),
        };
        let bin = venv.join("bin").join(program);
        if !bin.is_file() {
            return None;
        }
        let endpoint = spawn_for_life(self.name(), &bin, &args, &env, port)?;
        if self == S3Server::Ministack {
            let _ = std::fs::remove_file(venv.join(format!("ministack-{port}.pid")));
        }
        Some(endpoint)
    }
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

/// Start `bin` listening on `port`; it gets SIGKILL when the thread that spawned it ends, and
/// that thread lives as long as the test process. The endpoint once it answers.
fn spawn_for_life(
    name: &str,
    bin: &Path,
    args: &[String],
    env: &[(&str, String)],
    port: u16,
) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::thread::spawn(move || {
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
    panic!("{name} did not answer on {endpoint} within 60 s");
}

/// The endpoint of the default test S3 server (ministack, atomic conditional writes) for this
/// test process, or `None` (after a loud message) when there is none.
pub fn endpoint() -> Option<String> {
    S3Server::Ministack.endpoint()
}

/// A fresh, empty bucket on a test S3 server.
pub struct Bucket {
    pub endpoint: String,
    pub name: String,
}

impl Bucket {
    /// A bucket on the default server (ministack); `None` when there is none (see [`endpoint`]).
    pub fn new() -> Option<Bucket> {
        Bucket::on(S3Server::Ministack)
    }

    /// A bucket on `server`; `None` when that server is missing (see [`S3Server::endpoint`]).
    pub fn on(server: S3Server) -> Option<Bucket> {
        static N: AtomicU32 = AtomicU32::new(0);
        let endpoint = server.endpoint()?;
        let name = format!(
            "rack-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        // Both servers take unsigned requests: a path-style PUT creates the bucket.
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
