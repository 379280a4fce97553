//! Every route that reads a request body has a body deadline (docs/decisions.md "Request
//! bodies"): a body that never arrives is answered 408 and its connection closed within the
//! deadline. The routes are the router's own list (`rack_registry::http::body::ROUTES`: the
//! dispatch hands a body to these and to no other), so a new route that reads a body is tested
//! here without anyone remembering to add it.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{start_with, ADMIN_TOKEN};
use rack_registry::http::body::{BodyKind, ROUTES};

/// The deadlines of the server below, in seconds: form bodies get `HEADER_TIMEOUT_SECONDS`,
/// uploads `UPLOAD_STALL_SECONDS` without a byte.
const DEADLINE: u64 = 2;
/// Generous: the answer must come within the deadline plus this.
const SLACK: Duration = Duration::from_secs(15);

/// Send `<method> <path>` with a head that passes every header check a body route makes (a token
/// that may publish everywhere, a multipart type, a declared length), then a few bytes of the
/// body and nothing more.
fn stalled_request(base: &str, method: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(pkg::authority(base)).unwrap();
    // A management body is small (a JSON object): its declared length stays under its cap.
    let length = if method == "PUT" { 1000 } else { 100_000 };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary=stalled\r\nContent-Length: {length}\r\n\r\n--stall",
        pkg::authority(base)
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(DEADLINE) + SLACK + SLACK))
        .unwrap();
    s
}

/// The list is the router's, and holds the routes that read a body today (a list emptied by
/// mistake would make the test below vacuous).
#[test]
fn the_body_routes_are_listed() {
    let listed: Vec<(&str, &str)> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    for known in [
        ("POST", "/registries"),
        ("POST", "/ui/login"),
        ("POST", "/ui/logout"),
        ("PUT", "/-/yank/"),
        ("PUT", "/-/deprecate/"),
    ] {
        assert!(listed.contains(&known), "{known:?} not in {listed:?}");
    }
}

/// For every body route: a stalled body is answered 408 and the connection closed within the
/// deadline. Today's code never answered a stalled `/ui/login` or `/ui/logout` (the connection
/// stayed open for good), and held a stalled upload for `UPLOAD_TIMEOUT_SECONDS`.
#[test]
fn a_stalled_body_on_every_body_route_is_cut_off_within_its_deadline() {
    let secs = DEADLINE.to_string();
    let (_world, server) = start_with(&[("HEADER_TIMEOUT_SECONDS", &secs), ("UPLOAD_STALL_SECONDS", &secs)]);
    // All at once: each has its own deadline.
    let started = Instant::now();
    let open: Vec<_> = ROUTES
        .iter()
        .map(|r| {
            // A prefix route (the management routes of SPEC §18) names a registry after it.
            let path = match r.path.strip_suffix('/') {
                Some(_) if r.path.contains("yank") => format!("{}@company/build/x/1.0.0", r.path),
                Some(_) => format!("{}@company/build/x", r.path),
                None => r.path.to_owned(),
            };
            (r, stalled_request(&server.base, r.method, &path))
        })
        .collect();
    // A route that is not listed is never handed its body: answered at once, whatever the
    // body does.
    for path in ["/ui/search", "/health", "/registries/@company/build/x"] {
        assert!(ROUTES.iter().all(|r| r.path != path));
        let mut s = stalled_request(&server.base, "POST", path);
        let (status, _, _) = pkg::read_response(&mut s).unwrap_or_else(|| panic!("{path}: no answer"));
        assert_eq!(status, 405, "{path}");
    }
    for (route, mut s) in open {
        let (status, headers, body) = pkg::read_response(&mut s)
            .unwrap_or_else(|| panic!("{}: no answer within {:?}", route.path, started.elapsed()));
        assert_eq!(status, 408, "{}: {}", route.path, String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("REQUEST_TIMEOUT"), "{}: {text}", route.path);
        if route.kind == BodyKind::Upload {
            assert!(text.contains("stalled"), "{}: {text}", route.path);
        }
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close")),
            "{}: {headers:?}",
            route.path
        );
        // The server closes the connection (EOF or a reset), well before our read timeout.
        let mut rest = [0u8; 256];
        match s.read(&mut rest) {
            Ok(0) => {}
            Ok(n) => panic!("{}: {n} more bytes after the answer", route.path),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{}: {e}",
                route.path
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(DEADLINE) + SLACK,
            "{}: closed after {:?}",
            route.path,
            started.elapsed()
        );
    }
}
