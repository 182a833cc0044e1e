//! Stage 6 behind one facade: the in-process limiter ([`local`], `ratelimit.backend = "local"`)
//! or the fleet-wide Redis one (`"redis"`), with its failure modes.
//!
//! With Redis, each tenant's token bucket lives in Redis and is taken from by an
//! atomic Lua script (Redis `TIME` is the clock, so proxies' clocks do not matter).
//! A proxy takes small *leases* of tokens and spends them locally, so most
//! requests of a busy tenant never wait on Redis; small limits are never batched
//! and stay exact (see `lease::lease_size`). Concurrent requests of one tenant
//! share one in-flight call. Every call has a tight timeout and a circuit breaker;
//! when Redis is not usable, `fail_mode = "open"` falls back to a local bucket at
//! `limit / live proxies` (live proxies are counted from heartbeats) and
//! `"closed"` answers [`LimitError::Unavailable`] (503 `unavailable`).

mod lease;
pub mod local;
pub mod quota;
pub mod redis_backend;

pub use self::lease::Grant;
pub use self::local::{
    Bucket, Clock, Decision, LimitName, Limits, LocalLimiter, ManualClock, MonotonicClock,
};
pub use self::redis_backend::RedisLimiterOptions;

use std::sync::Arc;
use tenantgate_core::config::FailMode;
use tenantgate_core::domain::RateLimit;

/// The limiter could not decide (Redis unusable and `fail_mode = "closed"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate limiter unavailable")]
    Unavailable,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Calls made to Redis (bucket takes and give-backs, heartbeats, probes).
    pub redis_calls: u64,
    /// Of those, the ones that failed or timed out.
    pub redis_errors: u64,
    pub breaker_open: bool,
    /// Decisions made by the local fallback bucket (fail open).
    pub fallback_decisions: u64,
    /// Requests answered `Unavailable` (fail closed).
    pub unavailable_decisions: u64,
    /// Decisions made without Redis from a lease (or a recent denial).
    pub leased_decisions: u64,
    /// Proxies sharing the limits (1 for the local backend).
    pub live_proxies: u64,
}

impl LimiterStats {
    /// Appends the counters as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        line(
            "tenantgate_ratelimit_redis_calls_total",
            "counter",
            "Calls made to Redis by the rate limiter.",
            self.redis_calls,
        );
        line(
            "tenantgate_ratelimit_redis_errors_total",
            "counter",
            "Rate limiter calls to Redis that failed or timed out.",
            self.redis_errors,
        );
        line(
            "tenantgate_ratelimit_breaker_open",
            "gauge",
            "1 while the rate limiter's Redis circuit breaker is open.",
            u64::from(self.breaker_open),
        );
        line(
            "tenantgate_ratelimit_fallback_decisions_total",
            "counter",
            "Rate limit decisions made by the local fallback (fail open).",
            self.fallback_decisions,
        );
        line(
            "tenantgate_ratelimit_unavailable_total",
            "counter",
            "Requests refused because the rate limiter was unavailable (fail closed).",
            self.unavailable_decisions,
        );
        line(
            "tenantgate_ratelimit_leased_decisions_total",
            "counter",
            "Rate limit decisions made from leased tokens without a Redis call.",
            self.leased_decisions,
        );
        line(
            "tenantgate_ratelimit_live_proxies",
            "gauge",
            "Proxies sharing the rate limits, from heartbeats.",
            self.live_proxies,
        );
    }
}

#[derive(Clone)]
enum Backend {
    Local(Arc<LocalLimiter>),
    Redis(Arc<redis_backend::RedisLimiter>),
}

/// The rate limiter of the hot path. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Limiter {
    backend: Backend,
    /// The in-process buckets: the limiter itself, or the Redis one's fallback.
    local: Arc<LocalLimiter>,
}

/// How often idle local buckets are forgotten.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Limiter {
    /// The in-process limiter: `check` never awaits.
    pub fn local(local: Arc<LocalLimiter>) -> Self {
        Limiter {
            backend: Backend::Local(local.clone()),
            local,
        }
    }

    /// The Redis limiter. Only a malformed `url` is an error: if Redis is down at
    /// start the limiter starts with its breaker open (fail mode applies) and
    /// connects once a probe of [`Limiter::spawn_background`] gets through.
    /// `local` is the fail-open fallback. Call from within a tokio runtime: the
    /// connection's driver task lives on it.
    pub async fn redis(
        url: &str,
        node_id: &str,
        fail_mode: FailMode,
        local: Arc<LocalLimiter>,
        opts: RedisLimiterOptions,
    ) -> Result<Self, String> {
        let r =
            redis_backend::RedisLimiter::new(url, node_id, fail_mode, local.clone(), opts).await?;
        Ok(Limiter {
            backend: Backend::Redis(Arc::new(r)),
            local,
        })
    }

    /// Like [`Limiter::redis`], for callers without a runtime at hand (a sync
    /// `build_gate`): nothing touches Redis until the first `check` or
    /// [`Limiter::spawn_background`], which connects first thing (with
    /// `connect_timeout`) on the runtime it is given.
    pub fn redis_lazy(
        url: &str,
        node_id: &str,
        fail_mode: FailMode,
        local: Arc<LocalLimiter>,
        opts: RedisLimiterOptions,
    ) -> Result<Self, String> {
        let r =
            redis_backend::RedisLimiter::new_lazy(url, node_id, fail_mode, local.clone(), opts)?;
        Ok(Limiter {
            backend: Backend::Redis(Arc::new(r)),
            local,
        })
    }

    /// With Redis: takes up to `want` units of a tenant's quota period shared by
    /// the fleet, `Some(Ok((granted, used after)))`; `Some(Err(()))` when Redis is
    /// not usable; `None` for the local backend (quotas are counted in process).
    pub(crate) async fn quota_take(
        &self,
        tenant: &str,
        period_start: i64,
        max: u64,
        want: u64,
        ttl_ms: u64,
    ) -> Option<Result<(u64, u64), ()>> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.quota_take(tenant, period_start, max, want, ttl_ms).await),
        }
    }

    /// The fail mode and the live proxies of the Redis backend.
    pub(crate) fn redis_shape(&self) -> Option<(FailMode, u64)> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some((r.fail_mode(), r.live_proxies())),
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Takes one token from the tenant's bucket.
    pub async fn check(&self, tenant: &str, limit: &RateLimit) -> Result<Decision, LimitError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.check(tenant, limit)),
            Backend::Redis(r) => r.check(tenant, limit).await,
        }
    }

    /// What [`Limiter::check`] would answer now, without spending a token
    /// (explain). With Redis: this proxy's unspent lease, else the shared bucket
    /// read by the same script asking for no token; when Redis is not usable, the
    /// fail mode's answer.
    pub async fn peek(&self, tenant: &str, limit: &RateLimit) -> Result<Decision, LimitError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.peek(tenant, limit)),
            Backend::Redis(r) => r.peek(tenant, limit).await,
        }
    }

    /// With Redis: the fleet's shared count of a quota period (`None`: the local
    /// backend; `Some(Err(()))`: Redis not usable).
    pub(crate) async fn quota_peek(
        &self,
        tenant: &str,
        period_start: i64,
    ) -> Option<Result<u64, ()>> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.quota_peek(tenant, period_start).await),
        }
    }

    /// Starts the background work on `rt` until `shutdown` turns true: the local
    /// buckets' sweep, and for Redis heartbeats, breaker probes, lease give-back
    /// and forgetting idle tenants (at shutdown the leases go back and the proxy
    /// leaves the live set).
    pub fn spawn_background(
        &self,
        rt: &tokio::runtime::Handle,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let local = self.local.clone();
        let mut stop = shutdown.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_EVERY) => local.sweep(),
                    _ = stop.changed() => break,
                }
            }
        });
        if let Backend::Redis(r) = &self.backend {
            r.adopt_runtime(rt);
            rt.spawn(r.clone().run_background(shutdown));
        }
    }

    /// Appends the limiter's counters as Prometheus text.
    pub fn render(&self, out: &mut String) {
        self.stats().render(out);
    }

    pub fn stats(&self) -> LimiterStats {
        match &self.backend {
            Backend::Local(_) => LimiterStats {
                live_proxies: 1,
                ..LimiterStats::default()
            },
            Backend::Redis(r) => r.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}

    #[tokio::test]
    async fn limiter_and_its_check_future_are_send() {
        let l = Limiter::local(Arc::new(LocalLimiter::new(
            Arc::new(ManualClock::default()),
        )));
        assert_send_sync(&l);
        let lim = RateLimit {
            max_requests: 1,
            window_seconds: 1,
            burst: None,
        };
        assert_send(l.check("a", &lim));
        let local = Arc::new(LocalLimiter::new(Arc::new(ManualClock::default())));
        let r = Limiter::redis(
            "redis://127.0.0.1:1",
            "n",
            FailMode::Open,
            local,
            RedisLimiterOptions::default(),
        )
        .await
        .unwrap();
        assert_send(r.check("a", &lim));
    }

    #[tokio::test]
    async fn local_backend_is_the_local_limiter() {
        let clock = Arc::new(ManualClock::default());
        let l = Limiter::local(Arc::new(LocalLimiter::new(clock.clone())));
        let lim = RateLimit {
            max_requests: 2,
            window_seconds: 2,
            burst: None,
        };
        assert!(l.check("a", &lim).await.unwrap().allowed);
        assert!(l.check("a", &lim).await.unwrap().allowed);
        assert!(!l.check("a", &lim).await.unwrap().allowed);
        clock.advance_millis(1_000);
        assert!(l.check("a", &lim).await.unwrap().allowed);
        assert!(!l.is_redis());
        assert_eq!(l.stats().live_proxies, 1);
        let mut text = String::new();
        l.render(&mut text);
        assert!(text.contains("tenantgate_ratelimit_live_proxies 1"));
    }

    #[tokio::test]
    async fn bad_url_is_an_error_and_dead_redis_is_not() {
        let local = Arc::new(LocalLimiter::new(Arc::new(ManualClock::default())));
        let opts = RedisLimiterOptions::default();
        assert!(
            Limiter::redis("nope://x", "n", FailMode::Open, local.clone(), opts.clone())
                .await
                .is_err()
        );
        // Port 1 refuses: the limiter starts with its breaker open.
        let l = Limiter::redis(
            "redis://127.0.0.1:1",
            "n",
            FailMode::Closed,
            local.clone(),
            opts.clone(),
        )
        .await
        .unwrap();
        assert!(l.stats().breaker_open);
        let lim = RateLimit {
            max_requests: 10,
            window_seconds: 60,
            burst: None,
        };
        assert_eq!(l.check("t", &lim).await, Err(LimitError::Unavailable));
        let l = Limiter::redis("redis://127.0.0.1:1", "n", FailMode::Open, local, opts)
            .await
            .unwrap();
        // Alone: the whole limit, locally.
        for _ in 0..10 {
            assert!(l.check("t", &lim).await.unwrap().allowed);
        }
        let d = l.check("t", &lim).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.limit, 10);
        assert_eq!(l.stats().fallback_decisions, 11);
    }
}
