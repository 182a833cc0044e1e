//! Leased tokens: the per-tenant state a proxy keeps between Redis calls, and the
//! rule that sizes a lease. Pure (time is passed in) so it is tested without sleeps.

use crate::limiter::Decision;
use std::time::{Duration, Instant};
use tenantgate_core::domain::RateLimit;

/// The most tokens one Redis call asks for, whatever the queue of waiters.
pub(crate) const MAX_BATCH: u64 = 10_000;

/// What the shared bucket answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens taken from the bucket for this proxy (0 = denied).
    pub granted: u64,
    /// Whole tokens left in the bucket after the grant.
    pub remaining: u64,
    /// Milliseconds until the bucket holds one token (0 if it does; `None` if it
    /// never refills).
    pub ms_to_one: Option<u64>,
    /// Milliseconds until the bucket is full (`None` if it never refills).
    pub ms_to_full: Option<u64>,
}

/// Inputs of the lease-size rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseParams {
    pub lifetime: Duration,
    /// Largest share of the limit the fleet may hold in leases (0.01 = 1 %).
    pub max_outstanding: f64,
    /// Proxies assumed to share the bucket (≥ 1).
    pub proxies: u64,
}

/// How many tokens to ask the shared bucket for when this proxy's lease is empty.
///
/// Every admitted request spends a token that was taken atomically from the shared
/// bucket, so leasing never admits more than the bucket granted; what a lease
/// changes is *when* the token leaves the bucket. Tokens sitting in a lease are
/// (a) missing from the bucket, so another proxy may see it empty a moment early
/// (a transient 429 right at the edge of the limit), and (b) not clamped by the
/// capacity while the bucket refills, so a burst right after a full refill can
/// exceed the capacity by the tokens held in leases. Both effects are bounded by
/// the tokens outstanding in the fleet, at most `proxies × lease`, so the rule is:
///
/// * `bound  = max_outstanding × min(max_requests, capacity) / proxies` — with the
///   default 1 % and `proxies` = the live count (at least 2, see
///   `RedisLimiterOptions::min_expected_proxies`), the fleet never holds more
///   than 1 % of the limit. For any limit below 100 × proxies (e.g. 100 per
///   window) this is < 2, so the lease is 1: no batching, and the limit is exact.
/// * `share  = rate_per_sec × lifetime / proxies` — one proxy's fair share of what
///   the bucket refills during one lease lifetime: leasing more than this would
///   hold tokens the fleet cannot spend before they expire.
/// * `demand = ⌈local_rate × lifetime⌉` — what this proxy actually spent per
///   lifetime recently: a quiet tenant gets 1 (no lease to give back), a busy one
///   ramps up within a few calls.
/// * `tail   = remaining_in_bucket / (2 × proxies)` — near the end of the bucket
///   leases shrink to 1, so the last tokens are not hoarded by one proxy.
///
/// The lease is the smallest of these, at least 1 and at most the capacity.
/// Example, 10 000 per 60 s with 4 proxies and a 300 ms lifetime: bound 25,
/// share 12, so a busy proxy calls Redis once per 12 requests and the fleet holds
/// at most 48 tokens (0.5 %). 100 per 60 s: always 1.
pub(crate) fn lease_size(
    limit: &RateLimit,
    p: &LeaseParams,
    local_rate: f64,
    last_remaining: Option<u64>,
) -> u64 {
    let cap = limit.capacity();
    if cap <= 1 {
        return 1;
    }
    let proxies = p.proxies.max(1) as f64;
    let lifetime = p.lifetime.as_secs_f64();
    let bound = p.max_outstanding.max(0.0) * limit.max_requests.min(cap) as f64 / proxies;
    let share = limit.refill_per_sec() * lifetime / proxies;
    let demand = (local_rate.max(0.0) * lifetime).ceil();
    let tail = last_remaining.map_or(f64::INFINITY, |r| r as f64 / (2.0 * proxies));
    let l = bound.min(share).min(demand).min(tail).floor();
    if l.is_finite() && l >= 1.0 {
        (l as u64).min(cap)
    } else {
        1
    }
}

/// The last answer of the shared bucket, and when it came.
#[derive(Debug, Clone, Copy)]
struct Answer {
    at: Instant,
    grant: Grant,
}

/// One tenant's lease on one proxy.
#[derive(Debug, Clone)]
pub(crate) struct LeaseState {
    limit: Option<RateLimit>,
    /// Leased, unspent tokens.
    tokens: u64,
    granted_at: Option<Instant>,
    /// Tokens owed back to the bucket (an expired lease, or one taken under a
    /// limit that has since changed); returned with the next call.
    carry: u64,
    answer: Option<Answer>,
    /// A denial is reused until then (the bucket has no token before it).
    deny_until: Option<Instant>,
    /// Checks since the last fetch, and when that was: the local demand.
    calls: u64,
    last_fetch: Option<Instant>,
    rate_est: f64,
    pub(crate) last_used: Instant,
}

impl LeaseState {
    pub(crate) fn new(now: Instant) -> Self {
        LeaseState {
            limit: None,
            tokens: 0,
            granted_at: None,
            carry: 0,
            answer: None,
            deny_until: None,
            calls: 0,
            last_fetch: None,
            rate_est: 0.0,
            last_used: now,
        }
    }

    /// The limit the lease was taken under.
    pub(crate) fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Tokens held (leased and unspent, plus owed back).
    pub(crate) fn held(&self) -> u64 {
        self.tokens + self.carry
    }

    fn expired(&self, now: Instant, lifetime: Duration) -> bool {
        self.granted_at.is_none_or(|g| now >= g + lifetime)
    }

    /// Moves expired (or, with `all`, every) leased token to the give-back pile and
    /// takes the pile: what a background give-back returns to the bucket.
    pub(crate) fn take_returnable(&mut self, now: Instant, lifetime: Duration, all: bool) -> u64 {
        if self.tokens > 0 && (all || self.expired(now, lifetime)) {
            self.carry += self.tokens;
            self.tokens = 0;
        }
        std::mem::take(&mut self.carry)
    }

    /// The fast path: spends a leased token or repeats a recent denial; `None`
    /// means the shared bucket has to be asked. `count` records the call in the
    /// demand estimate (false for a re-check after waiting for the in-flight call).
    pub(crate) fn try_local(
        &mut self,
        limit: &RateLimit,
        now: Instant,
        lifetime: Duration,
        count: bool,
    ) -> Option<Decision> {
        if self.limit != Some(*limit) {
            if self.limit.is_some() {
                self.carry += self.tokens;
                self.tokens = 0;
                self.answer = None;
                self.deny_until = None;
            }
            self.limit = Some(*limit);
        }
        if count {
            self.calls += 1;
            self.last_used = now;
        }
        if self.tokens > 0 {
            if !self.expired(now, lifetime) {
                self.tokens -= 1;
                return Some(self.allowed(limit, now));
            }
            self.carry += self.tokens;
            self.tokens = 0;
        }
        match self.deny_until {
            Some(until) if now < until => Some(self.denied(limit, now)),
            Some(_) => {
                self.deny_until = None;
                None
            }
            None => None,
        }
    }

    /// Before a call: how many tokens to ask for (`waiting` requests of this tenant
    /// are queued behind the call and will spend what it brings) and how many to
    /// give back in the same call.
    pub(crate) fn plan(
        &mut self,
        limit: &RateLimit,
        now: Instant,
        params: &LeaseParams,
        waiting: u64,
    ) -> (u64, u64) {
        if let Some(last) = self.last_fetch {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            if dt > 0.0 {
                let r = self.calls as f64 / dt;
                self.rate_est = if self.rate_est > 0.0 {
                    0.5 * self.rate_est + 0.5 * r
                } else {
                    r
                };
            }
        }
        self.calls = 0;
        self.last_fetch = Some(now);
        let lease = lease_size(
            limit,
            params,
            self.rate_est,
            self.answer.map(|a| a.grant.remaining),
        );
        let want = lease.max(waiting).min(limit.capacity()).clamp(1, MAX_BATCH);
        let give = self.take_returnable(now, params.lifetime, false);
        (want, give)
    }

    /// After a call: keeps the rest of the grant as the lease and decides.
    pub(crate) fn apply(
        &mut self,
        limit: &RateLimit,
        grant: Grant,
        now: Instant,
        lifetime: Duration,
    ) -> Decision {
        self.answer = Some(Answer { at: now, grant });
        if grant.granted > 0 {
            self.tokens += grant.granted - 1;
            self.granted_at = Some(now);
            self.deny_until = None;
            self.allowed(limit, now)
        } else {
            let wait = grant
                .ms_to_one
                .map_or(lifetime, Duration::from_millis)
                .min(lifetime);
            self.deny_until = Some(now + wait);
            self.denied(limit, now)
        }
    }

    /// The bucket as last seen, refilled to `now`, plus what this lease still holds.
    fn allowed(&self, limit: &RateLimit, now: Instant) -> Decision {
        let cap = limit.capacity();
        let rate = limit.refill_per_sec();
        let in_bucket = match self.answer {
            Some(a) => {
                let e = now.saturating_duration_since(a.at).as_secs_f64();
                (a.grant.remaining as f64 + e * rate)
                    .min(cap as f64)
                    .floor() as u64
            }
            None => cap.saturating_sub(1),
        };
        let remaining = in_bucket.saturating_add(self.tokens).min(cap);
        let missing = cap.saturating_sub(remaining) as f64;
        let reset_secs = if missing <= 0.0 {
            0
        } else if rate <= 0.0 {
            limit.window_seconds.max(1)
        } else {
            (missing / rate).ceil() as u64
        };
        Decision {
            allowed: true,
            limit: limit.max_requests,
            remaining,
            reset_secs,
            retry_after_secs: 0,
            window_secs: limit.window_seconds,
        }
    }

    fn denied(&self, limit: &RateLimit, now: Instant) -> Decision {
        let window = limit.window_seconds.max(1);
        let (retry, reset) = match self.answer {
            Some(a) => {
                let e = u64::try_from(now.saturating_duration_since(a.at).as_millis())
                    .unwrap_or(u64::MAX);
                let secs =
                    |ms: Option<u64>| ms.map_or(window, |ms| ms.saturating_sub(e).div_ceil(1000));
                (secs(a.grant.ms_to_one), secs(a.grant.ms_to_full))
            }
            None => (window, window),
        };
        Decision {
            allowed: false,
            limit: limit.max_requests,
            remaining: 0,
            reset_secs: reset,
            retry_after_secs: retry.max(1),
            window_secs: limit.window_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max: u64, window: u64, burst: Option<u64>) -> RateLimit {
        RateLimit {
            max_requests: max,
            window_seconds: window,
            burst,
        }
    }

    fn params(proxies: u64) -> LeaseParams {
        LeaseParams {
            lifetime: Duration::from_millis(300),
            max_outstanding: 0.01,
            proxies,
        }
    }

    #[test]
    fn small_limits_are_never_batched() {
        for p in 1..=4 {
            for max in [1, 2, 60, 100, 199] {
                assert_eq!(lease_size(&lim(max, 60, None), &params(p), 1e9, None), 1);
            }
            assert_eq!(
                lease_size(&lim(100, 1, None), &params(p), 1e9, Some(100)),
                1
            );
        }
    }

    #[test]
    fn big_limits_lease_within_one_percent() {
        for p in 2..=4u64 {
            for max in [10_000u64, 100_000, 1_000_000, 10_000_000] {
                let l = lim(max, 60, None);
                let n = lease_size(&l, &params(p), 1e9, None);
                assert!(n >= 1);
                assert!(n * p <= max / 100, "max {max} proxies {p}: lease {n}");
            }
        }
        // 10 000 / 60 s, 4 proxies: share = 166.7 * 0.3 / 4 = 12.
        assert_eq!(
            lease_size(&lim(10_000, 60, None), &params(4), 1e9, None),
            12
        );
    }

    #[test]
    fn quiet_tenants_and_nearly_empty_buckets_get_one() {
        let l = lim(1_000_000, 60, None);
        assert_eq!(lease_size(&l, &params(2), 1.0, None), 1);
        assert_eq!(lease_size(&l, &params(2), 100.0, None), 30);
        assert_eq!(lease_size(&l, &params(2), 1e9, Some(7)), 1);
        assert_eq!(lease_size(&l, &params(2), 1e9, Some(40)), 10);
    }

    #[test]
    fn lease_is_spent_then_expires_into_give_back() {
        let l = lim(100_000, 60, None);
        let t0 = Instant::now();
        let life = Duration::from_millis(300);
        let mut s = LeaseState::new(t0);
        assert!(s.try_local(&l, t0, life, true).is_none());
        let (want, give) = s.plan(&l, t0, &params(2), 1);
        assert_eq!((want, give), (1, 0), "no demand known yet");
        let g = Grant {
            granted: 5,
            remaining: 90_000,
            ms_to_one: Some(0),
            ms_to_full: Some(6_000),
        };
        let d = s.apply(&l, g, t0, life);
        assert!(d.allowed);
        assert_eq!(d.remaining, 90_004);
        for left in (0..4).rev() {
            let d = s.try_local(&l, t0, life, true).unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 90_000 + left);
        }
        assert!(s.try_local(&l, t0, life, true).is_none());
        // 4 calls in 10 ms: the next lease follows the demand.
        let t1 = t0 + Duration::from_millis(10);
        let (want, _) = s.plan(&l, t1, &params(2), 1);
        assert!(want > 1, "{want}");
        s.apply(&l, Grant { granted: 3, ..g }, t1, life);
        assert_eq!(s.held(), 2);
        let late = t1 + life;
        assert!(s.try_local(&l, late, life, true).is_none(), "expired");
        let (_, give) = s.plan(&l, late, &params(2), 1);
        assert_eq!(give, 2);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn background_give_back_takes_only_expired_unless_all() {
        let l = lim(100_000, 60, None);
        let t0 = Instant::now();
        let life = Duration::from_millis(300);
        let mut s = LeaseState::new(t0);
        s.try_local(&l, t0, life, true);
        let g = Grant {
            granted: 4,
            remaining: 1,
            ms_to_one: Some(0),
            ms_to_full: Some(1),
        };
        s.apply(&l, g, t0, life);
        assert_eq!(s.take_returnable(t0, life, false), 0);
        assert_eq!(s.take_returnable(t0 + life, life, false), 3);
        s.apply(&l, g, t0, life);
        assert_eq!(s.take_returnable(t0, life, true), 3);
    }

    #[test]
    fn denial_is_cached_until_a_token_is_due() {
        let l = lim(2, 1, None);
        let t0 = Instant::now();
        let life = Duration::from_millis(300);
        let mut s = LeaseState::new(t0);
        s.try_local(&l, t0, life, true);
        let g = Grant {
            granted: 0,
            remaining: 0,
            ms_to_one: Some(200),
            ms_to_full: Some(700),
        };
        let d = s.apply(&l, g, t0, life);
        assert!(!d.allowed);
        assert_eq!((d.retry_after_secs, d.reset_secs, d.remaining), (1, 1, 0));
        let d = s
            .try_local(&l, t0 + Duration::from_millis(199), life, true)
            .unwrap();
        assert!(!d.allowed);
        assert!(s
            .try_local(&l, t0 + Duration::from_millis(200), life, true)
            .is_none());
    }

    #[test]
    fn limit_change_drops_the_lease_into_give_back() {
        let l = lim(100_000, 60, None);
        let t0 = Instant::now();
        let life = Duration::from_millis(300);
        let mut s = LeaseState::new(t0);
        s.try_local(&l, t0, life, true);
        let g = Grant {
            granted: 4,
            remaining: 1,
            ms_to_one: Some(0),
            ms_to_full: Some(1),
        };
        s.apply(&l, g, t0, life);
        let smaller = lim(10, 60, None);
        assert!(s.try_local(&smaller, t0, life, true).is_none());
        assert_eq!(s.limit(), Some(smaller));
        assert_eq!(s.take_returnable(t0, life, false), 3);
    }
}
