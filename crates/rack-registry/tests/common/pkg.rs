//! Package builder and upload helpers for the `POST /registries` tests.
//!
//! - raw tar writer: any entry type and any path bytes (absolute, `..`, non-UTF-8), which the
//!   `tar` crate's safe builder refuses to write;
//! - gzip, SHA-256, a manifest builder;
//! - a multipart uploader with control over every part (type, order, token header);
//! - a gzip "bomb" builder that produces gigabytes of expansion from a few MiB without
//!   compressing gigabytes (byte-aligned, self-contained deflate segments repeated);
//! - storage snapshots to assert that a refused upload left nothing behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::{Compress, Compression, Crc, FlushCompress};
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

// ---------------------------------------------------------------------------------------------
// Raw tar
// ---------------------------------------------------------------------------------------------

/// What a tar entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char,
    Block,
    Fifo,
}

/// One tar entry with raw name bytes (written verbatim into the header's 100-byte name field).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
}

pub fn file(name: &str, content: impl AsRef<[u8]>) -> Entry {
    raw_file(name.as_bytes(), content)
}
pub fn raw_file(name: &[u8], content: impl AsRef<[u8]>) -> Entry {
    Entry {
        name: name.to_vec(),
        kind: Kind::File(content.as_ref().to_vec()),
    }
}
pub fn dir(name: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Dir,
    }
}
pub fn symlink(name: &str, target: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Symlink(target.as_bytes().to_vec()),
    }
}
pub fn hardlink(name: &str, target: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Hardlink(target.as_bytes().to_vec()),
    }
}
pub fn char_device(name: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Char,
    }
}
pub fn block_device(name: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Block,
    }
}
pub fn fifo(name: &str) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: Kind::Fifo,
    }
}

fn put_bytes(slot: &mut [u8], bytes: &[u8]) {
    assert!(bytes.len() <= slot.len(), "name too long for a raw tar header");
    slot.fill(0);
    slot[..bytes.len()].copy_from_slice(bytes);
}

/// A GNU header with `name` written verbatim (no validation at all) and a valid checksum.
pub fn raw_header(name: &[u8], ty: EntryType, size: u64, link: Option<&[u8]>) -> Header {
    let mut h = Header::new_gnu();
    put_bytes(&mut h.as_old_mut().name, name);
    if let Some(link) = link {
        put_bytes(&mut h.as_old_mut().linkname, link);
    }
    h.set_entry_type(ty);
    h.set_mode(if ty == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    if matches!(ty, EntryType::Char | EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// The tar bytes of one entry (header, data, padding), without the end-of-archive blocks.
pub fn entry_bytes(e: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    let (ty, size, link, data): (EntryType, u64, Option<&[u8]>, &[u8]) = match &e.kind {
        Kind::File(c) => (EntryType::Regular, c.len() as u64, None, c),
        Kind::Dir => (EntryType::Directory, 0, None, &[]),
        Kind::Symlink(t) => (EntryType::Symlink, 0, Some(t), &[]),
        Kind::Hardlink(t) => (EntryType::Link, 0, Some(t), &[]),
        Kind::Char => (EntryType::Char, 0, None, &[]),
        Kind::Block => (EntryType::Block, 0, None, &[]),
        Kind::Fifo => (EntryType::Fifo, 0, None, &[]),
    };
    out.extend_from_slice(raw_header(&e.name, ty, size, link).as_bytes());
    out.extend_from_slice(data);
    pad(&mut out);
    out
}

/// Uncompressed tar bytes of `entries`, in order, with the two zero end blocks.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&entry_bytes(e));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_level(data, Compression::default())
}

pub fn gzip_level(data: &[u8], level: Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `.tar.gz` of `entries`.
pub fn targz(entries: &[Entry]) -> Vec<u8> {
    gzip(&tar_bytes(entries))
}

/// `n` bytes of incompressible pseudo-random data (xorshift64*), reproducible from `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------------------------
// Manifests and packages
// ---------------------------------------------------------------------------------------------

/// A schema-valid manifest declaring `files` (as `files[].path`).
pub fn manifest(ns: &str, name: &str, version: &str, ty: &str, files: &[&str]) -> Value {
    let files: Vec<Value> = files
        .iter()
        .map(|p| {
            let target = p.trim_start_matches("./");
            json!({"target": target, "type": "registry:lib", "path": p})
        })
        .collect();
    json!({
        "name": name,
        "namespace": ns,
        "version": version,
        "type": ty,
        "priority": 1,
        "description": "test package",
        "files": files,
    })
}

/// `.tar.gz` with `registry.json` (the given bytes) and the template files, in that order.
pub fn package_raw(manifest: &[u8], files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = vec![raw_file(b"registry.json", manifest)];
    entries.extend(files.iter().map(|(p, c)| file(p, c)));
    targz(&entries)
}

/// `.tar.gz` of a manifest (pretty JSON) and the template files.
pub fn package(manifest: &Value, files: &[(&str, &[u8])]) -> Vec<u8> {
    package_raw(&serde_json::to_vec_pretty(manifest).unwrap(), files)
}

/// A valid package of `@ns/<type dir>/name@version` with one template file.
pub fn simple(ns: &str, name: &str, version: &str) -> Vec<u8> {
    let m = manifest(ns, name, version, "registry:build", &["templates/a.txt"]);
    package(&m, &[("templates/a.txt", b"hello\n")])
}

// ---------------------------------------------------------------------------------------------
// Uploading
// ---------------------------------------------------------------------------------------------

/// How the token is sent.
#[derive(Debug, Clone)]
pub enum Token {
    None,
    Bearer(String),
    XRegistry(String),
    /// Any header, verbatim.
    Header(String, String),
}

/// A multipart upload with full control over its parts.
#[derive(Debug, Clone)]
pub struct Upload {
    pub package: Vec<u8>,
    /// `None`: no checksum field at all.
    pub checksum: Option<String>,
    pub token: Token,
    /// The file part's content type; `None` sends the part without one.
    pub content_type: Option<String>,
    pub checksum_after: bool,
    pub field: String,
    pub file_name: String,
    /// Send the file part as a stream of unknown length (chunked request body).
    pub chunked: bool,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub cache_control: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", self.text))
    }

    /// Status, code and (exact) message of an error reply.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, message: &str) {
        self.assert_code(status, code);
        assert_eq!(self.json()["message"], message, "reply: {}", self.text);
    }

    /// Status and code of an error reply (body is exactly `{"code","message"}`, no-store).
    #[track_caller]
    pub fn assert_code(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "reply: {}", self.text);
        let body = self.json();
        assert_eq!(body["code"], code, "reply: {}", self.text);
        let obj = body.as_object().expect("error body is an object");
        assert_eq!(
            obj.len(),
            2,
            "error body has exactly code and message: {}",
            self.text
        );
        assert!(obj["message"].is_string(), "reply: {}", self.text);
        assert_eq!(self.cache_control.as_deref(), Some("no-store"));
    }

    pub fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or_default().to_owned()
    }
}

impl Upload {
    /// The package with its correct checksum, `application/gzip`, checksum first, no token.
    pub fn new(package: Vec<u8>) -> Upload {
        let checksum = Some(sha256_hex(&package));
        Upload {
            package,
            checksum,
            token: Token::None,
            content_type: Some("application/gzip".into()),
            checksum_after: false,
            field: "package".into(),
            file_name: "package.tar.gz".into(),
            chunked: false,
        }
    }
    pub fn bearer(mut self, t: &str) -> Upload {
        self.token = Token::Bearer(t.into());
        self
    }
    pub fn x_token(mut self, t: &str) -> Upload {
        self.token = Token::XRegistry(t.into());
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Upload {
        self.token = Token::Header(name.into(), value.into());
        self
    }
    pub fn checksum(mut self, c: Option<&str>) -> Upload {
        self.checksum = c.map(str::to_owned);
        self
    }
    pub fn content_type(mut self, ct: Option<&str>) -> Upload {
        self.content_type = ct.map(str::to_owned);
        self
    }
    pub fn checksum_after(mut self) -> Upload {
        self.checksum_after = true;
        self
    }
    pub fn field(mut self, f: &str) -> Upload {
        self.field = f.into();
        self
    }
    pub fn chunked(mut self) -> Upload {
        self.chunked = true;
        self
    }

    pub fn form(&self) -> Form {
        let mut form = Form::new();
        if !self.checksum_after {
            if let Some(c) = &self.checksum {
                form = form.text("checksum", c.clone());
            }
        }
        let mut part = if self.chunked {
            Part::reader(std::io::Cursor::new(self.package.clone()))
        } else {
            Part::bytes(self.package.clone())
        }
        .file_name(self.file_name.clone());
        if let Some(ct) = &self.content_type {
            part = part.mime_str(ct).unwrap();
        }
        form = form.part(self.field.clone(), part);
        if self.checksum_after {
            if let Some(c) = &self.checksum {
                form = form.text("checksum", c.clone());
            }
        }
        form
    }

    pub fn send(&self, base: &str) -> Reply {
        let req = client().post(format!("{base}/registries")).multipart(self.form());
        send(with_token(req, &self.token))
    }
}

pub fn with_token(
    req: reqwest::blocking::RequestBuilder,
    token: &Token,
) -> reqwest::blocking::RequestBuilder {
    match token {
        Token::None => req,
        Token::Bearer(t) => req.header("Authorization", format!("Bearer {t}")),
        Token::XRegistry(t) => req.header("X-Registry-Token", t),
        Token::Header(n, v) => req.header(n.as_str(), v.as_str()),
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn send(req: reqwest::blocking::RequestBuilder) -> Reply {
    let res = req.send().expect("request");
    let status = res.status().as_u16();
    let cache_control = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().unwrap();
    Reply {
        status,
        text,
        cache_control,
    }
}

/// GET a path with a bearer token (if any); status and body bytes.
pub fn get(base: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.bytes().unwrap().to_vec())
}

/// One part of a hand-built multipart body: `(name, filename, content type, data)`.
pub type PartSpec<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A multipart body built by hand (for raw socket tests).
pub fn multipart_body(boundary: &str, parts: &[PartSpec<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, ct, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n").as_bytes(),
            ),
            None => out
                .extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes()),
        }
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// `host:port` of a base URL `http://host:port`.
pub fn authority(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Open a connection and send request headers (no body yet).
pub fn raw_request_head(base: &str, headers: &[(&str, String)]) -> TcpStream {
    let mut s = TcpStream::connect(authority(base)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut head = format!("POST /registries HTTP/1.1\r\nHost: {}\r\n", authority(base));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Status, headers (lowercased names) and body of a response read off a socket.
pub type RawReply = (u16, Vec<(String, String)>, Vec<u8>);

/// Read one HTTP/1.1 response (Content-Length framed) from `s`: status, headers (lowercased
/// names), body. `None` on EOF/error before a complete response.
pub fn read_response(s: &mut TcpStream) -> Option<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some((status, headers, body))
}

// ---------------------------------------------------------------------------------------------
// Gzip bombs
// ---------------------------------------------------------------------------------------------

/// Builds a gzip stream from byte-aligned, self-contained deflate segments (each ends with a
/// full flush, which resets the compressor's dictionary), so one compressed segment can be
/// repeated any number of times. CRC and size are combined arithmetically: building a stream
/// that expands to gigabytes costs a few MiB of compression.
pub struct GzBuilder {
    compress: Compress,
    deflate: Vec<u8>,
    crc: Crc,
    total: u64,
}

impl Default for GzBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GzBuilder {
    pub fn new() -> GzBuilder {
        GzBuilder {
            compress: Compress::new(Compression::best(), false),
            deflate: Vec::new(),
            crc: Crc::new(),
            total: 0,
        }
    }

    fn segment(&mut self, data: &[u8], flush: FlushCompress) -> Vec<u8> {
        let mut out = Vec::new();
        let start = self.compress.total_in();
        loop {
            out.reserve(256 * 1024);
            let consumed = (self.compress.total_in() - start) as usize;
            let status = self
                .compress
                .compress_vec(&data[consumed..], &mut out, flush)
                .unwrap();
            let consumed = (self.compress.total_in() - start) as usize;
            if flush == FlushCompress::Finish {
                if status == flate2::Status::StreamEnd {
                    break;
                }
                continue;
            }
            // All input taken and the flush did not fill the buffer: the segment is complete.
            if consumed == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }

    /// Append `data` once.
    pub fn push(&mut self, data: &[u8]) {
        let seg = self.segment(data, FlushCompress::Full);
        self.deflate.extend_from_slice(&seg);
        self.crc.update(data);
        self.total += data.len() as u64;
    }

    /// Compress `data` once into a segment that can be appended any number of times.
    pub fn prepare(&mut self, data: &[u8]) -> Prepared {
        let bytes = self.segment(data, FlushCompress::Full);
        let mut crc = Crc::new();
        crc.update(data);
        Prepared {
            bytes,
            crc,
            len: data.len() as u64,
        }
    }

    /// Append a prepared segment `times` times.
    pub fn push_prepared(&mut self, seg: &Prepared, times: u64) {
        for _ in 0..times {
            self.deflate.extend_from_slice(&seg.bytes);
            self.crc.combine(&seg.crc);
        }
        self.total += seg.len * times;
    }

    /// Append `data` `times` times (compressed once).
    pub fn push_repeated(&mut self, data: &[u8], times: u64) {
        if times == 0 {
            return;
        }
        let seg = self.prepare(data);
        self.push_prepared(&seg, times);
    }

    /// Expanded size so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The complete gzip stream (header, deflate data with a final block, CRC32, ISIZE).
    pub fn finish(mut self) -> Vec<u8> {
        let tail = self.segment(&[], FlushCompress::Finish);
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255];
        out.extend_from_slice(&self.deflate);
        out.extend_from_slice(&tail);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&(self.total as u32).to_le_bytes());
        out
    }
}

/// A compressed, self-contained segment (see [`GzBuilder::prepare`]).
pub struct Prepared {
    bytes: Vec<u8>,
    crc: Crc,
    len: u64,
}

/// Append the zeros of `n` bytes to a builder, in 1 MiB segments plus a remainder.
pub fn push_zeros(gz: &mut GzBuilder, n: u64) {
    const MIB: u64 = 1 << 20;
    let zeros = vec![0u8; MIB as usize];
    gz.push_repeated(&zeros, n / MIB);
    let rest = (n % MIB) as usize;
    if rest > 0 {
        gz.push(&zeros[..rest]);
    }
}

/// Size of `n` bytes of file data in a tar (padded to 512).
pub fn padded(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

// ---------------------------------------------------------------------------------------------
// Storage assertions
// ---------------------------------------------------------------------------------------------

/// Every path under a directory (except `storage/.tmp`), with file contents or symlink targets.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<PathBuf, String>);

impl Snapshot {
    /// Snapshot `root` (a world directory), skipping `storage/.tmp`.
    pub fn take(root: &Path) -> Snapshot {
        let mut map = BTreeMap::new();
        walk(root, root, &mut map);
        Snapshot(map)
    }

    /// Nothing changed under `root` and `<root>/storage/.tmp` is empty or absent.
    #[track_caller]
    pub fn assert_unchanged(&self, root: &Path) {
        assert_tmp_clean(&root.join("storage"));
        let now = Snapshot::take(root);
        if now != *self {
            let added: Vec<_> = now.0.keys().filter(|k| !self.0.contains_key(*k)).collect();
            let removed: Vec<_> = self.0.keys().filter(|k| !now.0.contains_key(*k)).collect();
            let changed: Vec<_> = now
                .0
                .iter()
                .filter(|(k, v)| self.0.get(*k).is_some_and(|o| o != *v))
                .map(|(k, _)| k)
                .collect();
            panic!("storage changed: added {added:?}, removed {removed:?}, changed {changed:?}");
        }
    }
}

fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<PathBuf, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let e = e.unwrap();
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().to_owned();
        if rel == Path::new("storage/.tmp") {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_symlink() {
            let t = std::fs::read_link(&path).unwrap();
            map.insert(rel, format!("symlink -> {}", t.display()));
        } else if ty.is_dir() {
            map.insert(rel, "dir".into());
            walk(root, &path, map);
        } else if ty.is_file() {
            let data = std::fs::read(&path).unwrap();
            map.insert(rel, format!("file {}", sha256_hex(&data)));
        } else {
            map.insert(rel, format!("special {ty:?}"));
        }
    }
}

/// Nothing of any upload is left in `<storage>/.tmp`: no file and no staging directory. Empty
/// directories are tolerated here (the server keeps an empty `.tmp/journal/`, see
/// [`assert_tmp_empty_or_absent`] for the literal SPEC rule, asserted by one dedicated test).
#[track_caller]
pub fn assert_tmp_clean(storage: &Path) {
    let tmp = storage.join(".tmp");
    let mut left = Vec::new();
    leftovers(&tmp, &mut left);
    assert!(left.is_empty(), "staging not cleaned: {left:?}");
}

fn leftovers(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() && !name.starts_with("upload-") => leftovers(&path, out),
            _ => out.push(path),
        }
    }
}

/// SPEC §5.3, literally: `<storage>/.tmp` is empty or absent.
#[track_caller]
pub fn assert_tmp_empty_or_absent(storage: &Path) {
    let tmp = storage.join(".tmp");
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        let left: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "{} is not empty: {left:?}", tmp.display());
    }
}

/// Total bytes of regular files under `dir` (0 if absent); no symlinks are followed.
pub fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.flatten() {
        let Ok(ty) = e.file_type() else { continue };
        if ty.is_dir() {
            total += du(&e.path());
        } else if ty.is_file() {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Bytes of extracted files in every staging directory (`.tmp/*/tree`), i.e. without the
/// uploaded package itself.
pub fn staged_tree_bytes(storage: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(storage.join(".tmp")) else {
        return 0;
    };
    rd.flatten().map(|e| du(&e.path().join("tree"))).sum()
}

/// Polls `probe` every 2 ms on a thread and keeps the maximum, until [`MaxWatch::stop`].
pub struct MaxWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl MaxWatch {
    pub fn start(probe: impl Fn() -> u64 + Send + 'static) -> MaxWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = probe();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                max = max.max(probe());
                std::thread::sleep(Duration::from_millis(2));
            }
            max.max(probe())
        });
        MaxWatch { stop, handle }
    }

    /// Stop polling; the maximum seen.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// How much a process's resident memory grows while something runs (KiB): sampled RSS and the
/// kernel's high-water mark (which catches peaks between samples).
pub struct RssWatch {
    pid: u32,
    rss_before: u64,
    hwm_before: u64,
    watch: MaxWatch,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let (rss_before, hwm_before) = rss_kib(pid);
        assert!(rss_before > 0, "cannot read /proc/{pid}/status");
        RssWatch {
            pid,
            rss_before,
            hwm_before,
            watch: MaxWatch::start(move || rss_kib(pid).0),
        }
    }

    /// Growth in KiB over the RSS at start.
    pub fn growth_kib(self) -> u64 {
        let sampled = self.watch.stop();
        let (_, hwm) = rss_kib(self.pid);
        let mut peak = sampled;
        if hwm > self.hwm_before {
            peak = peak.max(hwm);
        }
        peak.saturating_sub(self.rss_before)
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Exact `versions.json` bytes for a list (two-space indent, trailing newline).
pub fn versions_json(versions: &[&str]) -> String {
    let mut s = serde_json::to_string_pretty(&json!({ "versions": versions })).unwrap();
    s.push('\n');
    s
}
