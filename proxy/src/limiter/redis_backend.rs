//! The Redis backend: one token bucket per tenant in Redis, taken from by an atomic
//! Lua script with Redis `TIME` as the clock, spent locally through leases.
//!
//! Keys (all under `key_prefix`, default `tenantgate:rl`):
//! * `<prefix>:b:<tenant>`: hash `{t: tokens (float), ts: µs of Redis TIME}`, with a
//!   TTL of twice the time to refill fully (an expired key is a full bucket);
//! * `<prefix>:proxies`: sorted set node id → last heartbeat (ms of Redis TIME);
//!   entries older than the heartbeat TTL are dropped, the count is the number of
//!   live proxies.
//!
//! Every call has a tight timeout and goes through a circuit breaker; when Redis is
//! not usable, `fail_mode` decides: a local bucket at `limit / live proxies`
//! (open) or [`super::LimitError::Unavailable`] (closed).

use super::lease::{Grant, LeaseParams, LeaseState};
use super::local::{Bucket, Decision, LocalLimiter};
use super::{LimitError, LimiterStats};
use crate::cache::Breaker;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Script};
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tenantgate_core::config::FailMode;
use tenantgate_core::domain::RateLimit;

/// Takes up to `want` tokens (after giving `give` back) from one tenant's bucket.
///
/// KEYS[1] bucket; ARGV: capacity, refill per second, want, give, ttl ms.
/// Returns {granted, whole tokens left, ms to one token, ms to full}; -1 = never.
const BUCKET_LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local give = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  if want <= 0 then
    return {0, cap, 0, 0}
  end
  tokens = cap
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate / 1000000
  ts = now
end
tokens = math.min(cap, tokens + give)
local granted = 0
if want > 0 and tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.0f', ts))
redis.call('PEXPIRE', KEYS[1], ttl)
local function ms_until(target)
  local missing = target - tokens
  if missing <= 0 then return 0 end
  if rate <= 0 then return -1 end
  return math.ceil(missing * 1000 / rate)
end
return {granted, math.floor(tokens), ms_until(1), ms_until(cap)}
"#;

/// Heartbeat: KEYS[1] the proxies set; ARGV: node id, ttl ms, 1 = alive / 0 = leaving.
/// Returns the number of live proxies.
const HEARTBEAT_LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZCARD', KEYS[1])
"#;

/// Takes up to `want` units of a quota period's counter without passing `max`.
///
/// KEYS[1] counter; ARGV: max, want, ttl ms. Returns {granted, used after}.
const QUOTA_LUA: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local max = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local grant = math.min(want, max - used)
if grant < 0 then grant = 0 end
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {grant, used}
"#;

/// The bucket script (for callers that drive Redis themselves, e.g. tests).
pub fn bucket_script() -> Script {
    Script::new(BUCKET_LUA)
}

/// TTL of a bucket key: twice the time to refill fully, at least 1 s (a day if the
/// bucket never refills).
pub fn bucket_ttl_ms(limit: &RateLimit) -> u64 {
    let rate = limit.refill_per_sec();
    if rate <= 0.0 {
        return 86_400_000;
    }
    let full_ms = limit.capacity() as f64 * 1000.0 / rate;
    ((2.0 * full_ms).ceil() as u64).max(1000)
}

/// One atomic call of the bucket script (EVALSHA, loading it on NOSCRIPT).
pub async fn bucket_take<C: redis::aio::ConnectionLike>(
    script: &Script,
    conn: &mut C,
    key: &str,
    limit: &RateLimit,
    want: u64,
    give: u64,
) -> RedisResult<Grant> {
    let r: Vec<i64> = script
        .key(key)
        .arg(limit.capacity())
        .arg(limit.refill_per_sec().to_string())
        .arg(want)
        .arg(give)
        .arg(bucket_ttl_ms(limit))
        .invoke_async(conn)
        .await?;
    let at = |i: usize| r.get(i).copied().unwrap_or(0);
    let ms = |v: i64| u64::try_from(v).ok();
    Ok(Grant {
        granted: u64::try_from(at(0)).unwrap_or(0),
        remaining: u64::try_from(at(1)).unwrap_or(0),
        ms_to_one: ms(at(2)),
        ms_to_full: ms(at(3)),
    })
}

/// Tuning of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisLimiterOptions {
    /// Prefix of every key this limiter uses.
    pub key_prefix: String,
    /// Budget of one Redis call on the request path (connect included).
    pub call_timeout: Duration,
    /// Budget of a (re)connection in the background.
    pub connect_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_cooldown: Duration,
    /// Leased tokens unspent after this long go back to the bucket.
    pub lease_lifetime: Duration,
    /// Largest share of a limit the fleet may hold in leases (see `lease_size`).
    pub max_outstanding: f64,
    /// Proxies assumed at least when sizing leases (the heartbeat count may lag).
    pub min_expected_proxies: u64,
    pub heartbeat_interval: Duration,
    /// A proxy that has not beaten for this long is no longer counted.
    pub heartbeat_ttl: Duration,
    /// A tenant idle for this long is forgotten (its lease given back first).
    pub idle_forget: Duration,
}

impl Default for RedisLimiterOptions {
    fn default() -> Self {
        RedisLimiterOptions {
            key_prefix: "tenantgate:rl".into(),
            // 5 ms is enough on an idle loopback, but a busy 2-core box sees
            // scheduling stalls of several ms; 10 ms keeps false trips rare.
            call_timeout: Duration::from_millis(10),
            connect_timeout: Duration::from_millis(250),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(1),
            lease_lifetime: Duration::from_millis(300),
            max_outstanding: 0.01,
            min_expected_proxies: 2,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(3),
            idle_forget: Duration::from_secs(60),
        }
    }
}

/// The (lazily made, replaceable) multiplexed connection.
struct ConnSlot {
    client: Client,
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// The runtime the connection's driver task lives on: the one `redis()` ran
    /// on, or the one given to `spawn_background`; else the caller's.
    handle: OnceLock<tokio::runtime::Handle>,
}

#[derive(Debug)]
enum CallError {
    Timeout,
    Connect,
    Redis(Option<u64>, redis::RedisError),
}

impl ConnSlot {
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn invalidate(&self, generation: Option<u64>) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if generation.is_none() || g.as_ref().map(|c| c.0) == generation {
            *g = None;
        }
    }

    /// The current connection, or a new one made on the limiter's runtime (the
    /// attempt finishes and is kept even if the caller gives up waiting).
    async fn get(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<(u64, MultiplexedConnection), CallError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let handle = match self.handle.get() {
            Some(h) => h.clone(),
            None => tokio::runtime::Handle::try_current().map_err(|_| CallError::Connect)?,
        };
        let me = self.clone();
        let task = handle.spawn(async move { me.connect(timeout).await });
        task.await.map_err(|_| CallError::Connect)?
    }

    async fn connect(&self, timeout: Duration) -> Result<(u64, MultiplexedConnection), CallError> {
        let _one = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let cfg = AsyncConnectionConfig::new().set_connection_timeout(timeout);
        let conn = tokio::time::timeout(
            timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .map_err(|_| CallError::Timeout)?
        .map_err(|e| CallError::Redis(None, e))?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some((generation, conn.clone()));
        Ok((generation, conn))
    }
}

/// One tenant on this proxy: its lease, and the single-flight lock of its call.
struct TenantState {
    lease: Mutex<LeaseState>,
    fetch: tokio::sync::Mutex<()>,
    /// Requests queued for (or making) the call: the call asks for that many.
    waiting: AtomicU64,
}

impl TenantState {
    fn lease(&self) -> MutexGuard<'_, LeaseState> {
        match self.lease.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Counters {
    redis_calls: AtomicU64,
    redis_errors: AtomicU64,
    fallback: AtomicU64,
    unavailable: AtomicU64,
    leased: AtomicU64,
}

const SHARDS: usize = 64;
type TenantMap = HashMap<Arc<str>, Arc<TenantState>>;

pub(crate) struct RedisLimiter {
    node_id: String,
    fail_mode: FailMode,
    local: Arc<LocalLimiter>,
    opts: RedisLimiterOptions,
    conn: Arc<ConnSlot>,
    breaker: Breaker,
    tenants: Vec<Mutex<TenantMap>>,
    hasher: std::collections::hash_map::RandomState,
    live: AtomicU64,
    background: AtomicBool,
    counters: Counters,
    bucket: Script,
    heartbeat: Script,
    bucket_prefix: String,
    proxies_key: String,
    quota: Script,
}

impl RedisLimiter {
    /// Builds the limiter without touching Redis (no runtime needed): the
    /// connection is made by the first call or by the background task.
    pub(crate) fn new_lazy(
        url: &str,
        node_id: &str,
        fail_mode: FailMode,
        local: Arc<LocalLimiter>,
        opts: RedisLimiterOptions,
    ) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
        Ok(RedisLimiter {
            node_id: node_id.to_owned(),
            fail_mode,
            local,
            conn: Arc::new(ConnSlot {
                client,
                current: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                handle: OnceLock::new(),
            }),
            breaker: Breaker::new(opts.breaker_failures, opts.breaker_cooldown),
            tenants: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            live: AtomicU64::new(1),
            background: AtomicBool::new(false),
            counters: Counters::default(),
            bucket: bucket_script(),
            heartbeat: Script::new(HEARTBEAT_LUA),
            bucket_prefix: format!("{}:b:", opts.key_prefix),
            proxies_key: format!("{}:proxies", opts.key_prefix),
            quota: Script::new(QUOTA_LUA),
            opts,
        })
    }

    /// Builds the limiter and connects on the current runtime. Starting while
    /// Redis is down works: the breaker starts open and the fail mode applies
    /// until a probe gets through.
    pub(crate) async fn new(
        url: &str,
        node_id: &str,
        fail_mode: FailMode,
        local: Arc<LocalLimiter>,
        opts: RedisLimiterOptions,
    ) -> Result<Self, String> {
        let limiter = Self::new_lazy(url, node_id, fail_mode, local, opts)?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| format!("redis limiter needs a tokio runtime: {e}"))?;
        let _ = limiter.conn.handle.set(handle);
        limiter.connect_or_trip().await;
        Ok(limiter)
    }

    async fn connect_or_trip(&self) {
        if let Err(e) = self.connect_and_load().await {
            tracing::warn!(error = ?e, "redis rate limiter: redis unreachable; fail mode applies");
            self.breaker.trip();
        }
    }

    /// Connects (with the connect budget) and loads the scripts, so the request
    /// path only ever sends one EVALSHA (a restarted Redis has no scripts).
    async fn connect_and_load(&self) -> Result<(), CallError> {
        let budget = self.opts.connect_timeout;
        let (generation, mut conn) = self.conn.get(budget).await?;
        let load = async {
            self.bucket.load_async(&mut conn).await?;
            self.heartbeat.load_async(&mut conn).await
        };
        match tokio::time::timeout(budget, load).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.conn.invalidate(Some(generation));
                Err(CallError::Redis(Some(generation), e))
            }
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// The runtime for the connection, if none is known yet.
    pub(crate) fn adopt_runtime(&self, rt: &tokio::runtime::Handle) {
        let _ = self.conn.handle.set(rt.clone());
    }

    fn shard(&self, tenant: &str) -> &Mutex<TenantMap> {
        &self.tenants[(self.hasher.hash_one(tenant) as usize) % SHARDS]
    }

    fn state(&self, tenant: &str) -> Arc<TenantState> {
        let mut map = match self.shard(tenant).lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(s) = map.get(tenant) {
            return s.clone();
        }
        let s = Arc::new(TenantState {
            lease: Mutex::new(LeaseState::new(Instant::now())),
            fetch: tokio::sync::Mutex::new(()),
            waiting: AtomicU64::new(0),
        });
        map.insert(Arc::from(tenant), s.clone());
        s
    }

    fn lease_params(&self) -> LeaseParams {
        LeaseParams {
            lifetime: self.opts.lease_lifetime,
            max_outstanding: self.opts.max_outstanding,
            proxies: self
                .live
                .load(Ordering::Relaxed)
                .max(self.opts.min_expected_proxies)
                .max(1),
        }
    }

    fn key(&self, tenant: &str) -> String {
        format!("{}{}", self.bucket_prefix, tenant)
    }

    pub(crate) async fn check(
        &self,
        tenant: &str,
        limit: &RateLimit,
    ) -> Result<Decision, LimitError> {
        if limit.capacity() == 0 {
            return Ok(Bucket::full(limit, 0).take(limit, 0, 1));
        }
        let life = self.opts.lease_lifetime;
        let st = self.state(tenant);
        if let Some(d) = st.lease().try_local(limit, Instant::now(), life, true) {
            self.counters.leased.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        // Redis is known to be down and the background task probes it: no need
        // to queue behind this tenant's in-flight call.
        if self.breaker.is_open() && self.background.load(Ordering::Acquire) {
            return self.fallback(tenant, limit);
        }
        // Single flight: one call per tenant at a time; whoever queues behind it
        // re-checks the lease the call refilled.
        st.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&st.waiting);
        let _flight = st.fetch.lock().await;
        if let Some(d) = st.lease().try_local(limit, Instant::now(), life, false) {
            self.counters.leased.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        if !self.breaker.allow(!self.background.load(Ordering::Acquire)) {
            return self.fallback(tenant, limit);
        }
        let (want, give) = {
            let waiting = st.waiting.load(Ordering::Acquire);
            st.lease()
                .plan(limit, Instant::now(), &self.lease_params(), waiting)
        };
        let key = self.key(tenant);
        let res = self
            .call(self.opts.call_timeout, |mut c| {
                let key = key.clone();
                async move { bucket_take(&self.bucket, &mut c, &key, limit, want, give).await }
            })
            .await;
        match res {
            Ok(grant) => Ok(st.lease().apply(limit, grant, Instant::now(), life)),
            // The tokens owed back are dropped: the call may have run.
            Err(()) => self.fallback(tenant, limit),
        }
    }

    /// What [`RedisLimiter::check`] would answer now, spending nothing: an
    /// unspent lease of this proxy (or a denial it repeats) on a copy of the lease,
    /// else the shared bucket as the bucket script reports it when asked for no
    /// token; the fail mode when Redis is not usable.
    pub(crate) async fn peek(
        &self,
        tenant: &str,
        limit: &RateLimit,
    ) -> Result<Decision, LimitError> {
        if limit.capacity() == 0 {
            return Ok(Bucket::full(limit, 0).take(limit, 0, 1));
        }
        let life = self.opts.lease_lifetime;
        let known = self.known_state(tenant);
        if let Some(st) = &known {
            let mut copy = st.lease().clone();
            if let Some(d) = copy.try_local(limit, Instant::now(), life, false) {
                return Ok(d);
            }
        }
        let fallback = || match self.fail_mode {
            FailMode::Closed => Err(LimitError::Unavailable),
            FailMode::Open => {
                let n = self.live.load(Ordering::Relaxed).max(1);
                let mut d = self.local.peek(tenant, &share_of(limit, n));
                d.limit = limit.max_requests;
                d.window_secs = limit.window_seconds;
                Ok(d)
            }
        };
        if self.breaker.is_open() {
            return fallback();
        }
        let key = self.key(tenant);
        let res = self
            .call(self.opts.call_timeout, |mut c| {
                let key = key.clone();
                async move { bucket_take(&self.bucket, &mut c, &key, limit, 0, 0).await }
            })
            .await;
        let Ok(grant) = res else {
            return fallback();
        };
        let held = known.map_or(0, |st| st.lease().held());
        let remaining = grant.remaining.saturating_add(held).min(limit.capacity());
        let allowed = remaining >= 1;
        let window = limit.window_seconds.max(1);
        let secs = |ms: Option<u64>| ms.map_or(window, |ms| ms.div_ceil(1000));
        Ok(Decision {
            allowed,
            limit: limit.max_requests,
            remaining: remaining.saturating_sub(u64::from(allowed)),
            reset_secs: secs(grant.ms_to_full),
            retry_after_secs: if allowed {
                0
            } else {
                secs(grant.ms_to_one).max(1)
            },
            window_secs: limit.window_seconds,
        })
    }

    /// The tenant's state if this proxy has one (a peek creates none).
    fn known_state(&self, tenant: &str) -> Option<Arc<TenantState>> {
        let map = match self.shard(tenant).lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(tenant).cloned()
    }

    /// The fleet's shared count of a quota period (explain; nothing is taken).
    pub(crate) async fn quota_peek(&self, tenant: &str, period_start: i64) -> Result<u64, ()> {
        if self.breaker.is_open() {
            return Err(());
        }
        let key = format!("{}:q:{tenant}:{period_start}", self.opts.key_prefix);
        let used: Option<u64> = self
            .call(self.opts.call_timeout, |mut c| {
                let key = key.clone();
                async move { redis::cmd("GET").arg(&key).query_async(&mut c).await }
            })
            .await?;
        Ok(used.unwrap_or(0))
    }

    /// Takes up to `want` units of the tenant's quota for the period starting at
    /// `period_start` (unix ms): `(granted, used after)`; `Err` when Redis is not
    /// usable (the caller applies the fail mode).
    pub(crate) async fn quota_take(
        &self,
        tenant: &str,
        period_start: i64,
        max: u64,
        want: u64,
        ttl_ms: u64,
    ) -> Result<(u64, u64), ()> {
        if self.breaker.is_open() && self.background.load(Ordering::Acquire) {
            return Err(());
        }
        if !self.breaker.allow(!self.background.load(Ordering::Acquire)) {
            return Err(());
        }
        let key = format!("{}:q:{tenant}:{period_start}", self.opts.key_prefix);
        let r: Vec<i64> = self
            .call(self.opts.call_timeout, |mut c| {
                let key = key.clone();
                async move {
                    self.quota
                        .key(&key)
                        .arg(max)
                        .arg(want)
                        .arg(ttl_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        let at = |i: usize| u64::try_from(r.get(i).copied().unwrap_or(0)).unwrap_or(0);
        Ok((at(0), at(1)))
    }

    pub(crate) fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    pub(crate) fn live_proxies(&self) -> u64 {
        self.live
            .load(Ordering::Relaxed)
            .max(self.opts.min_expected_proxies)
            .max(1)
    }

    fn fallback(&self, tenant: &str, limit: &RateLimit) -> Result<Decision, LimitError> {
        match self.fail_mode {
            FailMode::Closed => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(LimitError::Unavailable)
            }
            FailMode::Open => {
                self.counters.fallback.fetch_add(1, Ordering::Relaxed);
                let n = self.live.load(Ordering::Relaxed).max(1);
                let mut d = self.local.check(tenant, &share_of(limit, n));
                d.limit = limit.max_requests;
                d.window_secs = limit.window_seconds;
                Ok(d)
            }
        }
    }

    /// One Redis call with the timeout and the breaker.
    async fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, ()>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.counters.redis_calls.fetch_add(1, Ordering::Relaxed);
        let work = async {
            let (generation, conn) = self.conn.get(timeout).await?;
            f(conn)
                .await
                .map_err(|e| CallError::Redis(Some(generation), e))
        };
        let err = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                return Ok(v);
            }
            Ok(Err(e)) => e,
            Err(_) => CallError::Timeout,
        };
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        if let CallError::Redis(generation, e) = &err {
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                self.conn.invalidate(*generation);
            }
        }
        if self.breaker.failure() {
            tracing::warn!(error = ?err, "redis rate limiter: circuit open; fail mode applies");
            self.conn.invalidate(None);
        } else {
            tracing::debug!(error = ?err, "redis rate limiter call failed");
        }
        Err(())
    }

    async fn beat(&self, alive: bool, timeout: Duration) -> Result<u64, ()> {
        let ttl = u64::try_from(self.opts.heartbeat_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let n: u64 = self
            .call(timeout, |mut c| async move {
                self.heartbeat
                    .key(&self.proxies_key)
                    .arg(&self.node_id)
                    .arg(ttl)
                    .arg(if alive { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if alive {
            self.live.store(n.max(1), Ordering::Relaxed);
        }
        Ok(n)
    }

    /// Returns leased tokens to their buckets: the expired ones, or all of them.
    async fn give_back(&self, all: bool) {
        let now = Instant::now();
        let mut owed = Vec::new();
        for shard in &self.tenants {
            let map = match shard.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            for (tenant, st) in map.iter() {
                let mut lease = st.lease();
                if lease.held() == 0 {
                    continue;
                }
                let Some(limit) = lease.limit() else { continue };
                let n = lease.take_returnable(now, self.opts.lease_lifetime, all);
                if n > 0 {
                    owed.push((self.key(tenant), limit, n));
                }
            }
        }
        for chunk in owed.chunks(256) {
            let calls = chunk.iter().map(|(key, limit, n)| {
                self.call(self.opts.call_timeout, move |mut c| async move {
                    bucket_take(&self.bucket, &mut c, key, limit, 0, *n).await
                })
            });
            futures::future::join_all(calls).await;
        }
    }

    /// Forgets tenants idle for long with nothing leased.
    fn forget_idle(&self) {
        let now = Instant::now();
        for shard in &self.tenants {
            let mut map = match shard.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.retain(|_, st| {
                if Arc::strong_count(st) > 1 {
                    return true;
                }
                let lease = st.lease();
                lease.held() > 0
                    || now.saturating_duration_since(lease.last_used) < self.opts.idle_forget
            });
        }
    }

    /// Heartbeats, breaker probes, lease give-back, forgetting idle tenants; on
    /// shutdown, every lease goes back and this proxy leaves the live set.
    pub(crate) async fn run_background(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        self.background.store(true, Ordering::Release);
        if self.conn.cached().is_none() && !self.breaker.is_open() {
            self.connect_or_trip().await;
        }
        let tick = (self.opts.lease_lifetime / 3)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut last_beat: Option<Instant> = None;
        let mut last_forget = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.breaker.is_open() {
                if self.breaker.try_probe() {
                    self.probe().await;
                    last_beat = Some(Instant::now());
                }
            } else {
                if last_beat.is_none_or(|t| t.elapsed() >= self.opts.heartbeat_interval) {
                    last_beat = Some(Instant::now());
                    let _ = self.beat(true, self.opts.call_timeout).await;
                }
                if !self.breaker.is_open() {
                    self.give_back(false).await;
                }
            }
            if last_forget.elapsed() >= Duration::from_secs(5) {
                last_forget = Instant::now();
                self.forget_idle();
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                r = shutdown.changed() => if r.is_err() { break },
            }
        }
        if !self.breaker.is_open() {
            self.give_back(true).await;
            let _ = self.beat(false, self.opts.call_timeout).await;
        }
        self.background.store(false, Ordering::Release);
    }

    /// The half-open probe: reconnect and load the scripts (with the longer
    /// connect budget), then a heartbeat; its outcome closes or re-opens the
    /// breaker.
    async fn probe(&self) {
        self.conn.invalidate(None);
        if let Err(e) = self.connect_and_load().await {
            tracing::debug!(error = ?e, "redis rate limiter: probe could not connect");
            self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
            self.breaker.failure();
            return;
        }
        if self.beat(true, self.opts.call_timeout).await.is_ok() {
            tracing::info!("redis rate limiter: redis is back; circuit closed");
        }
    }

    pub(crate) fn stats(&self) -> LimiterStats {
        let c = &self.counters;
        LimiterStats {
            redis_calls: c.redis_calls.load(Ordering::Relaxed),
            redis_errors: c.redis_errors.load(Ordering::Relaxed),
            breaker_open: self.breaker.is_open(),
            fallback_decisions: c.fallback.load(Ordering::Relaxed),
            unavailable_decisions: c.unavailable.load(Ordering::Relaxed),
            leased_decisions: c.leased.load(Ordering::Relaxed),
            live_proxies: self.live.load(Ordering::Relaxed).max(1),
        }
    }
}

/// `limit / n` (rate and burst), never below one request: the local fallback's
/// share of a tenant's limit when `n` proxies are live.
pub fn share_of(limit: &RateLimit, n: u64) -> RateLimit {
    let n = n.max(1);
    RateLimit {
        max_requests: (limit.max_requests / n).max(1),
        window_seconds: limit.window_seconds,
        burst: limit.burst.map(|b| (b / n).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_twice_the_time_to_full() {
        let l = |max, window, burst| RateLimit {
            max_requests: max,
            window_seconds: window,
            burst,
        };
        assert_eq!(bucket_ttl_ms(&l(100, 60, None)), 120_000);
        assert_eq!(bucket_ttl_ms(&l(10, 10, Some(3))), 6_000);
        assert_eq!(bucket_ttl_ms(&l(1000, 1, None)), 2_000);
        assert_eq!(bucket_ttl_ms(&l(100_000, 1, None)), 2_000);
        assert_eq!(bucket_ttl_ms(&l(100, 1, Some(1))), 1_000);
        assert_eq!(bucket_ttl_ms(&l(5, 0, None)), 86_400_000);
    }

    #[test]
    fn share_never_reaches_zero() {
        let l = RateLimit {
            max_requests: 10,
            window_seconds: 60,
            burst: Some(3),
        };
        assert_eq!(share_of(&l, 2).max_requests, 5);
        assert_eq!(share_of(&l, 2).burst, Some(1));
        assert_eq!(share_of(&l, 0).max_requests, 10);
        assert_eq!(share_of(&l, 50).max_requests, 1);
        assert_eq!(share_of(&l, 50).burst, Some(1));
    }
}
