//! The signed tenant assertion (`x-tenant-assertion`): a compact JWS the upstream
//! can verify instead of trusting plain headers.
//!
//! Keys come from the store, shared by the fleet and sealed with the server secret.
//! The fleet's first key signs at once; every later key (rotation) is created
//! `publish_ahead` before it signs, so every upstream has seen it in the JWKS first.
//!
//! Signing is amortised: one assertion per (principal, audience), reused while it
//! has more than [`ASSERTION_REUSE_MARGIN_SECONDS`] to live. A reused assertion
//! costs one hash, one cache lookup and one comparison. With `bind_request` each
//! request is signed on its own (`request_id`, `htm`, `htu`).

use crate::auth::Principal;
use crate::route::Route;
use bytes::Bytes;
use http::HeaderValue;
use quick_cache::sync::Cache;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tenantgate_core::assertion::{
    create_key, jwks_of, AssertionAlg, AssertionClaims, AssertionKey, ASSERTION_LIFETIME_SECONDS,
    ASSERTION_REUSE_MARGIN_SECONDS,
};
use tenantgate_core::config::AssertionSettings;
use tenantgate_core::sealing;
use tenantgate_core::store::StoredAssertionKey;
use tenantgate_core::time::now_ms;
use tenantgate_core::{Store, StoreError};
use tokio::sync::{watch, Notify};

/// Amortised assertions kept at most (one per principal and audience in use).
const MAX_CACHED: u64 = 100_000;
/// A superseded key stays in the JWKS this long after its successor took over:
/// longer than any assertion it signed lives, with room for clock skew.
const RETIRE_AFTER: Duration = Duration::from_secs(600);
/// The keys are re-read at least this often (besides change-feed pokes).
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// After a failed load, the next try comes this soon.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// No key can sign yet (the store was never reachable): the request is refused
/// with 503, since upstreams may require the assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no tenant-assertion key is available")]
pub struct NoSigningKey;

/// Whether `k` is sealed with `kek` (cheap: AES-GCM over a small key).
fn opens(k: &StoredAssertionKey, kek: &[u8; 32]) -> bool {
    sealing::open(kek, &k.private_sealed).is_ok()
}

/// What the keys allow right now.
struct Ring {
    generation: u64,
    signer: Option<Arc<AssertionKey>>,
    /// The JWKS document (every key not retired, future ones included).
    jwks: Bytes,
    /// When the next published key starts signing (unix ms).
    next_activation_ms: Option<i64>,
}

#[derive(Clone)]
struct Amortised {
    principal: Principal,
    audience: Arc<str>,
    value: HeaderValue,
    exp: i64,
    generation: u64,
}

/// The assertion signer of one proxy.
pub struct Assertions {
    settings: AssertionSettings,
    ring: RwLock<Arc<Ring>>,
    /// The ring's generation, read without the lock on every request.
    generation: AtomicU64,
    cache: Cache<u64, Amortised>,
    hasher: foldhash::fast::RandomState,
    reload: Notify,
    signed: AtomicU64,
    reused: AtomicU64,
}

/// What the request contributes to a per-request (bound) assertion.
pub struct Binding<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
}

impl Assertions {
    pub fn new(settings: AssertionSettings) -> Self {
        Assertions {
            settings,
            ring: RwLock::new(Arc::new(Ring {
                generation: 0,
                signer: None,
                jwks: Bytes::from_static(b"{\"keys\":[]}"),
                next_activation_ms: None,
            })),
            generation: AtomicU64::new(0),
            cache: Cache::new(MAX_CACHED as usize),
            hasher: foldhash::fast::RandomState::default(),
            reload: Notify::new(),
            signed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Whether requests on `route` get their own assertion.
    pub fn binds(&self, route: &Route) -> bool {
        route.bind_request.unwrap_or(self.settings.bind_request)
    }

    fn ring(&self) -> Arc<Ring> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The JWKS to publish.
    pub fn jwks(&self) -> Bytes {
        self.ring().jwks.clone()
    }

    /// The assertion for `principal` on `route`: `None` when assertions are off.
    pub fn header(
        &self,
        route: &Route,
        principal: &Principal,
        now_s: i64,
        binding: Option<Binding<'_>>,
    ) -> Result<Option<HeaderValue>, NoSigningKey> {
        if !self.settings.enabled {
            return Ok(None);
        }
        if let Some(b) = binding {
            let signer = self.ring().signer.clone().ok_or(NoSigningKey)?;
            let value = self.sign(&signer, &route.audience, principal, now_s, Some(b))?;
            return Ok(Some(value));
        }
        let key = self.hasher.hash_one((&*route.audience, principal));
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(hit) = self.cache.get(&key) {
            if hit.generation == generation
                && hit.exp - now_s > ASSERTION_REUSE_MARGIN_SECONDS
                && hit.principal == *principal
                && hit.audience == route.audience
            {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(hit.value));
            }
        }
        let ring = self.ring();
        let signer = ring.signer.clone().ok_or(NoSigningKey)?;
        let value = self.sign(&signer, &route.audience, principal, now_s, None)?;
        self.cache.insert(
            key,
            Amortised {
                principal: principal.clone(),
                audience: route.audience.clone(),
                value: value.clone(),
                exp: now_s + ASSERTION_LIFETIME_SECONDS,
                generation: ring.generation,
            },
        );
        Ok(Some(value))
    }

    fn sign(
        &self,
        key: &AssertionKey,
        audience: &str,
        p: &Principal,
        now_s: i64,
        binding: Option<Binding<'_>>,
    ) -> Result<HeaderValue, NoSigningKey> {
        let claims = AssertionClaims {
            iss: &self.settings.issuer,
            aud: audience,
            tenant_id: p.tenant_id(),
            sub: p.user_id(),
            role: p.role(),
            auth_method: p.method.as_str(),
            api_key_id: p.api_key_id(),
            iat: now_s,
            exp: now_s + ASSERTION_LIFETIME_SECONDS,
            request_id: binding.as_ref().map(|b| b.request_id),
            htm: binding.as_ref().map(|b| b.method),
            htu: binding.as_ref().map(|b| b.path_and_query),
        };
        let token = key.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing a tenant assertion failed");
            NoSigningKey
        })?;
        self.signed.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_maybe_shared(Bytes::from(token)).map_err(|_| NoSigningKey)
    }

    /// Asks the keeper to re-read the keys now (a change-feed poke).
    pub fn poke(&self) {
        self.reload.notify_one();
    }

    /// Reads the keys from the store and decides what signs: creates the fleet's
    /// first key, a rotation successor (published ahead), and retires superseded
    /// keys. Returns when the next activation is due, if any.
    pub async fn refresh(&self, store: &Store, kek: &[u8; 32]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut stored = store.list_assertion_keys().await?;
        // Rotation and retirement look only at the keys this process can open (the
        // ones sealed with its secret): a proxy never retires a key it cannot
        // replace, and one with a foreign secret still gets a key of its own.
        let ours: Vec<&StoredAssertionKey> = stored.iter().filter(|k| opens(k, kek)).collect();
        if ours.is_empty() {
            if !stored.is_empty() {
                tracing::error!("no tenant-assertion key in the store opens with this server secret (every proxy of a fleet should share admin.secret_key); creating one of this process's own, signing at once");
            }
            // The first key of a fleet (or of this secret) signs at once.
            self.create_key(store, kek, now).await?;
            stored = store.list_assertion_keys().await?;
        } else {
            let newest_created = ours.iter().map(|k| k.created_at_ms).max().unwrap_or(now);
            let pending = ours.iter().any(|k| k.active_from_ms > now);
            let rotate_ms =
                i64::try_from(self.settings.rotate_after.as_millis()).unwrap_or(i64::MAX);
            if !pending && now.saturating_sub(newest_created) >= rotate_ms {
                let ahead =
                    i64::try_from(self.settings.publish_ahead.as_millis()).unwrap_or(i64::MAX);
                self.create_key(store, kek, now.saturating_add(ahead))
                    .await?;
                stored = store.list_assertion_keys().await?;
            }
        }
        let ours: Vec<&StoredAssertionKey> = stored.iter().filter(|k| opens(k, kek)).collect();
        self.retire_superseded(store, &ours, now).await?;
        self.install(&stored, kek, now);
        Ok(())
    }

    async fn create_key(
        &self,
        store: &Store,
        kek: &[u8; 32],
        active_from_ms: i64,
    ) -> Result<(), StoreError> {
        match create_key(store, kek, self.settings.algorithm, active_from_ms).await {
            // Another proxy raced (it cannot make the same key): what is stored wins.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Retires `ours` (this secret's keys, newest activation first) superseded by a
    /// newer one of ours for longer than [`RETIRE_AFTER`].
    async fn retire_superseded(
        &self,
        store: &Store,
        stored: &[&StoredAssertionKey],
        now: i64,
    ) -> Result<(), StoreError> {
        // Newest activation first: the first active key is the one signing now.
        let Some(current) = stored.iter().find(|k| k.active_from_ms <= now) else {
            return Ok(());
        };
        let retire_ms = i64::try_from(RETIRE_AFTER.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(current.active_from_ms) < retire_ms {
            return Ok(());
        }
        for old in stored
            .iter()
            .filter(|k| k.active_from_ms < current.active_from_ms)
        {
            if store.retire_assertion_key(&old.kid).await? {
                tracing::info!(kid = %old.kid, "retired a superseded tenant-assertion key");
            }
        }
        Ok(())
    }

    /// Builds the ring from `stored` (newest activation first).
    fn install(&self, stored: &[StoredAssertionKey], kek: &[u8; 32], now: i64) {
        let jwks = jwks_of(stored);
        let mut signer = None;
        let mut unopenable = 0;
        for k in stored {
            if signer.is_some() || k.active_from_ms > now {
                continue;
            }
            let opened = AssertionAlg::parse(&k.algorithm)
                .map_err(|e| e.to_string())
                .and_then(|alg| {
                    let der = sealing::open(kek, &k.private_sealed).map_err(|e| e.to_string())?;
                    AssertionKey::from_pkcs8(alg, Some(&k.kid), &der).map_err(|e| e.to_string())
                });
            match opened {
                Ok(key) => signer = Some(Arc::new(key)),
                Err(e) => {
                    unopenable += 1;
                    tracing::debug!(kid = %k.kid, error = %e, "tenant-assertion key sealed with another server secret");
                }
            }
        }
        let next_activation_ms = stored
            .iter()
            .map(|k| k.active_from_ms)
            .filter(|&t| t > now)
            .min();
        let body = serde_json::to_vec(&jwks).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        let mut guard = match self.ring.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = guard.clone();
        let same_signer = match (&old.signer, &signer) {
            (Some(a), Some(b)) => a.kid == b.kid,
            (None, None) => true,
            _ => false,
        };
        let generation = if same_signer {
            old.generation
        } else {
            old.generation + 1
        };
        if signer.is_none() && unopenable > 0 {
            tracing::error!("no tenant-assertion key can sign: authenticated requests get 503");
        }
        *guard = Arc::new(Ring {
            generation,
            signer,
            jwks: Bytes::from(body),
            next_activation_ms,
        });
        drop(guard);
        self.generation.store(generation, Ordering::Release);
    }

    /// Keeps the keys current until `shutdown`: on change-feed pokes, when a
    /// published key's activation comes, and every [`RELOAD_EVERY`].
    pub async fn keep(
        self: Arc<Self>,
        store: Store,
        kek: [u8; 32],
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !self.settings.enabled {
            return;
        }
        loop {
            let wait = match self.refresh(&store, &kek).await {
                Ok(()) => {
                    let next = self.ring().next_activation_ms;
                    match next {
                        Some(t) => Duration::from_millis(
                            u64::try_from(t.saturating_sub(now_ms())).unwrap_or(0),
                        )
                        .min(RELOAD_EVERY),
                        None => RELOAD_EVERY,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading tenant-assertion keys failed; retrying");
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.reload.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Prometheus samples.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP tenantgate_assertions_signed_total Tenant assertions signed.\n# TYPE tenantgate_assertions_signed_total counter\ntenantgate_assertions_signed_total {}",
            self.signed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tenantgate_assertions_reused_total Amortised tenant assertions reused.\n# TYPE tenantgate_assertions_reused_total counter\ntenantgate_assertions_reused_total {}",
            self.reused.load(Ordering::Relaxed)
        );
        let ready = self.ring().signer.is_some();
        let _ = writeln!(
            out,
            "# HELP tenantgate_assertion_key_ready Whether a tenant-assertion key can sign.\n# TYPE tenantgate_assertion_key_ready gauge\ntenantgate_assertion_key_ready {}",
            u8::from(ready)
        );
    }
}

#[cfg(test)]
mod tests;
