//! The two-replica topology of `deploy/compose.yaml` (profile `replicas`) and
//! `deploy/kubernetes/`, without containers: two server processes on one bucket of the test S3
//! server, the policy in the bucket (`AUTH_SOURCE=bucket`, written by `auth push`), behind a
//! round-robin HTTP proxy standing in for the load balancer (no stickiness, like nginx's
//! `upstream` or a Kubernetes Service).
//!
//! - the README's example, published with `rack-registry publish` through the balancer, lands on
//!   one replica and is read back from the other, through the balancer;
//! - a rolling restart (each replica stopped with SIGTERM and started again, one at a time, the
//!   balancer skipping a replica that fails, as nginx's `proxy_next_upstream error` does) loses
//!   no read, and a publish after it is read on both new replicas.

mod common;
#[path = "common/pkg.rs"]
mod pkg;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::Bucket;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const POLICY: &str = "{\"@demo\": []}\n";

/// One request as the balancer passed it on: to which replica, what, and the answer's status.
#[derive(Debug, Clone)]
struct Passed {
    replica: usize,
    request: String,
    status: u16,
}

#[derive(Default)]
struct Shared {
    replicas: Mutex<Vec<String>>,
    next: AtomicUsize,
    log: Mutex<Vec<Passed>>,
}

/// The load balancer: request `n` goes to replica `n % 2`; a replica it cannot connect to is
/// skipped for the next one (nothing was sent, so any request may be retried).
struct Balancer {
    url: String,
    shared: Arc<Shared>,
}

impl Balancer {
    fn start(replicas: Vec<String>) -> Balancer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            replicas: Mutex::new(replicas),
            ..Default::default()
        });
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let (client, state) = (client.clone(), state.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            forward(client.clone(), state.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(conn), svc)
                            .await;
                    });
                }
            });
        });
        Balancer {
            url: format!("http://{addr}"),
            shared,
        }
    }

    fn set_replica(&self, i: usize, base: &str) {
        self.shared.replicas.lock().unwrap()[i] = base.to_owned();
    }

    fn log(&self) -> Vec<Passed> {
        self.shared.log.lock().unwrap().clone()
    }
}

async fn forward(
    client: reqwest::Client,
    state: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let first = state.next.fetch_add(1, Ordering::SeqCst);
    let mut last_error = None;
    for attempt in 0..2 {
        let replica = (first + attempt) % 2;
        let base = state.replicas.lock().unwrap()[replica].clone();
        let mut out = client
            .request(method.clone(), format!("{base}{target}"))
            .body(body.clone());
        for (name, value) in &parts.headers {
            if name != "host" {
                out = out.header(name.as_str(), value.as_bytes());
            }
        }
        let reply = match out.send().await {
            Ok(r) => r,
            // nginx's `proxy_next_upstream error`: a failed connection, or (reads only) a
            // failure before the answer's headers, as from a replica shutting down.
            Err(e) if e.is_connect() || method == reqwest::Method::GET => {
                last_error = Some(e);
                continue;
            }
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let status = reply.status().as_u16();
        let mut res = Response::builder().status(status);
        for (name, value) in reply.headers() {
            res = res.header(name.as_str(), value.as_bytes());
        }
        let bytes = reply.bytes().await.map_err(std::io::Error::other)?;
        state.log.lock().unwrap().push(Passed {
            replica,
            request: format!("{} {target}", parts.method),
            status,
        });
        return Ok(res.body(Full::new(bytes)).unwrap());
    }
    Err(std::io::Error::other(format!(
        "no replica answered: {last_error:?}"
    )))
}

/// A replica's environment: the bucket, the policy from the bucket, its own scratch directory.
fn replica_env(world: &common::World, bucket: &Bucket, name: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = world
        .env_on_bucket(bucket)
        .into_iter()
        .filter(|(k, _)| k != "STORAGE_ROOT" && k != "AUTH_CONFIG_PATH")
        .collect();
    env.push(("AUTH_SOURCE".into(), "bucket".into()));
    env.push((
        "STORAGE_ROOT".into(),
        world.path().join(format!("scratch-{name}")).display().to_string(),
    ));
    env
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let res = common::client().get(url).send().unwrap();
    (res.status().as_u16(), res.bytes().unwrap().to_vec())
}

/// Requests through the balancer until one for `path` is passed to `replica` (round robin: at
/// most a few); its status and body.
fn get_from(lb: &Balancer, replica: usize, path: &str) -> (u16, Vec<u8>) {
    for _ in 0..4 {
        let before = lb.log().len();
        let reply = get(&format!("{}{path}", lb.url));
        if lb.log()[before..]
            .iter()
            .any(|p| p.replica == replica && p.request.ends_with(path))
        {
            return reply;
        }
    }
    panic!(
        "the balancer never passed {path} to replica {replica}: {:?}",
        lb.log()
    );
}

/// Wait until `path`, read through the balancer from `replica`, answers 200 (the versions list
/// and latest reach another replica within `STORAGE_REVALIDATE_MS`).
fn wait_200_from(lb: &Balancer, replica: usize, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get_from(lb, replica, path);
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on replica {replica}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn publish_example(world: &common::World, lb: &Balancer) -> String {
    let example = common::repo_root().join("examples/hello");
    let env = vec![
        ("RACK_REGISTRY_URL".to_owned(), lb.url.clone()),
        ("RACK_REGISTRY_TOKEN".to_owned(), common::ADMIN_TOKEN.to_owned()),
    ];
    let (code, out) = common::run_cli(world.path(), &env, &["publish", example.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    out
}

#[test]
fn two_replicas_on_one_bucket_behind_a_balancer_serve_what_either_published() {
    let Some(bucket) = Bucket::new() else { return };
    let world = common::World::new();
    let policy = world.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let (code, out) = common::run_cli(
        world.path(),
        &bucket.env(),
        &["auth", "push", policy.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}");
    let mut replicas = [
        common::Server::start(world.path(), &replica_env(&world, &bucket, "a")),
        common::Server::start(world.path(), &replica_env(&world, &bucket, "b")),
    ];
    let lb = Balancer::start(replicas.iter().map(|r| r.base.clone()).collect());

    // Both replicas are healthy and each answers through the balancer.
    for _ in 0..2 {
        assert_eq!(get(&format!("{}/health", lb.url)).0, 200);
    }
    let served: Vec<usize> = lb.log().iter().map(|p| p.replica).collect();
    assert_eq!(served, vec![0, 1], "{:?}", lb.log());

    // The README's example, published through the balancer with the real CLI.
    let out = publish_example(&world, &lb);
    assert!(out.contains("published @demo/features/hello/1.0.0"), "{out}");
    let upload = lb
        .log()
        .into_iter()
        .find(|p| p.request == "POST /registries")
        .expect("the upload went through the balancer");
    assert_eq!(upload.status, 201, "{:?}", lb.log());
    let other = 1 - upload.replica;

    // Read back from the replica that did not take the upload.
    let file = "/registries/@demo/features/hello/1.0.0/files/templates/README.md";
    let (status, body) = get_from(&lb, other, file);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        std::fs::read(common::repo_root().join("examples/hello/templates/README.md")).unwrap()
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&wait_200_from(&lb, other, "/registries/@demo/features/hello")).unwrap();
    assert_eq!(manifest["version"], "1.0.0");
    let versions: serde_json::Value = serde_json::from_slice(&wait_200_from(
        &lb,
        other,
        "/registries/@demo/features/hello/versions",
    ))
    .unwrap();
    assert_eq!(versions["versions"], serde_json::json!(["1.0.0"]), "{versions}");

    // A rolling restart under reads: every read through the balancer answers 200.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, stop) = (format!("{}{file}", lb.url), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                statuses.push(get(&url).0);
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };
    for (i, name) in ["a2", "b2"].into_iter().enumerate() {
        let old = std::mem::replace(
            &mut replicas[i],
            common::Server::start(world.path(), &replica_env(&world, &bucket, name)),
        );
        let started = Instant::now();
        let status = old.terminate();
        assert!(status.success(), "SIGTERM ends a replica cleanly: {status}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // The balancer finds the replica gone (connection refused) until it is pointed at the
        // new process, as a health-checked upstream would be.
        std::thread::sleep(Duration::from_millis(300));
        lb.set_replica(i, &replicas[i].base);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    let statuses = reader.join().unwrap();
    assert!(statuses.len() > 10, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // After the restart: a publish through the balancer, read on both new replicas.
    let reply = pkg::Upload::new(pkg::simple("@demo", "after-restart", "1.0.0"))
        .bearer(common::ADMIN_TOKEN)
        .send(&lb.url);
    assert_eq!(reply.status, 201, "{}", reply.text);
    for replica in 0..2 {
        let (status, body) = get_from(
            &lb,
            replica,
            "/registries/@demo/build/after-restart/1.0.0/files/templates/a.txt",
        );
        assert_eq!((status, body), (200, b"hello\n".to_vec()), "replica {replica}");
    }
}
