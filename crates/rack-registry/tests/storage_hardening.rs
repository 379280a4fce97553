//! Storage hardening (issue 11, items 6 to 9): hostile path lengths, a storage root that
//! disappears while the server runs, symlinks in the tree, an unreadable health marker.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::os::unix::fs::symlink;

use common::{start, Server, World, ADMIN_TOKEN};
use pkg::Upload;
use serde_json::{json, Value};

/// A GET with the admin token (which reads every namespace).
fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    pkg::get(&server.base, path, Some(ADMIN_TOKEN))
}

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = get(server, path);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------------------------
// Item 6: names too long for the filesystem
// ---------------------------------------------------------------------------------------------

#[test]
fn overlong_names_are_not_found_and_never_logged_whole() {
    let (_world, server) = start();
    // A 300-byte segment (over NAME_MAX) and a 5,000-byte key (over PATH_MAX), each a string
    // that appears nowhere else.
    let segment = "seg300".repeat(50);
    let deep = "k5000xyz/".repeat(556);
    let paths = [
        format!("/registries/@rack/build/rollup/1.0.0/files/{segment}.txt"),
        format!("/registries/@rack/build/rollup/1.0.0/files/{deep}end.txt"),
        format!("/registries/@rack/{segment}"),
        format!("/registries/@rack/{segment}/versions"),
        format!("/registries/@rack/build/{segment}/1.0.0"),
        format!("/presets/{}", "preset-".repeat(50).trim_end_matches('-')),
    ];
    for path in &paths {
        let (status, body) = get_json(&server, path);
        assert!(
            status == 404 || (status == 400 && body["code"] == "INVALID_PATH"),
            "{}...: {status} {body}",
            &path[..60]
        );
    }
    let output = server.output();
    for long in [segment.as_str(), &deep[..2000]] {
        assert!(
            !output.lines().any(|l| l.contains(long)),
            "a log line carries the whole client string:\n{}",
            &output[..output.len().min(2000)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 7: the storage root removed while running
// ---------------------------------------------------------------------------------------------

fn upload(server: &Server, version: &str) -> pkg::Reply {
    Upload::new(pkg::simple("@company", "widget", version))
        .bearer(ADMIN_TOKEN)
        .send(&server.base)
}

#[test]
fn uploads_are_refused_while_the_root_is_gone_and_the_root_is_never_recreated() {
    let (world, server) = start();
    let root = world.storage();
    let away = world.path().join("storage.away");
    assert_eq!(upload(&server, "1.0.0").status, 201);
    assert!(root.join("@company/build/widget/1.0.0/registry.json").is_file());

    // Root moved away (as `rm -rf` would leave it: absent).
    std::fs::rename(&root, &away).unwrap();
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json()["code"], "SERVICE_UNAVAILABLE");
    assert!(!root.exists(), "the storage root was re-created");
    assert_eq!(get(&server, "/health").0, 503);

    // An empty directory in its place (no marker): still refused, and left empty.
    std::fs::create_dir(&root).unwrap();
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json()["code"], "SERVICE_UNAVAILABLE");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "written into an empty root"
    );

    // Restored: uploads work again, and what was published before is served.
    std::fs::remove_dir(&root).unwrap();
    std::fs::rename(&away, &root).unwrap();
    assert_eq!(get(&server, "/health").0, 200);
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    let (status, versions) = get_json(&server, "/registries/@company/build/widget/versions");
    assert_eq!(status, 200);
    assert_eq!(versions, json!({"versions": ["1.1.0", "1.0.0"]}));
}

#[test]
fn a_missing_marker_refuses_uploads_until_it_is_back() {
    let (world, server) = start();
    let marker = world.storage().join(".healthcheck");
    std::fs::remove_file(&marker).unwrap();
    let reply = upload(&server, "1.0.0");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json()["code"], "SERVICE_UNAVAILABLE");
    assert!(!world.storage().join("@company/build/widget").exists());
    std::fs::write(&marker, b"").unwrap();
    assert_eq!(upload(&server, "1.0.0").status, 201);
}

// ---------------------------------------------------------------------------------------------
// Item 8: symlinks in the storage tree
// ---------------------------------------------------------------------------------------------

const ROLLUP: &str = "@rack/build/rollup/1.0.0";

#[test]
fn a_symlink_loop_does_not_stall_the_namespace_walk() {
    let world = World::new();
    let server = Server::world(&world);
    let (status, before) = get_json(&server, "/namespaces/@rack/registries");
    assert_eq!(status, 200);
    // `@rack/build/loop -> ..` (the namespace itself), and a second one so that a walk that
    // followed them would branch at every level.
    let build = world.storage().join("@rack/build");
    symlink("..", build.join("loop")).unwrap();
    symlink("..", build.join("loop2")).unwrap();
    symlink(".", world.storage().join("@rack/self")).unwrap();
    let (status, after) = get_json(&server, "/namespaces/@rack/registries");
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before);
    // A file path through the loop is simply not found.
    let (status, _) = get(
        &server,
        &format!(
            "/registries/@rack/build/loop/{}/files/loop/loop/x.json",
            "build/rollup/1.0.0"
        ),
    );
    assert!(status == 404 || status == 400, "{status}");
}

#[test]
fn symlinks_out_of_the_root_are_not_followed() {
    let world = World::new();
    let outside = world.path().join("outside");
    std::fs::create_dir_all(outside.join("@rack/stolen/1.0.0")).unwrap();
    std::fs::write(outside.join("secret.txt"), b"top secret").unwrap();
    std::fs::write(
        outside.join("@rack/stolen/versions.json"),
        b"{\"versions\":[\"1.0.0\"]}\n",
    )
    .unwrap();
    let templates = world.storage().join(ROLLUP).join("templates");
    symlink("/etc/passwd", templates.join("evil.txt")).unwrap();
    symlink(outside.join("secret.txt"), templates.join("abs.txt")).unwrap();
    symlink("../../../../../../outside/secret.txt", templates.join("rel.txt")).unwrap();
    symlink(&outside, templates.join("dir")).unwrap();
    symlink(outside.join("@rack/stolen"), world.storage().join("@rack/stolen")).unwrap();
    // Inside the root, a relative symlink is followed (docs/decisions.md).
    symlink("package.json", templates.join("alias.json")).unwrap();
    let server = Server::world(&world);

    let file = |p: &str| format!("/registries/{ROLLUP}/files/templates/{p}");
    for p in ["evil.txt", "abs.txt", "rel.txt", "dir/secret.txt"] {
        let (status, body) = get(&server, &file(p));
        assert_eq!(status, 404, "{p}: {}", String::from_utf8_lossy(&body));
    }
    let (status, body) = get(&server, &file("alias.json"));
    assert_eq!(status, 200);
    assert_eq!(body, get(&server, &file("package.json")).1);

    // A registry directory symlinked from outside is neither listed nor served.
    let (status, list) = get_json(&server, "/namespaces/@rack/registries");
    assert_eq!(status, 200);
    assert!(
        !list["registries"].as_array().unwrap().contains(&json!("stolen")),
        "{list}"
    );
    assert_eq!(get(&server, "/registries/@rack/stolen/versions").0, 404);
}

// ---------------------------------------------------------------------------------------------
// Item 9: /health reads the marker
// ---------------------------------------------------------------------------------------------

#[test]
fn health_needs_a_readable_marker_file() {
    let world = World::new();
    let server = Server::world(&world);
    let marker = world.storage().join(".healthcheck");
    assert_eq!(get(&server, "/health").0, 200);

    // Conditions that fail for every user, root included.
    std::fs::remove_file(&marker).unwrap();
    std::fs::create_dir(&marker).unwrap();
    assert_eq!(get(&server, "/health").0, 503, "a directory is not the marker");
    std::fs::remove_dir(&marker).unwrap();
    symlink("nowhere", &marker).unwrap();
    assert_eq!(get(&server, "/health").0, 503, "dangling symlink");
    std::fs::remove_file(&marker).unwrap();
    symlink("/etc/hostname", &marker).unwrap();
    assert_eq!(get(&server, "/health").0, 503, "symlink out of the root");
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&marker, b"").unwrap();
    assert_eq!(get(&server, "/health").0, 200);
}

#[test]
fn health_is_an_error_when_the_marker_cannot_be_read() {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        // Root reads a mode-000 file; the conditions above cover what fails for root too.
        eprintln!("skipped: running as root");
        return;
    }
    let world = World::new();
    let server = Server::world(&world);
    let marker = world.storage().join(".healthcheck");
    assert_eq!(get(&server, "/health").0, 200);
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (status, body) = get_json(&server, "/health");
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["storage"]["status"], "error");
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(get(&server, "/health").0, 200);
}
