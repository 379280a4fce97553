//! The bodies of the fuzz targets (`fuzz/`, run with `cargo fuzz` on nightly) as plain
//! functions, so that `tests/fuzz_replay.rs` replays every committed corpus file and every past
//! crash on stable: CI keeps them fixed without a fuzzer.
//!
//! Each body feeds arbitrary bytes to one parser of untrusted input, exactly as the server calls
//! it, and asserts what must hold whatever the input: no panic, and the invariants that protect
//! storage (every key a parse lets through passes [`validate_key`]) or the answer (the upload
//! judged in memory gets the very verdict of the upload extracted to disk). A broken invariant
//! panics, which is what the fuzzer and the replay test report.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use rack_core::auth::{extract_token, Credential, Ctx, Policy};
use rack_core::layout;
use rack_core::manifest::{self, EntryKind};
use rack_core::names::{is_namespace, is_segment, is_version};
use rack_core::route::{self, ResourceKind, Route};
use serde_json::Value;

use crate::compression::negotiate;
use crate::config::TrustProxy;
use crate::http::logging::client_ip;
use crate::storage::validate_key;
use crate::upload::dry;
use crate::upload::extract::{self, ExtractError, ExtractLimits};
use crate::upload::receive::{self, Target};
use rack_core::etag::{etag_of, if_none_match, with_suffix};

/// Small limits, so that the fuzzer reaches every one of them (SPEC §5.3).
pub const LIMITS: ExtractLimits = ExtractLimits {
    max_entries: 24,
    max_bytes: 64 * 1024,
    max_manifest_bytes: 8 * 1024,
};

/// Raw request paths (`/registries/...` and the other routes).
pub fn route(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let r = route::route(path);
    let _ = (r.template(), r.allows("GET"), r.allows("POST"));
    match r {
        Route::Registry(Ok(res)) => {
            let key = res.registry_key();
            assert!(is_namespace(res.namespace()), "namespace {:?}", res.namespace());
            assert!(res.segments().all(is_segment), "segments of {key:?}");
            assert_eq!(
                key,
                std::iter::once(res.namespace())
                    .chain(res.segments())
                    .collect::<Vec<_>>()
                    .join("/")
            );
            // An undeclared namespace needs a token: its tier is never public (SPEC §4).
            let tier = res.cache_tier(&rack_core::auth::Policy::empty());
            assert!(tier.header().starts_with("private"), "{tier:?}");
            let object = match &res.kind {
                ResourceKind::Versions | ResourceKind::Latest => layout::versions_key(key),
                ResourceKind::Version(v) => {
                    assert!(is_version(v));
                    layout::manifest_key(key, v)
                }
                ResourceKind::File { version, path } => {
                    assert!(is_version(version));
                    layout::file_key(key, version, path)
                }
            };
            assert!(validate_key(&object).is_ok(), "{path:?} reaches key {object:?}");
            // The parse is stable: the canonical spelling of the resource routes to itself (the
            // grammar of names has no character that would need escaping).
            let canonical = match &res.kind {
                ResourceKind::Versions => format!("/registries/{key}/versions"),
                ResourceKind::Latest => format!("/registries/{key}"),
                ResourceKind::Version(v) => format!("/registries/{key}/{v}"),
                ResourceKind::File { version, path } => {
                    format!("/registries/{key}/{version}/files/{path}")
                }
            };
            assert_eq!(
                route::route(&canonical),
                Route::Registry(Ok(res)),
                "{canonical:?}"
            );
        }
        Route::Preset(Ok(name)) => {
            assert!(is_segment(&name));
            assert!(validate_key(&layout::preset_key(&name)).is_ok());
        }
        Route::NamespaceRegistries(Ok(ns)) => assert!(is_namespace(&ns)),
        _ => {}
    }
}

/// `auth.json` as the server parses it, then a few decisions under the parsed policy.
pub fn auth_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = crate::auth::file::parse(&Some(text.to_owned())) else {
        return;
    };
    let admin = rack_core::auth::Admin::new(None, None);
    let cred = Credential::new("fuzz-token");
    for (ns, p) in policy.namespaces() {
        let _ = p.is_anonymous();
        for cred in [None, Some(&cred)] {
            let ctx = Ctx {
                policy: &policy,
                admin: &admin,
                credential: cred,
                now_ms: 1_700_000_000_000,
            };
            let _ = (
                ctx.read(ns),
                ctx.lists(ns),
                ctx.publish(ns),
                ctx.may_publish_somewhere(),
            );
        }
    }
    let _ = (policy.rejected().len(), policy.skipped().len());
    let _ = Policy::parse(text);
}

/// `webhooks.json`.
pub fn webhooks_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::webhooks::config::parse_str(text) {
        let _ = config.enabled_count();
        let _ = config.subscribers("registry.published").count();
    }
}

/// `registry.json` as checks 7 and 10 to 12 of an upload judge it (identity, schema, declared
/// files, entry kinds), and the storage keys it leads to once accepted.
pub fn registry_json(data: &[u8]) {
    let Ok((doc, identity)) = manifest::identity(data) else {
        return;
    };
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| crate::validate::registry_item_schema(None).expect("bundled schema"));
    let valid = crate::validate::validate(schema, &doc).expect("the bundled schema compiles");
    let declared = manifest::declared_files(&doc);
    let mut entries: extract::Entries = declared.iter().map(|p| (p.clone(), EntryKind::File)).collect();
    entries.insert("registry.json".into(), EntryKind::File);
    manifest::check_entries(&entries, &declared).expect("an archive of exactly the declared files");
    // What the pipeline lets through after check 10 (the namespace is one that `auth.json`
    // declares, so a valid one) must be a key inside storage.
    if valid.is_ok()
        && is_namespace(&identity.namespace)
        && identity.segments.iter().all(|s| is_segment(s))
        && is_version(&identity.version)
    {
        let registry = identity.registry_key();
        assert!(validate_key(&identity.version_path()).is_ok(), "{registry:?}");
        for path in &declared {
            let key = layout::file_key(&registry, &identity.version, path);
            assert!(validate_key(&key).is_ok(), "{key:?}");
        }
    }
}

/// The verdict in a comparable form: the entries, or the error code (an I/O error is local).
fn verdict(r: &Result<extract::Entries, ExtractError>) -> Result<extract::Entries, Option<&'static str>> {
    match r {
        Ok(entries) => Ok(entries.clone()),
        Err(ExtractError::Api(e)) => Err(Some(e.code())),
        Err(ExtractError::Io(_)) => Err(None),
    }
}

fn scratch_dir() -> tempfile::TempDir {
    // A memory-backed directory when there is one: extraction fsyncs every file.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}

/// Check 6 over an uploaded package (gzip + tar, every limit of SPEC §5.3): the in-memory
/// judgement (uploads that can only fail, `upload::dry`) and the extraction to disk must agree,
/// and what is extracted stays inside the destination.
pub fn archive_gz(package: &[u8]) {
    let judged = dry::judge(package, LIMITS);
    let dir = scratch_dir();
    let file = dir.path().join("package.tar.gz");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(package))
        .expect("write the package");
    let dest = dir.path().join("tree");
    let extracted = extract::extract(&file, &dest, LIMITS);
    let judged = judged.map(|s| {
        // The manifest kept in memory is the one written to disk.
        if s.entries.get("registry.json") == Some(&EntryKind::File) {
            let on_disk = std::fs::read(dest.join("registry.json")).ok();
            if extracted.is_ok() {
                assert_eq!(s.manifest, on_disk, "registry.json kept in memory");
            }
        }
        s.entries
    });
    let (a, b) = (verdict(&judged), verdict(&extracted));
    if a != Err(None) && b != Err(None) {
        assert_eq!(a, b, "in-memory and on-disk verdicts differ");
    }
    if let Ok(entries) = &extracted {
        // Links and special entries are never created, and checks 11 and 12 refuse them
        // whatever their name: only what is written must have a storable name.
        for (path, _) in entries.iter().filter(|(_, k)| **k != EntryKind::Special) {
            assert!(validate_key(path).is_ok(), "entry {path:?}");
        }
        assert_inside(&dest, &dest);
    }
}

/// Every file under `dir` is a real file or directory inside `root` (no link was created).
fn assert_inside(root: &std::path::Path, dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).expect("read the extracted tree").flatten() {
        let meta = std::fs::symlink_metadata(e.path()).expect("stat");
        assert!(
            meta.is_file() || meta.is_dir(),
            "{:?} is neither file nor dir",
            e.path()
        );
        assert!(e.path().starts_with(root));
        if meta.is_dir() {
            assert_inside(root, &e.path());
        }
    }
}

/// [`archive_gz`] over a tar stream: the fuzzer mutates the tar structure (which it cannot do
/// through compression), the body fixes the header checksums (which mutations would otherwise
/// break at once, so that nothing past the first header were reached) and compresses it.
pub fn archive_tar(tar: &[u8]) {
    let mut tar = tar.to_vec();
    fix_checksums(&mut tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("in memory");
    archive_gz(&gz.finish().expect("in memory"));
}

/// Rewrite the checksum of every header of a tar stream, walking it as a reader does (a header,
/// then its data rounded up to blocks) until an empty block or a size that cannot be read.
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while let Some(block) = tar.get_mut(at..at + 512) {
        if block.iter().all(|&b| b == 0) {
            break;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Ok(size) = tar::Header::from_byte_slice(block).entry_size() else {
            break;
        };
        let Some(next) = usize::try_from(size.div_ceil(512))
            .ok()
            .and_then(|blocks| blocks.checked_mul(512))
            .and_then(|data| (at + 512).checked_add(data))
        else {
            break;
        };
        at = next;
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// The multipart reader of uploads (checks 1 to 6 as a token that can publish nowhere meets
/// them). Input: one byte choosing the chunk size, the boundary up to the first `\n`, the body.
pub fn multipart(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let Ok(boundary) = std::str::from_utf8(&rest[..split]) else {
        return;
    };
    let body = Bytes::copy_from_slice(rest.get(split + 1..).unwrap_or_default());
    let size = usize::from(chunk) + 1;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(size)
        .map(|i| Ok(body.slice(i..(i + size).min(body.len()))))
        .collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    let limit = 256 * 1024;
    runtime().block_on(async {
        let target = Target::Judge(LIMITS);
        match receive::receive(body, boundary.to_owned(), limit, target).await {
            Ok(received) => {
                let _ = received.verify();
                if let Some(sha) = &received.sha256 {
                    assert_eq!(sha.len(), 64);
                }
            }
            Err(receive::ReceiveError::Api(e)) => assert_eq!(e.code(), "PAYLOAD_TOO_LARGE"),
            Err(receive::ReceiveError::Io(e)) => panic!("I/O error judging in memory: {e}"),
        }
    });
}

/// The request-header parsers: `Accept-Encoding`, `If-None-Match`, `Authorization` /
/// `X-Registry-Token` and `X-Forwarded-For`. Input: the header values, one per line.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (accept, inm, etag, auth, token, xff) = (next(), next(), next(), next(), next(), next());

    let _ = negotiate(accept);

    let _ = if_none_match(inm, etag);
    // A tag the server made matches itself in any list, weak or with an encoding's suffix.
    let ours = etag_of(etag.as_bytes());
    assert!(if_none_match(&format!("{inm}, W/{ours}"), &ours), "{inm:?}");
    let encoded = with_suffix(&ours, negotiate(accept).map(|e| e.etag_suffix()));
    assert!(if_none_match(&encoded, &ours) && if_none_match(&ours, &encoded));

    if let Some(t) = extract_token(Some(auth), Some(token)) {
        assert!(!t.is_empty() && t.trim() == t);
        assert!(auth.contains(t) || token.contains(t));
    }

    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut headers = HeaderMap::new();
    for value in xff.split('\u{1}') {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.append("x-forwarded-for", v);
        }
    }
    let listed: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for trust in [
        TrustProxy::No,
        TrustProxy::All,
        TrustProxy::Hops(1),
        TrustProxy::Hops(2),
    ] {
        let ip = client_ip(peer, &headers, trust);
        assert!(ip == peer || listed.contains(&ip), "{ip} from {xff:?}");
    }
    assert_eq!(client_ip(peer, &headers, TrustProxy::No), peer);
}
