//! `/schemas/<file>` through storage and the hot cache (issue 12, item 2): byte for byte, ETag
//! and 304, and never stale after an operator edits a schema, from `<root>/schema` and from a
//! `SCHEMA_DIR` elsewhere.

mod common;

use std::path::Path;

use common::{Server, World};

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
