//! Test harness: starts the real `rack-registry` binary on a real socket.
//!
//! Every integration test talks HTTP to a server process started here, against a storage root
//! built from the shared fixtures plus the conformance world overlay (`conformance/world/`).
#![allow(dead_code)]

pub mod s3;
pub mod worker;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Admin token of the conformance world (see `conformance/world/world.json`).
pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The shared fixture storage root: `$RACK_FIXTURES` if set, else `../shared/fixtures/rack-storage`
/// next to the repository. Nothing else is tried: a fallback to some machine's path would run
/// the suite against fixtures nobody chose.
pub fn fixtures_root() -> PathBuf {
    locate_fixtures(std::env::var_os("RACK_FIXTURES"), &repo_root()).unwrap_or_else(|e| panic!("{e}"))
}

/// [`fixtures_root`] without the environment: `rack_fixtures` is the value of `RACK_FIXTURES`.
pub fn locate_fixtures(rack_fixtures: Option<std::ffi::OsString>, repo: &Path) -> Result<PathBuf, String> {
    let (path, origin) = match rack_fixtures {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "RACK_FIXTURES"),
        _ => (
            repo.join("../shared/fixtures/rack-storage"),
            "../shared/fixtures/rack-storage next to the repository",
        ),
    };
    match path.canonicalize() {
        Ok(p) if p.join(".healthcheck").is_file() => Ok(p),
        _ => Err(format!(
            "shared fixtures not found at {} (from {origin}): put the shared directory next to \
             the repository as ../shared, or set RACK_FIXTURES to its fixtures/rack-storage \
             directory (the one holding .healthcheck)",
            path.display()
        )),
    }
}

pub fn world_dir() -> PathBuf {
    repo_root().join("conformance/world")
}

/// Recursively copy `from` into `to` (files are made writable: fixtures are read-only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest).unwrap();
            let mut perms = std::fs::metadata(&dest).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&dest, perms).unwrap();
        }
    }
}

/// A fresh temporary directory holding `storage/` (fixtures + world overlay) and
/// `config/auth.json` (the world's policy).
pub struct World {
    pub dir: tempfile::TempDir,
    /// The world's bucket when the tests run on S3 (`RACK_TEST_TARGET=s3`, see [`s3`]).
    pub(crate) bucket: std::sync::OnceLock<s3::Bucket>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixtures_root(), &dir.path().join("storage"));
        copy_tree(&world_dir().join("storage"), &dir.path().join("storage"));
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::copy(world_dir().join("auth.json"), dir.path().join("config/auth.json")).unwrap();
        World {
            dir,
            bucket: Default::default(),
        }
    }

    /// An empty directory (no storage, no config): for first-run and config tests.
    pub fn empty() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            bucket: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    pub fn auth_path(&self) -> PathBuf {
        self.dir.path().join("config/auth.json")
    }

    /// [`World::env`] plus `extra` (later entries win).
    pub fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Environment for a server on this world: ephemeral port on loopback, JSON logs. With
    /// `RACK_TEST_TARGET=s3` the storage is the world's bucket, brought up to date with the
    /// world's storage directory by `storage push` at every call (so at every server start).
    pub fn env(&self) -> Vec<(String, String)> {
        if s3::test_target() == s3::Target::S3 && self.storage().is_dir() {
            let bucket = self
                .bucket
                .get_or_init(|| s3::Bucket::new().expect("RACK_TEST_TARGET=s3 needs an S3 server"));
            return self.env_on_bucket(bucket);
        }
        self.local_env()
    }

    /// [`World::env`] on the local storage directory, whatever the test target.
    pub fn local_env(&self) -> Vec<(String, String)> {
        vec![
            ("STORAGE_ROOT".into(), self.storage().display().to_string()),
            ("AUTH_CONFIG_PATH".into(), self.auth_path().display().to_string()),
            ("ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ]
    }
}

/// The base URL in the server's `listening on http://...` log line, if `line` is that line.
pub fn listening_url(line: &str) -> Option<String> {
    let i = line.find("listening on http://")?;
    Some(
        line[i + "listening on ".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect(),
    )
}

/// A running server process; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    output: Arc<Mutex<String>>,
    /// Stop with SIGTERM on drop (serve-local: miniflare then stops its workerd child).
    graceful: bool,
}

/// The server exited (or never said it was listening): its exit status and output.
#[derive(Debug)]
pub struct StartFailure {
    pub code: Option<i32>,
    pub output: String,
}

/// A fresh world and a server on it.
pub fn start() -> (World, Server) {
    start_with(&[])
}

/// A fresh world and a server on it with `extra` environment on top of [`World::env`].
pub fn start_with(extra: &[(&str, &str)]) -> (World, Server) {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(extra));
    (world, server)
}

/// The binary with the harness defaults (loopback, ephemeral port, JSON logs, no rate limit,
/// nothing else from the environment) plus `env`.
pub fn command(cwd: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rack-registry"));
    cmd.current_dir(cwd)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("RATE_LIMIT_MAX", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    /// Start `rack-registry serve` in `cwd` with `env` (on top of loopback/ephemeral defaults).
    pub fn start(cwd: &Path, env: &[(String, String)]) -> Server {
        match Server::try_start(cwd, env) {
            Ok(s) => s,
            Err(f) => panic!("server failed to start (code {:?}):\n{}", f.code, f.output),
        }
    }

    pub fn world(world: &World) -> Server {
        Server::start(world.path(), &world.env())
    }

    pub fn try_start(cwd: &Path, env: &[(String, String)]) -> Result<Server, StartFailure> {
        Server::try_start_tuned(cwd, env, |_| {})
    }

    /// [`Server::start`] with the command adjusted first (for example to run it as another
    /// user: the disk-fault tests need a server that file modes apply to).
    pub fn start_tuned(cwd: &Path, env: &[(String, String)], tune: impl FnOnce(&mut Command)) -> Server {
        match Server::try_start_tuned(cwd, env, tune) {
            Ok(s) => s,
            Err(f) => panic!("server failed to start (code {:?}):\n{}", f.code, f.output),
        }
    }

    pub fn try_start_tuned(
        cwd: &Path,
        env: &[(String, String)],
        tune: impl FnOnce(&mut Command),
    ) -> Result<Server, StartFailure> {
        let mut cmd = command(cwd, env, &["serve"]);
        tune(&mut cmd);
        Server::spawn(cmd, Duration::from_secs(20), false)
    }

    /// Run `cmd` until it prints its `listening on http://...` line (at most `startup`).
    /// `graceful`: stop it with SIGTERM rather than SIGKILL when dropped.
    pub fn spawn(mut cmd: Command, startup: Duration, graceful: bool) -> Result<Server, StartFailure> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rack-registry");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    output.lock().unwrap().push_str(&line);
                    output.lock().unwrap().push('\n');
                    if let Some(url) = listening_url(&line) {
                        let _ = tx.send(url);
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + startup;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(base) => {
                    return Ok(Server {
                        child,
                        base,
                        output,
                        graceful,
                    })
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(StartFailure {
                            code: status.code(),
                            output: output.lock().unwrap().clone(),
                        });
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(StartFailure {
                            code: None,
                            output: output.lock().unwrap().clone(),
                        });
                    }
                }
            }
        }
    }

    /// The server's process id (for RSS checks and SIGKILL crash tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the process (a crash: no cleanup runs) and wait for it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Everything the process printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) {
            unsafe_kill(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a non-serving subcommand (or `serve` expected to fail) to completion, with a timeout.
pub fn run_cli(cwd: &Path, env: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut child = command(cwd, env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rack-registry");
    // Catches a hang, not slowness: `storage check --repair` against a bucket took 12.6 s on a
    // loaded 2-CPU machine (it probes conditional writes).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
            return (status.code(), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rack-registry {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocking HTTP client that never follows redirects.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Lowercase hex SHA-256 (how `tokenSha256` entries and `ADMIN_TOKEN_SHA256` spell a token).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Every non-blank string `token` of an `auth.json` text, trimmed, except those an operator also
/// wrote into a `mark` (the world has the mark "trimmed to company-padded-token"; marks are
/// printed and logged by design).
pub fn auth_json_tokens(text: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let entries: Vec<&serde_json::Value> = v
        .as_object()
        .unwrap()
        .values()
        .flat_map(|e| match e {
            serde_json::Value::Array(a) => a.iter().collect(),
            other => vec![other],
        })
        .collect();
    let field = |name: &'static str| {
        entries
            .iter()
            .filter_map(move |e| e.get(name).and_then(serde_json::Value::as_str))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let marks: Vec<&str> = field("mark").collect();
    field("token")
        .filter(|t| !marks.iter().any(|m| m.contains(t)))
        .map(str::to_owned)
        .collect()
}

/// The tokens of the conformance world's `auth.json` (see [`auth_json_tokens`]).
pub fn world_tokens() -> Vec<String> {
    auth_json_tokens(&std::fs::read_to_string(world_dir().join("auth.json")).unwrap())
}
