//! Guards around `POST /registries` that keep the SPEC's checks (§5.1) and their answers:
//!
//! - an upload whose token can publish nowhere is judged without writing a byte (nothing ever
//!   appears under `<root>/.tmp`), with exactly the answer the staged path gives;
//! - `MAX_CONCURRENT_UPLOADS` and the upload queue (`UPLOAD_QUEUE_MAX`,
//!   `UPLOAD_QUEUE_WAIT_SECONDS`: first come, first served; 503 + `Retry-After` when full or too
//!   long), `UPLOAD_STALL_SECONDS` and `UPLOAD_TIMEOUT_SECONDS` (408, slot freed, nothing left
//!   behind);
//! - names too long for a filesystem are a 400, and log lines carry a bounded prefix of them;
//! - versions equal in SemVer precedence (`1.0.0`, `1.0.0+b`) do not coexist, racing or not;
//! - duplicate keys in `registry.json` are `INVALID_MANIFEST`.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{start_with, World};
use pkg::{dir, file, raw_file, symlink, Reply, Snapshot, Upload};
use serde_json::{json, Value};

/// Publishes in `@company`.
const PUBLISH: &str = "company-publish-token";
/// Reads `@company`, publishes nowhere: every upload with it can only fail.
const READ: &str = "company-read-token";
/// Publishes in `@other` only: its uploads go through staging, and fail in `@company`.
const STAGED: &str = "other-read-token";

const BOUNDARY: &str = "----rack-limits-boundary";

// --- helpers ---------------------------------------------------------------------------------

/// Everything under `<storage>/.tmp` (files and directories), recursively.
fn tmp_entries(storage: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&storage.join(".tmp"), &mut out);
    out
}

/// The staging directories of uploads in flight.
fn staging_dirs(storage: &Path) -> Vec<PathBuf> {
    tmp_entries(storage)
        .into_iter()
        .filter(|p| {
            p.parent() == Some(&storage.join(".tmp"))
                && p.file_name().unwrap().to_string_lossy().starts_with("upload-")
        })
        .collect()
}

/// Poll until `cond` holds (a state the server reaches by itself); panic after 30 s.
#[track_caller]
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A multipart body: checksum field, then the package as `application/gzip`.
fn body_of(package: &[u8]) -> Vec<u8> {
    let checksum = pkg::sha256_hex(package);
    pkg::multipart_body(
        BOUNDARY,
        &[
            ("checksum", None, None, checksum.as_bytes()),
            ("package", Some("p.tar.gz"), Some("application/gzip"), package),
        ],
    )
}

/// An upload sent by hand over one connection, so that its body can be sent in pieces.
struct SlowUpload {
    stream: TcpStream,
    body: Vec<u8>,
    sent: usize,
}

impl SlowUpload {
    /// Connect and send the request head (with `Content-Length`) and no body yet.
    fn open(base: &str, token: &str, package: &[u8]) -> SlowUpload {
        let body = body_of(package);
        let stream = pkg::raw_request_head(
            base,
            &[
                ("Authorization", format!("Bearer {token}")),
                (
                    "Content-Type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                ),
                ("Content-Length", body.len().to_string()),
            ],
        );
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        SlowUpload {
            stream,
            body,
            sent: 0,
        }
    }

    /// Send the body up to `fraction` of its length.
    fn send_until(&mut self, fraction: f64) {
        let end = ((self.body.len() as f64) * fraction) as usize;
        if end > self.sent {
            self.stream.write_all(&self.body[self.sent..end]).unwrap();
            self.sent = end;
        }
    }

    /// Send the rest and read the answer.
    fn finish(mut self) -> (u16, Vec<(String, String)>, Value) {
        self.send_until(1.0);
        self.answer()
    }

    /// Read the answer (without sending anything more).
    fn answer(&mut self) -> (u16, Vec<(String, String)>, Value) {
        let (status, headers, body) = pkg::read_response(&mut self.stream).expect("a response");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, headers, json)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn company(name: &str, version: &str) -> Value {
    pkg::manifest("@company", name, version, "registry:build", &["templates/a.txt"])
}

/// A valid `@company` package whose template file is `size` bytes of noise (so that its body
/// takes many chunks).
fn big_company(name: &str, version: &str, size: usize) -> Vec<u8> {
    let data = pkg::noise(size, 7);
    pkg::package(&company(name, version), &[("templates/a.txt", &data)])
}

/// A `.tar.gz` built with the `tar` crate's builder (GNU long names for paths over 100 bytes).
fn targz_long(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    pkg::gzip(&b.into_inner().unwrap())
}

/// A GNU long-name metadata entry of `len` bytes followed by a small file.
fn huge_long_name(len: usize) -> Vec<u8> {
    let mut tar = Vec::new();
    tar.extend_from_slice(
        pkg::raw_header(b"././@LongLink", tar::EntryType::GNULongName, len as u64, None).as_bytes(),
    );
    tar.extend(vec![b'n'; len]);
    tar.resize(pkg::padded(tar.len() as u64) as usize, 0);
    tar.extend_from_slice(&pkg::entry_bytes(&file("x", "x")));
    tar.extend_from_slice(&[0u8; 1024]);
    pkg::gzip(&tar)
}

fn manifest_bytes(m: &Value) -> Vec<u8> {
    serde_json::to_vec(m).unwrap()
}

/// `text` with `extra` inserted right after its first `{` (a duplicate key, say).
fn with_key(text: &[u8], extra: &str) -> Vec<u8> {
    let text = std::str::from_utf8(text).unwrap();
    text.replacen('{', &format!("{{{extra},"), 1).into_bytes()
}

// --- uploads that can only fail ------------------------------------------------------------

/// The packages of checks 3 to 7 (each wrapped in an upload builder), for the comparison below.
fn early_failures() -> Vec<(&'static str, Upload)> {
    let good = pkg::simple("@company", "judged", "1.0.0");
    let m = manifest_bytes(&company("judged", "1.0.0"));
    let with = |entries: Vec<pkg::Entry>| Upload::new(pkg::targz(&entries));
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 6] ^= 0xff;
    let many: Vec<pkg::Entry> = std::iter::once(raw_file(b"registry.json", &m))
        .chain((0..30).map(|i| file(&format!("f{i}"), "x")))
        .collect();
    let big_manifest = {
        let mut v = company("judged", "1.0.0");
        v["description"] = json!("d".repeat(8192));
        manifest_bytes(&v)
    };
    let long_segment = format!("templates/{}", "s".repeat(300));
    let long_path = vec!["p".repeat(250); 5].join("/");
    vec![
        (
            "checksum mismatch",
            Upload::new(good.clone()).checksum(Some(&"0".repeat(64))),
        ),
        (
            "file type",
            Upload::new(good.clone()).content_type(Some("text/plain")),
        ),
        ("not gzip", Upload::new(b"plain text".to_vec())),
        ("empty file part", Upload::new(Vec::new())),
        (
            "uncompressed tar",
            Upload::new(pkg::tar_bytes(&[file("registry.json", &m)])),
        ),
        ("truncated gzip", Upload::new(truncated)),
        ("bad gzip trailer", Upload::new(bad_crc)),
        ("too many entries", with(many)),
        (
            "absolute path",
            with(vec![raw_file(b"registry.json", &m), file("/etc/x", "x")]),
        ),
        (
            "dot-dot path",
            with(vec![raw_file(b"registry.json", &m), file("a/../../x", "x")]),
        ),
        (
            "link outside",
            with(vec![raw_file(b"registry.json", &m), symlink("l", "/etc/passwd")]),
        ),
        (
            "duplicate entry",
            with(vec![
                raw_file(b"registry.json", &m),
                file("a", "1"),
                file("./a", "2"),
            ]),
        ),
        (
            "file under a file",
            with(vec![
                raw_file(b"registry.json", &m),
                file("a", "1"),
                file("a/b", "2"),
            ]),
        ),
        (
            "file over a directory",
            with(vec![
                raw_file(b"registry.json", &m),
                file("d/x", "1"),
                file("d", "2"),
            ]),
        ),
        (
            "directory over a file",
            with(vec![raw_file(b"registry.json", &m), file("d", "1"), dir("d/e")]),
        ),
        (
            "manifest too large",
            with(vec![raw_file(b"registry.json", &big_manifest)]),
        ),
        ("oversized metadata entry", Upload::new(huge_long_name(70 * 1024))),
        (
            "segment too long",
            Upload::new(targz_long(&[
                ("registry.json", Some(&m)),
                (&long_segment, Some(b"x")),
            ])),
        ),
        (
            "path too long",
            Upload::new(targz_long(&[("registry.json", Some(&m)), (&long_path, None)])),
        ),
        ("no registry.json", with(vec![file("templates/a.txt", "x")])),
        (
            "registry.json is a directory",
            with(vec![dir("registry.json"), file("registry.json/x", "x")]),
        ),
        (
            "registry.json not JSON",
            with(vec![raw_file(b"registry.json", b"{nope")]),
        ),
        (
            "no name",
            with(vec![raw_file(
                b"registry.json",
                br#"{"namespace":"@company","version":"1.0.0"}"#,
            )]),
        ),
        (
            "duplicate key",
            with(vec![raw_file(
                b"registry.json",
                with_key(&m, r#""name":"other""#),
            )]),
        ),
    ]
}

#[test]
fn hopeless_uploads_answer_as_the_staged_path_and_write_nothing() {
    let (world, server) = start_with(&[("MAX_ARCHIVE_ENTRIES", "20"), ("MAX_MANIFEST_BYTES", "4096")]);
    let cases = early_failures();
    // Through staging first: a token that publishes somewhere (in `@other`).
    let staged: Vec<Reply> = cases
        .iter()
        .map(|(_, up)| up.clone().bearer(STAGED).send(&server.base))
        .collect();
    pkg::assert_tmp_clean(&world.storage());

    let before = Snapshot::take(world.path());
    let storage = world.storage();
    let watch = pkg::MaxWatch::start(move || tmp_entries(&storage).len() as u64);
    for ((label, up), staged) in cases.iter().zip(&staged) {
        let judged = up.clone().bearer(READ).send(&server.base);
        assert!((400..500).contains(&judged.status), "{label}: {}", judged.text);
        assert_eq!(
            (judged.status, judged.json()),
            (staged.status, staged.json()),
            "{label}: the same answer with and without staging"
        );
    }
    // Checks 8 and 9, each answer as the SPEC orders them.
    let valid = pkg::simple("@company", "judged", "1.0.0");
    let elsewhere = pkg::simple("@nowhere", "judged", "1.0.0");
    let anonymous = pkg::simple("@rack", "judged", "1.0.0");
    let refused =
        |package: &[u8], token: &str| Upload::new(package.to_vec()).bearer(token).send(&server.base);
    refused(&elsewhere, READ).assert_error(403, "NAMESPACE_NOT_ALLOWED", "Namespace @nowhere is not allowed");
    refused(&anonymous, READ).assert_code(403, "ANONYMOUS_UPLOAD_FORBIDDEN");
    refused(&valid, READ).assert_error(
        403,
        "INSUFFICIENT_PERMISSIONS",
        "Token does not have publish permission for namespace @company",
    );
    refused(&valid, "no-such-token").assert_error(401, "INVALID_TOKEN", "Provided token is invalid");
    refused(&valid, "company-expired-token").assert_error(
        401,
        "TOKEN_EXPIRED",
        "Authentication token has expired",
    );
    // The archive is judged before the token (check 6 before check 9).
    refused(b"junk", "no-such-token").assert_code(400, "INVALID_ARCHIVE");
    let max = watch.stop();
    assert_eq!(max, 0, "an upload that could only fail wrote under .tmp");
    before.assert_unchanged(world.path());

    // The codes of the comparison above, pinned (so that both paths cannot drift together).
    let codes: Vec<(&str, String)> = cases
        .iter()
        .zip(&staged)
        .map(|((label, _), r)| (*label, r.json()["code"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(&str, String)> = cases
        .iter()
        .map(|(label, _)| {
            let code = match *label {
                "checksum mismatch" => "CHECKSUM_MISMATCH",
                "file type" => "INVALID_FILE_TYPE",
                "no registry.json"
                | "registry.json is a directory"
                | "registry.json not JSON"
                | "no name" => "UPLOAD_FAILED",
                "duplicate key" => "INVALID_MANIFEST",
                _ => "INVALID_ARCHIVE",
            };
            (*label, code.to_owned())
        })
        .collect();
    assert_eq!(codes, expected);
}

#[test]
fn a_slow_hopeless_upload_never_touches_tmp() {
    let (world, server) = start_with(&[]);
    let storage = world.storage();
    let package = big_company("slow", "1.0.0", 4 << 20);

    // The control: with a publishing token, staging shows up while the body is in flight.
    let mut up = SlowUpload::open(&server.base, PUBLISH, &package);
    up.send_until(0.5);
    wait_until("the staged package", || {
        staging_dirs(&storage)
            .iter()
            .any(|d| d.join("package.tar.gz").is_file())
    });
    let (status, _, body) = up.finish();
    assert_eq!(status, 201, "{body}");
    pkg::assert_tmp_clean(&storage);

    // The same body with a token that can publish nowhere: nothing under .tmp, ever.
    let before = Snapshot::take(world.path());
    let seen_before = tmp_entries(&storage);
    let watch = {
        let storage = storage.clone();
        pkg::MaxWatch::start(move || staging_dirs(&storage).len() as u64)
    };
    let mut up = SlowUpload::open(&server.base, READ, &big_company("slow", "2.0.0", 4 << 20));
    for step in 1..=8 {
        up.send_until(step as f64 / 10.0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(tmp_entries(&storage), seen_before, "after {step}0 % of the body");
    }
    let (status, _, body) = up.finish();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_PERMISSIONS");
    assert_eq!(watch.stop(), 0, "a staging directory appeared");
    assert_eq!(tmp_entries(&storage), seen_before);
    before.assert_unchanged(world.path());
}

// --- concurrency cap and body timeout ------------------------------------------------------

/// A gauge or counter of `/metrics` (`series` with its labels, e.g. `registry_uploads_queued`).
fn metric(base: &str, series: &str) -> Option<f64> {
    let (_, body) = pkg::get(base, "/metrics", None);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An upload's head sent with no body: the server must answer from its headers alone.
fn head_only(base: &str, token: &str) -> TcpStream {
    let s = pkg::raw_request_head(
        base,
        &[
            ("Authorization", format!("Bearer {token}")),
            (
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ),
            ("Content-Length", "4096".into()),
        ],
    );
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// The 503 of an upload refused for lack of a slot.
#[track_caller]
fn assert_busy((status, headers, reply): (u16, Vec<(String, String)>, Vec<u8>)) {
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(status, 503, "{reply}");
    assert_eq!(
        reply,
        json!({"code": "SERVICE_UNAVAILABLE", "message": "Too many uploads in progress. Try again in 5s"})
    );
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
}

/// Over `MAX_CONCURRENT_UPLOADS`, uploads wait (bodies unread) in a queue of `UPLOAD_QUEUE_MAX`
/// and are served first come, first served; only a full queue is refused, from its headers
/// alone; an upload whose token can publish nowhere takes no slot at all. Today's code refused
/// every upload over the cap with a 503.
#[test]
fn uploads_over_the_cap_wait_in_order_in_a_bounded_queue() {
    let (world, server) = start_with(&[("MAX_CONCURRENT_UPLOADS", "1"), ("UPLOAD_QUEUE_MAX", "3")]);
    let storage = world.storage();
    let mut holder = SlowUpload::open(&server.base, PUBLISH, &big_company("capped", "1.0.0", 1 << 20));
    holder.send_until(0.3);
    wait_until("the slot taken", || staging_dirs(&storage).len() == 1);

    // Three uploads of one version, queued in a known order, their bodies sent whole (they are
    // small enough to wait in socket buffers).
    let contenders: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let tag = format!("contender {i}");
            let mut m = company("queued", "2.0.0");
            m["description"] = json!(tag);
            (
                tag.clone(),
                pkg::package(&m, &[("templates/a.txt", tag.as_bytes())]),
            )
        })
        .collect();
    let mut queued = Vec::new();
    for (i, (_, package)) in contenders.iter().enumerate() {
        let mut up = SlowUpload::open(&server.base, PUBLISH, package);
        up.send_until(1.0);
        queued.push(up);
        wait_until("the upload queued", || {
            metric(&server.base, "registry_uploads_queued") == Some(i as f64 + 1.0)
        });
    }
    assert_eq!(staging_dirs(&storage).len(), 1, "queued bodies are not read");

    // The queue is full: the next is refused from its headers alone.
    assert_busy(pkg::read_response(&mut head_only(&server.base, PUBLISH)).expect("a response"));
    // A token that can publish nowhere takes no publishing slot: judged at once.
    let (status, _, reply) =
        SlowUpload::open(&server.base, READ, &pkg::simple("@company", "queued", "3.0.0")).finish();
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["code"], "INSUFFICIENT_PERMISSIONS");

    let (status, _, reply) = holder.finish();
    assert_eq!(status, 201, "{reply}");
    // First come, first served: the first queued wins the version, the others find it taken.
    let answers: Vec<u16> = queued.iter_mut().map(|up| up.answer().0).collect();
    assert_eq!(answers, [201, 409, 409]);
    let stored = storage.join("@company/build/queued/2.0.0/templates/a.txt");
    assert_eq!(std::fs::read_to_string(stored).unwrap(), contenders[0].0);
    assert_eq!(metric(&server.base, "registry_uploads_queued"), Some(0.0));
    pkg::assert_tmp_clean(&storage);
}

/// A wait in the queue longer than `UPLOAD_QUEUE_WAIT_SECONDS` is refused (503 with
/// `Retry-After`), after having waited; `UPLOAD_QUEUE_MAX=0` refuses at once, as before the
/// queue existed. Today's code refused at once whatever the settings.
#[test]
fn a_long_wait_for_a_slot_is_503_and_no_queue_refuses_at_once() {
    let (world, server) = start_with(&[
        ("MAX_CONCURRENT_UPLOADS", "1"),
        ("UPLOAD_QUEUE_WAIT_SECONDS", "2"),
    ]);
    let storage = world.storage();
    let mut holder = SlowUpload::open(&server.base, PUBLISH, &big_company("waited", "1.0.0", 1 << 20));
    holder.send_until(0.3);
    wait_until("the slot taken", || staging_dirs(&storage).len() == 1);
    let sent = Instant::now();
    let mut waiting = head_only(&server.base, PUBLISH);
    wait_until("the upload queued", || {
        metric(&server.base, "registry_uploads_queued") == Some(1.0)
    });
    assert_busy(pkg::read_response(&mut waiting).expect("a response"));
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "refused after {:?}",
        sent.elapsed()
    );
    assert_eq!(metric(&server.base, "registry_uploads_queued"), Some(0.0));
    holder.send_until(0.6);
    let (status, _, reply) = holder.finish();
    assert_eq!(status, 201, "{reply}");
    drop(server);

    let (world, server) = start_with(&[("MAX_CONCURRENT_UPLOADS", "1"), ("UPLOAD_QUEUE_MAX", "0")]);
    let mut holder = SlowUpload::open(&server.base, PUBLISH, &big_company("waited", "1.0.0", 1 << 20));
    holder.send_until(0.3);
    wait_until("the slot taken", || staging_dirs(&world.storage()).len() == 1);
    assert_busy(pkg::read_response(&mut head_only(&server.base, PUBLISH)).expect("a response"));
    let (status, _, reply) = holder.finish();
    assert_eq!(status, 201, "{reply}");
}

/// A body that stops moving is cut off after `UPLOAD_STALL_SECONDS` (408), whatever its token,
/// and its slot is free at once; a slow body that keeps moving keeps its slot past many stall
/// intervals. Today's code waited for the whole `UPLOAD_TIMEOUT_SECONDS` (300 s).
#[test]
fn a_stalled_body_is_408_after_the_stall_interval_and_frees_its_slot() {
    let (world, server) = start_with(&[
        ("UPLOAD_STALL_SECONDS", "2"),
        ("MAX_CONCURRENT_UPLOADS", "1"),
        ("UPLOAD_QUEUE_MAX", "0"),
    ]);
    let storage = world.storage();
    // Slow but moving: a tenth of the body every 600 ms (6 s in all, three stall intervals).
    let mut slow = SlowUpload::open(&server.base, PUBLISH, &big_company("moving", "1.0.0", 256 << 10));
    for step in 1..=10 {
        slow.send_until(step as f64 / 10.0);
        std::thread::sleep(Duration::from_millis(600));
    }
    let (status, _, reply) = slow.answer();
    assert_eq!(status, 201, "{reply}");

    for (token, version) in [(PUBLISH, "2.0.0"), (READ, "3.0.0")] {
        let mut up = SlowUpload::open(&server.base, token, &big_company("stalled", version, 1 << 20));
        up.send_until(0.5);
        let stalled_at = Instant::now();
        let (status, headers, body) = up.answer();
        assert_eq!(status, 408, "{token}: {body}");
        assert_eq!(
            body,
            json!({"code": "REQUEST_TIMEOUT", "message": "Upload body stalled: no data received for 2s"})
        );
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert!(
            stalled_at.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            stalled_at.elapsed()
        );
        let mut buf = [0u8; 64];
        match up.stream.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "nothing follows the answer"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        // Its slot is free at once (no queue: a held publishing slot would make the next
        // upload a 503).
        for slot in ["publish", "judge"] {
            let series = format!("registry_uploads_in_progress{{slot=\"{slot}\"}}");
            assert_eq!(metric(&server.base, &series), Some(0.0), "{token}: {series}");
        }
        let reply = Upload::new(pkg::simple("@company", "after", version))
            .bearer(PUBLISH)
            .send(&server.base);
        assert_eq!(reply.status, 201, "{token}: {}", reply.text);
    }
    pkg::assert_tmp_clean(&storage);
}

#[test]
fn a_stalled_body_is_cut_off_and_leaves_nothing() {
    let (world, server) = start_with(&[("UPLOAD_TIMEOUT_SECONDS", "2"), ("MAX_CONCURRENT_UPLOADS", "1")]);
    let storage = world.storage();
    let before = Snapshot::take(world.path());
    for token in [PUBLISH, READ] {
        let mut up = SlowUpload::open(&server.base, token, &big_company("stalled", "1.0.0", 1 << 20));
        up.send_until(0.5);
        if token == PUBLISH {
            // Something was staged, and must go.
            wait_until("the staged package", || !staging_dirs(&storage).is_empty());
        }
        // Nothing more is sent: the server answers on its own and closes the connection.
        let (status, headers, body) = up.answer();
        assert_eq!(status, 408, "{body}");
        assert_eq!(
            body,
            json!({"code": "REQUEST_TIMEOUT", "message": "Upload body was not received within 2s"})
        );
        assert_eq!(header(&headers, "connection"), Some("close"));
        // Closed by the server (not left open until our read timeout).
        let mut buf = [0u8; 64];
        match up.stream.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "nothing follows the answer"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        pkg::assert_tmp_clean(&storage);
        before.assert_unchanged(world.path());
    }
    // The one upload slot was released.
    let reply = Upload::new(pkg::simple("@company", "stalled", "1.0.0"))
        .bearer(PUBLISH)
        .send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
}

// --- names too long for a filesystem ---------------------------------------------------------

#[test]
fn names_too_long_for_a_filesystem_are_400_and_logged_clipped() {
    let (world, server) = start_with(&[]);
    let before = Snapshot::take(world.path());
    let send = |package: Vec<u8>| Upload::new(package).bearer(PUBLISH).send(&server.base);
    let m = manifest_bytes(&company("long", "1.0.0"));

    let seg = format!("templates/{}", "s".repeat(256));
    let reply = send(targz_long(&[("registry.json", Some(&m)), (&seg, Some(b"x"))]));
    reply.assert_code(400, "INVALID_ARCHIVE");
    assert!(
        reply.message().contains("256 bytes long (at most 255)"),
        "{}",
        reply.text
    );
    // 255 bytes is fine as far as check 6 goes (the file is then undeclared: check 12).
    let ok_seg = format!("templates/{}", "s".repeat(255));
    send(targz_long(&[
        ("registry.json", Some(&m)),
        ("templates/a.txt", Some(b"x")),
        (&ok_seg, Some(b"x")),
    ]))
    .assert_code(400, "UNDECLARED_FILE");

    let deep = vec!["p".repeat(250); 5].join("/");
    let reply = send(targz_long(&[("registry.json", Some(&m)), (&deep, None)]));
    reply.assert_code(400, "INVALID_ARCHIVE");
    assert!(reply.message().contains("(at most 1024)"), "{}", reply.text);
    assert!(
        reply.message().len() < 600,
        "the message quotes a bounded prefix: {}",
        reply.text
    );

    // A registry name or version no storage key can hold: refused, not a 500.
    let long_name = "n".repeat(5000);
    let reply = send(pkg::package(
        &company(&long_name, "1.0.0"),
        &[("templates/a.txt", b"x")],
    ));
    reply.assert_code(400, "SCHEMA_VALIDATION_FAILED");
    assert!(reply.message().contains("too long to store"), "{}", reply.text);
    let long_version = format!("1.0.0-{}", "v".repeat(300));
    let reply = send(pkg::package(
        &company("long", &long_version),
        &[("templates/a.txt", b"x")],
    ));
    reply.assert_code(400, "SCHEMA_VALIDATION_FAILED");
    assert!(reply.message().contains("at most 255"), "{}", reply.text);
    before.assert_unchanged(world.path());

    // The refused upload's audit record names it, by a bounded prefix only.
    wait_until("the audit record", || server.output().contains(&"n".repeat(200)));
    let out = server.output();
    assert!(
        !out.contains(&"n".repeat(257)),
        "a log line holds more than 256 bytes of a name"
    );
    assert!(!out.contains(&"v".repeat(257)));
}

// --- versions equal in precedence --------------------------------------------------------------

fn widget(version: &str) -> Upload {
    Upload::new(pkg::package(
        &company("widget", version),
        &[("templates/a.txt", version.as_bytes())],
    ))
    .bearer(PUBLISH)
}

fn versions_of(world: &World, registry: &str) -> Vec<String> {
    let text = std::fs::read_to_string(world.storage().join(registry).join("versions.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn versions_equal_in_precedence_are_version_exists() {
    let world = World::new();
    // Put there by hand (an operator's copy), listed nowhere.
    let by_hand = world.storage().join("@company/build/widget/1.5.0+ops");
    std::fs::create_dir_all(&by_hand).unwrap();
    std::fs::write(
        by_hand.join("registry.json"),
        manifest_bytes(&company("widget", "1.5.0+ops")),
    )
    .unwrap();
    // Listed in versions.json only.
    let listed = world.storage().join("@company/build/listed");
    std::fs::create_dir_all(&listed).unwrap();
    std::fs::write(listed.join("versions.json"), pkg::versions_json(&["3.0.0+gone"])).unwrap();
    let server = common::Server::world(&world);
    let exists = |up: Upload, stored: &str| {
        let before = Snapshot::take(world.path());
        let reply = up.send(&server.base);
        reply.assert_error(
            409,
            "VERSION_EXISTS",
            &format!("Registry {stored} already exists"),
        );
        before.assert_unchanged(world.path());
    };
    let created = |up: Upload| {
        let reply = up.send(&server.base);
        assert_eq!(reply.status, 201, "{}", reply.text);
    };

    created(widget("1.0.0"));
    exists(widget("1.0.0"), "@company/build/widget@1.0.0");
    exists(widget("1.0.0+build.1"), "@company/build/widget@1.0.0");
    created(widget("2.0.0+build.1"));
    exists(widget("2.0.0+build.2"), "@company/build/widget@2.0.0+build.1");
    exists(widget("2.0.0"), "@company/build/widget@2.0.0+build.1");
    // Other precedences are other versions.
    created(widget("2.0.0-rc.1"));
    created(widget("2.0.1+build.1"));
    exists(widget("1.5.0"), "@company/build/widget@1.5.0+ops");
    let m = pkg::manifest("@company", "listed", "3.0.0", "registry:build", &[]);
    exists(
        Upload::new(pkg::package(&m, &[])).bearer(PUBLISH),
        "@company/build/listed@3.0.0+gone",
    );
    assert_eq!(
        versions_of(&world, "@company/build/widget"),
        [
            "2.0.1+build.1",
            "2.0.0+build.1",
            "2.0.0-rc.1",
            "1.5.0+ops",
            "1.0.0"
        ]
    );
}

#[test]
fn racing_versions_equal_in_precedence_have_one_winner() {
    let (world, server) = start_with(&[("MAX_CONCURRENT_UPLOADS", "64")]);
    for round in 1..=3 {
        let versions: Vec<String> = (0..8)
            .map(|i| match i {
                0 => format!("{round}.0.0"),
                i => format!("{round}.0.0+racer.{i}"),
            })
            .collect();
        let barrier = Arc::new(Barrier::new(versions.len()));
        let handles: Vec<_> = versions
            .iter()
            .map(|v| {
                let (up, base, barrier, v) = (widget(v), server.base.clone(), barrier.clone(), v.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (v, up.send(&base))
                })
            })
            .collect();
        let results: Vec<(String, Reply)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&String> = results
            .iter()
            .filter(|(_, r)| r.status == 201)
            .map(|(v, _)| v)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in results.iter().filter(|(_, r)| r.status != 201) {
            r.assert_code(409, "VERSION_EXISTS");
        }
        let dirs: Vec<String> = std::fs::read_dir(world.storage().join("@company/build/widget"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{round}.0.0")))
            .collect();
        assert_eq!(dirs, [winners[0].clone()], "round {round}: one version stored");
        assert!(versions_of(&world, "@company/build/widget").contains(winners[0]));
    }
    assert_eq!(versions_of(&world, "@company/build/widget").len(), 3);
    pkg::assert_tmp_clean(&world.storage());
}

// --- duplicate keys ----------------------------------------------------------------------------

#[test]
fn duplicate_keys_in_registry_json_are_invalid_manifest() {
    let (world, server) = start_with(&[]);
    let m = manifest_bytes(&company("dupes", "1.0.0"));
    let send = |manifest: &[u8]| {
        let before = Snapshot::take(world.path());
        let reply = Upload::new(pkg::package_raw(manifest, &[("templates/a.txt", b"x")]))
            .bearer(PUBLISH)
            .send(&server.base);
        before.assert_unchanged(world.path());
        reply
    };
    // The last one would win: a namespace the token cannot publish to...
    send(&with_key(&m, r#""namespace":"@other""#)).assert_error(
        400,
        "INVALID_MANIFEST",
        r#"registry.json has a duplicate key "namespace" at the top level"#,
    );
    // ... or the reverse, which would publish to @company.
    let text = String::from_utf8(m.clone()).unwrap();
    let reversed = text.replacen(
        r#""namespace":"@company""#,
        r#""namespace":"@other","namespace":"@company""#,
        1,
    );
    assert_ne!(reversed, text);
    send(reversed.as_bytes()).assert_code(400, "INVALID_MANIFEST");
    // At any depth.
    let nested = text.replacen(r#""target":"#, r#""target":"x","target":"#, 1);
    assert_ne!(nested, text);
    send(nested.as_bytes()).assert_error(
        400,
        "INVALID_MANIFEST",
        r#"registry.json has a duplicate key "target" in /files/0"#,
    );
    // Part of check 7: after "is JSON", before the required fields and the namespace check.
    send(b"{\"a\":1,").assert_code(400, "UPLOAD_FAILED");
    send(br#"{"version":"1","version":"2"}"#).assert_code(400, "INVALID_MANIFEST");
    send(&with_key(
        &manifest_bytes(&pkg::manifest(
            "@nowhere",
            "dupes",
            "1.0.0",
            "registry:build",
            &["templates/a.txt"],
        )),
        r#""name":"dupes""#,
    ))
    .assert_code(400, "INVALID_MANIFEST");
    // Equal objects side by side are not duplicates.
    let mut fine = company("dupes", "1.0.0");
    fine["files"] = json!([
        {"target": "a", "type": "registry:lib", "path": "templates/a.txt"},
        {"target": "a", "type": "registry:lib", "content": "x"}
    ]);
    let reply = send_ok(&server.base, &fine);
    assert_eq!(reply.status, 201, "{}", reply.text);
}

fn send_ok(base: &str, manifest: &Value) -> Reply {
    Upload::new(pkg::package(manifest, &[("templates/a.txt", b"x")]))
        .bearer(PUBLISH)
        .send(base)
}
