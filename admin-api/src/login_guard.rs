//! Login hardening: failed-attempt throttling per (tenant, email) and per client
//! IP, and a bound on concurrent password hashing.
//!
//! The throttle is a sliding window per key: at most `limit` failures within
//! `window`; past that, attempts are refused (429 with `Retry-After`) before any
//! password is checked, so a correct password does not get through either. An
//! attempt is counted as a failure when it starts (so parallel guesses cannot all
//! pass the check before any of them fails) and refunded when it succeeds; a
//! success also clears its (tenant, email) key.
//!
//! State is in this process only: each admin process of a fleet throttles on its
//! own (a fleet of N allows up to N times the limits). Memory is bounded: each
//! table tracks at most `max_keys` keys (the least recently failed go first), and
//! a key holds at most `limit` instants. Emails are kept only as SHA-256 digests.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of the login throttle and of password hashing.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Failures per (tenant, email) within `window` before attempts are refused.
    pub per_email: usize,
    /// Failures per client IP (IPv6: per /64) within `window`.
    pub per_ip: usize,
    pub window: Duration,
    /// Keys tracked per table at most.
    pub max_keys: usize,
    /// Password hashes computed at once.
    pub hash_permits: usize,
    /// How long a login waits for a hashing slot before 503.
    pub hash_wait: Duration,
    /// Logins waiting for a slot at most; beyond, 503 at once.
    pub max_waiting: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let hash_permits = cpus.max(2);
        LoginLimits {
            per_email: 5,
            per_ip: 20,
            window: Duration::from_secs(15 * 60),
            max_keys: 100_000,
            hash_permits,
            hash_wait: Duration::from_secs(2),
            max_waiting: hash_permits * 64,
        }
    }
}

/// A table of recent failures per key, bounded in keys and in instants per key.
#[derive(Debug)]
pub struct Window<K> {
    limit: usize,
    window: Duration,
    max_keys: usize,
    entries: HashMap<K, Entry>,
    /// Keys in order of their last failure, with the sequence number that was
    /// current then (older records of a key are skipped).
    order: VecDeque<(K, u64)>,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    /// Failure instants, oldest first, at most `limit`.
    times: VecDeque<Instant>,
    seq: u64,
}

impl<K: Hash + Eq + Copy> Window<K> {
    pub fn new(limit: usize, window: Duration, max_keys: usize) -> Self {
        Window {
            limit: limit.max(1),
            window,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// How long until `key` may try again (`None`: it may now).
    pub fn blocked_for(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let window = self.window;
        let e = self.entries.get_mut(key)?;
        while e
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            e.times.pop_front();
        }
        if e.times.len() < self.limit {
            return None;
        }
        // The oldest of the last `limit` failures leaves the window first.
        let oldest = e.times[e.times.len() - self.limit];
        Some((oldest + window).saturating_duration_since(now))
    }

    /// Records a failure of `key` at `now`.
    pub fn record(&mut self, key: K, now: Instant) {
        self.seq += 1;
        let seq = self.seq;
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let e = self.entries.entry(key).or_insert_with(|| Entry {
            times: VecDeque::new(),
            seq,
        });
        e.times.push_back(now);
        while e.times.len() > self.limit {
            e.times.pop_front();
        }
        e.seq = seq;
        self.order.push_back((key, seq));
        self.compact();
    }

    /// Takes back one failure recorded at `at` (an attempt that succeeded).
    pub fn refund(&mut self, key: &K, at: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            if let Some(i) = e.times.iter().rposition(|t| *t == at) {
                e.times.remove(i);
            }
            if e.times.is_empty() {
                self.entries.remove(key);
            }
        }
    }

    /// Forgets `key`'s failures.
    pub fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Before a new key: drops keys whose failures all left the window, then, at
    /// the cap, the least recently failed.
    fn make_room(&mut self, now: Instant) {
        while let Some(&(k, seq)) = self.order.front() {
            let current = self.entries.get(&k).filter(|e| e.seq == seq);
            let Some(e) = current else {
                self.order.pop_front();
                continue;
            };
            let expired = e
                .times
                .back()
                .is_none_or(|t| now.saturating_duration_since(*t) >= self.window);
            if expired || self.entries.len() >= self.max_keys {
                self.entries.remove(&k);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    /// Keeps the order queue within twice the keys (stale records accumulate as
    /// keys fail again or are cleared).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.max_keys.max(self.entries.len()) + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// The per-IP key: the address, IPv6 by its /64 (one host often holds a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// SHA-256 of a (tenant, email) pair: the throttle key, and (shortened) what the
/// logs show instead of the email.
pub fn email_key(tenant_id: &str, email: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tenant_id.trim().as_bytes());
    h.update([0u8]);
    h.update(email.trim().to_lowercase().as_bytes());
    h.finalize().into()
}

/// A short, stable, non-reversible label of an email key for logs.
pub fn email_label(key: &[u8; 32]) -> String {
    hex::encode(&key[..6])
}

/// An admitted attempt: what to refund or clear once its outcome is known.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    email: [u8; 32],
    ip: Option<IpAddr>,
    at: Instant,
}

struct Tables {
    by_email: Window<[u8; 32]>,
    by_ip: Window<IpAddr>,
}

/// Why no hashing slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The login throttle and the password-hashing bound of one admin process.
pub struct LoginGuard {
    limits: LoginLimits,
    tables: Mutex<Tables>,
    hashing: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LoginGuard {
    pub fn new(limits: LoginLimits) -> Self {
        LoginGuard {
            tables: Mutex::new(Tables {
                by_email: Window::new(limits.per_email, limits.window, limits.max_keys),
                by_ip: Window::new(limits.per_ip, limits.window, limits.max_keys),
            }),
            hashing: Arc::new(Semaphore::new(limits.hash_permits.max(1))),
            waiting: AtomicUsize::new(0),
            limits,
        }
    }

    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an attempt for `email_key` from `ip` (`None`: unknown client, throttled
    /// by email only), counting it as a failure until [`succeeded`](Self::succeeded);
    /// or the time until one would be admitted.
    pub fn admit(
        &self,
        email_key: [u8; 32],
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let ip = ip.map(ip_key);
        let mut t = self.tables();
        let by_email = t.by_email.blocked_for(&email_key, now);
        let by_ip = ip.and_then(|ip| t.by_ip.blocked_for(&ip, now));
        if let Some(wait) = by_email.max(by_ip) {
            return Err(wait);
        }
        t.by_email.record(email_key, now);
        if let Some(ip) = ip {
            t.by_ip.record(ip, now);
        }
        Ok(Attempt {
            email: email_key,
            ip,
            at: now,
        })
    }

    /// The attempt logged in: its email's failures are forgotten and its own
    /// count against the IP is taken back.
    pub fn succeeded(&self, a: &Attempt) {
        let mut t = self.tables();
        t.by_email.clear(&a.email);
        if let Some(ip) = &a.ip {
            t.by_ip.refund(ip, a.at);
        }
    }

    /// The attempt never got to check a password (busy, store down): it is taken
    /// back from both counts.
    pub fn cancelled(&self, a: &Attempt) {
        let mut t = self.tables();
        t.by_email.refund(&a.email, a.at);
        if let Some(ip) = &a.ip {
            t.by_ip.refund(ip, a.at);
        }
    }

    /// Keys tracked (emails, IPs).
    pub fn tracked(&self) -> (usize, usize) {
        let t = self.tables();
        (t.by_email.len(), t.by_ip.len())
    }

    /// A password-hashing slot: waits up to `hash_wait`; `Busy` when none frees up
    /// in time or too many logins wait already.
    pub async fn hashing_slot(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(p) = self.hashing.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Counted while waiting, also when the request is dropped mid-wait.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if before >= self.limits.max_waiting {
            return Err(Busy);
        }
        let res =
            tokio::time::timeout(self.limits.hash_wait, self.hashing.clone().acquire_owned()).await;
        match res {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Busy),
        }
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn guard() -> LoginGuard {
        LoginGuard::new(LoginLimits {
            per_email: 5,
            per_ip: 20,
            window: 15 * MIN,
            max_keys: 1000,
            hash_permits: 2,
            hash_wait: Duration::from_millis(50),
            max_waiting: 4,
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn five_failures_throttle_the_email_until_the_oldest_leaves_the_window() {
        let g = guard();
        let t0 = Instant::now();
        let k = email_key("acme", "a@acme.example");
        for i in 0..5 {
            g.admit(k, ip("192.0.2.1"), t0 + Duration::from_secs(i))
                .unwrap();
        }
        let wait = g.admit(k, ip("192.0.2.1"), t0 + MIN).unwrap_err();
        assert_eq!(wait, 14 * MIN);
        // Same email, another address: still throttled.
        assert!(g.admit(k, ip("198.51.100.9"), t0 + MIN).is_err());
        // Another email from the same address: fine.
        assert!(g
            .admit(
                email_key("acme", "b@acme.example"),
                ip("192.0.2.1"),
                t0 + MIN
            )
            .is_ok());
        // Once the first failure is 15 minutes old, one more attempt.
        assert!(g.admit(k, None, t0 + 15 * MIN).is_ok());
        assert!(g.admit(k, None, t0 + 15 * MIN).is_err());
    }

    #[test]
    fn email_key_ignores_case_and_spaces() {
        assert_eq!(
            email_key("acme", " A@Acme.Example "),
            email_key("acme", "a@acme.example")
        );
        assert_ne!(
            email_key("acme", "a@acme.example"),
            email_key("beta", "a@acme.example")
        );
    }

    #[test]
    fn success_clears_the_email_and_refunds_the_ip() {
        let g = guard();
        let t0 = Instant::now();
        let k = email_key("acme", "a@acme.example");
        for _ in 0..4 {
            g.admit(k, ip("192.0.2.1"), t0).unwrap();
        }
        let a = g.admit(k, ip("192.0.2.1"), t0).unwrap();
        g.succeeded(&a);
        assert!(g.admit(k, ip("192.0.2.1"), t0).is_ok());
        // 4 failures + 1 new attempt on the IP: the success was refunded.
        let t = g.tables();
        assert_eq!(
            t.by_ip.entries[&ip_key("192.0.2.1".parse().unwrap())]
                .times
                .len(),
            5
        );
    }

    #[test]
    fn cancelled_attempts_do_not_count() {
        let g = guard();
        let t0 = Instant::now();
        let k = email_key("acme", "a@acme.example");
        for _ in 0..20 {
            let a = g.admit(k, ip("192.0.2.1"), t0).unwrap();
            g.cancelled(&a);
        }
        assert_eq!(g.tracked(), (0, 0));
    }

    #[test]
    fn twenty_failures_throttle_the_ip_and_ipv6_counts_per_64() {
        let g = guard();
        let t0 = Instant::now();
        for i in 0..20 {
            let k = email_key("acme", &format!("u{i}@acme.example"));
            g.admit(k, ip(&format!("2001:db8::{i:x}")), t0).unwrap();
        }
        let fresh = email_key("acme", "fresh@acme.example");
        assert_eq!(
            g.admit(fresh, ip("2001:db8::ffff"), t0).unwrap_err(),
            15 * MIN
        );
        assert!(g.admit(fresh, ip("2001:db8:0:1::1"), t0).is_ok());
        // An unknown client is throttled by email only.
        assert!(g
            .admit(email_key("acme", "x@acme.example"), None, t0)
            .is_ok());
    }

    #[test]
    fn concurrent_attempts_count_before_they_finish() {
        let g = guard();
        let t0 = Instant::now();
        let k = email_key("acme", "a@acme.example");
        let admitted = (0..50).filter(|_| g.admit(k, None, t0).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_distinct_emails() {
        let g = guard();
        let t0 = Instant::now();
        let victim = email_key("acme", "victim@acme.example");
        for _ in 0..5 {
            g.admit(victim, None, t0).unwrap();
        }
        for i in 0..10_000u32 {
            let k = email_key("acme", &format!("flood{i}@acme.example"));
            let _ = g.admit(k, None, t0 + Duration::from_millis(u64::from(i)));
        }
        let (emails, _) = g.tracked();
        assert!(emails <= 1000, "{emails}");
        let t = g.tables();
        assert!(t.by_email.order.len() <= 2 * 1000 + 16);
    }

    #[test]
    fn expired_keys_are_dropped_first() {
        let mut w: Window<u32> = Window::new(5, MIN, 3);
        let t0 = Instant::now();
        w.record(1, t0);
        w.record(2, t0 + 2 * MIN);
        w.record(3, t0 + 2 * MIN);
        // Key 1 is expired: it goes, 2 and 3 stay.
        w.record(4, t0 + 2 * MIN + Duration::from_secs(1));
        assert_eq!(w.len(), 3);
        assert!(w.entries.contains_key(&2) && w.entries.contains_key(&3));
        // At the cap with nothing expired, the least recently failed goes.
        w.record(2, t0 + 2 * MIN + Duration::from_secs(2));
        w.record(5, t0 + 2 * MIN + Duration::from_secs(3));
        assert!(!w.entries.contains_key(&3));
        assert!(w.entries.contains_key(&2));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(900)), 900);
    }

    #[tokio::test]
    async fn hashing_slots_are_bounded_and_waiting_is_brief() {
        let g = guard();
        let a = g.hashing_slot().await.unwrap();
        let b = g.hashing_slot().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(g.hashing_slot().await.unwrap_err(), Busy);
        assert!(started.elapsed() >= Duration::from_millis(40));
        drop(a);
        let c = g.hashing_slot().await.unwrap();
        drop((b, c));
    }

    #[tokio::test]
    async fn too_many_waiters_are_refused_at_once() {
        let g = Arc::new(LoginGuard::new(LoginLimits {
            hash_permits: 1,
            hash_wait: Duration::from_secs(600),
            max_waiting: 3,
            ..LoginLimits::default()
        }));
        let held = g.hashing_slot().await.unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.hashing_slot().await.map(drop) })
            })
            .collect();
        while g.waiting.load(Ordering::Acquire) < 3 {
            tokio::task::yield_now().await;
        }
        // Three wait already: the fourth is refused instead of waiting 600 s.
        assert_eq!(g.hashing_slot().await.unwrap_err(), Busy);
        // A dropped waiter stops counting.
        waiters[0].abort();
        drop(held);
        for w in waiters.into_iter().skip(1) {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while g.waiting.load(Ordering::Acquire) != 0 {
                tokio::task::yield_now().await;
            }
        });
        assert!(drained.await.is_ok(), "a dropped waiter is still counted");
    }
}
