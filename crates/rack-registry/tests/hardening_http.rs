//! What an anonymous client must not be able to do to the HTTP layer (issue: hardening):
//! hold connections open without asking for anything, grow the metrics without bound, make
//! the server compress large objects per request, or hold large objects in memory per reader.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, World};

fn host_port(base: &str) -> String {
    base.strip_prefix("http://").unwrap().to_owned()
}

/// Whether the server closes `conn` (EOF or reset) within `within`; bytes it sends first
/// (an HTTP/2 GOAWAY, a 408) are read and ignored.
fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        conn.set_read_timeout(Some(deadline - Instant::now() + Duration::from_millis(1)))
            .unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// A GET on a fresh connection: status line and the whole response (`Connection: close`).
fn get_raw(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let addr = host_port(base);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[end + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn connections_that_never_ask_are_closed_within_the_header_timeout() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(&[("HEADER_TIMEOUT_SECONDS", "1")]));
    let addr = host_port(&server.base);
    // Nothing at all; a partial HTTP/2 preface; a whole preface and SETTINGS, then silence; a
    // partial HTTP/1 request line.
    let openers: [&[u8]; 4] = [
        b"",
        b"PRI * HT",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET /health HT",
    ];
    let mut conns: Vec<TcpStream> = openers
        .iter()
        .map(|bytes| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(bytes).unwrap();
            c
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            closed_by_server(c, Duration::from_secs(15)),
            "connection {i} ({:?}) is closed by the server",
            String::from_utf8_lossy(openers[i])
        );
    }
    // The server is fine afterwards.
    assert_eq!(get_raw(&server.base, "/health", &[]).0, 200);
}

#[test]
fn an_idle_http2_connection_is_closed_after_its_requests() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env_with(&[("HEADER_TIMEOUT_SECONDS", "1")]));
    let addr = host_port(&server.base);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/health"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        drop(res);
        // Kept open by the client, idle: the server ends it (GOAWAY, then close).
        let ended = tokio::time::timeout(Duration::from_secs(15), conn).await;
        assert!(
            ended.is_ok(),
            "the idle HTTP/2 connection was closed by the server"
        );
    });
}

#[test]
fn at_the_connection_cap_new_clients_wait_for_a_slot_and_the_cap_is_logged_once() {
    let world = World::new();
    let server = Server::start(
        world.path(),
        &world.env_with(&[("HEADER_TIMEOUT_SECONDS", "2"), ("MAX_CONNECTIONS", "4")]),
    );
    let addr = host_port(&server.base);
    // Eight silent sockets: four hold every slot, four wait in the backlog.
    let _silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // A real client is served once the silent ones have been dropped.
    let (status, _, _) = get_raw(&server.base, "/health", &[]);
    assert_eq!(status, 200);
    let said = server.output().matches("connection limit reached").count();
    assert_eq!(said, 1, "logged once:\n{}", server.output());
}

#[test]
fn metrics_series_stay_bounded_whatever_the_methods_and_paths() {
    let world = World::new();
    let server = Server::start(world.path(), &world.env());
    let addr = host_port(&server.base);
    for i in 0..300 {
        let method = format!("X{}{i}", "M".repeat(2000));
        let path = format!("/registries/@rack/x{i}/{}", "p".repeat(i));
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(
            out.starts_with(b"HTTP/1.1 "),
            "answered: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let (status, _, body) = get_raw(&server.base, "/metrics", &[]);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_request_duration_seconds_count"))
        .count();
    assert!(series <= 10, "{series} series:\n{text}");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(!text.contains("MMMM"), "no raw method in the metrics");
    assert!(!server.output().contains("MMMMMMMM"), "no raw method in the log");
}

/// A large compressible file in a stored version (served, though not declared).
fn large_json(world: &World, name: &str, bytes: usize) -> (String, Vec<u8>) {
    let rel = format!("@rack/build/rollup/1.0.0/templates/{name}");
    let line = b"{\"name\": \"rollup\", \"value\": 12345, \"tags\": [\"a\", \"b\"]}\n";
    let body: Vec<u8> = line.iter().copied().cycle().take(bytes).collect();
    std::fs::write(world.storage().join(&rel), &body).unwrap();
    (
        format!("/registries/{}", rel.replace("/1.0.0/", "/1.0.0/files/")),
        body,
    )
}

fn brotli_decode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn large_objects_are_streamed_and_compressed_once_in_the_background() {
    let world = World::new();
    let (path, body) = large_json(&world, "big.json", 3 << 20);
    let (huge_path, huge) = large_json(&world, "huge.json", 5 << 20);
    let server = Server::start(
        world.path(),
        &world.env_with(&[("COMPRESS_MAX_BYTES", "4194304")]),
    );
    let br = [("Accept-Encoding", "br")];

    // A HEAD never compresses: before any GET there is no compressed form, so identity.
    let h = {
        let addr = host_port(&server.base);
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            c,
            "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: br\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert_eq!(header(&h, "content-encoding"), None, "{h}");
    assert_eq!(
        header(&h, "content-length"),
        Some(body.len().to_string().as_str())
    );

    // Identity: whole, with Content-Length and the content's tag.
    let (status, head, got) = get_raw(&server.base, &path, &[]);
    assert_eq!(status, 200);
    assert_eq!(got, body);
    assert_eq!(
        header(&head, "content-length"),
        Some(body.len().to_string().as_str())
    );
    let tag = header(&head, "etag").unwrap().to_owned();
    assert_eq!(get_raw(&server.base, &path, &[("If-None-Match", &tag)]).0, 304);

    // With br: identity or br at first, br once the background job is done; always the bytes.
    let mut compressed = None;
    for _ in 0..300 {
        let (status, head, got) = get_raw(&server.base, &path, &br);
        assert_eq!(status, 200);
        match header(&head, "content-encoding") {
            None => assert_eq!(got, body),
            Some("br") => {
                compressed = Some((head.clone(), got));
                break;
            }
            Some(other) => panic!("unexpected encoding {other}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (head, got) = compressed.expect("the compressed form is made in the background");
    assert_eq!(brotli_decode(&got), body);
    assert!(got.len() < body.len() / 5);
    assert_ne!(header(&head, "etag"), Some(tag.as_str()), "its own tag");
    assert_eq!(header(&head, "vary"), Some("Accept-Encoding"));

    // Above COMPRESS_MAX_BYTES: identity, always, and nothing varies.
    for _ in 0..3 {
        let (status, head, got) = get_raw(&server.base, &huge_path, &br);
        assert_eq!(status, 200);
        assert_eq!(header(&head, "content-encoding"), None);
        assert_eq!(header(&head, "vary"), None);
        assert!(got == huge);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn slow_readers_of_a_large_object_cost_bounded_memory() {
    let world = World::new();
    let rel = "@rack/build/rollup/1.0.0/templates/blob.bin";
    let blob: Vec<u8> = (0..(32u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(world.storage().join(rel), &blob).unwrap();
    let path = "/registries/@rack/build/rollup/1.0.0/files/templates/blob.bin";
    let server = Server::start(world.path(), &world.env());
    let addr = host_port(&server.base);
    // The tag is computed once (one streamed pass), then 24 readers that read nothing.
    assert_eq!(get_raw(&server.base, path, &[]).2.len(), blob.len());
    let before = rss_kib(server.pid());
    let readers: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(server.pid());
    // Whole copies would be 24 x 32 MiB = 768 MiB.
    assert!(
        during < before + 128 * 1024,
        "RSS {before} KiB -> {during} KiB with 24 stalled readers of a 32 MiB object"
    );
    drop(readers);
}
