//! Quotas: requests per UTC calendar day or month, per tenant.
//!
//! Every proxy counts what it admits per (tenant, period) and adds it to the store
//! at each flush, so `GET …/quota` and a restarted proxy see it. Alone (the local
//! backend) the count is exact: the store's total read at the tenant's first
//! request of the period, plus what this proxy admitted since. With Redis a fleet
//! shares one counter per (tenant, period): a proxy takes *leases* of units with an
//! atomic capped `INCRBY` (the counter never passes the quota, so nothing is
//! admitted beyond it) and spends them locally. A lease is at most 1 % of the quota
//! divided by the live proxies, so what can be left unspent when a period ends is
//! at most 1 % (under-admission); quotas below 200 × proxies are taken one unit
//! per request, exactly.

use super::{Decision, LimitError, Limiter};
use crate::cache::IdKey;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use tenantgate_core::config::FailMode;
use tenantgate_core::domain::Quota;
use tenantgate_core::store::Store;

const SHARDS: usize = 16;
/// Largest lease of quota units one Redis call takes.
const MAX_LEASE: u64 = 1000;
/// Share of a quota the fleet may hold in leases.
const MAX_OUTSTANDING: f64 = 0.01;

/// One tenant's count in its current period on this proxy.
#[derive(Debug, Clone)]
struct Count {
    quota: Quota,
    start: i64,
    end: i64,
    /// The store's total when last read (every proxy's flushed admissions).
    base: u64,
    loaded: bool,
    /// Admitted here and not yet added to the store.
    pending: u64,
    /// Redis: leased units not yet spent, and the shared counter when last seen.
    leased: u64,
    shared_used: u64,
    /// One Redis call per tenant at a time; requests queued behind it.
    fetch: Arc<tokio::sync::Mutex<()>>,
    waiting: u64,
}

impl Count {
    fn new(quota: Quota, now_ms: i64) -> Self {
        let (start, end) = quota.period.bounds(now_ms);
        Count {
            quota,
            start,
            end,
            base: 0,
            loaded: false,
            pending: 0,
            leased: 0,
            shared_used: 0,
            fetch: Arc::new(tokio::sync::Mutex::new(())),
            waiting: 0,
        }
    }

    fn current(&self, quota: &Quota, now_ms: i64) -> bool {
        self.quota.period == quota.period && self.start <= now_ms && now_ms < self.end
    }

    fn decision(&self, allowed: bool, used: u64, now_ms: i64) -> Decision {
        let reset = u64::try_from((self.end - now_ms).max(0))
            .unwrap_or(0)
            .div_ceil(1000)
            .max(1);
        Decision {
            allowed,
            limit: self.quota.max_requests,
            remaining: self.quota.max_requests.saturating_sub(used),
            reset_secs: reset,
            retry_after_secs: if allowed { 0 } else { reset },
            window_secs: u64::try_from((self.end - self.start) / 1000).unwrap_or(0),
        }
    }
}

type CountMap = HashMap<IdKey, Count, foldhash::fast::RandomState>;

/// The quota counters of one proxy.
pub struct Quotas {
    store: Store,
    limiter: Limiter,
    shards: Vec<Mutex<CountMap>>,
    hasher: foldhash::fast::RandomState,
    /// Admissions of ended periods still to be added to the store.
    carry: Mutex<Vec<(IdKey, i64, u64)>>,
}

/// A request queued for a tenant's lease; leaves the queue when dropped (also when
/// its request is cancelled).
struct Waiting<'a> {
    quotas: &'a Quotas,
    tenant: &'a str,
    q: &'a Quota,
    now_ms: i64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.quotas
            .with_count(self.tenant, self.q, self.now_ms, |c| {
                c.waiting = c.waiting.saturating_sub(1)
            });
    }
}

/// The lease one Redis call asks for.
fn lease_size(max: u64, proxies: u64) -> u64 {
    let l = (max as f64 * MAX_OUTSTANDING / proxies.max(1) as f64).floor();
    if l.is_finite() && l >= 1.0 {
        (l as u64).min(MAX_LEASE)
    } else {
        1
    }
}

impl Quotas {
    pub fn new(store: Store, limiter: Limiter) -> Self {
        Quotas {
            store,
            limiter,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(CountMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            carry: Mutex::new(Vec::new()),
        }
    }

    fn shard(&self, tenant: &str) -> std::sync::MutexGuard<'_, CountMap> {
        let m = &self.shards[(self.hasher.hash_one(tenant) as usize) % SHARDS];
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The tenant's count for the period holding `now_ms` (a new one when the
    /// period or the quota's period kind changed; the old one's admissions carry
    /// over to the next flush).
    fn with_count<R>(
        &self,
        tenant: &str,
        q: &Quota,
        now_ms: i64,
        f: impl FnOnce(&mut Count) -> R,
    ) -> R {
        let mut map = self.shard(tenant);
        if let Some(c) = map.get_mut(tenant.as_bytes()) {
            if !c.current(q, now_ms) {
                if c.pending > 0 {
                    if let Ok(mut carry) = self.carry.lock() {
                        carry.push((IdKey::new(tenant), c.start, c.pending));
                    }
                }
                *c = Count::new(*q, now_ms);
            }
            c.quota.max_requests = q.max_requests;
            return f(c);
        }
        let mut c = Count::new(*q, now_ms);
        let r = f(&mut c);
        map.insert(IdKey::new(tenant), c);
        r
    }

    /// Counts one request against the tenant's quota.
    pub async fn check(
        &self,
        tenant: &str,
        q: &Quota,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        if let Some((fail_mode, proxies)) = self.limiter.redis_shape() {
            // A leased unit: no Redis call.
            let spend = |c: &mut Count| {
                (c.leased > 0).then(|| {
                    c.leased -= 1;
                    c.pending += 1;
                    let used = c.shared_used.saturating_sub(c.leased);
                    c.decision(true, used, now_ms)
                })
            };
            let fetch = self.with_count(tenant, q, now_ms, |c| match spend(c) {
                Some(d) => Ok(d),
                None => {
                    c.waiting += 1;
                    Err(c.fetch.clone())
                }
            });
            let fetch = match fetch {
                Ok(d) => return Ok(d),
                Err(f) => f,
            };
            // Single flight per tenant: whoever queued behind the call spends what
            // it brought (it asks for one unit per queued request at least).
            let waiting = Waiting {
                quotas: self,
                tenant,
                q,
                now_ms,
            };
            let _flight = fetch.lock().await;
            let queued = self.with_count(tenant, q, now_ms, |c| match spend(c) {
                Some(d) => Ok(d),
                None => Err(c.waiting),
            });
            drop(waiting);
            let queued = match queued {
                Ok(d) => return Ok(d),
                Err(n) => n,
            };
            let (start, end) = q.period.bounds(now_ms);
            let ttl = u64::try_from(end - now_ms).unwrap_or(0) + 3_600_000;
            let want = lease_size(q.max_requests, proxies)
                .max(queued)
                .min(MAX_LEASE);
            let res = self
                .limiter
                .quota_take(tenant, start, q.max_requests, want, ttl)
                .await;
            match res {
                Some(Ok((granted, used))) => {
                    return Ok(self.with_count(tenant, q, now_ms, |c| {
                        c.shared_used = c.shared_used.max(used);
                        if granted > 0 {
                            c.leased += granted - 1;
                            c.pending += 1;
                            c.decision(true, used.saturating_sub(c.leased), now_ms)
                        } else {
                            c.decision(false, used, now_ms)
                        }
                    }));
                }
                Some(Err(())) if fail_mode == FailMode::Closed => {
                    return Err(LimitError::Unavailable)
                }
                // Redis not usable, fail open: this proxy's own count.
                _ => {}
            }
        }
        let loaded = self.with_count(tenant, q, now_ms, |c| c.loaded);
        if !loaded {
            let start = q.period.bounds(now_ms).0;
            // Once per tenant and period: what was counted before (other proxies,
            // an earlier run of this one). A store that does not answer counts as 0.
            let used = self.store.quota_used(tenant, start).await.unwrap_or_else(|e| {
                tracing::warn!(tenant, error = %e, "quota usage could not be read; counting from 0");
                0
            });
            self.with_count(tenant, q, now_ms, |c| {
                if !c.loaded && c.start == start {
                    c.base = used;
                    c.loaded = true;
                }
            });
        }
        Ok(self.with_count(tenant, q, now_ms, |c| {
            let used = c.base + c.pending;
            if used < c.quota.max_requests {
                c.pending += 1;
                c.decision(true, used + 1, now_ms)
            } else {
                c.decision(false, used, now_ms)
            }
        }))
    }

    /// What [`Quotas::check`] would answer now, counting nothing (explain): the
    /// count this proxy holds (plus, with Redis, the fleet's shared counter, or
    /// the store's total when it has not read it yet).
    pub async fn peek(&self, tenant: &str, q: &Quota, now_ms: i64) -> Result<Decision, LimitError> {
        let probe = Count::new(*q, now_ms);
        let held = {
            let map = self.shard(tenant);
            map.get(tenant.as_bytes())
                .filter(|c| c.current(q, now_ms))
                .map(|c| (c.loaded, c.base + c.pending, c.leased, c.shared_used))
        };
        let decide = |used: u64| {
            let allowed = used < q.max_requests;
            probe.decision(allowed, used + u64::from(allowed), now_ms)
        };
        if let Some((fail_mode, _)) = self.limiter.redis_shape() {
            if let Some((_, _, leased, shared_used)) = held.filter(|h| h.2 > 0) {
                return Ok(decide(shared_used.saturating_sub(leased)));
            }
            match self.limiter.quota_peek(tenant, probe.start).await {
                Some(Ok(used)) => return Ok(decide(used)),
                Some(Err(())) if fail_mode == FailMode::Closed => {
                    return Err(LimitError::Unavailable)
                }
                _ => {}
            }
        }
        let used = match held {
            Some((true, used, _, _)) => used,
            _ => self
                .store
                .quota_used(tenant, probe.start)
                .await
                .unwrap_or(0)
                .saturating_add(held.map_or(0, |h| h.1)),
        };
        Ok(decide(used))
    }

    /// Adds what was admitted since the last flush to the store, and forgets
    /// tenants whose period ended with nothing pending.
    pub async fn flush(&self, now_ms: i64) {
        let mut work: Vec<(IdKey, i64, u64)> = match self.carry.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(_) => Vec::new(),
        };
        for shard in &self.shards {
            let mut map = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.retain(|_, c| c.pending > 0 || now_ms < c.end);
            for (t, c) in map.iter_mut() {
                if c.pending > 0 {
                    work.push((t.clone(), c.start, c.pending));
                    c.pending = 0;
                }
            }
        }
        for (tenant, start, n) in work {
            let id = tenant.to_text();
            match self.store.add_quota_used(&id, start, n).await {
                Ok(total) => {
                    let mut map = self.shard(&id);
                    if let Some(c) = map.get_mut(tenant.as_str().as_bytes()) {
                        if c.start == start && c.loaded {
                            c.base = total;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %id, error = %e, "quota usage flush failed; retrying");
                    let mut map = self.shard(&id);
                    match map.get_mut(tenant.as_str().as_bytes()) {
                        Some(c) if c.start == start => c.pending += n,
                        _ => {
                            if let Ok(mut carry) = self.carry.lock() {
                                carry.push((tenant.clone(), start, n));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub async fn flush_loop(
        self: std::sync::Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.flush(tenantgate_core::time::now_ms()).await,
                _ = shutdown.changed() => break,
            }
        }
        self.flush(tenantgate_core::time::now_ms()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{LocalLimiter, ManualClock};
    use tenantgate_core::domain::QuotaPeriod;

    #[test]
    fn leases_stay_within_one_percent() {
        assert_eq!(lease_size(100, 2), 1);
        assert_eq!(lease_size(199, 1), 1);
        assert_eq!(lease_size(100_000, 2), 500);
        assert_eq!(lease_size(10_000_000, 2), MAX_LEASE);
        for p in 1..=8u64 {
            for max in [1u64, 50, 1000, 123_457, 10_000_000] {
                let l = lease_size(max, p);
                assert!(l >= 1);
                assert!(l == 1 || l * p <= max / 100, "max {max} proxies {p}: {l}");
            }
        }
    }

    #[tokio::test]
    async fn local_quota_is_exact_and_survives_a_restart() {
        let db = tenantgate_core::testing::TestDb::sqlite();
        let store = Store::open(&db.url, 2).await.unwrap();
        let limiter = Limiter::local(Arc::new(LocalLimiter::new(
            Arc::new(ManualClock::default()),
        )));
        let q = Quota {
            period: QuotaPeriod::Day,
            max_requests: 3,
        };
        let now = tenantgate_core::time::now_ms();
        let quotas = Quotas::new(store.clone(), limiter.clone());
        for left in [2, 1, 0] {
            let d = quotas.check("acme", &q, now).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = quotas.check("acme", &q, now).await.unwrap();
        assert!(!d.allowed);
        assert!(d.retry_after_secs >= 1 && d.retry_after_secs <= 86_400);
        quotas.flush(now).await;
        let start = QuotaPeriod::Day.bounds(now).0;
        assert_eq!(store.quota_used("acme", start).await.unwrap(), 3);
        // A new proxy (a restart) starts from the store's count.
        let again = Quotas::new(store.clone(), limiter);
        assert!(!again.check("acme", &q, now).await.unwrap().allowed);
        // The next day starts from zero.
        let tomorrow = QuotaPeriod::Day.bounds(now).1 + 1;
        assert!(again.check("acme", &q, tomorrow).await.unwrap().allowed);
    }
}
