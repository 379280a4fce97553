//! Serving connections: one acceptor hands each new connection, in turn, to one of N HTTP
//! workers, and each worker is a thread with its own single-threaded tokio runtime that keeps
//! the connection for its whole life (the design of nginx's worker processes, or actix-web's).
//!
//! Why not `axum::serve` on the work-stealing runtime: reads here are a few microseconds of
//! work each, and on that runtime a good part of a request's CPU went to moving tasks between
//! threads and waking parked workers (a futex call every few requests, measured in
//! docs/PERFORMANCE.md). A connection pinned to one thread is polled by the thread whose epoll
//! saw it ready. Everything that is not a connection (config reload, webhook delivery, the
//! acceptor) stays on the main multi-threaded runtime. Blocking work of a request (a read on a
//! cache miss, a large namespace walk) goes to its worker's blocking pool (`spawn_blocking`);
//! only the revalidation of a hot object (draining the inotify queue, or one `stat`), or a few
//! `stat`s for a small cached walk, runs inline, as in nginx.
//!
//! Shutdown follows `axum::serve`'s graceful mode: stop accepting, let in-flight requests
//! finish, close idle keep-alive connections, and return once every connection is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use std::future::Future;

use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Handoff = (std::net::TcpStream, SocketAddr);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Worker threads (at least one).
    pub workers: usize,
    /// How long a client may take to send the headers of a request, including the first one on
    /// a new connection, before the connection is closed (slowloris defence). A keep-alive
    /// connection idle for this long between requests is closed too. Costs a timer per
    /// request (about 5 % of a small read's CPU), as nginx's `client_header_timeout` does.
    pub header_timeout: Duration,
}

/// What the workers serve: a function from a request and the connection's peer address to
/// the response. A plain function rather than a tower service: hyper keeps the returned future
/// in place, whereas a boxed handler future cost an allocation and a copy of the whole request
/// state per request, and the peer address needs no per-request extensions map.
pub trait App: Clone + Send + 'static {
    type Future: Future<Output = Response> + Send + 'static;
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> Self::Future;
}

impl<F, Fut> App for F
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    type Future = Fut;
    fn call(&self, req: Request<Incoming>, peer: SocketAddr) -> Fut {
        self(req, peer)
    }
}

/// Serve `app` on `listener` with `workers` worker threads until `shutdown` completes, then
/// drain: returns when every connection has been closed.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    S: App,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = settings.workers.max(1);
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        let (app, stop) = (app.clone(), stop_rx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("http-worker-{i}"))
                .spawn(move || worker(rx, app, settings.header_timeout, stop))?,
        );
        queues.push(tx);
    }
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small responses go out at once, not after Nagle's delay.
                let _ = stream.set_nodelay(true);
                match stream.into_std() {
                    Ok(stream) => {
                        let _ = queues[next].send((stream, peer));
                        next = (next + 1) % queues.len();
                    }
                    Err(e) => tracing::debug!(error = %e, "dropping a connection"),
                }
            }
            // The peer gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => {}
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                tracing::error!(error = %e, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(queues);
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    joined.await.map_err(std::io::Error::other)
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// One HTTP worker: serve the connections handed to it until told to stop, then close them
/// gracefully and wait for them.
fn worker<S: App>(
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    app: S,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an HTTP worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                handed = incoming.recv() => match handed {
                    Some(h) => h,
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                continue;
            };
            let app = app.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = app.call(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut builder = Builder::new(TokioExecutor::new());
            // hyper applies the header timeout only with a timer.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
            });
        }
        graceful.shutdown().await;
    });
}
