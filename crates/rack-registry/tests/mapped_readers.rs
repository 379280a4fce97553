//! Slow readers of memory-mapped files (`MAP_FILES=auto`, storage/mapped.rs; issue 25, item 4).
//!
//! A client that never reads its responses (a tiny receive buffer, requests pipelined) keeps a
//! response body in flight, and with it the leased map of the file. An operator's write to the
//! file must still go through within about a second (the server copies the map's bytes out and
//! drops the lease when it is asked to), not after the kernel's lease-break time (45 s); and
//! every response, read in full afterwards, must carry one version of the file under that
//! version's `ETag`: never the first bytes old and the rest new.

mod common;
#[path = "common/http.rs"]
mod http;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::RawClient;
use rack_core::etag::etag_of;

const PATH: &str = "/registries/@rack/build/rollup/1.0.0/files/templates/rollup.config.mjs";
const DISK: &str = "@rack/build/rollup/1.0.0/templates/rollup.config.mjs";
/// The size in the report: a little under the 64 KiB up to which files are mapped.
const SIZE: usize = 61_000;
/// Pipelined requests per stalled connection.
const PIPELINED: usize = 120;
/// How long a writer may wait for the readers: generous, this is a hang test.
const WRITER_BOUND: Duration = Duration::from_secs(2);

/// A version of the file: `SIZE` bytes (plus `extra`) of a pattern that differs at every
/// offset between versions.
fn version(tag: u8, extra: usize) -> Vec<u8> {
    (0..SIZE + extra)
        .map(|i| b'a' + ((i + tag as usize) % 26) as u8)
        .collect()
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

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("an ip:port base")
}

/// A connection whose receive buffer is set to 2 KiB before it connects (so the window the
/// server sees stays small), with `PIPELINED` GETs of `PATH` written and none read.
fn stalled_reader(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 loopback expected, got {addr}")
    };
    // SAFETY: plain socket calls on a descriptor we create and then hand to `TcpStream`.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let size: libc::c_int = 2048;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    let mut stream = stream;
    let one = format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(one.repeat(PIPELINED).as_bytes()).unwrap();
    stream
}

/// One response off a pipelined HTTP/1.1 connection: status, `ETag`, body.
fn read_response(r: &mut impl BufRead) -> (u16, String, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let (mut etag, mut length) = (String::new(), None);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').expect("a header");
        match name.to_ascii_lowercase().as_str() {
            "etag" => etag = value.trim().to_owned(),
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "transfer-encoding" => panic!("a file is sent with its length, not {value}"),
            _ => {}
        }
    }
    let mut body = vec![0; length.expect("a Content-Length")];
    r.read_exact(&mut body).unwrap();
    (status, etag, body)
}

/// Write `bytes` to `path` on another thread, the way `op` says (truncate and rewrite in
/// place, or append); how long its open and write took, or `None` past `WRITER_BOUND`.
fn timed_write(path: &Path, op: &'static str, bytes: Vec<u8>) -> Option<Duration> {
    let path = path.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut options = std::fs::OpenOptions::new();
        match op {
            "rewrite" => options.write(true).truncate(true),
            _ => options.append(true),
        };
        let mut f = options.open(&path).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        let _ = tx.send(started.elapsed());
    });
    rx.recv_timeout(WRITER_BOUND).ok()
}

/// Stalled readers hold the map of a file while it is rewritten in place (same length, the
/// case that mixed versions) and then appended to: each writer proceeds within the bound, and
/// every one of the pipelined responses, read afterwards, is one whole version under its own
/// content-derived `ETag`.
#[test]
fn stalled_readers_never_hold_writers_nor_mix_versions() {
    if common::s3::local_only("leases on local files") {
        return;
    }
    let (world, server) = common::start_with(&[("MAP_FILES", "auto"), ("FS_WATCH", "auto")]);
    let addr = addr_of(&server.base);
    let disk = world.storage().join(DISK);
    let c = RawClient::new(&server.base);
    let v1 = version(0, 0);
    let v2 = version(1, 0);
    let v3: Vec<u8> = [v2.clone(), version(2, 0)[..3000].to_vec()].concat();
    let known = [&v1, &v2, &v3];

    std::fs::write(&disk, &v1).unwrap();
    let first = c.request("GET", PATH, &[]).unwrap();
    assert_eq!(first.status, 200);
    assert!(first.body == v1, "the first version is served");
    assert!(leases_of(server.pid()) > 0, "the file is served from a map");

    let mut stalled = Vec::new();
    let check = |stalled: &mut Vec<TcpStream>| {
        for (n, conn) in stalled.drain(..).enumerate() {
            conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut r = BufReader::new(conn);
            for i in 0..PIPELINED {
                let (status, etag, body) = read_response(&mut r);
                assert_eq!(status, 200, "connection {n}, response {i}");
                let which = known.iter().position(|v| **v == body);
                assert!(
                    which.is_some(),
                    "connection {n}, response {i}: {} bytes of no single version (first \
                     {} bytes from v1)",
                    body.len(),
                    body.iter().zip(&v1).take_while(|(a, b)| a == b).count()
                );
                assert_eq!(
                    etag,
                    etag_of(&body),
                    "connection {n}, response {i}: the ETag is not its body's"
                );
            }
        }
    };

    for (op, next) in [("rewrite", &v2), ("append", &v3)] {
        // Three stalled connections: their first responses sit in flight, holding maps.
        for _ in 0..3 {
            stalled.push(stalled_reader(addr));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            leases_of(server.pid()) > 0,
            "{op}: the stalled responses hold a leased map"
        );
        let written = match op {
            "rewrite" => next.to_vec(),
            _ => next[SIZE..].to_vec(),
        };
        let waited = timed_write(&disk, op, written);
        assert!(
            waited.is_some(),
            "{op}: the writer still waits for the stalled readers after {WRITER_BOUND:?}"
        );
        assert!(&std::fs::read(&disk).unwrap() == next, "{op}: written");
        let fresh = c.request("GET", PATH, &[]).unwrap();
        assert!(&fresh.body == next, "{op}: the next GET serves the write");
        check(&mut stalled);
    }
}

/// One HTTP/2 connection whose flow-control window is used up and never opened again while
/// the file is written: eight responses of the file sit in flight (the first sent whole, the
/// second in part, the rest not begun), holding the map. The writer proceeds within the bound,
/// and every body, read afterwards, is the old version whole under its `ETag`.
#[test]
fn a_stalled_http2_connection_never_holds_writers_nor_mixes_versions() {
    if common::s3::local_only("leases on local files") {
        return;
    }
    use http_body_util::BodyExt;
    let (world, server) = common::start_with(&[("MAP_FILES", "auto"), ("FS_WATCH", "auto")]);
    let addr = addr_of(&server.base);
    let disk = world.storage().join(DISK);
    let v1 = version(0, 0);
    let v2 = version(1, 0);
    std::fs::write(&disk, &v1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (send, responses) = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        let mut responses = Vec::new();
        for _ in 0..8 {
            let req = hyper::Request::get(format!("http://{addr}{PATH}"))
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                .unwrap();
            responses.push(send.send_request(req).await.unwrap());
        }
        // Let the server send what the window allows, and stall.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (send, responses)
    });
    assert!(
        leases_of(server.pid()) > 0,
        "the stalled responses hold a leased map"
    );
    let waited = timed_write(&disk, "rewrite", v2.clone());
    assert!(
        waited.is_some(),
        "the writer still waits for the stalled stream after {WRITER_BOUND:?}"
    );
    // Read every stream at once: the server shares the window out among them.
    let bodies = rt.block_on(async move {
        let reads: Vec<_> = responses
            .into_iter()
            .map(|r| {
                tokio::spawn(async move {
                    assert_eq!(r.status(), 200);
                    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
                    let body = r.into_body().collect().await.unwrap().to_bytes();
                    (etag, body.to_vec())
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for read in reads {
            bodies.push(read.await.unwrap());
        }
        drop(send);
        bodies
    });
    for (i, (etag, body)) in bodies.iter().enumerate() {
        assert!(
            *body == v1,
            "response {i}: {} bytes, not the version its headers were sent for (first {} \
             bytes from it)",
            body.len(),
            body.iter().zip(&v1).take_while(|(a, b)| a == b).count()
        );
        assert_eq!(*etag, etag_of(body), "response {i}: the ETag is not its body's");
    }
    let fresh = RawClient::new(&server.base).request("GET", PATH, &[]).unwrap();
    assert!(fresh.body == v2, "the next GET serves the write");
}
