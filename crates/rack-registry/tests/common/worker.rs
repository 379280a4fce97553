//! The edge Worker as a test target: `crates/rack-worker/serve-local` (workerd through
//! miniflare, a simulated R2 bucket seeded from the world's storage directory).
//!
//! It needs Node and `npm ci` in `crates/rack-worker`; the Worker is built by serve-local when
//! `crates/rack-worker/build/` is missing (minutes: `.ci/run` builds it first). Tests that need
//! it skip with a loud message when Node or miniflare is missing, unless `RACK_REQUIRE_WORKER=1`
//! (CI), which makes them fail instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{repo_root, Server, StartFailure};

pub fn crate_dir() -> PathBuf {
    repo_root().join("crates/rack-worker")
}

/// Whether serve-local can run here; `false` after a loud message (or a panic under
/// `RACK_REQUIRE_WORKER=1`).
pub fn available() -> bool {
    let miniflare = crate_dir().join("node_modules/miniflare");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = node && miniflare.is_dir();
    if !ok {
        if std::env::var("RACK_REQUIRE_WORKER").is_ok_and(|v| v == "1") {
            panic!("RACK_REQUIRE_WORKER=1 but node or crates/rack-worker/node_modules is missing (npm ci)");
        }
        eprintln!(
            "\n*** SKIPPING the worker tests: node or crates/rack-worker/node_modules (npm ci) missing ***\n"
        );
    }
    ok
}

/// serve-local in `cwd` on loopback, ephemeral port, with `env` (the server's variables).
pub fn try_start(cwd: &Path, env: &[(String, String)]) -> Result<Server, StartFailure> {
    let mut cmd = Command::new(crate_dir().join("serve-local"));
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A first build of the Worker takes minutes on a small machine; seeding takes seconds.
    let built = crate_dir().join("build/index.js").is_file();
    let startup = Duration::from_secs(if built { 120 } else { 1800 });
    Server::spawn(cmd, startup, true)
}

pub fn start(cwd: &Path, env: &[(String, String)]) -> Server {
    match try_start(cwd, env) {
        Ok(s) => s,
        Err(f) => panic!("serve-local failed to start (code {:?}):\n{}", f.code, f.output),
    }
}
