//! A request body under a deadline ([`Timed`]): cut off with a [`BodyTimeout`] error when no
//! byte arrives for a stall interval, or the whole body is not there by a total deadline. Which
//! routes read a body, and under which deadline, is `http::body`; the upload pipeline and the
//! web forms turn the error into a 408.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

/// The time a body has: at most `stall` without a byte, `total` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub stall: Duration,
    pub total: Duration,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeout {
    /// No byte for [`Deadline::stall`] (else the whole body missed [`Deadline::total`]).
    pub stalled: bool,
    /// The bound that was passed.
    pub after: Duration,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.stalled {
            write!(f, "request body stalled for {}s", self.after.as_secs())
        } else {
            write!(f, "request body not received within {}s", self.after.as_secs())
        }
    }
}

impl std::error::Error for BodyTimeout {}

/// The [`BodyTimeout`] behind a body read error, if that is what it was.
pub fn timeout_of(e: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = at {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(*t);
        }
        at = e.source();
    }
    None
}

/// A body under a [`Deadline`]. The clocks start at the first read; the stall clock restarts
/// whenever a read begins (a frame arrived, and the reader came back for more: time the reader
/// spent elsewhere is not the client's). A timer exists only while a read waits.
pub struct Timed<B> {
    inner: B,
    deadline: Deadline,
    /// When the whole body is due (set at the first read).
    due: Option<Instant>,
    /// When the current wait for a frame began, if one is in progress.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<B> Timed<B> {
    pub fn new(inner: B, deadline: Deadline) -> Timed<B> {
        Timed {
            inner,
            deadline,
            due: None,
            waiting_since: None,
            timer: None,
            done: false,
        }
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let since = *this.waiting_since.get_or_insert_with(Instant::now);
        let due = *this.due.get_or_insert(since + this.deadline.total);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting_since = None;
                if frame.is_none() {
                    this.done = true;
                }
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let stall_at = since + this.deadline.stall;
        let at = stall_at.min(due);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.done = true;
        this.timer = None;
        let stalled = stall_at < due;
        let after = if stalled {
            this.deadline.stall
        } else {
            this.deadline.total
        };
        Poll::Ready(Some(Err(Box::new(BodyTimeout { stalled, after }))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use futures::StreamExt;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn deadline(stall: u64, total: u64) -> Deadline {
        Deadline {
            stall: ms(stall),
            total: ms(total),
        }
    }

    /// A body that yields `chunks`, each after its delay in ms, then ends, or (`forever`) never
    /// sends another byte.
    fn dripping(chunks: Vec<(u64, &'static str)>, forever: bool) -> Body {
        let stream = futures::stream::iter(chunks)
            .then(|(delay, s)| async move {
                tokio::time::sleep(ms(delay)).await;
                Ok::<_, std::io::Error>(Bytes::from_static(s.as_bytes()))
            })
            .chain(futures::stream::pending().take(usize::from(forever)));
        Body::from_stream(stream)
    }

    async fn read(body: Body, d: Deadline) -> (String, Option<BodyTimeout>) {
        let mut stream = Body::new(Timed::new(body, d)).into_data_stream();
        let mut got = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => got.push_str(std::str::from_utf8(&c).unwrap()),
                Err(e) => return (got, timeout_of(&e)),
            }
        }
        (got, None)
    }

    // Real time (the tokio test clock needs a feature that would rebuild every dependency):
    // margins of several hundred milliseconds either way.

    #[tokio::test]
    async fn a_moving_body_is_read_whole_past_many_stall_intervals() {
        let chunks = (0..8).map(|_| (100, "x")).collect();
        let (got, cut) = read(dripping(chunks, false), deadline(600, 60_000)).await;
        assert_eq!((got.as_str(), cut), ("xxxxxxxx", None));
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_after_the_stall_interval() {
        let stalled = Some(BodyTimeout {
            stalled: true,
            after: ms(300),
        });
        let body = dripping(vec![(0, "a"), (0, "b")], true);
        assert_eq!(read(body, deadline(300, 60_000)).await, ("ab".into(), stalled));
        // Nothing at all.
        let body = dripping(vec![], true);
        assert_eq!(read(body, deadline(300, 60_000)).await, ("".into(), stalled));
    }

    #[tokio::test]
    async fn a_slow_body_is_cut_at_the_total_deadline() {
        let chunks = (0..200).map(|_| (50, "x")).collect();
        let (got, cut) = read(dripping(chunks, false), deadline(5_000, 400)).await;
        assert_eq!(
            cut,
            Some(BodyTimeout {
                stalled: false,
                after: ms(400)
            })
        );
        assert!(got.len() < 200, "{got}");
    }

    #[tokio::test]
    async fn time_the_reader_spends_elsewhere_is_not_a_stall() {
        let body = dripping(vec![(0, "a"), (0, "b")], false);
        let mut stream = Body::new(Timed::new(body, deadline(200, 60_000))).into_data_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "a");
        tokio::time::sleep(ms(600)).await;
        assert_eq!(stream.next().await.unwrap().unwrap(), "b");
        assert!(stream.next().await.is_none());
    }
}
