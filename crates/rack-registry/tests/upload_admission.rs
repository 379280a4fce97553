//! Upload admission (docs/decisions.md "Upload guards"): uploads whose token can publish nowhere
//! take slots of their own, so that any number of them, stalled, over HTTP/1 connections or as
//! streams of one HTTP/2 connection, never delays a real publish.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::convert::Infallible;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{start_with, ADMIN_TOKEN};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pkg::Upload;

/// Publishes in `@company`.
const PUBLISH: &str = "company-publish-token";
const BOUNDARY: &str = "----rack-admission-boundary";
/// The stall interval of these servers: far longer than any test here, so a stalled upload
/// holds whatever it holds until the end.
const STALL: &str = "300";
/// "A few seconds": a publish delayed by the stalled uploads would wait for their stall
/// interval (300 s) or be refused.
const PROMPT: Duration = Duration::from_secs(30);

/// The value of a sample line `<series> <value>` of the exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Uploads being judged (their token can publish nowhere), from `/metrics`.
fn judging(base: &str) -> Option<f64> {
    let (_, body) = pkg::get(base, "/metrics", None);
    sample(
        &String::from_utf8_lossy(&body),
        "registry_uploads_in_progress{slot=\"judge\"}",
    )
}

/// Poll until `cond` holds or `within` has passed; whether it held.
fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Two real publishes (a namespace token and the admin token): each 201, promptly.
fn real_publishes(base: &str, round: &str) {
    for (token, name) in [(PUBLISH, "real"), (ADMIN_TOKEN, "admin-real")] {
        let started = Instant::now();
        let reply = Upload::new(pkg::simple("@company", name, &format!("{round}.0.0")))
            .bearer(token)
            .send(base);
        assert_eq!(reply.status, 201, "round {round}, {name}: {}", reply.text);
        assert!(
            started.elapsed() < PROMPT,
            "round {round}: the publish took {:?}",
            started.elapsed()
        );
    }
}

/// The head of a bogus-token upload that announces a megabyte and sends nothing.
fn bogus_head(base: &str) -> TcpStream {
    pkg::raw_request_head(
        base,
        &[
            ("Authorization", "Bearer bogus-token-of-nobody".into()),
            (
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ),
            ("Content-Length", "1000000".into()),
        ],
    )
}

/// 4, then 40, stalled bogus-token uploads over HTTP/1 (one connection each): four are judged
/// (their own slots, `MAX_CONCURRENT_UPLOADS` of them), the rest refused at once with 503, and
/// real publishes go through meanwhile. Today's code gave every real publish a 503 for as long
/// as the bogus uploads stalled.
#[test]
fn stalled_bogus_uploads_over_http1_never_delay_a_real_publish() {
    for n in [4usize, 40] {
        let (_world, server) = start_with(&[("UPLOAD_STALL_SECONDS", STALL)]);
        let (tx, rx) = mpsc::channel();
        let mut held = Vec::new();
        for _ in 0..n {
            let mut s = bogus_head(&server.base);
            s.set_read_timeout(Some(Duration::from_secs(200))).unwrap();
            held.push(s.try_clone().unwrap());
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(pkg::read_response(&mut s).map(|r| (r.0, r.1)));
            });
        }
        let judged = n.min(4);
        // The judged ones are reading (nothing comes); the others are answered at once. (Not
        // asserted here: a server without the gauge must fail below, on the real publishes.)
        eventually(Duration::from_secs(10), || {
            judging(&server.base) == Some(judged as f64)
        });
        for _ in judged..n {
            let (status, headers) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("an answer")
                .expect("a complete response");
            assert_eq!(status, 503, "n = {n}");
            assert!(
                headers.iter().any(|(k, v)| k == "retry-after" && v == "5"),
                "{headers:?}"
            );
        }
        real_publishes(&server.base, &n.to_string());
        // The stalled ones are still there, unanswered, holding their judge slots.
        assert!(rx.try_recv().is_err(), "n = {n}: a stalled upload was answered");
        assert_eq!(judging(&server.base), Some(judged as f64));
        drop(held);
    }
}

/// A request body that never sends a byte.
fn stalled() -> BoxBody<Bytes, Infallible> {
    StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>()).boxed()
}

/// The same over ONE HTTP/2 connection (h2c with prior knowledge): 4, then 40, stalled streams,
/// and real publishes on the same connection and on another one.
#[test]
fn stalled_bogus_streams_over_one_http2_connection_never_delay_a_real_publish() {
    for n in [4usize, 40] {
        let (_world, server) = start_with(&[("UPLOAD_STALL_SECONDS", STALL)]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = server.base.clone();
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(pkg::authority(&base))
                .await
                .unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .expect("the server speaks h2c with prior knowledge");
            tokio::spawn(conn);
            let url = format!("{base}/registries");
            let mut streams = Vec::new();
            for _ in 0..n {
                let req = http::Request::post(&url)
                    .header("authorization", "Bearer bogus-token-of-nobody")
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={BOUNDARY}"),
                    )
                    .header("content-length", "1000000")
                    .body(stalled())
                    .unwrap();
                let mut s = sender.clone();
                streams.push(tokio::spawn(async move {
                    s.ready().await.unwrap();
                    let res = s.send_request(req).await.unwrap();
                    let retry_after = res.headers().get("retry-after").cloned();
                    (res.status().as_u16(), retry_after)
                }));
            }
            let judged = n.min(4);
            let metrics = |sender: hyper::client::conn::http2::SendRequest<BoxBody<Bytes, Infallible>>| {
                let url = format!("{base}/metrics");
                async move {
                    let mut s = sender;
                    s.ready().await.unwrap();
                    let req = http::Request::get(url)
                        .body(Full::new(Bytes::new()).boxed())
                        .unwrap();
                    let body = s
                        .send_request(req)
                        .await
                        .unwrap()
                        .into_body()
                        .collect()
                        .await
                        .unwrap();
                    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                    sample(&text, "registry_uploads_in_progress{slot=\"judge\"}")
                }
            };
            // Until the judged ones are reading (the gauge; not asserted here, so that a server
            // without it fails below, on the real publishes) and the others are answered.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let answered = streams.iter().filter(|s| s.is_finished()).count();
                let now = metrics(sender.clone()).await;
                let settled = answered == n - judged && now == Some(judged as f64);
                if settled || (Instant::now() > deadline && answered >= n - judged) {
                    break;
                }
                assert!(
                    Instant::now() < deadline + PROMPT,
                    "n = {n}: {answered} answered, {now:?} judged"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (done, pending): (Vec<_>, Vec<_>) = streams.into_iter().partition(|s| s.is_finished());
            for s in done {
                let (status, retry_after) = s.await.unwrap();
                assert_eq!(status, 503, "n = {n}");
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"5"[..]));
            }

            // A real publish on the same connection.
            let package = pkg::simple("@company", "h2-real", &format!("{n}.0.0"));
            let body = pkg::multipart_body(
                BOUNDARY,
                &[
                    ("checksum", None, None, pkg::sha256_hex(&package).as_bytes()),
                    ("package", Some("p.tar.gz"), Some("application/gzip"), &package),
                ],
            );
            let req = http::Request::post(&url)
                .header("authorization", format!("Bearer {PUBLISH}"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(Full::new(Bytes::from(body)).boxed())
                .unwrap();
            let started = Instant::now();
            let mut s = sender.clone();
            s.ready().await.unwrap();
            let res = tokio::time::timeout(PROMPT, s.send_request(req))
                .await
                .expect("answered promptly")
                .unwrap();
            let status = res.status().as_u16();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
            assert!(started.elapsed() < PROMPT);

            // And over HTTP/1 beside it.
            let base2 = base.clone();
            tokio::task::spawn_blocking(move || real_publishes(&base2, &n.to_string()))
                .await
                .unwrap();

            // The stalled streams are still open and unanswered, holding their judge slots.
            assert!(pending.iter().all(|s| !s.is_finished()), "n = {n}");
            assert_eq!(pending.len(), judged);
            assert_eq!(metrics(sender.clone()).await, Some(judged as f64));
            for s in pending {
                s.abort();
            }
        });
        rt.shutdown_background();
    }
}
