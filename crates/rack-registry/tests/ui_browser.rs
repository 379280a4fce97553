//! The web pages under `/ui` in a real browser (issue 16): Debian's Chromium, driven by Node's
//! `playwright-core` (`tests/browser/ui.mjs`), against the real server started by the harness.
//!
//! The browser walks the catalogue down to a file, signs in with a token and sees the gated
//! namespace, opens (signed in) an HTML template whose script would steal a gated file through
//! `/ui` with the viewer's cookie and sees it never run (the files' sandbox CSP, issue 25 item
//! 3), signs out with the POST form, finds stored scripts inert and sees the
//! Content-Security-Policy refuse an injected inline script (with the violation in the console).
//!
//! Needs `chromium` (or `RACK_CHROMIUM`), `node` and `npm ci` run in `tests/browser/`. Without
//! them the test says so and passes, unless `RACK_REQUIRE_BROWSER=1` (set by `.ci/run`), which
//! makes it fail. The ignored test `screenshots` writes `docs/ui/*.png` (`tools/ui-screenshots`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, Server, World};
use serde_json::json;

/// What it takes to drive a browser, found on this machine.
struct Browser {
    chromium: PathBuf,
    scripts: PathBuf,
}

/// The browser, or why there is none.
fn find_browser() -> Result<Browser, String> {
    let chromium = std::env::var_os("RACK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium chromium-driver, or set RACK_CHROMIUM)",
            chromium.display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err("node is not on PATH".into()),
    }
    let scripts = repo_root().join("crates/rack-registry/tests/browser");
    if !scripts.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            scripts.display()
        ));
    }
    Ok(Browser { chromium, scripts })
}

/// The browser, or `None` after saying why the test is skipped; with `RACK_REQUIRE_BROWSER=1`
/// a missing browser is a failure.
fn browser_or_skip() -> Option<Browser> {
    match find_browser() {
        Ok(b) => Some(b),
        Err(why) if std::env::var("RACK_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("a browser is required (RACK_REQUIRE_BROWSER=1): {why}")
        }
        Err(why) => {
            // Straight to stderr: libtest would hide an `eprintln!` of a passing test.
            let _ = writeln!(std::io::stderr(), "skipping the browser test: {why}");
            None
        }
    }
}

/// Run `ui.mjs` in `mode` against `server`; panics with its output unless it succeeds.
fn run(browser: &Browser, server: &Server, mode: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("node")
        .arg("ui.mjs")
        .current_dir(&browser.scripts)
        .env("RACK_UI_BASE", &server.base)
        .env("RACK_CHROMIUM", &browser.chromium)
        .env("RACK_UI_MODE", mode)
        .envs(env.iter().copied())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ui.mjs {mode} failed ({}):\n{stdout}\n{}\n--- server ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.output()
    );
    stdout
}

/// A one-version registry written straight into the storage directory.
fn write_registry(
    storage: &Path,
    ns: &str,
    name: &str,
    manifest: &serde_json::Value,
    files: &[(&str, &str)],
) {
    let dir = storage.join(ns).join(name);
    std::fs::create_dir_all(dir.join("1.0.0")).unwrap();
    std::fs::write(
        dir.join("versions.json"),
        json!({ "versions": ["1.0.0"] }).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("1.0.0/registry.json"), manifest.to_string()).unwrap();
    for (path, content) in files {
        std::fs::write(dir.join("1.0.0").join(path), content).unwrap();
    }
}

#[test]
fn a_browser_walks_the_catalogue_signs_in_and_out_and_runs_no_stored_script() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let world = World::new();
    // Stored content that would run if it were not escaped: every `__pwned` assignment is a
    // script the page must not execute.
    let manifest = json!({
        "name": "evil", "namespace": "@anon", "version": "1.0.0", "type": "registry:lib", "priority": 0,
        "description": "<script>window.__pwned = 1</script>",
        "tags": ["\"><img src=x onerror=\"window.__pwned = 2\">", "<script>window.__pwned = 3</script>"],
        "files": [
            {"target": "\"><img src=x onerror=window.__pwned=5>.js", "type": "registry:lib", "path": "page.html"},
            {"target": "logo.svg", "type": "registry:asset", "path": "logo.svg"},
            {"target": "steal.html", "type": "registry:asset", "path": "steal.html"}
        ]
    });
    let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned = 6"><script>window.__pwned = 7</script></svg>"#;
    let html = "<html><script>window.__pwned = 4</script><img src=x onerror=\"window.__pwned = 8\"></html>";
    // Opened at its raw URL by a signed-in viewer, this template would read a gated file
    // through /ui with the viewer's cookie and leak it: a title the browser test reads, and a
    // request it watches for. The file's sandbox CSP (SPEC §4) must keep it from running.
    let steal = r#"<!doctype html><html><head><title>template</title></head><body><script>
document.title = "ran";
fetch("/ui/@company/ui/button/2.0.0/files/templates/button.js")
  .then((r) => r.text())
  .then((t) => { document.title = "stolen: " + t; fetch("/registries/@anon/leak/" + encodeURIComponent(t.slice(0, 40))); });
</script></body></html>"#;
    write_registry(
        &world.storage(),
        "@anon",
        "evil",
        &manifest,
        &[("page.html", html), ("logo.svg", svg), ("steal.html", steal)],
    );
    let server = Server::world(&world);
    let out = run(
        &browser,
        &server,
        "e2e",
        &[("RACK_UI_TOKEN", "company-read-token")],
    );
    assert!(out.contains("browser e2e ok"), "{out}");
}

/// `tools/ui-screenshots`: the home, a registry page and a file view, light and dark, into
/// `docs/ui/` (or `RACK_UI_OUT`).
#[test]
#[ignore = "writes docs/ui/*.png; run by tools/ui-screenshots"]
fn screenshots() {
    let browser = find_browser().unwrap_or_else(|why| panic!("screenshots need a browser: {why}"));
    let out_dir = std::env::var_os("RACK_UI_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("docs/ui"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let world = World::new();
    let server = Server::world(&world);
    let out_dir = out_dir.canonicalize().unwrap();
    let printed = run(
        &browser,
        &server,
        "screenshots",
        &[("RACK_UI_OUT", out_dir.to_str().unwrap())],
    );
    for name in ["home", "registry", "file"] {
        for scheme in ["light", "dark"] {
            let png = out_dir.join(format!("{name}-{scheme}.png"));
            let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{}", png.display());
        }
    }
    println!("{printed}");
}
