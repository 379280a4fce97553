//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`) and every input that
//! once crashed it (`fuzz/artifacts/<target>/`) through the target's body, on stable, so that
//! a fixed crash stays fixed without a fuzzer (see docs/RELIABILITY.md).

use std::path::{Path, PathBuf};

use rack_registry::fuzzing;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "artifacts"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(target)).ok())
        .flatten()
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs(target);
    // A corpus that went missing would make this test pass vacuously.
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in files {
        let data = std::fs::read(&file).expect("read a corpus file");
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target} fails on {}", file.display());
        }
    }
}

#[test]
fn route() {
    replay("route", fuzzing::route);
}

#[test]
fn auth_json() {
    replay("auth_json", fuzzing::auth_json);
}

#[test]
fn webhooks_json() {
    replay("webhooks_json", fuzzing::webhooks_json);
}

#[test]
fn registry_json() {
    replay("registry_json", fuzzing::registry_json);
}

#[test]
fn archive_gz() {
    replay("archive_gz", fuzzing::archive_gz);
}

#[test]
fn archive_tar() {
    replay("archive_tar", fuzzing::archive_tar);
}

#[test]
fn multipart() {
    replay("multipart", fuzzing::multipart);
}

#[test]
fn headers() {
    replay("headers", fuzzing::headers);
}
