//! API keys: `tg_<prefix>_<secret>`. Looked up by the public prefix (cached), the
//! digest of the whole key compared in constant time. A prefix the proxy's prefix
//! index does not know is refused without a store lookup (see [`KeyIndex`]), so a
//! flood of random keys cannot crowd out the lookups of real ones.

use super::key_index::{FeedWait, KeyIndex, Verdict, UNKNOWN_LOOKUP_TIMEOUT};
use super::principal::{AuthMethod, Principal};
use crate::cache::{Breaker, CacheSettings, Cached, IdKey, Shared};
use crate::reject::Reject;
use ipnet::IpNet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::domain::{ApiKeyRecord, Grants, Policy, RateLimit};
use tenantgate_core::secrets::{self, ApiKeyDigester};
use tenantgate_core::store::{Change, ChangeKind, Store};

/// A presented key, parsed and digested while its header was at hand: only the
/// lookup prefix (inline) and the digest are kept across the lookup's await.
#[derive(Debug)]
pub struct ApiKeyCredential {
    prefix: IdKey,
    digest: [u8; 32],
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
    /// The key's own limit, scopes and allow-list; `None` for a plain key (one
    /// pointer test on the hot path).
    pub rules: Option<Box<KeyRules>>,
}

/// A key's own restrictions, compiled once when the key is cached.
#[derive(Debug)]
pub struct KeyRules {
    /// The key's bucket in the limiter: `k:<key id>` (tenant ids never hold `:`,
    /// so it cannot meet a tenant's bucket).
    pub bucket: Box<str>,
    pub rate_limit: Option<RateLimit>,
    /// What the scopes allow (the role's policy must allow it too).
    pub scopes: Option<Grants>,
    /// Client addresses the key may be used from.
    pub allowed: Option<Box<[IpNet]>>,
}

impl KeyRules {
    fn new(rec: &ApiKeyRecord) -> Option<Box<Self>> {
        let e = &rec.extras;
        if e.is_empty() {
            return None;
        }
        let allowed = e.allowed_cidrs.as_ref().map(|list| {
            list.iter()
                .filter_map(|c| match parse_cidr(c) {
                    Some(n) => Some(n),
                    None => {
                        tracing::warn!(key_id = %rec.id, cidr = %c, "unparseable allowed CIDR ignored");
                        None
                    }
                })
                .collect()
        });
        Some(Box::new(KeyRules {
            bucket: format!("k:{}", rec.id).into(),
            rate_limit: e.rate_limit,
            scopes: e.scopes.as_ref().map(|p| {
                Grants::new(&Policy {
                    role: String::new(),
                    permissions: p.clone(),
                })
            }),
            allowed,
        }))
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Whether `client` is in `list` (an unknown client address is in no list).
pub fn ip_allowed(list: &[IpNet], client: Option<std::net::IpAddr>) -> bool {
    client.is_some_and(|ip| list.iter().any(|n| n.contains(&ip)))
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
            rules: KeyRules::new(rec),
        })
    }

    /// Usable at `now_ms` (unix milliseconds): not revoked and not expired.
    pub fn is_usable_at(&self, now_ms: i64) -> bool {
        !self.revoked && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// The API-key authenticator: the keys cache, the prefix index and the digest
/// function.
pub struct ApiKeys {
    pub cache: Cached<IdKey, CachedKey>,
    pub index: Arc<KeyIndex>,
    store: Store,
    digester: ApiKeyDigester,
}

impl ApiKeys {
    pub fn new(
        store: Store,
        settings: CacheSettings,
        breaker: Arc<Breaker>,
        digester: ApiKeyDigester,
    ) -> Self {
        let loader_store = store.clone();
        let cache = Cached::new("api_keys", settings, breaker, move |prefix: IdKey| {
            let s = loader_store.clone();
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
        });
        // Keys this process creates (the admin API in `up`) are in the index before
        // their creation returns, so they never depend on the budget.
        let index = Arc::new(KeyIndex::new());
        let hooked = Arc::downgrade(&index);
        store.on_change(Arc::new(move |c: &Change| {
            if c.kind == ChangeKind::ApiKey {
                if let Some(index) = hooked.upgrade() {
                    index.insert(&c.subject);
                }
            }
        }));
        ApiKeys {
            cache,
            index,
            store,
            digester,
        }
    }

    /// Loads the prefix index from the store (adding to what it knows). Until the
    /// first load succeeds every lookup goes to the store as usual.
    pub async fn load_index(&self) -> Result<(), tenantgate_core::StoreError> {
        let prefixes = self.store.live_api_key_prefixes().await?;
        self.index.extend(prefixes.iter().map(String::as_str));
        tracing::info!(prefixes = self.index.len(), "API key prefix index loaded");
        Ok(())
    }

    /// [`load_index`](Self::load_index) until it succeeds (backing off up to 5 s).
    pub async fn load_index_until_ok(&self) {
        let mut backoff = std::time::Duration::from_millis(200);
        while let Err(e) = self.load_index().await {
            tracing::warn!(error = %e, "loading the API key prefix index failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Appends the cache's and the index's counters as Prometheus samples.
    pub fn render(&self, out: &mut String) {
        self.cache.render(out);
        self.index.render(out);
    }

    /// Parses and digests a presented key.
    pub fn credential(&self, key: &str) -> Result<ApiKeyCredential, Reject> {
        let (prefix, _) = secrets::parse_api_key(key).ok_or(Reject::InvalidApiKey)?;
        Ok(ApiKeyCredential {
            prefix: IdKey::new(prefix),
            digest: self.digester.digest(key),
        })
    }

    pub async fn authenticate(
        &self,
        cred: ApiKeyCredential,
        now: Instant,
        now_ms: i64,
    ) -> Result<Shared<CachedKey>, Reject> {
        let prefix = cred.prefix.as_str();
        let found = match self
            .cache
            .hit(prefix.as_bytes(), now, || cred.prefix.clone())
        {
            Some((found, _)) => found,
            None => self.miss(&cred.prefix).await?,
        };
        let rec = found.ok_or(Reject::InvalidApiKey)?;
        if !secrets::ct_eq(&cred.digest, &rec.digest) || !rec.is_usable_at(now_ms) {
            return Err(Reject::InvalidApiKey);
        }
        Ok(rec)
    }

    /// Not cached: a known prefix (or any, while the index is not loaded) is
    /// loaded as usual; an unknown one is refused, unless the small budget for
    /// unknown prefixes allows a lookup outside the breaker (a key created an
    /// instant ago, whose change has not arrived yet).
    async fn miss(&self, prefix: &IdKey) -> Result<Option<Shared<CachedKey>>, Reject> {
        match self.index.check(prefix.as_str()) {
            Verdict::Known | Verdict::NotLoaded => self.load(prefix).await,
            // The store is failing (for lookups of known keys): fail closed, as for
            // any answer that is not cached.
            Verdict::Unknown if self.cache.breaker_open() => Err(Reject::Unavailable),
            Verdict::Unknown => {
                if let Some(_permit) = self.index.try_budget() {
                    self.index.looked_up.fetch_add(1, Ordering::Relaxed);
                    let lookup = self.cache.load_unmetered(prefix);
                    return match tokio::time::timeout(UNKNOWN_LOOKUP_TIMEOUT, lookup).await {
                        Ok(Ok((Some(found), _))) => {
                            self.index.found_late.fetch_add(1, Ordering::Relaxed);
                            self.index.insert(prefix.as_str());
                            Ok(Some(found))
                        }
                        Ok(Ok((None, _))) => Ok(None),
                        // The store did not answer: we cannot tell.
                        _ => Err(Reject::Unavailable),
                    };
                }
                // Budget spent (a flood, most likely): wait for the change feed
                // instead, which costs the store nothing.
                let arrived = tenantgate_core::time::now_ms();
                match self.index.wait_for_feed(arrived).await {
                    FeedWait::CaughtUp if self.index.check(prefix.as_str()) == Verdict::Known => {
                        self.load(prefix).await
                    }
                    FeedWait::TimedOut => Err(Reject::Unavailable),
                    _ => {
                        self.index.refused.fetch_add(1, Ordering::Relaxed);
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A lookup of a known prefix, through the breaker.
    async fn load(&self, prefix: &IdKey) -> Result<Option<Shared<CachedKey>>, Reject> {
        self.cache
            .load(prefix)
            .await
            .map(|(found, _)| found)
            .map_err(|_| Reject::Unavailable)
    }

    /// Drops a changed key (the change's subject is its prefix) and remembers its
    /// prefix in the index.
    pub async fn apply(&self, c: &Change) {
        if c.kind == ChangeKind::ApiKey {
            self.index.insert(&c.subject);
            self.cache.invalidate(&IdKey::new(&c.subject)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            extras: Default::default(),
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

    async fn store_with_tenant() -> (Store, tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/keys.db", dir.path().display());
        let store = Store::open(&url, 2).await.unwrap();
        store
            .create_tenant(&tenantgate_core::store::NewTenant {
                id: "acme".into(),
                name: "Acme".into(),
                tier: tenantgate_core::domain::Tier::Pro,
                admin_user: None,
            })
            .await
            .unwrap();
        (store, dir, url)
    }

    async fn new_key(store: &Store) -> String {
        let (rec, key) = secrets::mint_api_key("acme", "k".into(), "developer".into(), None, None);
        store.create_api_key(&rec).await.unwrap();
        key
    }

    fn random_key() -> String {
        let hex: String = secrets::random_bytes::<6>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "tg_{hex}_{}",
            secrets::random_token(secrets::API_KEY_SECRET_LEN)
        )
    }

    async fn auth(keys: &ApiKeys, key: &str) -> Result<Shared<CachedKey>, Reject> {
        let cred = keys.credential(key)?;
        keys.authenticate(cred, Instant::now(), chrono::Utc::now().timestamp_millis())
            .await
    }

    #[tokio::test]
    async fn unknown_prefixes_are_refused_without_the_store_and_never_trip_the_breaker() {
        let (store, _dir, url) = store_with_tenant().await;
        let known = new_key(&store).await;
        let breaker = Arc::new(Breaker::new(1, std::time::Duration::from_secs(60)));
        let keys = ApiKeys::new(
            store.clone(),
            CacheSettings::default(),
            breaker.clone(),
            ApiKeyDigester::new(None),
        );
        // Before the index loads, unknown keys are looked up as before.
        assert!(matches!(
            auth(&keys, &random_key()).await,
            Err(Reject::InvalidApiKey)
        ));
        keys.load_index().await.unwrap();
        assert_eq!(keys.index.len(), 1);
        // No change follower here: the feed counts as read up to now and beyond, so
        // requests past the budget do not wait for it.
        keys.index.caught_up(i64::MAX);
        let misses = || keys.cache.stats.misses.load(Ordering::Relaxed);
        let before = misses();
        for _ in 0..500 {
            assert!(matches!(
                auth(&keys, &random_key()).await,
                Err(Reject::InvalidApiKey)
            ));
        }
        // Only the small budget reached the store.
        let looked_up = misses() - before;
        assert!(
            looked_up <= 25,
            "{looked_up} store lookups for 500 unknown keys"
        );
        assert!(keys.index.refused.load(Ordering::Relaxed) >= 475);
        assert!(!breaker.is_open());
        // A known key works, and keeps working from cache.
        assert!(auth(&keys, &known).await.is_ok());

        // A key this process creates is in the index at once.
        let mine = new_key(&store).await;
        assert_eq!(keys.index.len(), 2);
        assert!(auth(&keys, &mine).await.is_ok());
        // A key another process created a moment ago (its change not applied here
        // yet) still works through the budget, and is in the index afterwards.
        let elsewhere = Store::open(&url, 1).await.unwrap();
        let fresh = new_key(&elsewhere).await;
        elsewhere.close().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(auth(&keys, &fresh).await.is_ok());
        assert_eq!(keys.index.found_late.load(Ordering::Relaxed), 1);
        assert_eq!(keys.index.len(), 3);

        // The store goes away: the few unknown keys that reach it are 503 (it cannot
        // tell), the rest are answered by the index; either way the breaker stays
        // closed, and cached keys are untouched.
        store.close().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut unavailable = 0;
        for _ in 0..50 {
            match auth(&keys, &random_key()).await {
                Err(Reject::InvalidApiKey) => {}
                Err(Reject::Unavailable) => unavailable += 1,
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
        assert!((1..=10).contains(&unavailable), "{unavailable}");
        assert!(!breaker.is_open());
        assert!(auth(&keys, &known).await.is_ok());
        // Once the store breaker is open (a known key failed), unknown keys fail
        // closed like every answer that is not cached.
        breaker.trip();
        assert!(matches!(
            auth(&keys, &random_key()).await,
            Err(Reject::Unavailable)
        ));
        // A change arriving adds the prefix to the index.
        let change = Change {
            id: 1,
            kind: ChangeKind::ApiKey,
            tenant_id: "acme".into(),
            subject: "0123456789ab".into(),
            created_at_ms: 0,
        };
        keys.apply(&change).await;
        assert_eq!(
            keys.index.check("0123456789ab"),
            crate::auth::key_index::Verdict::Known
        );
    }
}
