//! A lock-free circuit breaker in front of a dependency that can fail (the store
//! behind the caches, Redis behind the rate limiter).
//!
//! Closed: calls go through; `threshold` consecutive failures open it. Open: no
//! call goes through until `cooldown` has passed; then exactly one probe is let
//! through (half-open). A successful probe (or any success) closes it, a failed
//! probe re-opens it for another cool-down. A probe that never reports (its
//! future was dropped) is forgotten after `max(cooldown, 5 s)`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    base: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `base` (+1, so 0 can mean "closed") until which the
    /// breaker stays open.
    open_until: AtomicU64,
    /// When the half-open probe in flight started (same clock), 0 = none.
    probing: AtomicU64,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            base: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// May a call go through now? When the breaker is open and its cool-down has
    /// passed, `may_probe` lets this caller be the single half-open probe.
    pub fn allow(&self, may_probe: bool) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        may_probe && self.try_probe_at(until)
    }

    /// Claims the half-open probe if the cool-down has passed.
    pub fn try_probe(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.try_probe_at(until)
    }

    fn try_probe_at(&self, until: u64) -> bool {
        let now = self.now();
        if now < until {
            return false;
        }
        let current = self.probing.load(Ordering::Acquire);
        let stale =
            u64::try_from(self.cooldown.max(Duration::from_secs(5)).as_nanos()).unwrap_or(u64::MAX);
        (current == 0 || now.saturating_sub(current) > stale)
            && self
                .probing
                .compare_exchange(current, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(0, Ordering::Release);
    }

    /// Records a failure; true when this failure (re-)opened the breaker.
    pub fn failure(&self) -> bool {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let was_probe = self.probing.swap(0, Ordering::AcqRel) != 0;
        if was_probe || n >= self.threshold {
            let until = self
                .now()
                .saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX));
            let prev = self.open_until.swap(until, Ordering::AcqRel);
            return prev == 0 || was_probe;
        }
        false
    }

    /// Opens the breaker now (e.g. the first connection attempt failed).
    pub fn trip(&self) {
        self.failures.store(self.threshold, Ordering::Release);
        self.probing.store(0, Ordering::Release);
        let until = self
            .now()
            .saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX));
        self.open_until.store(until, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(20));
        assert!(b.allow(true));
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(!b.is_open());
        assert!(b.failure());
        assert!(b.is_open());
        assert!(!b.allow(true), "cooling down");
        std::thread::sleep(Duration::from_millis(25));
        assert!(!b.allow(false), "only a prober may probe");
        assert!(b.allow(true), "one probe");
        assert!(!b.allow(true), "exactly one probe");
        assert!(b.failure(), "failed probe re-opens");
        assert!(!b.try_probe());
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.try_probe());
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(false));
    }

    #[test]
    fn success_resets_consecutive_count() {
        let b = Breaker::new(2, Duration::from_secs(60));
        assert!(!b.failure());
        b.success();
        assert!(!b.failure());
        assert!(!b.is_open());
        assert!(b.failure());
        assert!(b.is_open());
        b.trip();
        assert!(b.is_open());
    }
}
