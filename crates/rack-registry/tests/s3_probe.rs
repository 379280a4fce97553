//! The conditional-write probe (SPEC §11.1) against a store that ignores conditional writes: the
//! test-only S3 front (`common/faultproxy.rs`) strips `If-None-Match`/`If-Match` before
//! forwarding to moto.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use common::s3::Bucket;
use faultproxy::{Fault, FaultProxy, Rule};

const PUBLISH: &str = "company-publish-token";

#[test]
fn a_store_ignoring_conditional_writes_is_refused_unless_single_writer() {
    let Some(bucket) = Bucket::new() else { return };
    let proxy = FaultProxy::start(&bucket.endpoint);
    proxy.inject(Rule::new("", "", Fault::StripConditions));
    let careless = proxy.bucket(&bucket);
    let world = common::World::new();
    let (code, out) = common::run_cli(world.path(), &careless.env(), &["serve"]);
    assert_eq!(code, Some(2), "a configuration error:\n{out}");
    assert!(
        out.contains("does not honour conditional writes (If-None-Match was ignored)")
            && out.contains("STORAGE_SINGLE_WRITER=true"),
        "{out}"
    );

    let mut env = world.env_on_bucket(&careless);
    env.push(("STORAGE_SINGLE_WRITER".into(), "true".into()));
    let server = common::Server::start(world.path(), &env);
    assert!(
        server.output().contains("only ONE replica may write"),
        "{}",
        server.output()
    );
    // Publishing stays correct in this one process: the emulation refuses the second create.
    let m = pkg::manifest(
        "@company",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let first = pkg::package(&m, &[("templates/a.txt", b"first\n")]);
    let reply = pkg::Upload::new(first.clone()).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = pkg::Upload::new(first).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 409, "{}", reply.text);

    // The version is in the bucket, and the probe removed its scratch keys both times.
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
        use rack_registry::storage::Storage;
        let manifest = s3
            .head("@company/build/widget/1.0.0/registry.json")
            .await
            .unwrap();
        assert!(manifest.is_some());
        // Nothing of the probe (nor a lease) is left: only the version's integrity record.
        let left = s3.list(".rack/", false, None, 10).await.unwrap();
        let keys: Vec<&str> = left.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [".rack/integrity/@company/build/widget/1.0.0.json"],
            "{left:?}"
        );
    });
}

/// Two unusable variants of `bucket`: a bucket name that does not exist on its endpoint, and
/// its name on an endpoint where nothing listens.
fn unusable(bucket: &Bucket) -> (Bucket, Bucket) {
    let missing = Bucket {
        endpoint: bucket.endpoint.clone(),
        name: format!("{}-missing", bucket.name),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = Bucket {
        endpoint: format!("http://127.0.0.1:{port}"),
        name: bucket.name.clone(),
    };
    (missing, unreachable)
}

/// A bucket that cannot be used is a configuration error (SPEC §10): exit code 2, and a message
/// naming the bucket and the endpoint.
#[test]
fn an_unusable_bucket_exits_with_code_2_naming_bucket_and_endpoint() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let (missing, unreachable) = unusable(&bucket);
    for (what, b) in [
        ("missing bucket", &missing),
        ("unreachable endpoint", &unreachable),
    ] {
        let (code, out) = common::run_cli(world.path(), &b.env(), &["serve"]);
        assert_eq!(code, Some(2), "{what}:\n{out}");
        assert!(
            out.contains(&format!("bucket {}", b.name)) && out.contains(&b.endpoint),
            "{what}: the message names bucket and endpoint:\n{out}"
        );
        assert!(
            !out.contains(common::s3::SECRET_KEY),
            "{what}: secret in output:\n{out}"
        );
    }
}

/// The storage commands treat an unusable bucket as `serve` does (SPEC §10): exit code 2 and a
/// message on stderr naming the bucket and the endpoint; `check --repair` (whose writes rely on
/// compare-and-swap) also runs the conditional-write probe.
#[test]
fn storage_commands_on_an_unusable_bucket_exit_with_code_2() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let (missing, unreachable) = unusable(&bucket);
    let root = world.storage().display().to_string();
    let pulled = world.path().join("pulled").display().to_string();
    let run = |b: &Bucket, args: &[&str]| {
        let out = common::command(world.path(), &b.env(), args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (what, b) in [
        ("missing bucket", &missing),
        ("unreachable endpoint", &unreachable),
    ] {
        for args in [
            &["storage", "check"][..],
            &["storage", "check", "--repair"],
            &["storage", "push", &root],
            &["storage", "push", &root, "--dry-run"],
            &["storage", "pull", &pulled],
        ] {
            let (code, err) = run(b, args);
            assert_eq!(code, Some(2), "{what} {args:?}:\n{err}");
            let command = format!("rack-registry {} {}:", args[0], args[1]);
            assert!(
                err.contains(&command)
                    && err.contains(&format!("bucket {}", b.name))
                    && err.contains(&b.endpoint),
                "{what} {args:?}: the message names command, bucket and endpoint:\n{err}"
            );
            assert!(
                !err.contains(common::s3::SECRET_KEY),
                "{what}: secret in output:\n{err}"
            );
        }
    }
    assert!(!world.path().join("pulled").exists(), "nothing pulled");

    // A store that ignores conditional writes: `check` reads and works, `check --repair` is
    // refused like `serve` (unless STORAGE_SINGLE_WRITER=true).
    let proxy = FaultProxy::start(&bucket.endpoint);
    proxy.inject(Rule::new("", "", Fault::StripConditions));
    let careless = proxy.bucket(&bucket);
    let (code, err) = run(&careless, &["storage", "check"]);
    // It reads and reports (the fixtures' versions have no integrity record yet: exit 1).
    assert!(matches!(code, Some(0 | 1)), "{err}");
    let (code, err) = run(&careless, &["storage", "check", "--repair"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("rack-registry storage check:")
            && err.contains("does not honour conditional writes")
            && err.contains("STORAGE_SINGLE_WRITER=true"),
        "{err}"
    );
    let mut env = careless.env();
    env.push(("STORAGE_SINGLE_WRITER".into(), "true".into()));
    let out = common::command(world.path(), &env, &["storage", "check", "--repair"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
