//! `/schemas/<file>` through storage and the hot cache (issue 12, item 2): byte for byte, ETag
//! and 304, and never stale after an operator edits a schema, from `<root>/schema` and from a
//! `SCHEMA_DIR` elsewhere. And uploads validate against the registry-item schema that is
//! served, on disk and on a bucket (issue 25, item 8).

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::{Bucket, Target};
use common::{Server, World, ADMIN_TOKEN};
use pkg::Upload;
use rack_registry::storage::s3::{S3Options, S3Storage};
use rack_registry::storage::{PutMode, Storage};

struct Got {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

fn fetch(server: &Server, path: &str, if_none_match: Option<&str>) -> Got {
    let mut req = common::client().get(server.url(path));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let res = req.send().unwrap();
    Got {
        status: res.status().as_u16(),
        etag: res.headers().get("etag").map(|v| v.to_str().unwrap().to_owned()),
        body: res.bytes().unwrap().to_vec(),
    }
}

/// Serve, validate, edit in place (same length), edit again (new length): each edit shows on
/// the very next request, with a new ETag; the old tag no longer gives a 304.
fn edits_show_at_once(server: &Server, file: &Path, route: &str) {
    let original = std::fs::read(file).unwrap();
    let first = fetch(server, route, None);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, original);
    let tag = first.etag.expect("an ETag");
    assert_eq!(fetch(server, route, Some(&tag)).status, 304);
    // Served again from the cache: same bytes, same tag.
    let again = fetch(server, route, None);
    assert_eq!(
        (again.body, again.etag.as_deref()),
        (original.clone(), Some(tag.as_str()))
    );

    let same_len = format!("{{\"x\":\"{}\"}}", "y".repeat(original.len() - 8));
    assert_eq!(same_len.len(), original.len());
    std::fs::write(file, &same_len).unwrap();
    let edited = fetch(server, route, None);
    assert_eq!(edited.status, 200);
    assert_eq!(edited.body, same_len.as_bytes());
    let tag2 = edited.etag.expect("an ETag");
    assert_ne!(tag2, tag);
    assert_eq!(fetch(server, route, Some(&tag)).status, 200);
    assert_eq!(fetch(server, route, Some(&tag2)).status, 304);

    std::fs::write(file, b"{\"edited\": true}\n").unwrap();
    assert_eq!(fetch(server, route, None).body, b"{\"edited\": true}\n");
    std::fs::remove_file(file).unwrap();
    let gone = fetch(server, route, None);
    assert_eq!(gone.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&gone.body).unwrap();
    assert_eq!(body["message"], "Schema not found");
}

#[test]
fn schemas_from_the_storage_root_are_never_stale() {
    let world = World::new();
    let server = Server::world(&world);
    let file = world.storage().join("schema/rack.json");
    edits_show_at_once(&server, &file, "/schemas/rack.json");
    // The others are untouched.
    let item = fetch(&server, "/schemas/registry-item.json", None);
    assert_eq!(item.status, 200);
    assert_eq!(
        item.body,
        std::fs::read(world.storage().join("schema/registry-item.json")).unwrap()
    );
}

#[test]
fn schemas_from_a_separate_schema_dir_are_never_stale() {
    let world = World::new();
    let dir = world.path().join("my-schemas");
    let env = world.env_with(&[("SCHEMA_DIR", dir.to_str().unwrap())]);
    // Missing at startup: 404, then served once it exists.
    let server = Server::start(world.path(), &env);
    assert_eq!(fetch(&server, "/schemas/preset.json", None).status, 404);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("preset.json"), b"{\"title\": \"custom preset schema\"}").unwrap();
    let got = fetch(&server, "/schemas/preset.json", None);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"{\"title\": \"custom preset schema\"}");
    // Not the storage root's copy.
    assert_ne!(
        fetch(&server, "/schemas/preset.json", None).body,
        std::fs::read(world.storage().join("schema/preset.json")).unwrap()
    );
    edits_show_at_once(&server, &dir.join("preset.json"), "/schemas/preset.json");
}

/// Where the served registry-item schema lives on one target, and how a test changes it: the
/// storage directory's `schema/`, or the object `schema/registry-item.json` of the bucket
/// (written and deleted straight through S3, as `storage push` or an operator's tool would).
enum Served<'a> {
    Disk(&'a Path),
    Bucket(&'a Bucket),
}

const SCHEMA_KEY: &str = "schema/registry-item.json";

/// Run `f` on the bucket's storage, from a synchronous test.
fn on_bucket<T>(b: &Bucket, f: impl AsyncFnOnce(&S3Storage) -> T) -> T {
    let s3 = S3Storage::new(&S3Options {
        endpoint: Some(b.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: b.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: String::new(),
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f(&s3))
}

impl Served<'_> {
    fn put(&self, body: &[u8]) {
        match self {
            Served::Disk(storage) => std::fs::write(storage.join(SCHEMA_KEY), body).unwrap(),
            Served::Bucket(b) => {
                let body = bytes::Bytes::copy_from_slice(body);
                on_bucket(b, async |s3| s3.put(SCHEMA_KEY, body, PutMode::Overwrite).await).unwrap();
            }
        }
    }

    fn delete(&self) {
        match self {
            Served::Disk(storage) => std::fs::remove_file(storage.join(SCHEMA_KEY)).unwrap(),
            Served::Bucket(b) => {
                let deleted = on_bucket(b, async |s3| s3.delete_prefix(SCHEMA_KEY).await).unwrap();
                assert_eq!(deleted, 1);
            }
        }
    }
}

/// Poll `/schemas/registry-item.json` until it answers `status` with `body` (a bucket's
/// objects are revalidated within `STORAGE_REVALIDATE_MS`).
#[track_caller]
fn await_served(server: &Server, status: u16, body: Option<&[u8]>) {
    let start = Instant::now();
    loop {
        let got = fetch(server, "/schemas/registry-item.json", None);
        if got.status == status && body.is_none_or(|b| got.body == b) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/schemas/registry-item.json still answers {} {:?}",
            got.status,
            String::from_utf8_lossy(&got.body)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `@anon/build/item@version`, published by the admin; `description` present or not.
fn publish(server: &Server, version: &str, description: bool) -> pkg::Reply {
    let mut m = pkg::manifest("@anon", "item", version, "registry:build", &["templates/a.txt"]);
    if !description {
        m.as_object_mut().unwrap().remove("description");
    }
    Upload::new(pkg::package(&m, &[("templates/a.txt", b"hello\n")]))
        .bearer(ADMIN_TOKEN)
        .send(&server.base)
}

/// The schema an upload is validated against is the one `/schemas/registry-item.json` serves,
/// on every backend: an operator's schema that refuses `description` refuses such uploads as
/// soon as it is served (and only then), and with the served file gone the bundled schema
/// applies again. On a bucket the server used to validate against `SCHEMA_DIR` (a directory of
/// the server's machine) while serving the bucket's schema.
#[test]
fn uploads_validate_against_the_served_schema() {
    for target in Target::all() {
        let name = target.name();
        let world = World::new();
        let (server, bucket) = common::s3::serve_on(&world, target);
        let storage = world.storage();
        let served = match &bucket {
            Some(b) => Served::Bucket(b),
            None => Served::Disk(&storage),
        };
        let r = publish(&server, "1.0.0", true);
        assert_eq!(r.status, 201, "[{name}] {}", r.text);

        // The operator's schema: the bundled one, without `description`.
        let mut strict: serde_json::Value =
            serde_json::from_slice(&fetch(&server, "/schemas/registry-item.json", None).body).unwrap();
        assert_eq!(strict["additionalProperties"], false, "the schema is closed");
        assert!(strict["properties"]
            .as_object_mut()
            .unwrap()
            .remove("description")
            .is_some());
        let strict = serde_json::to_vec_pretty(&strict).unwrap();
        served.put(&strict);
        await_served(&server, 200, Some(&strict));
        let refused = publish(&server, "1.1.0", true);
        refused.assert_code(400, "SCHEMA_VALIDATION_FAILED");
        assert!(
            refused.message().contains("description"),
            "[{name}] {}",
            refused.text
        );
        let r = publish(&server, "1.1.0", false);
        assert_eq!(r.status, 201, "[{name}] {}", r.text);

        // No schema served: the bundled one validates, and accepts `description`.
        served.delete();
        await_served(&server, 404, None);
        let r = publish(&server, "1.2.0", true);
        assert_eq!(r.status, 201, "[{name}] {}", r.text);
    }
}
