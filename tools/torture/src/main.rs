//! Crash torture (issue 15): runs the real `rack-registry` binary, uploads a few hundred packages
//! to it over HTTP multipart (various sizes, concurrently, same and different versions of a few
//! registries) while a supervisor SIGKILLs and restarts it at random moments, then checks what
//! SPEC §3, §5.2, §7 and §11.2 promise:
//!
//! - `rack-registry storage check` is clean (after the restart and, on a bucket, the lease sweep
//!   that finishes what a dead publisher left);
//! - every upload answered 201 is readable with its exact bytes (manifest and every file) and
//!   listed in `versions.json`; no version got two 201s;
//! - a version that is visible without a 201 (its answer was lost in a kill) holds exactly the
//!   bytes of one of the uploads of that version;
//! - every 201's webhooks (`uploaded`, `version.created`) reached the receiver run here, signed;
//!   no webhook names a version that does not exist;
//! - on disk, staging (`.tmp/`) is empty once the server is up again.
//!
//! The plan (which registry, which version, which bytes) and the kill times come from one seeded
//! RNG: the seed is printed, `--seed` replays the same plan (thread timing still varies).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const ADMIN_TOKEN: &str = "torture-admin-token-0123456789abcdef";
const WEBHOOK_SECRET: &str = "torture-webhook-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Local,
    S3,
}

#[derive(Debug, Parser)]
#[command(about = "Upload under SIGKILL/restart, then check every storage, read and webhook invariant")]
struct Args {
    /// Storage backend of the server under test
    #[arg(long, value_enum, default_value = "local")]
    backend: Backend,
    /// Stop starting uploads after this many seconds (default: 60 unless --uploads is given)
    #[arg(long)]
    duration: Option<u64>,
    /// Stop after this many upload attempts
    #[arg(long)]
    uploads: Option<u64>,
    /// RNG seed (default: random; always printed)
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent uploaders
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Longest uptime between two kills, in milliseconds
    #[arg(long, default_value_t = 4000)]
    max_uptime_ms: u64,
    /// The server binary [default: rack-registry next to this executable]
    #[arg(long)]
    server: Option<PathBuf>,
    /// S3 endpoint for --backend s3: a server with atomic conditional writes (ministack:
    /// tools/ministack/start; CI sets RACK_S3_ENDPOINT to it)
    #[arg(long, env = "RACK_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// PUBLISH_LEASE_SECONDS of the server on a bucket (the final check waits that long)
    #[arg(long, default_value_t = 10)]
    lease_seconds: u64,
    /// Keep the working directory (storage, server logs) even when the run is clean
    #[arg(long)]
    keep: bool,
    /// On a bucket: a second replica that is never killed takes half the uploads, and one chaos
    /// event in four is a stall past the lease (SIGSTOP for PUBLISH_LEASE_SECONDS and 1-3 s,
    /// then SIGCONT) instead of a kill: the stalled publisher must never write again once the
    /// other replica may have taken its lease over (SPEC §11.2)
    #[arg(long)]
    stalls: bool,
}

/// One planned upload.
#[derive(Debug, Clone)]
struct Attempt {
    idx: u64,
    /// `@ns/<segs>/<version>` (the 201 body's `path`).
    path: String,
    manifest: Vec<u8>,
    /// Template files: declared path, bytes.
    files: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Conflict,
    /// The answer was lost (connection cut by a kill): published or not.
    Unknown,
    Unexpected,
}

/// The registries uploaded to: namespace, name, `type`, explicit `path`, resulting location.
const REGISTRIES: [(&str, &str, &str, Option<&str>, &str); 4] = [
    (
        "@torture",
        "alpha",
        "registry:build",
        Some("alpha"),
        "@torture/alpha",
    ),
    (
        "@torture",
        "beta",
        "registry:runtime",
        None,
        "@torture/runtimes/beta",
    ),
    (
        "@torture",
        "gamma",
        "registry:feature",
        Some("kits/gamma"),
        "@torture/kits/gamma",
    ),
    (
        "@crash",
        "delta",
        "registry:quality",
        None,
        "@crash/quality/delta",
    ),
];

/// Chooses the attempts: deterministic in the seed and the attempt number.
struct Planner {
    seed: u64,
    rng: StdRng,
    next: u64,
    /// Versions planned so far, per registry.
    versions: Vec<Vec<String>>,
}

impl Planner {
    fn new(seed: u64) -> Planner {
        Planner {
            seed,
            rng: StdRng::seed_from_u64(seed),
            next: 0,
            versions: vec![Vec::new(); REGISTRIES.len()],
        }
    }

    fn next(&mut self) -> Attempt {
        let idx = self.next;
        self.next += 1;
        let r = self.rng.random_range(0..REGISTRIES.len());
        let known = &self.versions[r];
        // A quarter of the uploads race for a version already planned (same-version races:
        // exactly one 201); the rest are new versions of the same few registries.
        let version = if !known.is_empty() && self.rng.random_bool(0.25) {
            known[self.rng.random_range(0..known.len())].clone()
        } else {
            let n = known.len();
            let v = match self.rng.random_range(0..10) {
                0 => format!("{}.{}.0-rc.{}", 1 + n / 20, n % 20, n),
                1 => format!("{}.{}.0+build.{}", 1 + n / 20, n % 20, n),
                _ => format!("{}.{}.{}", 1 + n / 20, n % 20, n % 3),
            };
            self.versions[r].push(v.clone());
            v
        };
        let mut content = StdRng::seed_from_u64(self.seed ^ idx.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        build_attempt(idx, self.seed, r, &version, &mut content)
    }
}

fn build_attempt(idx: u64, seed: u64, r: usize, version: &str, rng: &mut StdRng) -> Attempt {
    let (ns, name, ty, path, location) = REGISTRIES[r];
    let mut files = Vec::new();
    let mut declared = Vec::new();
    for i in 0..rng.random_range(1..=4) {
        let (size, binary) = match rng.random_range(0..100) {
            0..70 => (rng.random_range(1..4096), false),
            70..95 => (rng.random_range(4096..262_144), rng.random_bool(0.5)),
            _ => (rng.random_range(262_144..3 * 1024 * 1024), true),
        };
        let (file, bytes) = if binary {
            let mut b = vec![0u8; size];
            rng.fill(&mut b[..]);
            (format!("templates/blob{i}.bin"), b)
        } else {
            let b = (0..size)
                .map(|_| b"abcdefghijklmnopqrstuvwxyz {};\n"[rng.random_range(0..31)])
                .collect();
            (format!("templates/f{i}.ts"), b)
        };
        declared
            .push(serde_json::json!({"path": file, "target": format!("src/{i}"), "type": "registry:lib"}));
        files.push((file, bytes));
    }
    let mut manifest = serde_json::json!({
        "name": name,
        "namespace": ns,
        "version": version,
        "type": ty,
        "priority": 1,
        "description": format!("torture seed {seed} attempt {idx}"),
        "files": declared,
    });
    if let Some(p) = path {
        manifest["path"] = p.into();
    }
    let mut manifest = serde_json::to_vec_pretty(&manifest).expect("json");
    manifest.push(b'\n');
    Attempt {
        idx,
        path: format!("{location}/{version}"),
        manifest,
        files,
    }
}

/// The package: a gzip'd tar with `registry.json` at the root.
fn package(a: &Attempt) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body).expect("tar in memory");
    };
    add("registry.json", &a.manifest);
    for (p, b) in &a.files {
        add(p, b);
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("gzip in memory")
}

/// Findings that break a promise.
#[derive(Default)]
struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn add(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.0.lock().unwrap().push(what);
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The server process under test: same environment, same port at every (re)start.
#[derive(Clone)]
struct Server {
    bin: PathBuf,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut cmd = self.command(&[]);
        cmd.stdout(log.try_clone().expect("log fd")).stderr(log);
        // The server must not outlive the tool (a killed tool would leave it holding the port).
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(Into::into)
            });
        }
        cmd.spawn().expect("start the server")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.cwd)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("LOG_FORMAT", "json")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    fn listening(&self) -> bool {
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
            .is_ok()
    }

    /// Start and wait until it accepts connections (startup repairs included).
    fn start_ready(&self) -> Child {
        let mut child = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.listening() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited at startup ({status}); log: {}", self.log.display());
            }
            assert!(Instant::now() < deadline, "server not listening after 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// `rack-registry storage check`: exit status and output.
    fn storage_check(&self) -> (bool, String) {
        let out = self
            .command(&["storage", "check", "--deep"])
            .output()
            .expect("run storage check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// SIGKILL and restart the server at random moments until `stop`, or (with `stall`: the lease)
/// sometimes pause it past that lease; returns the number of kills and of stalls.
fn chaos(
    server: &Server,
    seed: u64,
    max_uptime_ms: u64,
    stall: Option<Duration>,
    stop: &AtomicBool,
) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0x5eed);
    let (mut kills, mut stalls) = (0, 0);
    // The first start completes, so the run exercises publishes rather than first-run setup.
    let mut child = Some(server.start_ready());
    while !stop.load(Ordering::Relaxed) {
        let mut c = match child.take() {
            Some(c) => c,
            None => server.spawn(),
        };
        // One kill in five lands at a random moment of startup (during the repair of what the
        // last kill left); the others after the server has been up for a random while.
        if rng.random_bool(0.2) {
            sleep_unless(Duration::from_millis(rng.random_range(0..400)), stop);
        } else {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !server.listening() && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "server exited by itself ({status}); log: {}",
                        server.log.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sleep_unless(
                Duration::from_millis(rng.random_range(50..max_uptime_ms.max(51))),
                stop,
            );
        }
        if stop.load(Ordering::Relaxed) {
            child = Some(c);
            break;
        }
        if let Ok(Some(status)) = c.try_wait() {
            panic!(
                "server exited by itself ({status}); log: {}",
                server.log.display()
            );
        }
        if let Some(lease) = stall.filter(|_| rng.random_bool(0.25)) {
            // A paused VM: the lease expires on the bucket's clock while the process is stopped.
            let pid = rustix::process::Pid::from_raw(c.id() as i32).expect("pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
            std::thread::sleep(lease + Duration::from_millis(rng.random_range(1000..3000)));
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
            stalls += 1;
            child = Some(c);
            continue;
        }
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
        kills += 1;
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    (kills, stalls)
}

fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

/// One upload over HTTP multipart, the way `rack-registry publish` sends it; retried while the
/// server is down (a refused connection never reached it).
/// `stalls`: a 500 is an outcome, not a violation (a storage call in flight when the process was
/// stopped times out when it resumes: a storage failure, answered 500 like any other).
async fn upload(client: &reqwest::Client, base: &str, a: &Attempt, v: &Violations, stalls: bool) -> Outcome {
    let pkg = package(a);
    let checksum = hex::encode(Sha256::digest(&pkg));
    let mut refused = 0;
    loop {
        // The server is down for at most a few seconds between a kill and the restart.
        if refused > 1200 {
            v.add(format!("attempt {}: server unreachable for 2 minutes", a.idx));
            return Outcome::Unexpected;
        }
        let part = reqwest::multipart::Part::bytes(pkg.clone())
            .file_name("package.tgz")
            .mime_str("application/gzip")
            .expect("mime");
        let form = reqwest::multipart::Form::new()
            .part("package", part)
            .text("checksum", checksum.clone());
        let res = client
            .post(format!("{base}/registries"))
            .bearer_auth(ADMIN_TOKEN)
            .multipart(form)
            .send()
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => return Outcome::Unknown,
        };
        let status = res.status().as_u16();
        let Ok(body) = res.bytes().await else {
            return Outcome::Unknown;
        };
        return match status {
            201 => {
                let path = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|j| j["path"].as_str().map(str::to_owned));
                if path.as_deref() != Some(a.path.as_str()) {
                    v.add(format!(
                        "attempt {}: 201 body path {path:?}, expected {}",
                        a.idx, a.path
                    ));
                }
                Outcome::Created
            }
            409 => Outcome::Conflict,
            // A publish fenced off (its lease may have been lost in a stall), or stored but not
            // yet listed: published or not, the checks judge what is visible.
            503 if body.windows(24).any(|w| w == b"Publishing was interrupt")
                || body.windows(15).any(|w| w == b"may be stored b") =>
            {
                Outcome::Unknown
            }
            500 if stalls => Outcome::Unknown,
            // MAX_CONCURRENT_UPLOADS reached: the documented answer is to retry.
            503 if body.windows(28).any(|w| w == b"Too many uploads in progress") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            _ => {
                v.add(format!(
                    "attempt {} ({}): unexpected {status} {}",
                    a.idx,
                    a.path,
                    String::from_utf8_lossy(&body)
                ));
                Outcome::Unexpected
            }
        };
    }
}

/// A webhook delivery as received.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    event: String,
    path: String,
    signed: bool,
}

async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("any key");
                mac.update(&body);
                let signed = header("x-webhook-signature")
                    == format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                store.lock().unwrap().push(Received {
                    delivery: header("x-webhook-delivery"),
                    event: json["event"].as_str().unwrap_or_default().to_owned(),
                    path: json["path"].as_str().unwrap_or_default().to_owned(),
                    signed,
                });
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET`, retried on transport errors (the server was just restarted): status and body.
async fn get(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    for _ in 0..50 {
        if let Ok(r) = client.get(url).send().await {
            let status = r.status().as_u16();
            if let Ok(b) = r.bytes().await {
                return (status, b.to_vec());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (0, Vec::new())
}

/// `@ns/<segs>/<version>` split into registry and version.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').expect("a version path")
}

/// Every file and the manifest of `a` are served with its exact bytes.
async fn holds(client: &reqwest::Client, base: &str, a: &Attempt) -> Result<(), String> {
    let (status, body) = get(client, &format!("{base}/registries/{}", a.path)).await;
    if status != 200 || body != a.manifest {
        return Err(format!(
            "manifest: {status}, {} bytes (sent {})",
            body.len(),
            a.manifest.len()
        ));
    }
    for (p, bytes) in &a.files {
        let (status, body) = get(client, &format!("{base}/registries/{}/files/{p}", a.path)).await;
        if status != 200 || body != *bytes {
            return Err(format!(
                "file {p}: {status}, {} bytes (sent {})",
                body.len(),
                bytes.len()
            ));
        }
    }
    Ok(())
}

async fn listed(client: &reqwest::Client, base: &str, path: &str) -> bool {
    let (registry, version) = split(path);
    let (status, body) = get(client, &format!("{base}/registries/{registry}/versions")).await;
    status == 200
        && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|j| {
            j["versions"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(version)))
        })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let duration = match (args.duration, args.uploads) {
        (None, None) => Some(60),
        (d, _) => d,
    };
    println!(
        "torture: backend={:?} seed={seed} duration={duration:?} uploads={:?} (replay: --seed {seed})",
        args.backend, args.uploads
    );
    let bin = args.server.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("rack-registry")
    });
    if !bin.is_file() {
        eprintln!(
            "torture: no server binary at {} (cargo build -p rack-registry, or --server)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let work = tempfile::Builder::new()
        .prefix("torture-")
        .tempdir()
        .expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let code = runtime.block_on(run(&args, seed, duration, &bin, work.path()));
    if code != ExitCode::SUCCESS || args.keep {
        let kept = work.keep();
        println!("torture: working directory kept: {}", kept.display());
    }
    code
}

async fn run(args: &Args, seed: u64, duration: Option<u64>, bin: &Path, work: &Path) -> ExitCode {
    let (hook_port, received) = receiver().await;
    std::fs::write(work.join("auth.json"), r#"{"@torture": [], "@crash": []}"#).expect("auth.json");
    std::fs::write(
        work.join("webhooks.json"),
        serde_json::json!({"webhooks": [{
            "url": format!("http://127.0.0.1:{hook_port}/hook"),
            "secret": WEBHOOK_SECRET,
            "events": ["uploaded", "version.created"],
            "enabled": true,
        }]})
        .to_string(),
    )
    .expect("webhooks.json");
    let storage = work.join("storage");
    let mut env: Vec<(String, String)> = vec![
        ("STORAGE_ROOT".into(), storage.display().to_string()),
        (
            "AUTH_CONFIG_PATH".into(),
            work.join("auth.json").display().to_string(),
        ),
        (
            "WEBHOOK_CONFIG_PATH".into(),
            work.join("webhooks.json").display().to_string(),
        ),
        ("ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ("RATE_LIMIT_MAX".into(), "0".into()),
        // Retries of deliveries cut by a kill come quickly (the check waits for them).
        ("WEBHOOK_BACKOFF_BASE_MS".into(), "200".into()),
        ("WEBHOOK_MAX_ATTEMPTS".into(), "10".into()),
    ];
    if args.backend == Backend::S3 {
        let Some(endpoint) = args.s3_endpoint.clone() else {
            eprintln!(
                "torture: --backend s3 needs --s3-endpoint or RACK_S3_ENDPOINT (tools/ministack/start)"
            );
            return ExitCode::from(2);
        };
        let bucket = format!("torture-{}-{:08x}", std::process::id(), rand::random::<u32>());
        // The test servers (ministack, moto) take unsigned requests: a path-style PUT creates
        // the bucket.
        match reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            other => {
                eprintln!("torture: cannot create bucket {bucket} at {endpoint}: {other:?}");
                return ExitCode::from(2);
            }
        }
        println!("torture: bucket {bucket} at {endpoint}");
        env.extend(
            [
                ("STORAGE_BACKEND", "s3"),
                ("S3_ENDPOINT", endpoint.as_str()),
                ("S3_BUCKET", bucket.as_str()),
                ("S3_REGION", "us-east-1"),
                ("S3_ACCESS_KEY_ID", "torture"),
                ("S3_SECRET_ACCESS_KEY", "torture"),
                ("PUBLISH_LEASE_SECONDS", &args.lease_seconds.to_string()),
                // A lease must leave room for renewals and one call (SPEC §11.2).
                ("STORAGE_TIMEOUT_SECONDS", "2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
    }
    let server = Arc::new(Server {
        bin: bin.to_owned(),
        cwd: work.to_owned(),
        env,
        port: free_port(),
        log: work.join("server.log"),
    });
    let base = format!("http://127.0.0.1:{}", server.port);
    let violations = Arc::new(Violations::default());
    let stalls = args.stalls && args.backend == Backend::S3;

    // With stalls, a steady second replica on the same bucket: it takes leases over from the
    // stalled one. It lives on a thread of its own until the uploads are done.
    // Its own STORAGE_ROOT (upload staging): every replica clears its staging at startup
    // (docs/object-storage.md, replicas).
    let mut steady_env = server.env.clone();
    for (k, v) in steady_env.iter_mut() {
        if k == "STORAGE_ROOT" {
            *v = work.join("steady-storage").display().to_string();
        }
    }
    let steady = Arc::new(Server {
        port: free_port(),
        log: work.join("steady.log"),
        env: steady_env,
        ..Server::clone(&server)
    });
    let (steady_stop, steady_stopped) = std::sync::mpsc::channel::<()>();
    let steady_thread = stalls.then(|| {
        let s = steady.clone();
        std::thread::spawn(move || {
            let mut child = s.start_ready();
            let _ = steady_stopped.recv();
            let _ = child.kill();
            let _ = child.wait();
        })
    });
    let bases: Vec<String> = if stalls {
        vec![base.clone(), format!("http://127.0.0.1:{}", steady.port)]
    } else {
        vec![base.clone()]
    };

    // Chaos: kills (and stalls) and restarts on its own thread, until the uploads are done.
    let stop = Arc::new(AtomicBool::new(false));
    let chaos_thread = {
        let (server, stop) = (server.clone(), stop.clone());
        let max_uptime = args.max_uptime_ms;
        let stall = stalls.then(|| Duration::from_secs(args.lease_seconds));
        std::thread::spawn(move || chaos(&server, seed, max_uptime, stall, &stop))
    };
    while !server.listening() || (stalls && !steady.listening()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Uploads.
    // A new connection per request, like the CLI: a pooled one may be dead after a kill.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let planner = Arc::new(Mutex::new(Planner::new(seed)));
    let results: Arc<Mutex<Vec<(Attempt, Outcome)>>> = Arc::default();
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs(d));
    let limit = args.uploads.unwrap_or(u64::MAX);
    let started = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (planner, results, client, bases, v, started) = (
            planner.clone(),
            results.clone(),
            client.clone(),
            bases.clone(),
            violations.clone(),
            started.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || started.fetch_add(1, Ordering::SeqCst) >= limit
                {
                    return;
                }
                let attempt = planner.lock().unwrap().next();
                let base = &bases[attempt.idx as usize % bases.len()];
                let outcome = upload(&client, base, &attempt, &v, stalls).await;
                results.lock().unwrap().push((attempt, outcome));
            }
        }));
    }
    for w in workers {
        w.await.expect("uploader");
    }
    stop.store(true, Ordering::Relaxed);
    let (kills, stall_count) = chaos_thread.join().expect("chaos thread");
    let _ = steady_stop.send(());
    if let Some(t) = steady_thread {
        t.join().expect("steady replica");
    }

    // A bucket: the leases the last kills left must expire before the sweep may finish them.
    if args.backend == Backend::S3 {
        tokio::time::sleep(Duration::from_secs(args.lease_seconds + 1)).await;
    }
    // The last start, on a thread of its own that lives until the checks are done: the
    // server's parent-death signal fires when the thread that spawned it ends.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let s = server.clone();
        std::thread::spawn(move || {
            let mut child = s.start_ready();
            let _ = up_tx.send(());
            let _ = done_rx.recv();
            let _ = child.kill();
            let _ = child.wait();
        })
    };
    up_rx.await.expect("the final start");
    // Every uploader has ended: the results are final.
    let results = std::mem::take(&mut *results.lock().unwrap());
    let verdict = verify(args, &server, &client, &base, &results, &received, &violations).await;
    let _ = done_tx.send(());
    let _ = holder.join();

    let count = |o: Outcome| results.iter().filter(|(_, x)| *x == o).count();
    println!(
        "torture: backend={:?} seed={seed} kills={kills} stalls={stall_count} uploads={} created={} conflicts={} unknown={} unexpected={} visible_without_201={} webhooks={} violations={}",
        args.backend,
        results.len(),
        count(Outcome::Created),
        count(Outcome::Conflict),
        count(Outcome::Unknown),
        count(Outcome::Unexpected),
        verdict.orphans,
        verdict.webhooks,
        violations.count()
    );
    let _ = std::io::stdout().flush();
    if violations.count() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Verdict {
    /// Versions visible whose upload never got its answer.
    orphans: usize,
    /// Webhook deliveries received.
    webhooks: usize,
}

async fn verify(
    args: &Args,
    server: &Arc<Server>,
    client: &reqwest::Client,
    base: &str,
    results: &[(Attempt, Outcome)],
    received: &Mutex<Vec<Received>>,
    v: &Violations,
) -> Verdict {
    // 1. Storage invariants. On disk the startup repair ran before the server listened; on a
    // bucket the sweep runs in the background right after startup: give it a few tries.
    let tries = if args.backend == Backend::S3 { 30 } else { 1 };
    let mut last = String::new();
    for i in 0..tries {
        let s = server.clone();
        let (clean, out) = tokio::task::spawn_blocking(move || s.storage_check())
            .await
            .expect("check");
        if clean {
            last.clear();
            break;
        }
        last = out;
        if i + 1 < tries {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !last.is_empty() {
        v.add(format!("storage check is not clean:\n{last}"));
    }
    if args.backend == Backend::Local {
        let tmp = server.cwd.join("storage/.tmp");
        let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        if left != 0 {
            v.add(format!("{} entries left in staging {}", left, tmp.display()));
        }
    }

    // 2. Reads: every 201 whole and listed; at most one 201 per version; a version visible
    // without a 201 is exactly one of its uploads.
    let mut by_path: BTreeMap<&str, Vec<&(Attempt, Outcome)>> = BTreeMap::new();
    for r in results {
        by_path.entry(r.0.path.as_str()).or_default().push(r);
    }
    let mut orphans = 0;
    for (path, tries) in &by_path {
        let created: Vec<_> = tries.iter().filter(|(_, o)| *o == Outcome::Created).collect();
        if created.len() > 1 {
            v.add(format!("{path}: {} uploads got 201", created.len()));
        }
        if let Some((a, _)) = created.first() {
            if let Err(e) = holds(client, base, a).await {
                v.add(format!("{path} (attempt {}, 201): {e}", a.idx));
            }
            if !listed(client, base, path).await {
                v.add(format!("{path} (attempt {}, 201): not in versions.json", a.idx));
            }
            continue;
        }
        let (status, body) = get(client, &format!("{base}/registries/{path}")).await;
        match status {
            404 => {}
            200 => {
                orphans += 1;
                match tries.iter().find(|(a, _)| a.manifest == body) {
                    Some((a, _)) => {
                        if let Err(e) = holds(client, base, a).await {
                            v.add(format!("{path} (attempt {}, answer lost): {e}", a.idx));
                        }
                        if !listed(client, base, path).await {
                            v.add(format!("{path} (answer lost): visible but not in versions.json"));
                        }
                    }
                    None => v.add(format!("{path}: visible manifest is none of its uploads")),
                }
            }
            s => v.add(format!("{path}: GET answered {s}")),
        }
    }

    // 3. Webhooks: both events of every 201 arrive (at least once), signed; none names a
    // version that is not there.
    let mut want: HashMap<(String, String), bool> = HashMap::new();
    for (a, o) in results {
        if *o == Outcome::Created {
            for e in ["uploaded", "version.created"] {
                want.insert((a.path.clone(), e.to_owned()), false);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = received.lock().unwrap().clone();
        for r in &got {
            if let Some(seen) = want.get_mut(&(r.path.clone(), r.event.clone())) {
                *seen = true;
            }
        }
        if want.values().all(|s| *s) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for ((path, event), seen) in &want {
        if !seen {
            v.add(format!("{path}: webhook {event} of a 201 never delivered"));
        }
    }
    let got = received.lock().unwrap().clone();
    let mut bad_paths = std::collections::BTreeSet::new();
    for r in &got {
        if !r.signed {
            v.add(format!(
                "webhook delivery {} ({} {}): bad signature",
                r.delivery, r.event, r.path
            ));
        }
        if !by_path.contains_key(r.path.as_str()) {
            bad_paths.insert(r.path.clone());
        }
    }
    for r in &got {
        if !bad_paths.contains(&r.path)
            && by_path[r.path.as_str()]
                .iter()
                .all(|(_, o)| *o != Outcome::Created)
        {
            let (status, _) = get(client, &format!("{base}/registries/{}", r.path)).await;
            if status != 200 {
                bad_paths.insert(r.path.clone());
            }
        }
    }
    for p in bad_paths {
        v.add(format!("webhook for {p}, which is not a published version"));
    }
    Verdict {
        orphans,
        webhooks: got.len(),
    }
}
