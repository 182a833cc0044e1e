//! A generic read-through cache for control-plane lookups, built so a hit never
//! awaits I/O:
//!
//! - a hit is synchronous: one hash and one probe of a sharded table, no allocation;
//! - misses are coalesced (one load per key) and "not found" is cached briefly, so a
//!   flood of unknown keys does not reach the store;
//! - an entry older than the TTL is still served while a background refresh runs
//!   (refresh-ahead, a few at a time); an entry older than `max_staleness` must be
//!   reloaded, and if the store is down then, the lookup fails closed;
//! - a shared [`Breaker`] makes misses fail fast while the store is failing;
//! - invalidation drops a key at once and again shortly after, if the entry then
//!   cached came from a load that began before the change.

mod breaker;
mod entry;
mod key;
mod stats;
#[cfg(test)]
mod tests;

pub use breaker::Breaker;
pub use entry::Shared;
pub use key::{IdKey, PairRef, ID_INLINE};
pub use stats::{render_header, CacheStats, CACHE_EVENTS};

use entry::{Entry, Slot};
use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::store::StoreError;

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

#[cfg(test)]
impl CacheSettings {
    /// Settings in milliseconds, for tests (1000 entries).
    pub(crate) fn for_tests(ttl_ms: u64, neg_ms: u64, stale_ms: u64) -> Self {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(neg_ms),
            max_staleness: Duration::from_millis(stale_ms),
            max_entries: 1000,
        }
    }
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

/// A boxed store load; built only on a miss or a refresh, never on a hit.
pub type LoadFuture<T> = Pin<Box<dyn Future<Output = Result<Option<T>, StoreError>> + Send>>;
type Loader<K, T> = Arc<dyn Fn(K) -> LoadFuture<T> + Send + Sync>;

/// One cached map with coalesced loads, negative entries and refresh-ahead.
///
/// A hit is synchronous: one hash, one probe of a sharded table under a read lock,
/// no allocation and no await.
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
/// warm-up, a restart, a burst of new keys) go stale together; refreshing them all
/// at once would queue every load on the store's small pool. A stale entry keeps
/// serving until `max_staleness` and asks again on its next hit, so the refreshes
/// spread out instead.
pub const REFRESHES_IN_FLIGHT: usize = 2;

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

    /// Whether the shared store breaker is open (misses fail fast).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
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
        // While the store is failing, misses fail fast; after the cool-down this
        // miss may be the one probe that finds out whether it is back.
        let probe = self.breaker.is_open();
        if !self.breaker.allow(true) {
            self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let guard = match self.cache.get_value_or_guard_async(key).await {
            // Loaded by the request we waited for.
            Ok(slot) => return Ok((slot.value(), self.fresh_until(&slot))),
            Err(guard) => guard,
        };
        // The load we waited for failed: do not queue up behind a store that is down.
        if !probe && self.breaker.is_open() {
            self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let started_at = Instant::now();
        match (self.loader)(key.to_owned()).await {
            Ok(v) => {
                let slot = Slot::new(v, started_at);
                let answer = (slot.value(), self.fresh_until(&slot));
                let _ = guard.insert(slot);
                self.breaker.success();
                Ok(answer)
            }
            Err(err) => {
                // Dropping the guard lets a waiter try (it fails fast on the breaker).
                self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
                self.breaker.failure();
                tracing::warn!(cache = self.name, error = %err, "control-plane load failed");
                Err(Unavailable)
            }
        }
    }

    /// A load outside the breaker: coalesced and cached like [`load`](Self::load),
    /// but neither held back by an open breaker nor counted by it, success or
    /// failure. For lookups that run on a budget of their own (API key prefixes
    /// the index does not know), so they can never make other lookups fail fast.
    pub async fn load_unmetered<Q>(
        &self,
        key: &Q,
    ) -> Result<(Option<Shared<T>>, Instant), Unavailable>
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let guard = match self.cache.get_value_or_guard_async(key).await {
            Ok(slot) => return Ok((slot.value(), self.fresh_until(&slot))),
            Err(guard) => guard,
        };
        let started_at = Instant::now();
        match (self.loader)(key.to_owned()).await {
            Ok(v) => {
                let slot = Slot::new(v, started_at);
                let answer = (slot.value(), self.fresh_until(&slot));
                let _ = guard.insert(slot);
                Ok(answer)
            }
            Err(err) => {
                self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cache = self.name, error = %err, "unmetered control-plane load failed");
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
                    breaker.success();
                    let fresh = Slot::new(v, started_at);
                    if cache.peek(&key).is_some_and(|cur| cur.same(&old)) {
                        cache.insert(key, fresh);
                    }
                }
                // Keep serving the current value until max_staleness; retry after
                // the breaker's cool-down.
                Err(err) => {
                    breaker.failure();
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

    /// Appends this cache's event counters as Prometheus samples.
    pub fn render(&self, out: &mut String) {
        self.stats.render(self.name, out);
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

impl<T: Send + Sync + 'static> Cached<(IdKey, IdKey), T> {
    /// [`get_id`](Cached::get_id) for a key of two ids.
    pub async fn get_pair(
        &self,
        a: &str,
        b: &str,
        now: Instant,
    ) -> Result<(Option<Shared<T>>, Instant), Unavailable> {
        let key = PairRef(a, b);
        match self.hit(&key, now, || key.to_owned_key()) {
            Some(v) => Ok(v),
            None => self.load(&key.to_owned_key()).await,
        }
    }
}
