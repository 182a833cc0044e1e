//! The control-plane view of the hot path: tenants, API keys, policies and rate
//! limits, cached in sharded in-memory tables so a cache hit never awaits I/O.
//!
//! - Misses are coalesced (one load per key) and "not found" is cached briefly, so a
//!   flood of random keys does not reach the store.
//! - An entry older than the TTL is still served while one background refresh runs
//!   (refresh-ahead); an entry older than `max_staleness` must be reloaded, and if
//!   the store is down then, the request fails closed.
//! - Change events (in-process bus or the store's change feed) invalidate precisely.

use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::domain::{ApiKeyRecord, Grants, Policy, RateLimit, Tenant, TenantStatus};
use tenantgate_core::store::{Change, ChangeKind, Store, StoreError};

use crate::headers::{AuthMethod, Principal};
use crate::metrics::TenantSeries;
use crate::small::SmallStr;

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

/// When a cached answer was loaded: `started_at` is when its load began (older
/// than a change ⇒ possibly stale), `loaded_at` when it finished.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    started_at: Instant,
    loaded_at: Instant,
}

impl Stamp {
    fn new(started_at: Instant) -> Self {
        Stamp {
            started_at,
            loaded_at: Instant::now(),
        }
    }
}

/// A found value with its stamp, in one allocation: a hit reaches the value in one
/// hop from the table (with 100k keys every hop is a cache miss).
struct Entry<T> {
    stamp: Stamp,
    /// A background refresh of this entry is running (one at a time).
    refreshing: AtomicBool,
    value: T,
}

/// What the table holds for a key: the value, or "known not to exist".
enum Slot<T> {
    Found(Arc<Entry<T>>),
    Missing(Arc<Stamp>),
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Slot::Found(e) => Slot::Found(e.clone()),
            Slot::Missing(s) => Slot::Missing(s.clone()),
        }
    }
}

impl<T> Slot<T> {
    fn new(value: Option<T>, started_at: Instant) -> Self {
        let stamp = Stamp::new(started_at);
        match value {
            Some(value) => Slot::Found(Arc::new(Entry {
                stamp,
                refreshing: AtomicBool::new(false),
                value,
            })),
            None => Slot::Missing(Arc::new(stamp)),
        }
    }

    fn stamp(&self) -> &Stamp {
        match self {
            Slot::Found(e) => &e.stamp,
            Slot::Missing(s) => s,
        }
    }

    fn value(&self) -> Option<Shared<T>> {
        match self {
            Slot::Found(e) => Some(Shared(e.clone())),
            Slot::Missing(_) => None,
        }
    }

    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Slot::Found(a), Slot::Found(b)) => Arc::ptr_eq(a, b),
            (Slot::Missing(a), Slot::Missing(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A cached value. It shares the table's entry (the value is stored inline in it),
/// so handing it out is one reference-count increment on a line the lookup
/// already read.
pub struct Shared<T>(Arc<Entry<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value
    }
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

/// A boxed store load; built only on a miss or a refresh, never on a hit.
pub type LoadFuture<T> = Pin<Box<dyn Future<Output = Result<Option<T>, StoreError>> + Send>>;
type Loader<K, T> = Arc<dyn Fn(K) -> LoadFuture<T> + Send + Sync>;

/// One cached map with coalesced loads, negative entries and refresh-ahead.
///
/// A hit is synchronous: one hash, one probe of a sharded table under a read lock,
/// no allocation and no await (moka's bookkeeping was ~300 ns a lookup under load).
pub struct Cached<K, T> {
    name: &'static str,
    /// Shared by all caches: after a failed load, misses fail fast for a while
    /// instead of each waiting on a store that just failed.
    breaker: Arc<Breaker>,
    cache: Arc<Cache<K, Slot<T>>>,
    loader: Loader<K, T>,
    settings: CacheSettings,
    pub stats: Arc<CacheStats>,
    /// Bumped by every invalidation.
    changes: Arc<AtomicU64>,
    /// Background refreshes in flight at most (see [`REFRESHES_IN_FLIGHT`]).
    refresh_slots: Arc<tokio::sync::Semaphore>,
}

/// Background refreshes one cache runs at a time. Entries loaded together (a
/// warm-up, a restart, a burst of new keys) go stale together: with 100k keys, one
/// refresh task each at the TTL queued 100k loads on a pool of a few connections,
/// which timed out, tripped the breaker (so misses were refused) and logged a
/// warning per load. A stale entry keeps serving until `max_staleness` and asks
/// again on its next hit, so the refreshes spread out instead.
pub const REFRESHES_IN_FLIGHT: usize = 2;

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
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

impl<K, T> Cached<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// `load` reads one key from the store: `Ok(None)` when it does not exist.
    pub fn new<F>(
        name: &'static str,
        settings: CacheSettings,
        breaker: Arc<Breaker>,
        load: F,
    ) -> Self
    where
        F: Fn(K) -> LoadFuture<T> + Send + Sync + 'static,
    {
        let capacity = usize::try_from(settings.max_entries.max(16)).unwrap_or(usize::MAX);
        Cached {
            name,
            breaker,
            cache: Arc::new(Cache::new(capacity)),
            loader: Arc::new(load),
            settings,
            stats: Arc::new(CacheStats::default()),
            changes: Arc::new(AtomicU64::new(0)),
            refresh_slots: Arc::new(tokio::sync::Semaphore::new(REFRESHES_IN_FLIGHT)),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value for `key`: from the cache when fresh enough, else loaded (one load
    /// per key at a time; the others wait for it). `key` may be a borrowed form of
    /// `K` (`&str` for `String`), so a hit allocates nothing.
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<Shared<T>>, Unavailable>
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let answer = match self.hit(key, Instant::now(), || key.to_owned()) {
            Some(v) => v,
            None => self.load(key).await?,
        };
        Ok(answer.0)
    }

    /// The cached answer when it is fresh enough (`Some((None, _))`: known not to
    /// exist), with the instant it stops being fresh (its TTL, or the negative TTL);
    /// `None` when the caller must [`load`](Self::load). Synchronous. `owned`
    /// builds the key for a refresh-ahead past the TTL.
    pub fn hit<Q>(
        &self,
        key: &Q,
        now: Instant,
        owned: impl FnOnce() -> K,
    ) -> Option<(Option<Shared<T>>, Instant)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let slot = self.cache.get(key)?;
        let age = now.saturating_duration_since(slot.stamp().loaded_at);
        let until = self.fresh_until(&slot);
        match slot {
            Slot::Missing(_) if age < self.settings.negative_ttl => {
                self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
                Some((None, until))
            }
            Slot::Found(e) if age < self.settings.max_staleness => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                if age >= self.settings.ttl {
                    self.refresh_in_background(&e, owned);
                }
                Some((Some(Shared(e)), until))
            }
            _ => {
                self.cache.remove_if(key, |cur| cur.same(&slot));
                None
            }
        }
    }

    /// A miss: loads `key` from the store, coalesced with concurrent loads of it;
    /// with the instant the answer stops being fresh.
    pub async fn load<Q>(&self, key: &Q) -> Result<(Option<Shared<T>>, Instant), Unavailable>
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if self.breaker.is_open() {
            self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let guard = match self.cache.get_value_or_guard_async(key).await {
            // Loaded by the request we waited for.
            Ok(slot) => return Ok((slot.value(), self.fresh_until(&slot))),
            Err(guard) => guard,
        };
        // The load we waited for failed: do not queue up behind a store that is down.
        if self.breaker.is_open() {
            self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let started_at = Instant::now();
        match (self.loader)(key.to_owned()).await {
            Ok(v) => {
                let slot = Slot::new(v, started_at);
                let answer = (slot.value(), self.fresh_until(&slot));
                let _ = guard.insert(slot);
                self.breaker.reset();
                Ok(answer)
            }
            Err(err) => {
                // Dropping the guard lets a waiter try (it fails fast on the breaker).
                self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
                self.breaker.trip();
                tracing::warn!(cache = self.name, error = %err, "control-plane load failed");
                Err(Unavailable)
            }
        }
    }

    fn fresh_until(&self, slot: &Slot<T>) -> Instant {
        slot.stamp().loaded_at
            + match slot {
                Slot::Found(_) => self.settings.ttl,
                Slot::Missing(_) => self.settings.negative_ttl,
            }
    }

    fn refresh_in_background(&self, e: &Arc<Entry<T>>, key: impl FnOnce() -> K) {
        if self.breaker.is_open() || e.refreshing.load(Ordering::Acquire) {
            return;
        }
        // No free slot: this entry asks again on its next hit.
        let Ok(slot) = self.refresh_slots.clone().try_acquire_owned() else {
            return;
        };
        if e.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let key = key();
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let cache = self.cache.clone();
        let load = (self.loader)(key.clone());
        let breaker = self.breaker.clone();
        let old = Slot::Found(e.clone());
        let name = self.name;
        tokio::spawn(async move {
            let _slot = slot;
            let started_at = Instant::now();
            match load.await {
                // Replace only the entry that asked for the refresh: an invalidation
                // (or a newer load) in between wins.
                Ok(v) => {
                    let fresh = Slot::new(v, started_at);
                    if cache.peek(&key).is_some_and(|cur| cur.same(&old)) {
                        cache.insert(key, fresh);
                    }
                }
                // Keep serving the current value until max_staleness; retry after
                // the breaker window.
                Err(err) => {
                    breaker.trip();
                    if let Slot::Found(e) = &old {
                        e.refreshing.store(false, Ordering::Release);
                    }
                    tracing::warn!(cache = name, error = %err, "background refresh failed");
                }
            }
        });
    }

    /// Drops `key` now, and shortly after drops it again if the entry then cached
    /// came from a load that began before the change (it may hold the old value).
    /// Entries loaded after the change stay, so they keep serving if the store
    /// goes down.
    /// Every removal also bumps the shared change counter (see
    /// [`sharing_changes`](Self::sharing_changes)), which invalidates views built
    /// from this cache.
    pub async fn invalidate(&self, key: &K) {
        let changed_at = Instant::now();
        self.cache.remove(key);
        self.changes.fetch_add(1, Ordering::AcqRel);
        let cache = self.cache.clone();
        let changes = self.changes.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if cache
                .remove_if(&key, |slot| slot.stamp().started_at < changed_at)
                .is_some()
            {
                changes.fetch_add(1, Ordering::AcqRel);
            }
        });
    }

    pub fn invalidate_all(&self) {
        self.cache.clear();
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts this cache's invalidations on `changes` (shared with other caches).
    pub fn sharing_changes(mut self, changes: Arc<AtomicU64>) -> Self {
        self.changes = changes;
        self
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }
}

impl<T: Send + Sync + 'static> Cached<IdKey, T> {
    /// The value for a borrowed id (a hit builds no key), with the instant it stops
    /// being fresh; `now` is the caller's clock reading (one per request).
    pub async fn get_id(
        &self,
        id: &str,
        now: Instant,
    ) -> Result<(Option<Shared<T>>, Instant), Unavailable> {
        match self.hit(id.as_bytes(), now, || IdKey::new(id)) {
            Some(v) => Ok(v),
            None => self.load(&IdKey::new(id)).await,
        }
    }
}

/// What the hot path keeps of an API key: the digest as bytes, the expiry and the
/// identity to inject, rendered once. No name, prefix or creation time.
#[derive(Debug)]
pub struct CachedKey {
    /// SHA-256 (or HMAC-SHA-256 with the pepper) of the full key.
    pub digest: [u8; 32],
    pub revoked: bool,
    /// Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    pub principal: Principal,
}

impl CachedKey {
    /// `None` for a record whose stored digest is not 64 hex digits or whose
    /// identity cannot be sent as headers (never usable).
    pub fn from_record(rec: &ApiKeyRecord) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&rec.digest, &mut digest).ok()?;
        Some(CachedKey {
            digest,
            revoked: rec.revoked_at.is_some(),
            expires_at_ms: rec.expires_at.map(|t| t.timestamp_millis()),
            principal: Principal::new(
                &rec.tenant_id,
                &rec.id,
                &rec.role,
                AuthMethod::ApiKey,
                Some(&rec.id),
            )
            .ok()?,
        })
    }

    /// Usable at `now_ms` (unix milliseconds): not revoked and not expired.
    pub fn is_usable_at(&self, now_ms: i64) -> bool {
        !self.revoked && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// A cache key for an id (tenant id, role, API key prefix): up to 30 bytes are
/// kept inline, so probing a table compares bytes next to the hash instead of
/// following a pointer to a heap string (a cache miss per probe with 100k keys).
pub type IdKey = SmallStr<ID_INLINE>;

pub const ID_INLINE: usize = 30;

/// A policy lookup without building the owned `(tenant, role)` key: hashes and
/// compares like the tuple of [`IdKey`]s it stands for.
struct PolicyKeyRef<'a>(&'a str, &'a str);

impl Hash for PolicyKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.as_bytes().hash(h);
        self.1.as_bytes().hash(h);
    }
}

impl Equivalent<(IdKey, IdKey)> for PolicyKeyRef<'_> {
    fn equivalent(&self, key: &(IdKey, IdKey)) -> bool {
        self.0.as_bytes() == key.0.as_bytes() && self.1.as_bytes() == key.1.as_bytes()
    }
}

/// What a request needs once it knows its tenant and role: the tenant, the role's
/// policy and the tenant's rate limit, resolved together so a request makes one
/// lookup instead of three, and laid out flat (id inline, policy compiled, limit
/// resolved) so that lookup is all it reads. Built from the three caches; valid
/// while none of them changed (a shared change counter) and until the first of its
/// parts turns stale.
#[derive(Debug)]
pub struct TenantView {
    /// The key of the per-tenant tables (limiter, meter, metrics), inline.
    pub tenant_id: IdKey,
    pub status: TenantStatus,
    /// The role's policy, compiled; `None`: the role has no policy in this tenant
    /// (everything is forbidden).
    pub grants: Option<Grants>,
    /// The tenant's own rate limit, or its tier's default.
    pub limit: RateLimit,
    /// The tenant's request counter, resolved by the first request through the view.
    pub series: TenantSeries,
    changes_seen: u64,
    fresh_until: Instant,
}

/// The caches the hot path reads.
pub struct ControlPlane {
    store: Store,
    /// Age of the last applied change when it was applied (commit → invalidation), ms.
    last_change_lag_ms: AtomicU64,
    max_change_lag_ms: AtomicU64,
    changes_applied: AtomicU64,
    pub tenants: Cached<IdKey, Tenant>,
    pub keys: Cached<IdKey, CachedKey>,
    pub policies: Cached<(IdKey, IdKey), Policy>,
    pub limits: Cached<IdKey, RateLimit>,
    views: Cache<(IdKey, IdKey), Arc<TenantView>>,
    view_stats: Arc<CacheStats>,
    /// Invalidations of the tenant, policy and limit caches (views built before
    /// the last one are stale).
    changes: Arc<AtomicU64>,
}

impl ControlPlane {
    pub fn new(store: Store, settings: CacheSettings) -> Self {
        let breaker = Arc::new(Breaker::new(Duration::from_millis(500)));
        let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
        let changes = Arc::new(AtomicU64::new(0));
        let view_capacity = usize::try_from(settings.max_entries.max(16)).unwrap_or(usize::MAX);
        ControlPlane {
            store,
            views: Cache::new(view_capacity),
            view_stats: Arc::new(CacheStats::default()),
            changes: changes.clone(),
            last_change_lag_ms: AtomicU64::new(0),
            max_change_lag_ms: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            tenants: Cached::new(
                "tenants",
                settings.clone(),
                breaker.clone(),
                move |id: IdKey| {
                    let s = s1.clone();
                    Box::pin(async move { s.get_tenant(&id.to_text()).await })
                },
            )
            .sharing_changes(changes.clone()),
            keys: Cached::new(
                "api_keys",
                settings.clone(),
                breaker.clone(),
                move |prefix: IdKey| {
                    let s = s2.clone();
                    Box::pin(async move {
                        let rec = s.find_api_key_by_prefix(&prefix.to_text()).await?;
                        Ok(rec.and_then(|r| {
                            let k = CachedKey::from_record(&r);
                            if k.is_none() {
                                tracing::warn!(key_id = %r.id, "API key with a malformed stored digest; refused");
                            }
                            k
                        }))
                    })
                },
            ),
            policies: Cached::new(
                "policies",
                settings.clone(),
                breaker.clone(),
                move |(t, r): (IdKey, IdKey)| {
                    let s = s3.clone();
                    Box::pin(async move { s.get_policy(&t.to_text(), &r.to_text()).await })
                },
            )
            .sharing_changes(changes.clone()),
            limits: Cached::new("rate_limits", settings, breaker, move |id: IdKey| {
                let s = s4.clone();
                Box::pin(async move { s.get_rate_limit(&id.to_text()).await })
            })
            .sharing_changes(changes),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // The lookups take the request's clock reading (`now`), so a request reads the
    // clock once, not once per cache.

    pub async fn tenant(
        &self,
        id: &str,
        now: Instant,
    ) -> Result<Option<Shared<Tenant>>, Unavailable> {
        Ok(self.tenants.get_id(id, now).await?.0)
    }

    pub async fn api_key(
        &self,
        prefix: &str,
        now: Instant,
    ) -> Result<Option<Shared<CachedKey>>, Unavailable> {
        Ok(self.keys.get_id(prefix, now).await?.0)
    }

    pub async fn policy(
        &self,
        tenant: &str,
        role: &str,
        now: Instant,
    ) -> Result<Option<Shared<Policy>>, Unavailable> {
        Ok(self.policy_until(tenant, role, now).await?.0)
    }

    async fn policy_until(
        &self,
        tenant: &str,
        role: &str,
        now: Instant,
    ) -> Result<(Option<Shared<Policy>>, Instant), Unavailable> {
        let owned = || (IdKey::new(tenant), IdKey::new(role));
        match self.policies.hit(&PolicyKeyRef(tenant, role), now, owned) {
            Some(v) => Ok(v),
            None => self.policies.load(&owned()).await,
        }
    }

    pub async fn rate_limit(
        &self,
        tenant: &str,
        now: Instant,
    ) -> Result<Option<Shared<RateLimit>>, Unavailable> {
        Ok(self.limits.get_id(tenant, now).await?.0)
    }
    /// The tenant, policy and limit for a request of `role` in `tenant`; `Ok(None)`
    /// when the tenant does not exist. One lookup when the view is fresh.
    pub async fn tenant_view(
        &self,
        tenant: &str,
        role: &str,
        now: Instant,
    ) -> Result<Option<Arc<TenantView>>, Unavailable> {
        // Read before the parts: a change after this makes the view stale at once.
        let changes_seen = self.changes.load(Ordering::Acquire);
        if let Some(v) = self.views.get(&PolicyKeyRef(tenant, role)) {
            if v.changes_seen == changes_seen && now < v.fresh_until {
                self.view_stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(v));
            }
        }
        self.view_stats.misses.fetch_add(1, Ordering::Relaxed);
        let (Some(t), t_until) = self.tenants.get_id(tenant, now).await? else {
            return Ok(None);
        };
        let (policy, p_until) = self.policy_until(tenant, role, now).await?;
        let (limit, l_until) = self.limits.get_id(tenant, now).await?;
        let view = Arc::new(TenantView {
            tenant_id: IdKey::new(tenant),
            status: t.status,
            grants: policy.as_deref().map(Grants::new),
            limit: limit
                .as_deref()
                .copied()
                .unwrap_or_else(|| t.tier.default_rate_limit()),
            series: TenantSeries::default(),
            changes_seen,
            fresh_until: t_until.min(p_until).min(l_until),
        });
        self.views
            .insert((IdKey::new(tenant), IdKey::new(role)), view.clone());
        Ok(Some(view))
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
                self.tenants.invalidate(&IdKey::new(&c.tenant_id)).await;
                self.limits.invalidate(&IdKey::new(&c.tenant_id)).await;
            }
            ChangeKind::ApiKey => self.keys.invalidate(&IdKey::new(&c.subject)).await,
            ChangeKind::Policy => {
                self.policies
                    .invalidate(&(IdKey::new(&c.tenant_id), IdKey::new(&c.subject)))
                    .await
            }
            ChangeKind::RateLimit => self.limits.invalidate(&IdKey::new(&c.tenant_id)).await,
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
        self.views.clear();
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

    pub fn all_stats(&self) -> [(&'static str, Arc<CacheStats>); 5] {
        [
            ("tenant_views", self.view_stats.clone()),
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

    fn settings(ttl_ms: u64, neg_ms: u64, stale_ms: u64) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(neg_ms),
            max_staleness: Duration::from_millis(stale_ms),
            max_entries: 1000,
        }
    }

    /// A cache whose store answers `value` (None: not found) for every key, or fails
    /// while `down`; every load is counted and takes `delay_ms`.
    struct Fake {
        value: Arc<AtomicU64>,
        exists: Arc<AtomicBool>,
        down: Arc<AtomicBool>,
        loads: Arc<AtomicU64>,
        /// Most loads seen running at once.
        max_in_flight: Arc<AtomicU64>,
    }

    fn cache(s: CacheSettings, delay_ms: u64) -> (Cached<String, u32>, Fake) {
        let fake = Fake {
            value: Arc::new(AtomicU64::new(1)),
            exists: Arc::new(AtomicBool::new(true)),
            down: Arc::new(AtomicBool::new(false)),
            loads: Arc::new(AtomicU64::new(0)),
            max_in_flight: Arc::new(AtomicU64::new(0)),
        };
        let (value, exists, down, loads) = (
            fake.value.clone(),
            fake.exists.clone(),
            fake.down.clone(),
            fake.loads.clone(),
        );
        let (in_flight, max_in_flight) = (Arc::new(AtomicU64::new(0)), fake.max_in_flight.clone());
        let c = Cached::new(
            "test",
            s,
            Arc::new(Breaker::new(Duration::from_millis(200))),
            move |_k: String| {
                let (value, exists, down, loads) =
                    (value.clone(), exists.clone(), down.clone(), loads.clone());
                let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                Box::pin(async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    // The row is read when the load begins; the delay is the rest of
                    // the round trip (so a change during it is not seen).
                    let row = exists
                        .load(Ordering::SeqCst)
                        .then(|| value.load(Ordering::SeqCst) as u32);
                    let failed = down.load(Ordering::SeqCst);
                    if delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    if failed {
                        return Err(StoreError::Unavailable("down".into()));
                    }
                    Ok(row)
                })
            },
        );
        (c, fake)
    }

    #[tokio::test]
    async fn misses_are_coalesced_and_hits_do_not_load() {
        let (c, fake) = cache(settings(60_000, 1_000, 600_000), 50);
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get("k").await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().as_deref(), Some(&1));
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
        for _ in 0..10 {
            assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats.hits.load(Ordering::SeqCst), 10);
        assert_eq!(c.entry_count(), 1);
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_negatively_for_a_short_time() {
        let (c, fake) = cache(settings(60_000, 100, 600_000), 0);
        fake.exists.store(false, Ordering::SeqCst);
        for _ in 0..10 {
            assert!(c.get("nope").await.unwrap().is_none());
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats.negative_hits.load(Ordering::SeqCst), 9);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The key was created meanwhile: found on the next load.
        fake.exists.store(true, Ordering::SeqCst);
        assert_eq!(c.get("nope").await.unwrap().as_deref(), Some(&1));
        assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stale_entries_are_refreshed_in_the_background_once() {
        let (c, fake) = cache(settings(50, 50, 600_000), 20);
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
        fake.value.store(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Past the TTL: the old value is served at once and one refresh starts.
        for _ in 0..20 {
            assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
        }
        // The refresh lands shortly (polled, so a loaded CI machine does not flake).
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("k").await.unwrap().as_deref() != Some(&2) {
            assert!(Instant::now() < deadline, "the refresh never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
        assert_eq!(c.stats.refreshes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn entries_that_go_stale_together_refresh_a_few_at_a_time() {
        let (c, fake) = cache(settings(300, 50, 600_000), 30);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        for k in &keys {
            assert_eq!(c.get(k.as_str()).await.unwrap().as_deref(), Some(&1));
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 20);
        fake.value.store(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        // All stale at once: every hit still answers at once, only two refresh.
        for k in &keys {
            assert_eq!(c.get(k.as_str()).await.unwrap().as_deref(), Some(&1));
        }
        assert_eq!(
            c.stats.refreshes.load(Ordering::SeqCst),
            REFRESHES_IN_FLIGHT as u64
        );
        // Later hits start the rest as slots free up, until every entry is new.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fresh = 0;
            for k in &keys {
                if c.get(k.as_str()).await.unwrap().as_deref() == Some(&2) {
                    fresh += 1;
                }
            }
            if fresh == keys.len() {
                break;
            }
            assert!(Instant::now() < deadline, "only {fresh} entries refreshed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(c.stats.refreshes.load(Ordering::SeqCst) >= 20);
        assert!(fake.max_in_flight.load(Ordering::SeqCst) <= REFRESHES_IN_FLIGHT as u64);
        // No load failed, so the breaker never opened: a miss still loads.
        assert_eq!(c.get("new").await.unwrap().as_deref(), Some(&2));
    }

    #[tokio::test]
    async fn stale_entries_serve_while_the_store_is_down_until_max_staleness() {
        let (c, fake) = cache(settings(50, 50, 400), 0);
        assert_eq!(c.get("t").await.unwrap().as_deref(), Some(&1));
        fake.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // past the TTL: still served (a background refresh fails quietly)
        assert_eq!(c.get("t").await.unwrap().as_deref(), Some(&1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // past max staleness: fail closed
        assert_eq!(c.get("t").await, Err(Unavailable));
        // an unknown key while down: fail closed, fast (breaker)
        let started = Instant::now();
        assert_eq!(c.get("other").await, Err(Unavailable));
        assert!(started.elapsed() < Duration::from_millis(100));
        // recovery
        fake.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(c.get("t").await.unwrap().as_deref(), Some(&1));
    }

    #[tokio::test]
    async fn waiters_of_a_failed_load_fail_fast() {
        let (c, fake) = cache(settings(60_000, 1_000, 600_000), 100);
        fake.down.store(true, Ordering::SeqCst);
        let c = Arc::new(c);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get("k").await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err(Unavailable));
        }
        // One slow load, not twenty in a row (a second one only if a waiter came
        // after the breaker window, on a very slow machine).
        assert!(fake.loads.load(Ordering::SeqCst) <= 2);
        assert!(started.elapsed() < Duration::from_millis(1_000));
    }

    #[tokio::test]
    async fn invalidation_forces_a_reload() {
        let (c, fake) = cache(settings(60_000, 1_000, 600_000), 0);
        assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&1));
        fake.value.store(2, Ordering::SeqCst);
        assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&1));
        c.invalidate(&"x".to_owned()).await;
        assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&2));
    }

    #[tokio::test]
    async fn a_load_that_began_before_an_invalidation_is_dropped_after_it() {
        let (c, fake) = cache(settings(60_000, 1_000, 600_000), 100);
        let c = Arc::new(c);
        let loading = {
            let c = c.clone();
            tokio::spawn(async move { c.get("x").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The change lands while the old value is being read.
        fake.value.store(2, Ordering::SeqCst);
        c.invalidate(&"x".to_owned()).await;
        // The load read the old row: it answers (and is cached) with it...
        assert_eq!(loading.await.unwrap().unwrap().as_deref(), Some(&1));
        // ...until the re-check after the change drops it (polled: no flake on a
        // slow machine), and the next load reads the new row.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("x").await.unwrap().as_deref() != Some(&2) {
            assert!(
                Instant::now() < deadline,
                "the stale load was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn borrowed_keys_hash_and_compare_like_the_owned_ones() {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        let owned = (IdKey::new("acme"), IdKey::new("developer"));
        assert_eq!(
            s.hash_one(PolicyKeyRef("acme", "developer")),
            s.hash_one(&owned)
        );
        assert!(PolicyKeyRef("acme", "developer").equivalent(&owned));
        assert!(!PolicyKeyRef("acmed", "eveloper").equivalent(&owned));
        assert!(!PolicyKeyRef("acme", "developers").equivalent(&owned));
        for id in [
            "",
            "a",
            &"x".repeat(30),
            &"y".repeat(31),
            &"z".repeat(200),
            "ü-tenant",
        ] {
            let k = IdKey::new(id);
            assert_eq!(k.as_bytes(), id.as_bytes());
            assert_eq!(k.to_text(), id);
            assert_eq!(s.hash_one(id.as_bytes()), s.hash_one(&k));
            assert!(id.as_bytes().equivalent(&k));
            assert_eq!(k, IdKey::new(id));
        }
        assert!(matches!(IdKey::new(&"x".repeat(30)), IdKey::Inline(30, _)));
        assert!(matches!(IdKey::new(&"x".repeat(31)), IdKey::Heap(_)));
        assert_ne!(IdKey::new("ab"), IdKey::new("abc"));
        assert!(!"ab".as_bytes().equivalent(&IdKey::new("abc")));
    }

    #[tokio::test]
    async fn id_keyed_caches_find_what_they_loaded() {
        let c: Cached<IdKey, String> = Cached::new(
            "ids",
            settings(60_000, 1_000, 600_000),
            Arc::new(Breaker::new(Duration::from_millis(200))),
            |k: IdKey| Box::pin(async move { Ok(Some(format!("v-{}", k.to_text()))) }),
        );
        let long = "t".repeat(40);
        for id in ["acme", long.as_str()] {
            let now = Instant::now();
            assert_eq!(
                c.get_id(id, now).await.unwrap().0.unwrap().as_str(),
                format!("v-{id}")
            );
            assert_eq!(
                c.get_id(id, now).await.unwrap().0.unwrap().as_str(),
                format!("v-{id}")
            );
        }
        assert_eq!(c.stats.misses.load(Ordering::SeqCst), 2);
        assert_eq!(c.stats.hits.load(Ordering::SeqCst), 2);
        c.invalidate(&IdKey::new("acme")).await;
        assert!(c.get_id("acme", Instant::now()).await.unwrap().0.is_some());
        assert_eq!(c.stats.misses.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn cached_keys_keep_the_digest_as_bytes_and_refuse_bad_ones() {
        let now = chrono::Utc::now();
        let mut rec = ApiKeyRecord {
            id: "k1".into(),
            tenant_id: "acme".into(),
            prefix: "abcd".into(),
            digest: "ab".repeat(32),
            name: "n".into(),
            role: "developer".into(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(60)),
            revoked_at: None,
        };
        let k = CachedKey::from_record(&rec).unwrap();
        assert_eq!(k.digest, [0xab; 32]);
        let now_ms = now.timestamp_millis();
        assert!(k.is_usable_at(now_ms));
        assert!(k.is_usable_at(now_ms + 59_999));
        assert!(!k.is_usable_at(now_ms + 60_000));
        assert_eq!(k.principal.tenant_id(), "acme");
        assert_eq!(k.principal.api_key_id(), Some("k1"));
        rec.revoked_at = Some(now);
        assert!(!CachedKey::from_record(&rec).unwrap().is_usable_at(now_ms));
        rec.revoked_at = None;
        rec.role = "dev\nx-tenant-id: evil".into();
        assert!(CachedKey::from_record(&rec).is_none());
        rec.role = "developer".into();
        rec.digest = "zz".repeat(32);
        assert!(CachedKey::from_record(&rec).is_none());
        rec.digest = "ab".repeat(31);
        assert!(CachedKey::from_record(&rec).is_none());
    }

    /// Views over a real (SQLite) store: one lookup when fresh, rebuilt after each
    /// change event that touches the tenant, its policies or its limit.
    #[tokio::test]
    async fn tenant_views_follow_change_events() {
        use tenantgate_core::domain::{Permission, Tier};
        use tenantgate_core::store::{NewTenant, TenantPatch};
        use tenantgate_core::testing::TestDb;
        let db = TestDb::sqlite();
        let store = Store::open(&db.url, 2).await.unwrap();
        let mut events = store.subscribe();
        store
            .create_tenant(&NewTenant {
                id: "acme".into(),
                name: "Acme".into(),
                tier: Tier::Pro,
                admin_user: None,
            })
            .await
            .unwrap();
        while events.try_recv().is_ok() {}
        let cp = ControlPlane::new(store.clone(), settings(60_000, 1_000, 600_000));
        async fn view(cp: &ControlPlane) -> Arc<TenantView> {
            cp.tenant_view("acme", "developer", Instant::now())
                .await
                .unwrap()
                .unwrap()
        }
        // Applies every change the store announced.
        async fn apply_all(
            cp: &ControlPlane,
            events: &mut tokio::sync::broadcast::Receiver<Change>,
        ) -> usize {
            let mut n = 0;
            while let Ok(c) = events.try_recv() {
                cp.apply(&c).await;
                n += 1;
            }
            n
        }

        let v1 = view(&cp).await;
        assert_eq!(v1.status, TenantStatus::Active);
        let v1b = view(&cp).await;
        assert!(Arc::ptr_eq(&v1, &v1b), "a fresh view is served as is");
        assert_eq!(cp.view_stats.hits.load(Ordering::SeqCst), 1);
        assert!(cp
            .tenant_view("nobody", "developer", Instant::now())
            .await
            .unwrap()
            .is_none());

        assert_ne!(v1.limit.max_requests, 7);
        assert_eq!(v1.tenant_id.as_str(), "acme");
        let rl = RateLimit {
            max_requests: 7,
            window_seconds: 60,
            burst: None,
        };
        store.put_rate_limit("acme", &rl).await.unwrap();
        assert!(apply_all(&cp, &mut events).await > 0);
        let v2 = view(&cp).await;
        assert_eq!(v2.limit, rl);

        store
            .update_tenant(
                "acme",
                &TenantPatch {
                    name: None,
                    tier: None,
                    status: Some(TenantStatus::Suspended),
                },
            )
            .await
            .unwrap();
        assert!(apply_all(&cp, &mut events).await > 0);
        assert_eq!(view(&cp).await.status, TenantStatus::Suspended);

        let only_delete = Policy {
            role: "developer".into(),
            permissions: vec![Permission::new("delete", "*")],
        };
        store.put_policy("acme", &only_delete).await.unwrap();
        assert!(apply_all(&cp, &mut events).await > 0);
        let v4 = view(&cp).await;
        let p = v4.grants.as_ref().unwrap();
        assert!(p.allows(tenantgate_core::domain::Action::Delete, "orders"));
        assert!(!p.allows(tenantgate_core::domain::Action::Read, "orders"));

        // An unrelated tenant's change also retires views (one shared counter):
        // they are rebuilt from the caches, with the same content.
        cp.apply(&Change {
            id: 0,
            kind: ChangeKind::Tenant,
            tenant_id: "other".into(),
            subject: String::new(),
            created_at_ms: 0,
        })
        .await;
        let v5 = view(&cp).await;
        assert!(!Arc::ptr_eq(&v4, &v5));
        assert_eq!(v5.grants, v4.grants);

        store.close().await;
        db.cleanup().await;
    }
}
