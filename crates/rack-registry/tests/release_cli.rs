//! What the release artefacts and the container image rely on in the binary itself:
//!
//! - `--version` names the crate version, the commit (git's, or `unknown` from a source
//!   tarball) and the target triple;
//! - `healthcheck [URL]` (the image's health check: no shell, no curl) exits 0 on a 200 from
//!   `/health`, 1 on anything else (a 503 of a storage without its marker, a 404, a refused
//!   connection, a server that never answers) within its timeout, and finds the server of its
//!   environment (`PORT`, `HOST`) without a URL.

mod common;

use std::time::{Duration, Instant};

#[test]
fn version_names_the_crate_version_commit_and_target() {
    let (code, out) = common::run_cli(&common::repo_root(), &[], &["--version"]);
    assert_eq!(code, Some(0), "{out}");
    let line = out.trim();
    let rest = line
        .strip_prefix(&format!("rack-registry {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, target) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", target "))
        .unwrap_or_else(|| panic!("{line}"));
    // What build.rs found (tests and binary share its output) ...
    assert_eq!(commit, env!("RACK_BUILD_COMMIT"), "{line}");
    // ... which, in a git checkout and unless RACK_BUILD_COMMIT named one, is HEAD's.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(common::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    match head {
        Some(head) if std::env::var_os("RACK_BUILD_COMMIT").is_none() => {
            assert_eq!(commit.len(), 12, "{line}");
            assert!(head.starts_with(commit), "{commit} is not HEAD {head}");
        }
        _ => assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{line}"
        ),
    }
    let arch = std::env::consts::ARCH;
    assert!(
        target.starts_with(&format!("{arch}-")) && target.contains("-linux"),
        "{target} is not this machine's {arch} Linux target"
    );
}

fn healthcheck(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, Duration) {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut all = vec!["healthcheck"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let (code, out) = common::run_cli(&common::repo_root(), &env, &all);
    (code, out, started.elapsed())
}

#[test]
fn healthcheck_exits_0_only_when_health_answers_200() {
    let (world, server) = common::start();
    let health = server.url("/health");
    let (code, out, _) = healthcheck(&[], &[&health]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("200"), "{out}");

    // No URL: the server of this environment (the harness sets HOST=127.0.0.1 and PORT=0; the
    // server's port is given here as its environment would give it).
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let (code, out, _) = healthcheck(&[("PORT", &port), ("HOST", "0.0.0.0")], &[]);
    assert_eq!(code, Some(0), "{out}");

    // Any other status is unhealthy: a 404, and the 503 of a storage without its marker.
    let (code, out, _) = healthcheck(&[], &[&server.url("/no-such-route")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("404"), "{out}");
    std::fs::remove_file(world.storage().join(".healthcheck")).unwrap();
    let (code, out, _) = healthcheck(&[], &[&health]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("503"), "{out}");

    // Nothing listening: refused at once.
    drop(server);
    let (code, out, took) = healthcheck(&[], &[&health]);
    assert_eq!(code, Some(1), "{out}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn healthcheck_gives_up_on_a_server_that_never_answers_within_its_timeout() {
    // Accepts connections (the backlog) and never reads or answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let (code, out, took) = healthcheck(&[], &["--timeout", "1", &url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unhealthy"), "{out}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    drop(listener);
}
