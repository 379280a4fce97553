//! Pure decisions of the bucket outbox (SPEC §11.4), kept apart from its I/O so they can be
//! unit-tested: who may take a delivery, how long a claim lasts, and how often a replica lists
//! the outbox looking for orphaned deliveries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A replica's claim on a delivery, stored in the delivery's object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The claiming replica (random per process start).
    pub owner: String,
    /// Unix milliseconds after which any replica may take the delivery over.
    pub expires_ms: i64,
}

/// May replica `me` take a delivery holding `claim` at `now_ms`? Yes when nobody holds it, when
/// `me` holds it, or when the holder's claim has expired (the holder is presumed dead).
pub fn claimable(claim: Option<&Claim>, me: &str, now_ms: i64) -> bool {
    match claim {
        None => true,
        Some(c) => c.owner == me || c.expires_ms <= now_ms,
    }
}

/// The claim taken before an attempt: it must outlive the attempt (its timeout), or another
/// replica would deliver the same delivery while this one still waits for the receiver.
pub fn claim_for_attempt(me: &str, now_ms: i64, claim: Duration) -> Claim {
    Claim {
        owner: me.to_owned(),
        expires_ms: now_ms.saturating_add(millis(claim)),
    }
}

/// The claim kept after a failed attempt: the same replica makes the retry at `next_attempt_ms`,
/// and the others leave it alone until a claim's length after that (in case this replica dies
/// before the retry).
pub fn claim_until_retry(me: &str, next_attempt_ms: i64, claim: Duration) -> Claim {
    claim_for_attempt(me, next_attempt_ms, claim)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The interval between two lists of the outbox by one replica: the shortest while deliveries
/// are pending, doubled after every list that found the outbox empty, up to the longest. An
/// idle replica thus lists `3600 / max` times an hour (12 with the 300 s default).
#[derive(Debug, Clone)]
pub struct PollBackoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl PollBackoff {
    pub fn new(min: Duration, max: Duration) -> PollBackoff {
        let min = min.max(Duration::from_millis(1));
        PollBackoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The wait before the next list, after a list that found `pending` deliveries (any, taken
    /// or not: while the outbox holds something, an orphan may appear soon).
    pub fn next(&mut self, pending: usize) -> Duration {
        if pending > 0 {
            self.current = self.min;
            return self.min;
        }
        let wait = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }

    /// Back to the shortest interval (work may appear again).
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// List calls per hour of a replica idle for long (at the longest interval).
    pub fn idle_lists_per_hour(&self) -> f64 {
        3600.0 / self.max.as_secs_f64()
    }
}

/// What the scan of a shared outbox does after a list: keep listing on the backoff, or go idle
/// until a webhook is enabled again. Without an enabled webhook this replica queues nothing, so
/// once a list finds the outbox empty nothing can appear that it must deliver (a replica that
/// has webhooks lists for the orphans of its peers); until then what is left (queued while
/// webhooks existed, or left by a dead replica) is still delivered or given up on §7's schedule.
/// A failed list (`None`) says nothing about the outbox: keep listing.
pub fn keep_listing(webhooks_enabled: bool, pending: Option<usize>) -> bool {
    webhooks_enabled || pending != Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(owner: &str, expires_ms: i64) -> Claim {
        Claim {
            owner: owner.into(),
            expires_ms,
        }
    }

    #[test]
    fn who_may_take_a_delivery() {
        assert!(claimable(None, "a", 0), "unclaimed");
        assert!(claimable(Some(&claim("a", 100)), "a", 50), "own claim");
        assert!(
            !claimable(Some(&claim("b", 100)), "a", 50),
            "another's live claim"
        );
        assert!(!claimable(Some(&claim("b", 100)), "a", 99));
        assert!(claimable(Some(&claim("b", 100)), "a", 100), "expired claim");
        assert!(claimable(Some(&claim("b", 100)), "a", 5000));
    }

    #[test]
    fn claims_outlive_the_attempt_and_the_retry() {
        let c = claim_for_attempt("me", 1_000, Duration::from_secs(60));
        assert_eq!(c, claim("me", 61_000));
        let c = claim_until_retry("me", 9_000, Duration::from_secs(2));
        assert_eq!(c, claim("me", 11_000));
        // No overflow on absurd values.
        let c = claim_for_attempt("me", i64::MAX - 1, Duration::MAX);
        assert_eq!(c.expires_ms, i64::MAX);
    }

    #[test]
    fn idle_polling_backs_off_and_resets_when_work_appears() {
        let s = Duration::from_secs;
        let mut p = PollBackoff::new(s(5), s(300));
        let idle: Vec<Duration> = (0..9).map(|_| p.next(0)).collect();
        assert_eq!(
            idle,
            vec![s(5), s(10), s(20), s(40), s(80), s(160), s(300), s(300), s(300)]
        );
        assert_eq!(p.next(3), s(5), "pending deliveries: back to the shortest");
        assert_eq!(p.next(1), s(5));
        assert_eq!(p.next(0), s(5));
        assert_eq!(p.next(0), s(10));
        assert_eq!(p.idle_lists_per_hour(), 12.0);
        p.next(0);
        p.reset();
        assert_eq!(p.next(0), s(5), "reset: the shortest again");
        // A maximum below the minimum is the minimum; a zero minimum never spins.
        let mut p = PollBackoff::new(s(10), s(1));
        assert_eq!((p.next(0), p.next(0)), (s(10), s(10)));
        let mut p = PollBackoff::new(Duration::ZERO, Duration::ZERO);
        assert!(p.next(0) > Duration::ZERO);
    }

    #[test]
    fn listing_stops_only_when_no_webhook_and_nothing_pending() {
        assert!(
            keep_listing(true, Some(0)),
            "webhooks: orphans may appear at any time"
        );
        assert!(keep_listing(true, None));
        assert!(
            keep_listing(false, Some(2)),
            "deliveries left: deliver or give them up"
        );
        assert!(keep_listing(false, None), "a failed list proves nothing");
        assert!(
            !keep_listing(false, Some(0)),
            "nothing to deliver and nothing can be queued"
        );
    }
}
