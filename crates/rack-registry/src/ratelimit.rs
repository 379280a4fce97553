//! Per-client rate limiting (SPEC §8, §14): a *fixed window* per client that starts at the
//! client's first request, with no refill inside the window.
//!
//! Written by hand rather than with `governor`: governor implements GCRA, which refills
//! continuously (a client that waits 1/limit of the window gets a request back), and it cannot
//! report "requests remaining in this window" or "seconds until this window ends", which the
//! `x-ratelimit-*` headers and the 429 message of the contract need.
//!
//! A client is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64, so keying by
//! full address would let it rotate through 2^64 "clients"); an IPv4-mapped IPv6 address counts
//! as its IPv4 address.
//!
//! The state is sharded, and each shard keeps two *generations* of windows: `current` and
//! `previous`. When a window length has passed since `current` was started, `previous` is
//! dropped whole and `current` becomes `previous`. Every window in the dropped map started
//! before the previous rotation, so it had ended: expiry costs no scan, and a check touches at
//! most three map slots (amortized O(1)). A client found in `previous` moves to `current`, so
//! active clients stay tracked for as long as they are active.
//!
//! Memory is bounded: a generation holds at most [`GENERATION_CAP`] clients per shard. A new
//! client arriving at a full `current` rotates early, forgetting `previous` even though some of
//! its windows may still run; those (idle since the last rotation) clients start a fresh window
//! at their next request. The limiter thus fails open for idle clients under an address flood
//! rather than refusing clients it has never seen (docs/decisions.md).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Clients per shard and generation: at most `SHARDS * 2 * GENERATION_CAP` (262,144) windows
/// are held, about 15 MB.
const GENERATION_CAP: usize = 8192;

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

struct Shard {
    current: HashMap<IpAddr, Window>,
    previous: HashMap<IpAddr, Window>,
    /// When `current` was started: every window in it started at or before the next rotation.
    since: Instant,
}

impl Shard {
    fn rotate(&mut self, now: Instant) {
        // Dropping a map of plain-data entries frees its allocation without visiting them.
        self.previous = std::mem::take(&mut self.current);
        self.since = now;
    }
}

pub struct RateLimiter {
    max: u64,
    window: Duration,
    shards: Vec<Mutex<Shard>>,
}

/// The client a request is counted against: IPv4 address, or IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

impl RateLimiter {
    /// `max == 0` disables limiting (see [`RateLimiter::enabled`]).
    pub fn new(max: u64, window: Duration) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            max,
            window,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        since: now,
                    })
                })
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<Shard> {
        let h = match key {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => {
                let prefix = (u128::from(*v6) >> 64) as u64;
                (prefix ^ (prefix >> 32)) as usize
            }
        };
        &self.shards[h % SHARDS]
    }

    /// Count a request from `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        self.check_counted(ip, now).0
    }

    /// Whether `ip` has used up its current window, without counting a request: the whole
    /// seconds until that window ends, if so. (The sign-in throttle counts failures only, so it
    /// asks first and counts after.)
    pub fn exhausted(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let key = client_key(ip);
        let shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let w = shard.current.get(&key).or_else(|| shard.previous.get(&key))?;
        let used = now.saturating_duration_since(w.start);
        if w.count < self.max || used >= self.window {
            return None;
        }
        let left = self.window - used;
        Some((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1))
    }

    /// [`RateLimiter::check`], plus how many map slots it looked at (for the tests: it must
    /// stay constant, whatever the number of clients).
    fn check_counted(&self, ip: IpAddr, now: Instant) -> (Decision, u32) {
        let key = client_key(ip);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(shard.since);
        if elapsed >= self.window {
            shard.rotate(now);
            if elapsed >= self.window * 2 {
                // Everything in the new `previous` started over a window ago too.
                shard.previous = HashMap::new();
            }
        }
        // Windows are small `Copy` values: read, update, write back (two or three slots).
        let mut probes = 2;
        let mut w = match shard.current.get(&key) {
            Some(w) => *w,
            None => {
                probes += 1;
                let carried = shard.previous.remove(&key);
                if shard.current.len() >= GENERATION_CAP {
                    shard.rotate(now);
                }
                carried.unwrap_or(Window { start: now, count: 0 })
            }
        };
        if now.saturating_duration_since(w.start) >= self.window {
            w = Window { start: now, count: 0 };
        }
        w.count += 1;
        shard.current.insert(key, w);
        let left = self.window.saturating_sub(now.saturating_duration_since(w.start));
        let reset_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let decision = Decision {
            allowed: w.count <= self.max,
            limit: self.max,
            remaining: self.max.saturating_sub(w.count),
            reset_secs: reset_secs.max(1),
        };
        (decision, probes)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum()
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
    fn a_window_survives_generation_rotations_until_it_ends() {
        // The window of a client that keeps coming back spans rotations (it moves from
        // `previous` to `current`) and still ends exactly one window after its first request.
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        rl.check(other, t0); // starts the shard's generation clock
        assert!(rl.check(ip, t0 + Duration::from_secs(50)).allowed);
        // Another client rotates the shard at t0 + 60: `ip` is now in `previous`.
        rl.check(other, t0 + Duration::from_secs(61));
        let d = rl.check(ip, t0 + Duration::from_secs(100));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_secs, 10);
        assert!(!rl.check(ip, t0 + Duration::from_secs(109)).allowed);
        let fresh = rl.check(ip, t0 + Duration::from_secs(110));
        assert!(fresh.allowed);
        assert_eq!(fresh.remaining, 1);
    }

    #[test]
    fn exhausted_asks_without_counting() {
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(rl.exhausted(ip, t0), None, "never seen");
        rl.check(ip, t0);
        for _ in 0..5 {
            assert_eq!(rl.exhausted(ip, t0), None, "asking does not count");
        }
        rl.check(ip, t0);
        assert_eq!(rl.exhausted(ip, t0 + Duration::from_secs(50)), Some(10));
        assert_eq!(
            rl.exhausted(ip, t0 + Duration::from_secs(60)),
            None,
            "window over"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_64() {
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rl.check(a, t0).remaining, 1);
        assert_eq!(rl.check(b, t0).remaining, 0, "same /64 shares the window");
        assert!(!rl.check(b, t0).allowed);
        assert_eq!(rl.check(c, t0).remaining, 1, "another /64 has its own");
        // An IPv4-mapped address is its IPv4 client.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rl.check(v4, t0).remaining, 1);
        assert_eq!(rl.check(mapped, t0).remaining, 0);
        // IPv4 addresses are not grouped.
        assert_eq!(rl.check("192.0.2.8".parse().unwrap(), t0).remaining, 1);
    }

    #[test]
    fn expired_windows_are_forgotten_without_a_scan() {
        let rl = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..50_000u32 {
            rl.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(rl.tracked(), 50_000);
        // Two windows later, one request per shard drops everything that had expired.
        let later = t0 + Duration::from_secs(3);
        for i in 0..SHARDS as u32 {
            let (_, probes) = rl.check_counted(IpAddr::from((1_000_000 + i).to_be_bytes()), later);
            assert!(probes <= 3);
        }
        assert_eq!(rl.tracked(), SHARDS);
    }

    #[test]
    fn a_million_distinct_clients_stay_bounded_and_constant_time() {
        let rl = RateLimiter::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut max_probes = 0;
        let mut total_probes = 0u64;
        for i in 0..1_000_000u64 {
            // Distinct /64s, all inside one window: nothing expires, only the cap bounds them.
            let ip = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64)));
            let (d, probes) = rl.check_counted(ip, t0 + Duration::from_micros(i));
            assert!(d.allowed);
            max_probes = max_probes.max(probes);
            total_probes += u64::from(probes);
        }
        assert!(max_probes <= 3, "{max_probes}");
        assert!(total_probes <= 3_000_000, "{total_probes}");
        let tracked = rl.tracked();
        assert!(tracked <= SHARDS * 2 * GENERATION_CAP, "{tracked}");
        assert!(tracked >= GENERATION_CAP, "{tracked}");
        // A client active during the flood is still tracked (and still limited).
        let busy: IpAddr = "198.51.100.1".parse().unwrap();
        let rl = RateLimiter::new(3, Duration::from_secs(60));
        for i in 0..200_000u64 {
            let ip = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64)));
            rl.check(ip, t0);
            if i % 1000 == 0 {
                rl.check(busy, t0);
            }
        }
        assert!(!rl.check(busy, t0).allowed);
    }
}
