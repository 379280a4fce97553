//! Hostile packages (SPEC §5.3): paths that escape, links, devices, duplicates, bad names, entry
//! and size limits, gzip bombs, and memory that stays bounded whatever the upload size.
//!
//! Every test asserts the exact answer, that nothing was published or written anywhere in the
//! world directory (storage and config, compared before/after), and that staging is clean.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Server, World};
use pkg::{
    block_device, char_device, dir, fifo, file, hardlink, raw_file, symlink, Entry, Reply, Snapshot, Upload,
};

const PUBLISH: &str = "company-publish-token";
const ARCHIVE_PREFIX: &str = "Uploaded file is not a valid tar.gz archive: ";
const MIB: u64 = 1 << 20;

use common::{start, start_with};

/// `registry.json` of `@company/build/evil@1.0.0` declaring `templates/a.txt`.
fn manifest_entry() -> Entry {
    let m = pkg::manifest(
        "@company",
        "evil",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    raw_file(b"registry.json", serde_json::to_vec(&m).unwrap())
}

/// A valid package plus `extra` entries.
fn with_extra(extra: Vec<Entry>) -> Vec<u8> {
    let mut entries = vec![manifest_entry(), file("templates/a.txt", "a")];
    entries.extend(extra);
    pkg::targz(&entries)
}

/// Upload `package`; the answer must be `status`/`code`, and nothing may have changed.
#[track_caller]
fn hostile(world: &World, server: &Server, package: Vec<u8>, status: u16, code: &str) -> Reply {
    let before = Snapshot::take(world.path());
    let reply = Upload::new(package).bearer(PUBLISH).send(&server.base);
    reply.assert_code(status, code);
    if code == "INVALID_ARCHIVE" {
        let msg = reply.message();
        assert!(
            msg.starts_with(ARCHIVE_PREFIX) && msg.len() > ARCHIVE_PREFIX.len(),
            "{msg}"
        );
    }
    before.assert_unchanged(world.path());
    assert!(!world.storage().join("@company/build/evil").exists());
    reply
}

fn unsafe_msg(path: &str) -> String {
    format!("Package contains an unsupported entry type at {path} (only regular files and directories are allowed)")
}

fn not_found_msg(path: &str) -> String {
    format!("File referenced in registry.json is missing or not a regular file: {path}")
}

#[test]
fn gz_builder_roundtrip() {
    // The helper behind the bombs: segments repeated, CRC combined, a valid gzip stream.
    let mut gz = pkg::GzBuilder::new();
    gz.push(b"header one");
    pkg::push_zeros(&mut gz, 5 * MIB + 7);
    gz.push(b"tail");
    let mut expect = b"header one".to_vec();
    expect.resize(expect.len() + 5 * MIB as usize + 7, 0);
    expect.extend_from_slice(b"tail");
    assert_eq!(gz.total(), expect.len() as u64);
    let bytes = gz.finish();
    assert!(bytes.len() < 64 * 1024, "compressed {}", bytes.len());
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .unwrap();
    assert!(out == expect);
}

// --- paths ---------------------------------------------------------------------------------

#[test]
fn absolute_paths_are_invalid_archives() {
    let (world, server) = start();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("abs-evil.txt");
    for name in [
        target.display().to_string(),
        "/registry.json".into(),
        "/templates/a.txt".into(),
    ] {
        let p = with_extra(vec![raw_file(name.as_bytes(), "pwned")]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
    // Even as the only entry, and before registry.json.
    let p = pkg::targz(&[
        raw_file(target.display().to_string().as_bytes(), "pwned"),
        manifest_entry(),
    ]);
    hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    assert!(!target.exists(), "a file was written outside staging");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn dot_dot_paths_are_invalid_archives() {
    let (world, server) = start();
    for name in [
        "../escaped.txt",
        "../../../escaped.txt",
        "../../../../escaped.txt",
        "templates/../../../../escaped.txt",
        "templates/../a.txt",
        "./../escaped.txt",
        "..",
        "templates/..",
    ] {
        let p = with_extra(vec![raw_file(name.as_bytes(), "pwned")]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
        let p = with_extra(vec![dir(&format!("{name}/"))]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
    assert!(!world.path().join("escaped.txt").exists());
    assert!(!world.storage().join("escaped.txt").exists());
    assert!(!world.storage().join(".tmp/escaped.txt").exists());
}

// --- links ---------------------------------------------------------------------------------

#[test]
fn symlinks() {
    let (world, server) = start();
    let outside = tempfile::tempdir().unwrap();
    // Elsewhere than a declared path: UNSAFE_FILE naming it (without `./`).
    let r = hostile(
        &world,
        &server,
        with_extra(vec![symlink("./templates/link.txt", "a.txt")]),
        400,
        "UNSAFE_FILE",
    );
    assert_eq!(r.message(), unsafe_msg("templates/link.txt"));
    // A dangling one, and one to a directory inside the package.
    let r = hostile(
        &world,
        &server,
        with_extra(vec![symlink("templates/dangling", "nothing")]),
        400,
        "UNSAFE_FILE",
    );
    assert_eq!(r.message(), unsafe_msg("templates/dangling"));
    let r = hostile(
        &world,
        &server,
        with_extra(vec![symlink("dirlink", "templates")]),
        400,
        "UNSAFE_FILE",
    );
    assert_eq!(r.message(), unsafe_msg("dirlink"));
    // At the declared path: check 11 comes first.
    let p = pkg::targz(&[
        manifest_entry(),
        file("templates/b.txt", "b"),
        symlink("templates/a.txt", "b.txt"),
    ]);
    let r = hostile(&world, &server, p, 400, "FILE_NOT_FOUND");
    assert_eq!(r.message(), not_found_msg("templates/a.txt"));
    // registry.json itself as a link is "not found" (check 7).
    let p = pkg::targz(&[
        raw_file(
            b"real.json",
            serde_json::to_vec(&pkg::manifest("@company", "evil", "1.0.0", "registry:build", &[])).unwrap(),
        ),
        symlink("registry.json", "real.json"),
    ]);
    let r = hostile(&world, &server, p, 400, "UPLOAD_FAILED");
    assert_eq!(r.message(), "registry.json not found in package");
    // An absolute target cannot be extracted safely at all.
    let abs = outside.path().join("target");
    for target in [abs.display().to_string(), "/etc/passwd".to_owned()] {
        let p = with_extra(vec![symlink("templates/link", &target)]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
    // Nor a target that climbs out (`..` anywhere).
    for target in ["../../../../../etc/passwd", "../../x", "x/../../../y"] {
        let p = with_extra(vec![symlink("templates/link", target)]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
    // A relative target with `..` that stays inside the package is just a link.
    for target in ["../a.txt", "x/../../registry.json"] {
        let p = with_extra(vec![symlink("templates/link", target)]);
        let r = hostile(&world, &server, p, 400, "UNSAFE_FILE");
        assert_eq!(r.message(), unsafe_msg("templates/link"));
    }
    // The classic: a link to outside, then a file written "through" it.
    let p = with_extra(vec![
        symlink("escape", &outside.path().display().to_string()),
        file("escape/pwned.txt", "pwned"),
    ]);
    hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // A harmless-looking relative link to a directory, then a file "through" it: the link is never
    // created, so the file lands in staging, and the link is refused.
    let p = with_extra(vec![
        symlink("templates/sub", "."),
        file("templates/sub/x.txt", "x"),
    ]);
    hostile(&world, &server, p, 400, "UNSAFE_FILE");
}

#[test]
fn hardlinks() {
    let (world, server) = start();
    let r = hostile(
        &world,
        &server,
        with_extra(vec![hardlink("templates/copy.txt", "templates/a.txt")]),
        400,
        "UNSAFE_FILE",
    );
    assert_eq!(r.message(), unsafe_msg("templates/copy.txt"));
    let r = hostile(
        &world,
        &server,
        with_extra(vec![hardlink("templates/copy.txt", "./registry.json")]),
        400,
        "UNSAFE_FILE",
    );
    assert_eq!(r.message(), unsafe_msg("templates/copy.txt"));
    // At the declared path.
    let p = pkg::targz(&[
        manifest_entry(),
        file("templates/b.txt", "b"),
        hardlink("templates/a.txt", "templates/b.txt"),
    ]);
    let r = hostile(&world, &server, p, 400, "FILE_NOT_FOUND");
    assert_eq!(r.message(), not_found_msg("templates/a.txt"));
    // To outside the package.
    for target in ["../../etc/passwd", "/etc/passwd", "templates/../../x"] {
        let p = with_extra(vec![hardlink("templates/pw", target)]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
}

#[test]
fn devices_and_fifos() {
    let (world, server) = start();
    for (entry, path) in [
        (char_device("templates/null"), "templates/null"),
        (block_device("templates/sda"), "templates/sda"),
        (fifo("./templates/pipe"), "templates/pipe"),
        (char_device("dev-at-root"), "dev-at-root"),
    ] {
        let r = hostile(&world, &server, with_extra(vec![entry]), 400, "UNSAFE_FILE");
        assert_eq!(r.message(), unsafe_msg(path));
    }
    for entry in [
        char_device("templates/a.txt"),
        block_device("templates/a.txt"),
        fifo("templates/a.txt"),
    ] {
        let p = pkg::targz(&[manifest_entry(), entry]);
        let r = hostile(&world, &server, p, 400, "FILE_NOT_FOUND");
        assert_eq!(r.message(), not_found_msg("templates/a.txt"));
    }
}

// --- duplicates and names ------------------------------------------------------------------

#[test]
fn duplicate_entries() {
    let (world, server) = start();
    let other = pkg::manifest(
        "@company",
        "evil",
        "9.9.9",
        "registry:build",
        &["templates/a.txt"],
    );
    let cases = vec![
        vec![
            manifest_entry(),
            file("templates/a.txt", "a"),
            file("templates/a.txt", "b"),
        ],
        vec![
            manifest_entry(),
            file("templates/a.txt", "a"),
            file("./templates/a.txt", "b"),
        ],
        vec![
            manifest_entry(),
            file("templates/a.txt", "a"),
            file("templates//a.txt", "b"),
        ],
        vec![
            manifest_entry(),
            file("templates/a.txt", "a"),
            raw_file(b"./registry.json", serde_json::to_vec(&other).unwrap()),
        ],
        vec![
            manifest_entry(),
            file("templates/a.txt", "a"),
            dir("templates/a.txt/"),
        ],
        vec![
            manifest_entry(),
            dir("templates/"),
            file("templates/a.txt", "a"),
            dir("./templates/"),
        ],
    ];
    for entries in cases {
        hostile(&world, &server, pkg::targz(&entries), 400, "INVALID_ARCHIVE");
    }
}

#[test]
fn non_utf8_names() {
    let (world, server) = start();
    for name in [
        &b"templates/\xff\xfe.txt"[..],
        b"\xc3\x28",
        b"templates/\xed\xa0\x80.txt",
    ] {
        let p = with_extra(vec![raw_file(name, "x")]);
        hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    }
}

// --- limits --------------------------------------------------------------------------------

#[test]
fn more_than_ten_thousand_entries() {
    let (world, server) = start();
    let mut entries = vec![manifest_entry(), file("templates/a.txt", "a")];
    // 10,001 entries in all. Fifos: recorded by the server, never created, so that the test
    // measures the limit and not how fast this machine's filesystem removes 10,000 directories.
    entries.extend((0..9_999).map(|i| fifo(&format!("f{i:05}"))));
    assert_eq!(entries.len(), 10_001);
    let t = Instant::now();
    hostile(&world, &server, pkg::targz(&entries), 400, "INVALID_ARCHIVE");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // One fewer is within the limit: the archive is read to the end and judged by check 12.
    entries.pop();
    let r = hostile(&world, &server, pkg::targz(&entries), 400, "UNSAFE_FILE");
    assert_eq!(r.message(), unsafe_msg("f00000"));
}

#[test]
fn configurable_entry_limit() {
    let (world, server) = start_with(&[("MAX_ARCHIVE_ENTRIES", "5")]);
    let m = pkg::manifest(
        "@company",
        "five",
        "1.0.0",
        "registry:build",
        &["t/a.txt", "t/b.txt"],
    );
    let five = [
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        dir("t/"),
        file("t/a.txt", "a"),
        file("t/b.txt", "b"),
        dir("empty/"),
    ];
    let reply = Upload::new(pkg::targz(&five)).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    pkg::assert_tmp_clean(&world.storage());
    let mut six = five.to_vec();
    six.push(dir("empty2/"));
    hostile(&world, &server, pkg::targz(&six), 400, "INVALID_ARCHIVE");
}

/// A JSON document of exactly `size` bytes (a valid manifest padded with spaces).
fn manifest_of_size(size: usize) -> Vec<u8> {
    let m = pkg::manifest(
        "@company",
        "evil",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let mut bytes = serde_json::to_vec(&m).unwrap();
    assert!(bytes.len() < size);
    bytes.resize(size, b' ');
    bytes
}

#[test]
fn registry_json_over_one_mib() {
    let (world, server) = start();
    let p = pkg::targz(&[
        raw_file(b"registry.json", manifest_of_size((MIB + 1) as usize)),
        file("templates/a.txt", "a"),
    ]);
    hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
    // Exactly 1 MiB is allowed.
    let p = pkg::targz(&[
        raw_file(b"registry.json", manifest_of_size(MIB as usize)),
        file("templates/a.txt", "a"),
    ]);
    let reply = Upload::new(p).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let stored = std::fs::read(world.storage().join("@company/build/evil/1.0.0/registry.json")).unwrap();
    assert_eq!(stored.len() as u64, MIB);
}

/// A valid `.tar.gz` of ~1 MiB holding one regular file of 1.1 GiB of zeros: refused at its
/// header (declared size over the 512 MiB default), at once.
#[test]
fn gzip_bomb_single_huge_file() {
    let (world, server) = start();
    let size = 1100 * MIB;
    let mut gz = pkg::GzBuilder::new();
    gz.push(&pkg::entry_bytes(&manifest_entry()));
    gz.push(pkg::raw_header(b"templates/a.txt", tar::EntryType::Regular, size, None).as_bytes());
    pkg::push_zeros(&mut gz, size + 1024);
    assert!(gz.total() > (1 << 30));
    let bomb = gz.finish();
    assert!(bomb.len() < 2 * MIB as usize, "compressed size {}", bomb.len());

    let storage = world.storage();
    let disk = pkg::MaxWatch::start(move || pkg::staged_tree_bytes(&storage));
    let t = Instant::now();
    hostile(&world, &server, bomb, 400, "INVALID_ARCHIVE");
    let elapsed = t.elapsed();
    let written = disk.stop();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(written < 512 * MIB, "{written} bytes extracted");
    assert!(
        written < MIB,
        "nothing of the huge file is written: {written} bytes"
    );
}

/// Many files, each under the limit, whose sum crosses it (the archive expands past 1 GiB);
/// with `MAX_EXTRACTED_BYTES` = 8 MiB the extraction stops at the file that would cross it,
/// having written less than the limit.
#[test]
fn gzip_bomb_many_files() {
    let limit = 8 * MIB;
    let (world, server) = start_with(&[("MAX_EXTRACTED_BYTES", &limit.to_string())]);
    let file_size: u64 = 1_000_000;
    let files = 1100u64;
    let names: Vec<String> = (0..files).map(|i| format!("templates/f{i:04}.bin")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let m = pkg::manifest("@company", "evil", "1.0.0", "registry:build", &refs);
    let mut gz = pkg::GzBuilder::new();
    gz.push(&pkg::entry_bytes(&raw_file(
        b"registry.json",
        serde_json::to_vec(&m).unwrap(),
    )));
    let zeros = gz.prepare(&vec![0u8; pkg::padded(file_size) as usize]);
    for name in &names {
        gz.push(pkg::raw_header(name.as_bytes(), tar::EntryType::Regular, file_size, None).as_bytes());
        gz.push_prepared(&zeros, 1);
    }
    gz.push(&[0u8; 1024]);
    assert!(gz.total() > (1 << 30), "expands to {}", gz.total());
    let bomb = gz.finish();
    assert!(bomb.len() < 4 * MIB as usize, "compressed size {}", bomb.len());

    let storage = world.storage();
    let disk = pkg::MaxWatch::start(move || pkg::staged_tree_bytes(&storage));
    let t = Instant::now();
    hostile(&world, &server, bomb, 400, "INVALID_ARCHIVE");
    let elapsed = t.elapsed();
    let written = disk.stop();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(written < limit, "{written} bytes extracted, limit {limit}");
    assert_eq!(pkg::staged_tree_bytes(&world.storage()), 0);
}

/// Metadata entries are data too: a GNU long-name entry (or a pax header) of hundreds of MiB
/// must not be read into memory (SPEC §5.3: memory stays bounded, and a bomb stops as soon as it
/// crosses the limit).
#[test]
fn gzip_bomb_in_metadata_entries_keeps_memory_bounded() {
    let size = 96 * MIB;
    let mut problems = Vec::new();
    for ty in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
        // A fresh server each time: freed memory would hide the second allocation.
        let (world, server) = start();
        let mut gz = pkg::GzBuilder::new();
        gz.push(&pkg::entry_bytes(&manifest_entry()));
        gz.push(pkg::raw_header(b"././@LongLink", ty, size, None).as_bytes());
        let ones = vec![b'a'; MIB as usize];
        gz.push_repeated(&ones, size / MIB);
        gz.push(pkg::raw_header(b"templates/a.txt", tar::EntryType::Regular, 0, None).as_bytes());
        gz.push(&[0u8; 1024]);
        let bomb = gz.finish();
        assert!(bomb.len() < MIB as usize, "compressed size {}", bomb.len());

        let before = Snapshot::take(world.path());
        let rss = pkg::RssWatch::start(server.pid());
        let t = Instant::now();
        let reply = Upload::new(bomb).bearer(PUBLISH).send(&server.base);
        let elapsed = t.elapsed();
        let growth = rss.growth_kib();
        if growth >= 64 * 1024 {
            problems.push(format!(
                "{ty:?} entry of {} MiB: server RSS grew by {} MiB (took {elapsed:?}; answer {} {})",
                size / MIB,
                growth / 1024,
                reply.status,
                reply.text
            ));
        }
        if ty == tar::EntryType::GNULongName {
            // The 96 MiB name is no usable path: refused, nothing written.
            reply.assert_code(400, "INVALID_ARCHIVE");
            before.assert_unchanged(world.path());
        } else if reply.status != 201 {
            // Unparsable pax records: refusing is fine too, if nothing is left.
            reply.assert_code(400, "INVALID_ARCHIVE");
            before.assert_unchanged(world.path());
        }
        pkg::assert_tmp_clean(&world.storage());
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// SPEC §5.1 check 2 and §5.3: a 110 MiB upload is refused with 413 and the body is streamed,
/// never buffered: the server's resident memory grows by less than 64 MiB.
#[test]
fn oversized_upload_keeps_memory_bounded() {
    let (world, server) = start();
    let size = 110 * MIB;
    for known_length in [false, true] {
        let before = Snapshot::take(world.path());
        let rss = pkg::RssWatch::start(server.pid());
        let reader = std::io::repeat(0x5a).take(size);
        let part = if known_length {
            reqwest::blocking::multipart::Part::reader_with_length(reader, size)
        } else {
            reqwest::blocking::multipart::Part::reader(reader)
        }
        .file_name("package.tar.gz")
        .mime_str("application/gzip")
        .unwrap();
        let form = reqwest::blocking::multipart::Form::new()
            .text("checksum", "0".repeat(64))
            .part("package", part);
        let req = pkg::client()
            .post(server.url("/registries"))
            .bearer_auth(PUBLISH)
            .multipart(form);
        let reply = pkg::send(req);
        let growth = rss.growth_kib();
        reply.assert_code(413, "PAYLOAD_TOO_LARGE");
        before.assert_unchanged(world.path());
        assert!(
            growth < 64 * 1024,
            "known length {known_length}: server RSS grew by {} MiB",
            growth / 1024
        );
    }
}

/// Extraction never follows what it wrote: a file, then a directory of the same name under it.
#[test]
fn conflicting_entries() {
    let (world, server) = start();
    let p = with_extra(vec![file("templates/x", "x"), file("templates/x/y.txt", "y")]);
    hostile(&world, &server, p, 400, "INVALID_ARCHIVE");
}
