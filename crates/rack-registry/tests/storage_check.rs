//! `rack-registry storage check [--repair]` on disk and in a bucket (SPEC §11.2, §3).

mod common;

use std::path::Path;

use common::s3::{Bucket, Target};

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// The fixtures plus one of each violation (the fixtures themselves are clean).
fn broken_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    common::copy_tree(&common::fixtures_root(), &root);
    // Lists a version that has no registry.json.
    write(
        &root,
        "@chk/dangling/versions.json",
        "{\"versions\":[\"2.0.0\",\"1.0.0\"]}\n",
    );
    write(&root, "@chk/dangling/1.0.0/registry.json", "{}");
    // A stored version missing from versions.json.
    write(
        &root,
        "@chk/unlisted/versions.json",
        "{\"versions\":[\"1.0.0\"]}\n",
    );
    write(&root, "@chk/unlisted/1.0.0/registry.json", "{}");
    write(&root, "@chk/unlisted/1.1.0/registry.json", "{}");
    // A partial version (no registry.json), beside a good one.
    write(
        &root,
        "@chk/partial/versions.json",
        "{\"versions\":[\"1.0.0\"]}\n",
    );
    write(&root, "@chk/partial/1.0.0/registry.json", "{}");
    write(&root, "@chk/partial/9.0.0/templates/a.txt", "half");
    // A registry without versions.json.
    write(&root, "@chk/bare/3.0.0/registry.json", "{}");
    root
}

fn cli(world: &Path, env: &[(String, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut full = vec!["storage", "check"];
    full.extend_from_slice(args);
    common::run_cli(world, env, &full)
}

#[test]
fn check_reports_every_violation_and_repair_fixes_them_on_every_backend() {
    for target in Target::all() {
        let work = tempfile::tempdir().unwrap();
        let clean = work.path().join("clean");
        common::copy_tree(&common::fixtures_root(), &clean);
        let root = broken_root(work.path());
        let bucket = (target == Target::S3).then(|| Bucket::new().unwrap());
        let env_for = |dir: &Path| -> Vec<(String, String)> {
            match &bucket {
                None => vec![("STORAGE_ROOT".into(), dir.display().to_string())],
                Some(b) => {
                    b.storage_cli(work.path(), &["push", &dir.display().to_string()]);
                    b.env()
                }
            }
        };

        // The fixtures hold no integrity records (SPEC §11.2): each version is reported as
        // such, and --repair records its bytes.
        let clean_env = env_for(&clean);
        let (code, out) = cli(work.path(), &clean_env, &[]);
        assert_eq!(code, Some(1), "[{}]\n{out}", target.name());
        let missing = out
            .lines()
            .filter(|l| l.ends_with("has no integrity record"))
            .count();
        assert!(
            missing >= 10,
            "[{}] every fixture version lacks a record:\n{out}",
            target.name()
        );
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with('@') || l.starts_with(".rack"))
                .count(),
            missing,
            "{out}"
        );
        let (code, out) = cli(work.path(), &clean_env, &["--repair"]);
        assert_eq!(code, Some(0), "[{}]\n{out}", target.name());
        let (code, out) = cli(work.path(), &clean_env, &["--deep"]);
        assert_eq!(
            code,
            Some(0),
            "[{}] fixtures are clean once recorded:\n{out}",
            target.name()
        );
        assert!(out.contains(": clean"), "{out}");

        let env = env_for(&root);
        let (code, out) = cli(work.path(), &env, &[]);
        assert_eq!(code, Some(1), "[{}]\n{out}", target.name());
        for needle in [
            "@chk/dangling/versions.json: versions.json lists [\"2.0.0\", \"1.0.0\"], stored versions are [\"1.0.0\"]",
            "@chk/unlisted/versions.json: versions.json lists [\"1.0.0\"], stored versions are [\"1.1.0\", \"1.0.0\"]",
            "@chk/partial/9.0.0/: version directory without registry.json",
            "@chk/bare/versions.json: missing versions.json",
            ".rack/integrity/@chk/unlisted/1.1.0.json: @chk/unlisted@1.1.0 has no integrity record",
        ] {
            assert!(out.contains(needle), "[{}] {needle}:\n{out}", target.name());
        }

        let (code, out) = cli(work.path(), &env, &["--repair"]);
        assert_eq!(code, Some(0), "[{}]\n{out}", target.name());
        assert!(out.contains("0 left after repair"), "{out}");
        let (code, out) = cli(work.path(), &env, &[]);
        assert_eq!(code, Some(0), "[{}] clean after repair:\n{out}", target.name());

        // What the repair wrote.
        let stored = match &bucket {
            None => root.clone(),
            Some(b) => {
                let back = work.path().join("back");
                b.storage_cli(work.path(), &["pull", &back.display().to_string()]);
                back
            }
        };
        let versions = |reg: &str| {
            let text = std::fs::read_to_string(stored.join(reg).join("versions.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["versions"].clone()
        };
        assert_eq!(versions("@chk/dangling"), serde_json::json!(["1.0.0"]));
        assert_eq!(versions("@chk/unlisted"), serde_json::json!(["1.1.0", "1.0.0"]));
        assert_eq!(versions("@chk/bare"), serde_json::json!(["3.0.0"]));
        assert!(!stored.join("@chk/partial/9.0.0").exists());
        let record = stored.join(".rack/integrity/@chk/unlisted/1.1.0.json");
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
        assert_eq!(record["files"]["registry.json"]["size"], 2, "{record}");
    }
}

/// A file changed after publishing, in place: same size is found by `--deep`, another size by
/// the plain check; `--repair` never "fixes" it (the bytes clients pinned are unknown).
#[test]
fn files_that_differ_from_their_integrity_record_are_reported() {
    for target in Target::all() {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        write(&root, ".healthcheck", "");
        write(&root, "@tamper/a/versions.json", "{\"versions\":[\"1.0.0\"]}\n");
        write(&root, "@tamper/a/1.0.0/registry.json", "{}");
        write(&root, "@tamper/a/1.0.0/t/x.txt", "original");
        let bucket = (target == Target::S3).then(|| Bucket::new().unwrap());
        let sync = |root: &Path| -> Vec<(String, String)> {
            match &bucket {
                None => vec![("STORAGE_ROOT".into(), root.display().to_string())],
                Some(b) => {
                    b.storage_cli(work.path(), &["push", &root.display().to_string()]);
                    b.env()
                }
            }
        };
        let env = sync(&root);
        let (code, out) = cli(work.path(), &env, &["--repair"]);
        assert_eq!(code, Some(0), "[{}] records written:\n{out}", target.name());
        if let Some(b) = &bucket {
            // The record now lives in the bucket: bring it home so the next push keeps it.
            b.storage_cli(work.path(), &["pull", &root.display().to_string()]);
        }
        assert!(root.join(".rack/integrity/@tamper/a/1.0.0.json").is_file());

        write(&root, "@tamper/a/1.0.0/t/x.txt", "ORIGINAL");
        let env = sync(&root);
        let (code, out) = cli(work.path(), &env, &[]);
        assert_eq!(code, Some(0), "[{}] sizes agree:\n{out}", target.name());
        let (code, out) = cli(work.path(), &env, &["--deep"]);
        assert_eq!(code, Some(1), "[{}]\n{out}", target.name());
        assert!(
            out.contains("@tamper/a/1.0.0/t/x.txt: does not match its integrity record: bytes differ"),
            "{out}"
        );
        let (code, out) = cli(work.path(), &env, &["--deep", "--repair"]);
        assert_eq!(code, Some(1), "[{}] not repairable:\n{out}", target.name());

        write(&root, "@tamper/a/1.0.0/t/x.txt", "longer than before");
        write(&root, "@tamper/a/1.0.0/t/added.txt", "late");
        let env = sync(&root);
        let (code, out) = cli(work.path(), &env, &[]);
        assert_eq!(code, Some(1), "[{}]\n{out}", target.name());
        assert!(
            out.contains("t/x.txt: does not match its integrity record: 18 bytes, recorded 8"),
            "{out}"
        );
        assert!(
            out.contains("t/added.txt: does not match its integrity record: not in the record"),
            "{out}"
        );
    }
}

#[test]
fn on_a_bucket_check_finishes_dead_publishes_and_stale_indexes() {
    let Some(bucket) = Bucket::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    write(&root, ".healthcheck", "");
    write(&root, "@dead/a/versions.json", "{\"versions\":[\"1.0.0\"]}\n");
    write(&root, "@dead/a/1.0.0/registry.json", "{}");
    // Published but not listed, under an expired lease: a publisher killed before versions.json.
    write(&root, "@dead/a/2.0.0/registry.json", "{}");
    bucket.storage_cli(work.path(), &["push", &root.display().to_string()]);
    let s3 = rack_registry::storage::s3::S3Storage::new(&rack_registry::storage::s3::S3Options {
        endpoint: Some(bucket.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: String::new(),
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use rack_registry::storage::{PutMode, Storage};
        let lease = serde_json::json!({"owner": "dead", "uploadId": "u", "ttlMs": 0, "version": "2.0.0"});
        s3.put(
            ".rack/leases/@dead/a/2.0.0",
            bytes::Bytes::from(lease.to_string()),
            PutMode::Create,
        )
        .await
        .unwrap();
        s3.put(
            "@dead/.registries.json",
            bytes::Bytes::from_static(b"{\"registries\":[\"gone\"]}\n"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    });
    let env = bucket.env();
    let (code, out) = cli(work.path(), &env, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(".rack/leases/@dead/a/2.0.0: expired publish lease"),
        "{out}"
    );
    assert!(
        out.contains("namespace index lists [\"gone\"], registries are [\"a\"]"),
        "{out}"
    );
    // The CLI has no webhook outbox: a dead publisher's *visible* version is left to a
    // server's sweep, which announces it; everything else is repaired.
    let (code, out) = cli(work.path(), &env, &["--repair"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 left after repair"), "{out}");
    let heard = rt.block_on(async {
        let heard = Heard::default();
        let t = rack_registry::storage::publish::Timing::default();
        let n = rack_registry::storage::publish::sweep_all(&s3, t, &heard)
            .await
            .unwrap();
        assert_eq!(n, 1);
        heard
    });
    assert_eq!(
        *heard.0.lock().unwrap(),
        ["@dead/a@2.0.0"],
        "the sweep announced the version"
    );
    let (code, out) = cli(work.path(), &env, &[]);
    assert_eq!(code, Some(0), "{out}");
    rt.block_on(async {
        use rack_registry::storage::Storage;
        let v = s3.get("@dead/a/versions.json").await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
        assert_eq!(v["versions"], serde_json::json!(["2.0.0", "1.0.0"]));
        let idx = s3.get("@dead/.registries.json").await.unwrap().unwrap();
        assert_eq!(&idx.body[..], b"{\"registries\":[\"a\"]}\n");
        assert!(s3
            .list(".rack/leases/", false, None, 10)
            .await
            .unwrap()
            .objects
            .is_empty());
    });
}

/// Records what a sweep announces.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl rack_registry::storage::publish::Announce for Heard {
    async fn listed(&self, registry: &str, version: &str, _manifest: &[u8]) {
        self.0.lock().unwrap().push(format!("{registry}@{version}"));
    }
}
