//! Disk faults on the local backend (issue 15): a read-only storage directory, a full disk, a
//! version directory with mode 000, the storage root removed while the server runs. In each: a
//! clear error with the JSON body, no panic, no partial version visible, reads of what is
//! intact keep working, and the same server process recovers once the fault is gone.
//!
//! Tests run as root here, and root ignores file modes and may mount: the read-only directory is
//! a read-only bind mount (`EROFS`, as after a filesystem remounted read-only), the full disk a
//! small tmpfs, and the mode-000 test runs the server as an unprivileged user (uid 65534, the
//! usual `nobody`) on a world chowned to it, as a production server would run. Where mounting
//! is not permitted (not root, a container without `CAP_SYS_ADMIN`), the mount tests are
//! skipped with a loud message.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, World, ADMIN_TOKEN};
use serde_json::{json, Value};

const WIDGET: &str = "/registries/@company/build/widget";
const ROLLUP_FILE: &str = "/registries/@rack/build/rollup/1.0.0";

fn get(server: &Server, path: &str) -> pkg::Reply {
    pkg::send(pkg::client().get(server.url(path)).bearer_auth(ADMIN_TOKEN))
}

fn upload(server: &Server, version: &str) -> pkg::Reply {
    // Incompressible, so that it needs real room on disk (64 KiB).
    let noise = pkg::noise(64 * 1024, 7);
    let m = pkg::manifest(
        "@company",
        "widget",
        version,
        "registry:build",
        &["templates/a.txt", "templates/big.bin"],
    );
    pkg::Upload::new(pkg::package(
        &m,
        &[
            ("templates/a.txt", version.as_bytes()),
            ("templates/big.bin", &noise),
        ],
    ))
    .bearer(ADMIN_TOKEN)
    .send(&server.base)
}

fn versions(server: &Server) -> Value {
    let r = get(server, &format!("{WIDGET}/versions"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// A failed upload: a 5xx with exactly the JSON error body.
#[track_caller]
fn assert_clear_5xx(reply: &pkg::Reply, code: &str) {
    assert!(reply.status >= 500, "{} {}", reply.status, reply.text);
    reply.assert_code(reply.status, code);
}

#[track_caller]
fn assert_no_panic(server: &Server) {
    let out = server.output();
    assert!(!out.contains("panicked"), "the server panicked:\n{out}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A mount that is undone on drop (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    /// `mount <args> <at>`; `None` (after a loud message) where mounting is not permitted.
    fn new(args: &[&str], at: &Path) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("\n*** SKIPPED: `mount {args:?}` is not permitted here (needs root) ***\n");
        }
        ok.then(|| Mount(at.to_owned()))
    }

    fn remount(&self, opts: &str) {
        let s = Command::new("mount")
            .args(["-o", opts])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success(), "remount {opts}");
    }

    fn undo(self) {}
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_storage_directory_refuses_uploads_and_keeps_serving() {
    let world = World::new();
    let root = world.storage();
    let server = Server::start(world.path(), &world.local_env());
    assert_eq!(upload(&server, "1.0.0").status, 201);
    let rollup = get(&server, ROLLUP_FILE).text;

    let Some(mount) = Mount::new(&["--bind", &root.display().to_string()], &root) else {
        return;
    };
    mount.remount("remount,bind,ro");
    assert!(
        std::fs::write(root.join("probe"), b"").is_err(),
        "the mount is not read-only"
    );

    let reply = upload(&server, "1.1.0");
    assert_clear_5xx(&reply, "INTERNAL_SERVER_ERROR");
    // Reads go on; nothing of 1.1.0 is visible.
    assert_eq!(get(&server, ROLLUP_FILE).text, rollup);
    assert_eq!(versions(&server), json!({"versions": ["1.0.0"]}));
    assert_eq!(get(&server, &format!("{WIDGET}/1.1.0")).status, 404);
    assert_eq!(get(&server, "/health").status, 200);

    mount.undo();
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    pkg::assert_tmp_clean(&root);
    assert_no_panic(&server);
}

/// Fill the filesystem of `dir` to the last block, then free `leave` bytes.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

#[test]
fn a_full_disk_fails_uploads_cleanly_and_recovers() {
    let world = World::new();
    let disk = world.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let Some(_mount) = Mount::new(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &disk) else {
        return;
    };
    let root = disk.join("storage");
    common::copy_tree(&world.storage(), &root);
    let mut env = world.local_env();
    env.retain(|(k, _)| k != "STORAGE_ROOT");
    env.push(("STORAGE_ROOT".into(), root.display().to_string()));
    let server = Server::start(world.path(), &env);
    assert_eq!(upload(&server, "1.0.0").status, 201);
    let rollup = get(&server, ROLLUP_FILE).text;

    // Full to the last block, then nearly full (some writes of the upload succeed, one fails).
    for leave in [0, 24 * 1024] {
        let filler = fill(&disk, leave);
        let reply = upload(&server, "1.1.0");
        assert_clear_5xx(&reply, "INTERNAL_SERVER_ERROR");
        assert_eq!(get(&server, ROLLUP_FILE).text, rollup, "reads go on");
        assert_eq!(versions(&server), json!({"versions": ["1.0.0"]}));
        assert_eq!(get(&server, &format!("{WIDGET}/1.1.0")).status, 404);
        assert!(
            !root.join("@company/build/widget/1.1.0").exists(),
            "a partial version"
        );
        std::fs::remove_file(filler).unwrap();
        pkg::assert_tmp_clean(&root);
    }

    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    assert_no_panic(&server);
}

/// The unprivileged user the mode-000 test runs the server as (when the tests run as root).
const NOBODY: u32 = 65534;

#[test]
fn a_version_directory_with_mode_000_fails_alone() {
    let world = World::new();
    let server = if is_root() {
        let s = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(world.path())
            .status()
            .unwrap();
        assert!(s.success(), "chown the world");
        Server::start_tuned(world.path(), &world.local_env(), |cmd| {
            use std::os::unix::process::CommandExt;
            cmd.uid(NOBODY).gid(NOBODY);
        })
    } else {
        Server::start(world.path(), &world.local_env())
    };
    assert_eq!(upload(&server, "1.0.0").status, 201);
    assert_eq!(upload(&server, "1.1.0").status, 201);
    let locked = world.storage().join("@company/build/widget/1.0.0");
    let rollup = get(&server, ROLLUP_FILE).text;

    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    for path in [
        format!("{WIDGET}/1.0.0"),
        format!("{WIDGET}/1.0.0/files/templates/a.txt"),
    ] {
        let reply = get(&server, &path);
        assert_clear_5xx(&reply, "INTERNAL_SERVER_ERROR");
    }
    // Everything else is served: the other version, the registry, other registries.
    assert_eq!(
        get(&server, &format!("{WIDGET}/1.1.0/files/templates/a.txt")).text,
        "1.1.0"
    );
    assert_eq!(get(&server, WIDGET).json()["version"], "1.1.0");
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    assert_eq!(get(&server, ROLLUP_FILE).text, rollup);
    let listing = get(&server, "/namespaces/@company/registries");
    assert_eq!(listing.status, 200, "{}", listing.text);
    assert!(listing.json()["registries"].to_string().contains("build/widget"));
    // A new version of the same registry is refused before anything is written: versions.json
    // is rebuilt from the version directories, and one that cannot be read would be dropped.
    let reply = upload(&server, "1.2.0");
    assert_clear_5xx(&reply, "INTERNAL_SERVER_ERROR");
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    assert!(!locked.with_file_name("1.2.0").exists(), "a partial version");
    // Other registries of the namespace still publish.
    let other = pkg::Upload::new(pkg::simple("@company", "gadget", "1.0.0"))
        .bearer(ADMIN_TOKEN)
        .send(&server.base);
    assert_eq!(other.status, 201, "{}", other.text);

    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        get(&server, &format!("{WIDGET}/1.0.0/files/templates/a.txt")).text,
        "1.0.0"
    );
    assert_eq!(upload(&server, "1.2.0").status, 201);
    assert_eq!(
        versions(&server),
        json!({"versions": ["1.2.0", "1.1.0", "1.0.0"]})
    );
    assert_no_panic(&server);
}

/// While the storage root is missing: `/health` 503 and every read that reaches storage a 500
/// with the JSON error body and `no-store`, never a 404 or an empty listing that would tell a
/// client the resources no longer exist. Listings of a namespace may answer from a walk
/// confirmed within the last second (`WALK_FRESH`), so they are polled.
#[track_caller]
fn assert_storage_gone(server: &Server, reads: &[String]) {
    let health = get(server, "/health");
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(health.cache_control.as_deref(), Some("no-store"));
    assert_eq!(health.json()["status"], "error");
    assert_eq!(health.json()["checks"]["storage"]["status"], "error");
    for path in reads {
        get(server, path).assert_error(500, "INTERNAL_SERVER_ERROR", "Internal server error");
    }
    let listing = "/namespaces/@company/registries";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = get(server, listing);
        if reply.status != 200 {
            reply.assert_error(500, "INTERNAL_SERVER_ERROR", "Internal server error");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{listing} still 200: {}",
            reply.text
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every read of [`assert_storage_gone`]: cached and uncached objects, a version that does not
/// exist (a miss), the listings.
fn storage_reads() -> Vec<String> {
    vec![
        ROLLUP_FILE.to_owned(),
        format!("{WIDGET}/versions"),
        WIDGET.to_owned(),
        format!("{WIDGET}/1.0.0"),
        format!("{WIDGET}/1.0.0/files/templates/a.txt"),
        format!("{WIDGET}/9.9.9"),
        "/registries/@rack/build/never-published/1.0.0".to_owned(),
        "/namespaces".to_owned(),
    ]
}

/// A server on `world` with version 1.0.0 uploaded and every [`storage_reads`] path read once,
/// so that the hot cache and the watcher hold them; returns it and the rollup file's text.
fn start_warm(world: &World) -> (Server, String) {
    let server = Server::start(world.path(), &world.local_env());
    assert_eq!(upload(&server, "1.0.0").status, 201);
    let rollup = get(&server, ROLLUP_FILE).text;
    for path in storage_reads() {
        get(&server, &path);
    }
    (server, rollup)
}

#[test]
fn the_storage_root_removed_while_running() {
    let world = World::new();
    let root = world.storage();
    let (server, rollup) = start_warm(&world);
    get(&server, "/namespaces/@company/registries");

    let away = world.path().join("storage.away");
    std::fs::rename(&root, &away).unwrap();
    assert_storage_gone(&server, &storage_reads());
    let reply = upload(&server, "1.1.0");
    assert_clear_5xx(&reply, "SERVICE_UNAVAILABLE");
    assert!(!root.exists(), "the storage root was re-created");

    std::fs::rename(&away, &root).unwrap();
    assert_eq!(get(&server, "/health").status, 200);
    assert_eq!(get(&server, ROLLUP_FILE).text, rollup);
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    assert_no_panic(&server);
}

#[test]
fn the_storage_root_deleted_while_running_and_restored_from_a_copy() {
    let world = World::new();
    let root = world.storage();
    let (server, rollup) = start_warm(&world);
    let namespaces = get(&server, "/namespaces").json();
    let registries = get(&server, "/namespaces/@company/registries").json();
    let backup = world.path().join("backup");
    common::copy_tree(&root, &backup);
    std::fs::remove_dir_all(backup.join(".tmp")).ok();

    // `rm -rf`: the directory is unlinked while the server may hold a descriptor of it.
    std::fs::remove_dir_all(&root).unwrap();
    assert_storage_gone(&server, &storage_reads());
    // Twice: the first misses dropped whatever was held of the old root.
    assert_storage_gone(&server, &storage_reads());
    let reply = upload(&server, "1.1.0");
    assert_clear_5xx(&reply, "SERVICE_UNAVAILABLE");
    assert!(!root.exists(), "the storage root was re-created");

    // Restored from the copy: the same process serves it again, and sees later changes.
    common::copy_tree(&backup, &root);
    let health = get(&server, "/health");
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(get(&server, ROLLUP_FILE).text, rollup);
    assert_eq!(versions(&server), json!({"versions": ["1.0.0"]}));
    assert_eq!(
        get(&server, &format!("{WIDGET}/1.0.0/files/templates/a.txt")).text,
        "1.0.0"
    );
    assert_eq!(get(&server, &format!("{WIDGET}/9.9.9")).status, 404);
    assert_eq!(get(&server, "/namespaces").json(), namespaces);
    assert_eq!(get(&server, "/namespaces/@company/registries").json(), registries);
    let rollup_path = root
        .join(ROLLUP_FILE.trim_start_matches("/registries/"))
        .join("registry.json");
    std::fs::write(&rollup_path, rollup.replace("rollup", "rollup-edited")).unwrap();
    assert_eq!(
        get(&server, ROLLUP_FILE).text,
        rollup.replace("rollup", "rollup-edited"),
        "an edit in the restored root is served (its watches are live)"
    );
    let reply = upload(&server, "1.1.0");
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(versions(&server), json!({"versions": ["1.1.0", "1.0.0"]}));
    pkg::assert_tmp_clean(&root);
    assert_no_panic(&server);
}
