//! Fairness under abuse: a client that keeps being refused is slowed down, so a
//! flood of refusals (a tenant far past its limit, clients without a valid
//! credential) cannot take the proxy's capacity from other tenants.
//!
//! Refusals themselves are cheap; a flood is expensive only because of how many
//! there are. The proxy therefore makes a flooding client wait, which costs it a
//! timer and nothing else, instead of answering it at full speed:
//!
//! - **Per connection.** Every refusal (4xx from the gate) on a connection adds
//!   one to its streak; an admitted request resets it. The first
//!   `grace_refusals` of a streak are answered at full speed. After that, the
//!   refusal is still answered at once (status, code, `Retry-After`, body as
//!   always), but the connection's *next* request is read only after a wait that
//!   doubles from 8 ms up to `max_delay_ms`, and for a 429 never past its
//!   `Retry-After`. While it waits the connection holds nothing but its stream
//!   (the keep-alive loop of [`crate::listener`]). After `close_after_refusals`
//!   in a row the connection is closed.
//! - **Per client address**, for floods that open a new connection per request
//!   (a streak never grows on them): an address refused more than
//!   `ip_refusals_per_second` times in the current second has each further
//!   refusal delayed before it is sent (same bound). The counters live in a
//!   fixed table (no allocation; two addresses sharing a slot share a budget).
//! - **Bounded holding.** At most `max_held_connections` connections are held
//!   waiting at once; a connection that should wait beyond that is closed
//!   instead (it has to reconnect, which costs it more than us).
//!
//! How a burst is told from a flood: a burst is a few refusals in a row
//! (fewer than `grace_refusals`) — answered exactly as before. A client that
//! goes on after that is not honouring `Retry-After`; its waits stay within the
//! time until its bucket has a token again, so it is never refused anything it
//! would otherwise have been granted. Admitted requests are never delayed.

use crate::listener;
use crate::reject::Reject;
use pingora::server::ShutdownWatch;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tenantgate_core::config::FairnessSettings;

type Stream = pingora::protocols::Stream;

/// First wait after the grace: it doubles with every further refusal.
const FIRST_DELAY_MS: u64 = 8;
/// The default cap of connections held waiting (also at most a quarter of the
/// connection limit): ~8 KiB each while waiting between requests.
const DEFAULT_MAX_HELD: usize = 10_000;
/// Slots of the per-address refusal counters.
const ADDRESS_SLOTS: usize = 4096;

pub struct Fairness {
    s: FairnessSettings,
    /// `proxy.max_connections` in force (kept here: the listener reads it too).
    max_connections: usize,
    max_held: usize,
    /// A wait inside a request (per-address) is at most this, so SIGTERM's grace
    /// period still drains.
    in_request_cap: Duration,
    held: AtomicUsize,
    /// Per slot: `second << 32 | refusals in that second`.
    addresses: Box<[AtomicU64]>,
    hasher: foldhash::fast::FixedState,
    delayed_connection: AtomicU64,
    delayed_address: AtomicU64,
    closed_streak: AtomicU64,
    closed_held: AtomicU64,
}

/// What to do about one refusal, decided before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Wait this long before writing the refusal (per-address budget spent).
    pub delay_now: Option<Duration>,
    /// Close the connection after the refusal.
    pub close: bool,
    /// The refusal was shed (delayed or closed): counted against its tenant.
    pub shed: bool,
}

/// Holds a place among the connections waiting; released when dropped.
pub struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Fairness {
    pub fn new(s: FairnessSettings, max_connections: usize, grace_period: Duration) -> Self {
        Fairness {
            s,
            max_connections,
            max_held: s
                .max_held_connections
                .unwrap_or((max_connections / 4).clamp(16, DEFAULT_MAX_HELD)),
            in_request_cap: (grace_period / 2).max(Duration::from_millis(100)),
            held: AtomicUsize::new(0),
            addresses: (0..ADDRESS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::FixedState::default(),
            delayed_connection: AtomicU64::new(0),
            delayed_address: AtomicU64::new(0),
            closed_streak: AtomicU64::new(0),
            closed_held: AtomicU64::new(0),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The client's request was admitted: its connection's streak ends.
    pub fn admitted(&self, stream: Option<&Stream>) {
        if self.s.enabled {
            listener::reset_refusals(stream);
        }
    }

    /// A refusal is about to be written to `client` on `stream` (at `now_s`,
    /// unix seconds): counts it and says whether to delay it or close after it.
    pub fn refused(
        &self,
        stream: Option<&Stream>,
        client: Option<IpAddr>,
        reject: &Reject,
        now_s: i64,
    ) -> Verdict {
        if !self.s.enabled || !counts(reject) {
            return Verdict::default();
        }
        let bound = bound_of(reject).min(self.s.max_delay);
        let streak = listener::add_refusal(stream);
        if self.s.close_after_refusals != 0 && streak >= self.s.close_after_refusals {
            self.closed_streak.fetch_add(1, Ordering::Relaxed);
            return Verdict {
                close: true,
                shed: true,
                ..Verdict::default()
            };
        }
        if streak > self.s.grace_refusals {
            let delay = ramp(streak - self.s.grace_refusals, bound);
            listener::hold_next_read(stream, delay);
            self.delayed_connection.fetch_add(1, Ordering::Relaxed);
            return Verdict {
                shed: true,
                ..Verdict::default()
            };
        }
        let over = client.is_some_and(|ip| {
            self.s.ip_refusals_per_second != 0
                && self.count_address(ip, now_s) > u64::from(self.s.ip_refusals_per_second)
        });
        if !over {
            return Verdict::default();
        }
        self.delayed_address.fetch_add(1, Ordering::Relaxed);
        Verdict {
            delay_now: Some(bound.min(self.in_request_cap)),
            close: false,
            shed: true,
        }
    }

    /// Makes a refused client wait `delay` (holding one of the
    /// `max_held_connections` places), or until the server shuts down. `false`:
    /// no place was free, or shutdown came first; the caller closes the connection.
    pub async fn wait(&self, delay: Duration, shutdown: Option<&ShutdownWatch>) -> bool {
        let Some(_held) = self.hold() else {
            self.closed_held.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match shutdown {
            Some(shutdown) => {
                let mut shutdown = shutdown.clone();
                if *shutdown.borrow() {
                    return false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => true,
                    _ = shutdown.changed() => false,
                }
            }
            None => {
                tokio::time::sleep(delay).await;
                true
            }
        }
    }

    /// A place among the connections held waiting, if one is free.
    fn hold(&self) -> Option<Held<'_>> {
        let now = self.held.fetch_add(1, Ordering::Relaxed);
        let held = Held(&self.held);
        (now < self.max_held).then_some(held)
    }

    /// Adds one refusal to `ip`'s count for second `now_s`; the count so far.
    fn count_address(&self, ip: IpAddr, now_s: i64) -> u64 {
        let slot = &self.addresses[(self.hasher.hash_one(ip) as usize) % ADDRESS_SLOTS];
        let second = (now_s as u64) & 0xFFFF_FFFF;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (at, n) = (cur >> 32, cur & 0xFFFF_FFFF);
            let next = if at == second {
                (second << 32) | (n + 1).min(0xFFFF_FFFF)
            } else {
                (second << 32) | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next & 0xFFFF_FFFF,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Prometheus samples.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP tenantgate_fairness_delayed_total Refusals after which the client was made to wait: on its connection (streak past proxy.fairness.grace_refusals) or by its address (past proxy.fairness.ip_refusals_per_second).\n\
             # TYPE tenantgate_fairness_delayed_total counter\n\
             tenantgate_fairness_delayed_total{{by=\"connection\"}} {}\n\
             tenantgate_fairness_delayed_total{{by=\"address\"}} {}",
            self.delayed_connection.load(Ordering::Relaxed),
            self.delayed_address.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tenantgate_fairness_closed_total Connections closed after refusals: a streak of proxy.fairness.close_after_refusals, or no room to hold them (proxy.fairness.max_held_connections).\n\
             # TYPE tenantgate_fairness_closed_total counter\n\
             tenantgate_fairness_closed_total{{reason=\"streak\"}} {}\n\
             tenantgate_fairness_closed_total{{reason=\"held_cap\"}} {}",
            self.closed_streak.load(Ordering::Relaxed),
            self.closed_held.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tenantgate_fairness_held_connections Connections waiting because they kept being refused.\n\
             # TYPE tenantgate_fairness_held_connections gauge\n\
             tenantgate_fairness_held_connections {}",
            self.held.load(Ordering::Relaxed).min(self.max_held),
        );
    }
}

/// Refusals that are the client's doing; 5xx (ours or the upstream's) are not.
fn counts(reject: &Reject) -> bool {
    (400..500).contains(&reject.status())
}

/// The longest a refused client should wait: a 429's `Retry-After` (it would be
/// refused again before then), otherwise no bound of its own.
fn bound_of(reject: &Reject) -> Duration {
    match reject {
        Reject::RateLimited(l) | Reject::QuotaExceeded(l) => {
            Duration::from_secs(l.retry_after_secs().max(1))
        }
        _ => Duration::MAX,
    }
}

/// The wait after the `n`-th refusal past the grace (n ≥ 1).
fn ramp(n: u32, bound: Duration) -> Duration {
    let ms = FIRST_DELAY_MS.saturating_mul(1u64 << (n - 1).min(20));
    Duration::from_millis(ms).min(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Decision, Limits};

    fn settings() -> FairnessSettings {
        FairnessSettings {
            enabled: true,
            grace_refusals: 3,
            max_delay: Duration::from_millis(500),
            close_after_refusals: 0,
            max_held_connections: Some(2),
            ip_refusals_per_second: 5,
        }
    }

    #[test]
    fn the_wait_doubles_up_to_its_bound() {
        let b = Duration::from_millis(100);
        assert_eq!(ramp(1, b), Duration::from_millis(8));
        assert_eq!(ramp(2, b), Duration::from_millis(16));
        assert_eq!(ramp(4, b), Duration::from_millis(64));
        assert_eq!(ramp(5, b), b);
        assert_eq!(
            ramp(u32::MAX, Duration::MAX),
            Duration::from_millis(8 << 20)
        );
    }

    #[test]
    fn a_429_waits_no_longer_than_its_retry_after() {
        let d = Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_secs: 60,
            retry_after_secs: 2,
            window_secs: 60,
        };
        assert_eq!(
            bound_of(&Reject::RateLimited(Box::new(Limits::tenant(d)))),
            Duration::from_secs(2)
        );
        assert_eq!(bound_of(&Reject::NoCredential), Duration::MAX);
        assert!(counts(&Reject::NoCredential));
        assert!(!counts(&Reject::Unavailable));
        assert!(!counts(&Reject::UpstreamUnavailable));
    }

    #[test]
    fn an_address_past_its_budget_is_delayed_and_the_hold_is_bounded() {
        let f = Fairness::new(settings(), 1000, Duration::from_secs(5));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        // No connection state (a new connection each time): only the address counts.
        for _ in 0..5 {
            assert_eq!(
                f.refused(None, Some(ip), &Reject::NoCredential, 100),
                Verdict::default()
            );
        }
        let v = f.refused(None, Some(ip), &Reject::NoCredential, 100);
        assert_eq!(v.delay_now, Some(Duration::from_millis(500)));
        assert!(v.shed && !v.close);
        // Another address has its own budget; a new second starts a new one.
        assert_eq!(
            f.refused(None, Some(other), &Reject::NoCredential, 100),
            Verdict::default()
        );
        assert_eq!(
            f.refused(None, Some(ip), &Reject::NoCredential, 101),
            Verdict::default()
        );
        // 5xx are never counted.
        for _ in 0..20 {
            assert_eq!(
                f.refused(None, Some(other), &Reject::Unavailable, 100),
                Verdict::default()
            );
        }
    }

    #[tokio::test]
    async fn no_room_to_hold_means_close() {
        let f = Fairness::new(settings(), 1000, Duration::from_secs(5));
        let a = f.hold().unwrap();
        let _b = f.hold().unwrap();
        assert!(f.hold().is_none());
        assert!(!f.wait(Duration::from_millis(1), None).await);
        drop(a);
        assert!(f.wait(Duration::from_millis(1), None).await);
        assert!(f.hold().is_some());
        let mut text = String::new();
        f.render(&mut text);
        assert!(
            text.contains("tenantgate_fairness_closed_total{reason=\"held_cap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenantgate_fairness_held_connections 1"),
            "{text}"
        );
    }

    #[test]
    fn off_means_off() {
        let f = Fairness::new(
            FairnessSettings {
                enabled: false,
                ..settings()
            },
            1000,
            Duration::from_secs(5),
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..50 {
            assert_eq!(
                f.refused(None, Some(ip), &Reject::NoCredential, 1),
                Verdict::default()
            );
        }
    }
}
