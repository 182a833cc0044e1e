//! The control-plane view of the hot path: tenants, API keys, policies and rate
//! limits, cached in moka so a cache hit never awaits I/O.
//!
//! - Misses are coalesced (one load per key) and "not found" is cached briefly, so a
//!   flood of random keys does not reach the store.
//! - An entry older than the TTL is still served while one background refresh runs
//!   (refresh-ahead); an entry older than `max_staleness` must be reloaded, and if
//!   the store is down then, the request fails closed.
//! - Change events (in-process bus or the store's change feed) invalidate precisely.

use moka::future::Cache;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::domain::{ApiKeyRecord, Policy, RateLimit, Tenant};
use tenantgate_core::store::{Change, ChangeKind, Store, StoreError};

/// The store could not answer and nothing usable was cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control plane unavailable")]
pub struct Unavailable;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_staleness: Duration,
    pub max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(2),
            max_staleness: Duration::from_secs(600),
            max_entries: 200_000,
        }
    }
}

struct Entry<T> {
    value: Option<Arc<T>>,
    /// When the load that produced this entry began (older than a change ⇒ stale).
    started_at: Instant,
    loaded_at: Instant,
}

/// Hit/miss counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
    pub load_errors: AtomicU64,
    pub refreshes: AtomicU64,
}

/// One cached map with coalesced loads, negative entries and refresh-ahead.
pub struct Cached<K, T> {
    name: &'static str,
    /// Shared by all caches: until this instant (ms since `epoch`) misses fail fast
    /// instead of each waiting on a store that just failed.
    breaker: Arc<Breaker>,
    cache: Cache<K, Arc<Entry<T>>>,
    refreshing: moka::sync::Cache<K, ()>,
    settings: CacheSettings,
    pub stats: Arc<CacheStats>,
}

/// After a failed load, misses fail fast for a short while (the store is down;
/// one background probe per window finds out when it is back).
#[derive(Debug)]
pub struct Breaker {
    epoch: Instant,
    open_until_ms: AtomicU64,
    window: Duration,
}

impl Breaker {
    pub fn new(window: Duration) -> Self {
        Breaker {
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            window,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    fn trip(&self) {
        let until = self.now_ms() + u64::try_from(self.window.as_millis()).unwrap_or(1_000);
        self.open_until_ms.store(until, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.open_until_ms.store(0, Ordering::Relaxed);
    }
}

impl<K, T> Cached<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    pub fn new(name: &'static str, settings: CacheSettings, breaker: Arc<Breaker>) -> Self {
        Cached {
            name,
            breaker,
            cache: Cache::builder().max_capacity(settings.max_entries).build(),
            refreshing: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            settings,
            stats: Arc::new(CacheStats::default()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value for `key`; `load` runs only on a miss (coalesced) or in a background
    /// refresh of a stale entry.
    pub async fn get<F, Fut>(&self, key: &K, load: F) -> Result<Option<Arc<T>>, Unavailable>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, StoreError>> + Send + 'static,
    {
        if let Some(e) = self.cache.get(key).await {
            let age = e.loaded_at.elapsed();
            match &e.value {
                None if age < self.settings.negative_ttl => {
                    self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Some(v) if age < self.settings.max_staleness => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    if age >= self.settings.ttl {
                        self.refresh_in_background(key.clone(), load);
                    }
                    return Ok(Some(v.clone()));
                }
                _ => {
                    self.cache.invalidate(key).await;
                }
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if self.breaker.is_open() {
            self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let stats = self.stats.clone();
        let res = self
            .cache
            .try_get_with(key.clone(), async move {
                let started_at = Instant::now();
                match load().await {
                    Ok(v) => Ok(Arc::new(Entry {
                        value: v.map(Arc::new),
                        started_at,
                        loaded_at: Instant::now(),
                    })),
                    Err(e) => {
                        stats.load_errors.fetch_add(1, Ordering::Relaxed);
                        Err(e)
                    }
                }
            })
            .await;
        match res {
            Ok(e) => {
                self.breaker.reset();
                Ok(e.value.clone())
            }
            Err(err) => {
                self.breaker.trip();
                tracing::warn!(cache = self.name, error = %err, "control-plane load failed");
                Err(Unavailable)
            }
        }
    }

    fn refresh_in_background<F, Fut>(&self, key: K, load: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, StoreError>> + Send + 'static,
    {
        if self.refreshing.contains_key(&key) {
            return;
        }
        self.refreshing.insert(key.clone(), ());
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let cache = self.cache.clone();
        let refreshing = self.refreshing.clone();
        let name = self.name;
        tokio::spawn(async move {
            let started_at = Instant::now();
            match load().await {
                Ok(v) => {
                    cache
                        .insert(
                            key.clone(),
                            Arc::new(Entry {
                                value: v.map(Arc::new),
                                started_at,
                                loaded_at: Instant::now(),
                            }),
                        )
                        .await
                }
                // Keep serving the current value until max_staleness.
                Err(e) => tracing::warn!(cache = name, error = %e, "background refresh failed"),
            }
            refreshing.invalidate(&key);
        });
    }

    /// Drops `key` now, and shortly after drops it again if the entry then cached
    /// came from a load that began before the change (it may hold the old value).
    /// Entries loaded after the change stay, so they keep serving if the store
    /// goes down.
    pub async fn invalidate(&self, key: &K) {
        let changed_at = Instant::now();
        self.cache.invalidate(key).await;
        let cache = self.cache.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(e) = cache.get(&key).await {
                if e.started_at < changed_at {
                    cache.invalidate(&key).await;
                }
            }
        });
    }

    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// The caches the hot path reads.
pub struct ControlPlane {
    store: Store,
    /// Age of the last applied change when it was applied (commit → invalidation), ms.
    last_change_lag_ms: AtomicU64,
    max_change_lag_ms: AtomicU64,
    changes_applied: AtomicU64,
    pub tenants: Cached<String, Tenant>,
    pub keys: Cached<String, ApiKeyRecord>,
    pub policies: Cached<(String, String), Policy>,
    pub limits: Cached<String, RateLimit>,
}

impl ControlPlane {
    pub fn new(store: Store, settings: CacheSettings) -> Self {
        let breaker = Arc::new(Breaker::new(Duration::from_millis(500)));
        ControlPlane {
            store,
            last_change_lag_ms: AtomicU64::new(0),
            max_change_lag_ms: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            tenants: Cached::new("tenants", settings.clone(), breaker.clone()),
            keys: Cached::new("api_keys", settings.clone(), breaker.clone()),
            policies: Cached::new("policies", settings.clone(), breaker.clone()),
            limits: Cached::new("rate_limits", settings, breaker),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn tenant(&self, id: &str) -> Result<Option<Arc<Tenant>>, Unavailable> {
        let store = self.store.clone();
        let key = id.to_owned();
        let k2 = key.clone();
        self.tenants
            .get(&key, move || {
                let store = store.clone();
                let k = k2.clone();
                async move { store.get_tenant(&k).await }
            })
            .await
    }

    pub async fn api_key(&self, prefix: &str) -> Result<Option<Arc<ApiKeyRecord>>, Unavailable> {
        let store = self.store.clone();
        let key = prefix.to_owned();
        let k2 = key.clone();
        self.keys
            .get(&key, move || {
                let store = store.clone();
                let k = k2.clone();
                async move { store.find_api_key_by_prefix(&k).await }
            })
            .await
    }

    pub async fn policy(
        &self,
        tenant: &str,
        role: &str,
    ) -> Result<Option<Arc<Policy>>, Unavailable> {
        let store = self.store.clone();
        let key = (tenant.to_owned(), role.to_owned());
        let k2 = key.clone();
        self.policies
            .get(&key, move || {
                let store = store.clone();
                let (t, r) = k2.clone();
                async move { store.get_policy(&t, &r).await }
            })
            .await
    }

    pub async fn rate_limit(&self, tenant: &str) -> Result<Option<Arc<RateLimit>>, Unavailable> {
        let store = self.store.clone();
        let key = tenant.to_owned();
        let k2 = key.clone();
        self.limits
            .get(&key, move || {
                let store = store.clone();
                let k = k2.clone();
                async move { store.get_rate_limit(&k).await }
            })
            .await
    }

    /// Applies one change event. Returns true when signing keys changed.
    pub async fn apply(&self, c: &Change) -> bool {
        let lag = u64::try_from(tenantgate_core::time::now_ms().saturating_sub(c.created_at_ms))
            .unwrap_or(0);
        self.last_change_lag_ms.store(lag, Ordering::Relaxed);
        self.max_change_lag_ms.fetch_max(lag, Ordering::Relaxed);
        self.changes_applied.fetch_add(1, Ordering::Relaxed);
        match c.kind {
            ChangeKind::Tenant => {
                self.tenants.invalidate(&c.tenant_id).await;
                self.limits.invalidate(&c.tenant_id).await;
            }
            ChangeKind::ApiKey => self.keys.invalidate(&c.subject).await,
            ChangeKind::Policy => {
                self.policies
                    .invalidate(&(c.tenant_id.clone(), c.subject.clone()))
                    .await
            }
            ChangeKind::RateLimit => self.limits.invalidate(&c.tenant_id).await,
            ChangeKind::User => {}
            ChangeKind::SigningKey => return true,
        }
        false
    }

    /// After missing events (a lagged bus, a reconnect): forget everything.
    pub fn invalidate_all(&self) {
        self.tenants.invalidate_all();
        self.keys.invalidate_all();
        self.policies.invalidate_all();
        self.limits.invalidate_all();
    }

    /// Prometheus text for change propagation: how stale the caches can be.
    pub fn render_prometheus(&self) -> String {
        let secs = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / 1000.0;
        format!(
            "# HELP tenantgate_proxy_change_lag_seconds Age of the last control-plane change when this proxy applied it\n\
             # TYPE tenantgate_proxy_change_lag_seconds gauge\n\
             tenantgate_proxy_change_lag_seconds {}\n\
             # HELP tenantgate_proxy_change_lag_max_seconds Largest change age seen at application since start\n\
             # TYPE tenantgate_proxy_change_lag_max_seconds gauge\n\
             tenantgate_proxy_change_lag_max_seconds {}\n\
             # HELP tenantgate_proxy_changes_applied_total Control-plane changes applied to the caches\n\
             # TYPE tenantgate_proxy_changes_applied_total counter\n\
             tenantgate_proxy_changes_applied_total {}\n",
            secs(&self.last_change_lag_ms),
            secs(&self.max_change_lag_ms),
            self.changes_applied.load(Ordering::Relaxed)
        )
    }

    pub fn all_stats(&self) -> [(&'static str, Arc<CacheStats>); 4] {
        [
            (self.tenants.name(), self.tenants.stats.clone()),
            (self.keys.name(), self.keys.stats.clone()),
            (self.policies.name(), self.policies.stats.clone()),
            (self.limits.name(), self.limits.stats.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn settings(ttl_ms: u64, neg_ms: u64, stale_ms: u64) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(neg_ms),
            max_staleness: Duration::from_millis(stale_ms),
            max_entries: 1000,
        }
    }

    fn cache(s: CacheSettings) -> Cached<String, u32> {
        Cached::new(
            "test",
            s,
            Arc::new(Breaker::new(Duration::from_millis(200))),
        )
    }

    #[tokio::test]
    async fn misses_are_coalesced_and_hits_do_not_load() {
        let c = Arc::new(cache(settings(60_000, 1_000, 600_000)));
        let loads = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let c = c.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                c.get(&"k".to_owned(), move || {
                    let loads = loads.clone();
                    async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Some(7))
                    }
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().as_deref(), Some(&7));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_negatively_for_a_short_time() {
        let c = cache(settings(60_000, 100, 600_000));
        let loads = Arc::new(AtomicU64::new(0));
        let load = {
            let loads = loads.clone();
            move || {
                let loads = loads.clone();
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                }
            }
        };
        for _ in 0..10 {
            assert!(c
                .get(&"nope".to_owned(), load.clone())
                .await
                .unwrap()
                .is_none());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats.negative_hits.load(Ordering::SeqCst), 9);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(c.get(&"nope".to_owned(), load).await.unwrap().is_none());
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stale_entries_serve_while_the_store_is_down_until_max_staleness() {
        let c = cache(settings(50, 50, 400));
        let down = Arc::new(AtomicBool::new(false));
        let load = {
            let down = down.clone();
            move || {
                let down = down.clone();
                async move {
                    if down.load(Ordering::SeqCst) {
                        Err(StoreError::Unavailable("down".into()))
                    } else {
                        Ok(Some(1))
                    }
                }
            }
        };
        let k = "t".to_owned();
        assert_eq!(c.get(&k, load.clone()).await.unwrap().as_deref(), Some(&1));
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // past the TTL: still served (a background refresh fails quietly)
        assert_eq!(c.get(&k, load.clone()).await.unwrap().as_deref(), Some(&1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // past max staleness: fail closed
        assert_eq!(c.get(&k, load.clone()).await, Err(Unavailable));
        // an unknown key while down: fail closed, fast (breaker)
        let started = Instant::now();
        assert_eq!(
            c.get(&"other".to_owned(), load.clone()).await,
            Err(Unavailable)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // recovery
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(c.get(&k, load).await.unwrap().as_deref(), Some(&1));
    }

    #[tokio::test]
    async fn invalidation_forces_a_reload() {
        let c = cache(settings(60_000, 1_000, 600_000));
        let v = Arc::new(AtomicU64::new(1));
        let load = {
            let v = v.clone();
            move || {
                let v = v.clone();
                async move { Ok(Some(v.load(Ordering::SeqCst) as u32)) }
            }
        };
        let k = "x".to_owned();
        assert_eq!(c.get(&k, load.clone()).await.unwrap().as_deref(), Some(&1));
        v.store(2, Ordering::SeqCst);
        assert_eq!(c.get(&k, load.clone()).await.unwrap().as_deref(), Some(&1));
        c.invalidate(&k).await;
        assert_eq!(c.get(&k, load).await.unwrap().as_deref(), Some(&2));
    }
}
