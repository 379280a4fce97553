//! `POST /registries` (SPEC §5.1, §5.4, §12, §14): every error code with its exact message, the
//! order of the checks, and what a successful upload stores.
//!
//! Every refused upload also asserts that nothing changed on disk (apart from `storage/.tmp`,
//! which must be empty or absent once the answer has arrived).

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Server, World, ADMIN_TOKEN};
use pkg::{dir, file, raw_file, Reply, Snapshot, Upload};
use serde_json::{json, Value};

const PUBLISH: &str = "company-publish-token";
const READ: &str = "company-read-token";

use common::{start, start_with};

/// Send an upload that must be refused: exact status/code/message, and nothing left behind.
#[track_caller]
fn refused(world: &World, server: &Server, up: &Upload, status: u16, code: &str, message: &str) {
    let before = Snapshot::take(world.path());
    let reply = up.send(&server.base);
    reply.assert_error(status, code, message);
    before.assert_unchanged(world.path());
}

/// Like [`refused`] but only status and code are exact; returns the reply for message checks.
#[track_caller]
fn refused_code(world: &World, server: &Server, up: &Upload, status: u16, code: &str) -> Reply {
    let before = Snapshot::take(world.path());
    let reply = up.send(&server.base);
    reply.assert_code(status, code);
    before.assert_unchanged(world.path());
    reply
}

/// Send an upload that must succeed; checks the 201 body and that staging is clean.
#[track_caller]
fn accepted(world: &World, server: &Server, up: &Upload, ns: &str, name: &str, version: &str, path: &str) {
    let reply = up.send(&server.base);
    assert_eq!(reply.status, 201, "reply: {}", reply.text);
    assert_eq!(
        reply.json(),
        json!({
            "name": name,
            "version": version,
            "namespace": ns,
            "message": "Registry uploaded successfully",
            "path": path,
        })
    );
    assert_eq!(reply.json().as_object().unwrap().len(), 5);
    pkg::assert_tmp_clean(&world.storage());
    assert!(
        world.storage().join(path).join("registry.json").is_file(),
        "{path}/registry.json stored"
    );
}

fn widget(version: &str) -> Vec<u8> {
    pkg::simple("@company", "widget", version)
}

fn widget_upload(version: &str) -> Upload {
    Upload::new(widget(version)).bearer(PUBLISH)
}

fn company_manifest(name: &str, files: &[&str]) -> Value {
    pkg::manifest("@company", name, "1.0.0", "registry:build", files)
}

const AUTH_MSG: &str = "Authentication required for upload. Provide a namespace token or admin token via Authorization or X-Registry-Token.";
const ARCHIVE_PREFIX: &str = "Uploaded file is not a valid tar.gz archive: ";

// --- check 0 -------------------------------------------------------------------------------

#[test]
fn unauthorized_without_token() {
    let (world, server) = start();
    let up = Upload::new(widget("1.0.0"));
    refused(&world, &server, &up, 401, "UNAUTHORIZED", AUTH_MSG);
}

#[test]
fn unauthorized_with_blank_or_unusable_tokens() {
    let (world, server) = start();
    let base = Upload::new(widget("1.0.0"));
    for up in [
        base.clone().bearer(""),
        base.clone().bearer("   "),
        base.clone().x_token(""),
        base.clone().x_token("   "),
        // Not a bearer credential: ignored, and there is no X-Registry-Token.
        base.clone().header("Authorization", &format!("Basic {PUBLISH}")),
        base.clone().header("Authorization", PUBLISH),
    ] {
        refused(&world, &server, &up, 401, "UNAUTHORIZED", AUTH_MSG);
    }
}

// --- check 1 -------------------------------------------------------------------------------

#[test]
fn unsupported_media_type() {
    let (world, server) = start();
    let before = Snapshot::take(world.path());
    for token in [PUBLISH, ADMIN_TOKEN] {
        let req = pkg::client()
            .post(server.url("/registries"))
            .bearer_auth(token)
            .json(&json!({"package": "x", "checksum": "y"}));
        pkg::send(req).assert_code(415, "UNSUPPORTED_MEDIA_TYPE");
        let req = pkg::client()
            .post(server.url("/registries"))
            .bearer_auth(token)
            .header("Content-Type", "application/gzip")
            .body(widget("1.0.0"));
        pkg::send(req).assert_code(415, "UNSUPPORTED_MEDIA_TYPE");
        // multipart without a boundary is not usable multipart either
        let req = pkg::client()
            .post(server.url("/registries"))
            .bearer_auth(token)
            .header("Content-Type", "multipart/form-data")
            .body("x");
        pkg::send(req).assert_code(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    before.assert_unchanged(world.path());
}

// --- check 2 -------------------------------------------------------------------------------

#[test]
fn payload_too_large_with_content_length_and_chunked() {
    let (world, server) = start_with(&[("MAX_UPLOAD_BYTES", "100000")]);
    // A package of incompressible bytes, bigger than the limit.
    let noise = pkg::noise(200_000, 7);
    let m = company_manifest("big", &["templates/noise.bin"]);
    let big = pkg::package(&m, &[("templates/noise.bin", &noise)]);
    assert!(big.len() > 150_000);
    for up in [
        Upload::new(big.clone()).bearer(PUBLISH),
        Upload::new(big.clone()).bearer(PUBLISH).chunked(),
    ] {
        let reply = refused_code(&world, &server, &up, 413, "PAYLOAD_TOO_LARGE");
        assert!(
            reply.message().contains("100000"),
            "the message says the limit: {}",
            reply.text
        );
    }
    // Under the limit still works.
    accepted(
        &world,
        &server,
        &widget_upload("1.0.0"),
        "@company",
        "widget",
        "1.0.0",
        "@company/build/widget/1.0.0",
    );
}

#[test]
fn payload_too_large_is_answered_before_the_body() {
    let (world, server) = start_with(&[("MAX_UPLOAD_BYTES", "100000")]);
    let before = Snapshot::take(world.path());
    let mut s = pkg::raw_request_head(
        &server.base,
        &[
            ("Authorization", format!("Bearer {PUBLISH}")),
            ("Content-Type", "multipart/form-data; boundary=XyZ".into()),
            ("Content-Length", (20u64 << 20).to_string()),
        ],
    );
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, _, body) = pkg::read_response(&mut s).expect("413 before any body byte was sent");
    assert_eq!(status, 413);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "PAYLOAD_TOO_LARGE");
    before.assert_unchanged(world.path());
}

// --- checks 3 to 5 -------------------------------------------------------------------------

#[test]
fn missing_file() {
    let (world, server) = start();
    let before = Snapshot::take(world.path());
    let sum = pkg::sha256_hex(&widget("1.0.0"));
    let form = reqwest::blocking::multipart::Form::new().text("checksum", sum.clone());
    let req = pkg::client()
        .post(server.url("/registries"))
        .bearer_auth(PUBLISH)
        .multipart(form);
    pkg::send(req).assert_error(400, "MISSING_FILE", "No file uploaded");
    // A text field named `package` is not a file part.
    let form = reqwest::blocking::multipart::Form::new()
        .text("checksum", sum)
        .text("package", "not a file");
    let req = pkg::client()
        .post(server.url("/registries"))
        .bearer_auth(PUBLISH)
        .multipart(form);
    pkg::send(req).assert_error(400, "MISSING_FILE", "No file uploaded");
    before.assert_unchanged(world.path());
}

#[test]
fn invalid_file_type() {
    let (world, server) = start();
    for ct in ["text/plain", "application/json", "application/zip"] {
        let up = widget_upload("1.0.0").content_type(Some(ct));
        refused(
            &world,
            &server,
            &up,
            400,
            "INVALID_FILE_TYPE",
            "File must be a tar.gz archive",
        );
    }
}

#[test]
fn every_accepted_file_type_passes_check_4() {
    let (world, server) = start();
    let types = [
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-compressed",
        "application/octet-stream",
    ];
    for (i, ct) in types.iter().enumerate() {
        let v = format!("1.{i}.0");
        let up = widget_upload(&v).content_type(Some(ct));
        accepted(
            &world,
            &server,
            &up,
            "@company",
            "widget",
            &v,
            &format!("@company/build/widget/{v}"),
        );
    }
}

#[test]
fn missing_checksum() {
    let (world, server) = start();
    let msg = "SHA256 checksum is required for upload verification";
    refused(
        &world,
        &server,
        &widget_upload("1.0.0").checksum(None),
        400,
        "MISSING_CHECKSUM",
        msg,
    );
    refused(
        &world,
        &server,
        &widget_upload("1.0.0").checksum(Some("")),
        400,
        "MISSING_CHECKSUM",
        msg,
    );
    let up = widget_upload("1.0.0").checksum(Some("")).checksum_after();
    refused(&world, &server, &up, 400, "MISSING_CHECKSUM", msg);
}

#[test]
fn checksum_mismatch() {
    let (world, server) = start();
    let msg = "Checksum verification failed";
    let right = pkg::sha256_hex(&widget("1.0.0"));
    let wrong = pkg::sha256_hex(b"something else");
    for c in [
        wrong.clone(),
        right.to_uppercase(),
        format!("{right} "),
        format!("sha256:{right}"),
        right[..63].to_owned(),
    ] {
        let up = widget_upload("1.0.0").checksum(Some(&c));
        refused(&world, &server, &up, 400, "CHECKSUM_MISMATCH", msg);
    }
    let up = widget_upload("1.0.0").checksum(Some(&wrong)).checksum_after();
    refused(&world, &server, &up, 400, "CHECKSUM_MISMATCH", msg);
}

#[test]
fn checksum_after_the_file_part_and_field_names() {
    let (world, server) = start();
    let up = widget_upload("1.0.0").checksum_after();
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "widget",
        "1.0.0",
        "@company/build/widget/1.0.0",
    );
    let up = widget_upload("1.1.0").field("file");
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "widget",
        "1.1.0",
        "@company/build/widget/1.1.0",
    );
    let up = widget_upload("1.2.0").field("whatever").checksum_after();
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "widget",
        "1.2.0",
        "@company/build/widget/1.2.0",
    );
}

// --- check 6 -------------------------------------------------------------------------------

#[test]
fn invalid_archive() {
    let (world, server) = start();
    let good = widget("1.0.0");
    let m = company_manifest("widget", &["templates/a.txt"]);
    let plain_tar = pkg::tar_bytes(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        file("templates/a.txt", "x"),
    ]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not gzip",
            b"this is definitely not a gzip stream, just text".to_vec(),
        ),
        ("empty file", Vec::new()),
        ("uncompressed tar", plain_tar),
        ("truncated gzip", good[..good.len() / 2].to_vec()),
        ("corrupt tar inside gzip", pkg::gzip(&[b'x'; 2048])),
    ];
    for (what, bytes) in cases {
        let before = Snapshot::take(world.path());
        let reply = Upload::new(bytes).bearer(PUBLISH).send(&server.base);
        assert_eq!(
            (reply.status, reply.json()["code"].as_str()),
            (400, Some("INVALID_ARCHIVE")),
            "{what}: {}",
            reply.text
        );
        reply.assert_code(400, "INVALID_ARCHIVE");
        let msg = reply.message();
        assert!(
            msg.starts_with(ARCHIVE_PREFIX) && msg.len() > ARCHIVE_PREFIX.len(),
            "{what}: {msg}"
        );
        before.assert_unchanged(world.path());
    }
}

/// "gunzip succeeds" includes the gzip trailer: a stream cut before its CRC-32/ISIZE, or with a
/// wrong CRC-32, is not a valid gzip file, even when the tar inside ended before it.
#[test]
fn gzip_trailer_is_verified() {
    let (world, server) = start();
    let cut = widget("1.0.0");
    let cut = cut[..cut.len() - 8].to_vec();
    let mut wrong_crc = widget("1.0.1");
    let at = wrong_crc.len() - 8;
    wrong_crc[at] ^= 0xff;
    let mut wrong_size = widget("1.0.2");
    let at = wrong_size.len() - 1;
    wrong_size[at] ^= 0xff;
    let mut problems = Vec::new();
    for (what, bytes) in [
        ("gzip missing its trailer", cut),
        ("gzip with a wrong CRC-32", wrong_crc),
        ("gzip with a wrong ISIZE", wrong_size),
    ] {
        let before = Snapshot::take(world.path());
        let reply = Upload::new(bytes).bearer(PUBLISH).send(&server.base);
        if reply.status != 400 || reply.json()["code"] != "INVALID_ARCHIVE" {
            problems.push(format!("{what}: {} {}", reply.status, reply.text));
            continue;
        }
        assert!(reply.message().starts_with(ARCHIVE_PREFIX));
        before.assert_unchanged(world.path());
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// --- check 7 -------------------------------------------------------------------------------

#[test]
fn upload_failed_registry_json_not_found() {
    let (world, server) = start();
    let msg = "registry.json not found in package";
    let m = serde_json::to_vec(&company_manifest("widget", &[])).unwrap();
    let cases = [
        vec![file("templates/a.txt", "x")],
        vec![dir("registry.json/")],
        vec![dir("registry.json/"), raw_file(b"registry.json/inner", &m)],
        vec![raw_file(b"pkg/registry.json", &m)],
        vec![raw_file(b"Registry.json", &m)],
    ];
    for entries in cases {
        let up = Upload::new(pkg::targz(&entries)).bearer(PUBLISH);
        refused(&world, &server, &up, 400, "UPLOAD_FAILED", msg);
    }
}

#[test]
fn upload_failed_manifest_identity() {
    let (world, server) = start();
    let cases: [(&[u8], &str); 10] = [
        (b"{not json", "registry.json is not valid JSON"),
        (b"", "registry.json is not valid JSON"),
        (b"{}", "namespace is required in registry.json"),
        (br#"{"name":"x","version":"1.0.0"}"#, "namespace is required in registry.json"),
        (br#"{"namespace":"","name":"x","version":"1.0.0"}"#, "namespace is required in registry.json"),
        (br#"{"namespace":"@company"}"#, "name is required in registry.json"),
        (br#"{"namespace":"@company","name":5,"version":"1.0.0"}"#, "name is required in registry.json"),
        (br#"{"namespace":"@company","name":"x"}"#, "version is required in registry.json"),
        (br#"{"namespace":"@company","name":"x","version":1}"#, "version is required in registry.json"),
        (
            br#"{"namespace":"@company","name":"x","version":"1.0.0","type":"registry:build","priority":1,"path":"legacy/y"}"#,
            "path \"legacy/y\" must end with name \"x\"",
        ),
    ];
    for (manifest, msg) in cases {
        let up = Upload::new(pkg::package_raw(manifest, &[])).bearer(PUBLISH);
        refused(&world, &server, &up, 400, "UPLOAD_FAILED", msg);
    }
}

// --- checks 8 and 9 ------------------------------------------------------------------------

#[test]
fn namespace_not_allowed_even_for_admin() {
    let (world, server) = start();
    let m = pkg::manifest(
        "@secret",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let p = pkg::package(&m, &[("templates/a.txt", b"x")]);
    for token in [ADMIN_TOKEN, PUBLISH, "other-read-token", "no-such-token"] {
        let up = Upload::new(p.clone()).bearer(token);
        refused(
            &world,
            &server,
            &up,
            403,
            "NAMESPACE_NOT_ALLOWED",
            "Namespace @secret is not allowed",
        );
    }
    // Any other undeclared namespace.
    let m = pkg::manifest(
        "@nowhere",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(ADMIN_TOKEN);
    refused(
        &world,
        &server,
        &up,
        403,
        "NAMESPACE_NOT_ALLOWED",
        "Namespace @nowhere is not allowed",
    );
}

#[test]
fn anonymous_namespace_refuses_non_admin_tokens() {
    let (world, server) = start();
    let p = pkg::simple("@rack", "widget", "1.0.0");
    let msg = "Anonymous namespaces do not allow uploads. Use an admin token or configure namespace tokens.";
    for token in [PUBLISH, "other-read-token", "made-up-token"] {
        let up = Upload::new(p.clone()).bearer(token);
        refused(&world, &server, &up, 403, "ANONYMOUS_UPLOAD_FORBIDDEN", msg);
    }
    // The admin token may publish to an anonymous namespace.
    let up = Upload::new(p).bearer(ADMIN_TOKEN);
    accepted(
        &world,
        &server,
        &up,
        "@rack",
        "widget",
        "1.0.0",
        "@rack/build/widget/1.0.0",
    );
}

#[test]
fn invalid_token() {
    let (world, server) = start();
    for token in [
        "not-a-company-token",
        "other-read-token",
        "company-publish-token-x",
    ] {
        let up = Upload::new(widget("1.0.0")).bearer(token);
        refused(
            &world,
            &server,
            &up,
            401,
            "INVALID_TOKEN",
            "Provided token is invalid",
        );
    }
    let up = Upload::new(widget("1.0.0")).x_token("nope");
    refused(
        &world,
        &server,
        &up,
        401,
        "INVALID_TOKEN",
        "Provided token is invalid",
    );
}

#[test]
fn token_expired() {
    let (world, server) = start();
    let up = Upload::new(widget("1.0.0")).bearer("company-expired-token");
    refused(
        &world,
        &server,
        &up,
        401,
        "TOKEN_EXPIRED",
        "Authentication token has expired",
    );
}

#[test]
fn insufficient_permissions() {
    let (world, server) = start();
    let msg = "Token does not have publish permission for namespace @company";
    for token in ["company-read-token", "company-date-token"] {
        let up = Upload::new(widget("1.0.0")).bearer(token);
        refused(&world, &server, &up, 403, "INSUFFICIENT_PERMISSIONS", msg);
    }
}

// --- checks 10 to 13 -----------------------------------------------------------------------

#[test]
fn schema_validation_failed() {
    let (world, server) = start();
    let prefix = "Schema validation failed: ";
    let mut extra = company_manifest("widget", &["templates/a.txt"]);
    extra["bogusField"] = json!(1);
    let mut negative = company_manifest("widget", &["templates/a.txt"]);
    negative["priority"] = json!(-1);
    let mut no_priority = company_manifest("widget", &["templates/a.txt"]);
    no_priority.as_object_mut().unwrap().remove("priority");
    let mut bad_type = company_manifest("widget", &["templates/a.txt"]);
    bad_type["type"] = json!("registry:nonsense");
    let mut bad_version = company_manifest("widget", &["templates/a.txt"]);
    bad_version["version"] = json!("v1.0");
    let mut bad_name = company_manifest("widget", &["templates/a.txt"]);
    bad_name["name"] = json!("Widget_X");
    let mut bad_file = company_manifest("widget", &["templates/a.txt"]);
    bad_file["files"][0]["path"] = json!("../etc/passwd");
    for (m, needle) in [
        (extra, "bogusField"),
        (negative, "priority"),
        (no_priority, "priority"),
        (bad_type, "type"),
        (bad_version, "version"),
        (bad_name, "name"),
        (bad_file, "path"),
    ] {
        let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
        let reply = refused_code(&world, &server, &up, 400, "SCHEMA_VALIDATION_FAILED");
        let msg = reply.message();
        assert!(
            msg.starts_with(prefix) && msg.contains(needle),
            "expected the validation error about {needle}: {msg}"
        );
    }
}

#[test]
fn file_not_found() {
    let (world, server) = start();
    let prefix = "File referenced in registry.json is missing or not a regular file: ";
    // Declared with `./`, named without it.
    let m = company_manifest("widget", &["templates/a.txt", "./templates/missing.txt"]);
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "FILE_NOT_FOUND",
        &format!("{prefix}templates/missing.txt"),
    );
    // A directory at a declared path is not a regular file.
    let m = company_manifest("widget", &["templates/a.txt"]);
    let p = pkg::targz(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        dir("templates/a.txt/"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "FILE_NOT_FOUND",
        &format!("{prefix}templates/a.txt"),
    );
    // languages.*.files and a custom merge script count as declared.
    let mut m = company_manifest("widget", &["templates/a.txt"]);
    m["files"][0]["mergeStrategy"] = json!({"type": "custom", "script": "scripts/merge.js"});
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "FILE_NOT_FOUND",
        &format!("{prefix}scripts/merge.js"),
    );
    let mut m = company_manifest("widget", &["templates/a.txt"]);
    m["languages"] =
        json!({"ts": {"files": [{"target": "b.ts", "type": "registry:lib", "path": "ts/b.ts"}]}});
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "FILE_NOT_FOUND",
        &format!("{prefix}ts/b.ts"),
    );
}

#[test]
fn unsafe_file() {
    let (world, server) = start();
    let m = company_manifest("widget", &["templates/a.txt"]);
    let p = pkg::targz(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        file("templates/a.txt", "x"),
        pkg::symlink("./templates/link.txt", "a.txt"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "UNSAFE_FILE",
        "Package contains an unsupported entry type at templates/link.txt (only regular files and directories are allowed)",
    );
}

#[test]
fn undeclared_file() {
    let (world, server) = start();
    let m = company_manifest("widget", &["templates/a.txt"]);
    let p = pkg::targz(&[
        raw_file(b"./registry.json", serde_json::to_vec(&m).unwrap()),
        file("./templates/a.txt", "x"),
        file("./templates/extra.txt", "y"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "UNDECLARED_FILE",
        "Package contains a file not declared in registry.json: templates/extra.txt",
    );
}

#[test]
fn version_exists_keeps_the_first_upload() {
    let (world, server) = start();
    let m1 = company_manifest("widget", &["templates/a.txt"]);
    let first = pkg::package(&m1, &[("templates/a.txt", b"first\n")]);
    let up = Upload::new(first).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "widget",
        "1.0.0",
        "@company/build/widget/1.0.0",
    );
    let stored = world.storage().join("@company/build/widget/1.0.0");
    let manifest_before = std::fs::read(stored.join("registry.json")).unwrap();
    assert_eq!(manifest_before, serde_json::to_vec_pretty(&m1).unwrap());

    let mut m2 = m1.clone();
    m2["description"] = json!("second");
    let second = pkg::package(&m2, &[("templates/a.txt", b"second\n")]);
    for token in [PUBLISH, ADMIN_TOKEN] {
        let up = Upload::new(second.clone()).bearer(token);
        refused(
            &world,
            &server,
            &up,
            409,
            "VERSION_EXISTS",
            "Registry @company/build/widget@1.0.0 already exists",
        );
    }
    assert_eq!(
        std::fs::read(stored.join("registry.json")).unwrap(),
        manifest_before
    );
    assert_eq!(std::fs::read(stored.join("templates/a.txt")).unwrap(), b"first\n");
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/build/widget/1.0.0/files/templates/a.txt",
        Some(READ),
    );
    assert_eq!((status, body), (200, b"first\n".to_vec()));
    assert_eq!(
        std::fs::read_to_string(world.storage().join("@company/build/widget/versions.json")).unwrap(),
        pkg::versions_json(&["1.0.0"])
    );
}

// --- order of the checks -------------------------------------------------------------------

#[test]
fn checks_run_in_spec_order() {
    let (world, server) = start();
    let secret = pkg::simple("@secret", "widget", "1.0.0");
    let wrong = pkg::sha256_hex(b"wrong");

    // 0 before 1: no token and not multipart.
    let before = Snapshot::take(world.path());
    let req = pkg::client()
        .post(server.url("/registries"))
        .json(&json!({"hello": "world"}));
    pkg::send(req).assert_error(401, "UNAUTHORIZED", AUTH_MSG);
    before.assert_unchanged(world.path());

    // 0 before everything about the package: no token, bad checksum, undeclared namespace.
    let up = Upload::new(secret.clone()).checksum(Some(&wrong));
    refused(&world, &server, &up, 401, "UNAUTHORIZED", AUTH_MSG);

    // 4 before 5: wrong type and no checksum.
    let up = Upload::new(secret.clone())
        .bearer(PUBLISH)
        .content_type(Some("text/plain"))
        .checksum(None);
    refused(
        &world,
        &server,
        &up,
        400,
        "INVALID_FILE_TYPE",
        "File must be a tar.gz archive",
    );

    // 5 before 6 and 8: a bad checksum on an undeclared namespace.
    let up = Upload::new(secret.clone()).bearer(PUBLISH).checksum(Some(&wrong));
    refused(
        &world,
        &server,
        &up,
        400,
        "CHECKSUM_MISMATCH",
        "Checksum verification failed",
    );
    let up = Upload::new(b"not gzip".to_vec())
        .bearer("bad-token")
        .checksum(Some(&wrong));
    refused(
        &world,
        &server,
        &up,
        400,
        "CHECKSUM_MISMATCH",
        "Checksum verification failed",
    );

    // 6 before 7: not an archive, with an unknown token.
    let up = Upload::new(b"not gzip".to_vec()).bearer("bad-token");
    refused_code(&world, &server, &up, 400, "INVALID_ARCHIVE");

    // 7 before 8 and 9: manifest without version in an undeclared namespace, bad token.
    let up = Upload::new(pkg::package_raw(br#"{"namespace":"@secret","name":"x"}"#, &[])).bearer("bad-token");
    refused(
        &world,
        &server,
        &up,
        400,
        "UPLOAD_FAILED",
        "version is required in registry.json",
    );

    // 8 before 9: undeclared namespace with a read-only token.
    let up = Upload::new(secret).bearer("company-read-token");
    refused(
        &world,
        &server,
        &up,
        403,
        "NAMESPACE_NOT_ALLOWED",
        "Namespace @secret is not allowed",
    );

    // 9 before 10: invalid schema with an expired token.
    let mut bad = company_manifest("widget", &["templates/a.txt"]);
    bad["bogusField"] = json!(true);
    let bad_pkg = pkg::package(&bad, &[("templates/a.txt", b"x")]);
    let up = Upload::new(bad_pkg.clone()).bearer("company-expired-token");
    refused(
        &world,
        &server,
        &up,
        401,
        "TOKEN_EXPIRED",
        "Authentication token has expired",
    );
    let up = Upload::new(bad_pkg).bearer("company-read-token");
    refused(
        &world,
        &server,
        &up,
        403,
        "INSUFFICIENT_PERMISSIONS",
        "Token does not have publish permission for namespace @company",
    );

    // 10 before 11: invalid schema and a missing file.
    let mut bad = company_manifest("widget", &["templates/missing.txt"]);
    bad["priority"] = json!("high");
    let up = Upload::new(pkg::package(&bad, &[])).bearer(PUBLISH);
    refused_code(&world, &server, &up, 400, "SCHEMA_VALIDATION_FAILED");

    // 11 before 12: missing declared file, plus a symlink and an undeclared file elsewhere.
    let m = company_manifest("widget", &["templates/missing.txt"]);
    let p = pkg::targz(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        file("templates/zzz.txt", "x"),
        pkg::symlink("templates/link", "zzz.txt"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "FILE_NOT_FOUND",
        "File referenced in registry.json is missing or not a regular file: templates/missing.txt",
    );

    // UNSAFE_FILE before UNDECLARED_FILE, whatever the entry order.
    let m = company_manifest("widget", &["templates/a.txt"]);
    let p = pkg::targz(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        file("templates/a.txt", "x"),
        file("templates/aaa-undeclared.txt", "x"),
        pkg::fifo("templates/zzz-fifo"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused_code(&world, &server, &up, 400, "UNSAFE_FILE");

    // 12 before 13: an existing version with an undeclared file.
    accepted(
        &world,
        &server,
        &widget_upload("1.0.0"),
        "@company",
        "widget",
        "1.0.0",
        "@company/build/widget/1.0.0",
    );
    let m = pkg::manifest(
        "@company",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let p = pkg::package(&m, &[("templates/a.txt", b"x"), ("templates/b.txt", b"y")]);
    let up = Upload::new(p).bearer(PUBLISH);
    refused(
        &world,
        &server,
        &up,
        400,
        "UNDECLARED_FILE",
        "Package contains a file not declared in registry.json: templates/b.txt",
    );
}

/// Check 0 happens before the body is read: a 20 MiB unauthenticated upload is answered after
/// the headers, and the client can read the answer while (or instead of) sending the body.
#[test]
fn unauthenticated_big_body_is_answered_before_it_is_sent() {
    let (world, server) = start();
    let before = Snapshot::take(world.path());
    let total: u64 = 20 << 20;
    let mut s = pkg::raw_request_head(
        &server.base,
        &[
            ("Content-Type", "multipart/form-data; boundary=XyZ".into()),
            ("Content-Length", total.to_string()),
        ],
    );
    // A first MiB of the body, then wait for the answer: it must come without the rest.
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0u64;
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let mut reader = s.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, headers, body) =
        pkg::read_response(&mut reader).expect("401 arrives before the body is complete");
    assert!(sent < total);
    assert_eq!(status, 401);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"code": "UNAUTHORIZED", "message": AUTH_MSG}));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
        "{headers:?}"
    );
    // The rest of the body may be accepted (drained) or refused; either way the connection ends.
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    while sent < total {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    before.assert_unchanged(world.path());
}

// --- success -------------------------------------------------------------------------------

#[test]
fn storage_path_for_every_type_and_explicit_path() {
    let (world, server) = start();
    let cases = [
        ("registry:runtime", "rt", "runtimes/rt"),
        ("registry:framework", "fw", "frameworks/fw"),
        ("registry:build", "bd", "build/bd"),
        ("registry:feature", "ft", "features/ft"),
        ("registry:testing", "ts", "testing/ts"),
        ("registry:quality", "ql", "quality/ql"),
    ];
    for (ty, name, segs) in cases {
        let m = pkg::manifest("@company", name, "1.0.0", ty, &["templates/a.txt"]);
        let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
        let path = format!("@company/{segs}/1.0.0");
        accepted(&world, &server, &up, "@company", name, "1.0.0", &path);
        assert_eq!(
            std::fs::read_to_string(world.storage().join(format!("@company/{segs}/versions.json"))).unwrap(),
            pkg::versions_json(&["1.0.0"])
        );
        let (status, body) = pkg::get(&server.base, &format!("/registries/@company/{segs}"), Some(READ));
        assert_eq!(status, 200);
        assert_eq!(body, serde_json::to_vec_pretty(&m).unwrap());
    }
    // An explicit path wins over the type.
    let mut m = pkg::manifest("@company", "foo", "1.0.0", "registry:build", &["templates/a.txt"]);
    m["path"] = json!("legacy/foo");
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "foo",
        "1.0.0",
        "@company/legacy/foo/1.0.0",
    );
    assert!(!world.storage().join("@company/build/foo").exists());
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/legacy/foo/1.0.0/files/templates/a.txt",
        Some(READ),
    );
    assert_eq!((status, body), (200, b"x".to_vec()));
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/legacy/foo/versions",
        Some(READ),
    );
    assert_eq!((status, body), (200, pkg::versions_json(&["1.0.0"]).into_bytes()));
}

/// With an operator schema that does not require `type`, no type or an unknown one stores the
/// registry at `@ns/<name>` (SPEC §5.4, §5.5: uploads validate against `<SCHEMA_DIR>`).
#[test]
fn no_type_or_unknown_type_is_stored_under_the_name() {
    let world = World::new();
    std::fs::write(
        world.storage().join("schema/registry-item.json"),
        r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object"}"#,
    )
    .unwrap();
    let server = Server::world(&world);
    let mut m = pkg::manifest("@company", "plain", "1.0.0", "x", &["templates/a.txt"]);
    m.as_object_mut().unwrap().remove("type");
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "plain",
        "1.0.0",
        "@company/plain/1.0.0",
    );
    let m = pkg::manifest(
        "@company",
        "odd",
        "1.0.0",
        "registry:unknown",
        &["templates/a.txt"],
    );
    let up = Upload::new(pkg::package(&m, &[("templates/a.txt", b"x")])).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "odd",
        "1.0.0",
        "@company/odd/1.0.0",
    );
}

#[test]
fn versions_json_is_rebuilt_semver_descending() {
    let world = World::new();
    let reg = world.storage().join("@company/build/orderly");
    // On disk before the server starts: a real version not listed anywhere, and directories that
    // must be ignored (not SemVer, or without registry.json).
    let old = pkg::manifest("@company", "orderly", "0.9.0", "registry:build", &[]);
    for (d, with_manifest) in [
        ("0.9.0", true),
        ("not-a-version", true),
        ("v4.0.0", true),
        ("01.0.0", true),
        ("3.0.0", false),
    ] {
        std::fs::create_dir_all(reg.join(d)).unwrap();
        if with_manifest {
            std::fs::write(
                reg.join(d).join("registry.json"),
                serde_json::to_vec(&old).unwrap(),
            )
            .unwrap();
        }
    }
    std::fs::write(reg.join("3.0.0/notes.txt"), "no manifest here").unwrap();
    let server = Server::world(&world);

    let mut versions = ["1.0.0", "2.0.0-rc.1", "1.10.0", "2.0.0", "2.0.0-alpha", "1.2.0"];
    use rand::seq::SliceRandom;
    versions.shuffle(&mut rand::rng());
    let order = [
        "2.0.0",
        "2.0.0-rc.1",
        "2.0.0-alpha",
        "1.10.0",
        "1.2.0",
        "1.0.0",
        "0.9.0",
    ];
    let mut published = vec!["0.9.0"];
    for v in versions {
        let m = pkg::manifest("@company", "orderly", v, "registry:build", &["templates/a.txt"]);
        let up = Upload::new(pkg::package(&m, &[("templates/a.txt", v.as_bytes())])).bearer(PUBLISH);
        accepted(
            &world,
            &server,
            &up,
            "@company",
            "orderly",
            v,
            &format!("@company/build/orderly/{v}"),
        );
        published.push(v);
        let expected: Vec<&str> = order.iter().copied().filter(|o| published.contains(o)).collect();
        let text = std::fs::read_to_string(reg.join("versions.json")).unwrap();
        assert_eq!(
            text,
            pkg::versions_json(&expected),
            "after publishing {v} (order {versions:?})"
        );
    }
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/build/orderly/versions",
        Some(READ),
    );
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), pkg::versions_json(&order));
    let (status, body) = pkg::get(&server.base, "/registries/@company/build/orderly", Some(READ));
    assert_eq!(status, 200);
    let latest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(latest["version"], "2.0.0");
}

#[test]
fn registry_json_is_stored_byte_for_byte() {
    let (world, server) = start();
    let text = "{\"namespace\":\t\"@company\" ,\n\n   \"name\":\"oddfmt\",\r\n\"version\" : \"1.0.0\",\"type\":\"registry:build\",\"priority\":0,\n\t\"description\":\"caf\\u00e9 \u{2603} \\\"quoted\\\"\",\"files\":[{\"target\":\"a\",\"type\":\"registry:lib\",\"path\":\"./t/a.txt\"}]}   \n\n";
    let p = pkg::targz(&[
        dir("./"),
        raw_file(b"./registry.json", text.as_bytes()),
        dir("./t/"),
        file("./t/a.txt", b"\x00\x01binary\xff"),
    ]);
    let up = Upload::new(p).x_token(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "oddfmt",
        "1.0.0",
        "@company/build/oddfmt/1.0.0",
    );
    let stored = world.storage().join("@company/build/oddfmt/1.0.0");
    assert_eq!(
        std::fs::read(stored.join("registry.json")).unwrap(),
        text.as_bytes()
    );
    assert_eq!(
        std::fs::read(stored.join("t/a.txt")).unwrap(),
        b"\x00\x01binary\xff"
    );
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/build/oddfmt/1.0.0",
        Some(READ),
    );
    assert_eq!((status, body), (200, text.as_bytes().to_vec()));
    let (status, body) = pkg::get(&server.base, "/registries/@company/build/oddfmt", Some(READ));
    assert_eq!((status, body), (200, text.as_bytes().to_vec()));
    let (status, body) = pkg::get(
        &server.base,
        "/registries/@company/build/oddfmt/1.0.0/files/t/a.txt",
        Some(READ),
    );
    assert_eq!((status, body), (200, b"\x00\x01binary\xff".to_vec()));
    // Nothing but what the package held: registry.json and t/a.txt.
    let mut names: Vec<String> = walk_names(&stored);
    names.sort();
    assert_eq!(names, ["registry.json", "t", "t/a.txt"]);
}

fn walk_names(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn token_headers_and_gated_publish() {
    let (world, server) = start();
    let ok = |up: Upload, v: &str| {
        accepted(
            &world,
            &server,
            &up,
            "@company",
            "widget",
            v,
            &format!("@company/build/widget/{v}"),
        );
    };
    ok(Upload::new(widget("1.0.0")).bearer(PUBLISH), "1.0.0");
    ok(Upload::new(widget("1.1.0")).x_token(PUBLISH), "1.1.0");
    ok(
        Upload::new(widget("1.2.0")).header("Authorization", &format!("bearer   {PUBLISH}  ")),
        "1.2.0",
    );
    ok(Upload::new(widget("1.3.0")).bearer(ADMIN_TOKEN), "1.3.0");
    ok(Upload::new(widget("1.4.0")).x_token(ADMIN_TOKEN), "1.4.0");
    // @other: a token with publish: true.
    let p = pkg::simple("@other", "thing", "0.1.0");
    let up = Upload::new(p).bearer("other-read-token");
    accepted(
        &world,
        &server,
        &up,
        "@other",
        "thing",
        "0.1.0",
        "@other/build/thing/0.1.0",
    );
    let (status, body) = pkg::get(&server.base, "/registries/@company/build/widget/versions", None);
    assert_eq!(
        status,
        401,
        "gated reads still need a token: {}",
        String::from_utf8_lossy(&body)
    );
    let text = std::fs::read_to_string(world.storage().join("@company/build/widget/versions.json")).unwrap();
    assert_eq!(
        text,
        pkg::versions_json(&["1.4.0", "1.3.0", "1.2.0", "1.1.0", "1.0.0"])
    );
}

#[test]
fn dot_slash_prefixed_entries() {
    let (world, server) = start();
    let m = company_manifest("dotted", &["templates/a.txt", "./templates/sub/b.txt"]);
    let p = pkg::targz(&[
        dir("./"),
        raw_file(b"./registry.json", serde_json::to_vec(&m).unwrap()),
        dir("./templates/"),
        file("./templates/a.txt", "A"),
        dir("./templates/sub"),
        file("./templates/sub/b.txt", "B"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "dotted",
        "1.0.0",
        "@company/build/dotted/1.0.0",
    );
    let stored = world.storage().join("@company/build/dotted/1.0.0");
    assert_eq!(std::fs::read(stored.join("templates/a.txt")).unwrap(), b"A");
    assert_eq!(std::fs::read(stored.join("templates/sub/b.txt")).unwrap(), b"B");
}

/// SPEC §5.3: "outside an in-flight upload that directory is empty or absent", after a success
/// and after a refusal alike.
#[test]
fn tmp_is_empty_or_absent_after_uploads() {
    let (world, server) = start();
    pkg::assert_tmp_empty_or_absent(&world.storage());
    let reply = widget_upload("1.0.0").send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    pkg::assert_tmp_empty_or_absent(&world.storage());
    let reply = widget_upload("1.0.0").send(&server.base);
    assert_eq!(reply.status, 409, "{}", reply.text);
    pkg::assert_tmp_empty_or_absent(&world.storage());
    let reply = widget_upload("1.1.0").checksum(Some("00")).send(&server.base);
    assert_eq!(reply.status, 400, "{}", reply.text);
    pkg::assert_tmp_empty_or_absent(&world.storage());
}

#[test]
fn content_only_files_and_empty_directories() {
    let (world, server) = start();
    let mut m = company_manifest("contentonly", &[]);
    m["files"] = json!([{"target": "x.json", "type": "registry:config", "content": "{}"}]);
    let p = pkg::targz(&[
        raw_file(b"registry.json", serde_json::to_vec(&m).unwrap()),
        dir("empty/"),
    ]);
    let up = Upload::new(p).bearer(PUBLISH);
    accepted(
        &world,
        &server,
        &up,
        "@company",
        "contentonly",
        "1.0.0",
        "@company/build/contentonly/1.0.0",
    );
}
