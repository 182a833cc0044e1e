//! Which API key prefixes may exist, so a flood of well-formed random keys is
//! answered without asking the store.
//!
//! The index is a set of 64-bit fingerprints of prefixes (keyed by a per-process
//! random seed), loaded from the store at start and grown by every `api_key`
//! change the follower applies. It only ever grows while the process runs: a
//! revoked key's prefix stays in it, which costs a store lookup (as before the
//! index), never a wrong answer. A prefix the index does not know is refused with
//! 401 at once, with one exception: a key created an instant ago whose change has
//! not arrived yet (another process's admin API; PostgreSQL's NOTIFY takes up to
//! about a second). For that race, unknown prefixes may still reach the store, but
//! only through a small budget of their own ([`UNKNOWN_LOOKUPS_PER_SECOND`], at most
//! [`UNKNOWN_LOOKUPS_IN_FLIGHT`] at a time), which never counts toward the store
//! breaker: a flood spends that budget and nothing else, and the lookups of known
//! keys keep the pool and the breaker to themselves. With the budget spent, such a
//! request waits (at most [`CATCH_UP_WAIT`], [`CATCH_UP_WAITERS`] at a time) until
//! the follower has read the change feed past the request's arrival, and is then
//! answered from the index. Keys this process creates never race: the store tells
//! the index synchronously.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Store lookups per second for prefixes the index does not know.
pub const UNKNOWN_LOOKUPS_PER_SECOND: f64 = 20.0;
/// Of which at most this many at a time.
pub const UNKNOWN_LOOKUPS_IN_FLIGHT: usize = 2;
/// Such a lookup gives up (the key is refused as unknown) after this long.
pub const UNKNOWN_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for the change feed to catch up with an unknown prefix.
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(1500);
/// Requests waiting for the feed at most; beyond, unknown prefixes are refused at once.
pub const CATCH_UP_WAITERS: usize = 1024;

/// The fingerprints are already uniform: hash them by themselves.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Fingerprints = HashSet<u64, BuildHasherDefault<Identity>>;

/// What the index says about a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A key with this prefix may exist: look it up as usual.
    Known,
    /// No key with this prefix existed when the index last heard.
    Unknown,
    /// The index is not loaded (yet): look it up as usual.
    NotLoaded,
}

/// How [`KeyIndex::wait_for_feed`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedWait {
    /// The index now knows every change made before the request arrived.
    CaughtUp,
    /// The feed was not read in time (the store may be down).
    TimedOut,
    /// Too many requests wait already.
    TooManyWaiting,
}

/// The prefix index and the budget of lookups for prefixes it does not know.
pub struct KeyIndex {
    seed: foldhash::quality::RandomState,
    set: RwLock<Fingerprints>,
    loaded: AtomicBool,
    budget: Mutex<Bucket>,
    in_flight: tokio::sync::Semaphore,
    /// Unix ms before which every change is known to be applied (feed reads).
    caught_up: tokio::sync::watch::Sender<i64>,
    waiters: tokio::sync::Semaphore,
    /// Unknown prefixes refused without a store lookup.
    pub refused: AtomicU64,
    /// Unknown prefixes looked up through the budget.
    pub looked_up: AtomicU64,
    /// ...of which found (created before their change arrived).
    pub found_late: AtomicU64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyIndex {
    pub fn new() -> Self {
        KeyIndex {
            seed: foldhash::quality::RandomState::default(),
            set: RwLock::new(Fingerprints::default()),
            loaded: AtomicBool::new(false),
            budget: Mutex::new(Bucket {
                tokens: UNKNOWN_LOOKUPS_PER_SECOND,
                at: Instant::now(),
            }),
            in_flight: tokio::sync::Semaphore::new(UNKNOWN_LOOKUPS_IN_FLIGHT),
            caught_up: tokio::sync::watch::channel(0).0,
            waiters: tokio::sync::Semaphore::new(CATCH_UP_WAITERS),
            refused: AtomicU64::new(0),
            looked_up: AtomicU64::new(0),
            found_late: AtomicU64::new(0),
        }
    }

    fn fingerprint(&self, prefix: &str) -> u64 {
        self.seed.hash_one(prefix.as_bytes())
    }

    pub fn check(&self, prefix: &str) -> Verdict {
        if !self.loaded.load(Ordering::Acquire) {
            return Verdict::NotLoaded;
        }
        let fp = self.fingerprint(prefix);
        let known = match self.set.read() {
            Ok(s) => s.contains(&fp),
            Err(p) => p.into_inner().contains(&fp),
        };
        if known {
            Verdict::Known
        } else {
            Verdict::Unknown
        }
    }

    pub fn insert(&self, prefix: &str) {
        let fp = self.fingerprint(prefix);
        match self.set.write() {
            Ok(mut s) => s.insert(fp),
            Err(p) => p.into_inner().insert(fp),
        };
    }

    /// Adds every prefix of `prefixes` and marks the index loaded. Nothing is
    /// removed: changes applied while the prefixes were read stay.
    pub fn extend<'a>(&self, prefixes: impl IntoIterator<Item = &'a str>) {
        let fps: Vec<u64> = prefixes.into_iter().map(|p| self.fingerprint(p)).collect();
        match self.set.write() {
            Ok(mut s) => s.extend(fps),
            Err(p) => p.into_inner().extend(fps),
        }
        self.loaded.store(true, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        match self.set.read() {
            Ok(s) => s.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// A permit for one store lookup of an unknown prefix, if the budget has one.
    pub fn try_budget(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permit = self.in_flight.try_acquire().ok()?;
        let mut b = match self.budget.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * UNKNOWN_LOOKUPS_PER_SECOND;
        b.tokens = (b.tokens + refill).min(UNKNOWN_LOOKUPS_PER_SECOND);
        b.at = now;
        if b.tokens < 1.0 {
            return None;
        }
        b.tokens -= 1.0;
        Some(permit)
    }

    /// Every change committed before `at_ms` (unix ms) has been applied: the change
    /// follower says so after each successful read of the feed.
    pub fn caught_up(&self, at_ms: i64) {
        self.caught_up.send_if_modified(|cur| {
            let newer = at_ms > *cur;
            if newer {
                *cur = at_ms;
            }
            newer
        });
    }

    /// Waits (at most [`CATCH_UP_WAIT`]) until every change committed before
    /// `arrived_ms` has been applied.
    pub async fn wait_for_feed(&self, arrived_ms: i64) -> FeedWait {
        let Ok(_slot) = self.waiters.try_acquire() else {
            return FeedWait::TooManyWaiting;
        };
        let mut rx = self.caught_up.subscribe();
        let caught_up = tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(|at| *at > arrived_ms))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            FeedWait::CaughtUp
        } else {
            FeedWait::TimedOut
        }
    }

    /// Appends the index's counters as Prometheus samples.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP tenantgate_proxy_api_key_index_prefixes API key prefixes the proxy knows may exist\n\
             # TYPE tenantgate_proxy_api_key_index_prefixes gauge\n\
             tenantgate_proxy_api_key_index_prefixes {}\n\
             # HELP tenantgate_proxy_api_key_unknown_total Well-formed API keys with a prefix the index does not know, by outcome\n\
             # TYPE tenantgate_proxy_api_key_unknown_total counter\n\
             tenantgate_proxy_api_key_unknown_total{{outcome=\"refused\"}} {}\n\
             tenantgate_proxy_api_key_unknown_total{{outcome=\"looked_up\"}} {}\n\
             tenantgate_proxy_api_key_unknown_total{{outcome=\"found\"}} {}\n",
            self.len(),
            self.refused.load(Ordering::Relaxed),
            self.looked_up.load(Ordering::Relaxed),
            self.found_late.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_loaded_until_extended() {
        let idx = KeyIndex::new();
        assert_eq!(idx.check("abcdef012345"), Verdict::NotLoaded);
        idx.extend(["abcdef012345"]);
        assert_eq!(idx.check("abcdef012345"), Verdict::Known);
        assert_eq!(idx.check("000000000000"), Verdict::Unknown);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn inserted_prefixes_are_known_and_reloads_never_forget() {
        let idx = KeyIndex::new();
        idx.extend(std::iter::empty());
        assert_eq!(idx.check("aaaaaaaaaaaa"), Verdict::Unknown);
        idx.insert("aaaaaaaaaaaa");
        assert_eq!(idx.check("aaaaaaaaaaaa"), Verdict::Known);
        // A reload that read the store before the change keeps what the change added.
        idx.extend(["bbbbbbbbbbbb"]);
        assert_eq!(idx.check("aaaaaaaaaaaa"), Verdict::Known);
        assert_eq!(idx.check("bbbbbbbbbbbb"), Verdict::Known);
    }

    #[test]
    fn many_prefixes_fit_and_random_ones_are_unknown() {
        let idx = KeyIndex::new();
        let known: Vec<String> = (0..10_000u64).map(|i| format!("{i:012x}")).collect();
        idx.extend(known.iter().map(String::as_str));
        assert!(known.iter().all(|p| idx.check(p) == Verdict::Known));
        let unknown = (0..10_000u64)
            .map(|i| format!("{:012x}", i + 1_000_000_000))
            .filter(|p| idx.check(p) == Verdict::Known)
            .count();
        assert_eq!(
            unknown, 0,
            "64-bit fingerprints do not collide at this size"
        );
    }

    #[tokio::test]
    async fn an_unknown_prefix_waits_for_the_feed_to_catch_up() {
        let idx = std::sync::Arc::new(KeyIndex::new());
        idx.extend(std::iter::empty());
        let arrived = 1_000;
        let (i2, started) = (idx.clone(), Instant::now());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            i2.insert("cccccccccccc");
            i2.caught_up(arrived - 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            i2.caught_up(arrived + 1);
        });
        assert_eq!(idx.wait_for_feed(arrived).await, FeedWait::CaughtUp);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(idx.check("cccccccccccc"), Verdict::Known);
        // Caught up already: no wait.
        let started = Instant::now();
        assert_eq!(idx.wait_for_feed(arrived).await, FeedWait::CaughtUp);
        assert!(started.elapsed() < Duration::from_millis(100));
        // Never caught up: a bounded wait.
        let started = Instant::now();
        assert_eq!(idx.wait_for_feed(i64::MAX - 1).await, FeedWait::TimedOut);
        assert!(started.elapsed() >= CATCH_UP_WAIT);
    }

    #[test]
    fn the_budget_is_bounded_in_rate_and_concurrency() {
        let idx = KeyIndex::new();
        let a = idx.try_budget().expect("first");
        let b = idx.try_budget().expect("second");
        assert!(idx.try_budget().is_none(), "two in flight at most");
        drop((a, b));
        let mut granted = 2;
        while idx.try_budget().is_some() {
            granted += 1;
            assert!(granted < 100, "the rate is bounded");
        }
        assert!(
            granted <= UNKNOWN_LOOKUPS_PER_SECOND as usize + 1,
            "{granted}"
        );
    }
}
