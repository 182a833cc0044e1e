//! The in-process token buckets (stage 6 on one proxy, and the fallback of the Redis one).
//!
//! The bucket arithmetic is a pure function of (state, limit, now) so it is tested
//! exactly with a manual clock. Capacity is `burst` (default `max_requests`); the
//! refill rate is `max_requests / window_seconds` tokens per second.

use crate::cache::IdKey;
use http::{HeaderName, HeaderValue};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tenantgate_core::domain::RateLimit;

/// Monotonic nanoseconds; injectable so tests need no sleeps.
pub trait Clock: Send + Sync + 'static {
    fn now_nanos(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance_millis(&self, ms: u64) {
        self.0.fetch_add(ms * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The outcome of one take, with what the rate-limit headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until one token is available (0 when allowed).
    pub retry_after_secs: u64,
    pub window_secs: u64,
}

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Decision {
    /// The rate-limit fields of a request under this one (tenant) limit.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 5] {
        Limits::tenant(*self).headers()
    }
}

/// Which limit a decision is of: the item's name in `RateLimit-Policy` and `RateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LimitName {
    Tenant = 0,
    Key = 1,
    Quota = 2,
}

impl LimitName {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::Tenant => "tenant",
            LimitName::Key => "key",
            LimitName::Quota => "quota",
        }
    }
}

/// The decisions of every limit in force for one request (the tenant's bucket,
/// the key's own bucket, the tenant's quota); the response's rate-limit fields
/// are rendered from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub tenant: Decision,
    pub key: Option<Decision>,
    pub quota: Option<Decision>,
}

impl Limits {
    pub fn tenant(d: Decision) -> Self {
        Limits {
            tenant: d,
            key: None,
            quota: None,
        }
    }

    /// The limits in force, in order, with their names.
    pub fn items(&self) -> impl Iterator<Item = (LimitName, &Decision)> {
        std::iter::once((LimitName::Tenant, &self.tenant))
            .chain(self.key.as_ref().map(|d| (LimitName::Key, d)))
            .chain(self.quota.as_ref().map(|d| (LimitName::Quota, d)))
    }

    /// The one that binds: a denying one (the longest wait), else the one with
    /// the fewest requests left.
    pub fn tightest(&self) -> &Decision {
        let mut best = &self.tenant;
        for (_, d) in self.items().skip(1) {
            let better = match (d.allowed, best.allowed) {
                (false, true) => true,
                (true, false) => false,
                (false, false) => d.retry_after_secs > best.retry_after_secs,
                (true, true) => d.remaining < best.remaining,
            };
            if better {
                best = d;
            }
        }
        best
    }

    pub fn allowed(&self) -> bool {
        self.items().all(|(_, d)| d.allowed)
    }

    /// Seconds until every denying limit lets a request through (≥ 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.items()
            .filter(|(_, d)| !d.allowed)
            .map(|(_, d)| d.retry_after_secs)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// `RateLimit-Limit`, `-Remaining`, `-Reset` of the tightest limit, and the
    /// structured `RateLimit-Policy` (`"<name>";q=<limit>;w=<window>`) and
    /// `RateLimit` (`"<name>";r=<remaining>;t=<reset>`) with one item per limit.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 5] {
        let t = self.tightest();
        let (limit, tenant_policy) = limit_values(
            LimitName::Tenant,
            self.tenant.limit,
            self.tenant.window_secs,
        );
        let limit = if std::ptr::eq(t, &self.tenant) {
            limit
        } else {
            HeaderValue::from(t.limit)
        };
        let policy = if self.key.is_none() && self.quota.is_none() {
            tenant_policy
        } else {
            let mut v = Vec::with_capacity(96);
            for (i, (name, d)) in self.items().enumerate() {
                if i > 0 {
                    v.extend_from_slice(b", ");
                }
                let (_, p) = limit_values(name, d.limit, d.window_secs);
                v.extend_from_slice(p.as_bytes());
            }
            HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        // Per request (the numbers change every time): built by hand, no `fmt`.
        let mut state = Vec::with_capacity(48);
        for (i, (name, d)) in self.items().enumerate() {
            if i > 0 {
                state.extend_from_slice(b", ");
            }
            state.push(b'"');
            state.extend_from_slice(name.as_str().as_bytes());
            state.extend_from_slice(b"\";r=");
            push_u64(&mut state, d.remaining);
            state.extend_from_slice(b";t=");
            push_u64(&mut state, d.reset_secs);
        }
        [
            (RATELIMIT_LIMIT.clone(), limit),
            (RATELIMIT_REMAINING.clone(), HeaderValue::from(t.remaining)),
            (RATELIMIT_RESET.clone(), HeaderValue::from(t.reset_secs)),
            (RATELIMIT_POLICY.clone(), policy),
            (
                RATELIMIT.clone(),
                HeaderValue::from_maybe_shared(bytes::Bytes::from(state))
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            ),
        ]
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// How many (name, limit, window) renderings each thread keeps.
const LIMIT_VALUES_KEPT: usize = 8;

type KeptValues = Vec<(LimitName, u64, u64, HeaderValue, HeaderValue)>;

thread_local! {
    /// The `RateLimit-Limit` and `RateLimit-Policy` item values of the limits this
    /// thread answered last: they change with the limit, not per request, and
    /// rendering the policy is a `format!` and two allocations.
    static LIMIT_VALUES: RefCell<KeptValues> = const { RefCell::new(Vec::new()) };
}

fn limit_values(name: LimitName, limit: u64, window_secs: u64) -> (HeaderValue, HeaderValue) {
    let render = || {
        let policy =
            HeaderValue::try_from(format!("\"{}\";q={limit};w={window_secs}", name.as_str()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        (HeaderValue::from(limit), policy)
    };
    LIMIT_VALUES
        .try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            if let Some(i) = kept
                .iter()
                .position(|(n, l, w, _, _)| *n == name && *l == limit && *w == window_secs)
            {
                let (_, _, _, l, p) = &kept[i];
                return Some((l.clone(), p.clone()));
            }
            let (l, p) = render();
            if kept.len() == LIMIT_VALUES_KEPT {
                kept.remove(0);
            }
            kept.push((name, limit, window_secs, l.clone(), p.clone()));
            Some((l, p))
        })
        .ok()
        .flatten()
        .unwrap_or_else(render)
}

/// One tenant's bucket: fractional tokens and the time they were computed at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_nanos: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: &RateLimit, now_nanos: u64) -> Self {
        Bucket {
            tokens: limit.capacity() as f64,
            at_nanos: now_nanos,
        }
    }

    /// Refills to `now` and takes `cost` tokens if there are enough.
    pub fn take(&mut self, limit: &RateLimit, now_nanos: u64, cost: u64) -> Decision {
        let capacity = limit.capacity() as f64;
        let rate = limit.refill_per_sec();
        let elapsed = now_nanos.saturating_sub(self.at_nanos) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.at_nanos = self.at_nanos.max(now_nanos);
        let cost = cost as f64;
        let allowed = self.tokens >= cost;
        if allowed {
            self.tokens -= cost;
        }
        let secs_until = |target: f64| -> u64 {
            let missing = (target - self.tokens).max(0.0);
            if missing <= 0.0 {
                0
            } else if rate <= 0.0 {
                limit.window_seconds.max(1)
            } else {
                (missing / rate).ceil() as u64
            }
        };
        Decision {
            allowed,
            limit: limit.max_requests,
            remaining: self.tokens.max(0.0).floor() as u64,
            reset_secs: secs_until(capacity),
            retry_after_secs: if allowed { 0 } else { secs_until(cost).max(1) },
            window_secs: limit.window_seconds,
        }
    }

    /// A bucket that is full (and so equal to a fresh one) can be forgotten.
    pub fn is_full_at(&self, limit: &RateLimit, now_nanos: u64) -> bool {
        let elapsed = now_nanos.saturating_sub(self.at_nanos) as f64 / 1e9;
        self.tokens + elapsed * limit.refill_per_sec() >= limit.capacity() as f64
    }
}

const SHARDS: usize = 64;

/// Tenant → its bucket and the limit it was last checked against.
/// Hashed with foldhash: tenant ids come from the store, not from clients, so a
/// flooding-resistant hasher buys nothing.
/// Keyed by the tenant id inline (probing compares bytes in the table, no pointer
/// to follow), looked up with the id's bytes.
type BucketMap = HashMap<IdKey, (Bucket, RateLimit), foldhash::fast::RandomState>;

/// In-process limiter: sharded maps of tenant → bucket.
pub struct LocalLimiter {
    shards: Vec<Mutex<BucketMap>>,
    hasher: foldhash::fast::RandomState,
    clock: Arc<dyn Clock>,
}

impl LocalLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(BucketMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            clock,
        }
    }

    fn shard(&self, tenant: &str) -> &Mutex<BucketMap> {
        &self.shards[(self.hasher.hash_one(tenant) as usize) % SHARDS]
    }

    /// Takes one token from the tenant's bucket.
    pub fn check(&self, tenant: &str, limit: &RateLimit) -> Decision {
        let now = self.clock.now_nanos();
        let mut map = match self.shard(tenant).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get_mut(tenant.as_bytes()) {
            Some((b, l)) => {
                *l = *limit;
                b.take(limit, now, 1)
            }
            None => {
                let mut b = Bucket::full(limit, now);
                let d = b.take(limit, now, 1);
                map.insert(IdKey::new(tenant), (b, *limit));
                d
            }
        }
    }

    /// What [`LocalLimiter::check`] would answer now, without taking a token
    /// (explain): the same arithmetic on a copy of the bucket.
    pub fn peek(&self, tenant: &str, limit: &RateLimit) -> Decision {
        let now = self.clock.now_nanos();
        let map = match self.shard(tenant).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut copy = match map.get(tenant.as_bytes()) {
            Some((b, _)) => *b,
            None => Bucket::full(limit, now),
        };
        drop(map);
        copy.take(limit, now, 1)
    }

    /// Forgets a tenant's bucket (e.g. its limit was changed to a smaller one).
    pub fn reset(&self, tenant: &str) {
        if let Ok(mut m) = self.shard(tenant).lock() {
            m.remove(tenant.as_bytes());
        }
    }

    /// Drops buckets that have refilled completely (a fresh bucket is the same), so
    /// memory is bounded by the recently active tenants.
    pub fn sweep(&self) {
        let now = self.clock.now_nanos();
        for shard in &self.shards {
            if let Ok(mut m) = shard.lock() {
                m.retain(|_, (b, l)| !b.is_full_at(l, now));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_answers_like_check_without_taking() {
        let clock = Arc::new(ManualClock::default());
        let l = LocalLimiter::new(clock.clone());
        let lim = RateLimit {
            max_requests: 2,
            window_seconds: 60,
            burst: None,
        };
        for _ in 0..5 {
            assert!(l.peek("t", &lim).allowed);
        }
        assert!(l.is_empty(), "a peek creates no bucket");
        assert_eq!(l.peek("t", &lim), l.check("t", &lim));
        assert!(l.check("t", &lim).allowed);
        let peeked = l.peek("t", &lim);
        assert!(!peeked.allowed);
        assert_eq!(peeked, l.check("t", &lim));
    }

    fn lim(max: u64, window: u64, burst: Option<u64>) -> RateLimit {
        RateLimit {
            max_requests: max,
            window_seconds: window,
            burst,
        }
    }

    #[test]
    fn allows_capacity_then_rejects() {
        let l = lim(5, 60, None);
        let mut b = Bucket::full(&l, 0);
        for i in 0..5 {
            let d = b.take(&l, 0, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = b.take(&l, 0, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // 5 per 60 s = one token per 12 s.
        assert_eq!(d.retry_after_secs, 12);
        assert_eq!(d.reset_secs, 60);
    }

    #[test]
    fn refills_at_max_over_window() {
        let l = lim(60, 60, None);
        let mut b = Bucket::full(&l, 0);
        for _ in 0..60 {
            assert!(b.take(&l, 0, 1).allowed);
        }
        assert!(!b.take(&l, 0, 1).allowed);
        // one token per second
        assert!(!b.take(&l, 999_000_000, 1).allowed);
        assert!(b.take(&l, 1_000_000_000, 1).allowed);
        assert!(!b.take(&l, 1_000_000_000, 1).allowed);
        // 10 s later: 10 tokens
        let t = 11_000_000_000;
        for _ in 0..10 {
            assert!(b.take(&l, t, 1).allowed);
        }
        assert!(!b.take(&l, t, 1).allowed);
    }

    #[test]
    fn burst_sets_capacity_not_rate() {
        let l = lim(10, 10, Some(3));
        let mut b = Bucket::full(&l, 0);
        assert!(b.take(&l, 0, 1).allowed);
        assert!(b.take(&l, 0, 1).allowed);
        assert!(b.take(&l, 0, 1).allowed);
        assert!(!b.take(&l, 0, 1).allowed);
        // refill is 1/s, and never above 3
        let d = b.take(&l, 100_000_000_000, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let l = lim(1, 1, None);
        let mut b = Bucket::full(&l, 5_000_000_000);
        assert!(b.take(&l, 5_000_000_000, 1).allowed);
        assert!(!b.take(&l, 1_000_000_000, 1).allowed);
    }

    #[test]
    fn limiter_isolates_tenants_with_manual_clock() {
        let clock = Arc::new(ManualClock::default());
        let rl = LocalLimiter::new(clock.clone());
        let l = lim(2, 2, None);
        assert!(rl.check("a", &l).allowed);
        assert!(rl.check("a", &l).allowed);
        assert!(!rl.check("a", &l).allowed);
        assert!(rl.check("b", &l).allowed);
        clock.advance_millis(1_000);
        assert!(rl.check("a", &l).allowed);
        assert!(!rl.check("a", &l).allowed);
        assert_eq!(rl.len(), 2);
        clock.advance_millis(10_000);
        rl.sweep();
        assert_eq!(rl.len(), 0);
    }

    #[test]
    fn headers_are_named_per_draft() {
        let l = lim(100, 60, None);
        let d = Bucket::full(&l, 0).take(&l, 0, 1);
        let h = d.headers();
        let has = |n: &str, v: &str| h.iter().any(|(hn, hv)| hn == n && hv == v);
        assert!(has("ratelimit-limit", "100"));
        assert!(has("ratelimit-remaining", "99"));
        assert!(h.iter().any(|(n, _)| n == "ratelimit-reset"));
        assert!(has("ratelimit-policy", "\"tenant\";q=100;w=60"));
        assert!(has("ratelimit", "\"tenant\";r=99;t=1"));
    }

    #[test]
    fn several_limits_render_one_item_each_and_the_tightest_leads() {
        let tenant_l = lim(100, 60, None);
        let key_l = lim(5, 10, None);
        let t = Bucket::full(&tenant_l, 0).take(&tenant_l, 0, 1);
        let k = Bucket::full(&key_l, 0).take(&key_l, 0, 1);
        let both = Limits {
            tenant: t,
            key: Some(k),
            quota: None,
        };
        assert!(both.allowed());
        let h = both.headers();
        assert_eq!(h[0].1, "5");
        assert_eq!(h[1].1, "4");
        assert_eq!(h[3].1, "\"tenant\";q=100;w=60, \"key\";q=5;w=10");
        assert_eq!(h[4].1, "\"tenant\";r=99;t=1, \"key\";r=4;t=2");
        let denied = Decision {
            allowed: false,
            remaining: 0,
            retry_after_secs: 7,
            ..t
        };
        let l = Limits {
            tenant: denied,
            key: Some(k),
            quota: None,
        };
        assert!(!l.allowed());
        assert_eq!(l.tightest(), &denied);
        assert_eq!(l.retry_after_secs(), 7);
    }

    #[test]
    fn numbers_are_rendered_in_decimal() {
        for n in [0u64, 7, 10, 99, 1_000_001, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    #[test]
    fn limit_values_follow_the_limit_past_the_kept_renderings() {
        // More distinct limits than a thread keeps, twice over: each answer must be
        // its own limit's, whether rendered fresh or reused.
        for round in 0..2 {
            for n in 1..=(LIMIT_VALUES_KEPT as u64 * 2) {
                let l = lim(n * 10, 60 + n, None);
                let d = Bucket::full(&l, 0).take(&l, 0, 1);
                let h = d.headers();
                assert_eq!(h[0].1, (n * 10).to_string().as_str(), "round {round}");
                assert_eq!(
                    h[3].1,
                    format!("\"tenant\";q={};w={}", n * 10, 60 + n).as_str()
                );
            }
        }
    }
}
