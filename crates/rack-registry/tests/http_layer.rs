//! The HTTP layer over real server processes (SPEC §4, §8, §9, §14): strong content-derived
//! ETags and `304 Not Modified`, content negotiation (br, zstd, gzip), the hot-object cache never
//! serving stale data, the fixed-window rate limiter with `TRUST_PROXY`, and `/metrics` passing
//! `promtool check metrics`.
//!
//! Requests go through the raw client (`common/http.rs`), one fresh connection per request, so
//! that no header is added or decoded behind the test's back (no automatic `Accept-Encoding`, no
//! transparent decompression).

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/pkg.rs"]
mod pkg;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, World, ADMIN_TOKEN};
use http::{RawClient, RawResponse};
use pkg::Upload;
use sha2::{Digest, Sha256};

const READ: &str = "company-read-token";

/// Every kind of cacheable read, on the open `@rack` namespace, with its `Cache-Control`.
const RESOURCES: &[(&str, &str, &str)] = &[
    (
        "versions",
        "/registries/@rack/build/rollup/versions",
        "public, max-age=60",
    ),
    ("latest", "/registries/@rack/build/rollup", "public, max-age=60"),
    (
        "version manifest",
        "/registries/@rack/build/rollup/1.0.0",
        "public, max-age=31536000, immutable",
    ),
    (
        "file",
        "/registries/@rack/build/rollup/1.0.0/files/templates/package.json",
        "public, max-age=31536000, immutable",
    ),
    ("preset", "/presets/node", "public, max-age=86400"),
    ("schema", "/schemas/registry-item.json", "public, max-age=86400"),
    ("namespaces", "/namespaces", "public, max-age=60"),
    (
        "namespace registries",
        "/namespaces/@rack/registries",
        "public, max-age=60",
    ),
];

use common::start_with;

fn serve(world: &World, extra: &[(&str, &str)]) -> Server {
    Server::start(world.path(), &world.env_with(extra))
}

fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn req(c: &RawClient, method: &str, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    c.request(method, path, &hdrs(headers))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[track_caller]
fn get(c: &RawClient, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    req(c, "GET", path, headers)
}

#[track_caller]
fn get_ok(c: &RawClient, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let r = get(c, path, headers);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body_text());
    r
}

#[track_caller]
fn etag(r: &RawResponse) -> String {
    r.header("etag").expect("a 200 carries an ETag")
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A strong tag: quoted, no `W/`.
#[track_caller]
fn assert_strong(tag: &str) {
    assert!(!tag.starts_with("W/"), "weak tag {tag}");
    assert!(
        tag.len() > 2 && tag.starts_with('"') && tag.ends_with('"'),
        "malformed tag {tag}"
    );
}

/// A `304`: the same `ETag` and `Cache-Control` as the `200`, and no body.
#[track_caller]
fn assert_not_modified(r: &RawResponse, tag: &str, cache_control: &str, what: &str) {
    assert_eq!(r.status, 304, "{what}: {}", r.body_text());
    assert_eq!(r.header("etag").as_deref(), Some(tag), "{what}");
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some(cache_control),
        "{what}"
    );
    assert!(r.body.is_empty(), "{what}: a 304 has no body");
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, "0", "{what}: a 304 announces no body");
    }
}

// ---------------------------------------------------------------------------------------------
// ETag and 304
// ---------------------------------------------------------------------------------------------

#[test]
fn not_modified_on_every_resource_kind() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    for &(what, path, cache_control) in RESOURCES {
        let ok = get_ok(&c, path, &[]);
        let tag = etag(&ok);
        assert_strong(&tag);
        assert_eq!(
            ok.header("cache-control").as_deref(),
            Some(cache_control),
            "{what}"
        );
        assert!(
            ok.has_content_length && !ok.chunked,
            "{what}: identity 200 has Content-Length"
        );

        let list = format!("\"0000\", {tag}, \"ffff\"");
        let weak = format!("W/{tag}");
        for (how, inm) in [
            ("single", tag.as_str()),
            ("list", &list),
            ("star", "*"),
            ("weak", &weak),
        ] {
            let what = format!("{what} GET If-None-Match {how}");
            let r = get(&c, path, &[("If-None-Match", inm)]);
            assert_not_modified(&r, &tag, cache_control, &what);
            let r = req(&c, "HEAD", path, &[("If-None-Match", inm)]);
            assert_not_modified(&r, &tag, cache_control, &format!("HEAD {what}"));
        }
        // A list spread over several header lines counts too.
        let r = get(
            &c,
            path,
            &[("If-None-Match", "\"0000\""), ("If-None-Match", &tag)],
        );
        assert_not_modified(&r, &tag, cache_control, &format!("{what} two header lines"));

        // Tags that do not match give the full answer again.
        for inm in ["\"0000\"", "\"0000\", W/\"ffff\"", &tag[..tag.len() - 2]] {
            let r = get(&c, path, &[("If-None-Match", inm)]);
            assert_eq!(r.status, 200, "{what} If-None-Match {inm}");
            assert_eq!(r.body, ok.body, "{what}");
            assert_eq!(etag(&r), tag, "{what}");
        }
    }
}

#[test]
fn not_modified_still_needs_access() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let bearer = format!("Bearer {READ}");
    let gated = [
        "/registries/@company/ui/button/versions",
        "/registries/@company/ui/button",
        "/registries/@company/ui/button/2.0.0",
        "/registries/@company/ui/button/2.0.0/files/templates/button.tsx",
        "/namespaces/@company/registries",
    ];
    for path in gated {
        let ok = get_ok(&c, path, &[("Authorization", &bearer)]);
        let tag = etag(&ok);
        // With the token, the tag revalidates.
        let r = get(&c, path, &[("Authorization", &bearer), ("If-None-Match", &tag)]);
        assert_eq!(r.status, 304, "{path}");
        for inm in ["*", tag.as_str()] {
            for method in ["GET", "HEAD"] {
                let r = req(&c, method, path, &[("If-None-Match", inm)]);
                assert_eq!(
                    r.status, 401,
                    "{method} {path} If-None-Match {inm} without a token"
                );
                assert!(r.header("etag").is_none(), "{path}: no validator leaks on a 401");
                if method == "GET" {
                    assert!(r.body_text().contains("\"UNAUTHORIZED\""), "{}", r.body_text());
                }
                let r = req(
                    &c,
                    method,
                    path,
                    &[("If-None-Match", inm), ("Authorization", "Bearer wrong-token")],
                );
                assert_eq!(
                    r.status, 401,
                    "{method} {path} If-None-Match {inm} with a wrong token"
                );
            }
        }
    }
    // An undeclared namespace stays 403 for a conditional request, admin token included.
    let r = get(
        &c,
        "/registries/@secret/tool",
        &[
            ("If-None-Match", "*"),
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body_text());
}

#[test]
fn etag_is_stable_across_processes_and_methods() {
    let world = World::new();
    let a = serve(&world, &[]);
    let b = serve(&world, &[]);
    let (ca, cb) = (RawClient::new(&a.base), RawClient::new(&b.base));
    for &(what, path, _) in RESOURCES {
        for enc in [None, Some("gzip"), Some("br"), Some("zstd")] {
            let h: Vec<(&str, &str)> = enc.map(|e| ("Accept-Encoding", e)).into_iter().collect();
            let ra = get_ok(&ca, path, &h);
            let rb = get_ok(&cb, path, &h);
            assert_eq!(
                etag(&ra),
                etag(&rb),
                "{what} {enc:?}: same bytes, same tag on two servers"
            );
            assert_eq!(ra.body, rb.body, "{what} {enc:?}");
            let head = req(&ca, "HEAD", path, &h);
            assert_eq!(head.status, 200);
            assert!(head.body.is_empty());
            assert_eq!(
                head.header("etag"),
                ra.header("etag"),
                "{what} {enc:?}: HEAD and GET"
            );
            assert_eq!(
                head.header("content-encoding"),
                ra.header("content-encoding"),
                "{what}"
            );
            if enc.is_none() {
                assert_eq!(
                    head.header("content-length"),
                    Some(ra.body.len().to_string()),
                    "{what}: HEAD repeats Content-Length"
                );
            }
        }
    }
    // And after a restart on the same storage.
    let before: Vec<String> = RESOURCES
        .iter()
        .map(|(_, p, _)| etag(&get_ok(&ca, p, &[])))
        .collect();
    drop(a);
    drop(b);
    let c = serve(&world, &[]);
    let cc = RawClient::new(&c.base);
    for ((what, path, _), tag) in RESOURCES.iter().zip(&before) {
        assert_eq!(
            &etag(&get_ok(&cc, path, &[])),
            tag,
            "{what}: same tag after a restart"
        );
    }
}

/// Whether `s` is a full SemVer (enough of the grammar to find the version pivot of a path).
fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0'))
        })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            walk(root, &e.path(), out);
        } else if ty.is_file() {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        }
    }
}

/// The read URL of a stored key, if it has one.
fn url_of(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts[0] == "presets" && parts.len() == 3 && parts[2] == "preset.json" {
        return Some(format!("/presets/{}", parts[1]));
    }
    if parts[0] == "schema" && parts.len() == 2 {
        return Some(format!("/schemas/{}", parts[1]));
    }
    if !parts[0].starts_with('@') || parts.len() < 2 {
        return None;
    }
    match (1..parts.len() - 1).find(|&i| is_semver(parts[i])) {
        Some(i) => {
            let head = parts[..=i].join("/");
            let rest = &parts[i + 1..];
            if rest == ["registry.json"] {
                Some(format!("/registries/{head}"))
            } else {
                Some(format!("/registries/{head}/files/{}", rest.join("/")))
            }
        }
        None if parts.len() > 2 && parts[parts.len() - 1] == "versions.json" => Some(format!(
            "/registries/{}/versions",
            parts[..parts.len() - 1].join("/")
        )),
        None => None,
    }
}

#[test]
fn distinct_content_gives_distinct_tags() {
    let (world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut keys = Vec::new();
    walk(&world.storage(), &world.storage(), &mut keys);
    keys.sort();
    // tag -> content hash, and content hash -> tag: a bijection.
    let mut by_tag: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut by_content: BTreeMap<String, String> = BTreeMap::new();
    let mut served = 0;
    let urls: Vec<String> = keys
        .iter()
        .filter_map(|k| url_of(k))
        .chain(RESOURCES.iter().map(|(_, p, _)| p.to_string()))
        .collect();
    for url in &urls {
        for enc in [None, Some("gzip")] {
            let mut h = vec![("Authorization", admin.as_str())];
            h.extend(enc.map(|e| ("Accept-Encoding", e)));
            let r = get(&c, url, &h);
            if r.status != 200 {
                continue;
            }
            served += 1;
            let tag = etag(&r);
            assert_strong(&tag);
            let content = sha(&r.body);
            if let Some((other_url, other)) = by_tag.get(&tag) {
                assert_eq!(
                    other, &content,
                    "{url} and {other_url} share the tag {tag} but differ"
                );
            }
            by_tag.insert(tag.clone(), (url.clone(), content.clone()));
            if let Some(other) = by_content.get(&content) {
                assert_eq!(other, &tag, "{url}: the same bytes got two tags");
            }
            by_content.insert(content, tag);
        }
    }
    assert!(
        served > 100,
        "only {served} answers were 200; the scan missed the world"
    );
    assert!(by_tag.len() > 40, "only {} distinct tags", by_tag.len());
}

// ---------------------------------------------------------------------------------------------
// The cache never serves stale data
// ---------------------------------------------------------------------------------------------

#[test]
fn publish_shows_at_once_in_latest_and_versions() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let latest = "/registries/@rack/build/rollup";
    let versions = "/registries/@rack/build/rollup/versions";
    let encs: [&[(&str, &str)]; 2] = [&[], &[("Accept-Encoding", "gzip")]];
    // Warm the cache (twice, so that the second read is a hit).
    let mut old = Vec::new();
    for _ in 0..2 {
        old.clear();
        for h in encs {
            old.push((get_ok(&c, latest, h), get_ok(&c, versions, h)));
        }
    }
    let m = pkg::manifest("@rack", "rollup", "1.1.0", "registry:build", &["templates/a.txt"]);
    let body = serde_json::to_vec_pretty(&m).unwrap();
    let up = Upload::new(pkg::package_raw(&body, &[("templates/a.txt", b"hello\n")]))
        .bearer(ADMIN_TOKEN)
        .send(&server.base);
    assert_eq!(up.status, 201, "{}", up.text);

    let l = get_ok(&c, latest, &[]);
    assert_eq!(l.body, body, "latest is the new manifest right after the publish");
    assert_ne!(etag(&l), etag(&old[0].0));
    let v = get_ok(&c, versions, &[]);
    let list: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
    assert_eq!(list["versions"][0], "1.1.0", "{}", v.body_text());
    assert_ne!(etag(&v), etag(&old[0].1));
    // The old tags no longer revalidate.
    let r = get(&c, latest, &[("If-None-Match", &etag(&old[0].0))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    let r = get(&c, versions, &[("If-None-Match", &etag(&old[0].1))]);
    assert_eq!(r.status, 200);
    // The compressed variants changed too (versions.json may be under the size threshold).
    let lz = get_ok(&c, latest, encs[1]);
    assert_eq!(decode(&lz), body, "the gzip variant of latest is not stale");
    let vz = get_ok(&c, versions, encs[1]);
    assert_eq!(decode(&vz), v.body);
}

/// Overwrite `path` in place (same inode: truncate and write), as an operator's editor does.
fn edit_in_place(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

// The edits below are checked with both revalidation modes of the hot cache (FS_WATCH):
// inotify events (the default on a local filesystem) and a stat per read.

#[test]
fn operator_edit_on_disk_shows_on_next_read() {
    if common::s3::local_only("operator edits on disk") {
        return;
    }
    operator_edits_show_on_next_read("auto");
}

#[test]
fn operator_edit_on_disk_shows_on_next_read_without_watching() {
    if common::s3::local_only("operator edits on disk") {
        return;
    }
    operator_edits_show_on_next_read("off");
}

fn operator_edits_show_on_next_read(fs_watch: &str) {
    let (world, server) = start_with(&[("FS_WATCH", fs_watch)]);
    let c = RawClient::new(&server.base);
    let path = "/registries/@rack/build/rollup/1.0.0/files/templates/rollup.config.mjs";
    let disk = world
        .storage()
        .join("@rack/build/rollup/1.0.0/templates/rollup.config.mjs");
    let original = std::fs::read(&disk).unwrap();
    let first = get_ok(&c, path, &[]);
    assert_eq!(first.body, original);
    let _ = get_ok(&c, path, &[]); // cached now
    let mut seen = BTreeSet::from([etag(&first)]);

    // Same size, different bytes.
    let mut same_size = original.clone();
    for b in same_size.iter_mut().take(8) {
        *b = b'X';
    }
    assert_ne!(same_size, original);
    // Different size. Then a large body (above the compression threshold) for the variants.
    let longer = [original.as_slice(), b"// edited by the operator\n"].concat();
    let large = "export const x = 1; // padding padding padding\n"
        .repeat(100)
        .into_bytes();
    for (what, bytes) in [("same size", &same_size), ("longer", &longer), ("large", &large)] {
        edit_in_place(&disk, bytes);
        let r = get_ok(&c, path, &[]);
        assert_eq!(&r.body, bytes, "{what}: the next GET returns the new bytes");
        let tag = etag(&r);
        assert!(seen.insert(tag.clone()), "{what}: a new ETag ({tag})");
        let z = get_ok(&c, path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(&decode(&z), bytes, "{what}: the gzip variant is fresh too");
        let h = req(&c, "HEAD", path, &[]);
        assert_eq!(
            h.header("content-length"),
            Some(bytes.len().to_string()),
            "{what}"
        );
    }
    // Back to the original bytes: back to the original tag (the tag is the content's).
    edit_in_place(&disk, &original);
    assert_eq!(etag(&get_ok(&c, path, &[])), etag(&first));

    // The whole version directory swapped by renames, as a deploy script would.
    let version_dir = world.storage().join("@rack/build/rollup/1.0.0");
    let staged = world.storage().join("@rack/build/rollup/.staged");
    copy_dir(&version_dir, &staged);
    std::fs::write(staged.join("templates/rollup.config.mjs"), b"// swapped in\n").unwrap();
    std::fs::rename(&version_dir, world.storage().join("@rack/build/rollup/.old")).unwrap();
    std::fs::rename(&staged, &version_dir).unwrap();
    assert_eq!(get_ok(&c, path, &[]).body, b"// swapped in\n");
    // And an edit inside the new directory.
    edit_in_place(&disk, b"// edited after the swap\n");
    assert_eq!(get_ok(&c, path, &[]).body, b"// edited after the swap\n");
}

/// Read leases the process `pid` holds, from `/proc/locks`.
fn leases_of(pid: u32) -> usize {
    let ours = format!(" {pid} ");
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" LEASE ") && l.contains(&ours))
        .count()
}

/// A file of 4 to 64 KiB is served from a memory map under a read lease (storage/mapped.rs).
/// An editor's open for writing then waits only until the server has dropped the map, not the
/// kernel's lease-break time (45 s), and the next GET serves the edit. `MAP_FILES=off` takes no
/// lease.
#[test]
fn an_edit_in_place_of_a_mapped_file_waits_only_for_the_map_to_go() {
    if common::s3::local_only("edits on disk") {
        return;
    }
    let path = "/registries/@rack/build/rollup/1.0.0/files/templates/rollup.config.mjs";
    let big = "export const x = 1; // padding padding padding\n"
        .repeat(200)
        .into_bytes();
    for map_files in ["auto", "off"] {
        let (world, server) = start_with(&[("MAP_FILES", map_files)]);
        let c = RawClient::new(&server.base);
        let disk = world
            .storage()
            .join("@rack/build/rollup/1.0.0/templates/rollup.config.mjs");
        std::fs::write(&disk, &big).unwrap();
        assert_eq!(get_ok(&c, path, &[]).body, big);
        let z = get_ok(&c, path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(decode(&z), big, "{map_files}: a variant made from the map");
        let held = leases_of(server.pid());
        if map_files == "off" {
            assert_eq!(held, 0, "no lease with MAP_FILES=off");
        } else {
            assert_eq!(held, 1, "the served file is mapped under a lease");
        }

        let edited: Vec<u8> = big.iter().map(|&b| if b == b'1' { b'2' } else { b }).collect();
        let started = Instant::now();
        edit_in_place(&disk, &edited);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "{map_files}: the edit waited {waited:?} for the lease"
        );
        let r = get_ok(&c, path, &[]);
        assert_eq!(r.body, edited, "{map_files}: the next GET serves the edit");
        let z = get_ok(&c, path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(decode(&z), edited, "{map_files}: so does its variant");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Quick successive same-size edits, each read right after it is written: the cache must not
/// take an unchanged size and a timestamp within the same clock tick for an unchanged file.
#[test]
fn rapid_same_size_edits_are_never_stale() {
    if common::s3::local_only("edits on disk") {
        return;
    }
    rapid_same_size_edits(&[]);
}

#[test]
fn rapid_same_size_edits_are_never_stale_without_watching() {
    if common::s3::local_only("edits on disk") {
        return;
    }
    rapid_same_size_edits(&[("FS_WATCH", "off")]);
}

fn rapid_same_size_edits(env: &[(&str, &str)]) {
    let (world, server) = start_with(env);
    let c = RawClient::new(&server.base);
    let path = "/registries/@rack/build/rollup/1.0.0/files/templates/rollup.config.mjs";
    let disk = world
        .storage()
        .join("@rack/build/rollup/1.0.0/templates/rollup.config.mjs");
    let len = std::fs::read(&disk).unwrap().len();
    let mut stale = Vec::new();
    for i in 0..50u32 {
        let bytes: Vec<u8> = format!("{i:0len$}").into_bytes();
        edit_in_place(&disk, &bytes);
        let r = get_ok(&c, path, &[]);
        if r.body != bytes {
            stale.push(i);
        }
    }
    assert!(stale.is_empty(), "stale reads after edits {stale:?}");
}

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// The body of `r`, decoded per its `Content-Encoding`.
fn decode(r: &RawResponse) -> Vec<u8> {
    let mut out = Vec::new();
    match r.header("content-encoding").as_deref() {
        None => out = r.body.clone(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(&r.body[..], 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zstd") => out = zstd::decode_all(&r.body[..]).unwrap(),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

/// Large compressible bodies (all >= 1024 bytes), readable with the read token.
const COMPRESSIBLE: &[&str] = &[
    "/registries/@rack/build/rollup/1.0.0",
    "/registries/@rack/build/rollup",
    "/schemas/registry-item.json",
    "/registries/@company/ui/button/2.0.0",
    "/registries/@company/ui/button/2.0.0/files/templates/big.js",
];

#[test]
fn every_encoding_round_trips() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let bearer = format!("Bearer {READ}");
    let auth = ("Authorization", bearer.as_str());
    for path in COMPRESSIBLE {
        let plain = get_ok(&c, path, &[auth]);
        assert!(plain.body.len() >= 1024, "{path} is a large body");
        assert!(
            plain.header("content-encoding").is_none(),
            "{path}: identity without Accept-Encoding"
        );
        assert_eq!(plain.header("vary").as_deref(), Some("Accept-Encoding"), "{path}");
        let mut tags = BTreeSet::from([etag(&plain)]);
        for enc in ["gzip", "br", "zstd"] {
            let r = get_ok(&c, path, &[auth, ("Accept-Encoding", enc)]);
            assert_eq!(r.header("content-encoding").as_deref(), Some(enc), "{path}");
            assert_eq!(
                r.header("vary").as_deref(),
                Some("Accept-Encoding"),
                "{path} {enc}"
            );
            assert!(
                r.body.len() < plain.body.len(),
                "{path} {enc}: smaller than identity"
            );
            assert_eq!(
                decode(&r),
                plain.body,
                "{path} {enc}: decodes to the identity bytes"
            );
            assert_eq!(r.header("cache-control"), plain.header("cache-control"));
            assert_eq!(r.header("content-type"), plain.header("content-type"));
            let tag = etag(&r);
            assert_strong(&tag);
            assert!(
                tags.insert(tag.clone()),
                "{path} {enc}: each encoding has its own tag"
            );
            // Revalidating the encoded representation.
            let nm = get(
                &c,
                path,
                &[auth, ("Accept-Encoding", enc), ("If-None-Match", &tag)],
            );
            assert_eq!(nm.status, 304, "{path} {enc}");
            assert_eq!(nm.header("etag"), Some(tag));
            // HEAD announces the same encoding.
            let h = req(&c, "HEAD", path, &[auth, ("Accept-Encoding", enc)]);
            assert_eq!(h.header("content-encoding").as_deref(), Some(enc), "HEAD {path}");
        }
    }
}

#[test]
fn negotiation_respects_q_values() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let path = "/schemas/registry-item.json";
    for (accept, want) in [
        ("gzip;q=0.5, br;q=0.1", Some("gzip")),
        ("br;q=0.1, gzip;q=0.5", Some("gzip")),
        ("gzip, deflate, br, zstd", Some("br")),
        ("zstd;q=1.0, br;q=0.9", Some("zstd")),
        ("br;q=0, gzip", Some("gzip")),
        ("GZIP", Some("gzip")),
        ("gzip;q=0", None),
        ("br;q=0, gzip;q=0, zstd;q=0", None),
        ("identity", None),
        ("deflate", None),
        ("", None),
    ] {
        let r = get_ok(&c, path, &[("Accept-Encoding", accept)]);
        assert_eq!(
            r.header("content-encoding").as_deref(),
            want,
            "Accept-Encoding: {accept:?}"
        );
        assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"), "{accept:?}");
        let plain = get_ok(&c, path, &[]);
        assert_eq!(decode(&r), plain.body, "{accept:?}");
    }
}

#[test]
fn tiny_bodies_and_images_are_not_compressed() {
    let (world, server) = start_with(&[]);
    // A large PNG (compressible bytes, but an already-compressed type) and a large octet-stream.
    let dir = world.storage().join("@rack/build/rollup/1.0.0/templates");
    std::fs::write(dir.join("big.png"), vec![0u8; 8192]).unwrap();
    std::fs::write(dir.join("blob.tar.gz"), vec![0u8; 8192]).unwrap();
    // Exactly at the threshold and one byte under it.
    std::fs::write(dir.join("at.txt"), "a".repeat(1024)).unwrap();
    std::fs::write(dir.join("under.txt"), "a".repeat(1023)).unwrap();
    world.sync();
    let c = RawClient::new(&server.base);
    let bearer = format!("Bearer {READ}");
    let auth = ("Authorization", bearer.as_str());
    let base = "/registries/@rack/build/rollup/1.0.0/files/templates";
    let cases = [
        ("/registries/@rack/build/rollup/versions".to_string(), false),
        ("/presets/node".to_string(), false),
        (format!("{base}/package.json"), false),
        (format!("{base}/under.txt"), false),
        (format!("{base}/at.txt"), true),
        (format!("{base}/big.png"), false),
        (format!("{base}/blob.tar.gz"), false),
        (
            "/registries/@company/ui/button/2.0.0/files/templates/image.png".to_string(),
            false,
        ),
        (
            "/registries/@company/ui/button/2.0.0/files/templates/Logo.PNG".to_string(),
            false,
        ),
        (
            "/registries/@company/ui/button/2.0.0/files/templates/photo.jpg".to_string(),
            false,
        ),
        (
            "/registries/@company/ui/button/2.0.0/files/templates/font.woff2".to_string(),
            false,
        ),
        (
            "/registries/@company/ui/button/2.0.0/files/templates/archive.tar.gz".to_string(),
            false,
        ),
    ];
    for (path, compressed) in &cases {
        let plain = get_ok(&c, path, &[auth]);
        let r = get_ok(&c, path, &[auth, ("Accept-Encoding", "br, zstd, gzip")]);
        if *compressed {
            assert!(r.header("content-encoding").is_some(), "{path} is compressed");
        } else {
            assert_eq!(r.header("content-encoding"), None, "{path} is sent as it is");
            assert_eq!(r.body, plain.body, "{path}");
            assert_eq!(etag(&r), etag(&plain), "{path}: one representation, one tag");
            assert!(r.has_content_length, "{path}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiting
// ---------------------------------------------------------------------------------------------

fn num(r: &RawResponse, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("missing {name} (status {})", r.status))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[track_caller]
fn assert_rate_limited(r: &RawResponse, window: u64) -> u64 {
    assert_eq!(r.status, 429, "{}", r.body_text());
    let n = num(r, "retry-after");
    assert!((1..=window).contains(&n), "Retry-After {n}");
    assert_eq!(
        r.body_text(),
        format!(
            "{{\"code\":\"RATE_LIMIT_EXCEEDED\",\"message\":\"Rate limit exceeded. Try again in {n}s\"}}"
        )
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(num(r, "x-ratelimit-remaining"), 0);
    assert_eq!(num(r, "x-ratelimit-reset"), n, "x-ratelimit-reset is Retry-After");
    n
}

#[test]
fn rate_limit_boundary_and_window() {
    let (_world, server) = start_with(&[("RATE_LIMIT_MAX", "5"), ("RATE_LIMIT_WINDOW_SECONDS", "3")]);
    let c = RawClient::new(&server.base);
    // Every route counts: health and metrics included, errors included.
    let paths = [
        "/health",
        "/metrics",
        "/registries/@rack/build/rollup",
        "/no/such/route",
        "/schemas/rack.json",
    ];
    let t0 = Instant::now();
    for (i, path) in paths.iter().enumerate() {
        let r = get(&c, path, &[]);
        assert_ne!(r.status, 429, "request {} ({path})", i + 1);
        assert_eq!(num(&r, "x-ratelimit-limit"), 5, "{path}");
        assert_eq!(
            num(&r, "x-ratelimit-remaining"),
            4 - i as u64,
            "request {}",
            i + 1
        );
        let reset = num(&r, "x-ratelimit-reset");
        assert!((1..=3).contains(&reset), "x-ratelimit-reset {reset}");
    }
    let n = assert_rate_limited(&get(&c, "/health", &[]), 3);
    // No refill inside the window; HEAD and other methods count as well.
    let r = req(&c, "HEAD", "/presets/node", &[]);
    assert_eq!(r.status, 429);
    assert_rate_limited(&get(&c, "/metrics", &[]), 3);
    // After the window (which started at the first request) ends, requests pass again.
    let wait = Duration::from_secs(3).saturating_sub(t0.elapsed()) + Duration::from_millis(300);
    assert!(wait <= Duration::from_secs(n) + Duration::from_millis(1300));
    std::thread::sleep(wait);
    let r = get(&c, "/health", &[]);
    assert_eq!(r.status, 200, "a new window");
    assert_eq!(num(&r, "x-ratelimit-remaining"), 4);
    assert_eq!(num(&r, "x-ratelimit-reset"), 3);
    // The refusals were counted.
    let m = get(&c, "/metrics", &[]);
    assert!(
        m.body_text().contains("registry_rate_limited_total 3"),
        "{}",
        m.body_text()
    );
}

#[test]
fn rate_limit_zero_disables() {
    let (_world, server) = start_with(&[("RATE_LIMIT_MAX", "0"), ("RATE_LIMIT_WINDOW_SECONDS", "3")]);
    let c = RawClient::new(&server.base);
    for _ in 0..30 {
        let r = get(&c, "/health", &[]);
        assert_eq!(r.status, 200);
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
        ] {
            assert!(r.header(h).is_none(), "{h} with limiting disabled");
        }
    }
}

/// The defaults (1200 per 60 s) apply when neither variable is set. The harness always sets
/// `RATE_LIMIT_MAX=0`, so this test starts the binary itself, without it.
#[test]
fn rate_limit_default_is_1200_per_minute() {
    let world = World::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rack-registry"))
        .current_dir(world.path())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .envs(world.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = common::listening_url(&line) {
                let _ = tx.send(url);
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(20));
    let result = std::panic::catch_unwind(|| {
        let c = RawClient::new(base.as_ref().expect("server started"));
        let r = get(&c, "/health", &[]);
        assert_eq!(num(&r, "x-ratelimit-limit"), 1200);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 1199);
        let reset = num(&r, "x-ratelimit-reset");
        assert!((59..=60).contains(&reset), "default window is 60 s: {reset}");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Send `GET /health` with `X-Forwarded-For: xff`.
fn from(c: &RawClient, xff: &str) -> RawResponse {
    get(c, "/health", &[("X-Forwarded-For", xff)])
}

#[test]
fn trust_proxy_false_ignores_forwarded_for() {
    let (_world, server) = start_with(&[("RATE_LIMIT_MAX", "3"), ("TRUST_PROXY", "false")]);
    let c = RawClient::new(&server.base);
    for (i, xff) in ["1.1.1.1", "2.2.2.2", "3.3.3.3, 4.4.4.4"].iter().enumerate() {
        let r = from(&c, xff);
        assert_eq!(r.status, 200);
        assert_eq!(
            num(&r, "x-ratelimit-remaining"),
            2 - i as u64,
            "one bucket for the socket peer"
        );
    }
    assert_rate_limited(&from(&c, "5.5.5.5"), 60);
    assert_rate_limited(&get(&c, "/health", &[]), 60);
}

#[test]
fn trust_proxy_true_takes_the_left_most_address() {
    let (_world, server) = start_with(&[("RATE_LIMIT_MAX", "3"), ("TRUST_PROXY", "true")]);
    let c = RawClient::new(&server.base);
    for (i, xff) in ["1.1.1.1", "1.1.1.1, 9.9.9.9", "1.1.1.1,8.8.8.8, 7.7.7.7"]
        .iter()
        .enumerate()
    {
        let r = from(&c, xff);
        assert_eq!(r.status, 200);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 2 - i as u64, "{xff}");
    }
    assert_rate_limited(&from(&c, "1.1.1.1, 2.2.2.2"), 60);
    // Other left-most addresses have their own buckets, and so does the socket peer.
    for xff in ["2.2.2.2, 9.9.9.9", "9.9.9.9, 1.1.1.1", "2001:db8::1"] {
        let r = from(&c, xff);
        assert_eq!(r.status, 200, "{xff}");
        assert_eq!(num(&r, "x-ratelimit-remaining"), 2, "{xff}: a fresh bucket");
    }
    let r = get(&c, "/health", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 2, "no header: the socket peer");
}

#[test]
fn trust_proxy_hop_count_takes_the_nth_from_the_right() {
    let (_world, server) = start_with(&[("RATE_LIMIT_MAX", "3"), ("TRUST_PROXY", "2")]);
    let c = RawClient::new(&server.base);
    // Second from the right is the client: 5.5.5.5 in all three.
    for (i, xff) in [
        "1.1.1.1, 5.5.5.5, 7.7.7.7",
        "2.2.2.2, 5.5.5.5, 8.8.8.8",
        "5.5.5.5, 9.9.9.9",
    ]
    .iter()
    .enumerate()
    {
        let r = from(&c, xff);
        assert_eq!(r.status, 200);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 2 - i as u64, "{xff}");
    }
    assert_rate_limited(&from(&c, "3.3.3.3, 5.5.5.5, 6.6.6.6"), 60);
    // A different second-from-right address is a different client, whatever the left-most.
    let r = from(&c, "5.5.5.5, 6.6.6.6, 7.7.7.7");
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "x-ratelimit-remaining"), 2);
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

const LE: [&str; 10] = [
    "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10", "+Inf",
];

/// One sample line: name, labels, value.
type Sample = (String, Labels, f64);

/// Label names and values, in order.
type Labels = Vec<(String, String)>;

/// `{a="1",b="x\\"y"}` at the start of `s` (or nothing): the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let Some(mut r) = s.strip_prefix('{') else {
        return Ok((labels, s));
    };
    loop {
        if let Some(rest) = r.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = r.find('=').ok_or("label without =")?;
        let name = &r[..eq];
        let valid = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, ch)| ch.is_ascii_alphabetic() || ch == '_' || (i > 0 && ch.is_ascii_digit()));
        if !valid {
            return Err(format!("bad label name {name:?}"));
        }
        r = r[eq + 1..].strip_prefix('"').ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    ch @ ('\\' | '"') => value.push(ch),
                    ch => return Err(format!("bad escape \\{ch}")),
                },
                (i, '"') => break i,
                (_, ch) => value.push(ch),
            }
        };
        labels.push((name.to_owned(), value));
        r = &r[end + 1..];
        if let Some(rest) = r.strip_prefix(',') {
            r = rest;
        } else if !r.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// A small parser of the text exposition format (the basics `promtool` would check): `# HELP`
/// and `# TYPE` lines, sample lines with escaped label values, every sample of a declared family.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, ch)| {
                ch.is_ascii_alphabetic() || ch == '_' || ch == ':' || (i > 0 && ch.is_ascii_digit())
            })
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    if !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let no = no + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(ty)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(format!("line {no}: unknown type {ty}"));
                    }
                    if types.insert(name.to_owned(), ty.to_owned()).is_some() {
                        return Err(format!("line {no}: second TYPE for {name}"));
                    }
                }
                _ => return Err(format!("line {no}: bad comment line {line:?}")),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("line {no}: no value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(format!("line {no}: bad metric name {name:?}"));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(|e| format!("line {no}: {e}"))?;
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or(format!("line {no}: no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|e| format!("line {no}: value {v:?}: {e}"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| format!("line {no}: timestamp: {e}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("line {no}: trailing fields"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("line {no}: sample {name} before (or without) its TYPE"));
        }
        if types[family] == "counter" && value < 0.0 {
            return Err(format!("line {no}: negative counter"));
        }
        samples.push((name.to_owned(), labels, value));
    }
    Ok(samples)
}

#[test]
fn exposition_parser_sanity() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\",y=\"2\"} 3\n";
    let s = parse_exposition(ok).unwrap();
    assert_eq!(s[0].1, [("x".into(), "q\"\n".into()), ("y".into(), "2".into())]);
    assert!(parse_exposition("a_total 1\n").is_err(), "no TYPE");
    assert!(parse_exposition("# TYPE a counter\na{x=1} 1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na{x=\"1\"} one\n").is_err());
}

#[test]
fn metrics_exposition() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    assert_eq!(get(&c, "/health", &[]).status, 200);
    let _ = get(&c, "/registries/@rack/build/rollup", &[]);
    let _ = get(
        &c,
        "/registries/@rack/build/rollup/1.0.0/files/templates/nope.txt",
        &[],
    );
    let _ = get(&c, "/registries/@company/ui/button", &[]);
    let r = get_ok(&c, "/metrics", &[]);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{:?}",
        r.header("content-type")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(r.header("etag").is_none(), "/metrics is live, never validated");
    let text = r.body_text();

    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "http_request_duration_seconds_bucket")
        .collect();
    let health: Vec<&&Sample> = buckets
        .iter()
        .filter(|s| s.1.iter().any(|(k, v)| k == "route" && v == "/health"))
        .collect();
    assert!(!health.is_empty(), "no route=\"/health\" series:\n{text}");
    // Each series has exactly the buckets of the contract, in order, cumulative.
    let mut series: BTreeMap<Labels, Vec<(String, f64)>> = BTreeMap::new();
    for (_, labels, v) in &buckets {
        let key: Labels = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let le = labels
            .iter()
            .find(|(k, _)| k == "le")
            .expect("le label")
            .1
            .clone();
        series.entry(key).or_default().push((le, *v));
    }
    for (key, les) in &series {
        let names: Vec<&str> = les.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names, LE, "{key:?}");
        assert!(les.windows(2).all(|w| w[0].1 <= w[1].1), "{key:?}: cumulative");
        for label in ["method", "route", "status_code"] {
            assert!(key.iter().any(|(k, _)| k == label), "{key:?} lacks {label}");
        }
        // Route labels are templates, never the raw path.
        let route = &key.iter().find(|(k, _)| k == "route").unwrap().1;
        assert!(
            !route.contains("rollup") && !route.contains("@company"),
            "raw path as route: {route}"
        );
    }
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "registry_uploads_total",
        "registry_webhook_deliveries_total",
        "registry_rate_limited_total",
        "registry_auth_failures_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "missing {name}:\n{text}"
        );
    }
    assert!(
        text.contains("registry_auth_failures_total{code=\"UNAUTHORIZED\"} 1"),
        "the 401 was counted:\n{text}"
    );

    promtool_check(&text);
}

/// Every series family of the contract is exposed from the start, before its first event, so that
/// dashboards and alerts see it (and `absent()` alerts do not fire on a healthy server).
#[test]
fn metrics_declare_every_family_from_the_start() {
    let (_world, server) = start_with(&[]);
    let c = RawClient::new(&server.base);
    let text = get_ok(&c, "/metrics", &[]).body_text();
    // (The request histogram has its first series once a first request has been answered.)
    let missing: Vec<&str> = [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "registry_uploads_total",
        "registry_webhook_deliveries_total",
        "registry_rate_limited_total",
        "registry_auth_failures_total",
        "registry_config_reloads_total",
    ]
    .into_iter()
    .filter(|name| !text.contains(&format!("# TYPE {name} ")))
    .collect();
    assert!(
        missing.is_empty(),
        "not exposed before a first event: {missing:?}\n{text}"
    );
    promtool_check(&text);
}

/// `promtool check metrics` on the exposition (stdin). Without promtool, the test fails if
/// `RACK_REQUIRE_PROMTOOL=1`; otherwise it says so (the parser above has checked the basics).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("RACK_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
                panic!("promtool is required (RACK_REQUIRE_PROMTOOL=1) but could not run: {e}");
            }
            eprintln!(
                "NOTICE: promtool not found ({e}); checked the exposition with the built-in parser only"
            );
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
