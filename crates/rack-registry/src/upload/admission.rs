//! Which uploads may start reading their body, and how many at once (not SPEC checks: they
//! never change a check's answer, only whether and when an upload is judged).
//!
//! Two kinds of upload, two separate bounds, so that one kind can never starve the other:
//!
//! - **Publishing** uploads (a credential that may publish somewhere: the admin token or a live
//!   `publish: true` entry) take one of `MAX_CONCURRENT_UPLOADS` slots. Over that they wait, in
//!   arrival order (tokio's semaphore is fair), in a queue of at most `UPLOAD_QUEUE_MAX`, for at
//!   most `UPLOAD_QUEUE_WAIT_SECONDS`. Their bodies are not read while they wait, so TCP holds
//!   the clients back. Only a full queue or a longer wait is refused ([`Refusal`]: 503 with
//!   `Retry-After`).
//! - **Hopeless** uploads (a credential that can publish nowhere: unknown, read-only, expired)
//!   must still be read to find their SPEC answer (checks 3 to 8 come before 9, and the
//!   namespace is in the package), but they write nothing and take a *judge* slot, of which there
//!   are as many as publishing slots, with no queue: over that they are refused at once. Any
//!   number of bogus-token uploads, stalled or not, therefore holds no publishing slot.
//!
//! Both kinds read their body under the stall and total deadlines of `http::body`, so a slot
//! held by a body that stopped moving is given back after `UPLOAD_STALL_SECONDS`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The settings of [`Admission`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `MAX_CONCURRENT_UPLOADS` (>= 1): publishing uploads at once, and hopeless ones at once.
    pub slots: usize,
    /// `UPLOAD_QUEUE_MAX`: publishing uploads waiting for a slot (0: none wait).
    pub queue_max: usize,
    /// `UPLOAD_QUEUE_WAIT_SECONDS`: the longest wait for a slot.
    pub queue_wait: Duration,
}

/// Why an upload was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every publishing slot taken and `UPLOAD_QUEUE_MAX` uploads already waiting.
    QueueFull,
    /// Waited `UPLOAD_QUEUE_WAIT_SECONDS` without a slot.
    WaitedTooLong,
    /// Every judge slot taken (hopeless uploads).
    JudgesBusy,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::QueueFull => "upload queue full",
            Refusal::WaitedTooLong => "waited too long for an upload slot",
            Refusal::JudgesBusy => "every slot for uploads that cannot publish is taken",
        }
    }
}

/// Gauges of what [`Admission`] holds (`/metrics`).
#[derive(Clone)]
pub struct Gauges {
    /// Publishing uploads holding a slot.
    pub publishing: IntGauge,
    /// Hopeless uploads being judged.
    pub judging: IntGauge,
    /// Publishing uploads waiting for a slot.
    pub queued: IntGauge,
}

/// A slot held for the life of an upload (released on drop).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A place in the queue (released on drop: admitted, refused, or the client went away).
struct Place<'a> {
    queued: &'a AtomicUsize,
    gauge: &'a IntGauge,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.gauge.dec();
    }
}

pub struct Admission {
    settings: Settings,
    publish: Arc<Semaphore>,
    judge: Arc<Semaphore>,
    queued: AtomicUsize,
    gauges: Gauges,
}

impl Admission {
    pub fn new(settings: Settings, gauges: Gauges) -> Admission {
        let slots = settings.slots.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            settings,
            publish: Arc::new(Semaphore::new(slots)),
            judge: Arc::new(Semaphore::new(slots)),
            queued: AtomicUsize::new(0),
            gauges,
        }
    }

    /// A publishing slot: at once if one is free, else after waiting in the queue.
    pub async fn publishing(&self) -> Result<Slot, Refusal> {
        let slot = |permit| {
            self.gauges.publishing.inc();
            Slot {
                _permit: permit,
                gauge: self.gauges.publishing.clone(),
            }
        };
        // A free permit exists only while nobody waits (released permits go to the waiters
        // first), so this never jumps the queue.
        if let Ok(permit) = self.publish.clone().try_acquire_owned() {
            return Ok(slot(permit));
        }
        let max = self.settings.queue_max;
        if self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return Err(Refusal::QueueFull);
        }
        self.gauges.queued.inc();
        let _place = Place {
            queued: &self.queued,
            gauge: &self.gauges.queued,
        };
        match tokio::time::timeout(self.settings.queue_wait, self.publish.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(slot(permit)),
            // The semaphore is never closed; a wait past the bound is refused.
            Ok(Err(_)) | Err(_) => Err(Refusal::WaitedTooLong),
        }
    }

    /// A judge slot for an upload that can publish nowhere: at once, or refused.
    pub fn judging(&self) -> Result<Slot, Refusal> {
        let permit = self
            .judge
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::JudgesBusy)?;
        self.gauges.judging.inc();
        Ok(Slot {
            _permit: permit,
            gauge: self.gauges.judging.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(slots: usize, queue_max: usize, wait_ms: u64) -> Admission {
        let gauge = |n: &str| IntGauge::new(n, "test").unwrap();
        Admission::new(
            Settings {
                slots,
                queue_max,
                queue_wait: Duration::from_millis(wait_ms),
            },
            Gauges {
                publishing: gauge("p"),
                judging: gauge("j"),
                queued: gauge("q"),
            },
        )
    }

    #[tokio::test]
    async fn over_the_slots_uploads_queue_in_order_up_to_the_bounds() {
        let a = Arc::new(admission(1, 2, 60_000));
        let first = a.publishing().await.unwrap();
        assert_eq!(a.gauges.publishing.get(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (waiter, tx) = (a.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = waiter.publishing().await;
                tx.send(i).unwrap();
                // Held a moment, so that the next one is admitted strictly after.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(slot);
            }));
            while a.gauges.queued.get() != i + 1 {
                tokio::task::yield_now().await;
            }
        }
        // The queue is full: refused at once.
        assert_eq!(a.publishing().await.err(), Some(Refusal::QueueFull));
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        let order: Vec<i64> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1], "first come, first served");
        assert_eq!((a.gauges.queued.get(), a.gauges.publishing.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_long_wait_is_refused_and_leaves_the_queue() {
        let a = admission(1, 4, 100);
        let _held = a.publishing().await.unwrap();
        assert_eq!(a.publishing().await.err(), Some(Refusal::WaitedTooLong));
        assert_eq!(a.gauges.queued.get(), 0);
        assert_eq!(a.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn no_queue_refuses_at_once_and_judges_have_their_own_slots() {
        let a = admission(2, 0, 60_000);
        let _p: Vec<Slot> = vec![a.publishing().await.unwrap(), a.publishing().await.unwrap()];
        assert_eq!(a.publishing().await.err(), Some(Refusal::QueueFull));
        // Every publishing slot taken: judges still get theirs, and only theirs.
        let j = [a.judging().unwrap(), a.judging().unwrap()];
        assert_eq!(a.judging().err(), Some(Refusal::JudgesBusy));
        assert_eq!(a.gauges.judging.get(), 2);
        drop(j);
        assert_eq!(a.gauges.judging.get(), 0);
        assert!(a.judging().is_ok());
    }
}
