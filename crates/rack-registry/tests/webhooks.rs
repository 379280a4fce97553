//! Webhooks (SPEC §7, §14) against the real binary and a real HTTP receiver on 127.0.0.1.
//!
//! The receiver is a tiny HTTP/1.1 server on std threads: it records every request (method,
//! path, headers, exact body bytes, arrival time) and answers as programmed (a status, a
//! dropped connection, or a hang).

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/pkg.rs"]
mod pkg;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{client, Server, World, ADMIN_TOKEN};
use faultproxy::FaultProxy;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

// ---------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Status(u16),
    /// Close the connection without answering.
    Drop,
    /// Keep the connection open without answering (for a long time).
    Hang,
}

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    /// Lowercased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn h(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("missing header {name} in {:?}", self.headers))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn event(&self) -> &str {
        self.h("x-webhook-event")
    }
}

#[derive(Default)]
struct RxState {
    requests: Vec<Req>,
    script: VecDeque<Act>,
}

/// A receiver; dropping it closes its listening socket (connections in progress live on).
struct Receiver {
    port: u16,
    state: Arc<(Mutex<RxState>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Receiver {
    fn start(default: Act) -> Receiver {
        Receiver::try_start_on(0, default).unwrap()
    }

    fn try_start_on(port: u16, default: Act) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let state: Arc<(Mutex<RxState>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stopped) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, st, default));
            }
        });
        Ok(Receiver { port, state, stop })
    }

    /// Bind a specific port, retrying briefly (the previous owner may still be closing).
    fn start_on(port: u16, default: Act) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Receiver::try_start_on(port, default) {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => panic!("cannot bind port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Answer the next requests with these, then with the default.
    fn script(&self, acts: &[Act]) {
        self.state.0.lock().unwrap().script.extend(acts.iter().copied());
    }

    fn requests(&self) -> Vec<Req> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// Wait until at least `n` requests arrived (panics after `timeout`).
    #[track_caller]
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Req> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        while st.requests.len() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "expected {n} webhook requests within {timeout:?}, got {}: {:?}",
                    st.requests.len(),
                    st.requests.iter().map(|r| r.text()).collect::<Vec<_>>()
                );
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        st.requests.clone()
    }
}

fn serve(conn: TcpStream, st: Arc<(Mutex<RxState>, Condvar)>, default: Act) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 {
            return;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let act = {
        let (lock, cv) = &*st;
        let mut s = lock.lock().unwrap();
        s.requests.push(Req {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        });
        cv.notify_all();
        s.script.pop_front().unwrap_or(default)
    };
    let mut conn = conn;
    match act {
        Act::Status(code) => {
            let _ = conn.write_all(
                format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").as_bytes(),
            );
        }
        Act::Drop => {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        Act::Hang => std::thread::sleep(Duration::from_secs(120)),
    }
}

/// A loopback port with nothing listening on it (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Server, config, uploads
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "whsec-test-secret-7f3a9c";

fn hook(url: &str, secret: &str, events: &[&str], enabled: bool) -> Value {
    json!({"url": url, "secret": secret, "events": events, "enabled": enabled, "description": "test"})
}

fn config_path(world: &World) -> PathBuf {
    world.path().join("config/webhooks.json")
}

fn write_hooks(world: &World, hooks: &[Value]) {
    std::fs::write(
        config_path(world),
        serde_json::to_vec_pretty(&json!({ "webhooks": hooks })).unwrap(),
    )
    .unwrap();
}

fn env(world: &World, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = world.env();
    env.push((
        "WEBHOOK_CONFIG_PATH".into(),
        config_path(world).display().to_string(),
    ));
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    env
}

fn start(world: &World, extra: &[(&str, &str)]) -> Server {
    Server::start(world.path(), &env(world, extra))
}

fn outbox(world: &World) -> PathBuf {
    world.storage().join(".webhooks")
}

/// The `.json` delivery files in the outbox.
fn outbox_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Upload `@rack/build/<name>@<version>` as admin; the reply.
fn upload(server: &Server, name: &str, version: &str) -> pkg::Reply {
    pkg::Upload::new(pkg::simple("@rack", name, version))
        .bearer(ADMIN_TOKEN)
        .send(&server.base)
}

#[track_caller]
fn upload_ok(server: &Server, name: &str, version: &str) -> Value {
    let r = upload(server, name, version);
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()
}

fn metrics(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn counter(server: &Server, series: &str) -> u64 {
    metrics(server)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn deliveries(server: &Server, outcome: &str) -> u64 {
    counter(
        server,
        &format!("registry_webhook_deliveries_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Poll `f` until it holds (panics after `timeout`).
#[track_caller]
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn is_timestamp(s: &str) -> bool {
    // 2026-11-26T05:42:24.682Z
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn is_delivery_id(s: &str) -> bool {
    let Some((ms, suffix)) = s.split_once('-') else {
        return false;
    };
    ms.len() == 13
        && ms.bytes().all(|c| c.is_ascii_digit())
        && (1..=6).contains(&suffix.len())
        && suffix
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// Everything §7/§14 say about one request.
#[track_caller]
fn check_request(r: &Req, secret: &str, event: &str, name: &str, version: &str, path: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.h("content-type"), "application/json");
    assert_eq!(r.h("user-agent"), "Rack-Registry-Webhook/1.0");
    assert_eq!(r.event(), event);
    assert_eq!(
        r.h("content-length").parse::<usize>().unwrap(),
        r.body.len(),
        "requests carry Content-Length"
    );
    assert!(r.header("transfer-encoding").is_none());
    let ts = r.h("x-webhook-timestamp");
    assert!(is_timestamp(ts), "timestamp format: {ts}");
    let id = r.h("x-webhook-delivery");
    assert!(is_delivery_id(id), "delivery id format: {id}");
    let expected = format!(
        r#"{{"event":"{event}","name":"{name}","version":"{version}","namespace":"@rack","timestamp":"{ts}","path":"{path}"}}"#
    );
    assert_eq!(r.text(), expected, "exact body, fields in order, compact");
    assert_eq!(
        r.h("x-webhook-signature"),
        format!("sha256={}", hmac_hex(secret, &r.body)),
        "signature over the exact body bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn both_events_in_order_signed_to_subscribed_enabled_hooks_only() {
    let world = World::new();
    let main = Receiver::start(Act::Status(200));
    let disabled = Receiver::start(Act::Status(200));
    let unknown_event = Receiver::start(Act::Status(200));
    let created_only = Receiver::start(Act::Status(204));
    write_hooks(
        &world,
        &[
            hook(&main.url("/hook"), SECRET, &["uploaded", "version.created"], true),
            hook(
                &disabled.url("/hook"),
                "s2",
                &["uploaded", "version.created"],
                false,
            ),
            hook(&unknown_event.url("/hook"), "s3", &["registry.deleted"], true),
            hook(
                &created_only.url("/hook"),
                "other-secret",
                &["version.created"],
                true,
            ),
        ],
    );
    let server = start(&world, &[]);
    let t0 = Instant::now();
    let reply = upload_ok(&server, "hooked", "1.2.3");
    let path = reply["path"].as_str().unwrap().to_owned();
    assert_eq!(path, "@rack/build/hooked/1.2.3");
    let got = main.wait_for(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event(), "uploaded");
    assert_eq!(got[1].event(), "version.created");
    assert!(got[0].at <= got[1].at);
    check_request(&got[0], SECRET, "uploaded", "hooked", "1.2.3", &path);
    check_request(&got[1], SECRET, "version.created", "hooked", "1.2.3", &path);
    assert_ne!(
        got[0].h("x-webhook-delivery"),
        got[1].h("x-webhook-delivery"),
        "each delivery has its own id"
    );
    assert!(got[0].at.duration_since(t0) < Duration::from_secs(5));
    let created = created_only.wait_for(1, Duration::from_secs(10));
    check_request(
        &created[0],
        "other-secret",
        "version.created",
        "hooked",
        "1.2.3",
        &path,
    );

    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(main.requests().len(), 2, "no duplicates");
    assert_eq!(created_only.requests().len(), 1);
    assert!(disabled.requests().is_empty(), "disabled hooks get nothing");
    assert!(unknown_event.requests().is_empty(), "unknown events never fire");
    eventually(Duration::from_secs(5), "outbox emptied", || {
        outbox_files(&outbox(&world)).is_empty()
    });
    assert_eq!(deliveries(&server, "success"), 3);
    assert_eq!(deliveries(&server, "failure"), 0);
    // The outbox is no namespace.
    let ns = client()
        .get(server.url("/namespaces"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!ns.contains(".webhooks"), "{ns}");

    // A 409 emits nothing.
    let again = upload(&server, "hooked", "1.2.3");
    assert_eq!(again.status, 409, "{}", again.text);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(main.requests().len(), 2, "a refused upload emits no event");
    assert_eq!(created_only.requests().len(), 1);
    let out = server.output();
    assert!(
        !out.contains(SECRET) && !out.contains("other-secret"),
        "secret in logs:\n{out}"
    );
    assert!(
        out.contains("webhook delivered"),
        "a log line per final outcome:\n{out}"
    );
}

#[test]
fn retries_after_500_and_dropped_connection_with_backoff() {
    let world = World::new();
    let rx = Receiver::start(Act::Status(200));
    rx.script(&[Act::Status(500), Act::Drop]);
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    let server = start(&world, &[("WEBHOOK_BACKOFF_BASE_MS", "300")]);
    let reply = upload_ok(&server, "retry", "1.0.0");
    let got = rx.wait_for(3, Duration::from_secs(10));
    let path = reply["path"].as_str().unwrap();
    for r in &got {
        check_request(r, SECRET, "uploaded", "retry", "1.0.0", path);
        assert_eq!(r.body, got[0].body, "identical bytes on every attempt");
        for h in ["x-webhook-delivery", "x-webhook-signature", "x-webhook-timestamp"] {
            assert_eq!(r.h(h), got[0].h(h), "{h} is the same on every attempt");
        }
    }
    let g1 = got[1].at.duration_since(got[0].at).as_millis() as i64;
    let g2 = got[2].at.duration_since(got[1].at).as_millis() as i64;
    eprintln!("gaps: {g1} ms, {g2} ms");
    assert!((g1 - 300).abs() < 250, "first retry after ~300 ms, was {g1}");
    assert!((g2 - 600).abs() < 250, "second retry after ~600 ms, was {g2}");
    assert!(g2 > g1, "backoff doubles: {g1} then {g2}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.requests().len(), 3, "nothing after the 2xx");
    assert_eq!(deliveries(&server, "retry"), 2);
    assert_eq!(deliveries(&server, "success"), 1);
    assert!(outbox_files(&outbox(&world)).is_empty());
}

#[test]
fn exactly_max_attempts_then_given_up_and_removed() {
    let world = World::new();
    let rx = Receiver::start(Act::Status(500));
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    let server = start(&world, &[("WEBHOOK_BACKOFF_BASE_MS", "100")]);
    upload_ok(&server, "doomed", "1.0.0");
    let got = rx.wait_for(4, Duration::from_secs(10));
    // 100 + 200 + 400 ms of backoff, then nothing more.
    let span = got[3].at.duration_since(got[0].at);
    assert!(span >= Duration::from_millis(600), "{span:?}");
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(rx.requests().len(), 4, "exactly 4 attempts (the default)");
    let ids: Vec<&str> = got.iter().map(|r| r.h("x-webhook-delivery")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    eventually(
        Duration::from_secs(3),
        "outbox emptied after the last attempt",
        || outbox_files(&outbox(&world)).is_empty(),
    );
    assert_eq!(deliveries(&server, "failure"), 1);
    assert_eq!(deliveries(&server, "retry"), 3);
    assert_eq!(deliveries(&server, "success"), 0);
    let out = server.output();
    assert!(out.contains("giving up"), "{out}");
    assert!(!out.contains(SECRET), "secret in logs");
}

#[test]
fn max_attempts_is_configurable() {
    let world = World::new();
    let rx = Receiver::start(Act::Drop);
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    let server = start(
        &world,
        &[("WEBHOOK_BACKOFF_BASE_MS", "50"), ("WEBHOOK_MAX_ATTEMPTS", "2")],
    );
    upload_ok(&server, "twice", "1.0.0");
    rx.wait_for(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(rx.requests().len(), 2);
}

#[test]
fn version_created_waits_for_the_first_attempt_of_uploaded() {
    let world = World::new();
    let rx = Receiver::start(Act::Status(200));
    // The first attempt of `uploaded` takes ~1.5 s (timeout), then fails.
    rx.script(&[Act::Hang]);
    write_hooks(
        &world,
        &[hook(
            &rx.url("/hook"),
            SECRET,
            &["uploaded", "version.created"],
            true,
        )],
    );
    let server = start(
        &world,
        &[
            ("WEBHOOK_TIMEOUT_SECONDS", "1"),
            ("WEBHOOK_BACKOFF_BASE_MS", "3000"),
        ],
    );
    upload_ok(&server, "ordered", "1.0.0");
    let first = rx.wait_for(1, Duration::from_secs(5));
    assert_eq!(first[0].event(), "uploaded");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rx.requests().len(),
        1,
        "version.created waits while uploaded is in flight"
    );
    let got = rx.wait_for(2, Duration::from_secs(5));
    assert_eq!(got[1].event(), "version.created");
    let waited = got[1].at.duration_since(got[0].at);
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // `uploaded` is retried after its backoff, with the same id.
    let got = rx.wait_for(3, Duration::from_secs(8));
    assert_eq!(got[2].event(), "uploaded");
    assert_eq!(got[2].h("x-webhook-delivery"), got[0].h("x-webhook-delivery"));
    drop(server);
}

#[test]
fn malformed_configs_refuse_startup() {
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        (r#"{"hooks":[]}"#, "no \"webhooks\" array"),
        (r#"{"webhooks":{}}"#, "not an array"),
        (
            r#"{"webhooks":[{"url":"","secret":"whsec-x","events":["uploaded"],"enabled":true}]}"#,
            "webhooks[0].url is empty",
        ),
        (
            r#"{"webhooks":[{"url":"http://127.0.0.1:1/","secret":"","events":["uploaded"],"enabled":true}]}"#,
            "webhooks[0].secret is empty",
        ),
        (
            r#"{"webhooks":[{"url":"http://127.0.0.1:1/","secret":"whsec-x","events":"uploaded","enabled":true}]}"#,
            "webhooks[0].events is not an array",
        ),
        (
            r#"{"webhooks":[{"url":"http://127.0.0.1:1/","secret":"whsec-x","events":["uploaded"],"enabled":"true"}]}"#,
            "webhooks[0].enabled is not a boolean",
        ),
    ];
    for (content, problem) in cases {
        let world = World::new();
        std::fs::write(config_path(&world), content).unwrap();
        let t = Instant::now();
        let failure = match Server::try_start(world.path(), &env(&world, &[])) {
            Ok(_) => panic!("started with a malformed webhooks.json: {content}"),
            Err(f) => f,
        };
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            failure.code.is_some_and(|c| c != 0),
            "exit code {:?} for {content}",
            failure.code
        );
        assert!(
            failure.output.contains(problem) && failure.output.contains("WEBHOOK_CONFIG_PATH"),
            "{content}: output lacks {problem:?}:\n{}",
            failure.output
        );
        assert!(
            !failure.output.contains("whsec-x"),
            "secret echoed:\n{}",
            failure.output
        );
    }
    // Missing file: webhooks disabled, the server runs; unknown events and plain http are fine.
    let world = World::new();
    let server = start(&world, &[]);
    upload_ok(&server, "nohooks", "1.0.0");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!outbox(&world).exists(), "no outbox without webhooks");
    drop(server);
    write_hooks(
        &world,
        &[hook(
            "http://localhost:1/x",
            "s",
            &["anything.else", "uploaded"],
            true,
        )],
    );
    let _server = start(&world, &[]);
}

#[test]
fn reload_takes_effect_and_a_broken_edit_keeps_the_last_good_config() {
    let world = World::new();
    let a = Receiver::start(Act::Status(200));
    let b = Receiver::start(Act::Status(200));
    write_hooks(&world, &[hook(&a.url("/hook"), SECRET, &["uploaded"], true)]);
    let server = start(&world, &[]);
    upload_ok(&server, "reload", "1.0.0");
    a.wait_for(1, Duration::from_secs(5));

    // In-place edit: now B only.
    write_hooks(&world, &[hook(&b.url("/hook"), SECRET, &["uploaded"], true)]);
    let ok = "registry_config_reloads_total{file=\"webhooks\",outcome=\"success\"}";
    eventually(Duration::from_secs(5), "the edit to be loaded", || {
        counter(&server, ok) >= 1
    });
    upload_ok(&server, "reload", "1.0.1");
    let got = b.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0].json()["version"], "1.0.1");

    // A broken edit is refused: B keeps receiving.
    std::fs::write(
        config_path(&world),
        r#"{"webhooks":[{"url":"http://127.0.0.1:1/","secret":"s","events":[],"enabled":"no"}]}"#,
    )
    .unwrap();
    let refused = "registry_config_reloads_total{file=\"webhooks\",outcome=\"failure\"}";
    eventually(Duration::from_secs(5), "the broken edit to be refused", || {
        counter(&server, refused) >= 1
    });
    upload_ok(&server, "reload", "1.0.2");
    let got = b.wait_for(2, Duration::from_secs(5));
    assert_eq!(got[1].json()["version"], "1.0.2");

    // Atomic replacement disabling the hook.
    let tmp = world.path().join("config/webhooks.json.new");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&json!({"webhooks": [hook(&b.url("/hook"), SECRET, &["uploaded"], false)]}))
            .unwrap(),
    )
    .unwrap();
    std::fs::rename(&tmp, config_path(&world)).unwrap();
    eventually(Duration::from_secs(5), "the replacement to be loaded", || {
        counter(&server, ok) >= 2
    });
    upload_ok(&server, "reload", "1.0.3");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 2, "disabled by reload");
}

#[test]
fn sigkill_after_201_still_delivers_exactly_once_more_with_the_same_id() {
    if common::s3::local_only("reads the outbox under the storage root") {
        return;
    }
    let world = World::new();
    let port = free_port();
    // The receiver takes the first attempt and never answers.
    let rx = Receiver::start_on(port, Act::Hang);
    let url = rx.url("/hook");
    write_hooks(
        &world,
        &[hook(&url, SECRET, &["uploaded", "version.created"], true)],
    );
    let server = start(&world, &[("WEBHOOK_TIMEOUT_SECONDS", "60")]);
    let reply = upload_ok(&server, "crash", "1.0.0");
    let path = reply["path"].as_str().unwrap().to_owned();
    let first = rx.wait_for(1, Duration::from_secs(5));
    assert_eq!(first[0].event(), "uploaded");
    assert_eq!(
        outbox_files(&outbox(&world)).len(),
        2,
        "both deliveries are in the outbox"
    );
    server.kill9();

    // Restart on the same storage, with webhooks.json gone: the outbox holds everything needed.
    std::fs::remove_file(config_path(&world)).unwrap();
    let rx2 = {
        // Same port, now answering 200 (the hung connection died with the server).
        drop(rx);
        Receiver::start_on(port, Act::Status(200))
    };
    let server = start(&world, &[]);
    let got = rx2.wait_for(2, Duration::from_secs(10));
    check_request(&got[0], SECRET, "uploaded", "crash", "1.0.0", &path);
    check_request(&got[1], SECRET, "version.created", "crash", "1.0.0", &path);
    assert_eq!(
        got[0].h("x-webhook-delivery"),
        first[0].h("x-webhook-delivery"),
        "same delivery id after the restart"
    );
    assert_eq!(got[0].body, first[0].body);
    assert_eq!(got[0].h("x-webhook-signature"), first[0].h("x-webhook-signature"));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(rx2.requests().len(), 2, "exactly once more");
    eventually(Duration::from_secs(3), "outbox emptied", || {
        outbox_files(&outbox(&world)).is_empty()
    });
    drop(server);
}

#[test]
fn receiver_down_for_a_while_then_up_is_delivered() {
    let world = World::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    write_hooks(&world, &[hook(&url, SECRET, &["uploaded"], true)]);
    let server = start(&world, &[("WEBHOOK_BACKOFF_BASE_MS", "700")]);
    upload_ok(&server, "patient", "1.0.0");
    // Attempts at ~0 s and ~0.7 s fail (nothing listens); the third (~2.1 s) succeeds.
    eventually(Duration::from_secs(5), "two failed attempts", || {
        deliveries(&server, "retry") >= 2
    });
    let rx = Receiver::start_on(port, Act::Status(200));
    let got = rx.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0].event(), "uploaded");
    check_request(
        &got[0],
        SECRET,
        "uploaded",
        "patient",
        "1.0.0",
        "@rack/build/patient/1.0.0",
    );
    eventually(Duration::from_secs(3), "delivered", || {
        deliveries(&server, "success") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.requests().len(), 1);
    assert!(outbox_files(&outbox(&world)).is_empty());
}

#[test]
fn sigterm_keeps_pending_deliveries_in_the_outbox() {
    let world = World::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    write_hooks(&world, &[hook(&url, SECRET, &["uploaded"], true)]);
    let dir = world.path().join("custom-outbox");
    let dir_s = dir.display().to_string();
    let server = start(
        &world,
        &[
            ("WEBHOOK_BACKOFF_BASE_MS", "60000"),
            ("WEBHOOK_OUTBOX_DIR", &dir_s),
        ],
    );
    upload_ok(&server, "later", "1.0.0");
    eventually(Duration::from_secs(5), "a failed attempt", || {
        deliveries(&server, "retry") >= 1
    });
    let t = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let files = outbox_files(&dir);
    assert_eq!(files.len(), 1, "pending delivery kept");
    let stored: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(stored["attempts"], 1);
    assert_eq!(stored["event"], "uploaded");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text.contains(SECRET), "no secret in the outbox");
    assert!(!outbox(&world).exists(), "WEBHOOK_OUTBOX_DIR is honoured");
}

// ---------------------------------------------------------------------------------------------
// The outbox in the bucket (SPEC §11.4): replicas on one moto bucket
// ---------------------------------------------------------------------------------------------

/// A fresh bucket for a bucket-outbox test, or `None` (the caller returns) when there is no S3
/// server, or when this is the second pass of the binary on S3: these tests make their own
/// buckets and already ran in the first pass.
fn outbox_bucket() -> Option<common::s3::Bucket> {
    if common::s3::local_only("bucket outbox tests make their own buckets (run in the local pass)") {
        return None;
    }
    common::s3::Bucket::new()
}

/// A replica on `bucket` (STORAGE_ROOT its own scratch directory `name`), with `world`'s
/// webhooks.json and `extra`.
fn replica_env(
    world: &World,
    bucket: &common::s3::Bucket,
    name: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = world
        .env_on_bucket(bucket)
        .into_iter()
        .filter(|(k, _)| k != "STORAGE_ROOT")
        .collect();
    env.push((
        "STORAGE_ROOT".into(),
        world.path().join(name).display().to_string(),
    ));
    env.push((
        "WEBHOOK_CONFIG_PATH".into(),
        config_path(world).display().to_string(),
    ));
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    env
}

/// A client of `bucket` (moto itself, not a test front), and a runtime to drive it.
fn bucket_client(
    bucket: &common::s3::Bucket,
) -> (rack_registry::storage::s3::S3Storage, tokio::runtime::Runtime) {
    use rack_registry::storage::s3::{S3Options, S3Storage};
    let s3 = S3Storage::new(&S3Options {
        endpoint: Some(bucket.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: String::new(),
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (s3, rt)
}

/// The delivery objects under `.rack/outbox/` in `bucket`, with their bodies.
fn bucket_outbox(bucket: &common::s3::Bucket) -> Vec<(String, Value)> {
    use rack_registry::storage::Storage;
    let (s3, rt) = bucket_client(bucket);
    rt.block_on(async {
        let page = s3.list(".rack/outbox/", false, None, 1000).await.unwrap();
        let mut out = Vec::new();
        for o in page.objects {
            if let Some(obj) = s3.get(&o.key).await.unwrap() {
                out.push((o.key, serde_json::from_slice(&obj.body).unwrap()));
            }
        }
        out
    })
}

/// Write `record` as the delivery object of `id` in `bucket` (as a replica would have).
fn put_bucket_delivery(bucket: &common::s3::Bucket, id: &str, record: &Value) {
    use rack_registry::storage::{PutMode, Storage};
    let (s3, rt) = bucket_client(bucket);
    rt.block_on(s3.put(
        &format!(".rack/outbox/{id}.json"),
        serde_json::to_vec(record).unwrap().into(),
        PutMode::Create,
    ))
    .unwrap();
}

#[test]
fn bucket_outbox_delivers_and_removes_the_delivery_objects() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let world = World::new();
    let rx = Receiver::start(Act::Status(200));
    write_hooks(
        &world,
        &[hook(
            &rx.url("/hook"),
            SECRET,
            &["uploaded", "version.created"],
            true,
        )],
    );
    let server = Server::start(world.path(), &replica_env(&world, &bucket, "a", &[]));
    let reply = upload_ok(&server, "bucketed", "1.0.0");
    let got = rx.wait_for(2, Duration::from_secs(10));
    let path = reply["path"].as_str().unwrap();
    check_request(&got[0], SECRET, "uploaded", "bucketed", "1.0.0", path);
    check_request(&got[1], SECRET, "version.created", "bucketed", "1.0.0", path);
    eventually(Duration::from_secs(5), "bucket outbox emptied", || {
        bucket_outbox(&bucket).is_empty()
    });
    assert_eq!(deliveries(&server, "success"), 2);
    assert!(
        !world.path().join("a/.webhooks").exists(),
        "no local outbox on a bucket without WEBHOOK_OUTBOX_DIR:\n{}",
        server.output()
    );
    assert!(!server.output().contains(SECRET), "secret in logs");
}

#[test]
fn bucket_outbox_retries_on_schedule_then_gives_up_and_removes() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let world = World::new();
    let rx = Receiver::start(Act::Status(500));
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    let server = Server::start(
        world.path(),
        &replica_env(
            &world,
            &bucket,
            "a",
            &[("WEBHOOK_BACKOFF_BASE_MS", "1500"), ("WEBHOOK_MAX_ATTEMPTS", "3")],
        ),
    );
    upload_ok(&server, "failing", "1.0.0");
    let first = rx.wait_for(1, Duration::from_secs(10));
    // Between attempts the delivery waits in the bucket with its attempt count and retry time,
    // claimed by the replica that will retry it.
    let pending = {
        let mut found = Vec::new();
        eventually(Duration::from_secs(5), "the failed attempt recorded", || {
            found = bucket_outbox(&bucket);
            found.len() == 1 && found[0].1["attempts"].as_u64() >= Some(1)
        });
        found.remove(0).1
    };
    assert_eq!(pending["id"], json!(first[0].h("x-webhook-delivery")));
    assert!(pending["claim"]["owner"].is_string(), "{pending}");
    assert!(
        pending["claim"]["expires_ms"].as_i64().unwrap() > pending["next_attempt_ms"].as_i64().unwrap(),
        "held past the retry: {pending}"
    );
    assert!(!pending.to_string().contains(SECRET), "no secret in the bucket");
    let got = rx.wait_for(3, Duration::from_secs(20));
    let ids: Vec<&str> = got.iter().map(|r| r.h("x-webhook-delivery")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert!(got.iter().all(|r| r.body == got[0].body), "identical bytes");
    // 1.5 s then 3 s of backoff (§7's schedule, doubled after each failure).
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(1400));
    assert!(got[2].at.duration_since(got[1].at) >= Duration::from_millis(2900));
    eventually(
        Duration::from_secs(5),
        "bucket outbox emptied after the last attempt",
        || bucket_outbox(&bucket).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(rx.requests().len(), 3, "exactly WEBHOOK_MAX_ATTEMPTS attempts");
    assert_eq!(deliveries(&server, "failure"), 1);
    assert_eq!(deliveries(&server, "retry"), 2);
}

/// Two replicas on `bucket` with one webhook whose receiver hangs on its first request: an
/// upload of `registry` to replica A, whose attempt then holds the delivery's claim (for
/// `claim_seconds`, the attempt timing out after `timeout_seconds`). Returns A's attempt.
fn claim_held_by_a(
    bucket: &common::s3::Bucket,
    registry: &str,
    timeout_seconds: &str,
    claim_seconds: &str,
) -> (World, Receiver, Server, Server, Vec<Req>) {
    let world = World::new();
    let rx = Receiver::start(Act::Status(200));
    rx.script(&[Act::Hang]);
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    let settings: &[(&str, &str)] = &[
        ("WEBHOOK_TIMEOUT_SECONDS", timeout_seconds),
        ("WEBHOOK_CLAIM_SECONDS", claim_seconds),
        ("WEBHOOK_OUTBOX_POLL_MIN_MS", "200"),
        ("WEBHOOK_OUTBOX_POLL_MAX_MS", "1000"),
    ];
    let a = Server::start(world.path(), &replica_env(&world, bucket, "a", settings));
    let b = Server::start(world.path(), &replica_env(&world, bucket, "b", settings));
    upload_ok(&a, registry, "1.0.0");
    let first = rx.wait_for(1, Duration::from_secs(10));
    (world, rx, a, b, first)
}

#[test]
fn bucket_outbox_a_replica_killed_mid_delivery_is_relieved_by_another() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let (_world, rx, a, b, first) = claim_held_by_a(&bucket, "orphan", "20", "21");
    a.kill9();
    let killed_at = Instant::now();
    // B sees the claim, waits for it to expire, then delivers the same delivery.
    let got = rx.wait_for(2, Duration::from_secs(60));
    let id = first[0].h("x-webhook-delivery");
    assert_eq!(got[1].h("x-webhook-delivery"), id, "same X-Webhook-Delivery");
    assert_eq!(got[1].body, first[0].body, "identical bytes");
    assert_eq!(got[1].h("x-webhook-signature"), first[0].h("x-webhook-signature"));
    assert!(
        got[1].at.duration_since(first[0].at) >= Duration::from_secs(20),
        "not before A's claim expired"
    );
    eprintln!(
        "relieved {:?} after the kill",
        got[1].at.duration_since(killed_at)
    );
    eventually(Duration::from_secs(10), "bucket outbox emptied", || {
        bucket_outbox(&bucket).is_empty()
    });
    assert_eq!(deliveries(&b, "success"), 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.requests().len(), 2, "delivered once more, not again and again");
}

#[test]
fn bucket_outbox_idle_listing_backs_off() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let world = World::new();
    // A webhook is configured (without one the outbox is not listed at all: the next test).
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    write_hooks(&world, &[hook(&url, SECRET, &["uploaded"], true)]);
    let proxy = FaultProxy::start(&bucket.endpoint);
    let front = proxy.bucket(&bucket);
    let server = Server::start(
        world.path(),
        &replica_env(
            &world,
            &front,
            "a",
            &[
                ("WEBHOOK_OUTBOX_POLL_MIN_MS", "100"),
                ("WEBHOOK_OUTBOX_POLL_MAX_MS", "1600"),
            ],
        ),
    );
    let lists = || proxy.count(&["GET ", "list-type=2", "outbox"]);
    eventually(Duration::from_secs(10), "the first outbox list", || lists() >= 1);
    let start = Instant::now();
    let at_start = lists();
    std::thread::sleep(Duration::from_secs(6));
    let idle = lists() - at_start;
    let elapsed = start.elapsed();
    // Doubling from 100 ms: about 7 lists in 6 s (100, 200, ... 1600 ms apart); a fixed 100 ms
    // interval would make 60. A slow machine only makes fewer.
    eprintln!("{idle} outbox lists in {elapsed:?}");
    assert!(idle >= 2, "the outbox is listed while idle ({idle})");
    assert!(
        idle <= 12,
        "the idle interval backs off ({idle} lists in {elapsed:?})"
    );
    // And at the longest interval it stays there: at most one list per 1.6 s from now on.
    let settled = lists();
    std::thread::sleep(Duration::from_secs(4));
    let later = lists() - settled;
    assert!(later <= 4, "{later} lists in 4 s at a 1.6 s interval");
    drop(server);
}

/// How many times `server` logged that it stopped listing the outbox (no webhook, empty outbox).
fn idle_scans(server: &Server) -> usize {
    server
        .output()
        .matches("no webhook enabled and the outbox is empty")
        .count()
}

/// Without any webhook, a replica lists the outbox until it is empty (a delivery left there is
/// still delivered), then not at all; a reload that enables a webhook brings the listing back,
/// and one that removes the last webhook stops it again.
#[test]
fn bucket_outbox_without_webhooks_is_not_listed() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let world = World::new();
    // No webhooks.json. A delivery queued while a webhook existed waits in the bucket,
    // unclaimed (its replica is gone).
    let rx = Receiver::start(Act::Status(200));
    let id = "1700000000000-left1";
    put_bucket_delivery(
        &bucket,
        id,
        &json!({
            "format": 1, "id": id, "event": "uploaded", "url": rx.url("/hook"), "webhook": 0,
            "timestamp": "2026-01-01T00:00:00.000Z", "signature": "sha256=00",
            "body": "{\"event\":\"uploaded\"}", "attempts": 0,
            "next_attempt_ms": 1_700_000_000_000i64, "created_ms": 1_700_000_000_000i64, "seq": 0
        }),
    );
    let proxy = FaultProxy::start(&bucket.endpoint);
    let front = proxy.bucket(&bucket);
    let server = Server::start(
        world.path(),
        &replica_env(
            &world,
            &front,
            "a",
            &[
                ("WEBHOOK_OUTBOX_POLL_MIN_MS", "100"),
                ("WEBHOOK_OUTBOX_POLL_MAX_MS", "1600"),
            ],
        ),
    );
    let lists = || proxy.count(&["GET ", "list-type=2", "outbox"]);
    let got = rx.wait_for(1, Duration::from_secs(20));
    assert_eq!(
        got[0].h("x-webhook-delivery"),
        id,
        "the left delivery is delivered"
    );
    eventually(
        Duration::from_secs(10),
        "the outbox emptied and the scan idle",
        || idle_scans(&server) == 1,
    );
    assert!(bucket_outbox(&bucket).is_empty());
    // The code before listed on its backoff here: 100 ms doubling to 1.6 s, 3 or more in 4 s.
    let idle_from = lists();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lists(), idle_from, "no outbox list without webhooks");

    // A webhook appears (live reload): listing resumes.
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], true)]);
    eventually(
        Duration::from_secs(15),
        "listing again once a webhook exists",
        || lists() >= idle_from + 2,
    );
    assert_eq!(idle_scans(&server), 1, "{}", server.output());
    // The last webhook is disabled: the next empty list ends the listing again.
    write_hooks(&world, &[hook(&rx.url("/hook"), SECRET, &["uploaded"], false)]);
    eventually(Duration::from_secs(15), "idle again", || idle_scans(&server) == 2);
    let idle_from = lists();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lists(), idle_from, "no outbox list once the last webhook is gone");
    assert_eq!(rx.requests().len(), 1);
}

/// A replica stopped with SIGTERM while its attempt hangs hands its claim back: the other
/// replica delivers the same delivery long before the claim (300 s) would have expired.
#[test]
fn bucket_outbox_sigterm_releases_claims_to_the_other_replica() {
    let Some(bucket) = outbox_bucket() else {
        return;
    };
    let (_world, rx, a, b, first) = claim_held_by_a(&bucket, "handed", "200", "300");
    let id = first[0].h("x-webhook-delivery").to_owned();
    // A holds the claim for 300 s while its attempt hangs.
    let held = bucket_outbox(&bucket);
    assert_eq!(held.len(), 1, "{held:?}");
    let claim = &held[0].1["claim"];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        claim["expires_ms"].as_i64().unwrap() > now_ms + 200_000,
        "{claim}"
    );

    std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    eventually(Duration::from_secs(30), "A stopped", || {
        a.output().contains("webhook worker stopped")
    });
    // B delivers it: the wait is far below A's claim, which would otherwise keep B away.
    let got = rx.wait_for(2, Duration::from_secs(60));
    assert!(
        a.output().contains("webhook deliveries handed back"),
        "{}",
        a.output()
    );
    assert_eq!(got[1].h("x-webhook-delivery"), id, "same X-Webhook-Delivery");
    assert_eq!(got[1].body, first[0].body, "identical bytes");
    eventually(Duration::from_secs(10), "bucket outbox emptied", || {
        bucket_outbox(&bucket).is_empty()
    });
    assert_eq!(deliveries(&b, "success"), 1);
}
