//! The serving model (`http/serve.rs`): connections spread over `HTTP_WORKERS` event loops,
//! keep-alive, HTTP/2 without TLS (prior knowledge), and graceful shutdown with a request in
//! flight (SPEC §8: stop accepting, finish in-flight requests).

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, World, ADMIN_TOKEN};

/// `host:port` of a server's base URL, for raw TCP connections.
fn host_port(base: &str) -> String {
    base.strip_prefix("http://").unwrap().to_owned()
}

/// One keep-alive HTTP/1.1 connection: `n` GETs of `path` in a row; every answer must be a 200
/// carrying `expect` as its body.
fn keep_alive_gets(base: &str, path: &str, n: usize, expect: &[u8]) {
    let addr = host_port(base);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut conn, &mut pending);
        assert_eq!(status, 200, "request {i} on one connection");
        assert_eq!(body, expect, "request {i}: body");
    }
}

/// Read one `Content-Length`-framed response from `conn` (bytes after it stay in `pending`).
fn read_response(conn: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, Vec<u8>) {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            while pending.len() < end + 4 + len {
                let n = conn.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed mid-response");
                pending.extend_from_slice(&chunk[..n]);
            }
            let body = pending[end + 4..end + 4 + len].to_vec();
            pending.drain(..end + 4 + len);
            return (status, body);
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The stored bytes of the manifest the tests read.
fn rollup_manifest(world: &World) -> Vec<u8> {
    std::fs::read(world.storage().join(MANIFEST_KEY)).unwrap()
}

const MANIFEST_KEY: &str = "@rack/build/rollup/1.0.0/registry.json";

#[test]
fn many_keep_alive_connections_over_one_or_several_workers() {
    let world = World::new();
    let manifest = rollup_manifest(&world);
    for workers in ["1", "3"] {
        let server = Server::start(world.path(), &world.env_with(&[("HTTP_WORKERS", workers)]));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let base = server.base.clone();
                let manifest = manifest.clone();
                std::thread::spawn(move || {
                    keep_alive_gets(&base, "/registries/@rack/build/rollup/1.0.0", 25, &manifest)
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("HTTP_WORKERS={workers}: a connection failed"));
        }
        assert!(
            server.output().contains(&format!("\"workers\":{workers}")),
            "the startup line names the worker count:\n{}",
            server.output()
        );
    }
}

#[test]
fn http2_with_prior_knowledge() {
    let world = World::new();
    let server = Server::world(&world);
    let manifest = rollup_manifest(&world);
    let addr = host_port(&server.base);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, version, body) = rt.block_on(async move {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://{addr}/registries/@rack/build/rollup/1.0.0"))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        let (status, version) = (res.status().as_u16(), res.version());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, version, body)
    });
    assert_eq!(status, 200);
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(&body[..], &manifest[..]);
}

/// An upload whose body is still arriving when SIGTERM comes: the server stops accepting new
/// connections at once, lets the upload finish (201, stored), and then exits 0.
#[test]
fn sigterm_lets_an_upload_in_flight_finish() {
    if common::s3::local_only("checks the published files on disk") {
        return;
    }
    let world = World::new();
    let server = Server::world(&world);
    let addr = host_port(&server.base);
    let package = pkg::simple("@company", "inflight", "1.0.0");
    let checksum = pkg::sha256_hex(&package);
    let boundary = "xBOUNDARYx";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"checksum\"\r\n\r\n{checksum}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.tar.gz\"\r\n\
         Content-Type: application/gzip\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(&package);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();

    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        conn,
        "POST /registries HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    conn.write_all(&body[..half]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let pid = server.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.terminate());
    });
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "the server exited with an upload in flight"
    );

    conn.write_all(&body[half..]).unwrap();
    let mut pending = Vec::new();
    let (status, reply) = read_response(&mut conn, &mut pending);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
    drop(conn);
    let exit = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no exit within 10 s of the upload's end");
    assert_eq!(exit.code(), Some(0));
    assert!(world
        .storage()
        .join("@company/build/inflight/1.0.0/registry.json")
        .is_file());
    let versions =
        std::fs::read_to_string(world.storage().join("@company/build/inflight/versions.json")).unwrap();
    assert!(versions.contains("1.0.0"), "{versions}");
}

/// An idle keep-alive connection does not hold the shutdown up.
#[test]
fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let world = World::new();
    let server = Server::world(&world);
    let manifest = rollup_manifest(&world);
    let addr = host_port(&server.base);
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            conn,
            "GET /registries/@rack/build/rollup/1.0.0 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )
        .unwrap();
        let (status, body) = read_response(&mut conn, &mut Vec::new());
        assert_eq!((status, body), (200, manifest.clone()));
        idle.push(conn);
    }
    let started = Instant::now();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The idle connections were closed by the server.
    for mut conn in idle {
        let mut buf = [0u8; 1];
        assert_eq!(conn.read(&mut buf).unwrap_or(0), 0);
    }
}

/// A client that sends half a request head is disconnected after `HEADER_TIMEOUT_SECONDS`, and so
/// is a keep-alive connection left idle that long; a prompt client on the same server is served.
#[test]
fn slow_headers_and_idle_connections_are_cut_after_the_header_timeout() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(&[("HEADER_TIMEOUT_SECONDS", "1")]));
    let addr = host_port(&server.base);

    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(slow, "GET /health HTTP/1.1\r\nHost: {addr}\r\n").unwrap(); // no final CRLF
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(idle, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut idle, &mut Vec::new());
    assert_eq!(status, 200);

    let started = Instant::now();
    for (name, conn) in [("slow", &mut slow), ("idle", &mut idle)] {
        let mut rest = Vec::new();
        // The server closes the connection (EOF), possibly after a 408 for the slow one.
        let _ = conn.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{name}: unexpected bytes {text:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "connections cut after {waited:?}"
    );
    assert!(waited >= Duration::from_millis(500), "cut too early: {waited:?}");

    // Prompt clients are unaffected.
    let manifest = rollup_manifest(&world);
    keep_alive_gets(&server.base, "/registries/@rack/build/rollup/1.0.0", 3, &manifest);
}

/// Slowloris on a connection that has already been served: after one prompt request, the next
/// head arrives a header line at a time, every 200 ms, and never ends. Bytes keep moving, so
/// only the header timeout can end it; the connection must be cut within two timeouts of the
/// last response, and the headers sent meanwhile must not be answered.
#[test]
fn a_head_dripped_after_a_request_is_cut_within_two_header_timeouts() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(&[("HEADER_TIMEOUT_SECONDS", "1")]));
    let addr = host_port(&server.base);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (status, _) = read_response(&mut conn, &mut Vec::new());
    assert_eq!(status, 200);

    let served = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(conn, "GET /health HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
    let mut answered = Vec::new();
    let mut lines = 0;
    let cut = loop {
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => break served.elapsed(),
            Ok(n) => answered.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break served.elapsed(), // reset
        }
        assert!(
            served.elapsed() < Duration::from_secs(8),
            "still open after {lines} dripped header lines"
        );
        if write!(conn, "X-Drip-{lines}: x\r\n").is_err() {
            break served.elapsed();
        }
        lines += 1;
    };
    // A tick of the watchdog lands between one and two timeouts after the last response; the
    // margin is for a loaded test machine.
    assert!(cut < Duration::from_secs(5), "cut after {cut:?}");
    assert!(
        lines >= 3,
        "cut before the drip went on: {lines} lines in {cut:?}"
    );
    let text = String::from_utf8_lossy(&answered);
    assert!(
        answered.is_empty() || text.starts_with("HTTP/1.1 408"),
        "the dripped request was answered: {text:?}"
    );
}
