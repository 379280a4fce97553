//! Where log lines go: every thread appends its formatted line to one shared buffer, and a
//! writer thread hands the buffer to stdout every [`FLUSH_INTERVAL`] (sooner once it holds
//! [`FLUSH_SOON`] bytes).
//!
//! Written here rather than using `tracing_appender::non_blocking` because that writer makes one
//! `write(2)` per line and wakes its thread for nearly every line: under load that was about a
//! tenth of the server's CPU (a `write`, futex wake-ups and `sched_yield` spins per request, see
//! docs/PERFORMANCE.md). Here a request pays a mutex and a copy; stdout sees a few large
//! writes per second. Lines are whole and never dropped: a writer that finds more than
//! [`HARD_LIMIT`] bytes pending waits for the flush (backpressure), and dropping the [`Guard`]
//! writes out everything before exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in memory before it reaches stdout.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Pending bytes that wake the writer before the interval is over.
pub const FLUSH_SOON: usize = 64 * 1024;
/// Pending bytes past which a logging thread waits for the writer.
pub const HARD_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the buffer should be written now (big, or closing).
    wake: Condvar,
    /// Signalled after each write-out (for writers held back by [`HARD_LIMIT`]).
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` handed to `tracing_subscriber` (cheap to clone).
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Stops the writer thread after a final write-out, when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread over `out`.
pub fn start(mut out: impl Write + Send + 'static) -> (LogSink, Guard) {
    let shared = Arc::new(Shared::default());
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut spare = Vec::new();
            loop {
                let closed = {
                    let mut p = worker.lock();
                    if !p.closed && p.buf.len() < FLUSH_SOON {
                        p = worker
                            .wake
                            .wait_timeout(p, FLUSH_INTERVAL)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    std::mem::swap(&mut p.buf, &mut spare);
                    p.closed
                };
                if !spare.is_empty() {
                    // Nowhere to report a failing stdout; the lines are dropped, not retried.
                    let _ = out.write_all(&spare).and_then(|()| out.flush());
                    spare.clear();
                    worker.drained.notify_all();
                }
                if closed && worker.lock().buf.is_empty() {
                    break;
                }
            }
        })
        .expect("cannot start the log writer thread");
    (
        LogSink {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: `tracing_subscriber` formats the whole line first and writes it in one
/// call, so appending each call keeps lines whole.
pub struct LineAppender<'a> {
    shared: &'a Shared,
}

impl Write for LineAppender<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut p = self.shared.lock();
        while p.buf.len() >= HARD_LIMIT && !p.closed {
            self.shared.wake.notify_one();
            p = self.shared.drained.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.buf.extend_from_slice(data);
        if p.buf.len() >= FLUSH_SOON {
            self.shared.wake.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    /// Append whole lines (each ending in a newline).
    pub fn append(&self, lines: &[u8]) {
        let _ = self.make_writer().write_all(lines);
    }
}

static JSON_LINES: std::sync::OnceLock<LogSink> = std::sync::OnceLock::new();

/// Declare that logs are JSON lines going to `sink`, so that a hot path may append a line it
/// formatted itself (the request log, see `http::logging`).
pub fn set_json_lines(sink: LogSink) {
    let _ = JSON_LINES.set(sink);
}

/// The sink of JSON log lines, if logs are JSON.
pub fn json_lines() -> Option<&'static LogSink> {
    JSON_LINES.get()
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineAppender<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineAppender { shared: &self.shared }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that keeps what it was given, shared with the test.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_time_and_all_on_close() {
        let out = Capture::default();
        let (sink, guard) = start(out.clone());
        sink.make_writer().write_all(b"first\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while out.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "a line never reached the output"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&out.0.lock().unwrap()[..], b"first\n");

        // Many threads, more than the hard limit in all: every line, whole, none lost.
        let line = format!("{}\n", "x".repeat(999));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let sink = sink.clone();
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        sink.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let all = out.0.lock().unwrap();
        let text = std::str::from_utf8(&all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 4 * 2000);
        assert!(lines[1..]
            .iter()
            .all(|l| l.len() == 999 && l.bytes().all(|b| b == b'x')));
    }
}
