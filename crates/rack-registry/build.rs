//! Two things at build time:
//!
//! - converts `docs/openapi.yaml` (the API's contract, written by hand as YAML) into the JSON
//!   that `/openapi.json` serves: the binary carries no YAML parser, and a document that is not
//!   valid YAML, or not OpenAPI 3.1, fails the build instead of a request;
//! - names the build for `rack-registry --version`: `RACK_BUILD_COMMIT` (the commit, from the
//!   variable of that name if set, else from git when this crate is in a git checkout of this
//!   repository, else `unknown`, as from a source tarball) and `RACK_BUILD_TARGET` (the target
//!   triple, e.g. `x86_64-unknown-linux-musl`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    build_info(&manifest_dir);
    let source = manifest_dir.join("../../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text =
        std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let doc: serde_json::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", source.display()));
    let version = doc.get("openapi").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        version.starts_with("3.1."),
        "{}: expected `openapi: 3.1.x`, found {version:?}",
        source.display()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("openapi.json");
    std::fs::write(
        &out,
        serde_json::to_string(&doc).expect("a JSON value serializes"),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// `RACK_BUILD_COMMIT` and `RACK_BUILD_TARGET` for `--version`.
fn build_info(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=RACK_BUILD_COMMIT");
    // A full commit id given in the variable is cut to 12 digits, as git's is below.
    let commit = std::env::var("RACK_BUILD_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .map(|c| {
            if c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                c.chars().take(12).collect()
            } else {
                c
            }
        })
        .or_else(|| git_commit(manifest_dir))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RACK_BUILD_COMMIT={commit}");
    let target = std::env::var("TARGET").expect("set by cargo");
    println!("cargo:rustc-env=RACK_BUILD_TARGET={target}");
}

/// The 12-digit commit of the checkout this crate is in, or `None`: no git, or the crate is
/// not in a checkout of its own repository (a tarball unpacked inside some other repository
/// must not take that repository's commit). Builds again when `HEAD` moves.
fn git_commit(manifest_dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?)
        .canonicalize()
        .ok()?;
    if manifest_dir.join("../..").canonicalize().ok()? != top {
        return None;
    }
    // `HEAD`, `packed-refs` and the branch HEAD names (in a worktree, HEAD is the worktree's
    // own). A packed branch has no file of its own: its directory then, where the next commit
    // writes it. Nothing else: another branch moving rebuilds nothing.
    let path_of =
        |name: &str| git(&["rev-parse", "--path-format=absolute", "--git-path", name]).map(PathBuf::from);
    let mut watched: Vec<PathBuf> = ["HEAD", "packed-refs"].into_iter().filter_map(path_of).collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| path_of(&b)) {
        match branch.parent() {
            Some(dir) if !branch.exists() => watched.push(dir.to_owned()),
            _ => watched.push(branch),
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    Some(commit.chars().take(12).collect())
}
