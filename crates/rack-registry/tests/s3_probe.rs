//! The conditional-write probe (SPEC §11.1) against a store that ignores conditional writes: a
//! test-only S3 front that strips `If-None-Match`/`If-Match` before forwarding to moto.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::convert::Infallible;

use common::s3::Bucket;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const PUBLISH: &str = "company-publish-token";

/// Start the stripping front on a free loopback port (on its own runtime thread); its URL.
fn careless_front(upstream: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let client = reqwest::Client::new();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        forward(client.clone(), upstream.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
    });
    format!("http://{addr}")
}

async fn forward(
    client: reqwest::Client,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut out = client.request(method, format!("{upstream}{target}")).body(body);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        // The whole point: a store that drops the conditions.
        if n != "host" && n != "if-none-match" && n != "if-match" {
            out = out.header(n, value.as_bytes());
        }
    }
    let reply = out.send().await.unwrap();
    let mut res = Response::builder().status(reply.status().as_u16());
    for (name, value) in reply.headers() {
        res = res.header(name.as_str(), value.as_bytes());
    }
    let bytes = reply.bytes().await.unwrap_or_default();
    Ok(res.body(Full::new(bytes)).unwrap())
}

#[test]
fn a_store_ignoring_conditional_writes_is_refused_unless_single_writer() {
    let Some(bucket) = Bucket::new() else { return };
    let careless = Bucket {
        endpoint: careless_front(bucket.endpoint.clone()),
        name: bucket.name.clone(),
    };
    let world = common::World::new();
    let (code, out) = common::run_cli(world.path(), &careless.env(), &["serve"]);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}\n{out}");
    assert!(
        out.contains("does not honour conditional writes (If-None-Match was ignored)")
            && out.contains("STORAGE_SINGLE_WRITER=true"),
        "{out}"
    );

    let mut env = world.env_on_bucket(&careless);
    env.push(("STORAGE_SINGLE_WRITER".into(), "true".into()));
    let server = common::Server::start(world.path(), &env);
    assert!(
        server.output().contains("only ONE replica may write"),
        "{}",
        server.output()
    );
    // Publishing stays correct in this one process: the emulation refuses the second create.
    let m = pkg::manifest(
        "@company",
        "widget",
        "1.0.0",
        "registry:build",
        &["templates/a.txt"],
    );
    let first = pkg::package(&m, &[("templates/a.txt", b"first\n")]);
    let reply = pkg::Upload::new(first.clone()).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = pkg::Upload::new(first).bearer(PUBLISH).send(&server.base);
    assert_eq!(reply.status, 409, "{}", reply.text);

    // The version is in the bucket, and the probe removed its scratch keys both times.
    let s3 = rack_registry::storage::s3::S3Storage::new(&rack_registry::storage::s3::S3Options {
        endpoint: Some(bucket.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.name.clone(),
        credentials: Some((common::s3::ACCESS_KEY.into(), common::s3::SECRET_KEY.into())),
        prefix: String::new(),
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use rack_registry::storage::Storage;
        let manifest = s3
            .head("@company/build/widget/1.0.0/registry.json")
            .await
            .unwrap();
        assert!(manifest.is_some());
        let left = s3.list(".rack/", false, None, 10).await.unwrap();
        assert!(left.objects.is_empty(), "{left:?}");
    });
}
