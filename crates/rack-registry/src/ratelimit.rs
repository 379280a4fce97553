//! Per-client rate limiting (SPEC §8, §14): a *fixed window* per client IP that starts at the
//! client's first request, with no refill inside the window.
//!
//! Written by hand rather than with `governor`: governor implements GCRA, which refills
//! continuously (a client that waits 1/limit of the window gets a request back), and it cannot
//! report "requests remaining in this window" or "seconds until this window ends", which the
//! `x-ratelimit-*` headers and the 429 message of the contract need. The state is a sharded
//! map of `(window start, count)`, swept of expired windows as it grows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Sweep a shard of expired windows when it grows past this many clients.
const SWEEP_AT: usize = 4096;

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the client's window ends (rounded up, at least 1).
    pub reset_secs: u64,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u64,
}

pub struct RateLimiter {
    max: u64,
    window: Duration,
    shards: Vec<Mutex<HashMap<IpAddr, Window>>>,
}

impl RateLimiter {
    /// `max == 0` disables limiting (see [`RateLimiter::enabled`]).
    pub fn new(max: u64, window: Duration) -> RateLimiter {
        RateLimiter {
            max,
            window,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Window>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) as usize) ^ ((u128::from(*v6) >> 64) as usize),
        };
        &self.shards[h % SHARDS]
    }

    /// Count a request from `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, w| now.duration_since(w.start) < window);
        }
        let w = map.entry(ip).or_insert(Window { start: now, count: 0 });
        if now.duration_since(w.start) >= self.window {
            *w = Window { start: now, count: 0 };
        }
        w.count += 1;
        let left = self.window.saturating_sub(now.duration_since(w.start));
        let reset_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Decision {
            allowed: w.count <= self.max,
            limit: self.max,
            remaining: self.max.saturating_sub(w.count),
            reset_secs: reset_secs.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_without_refill() {
        let rl = RateLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let d: Vec<_> = (0..4)
            .map(|i| rl.check(ip, t0 + Duration::from_secs(i * 10)))
            .collect();
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(d.iter().map(|d| d.remaining).collect::<Vec<_>>(), [2, 1, 0, 0]);
        assert_eq!(d[0].reset_secs, 60);
        assert_eq!(d[3].reset_secs, 30);
        // Still refused just before the window ends: no refill.
        assert!(!rl.check(ip, t0 + Duration::from_millis(59_900)).allowed);
        // A new window starts at the first request after the old one ended.
        let fresh = rl.check(ip, t0 + Duration::from_secs(61));
        assert!(fresh.allowed);
        assert_eq!(fresh.remaining, 2);
        assert_eq!(fresh.reset_secs, 60);
        // Clients are independent.
        assert!(rl.check("10.0.0.2".parse().unwrap(), t0).allowed);
    }

    #[test]
    fn sweeps_expired_windows() {
        let rl = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT as u32 * SHARDS as u32) {
            rl.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        rl.check("1.2.3.4".parse().unwrap(), t0 + Duration::from_secs(5));
        let total: usize = rl.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total < SWEEP_AT * SHARDS, "{total}");
    }
}
