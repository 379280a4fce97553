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
//!
//! No connection may hold a file descriptor for free (a silent socket, a partial HTTP/2
//! preface, an HTTP/2 connection that only pings). Each connection has a watchdog:
//! - until its first request head has arrived, it is dropped `header_timeout` after accept,
//!   whatever it sent (the HTTP/1-or-2 sniffing has no timeout of its own);
//! - afterwards, once no request has been in flight for `header_timeout`, it is shut down
//!   gracefully (HTTP/2 GOAWAY, HTTP/1 close after the current response), and dropped if it
//!   then makes no progress (bytes read or written) for another `header_timeout`, so a reader
//!   that stops reading cannot pin it either. This is also the HTTP/1 header timeout after the
//!   first request: hyper counts a connection with half a head as idle and closes it at once
//!   on a graceful shutdown, so a head dripped a byte at a time is cut one to two timeouts
//!   after the last request. (hyper's own per-request header timer is off: it cost a timer per
//!   request, about 5 % of a cached read's CPU, for the same bound within one timeout);
//! - HTTP/2 peers are pinged every `header_timeout` and dropped if they do not answer.
//!
//! The number of open connections is capped ([`Settings::max_connections`]): at the cap the
//! acceptor waits (new connections queue in the kernel's backlog) and says so in the log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::future::Future;

use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Worker threads (at least one).
    pub workers: usize,
    /// How long a client may take to send the headers of a request, including the first one on
    /// a new connection, before the connection is closed (slowloris defence). A connection
    /// with no request in flight for this long is closed too, on HTTP/1 and HTTP/2. Enforced
    /// by each connection's watchdog, which ticks at this interval: a head after the first
    /// one may take up to twice this long (module docs).
    pub header_timeout: Duration,
    /// Most connections open at once (at least one).
    pub max_connections: usize,
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
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let mut cap_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Once per minute at most, however long the cap is held.
                if cap_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    cap_logged = Some(Instant::now());
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "connection limit reached (MAX_CONNECTIONS): new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
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
                        let _ = queues[next].send((stream, peer, permit));
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
        let tracker = TaskTracker::new();
        let mut builder = Builder::new(TokioExecutor::new());
        // No per-request header timer on HTTP/1: the connection's watchdog bounds a slow head
        // (see `watch_connection`). hyper's timer allocated and armed a tokio timer for every
        // request head, about 5 % of a cached read's CPU (docs/PERFORMANCE.md).
        builder.http1().header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(header_timeout)
            .keep_alive_timeout(header_timeout);
        loop {
            let (stream, peer, permit) = tokio::select! {
                handed = incoming.recv() => match handed {
                    Some(h) => h,
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                continue;
            };
            let activity = Arc::new(Activity::default());
            let service = {
                let (app, activity) = (app.clone(), activity.clone());
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let busy = Busy::begin(activity.clone());
                    let answer = app.call(req, peer);
                    async move {
                        let res = answer.await;
                        drop(busy);
                        Ok::<_, Infallible>(res)
                    }
                })
            };
            let io = Watched {
                inner: TokioIo::new(stream),
                activity: activity.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
            let stop = stop.clone();
            tracker.spawn(async move {
                watch_connection(conn, activity, header_timeout, stop).await;
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    });
}

/// What the watchdog knows of a connection. Counters, not clocks: the watchdog compares them
/// between its ticks, so a request costs a few uncontended atomic adds and no clock read.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Requests begun or ended.
    requests: AtomicU64,
    /// Reads and writes that moved bytes.
    io: AtomicU64,
}

impl Activity {
    /// Bytes moved. A load and a store rather than an atomic add: only the connection's own
    /// thread writes this counter, and the watchdog only compares it for change.
    fn moved(&self) {
        self.io
            .store(self.io.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

/// A request in flight, from its complete head to its response (not the response body, which
/// hyper writes afterwards; a graceful shutdown lets that finish).
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.requests.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve one connection under its watchdog (see the module docs) and the stop signal. The
/// watchdog ticks every `timeout`: a connection is idle when no request began or ended and
/// none was in flight over a whole tick (so it is closed between one and two timeouts after
/// its last request), and a draining one when no byte moved over a whole tick.
async fn watch_connection<C>(
    conn: C,
    activity: Arc<Activity>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    C: Future + GracefulConn,
{
    tokio::pin!(conn);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + timeout, timeout);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    let mut seen = (0, 0);
    loop {
        tokio::select! {
            // The connection first, and no random branch order: it is what wakes this task.
            biased;
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().shutdown_gracefully();
                closing = true;
            }
            _ = tick.tick() => {
                let now = (
                    activity.requests.load(Ordering::Relaxed),
                    activity.io.load(Ordering::Relaxed),
                );
                if now.0 == 0 {
                    // Silent, a partial head or preface, or an HTTP/2 connection that never
                    // asked for anything, a whole timeout after the accept: nothing is lost by
                    // dropping it.
                    return;
                }
                if closing {
                    // Draining: only bytes moving on the wire keep the connection.
                    if now.1 == seen.1 {
                        return;
                    }
                } else if now.0 == seen.0 && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    conn.as_mut().shutdown_gracefully();
                    closing = true;
                }
                seen = now;
            }
        }
    }
}

/// A connection that can be asked to finish its current work and close.
trait GracefulConn {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulConn for hyper_util::server::conn::auto::UpgradeableConnection<'static, I, S, E>
where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The connection's socket, noting when bytes move (for the watchdog's drain phase).
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.moved();
        }
        polled
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
