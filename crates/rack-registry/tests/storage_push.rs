//! `rack-registry storage push|pull` against a real S3 server (moto, see `common/s3.rs`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::s3::Bucket;

/// Every regular file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &child, out);
            } else {
                out.insert(child, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

#[test]
fn push_then_pull_gives_identical_files_and_a_second_push_uploads_nothing() {
    let Some(bucket) = Bucket::new() else { return };
    let fixtures = common::fixtures_root();
    let work = tempfile::tempdir().unwrap();
    let files = tree(&fixtures);
    assert!(files.len() > 20, "{}", files.len());
    let dir = fixtures.display().to_string();

    let dry = bucket.storage_cli(work.path(), &["push", "--dry-run", &dir]);
    assert!(
        dry.contains(&format!("would upload {}, unchanged 0", files.len())),
        "{dry}"
    );
    let first = bucket.storage_cli(work.path(), &["push", &dir]);
    assert!(
        first.contains(&format!("uploaded {}, unchanged 0", files.len())),
        "{first}"
    );
    let second = bucket.storage_cli(work.path(), &["push", &dir]);
    assert!(
        second.contains(&format!("uploaded 0, unchanged {}", files.len())),
        "{second}"
    );

    let back = work.path().join("backup");
    let pulled = bucket.storage_cli(work.path(), &["pull", &back.display().to_string()]);
    assert!(
        pulled.contains(&format!("downloaded {}", files.len())),
        "{pulled}"
    );
    assert_eq!(
        tree(&back),
        files,
        "pull gives back the pushed files byte for byte"
    );
    let again = bucket.storage_cli(work.path(), &["pull", &back.display().to_string()]);
    assert!(
        again.contains(&format!("downloaded 0, unchanged {}", files.len())),
        "{again}"
    );
}

#[test]
fn push_skips_working_state_and_uploads_only_what_changed() {
    let Some(bucket) = Bucket::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    for (rel, body) in [
        (".healthcheck", "ok"),
        ("@a/x/versions.json", "{\"versions\":[]}\n"),
        (".tmp/upload-1/journal.json", "{}"),
        (".webhooks/d1.json", "{}"),
        (".rack/leases/@a/x/1.0.0", "{}"),
    ] {
        std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(rel), body).unwrap();
    }
    let dir = root.display().to_string();
    let out = bucket.storage_cli(work.path(), &["push", &dir]);
    assert!(out.contains("uploaded 2, unchanged 0"), "{out}");
    std::fs::write(root.join("@a/x/versions.json"), "{\"versions\":[\"1.0.0\"]}\n").unwrap();
    let out = bucket.storage_cli(work.path(), &["push", &dir]);
    assert!(out.contains("uploaded 1, unchanged 1"), "{out}");
    let back = work.path().join("back");
    bucket.storage_cli(work.path(), &["pull", &back.display().to_string()]);
    let got = tree(&back);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        [".healthcheck", "@a/x/versions.json"]
    );
    assert_eq!(got["@a/x/versions.json"], b"{\"versions\":[\"1.0.0\"]}\n");
}

#[test]
fn auth_push_writes_a_valid_policy_and_refuses_a_rejected_one() {
    let Some(bucket) = Bucket::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.json");
    let text = format!(
        "{{\"@team\": [{{\"tokenSha256\": \"{}\", \"publish\": true}}]}}\n",
        common::sha256_hex("a-team-token")
    );
    std::fs::write(&good, &text).unwrap();
    let env = bucket.env();
    let (code, out) = common::run_cli(work.path(), &env, &["auth", "push", &good.display().to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("wrote .auth/auth.json"), "{out}");
    let back = work.path().join("back");
    bucket.storage_cli(work.path(), &["pull", &back.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(back.join(".auth/auth.json")).unwrap(),
        text
    );

    // The world's policy rejects two namespaces on purpose: refused, nothing written.
    let bad = common::world_dir().join("auth.json");
    let (code, out) = common::run_cli(work.path(), &env, &["auth", "push", &bad.display().to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("REJECTED") && out.contains("nothing written"),
        "{out}"
    );
    let again = work.path().join("again");
    bucket.storage_cli(work.path(), &["pull", &again.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(again.join(".auth/auth.json")).unwrap(),
        text
    );
}
