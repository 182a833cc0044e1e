//! Stage 3, JWT half: verify a bearer JWT and say who it is for.
//!
//! Trust comes only from configuration and the store. The (unverified) `iss` picks
//! one of the configured issuers, or else one of the issuers bound to a tenant
//! through the admin API ([`bound`]); the header's `alg` must be on that issuer's
//! allow-list and fit the key its `kid` selects; the key comes only from the
//! issuer's key source (`jwk`, `jku`, `x5u`, `x5c` in the header are ignored). Then
//! the signature, then `exp`/`nbf` (with leeway), the issuer's maximum lifetime,
//! `iss`, `aud`, and the identity claims. A bound issuer's token speaks for its
//! tenant only: a tenant claim naming another tenant refuses it.
//!
//! A verified token is cached (keyed by its SHA-256) until its `exp`, at most five
//! minutes, so the usual request costs one hash and one cache lookup and awaits
//! nothing. Deterministic failures are remembered for ten seconds, so a flood of
//! one bad token costs the same.

mod bound;
mod claims;
mod issuer;
mod keys;
mod source;
mod token;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use super::principal::{AuthMethod, Principal};

pub use bound::BoundOptions;
pub use issuer::{IssuerSpec, LOGIN_MAX_LIFETIME};
pub use source::{
    JwksUrlSource, KeySource, PemFileSource, StoreKeySource, JWKS_MAX_BYTES, JWKS_TIMEOUT,
};

use bound::BoundIssuers;
use claims::Expectations;
use issuer::{ClaimSlots, IssuerState};
use keys::KeySet;

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: String,
    /// The token's `sub`.
    pub user_id: String,
    pub role: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `exp`, seconds since the epoch.
    pub exp: i64,
    /// The token's `tv` (login tokens: the user's token version when it was issued).
    pub token_version: Option<i64>,
    /// The same identity rendered as the headers to inject (once per token).
    pub principal: Principal,
}

/// Why a token was refused. Only [`JwtError::KeysUnavailable`] is our fault (503);
/// everything else is the token's (401 `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("token too large")]
    TooLarge,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("token claims another tenant than its issuer's")]
    WrongTenant,
    #[error("token lives longer than its issuer allows")]
    LifetimeTooLong,
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    #[error("unsupported critical header")]
    UnsupportedCritical,
    #[error("issuer keys unavailable")]
    KeysUnavailable,
}

impl JwtError {
    /// True when the token could not be checked because its issuer's keys could never
    /// be loaded: the proxy answers 503, not 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, JwtError::KeysUnavailable)
    }

    /// Whether the same token would fail the same way in the next seconds, whatever
    /// the key fetches do: such failures are cached briefly.
    fn is_sticky(&self) -> bool {
        !matches!(
            self,
            JwtError::KeysUnavailable
                | JwtError::UnknownKey
                | JwtError::NotYetValid
                | JwtError::TooLarge
        )
    }
}

/// Verified tokens live at most this long in the cache (and never past their `exp`).
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Verified-token cache size.
pub const MAX_CACHED_TOKENS: u64 = 100_000;
/// How long a refused token is refused from cache.
pub const REJECT_TTL: Duration = Duration::from_secs(10);
const MAX_CACHED_REJECTS: u64 = 10_000;
/// The most clock skew we tolerate, whatever is configured.
pub const MAX_LEEWAY_SECONDS: u64 = 60;

type TokenHash = [u8; 32];

/// Verifies bearer JWTs against the configured issuers. Cheap to clone; share it.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: HashMap<String, Arc<IssuerState>>,
    /// Every issuer's tenant and role claim names, read in the one pass over a payload.
    extra_claims: Vec<&'static str>,
    leeway: i64,
    max_token_bytes: usize,
    /// Verified tokens with the instant (unix ms) their entry ends: the token's
    /// `exp`, at most [`MAX_CACHE_TTL`] after it was verified.
    verified: Cache<TokenHash, (Arc<Identity>, i64)>,
    /// Refused tokens, until (unix ms).
    rejected: Cache<TokenHash, (JwtError, i64)>,
    signature_checks: AtomicU64,
    /// Bumped by every invalidation; results computed across one are not cached.
    invalidations: AtomicU64,
    /// Issuers bound to a tenant through the admin API (changing at run time).
    bound: BoundIssuers,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut issuers: Vec<&str> = self.inner.issuers.keys().map(String::as_str).collect();
        issuers.sort_unstable();
        f.debug_struct("JwtVerifier")
            .field("issuers", &issuers)
            .field("leeway", &self.inner.leeway)
            .field("max_token_bytes", &self.inner.max_token_bytes)
            .finish_non_exhaustive()
    }
}

fn cache_ttl(exp_s: i64, now_ms: i64) -> Duration {
    let left_ms = exp_s.saturating_mul(1000).saturating_sub(now_ms);
    let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
    left.min(MAX_CACHE_TTL)
}

fn now_ms() -> i64 {
    tenantgate_core::time::now_ms()
}

/// Claim names as `&'static str` (for `MissingClaim`), each distinct name leaked once.
fn intern(name: &str) -> &'static str {
    const KNOWN: &[&str] = &["tenant_id", "role", "tenant", "org_id"];
    if let Some(k) = KNOWN.iter().find(|k| **k == name) {
        return k;
    }
    static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = match NAMES.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(k) = names.iter().find(|k| **k == name) {
        return k;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

impl JwtVerifier {
    /// `leeway_seconds` is capped at 60. Issuers with HMAC algorithms lose them; a
    /// second issuer with the same `issuer` string is ignored (with a warning).
    pub fn new(issuers: Vec<IssuerSpec>, leeway_seconds: u64, max_token_bytes: usize) -> Self {
        let mut extra_claims: Vec<&'static str> = Vec::new();
        let mut slot = |name: &str| -> (&'static str, usize) {
            let name = intern(name);
            match extra_claims.iter().position(|n| *n == name) {
                Some(i) => (name, i),
                None => {
                    extra_claims.push(name);
                    (name, extra_claims.len() - 1)
                }
            }
        };
        let mut map = HashMap::with_capacity(issuers.len());
        for mut spec in issuers {
            if map.contains_key(&spec.issuer) {
                tracing::warn!(issuer = %spec.issuer, "issuer configured twice; keeping the first");
                continue;
            }
            let before = spec.algorithms.len();
            spec.algorithms
                .retain(|a| a.family() != AlgorithmFamily::Hmac);
            if spec.algorithms.len() != before {
                tracing::warn!(issuer = %spec.issuer, "HMAC algorithms are never accepted; dropped");
            }
            let (tenant_claim, tenant_idx) = slot(&spec.tenant_claim);
            let (role_claim, role_idx) = slot(&spec.role_claim);
            let slots = ClaimSlots {
                tenant_claim,
                tenant_idx,
                role_claim,
                role_idx,
            };
            map.insert(spec.issuer.clone(), Arc::new(IssuerState::new(spec, slots)));
        }
        let verified = Cache::new(MAX_CACHED_TOKENS as usize);
        let rejected = Cache::new(MAX_CACHED_REJECTS as usize);
        let leeway = i64::try_from(leeway_seconds.min(MAX_LEEWAY_SECONDS)).unwrap_or(0);
        JwtVerifier {
            inner: Arc::new(Inner {
                issuers: map,
                extra_claims,
                leeway,
                max_token_bytes,
                verified,
                rejected,
                signature_checks: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
                bound: BoundIssuers::default(),
            }),
        }
    }

    /// Loads every issuer's keys once, concurrently. Failures are logged; those
    /// issuers retry on their first token.
    pub async fn warm_up(&self) {
        let loads = self.inner.issuers.values().map(|iss| async move {
            iss.refetch(iss.attempts()).await;
            match iss.keys() {
                Some(set) => {
                    tracing::info!(issuer = %iss.issuer, keys = set.len(), "issuer keys loaded")
                }
                None => tracing::warn!(issuer = %iss.issuer, source = %iss.describe_source(),
                    "issuer keys not loaded; its tokens get 503 until a fetch succeeds"),
            }
        });
        futures::future::join_all(loads).await;
    }

    /// Verifies `token` (the bearer value, without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, JwtError> {
        if token.len() > self.inner.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let now = now_ms();
        if let Some((id, until)) = self.inner.verified.get(&hash) {
            if now < until {
                return Ok(id);
            }
            self.inner.verified.remove(&hash);
        }
        if let Some((err, until)) = self.inner.rejected.get(&hash) {
            if now < until {
                return Err(err);
            }
            self.inner.rejected.remove(&hash);
        }
        let generation = self.inner.invalidations.load(Ordering::Acquire);
        let result = self.verify_uncached(token).await;
        // An invalidation while we verified (with keys that may be gone now): answer,
        // but remember nothing.
        if self.inner.invalidations.load(Ordering::Acquire) != generation {
            return result.map(Arc::new);
        }
        match result {
            Ok(id) => {
                let id = Arc::new(id);
                // A token accepted only thanks to the leeway is not cached at all.
                let now = now_ms();
                if id.exp.saturating_mul(1000) > now {
                    let ttl = i64::try_from(cache_ttl(id.exp, now).as_millis()).unwrap_or(0);
                    let until = now.saturating_add(ttl);
                    self.inner.verified.insert(hash, (Arc::clone(&id), until));
                }
                Ok(id)
            }
            Err(err) => {
                if err.is_sticky() {
                    let ttl = i64::try_from(REJECT_TTL.as_millis()).unwrap_or(0);
                    let until = now_ms().saturating_add(ttl);
                    self.inner.rejected.insert(hash, (err, until));
                }
                Err(err)
            }
        }
    }

    /// Keys of `issuer` changed (say, a login key was added or retired): the next
    /// token of that issuer refetches its keys first, whatever `min_refetch` says,
    /// and its cached verified tokens are dropped.
    pub fn invalidate_issuer_keys(&self, issuer: &str) {
        let Some(state) = self.inner.issuers.get(issuer) else {
            return;
        };
        state.mark_stale();
        self.inner.invalidations.fetch_add(1, Ordering::AcqRel);
        self.inner
            .verified
            .retain(|_, (id, _)| id.issuer.as_str() != issuer);
        self.inner.rejected.clear();
    }

    /// Follows the issuers bound to tenants in `store` (call [`Self::reload_bound`]
    /// to load them; until the first load succeeds, a token of an unknown issuer
    /// gets 503 rather than 401). Only the first call counts.
    pub fn follow_bound_issuers(&self, store: tenantgate_core::Store, opts: BoundOptions) {
        self.inner.bound.follow(store, opts);
    }

    /// Reloads the bound issuers from the store. Issuers gone or replaced take their
    /// verified tokens with them, and every cached refusal is forgotten (a token
    /// of an issuer just bound must not stay refused).
    pub async fn reload_bound(&self) -> Result<(), tenantgate_core::StoreError> {
        let diff = self.inner.bound.reload().await?;
        self.bound_changed(&diff.removed);
        if diff.added > 0 || !diff.removed.is_empty() {
            tracing::info!(
                added = diff.added,
                removed = diff.removed.len(),
                total = self.inner.bound.len(),
                "bound issuers reloaded"
            );
        }
        Ok(())
    }

    fn bound_changed(&self, removed: &[String]) {
        self.inner.invalidations.fetch_add(1, Ordering::AcqRel);
        if !removed.is_empty() {
            self.inner
                .verified
                .retain(|_, (id, _)| !removed.contains(&id.issuer));
        }
        self.inner.rejected.clear();
    }

    /// Applies a control-plane change: an issuer change (or a change of a tenant
    /// with bound issuers) reloads the bound issuers. Returns whether it did.
    pub async fn apply_change(&self, c: &tenantgate_core::store::Change) -> bool {
        if !self.inner.bound.wants_reload(c) {
            return false;
        }
        if let Err(e) = self.reload_bound().await {
            tracing::warn!(error = %e, "reloading bound issuers failed; retrying");
            self.retry_bound_in_background();
        }
        true
    }

    /// Reloads the bound issuers until a load succeeds (backing off up to 5 s).
    pub async fn reload_bound_until_ok(&self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.reload_bound().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "loading bound issuers failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One background retry loop at a time (a reload reads everything, so one
    /// success covers every failed one).
    fn retry_bound_in_background(&self) {
        if self.inner.bound.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            this.reload_bound_until_ok().await;
            this.inner.bound.retrying.store(false, Ordering::Release);
        });
    }

    /// Issuers bound to tenants, as last loaded.
    pub fn bound_issuers(&self) -> usize {
        self.inner.bound.len()
    }

    /// Verified tokens in the cache (approximate).
    pub fn cached_tokens(&self) -> u64 {
        self.inner.verified.len() as u64
    }

    /// Signatures checked so far: the uncached verifications that got that far.
    pub fn signature_checks(&self) -> u64 {
        self.inner.signature_checks.load(Ordering::Relaxed)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, JwtError> {
        let seg = token::split(token)?;
        let header_json = token::decode_segment(seg.header)?;
        let header = token::Header::parse(&header_json)?;
        let payload_json = token::decode_segment(seg.payload)?;
        let mut claims = claims::parse(&payload_json, &self.inner.extra_claims)?;

        let iss = claims.iss.as_deref().ok_or(JwtError::MissingClaim("iss"))?;
        let (issuer, bound) = match self.inner.issuers.get(iss) {
            Some(issuer) => (issuer.clone(), None),
            None => match self.inner.bound.get(iss) {
                Some(b) => {
                    // Its claim names are its own: read them in a second pass.
                    let names = [b.tenant_claim.as_str(), b.role_claim.as_str()];
                    claims = claims::parse(&payload_json, &names)?;
                    (b.state.clone(), Some(b))
                }
                // Bound issuers not loaded yet: it may be one (503, not 401).
                None if !self.inner.bound.is_loaded() => return Err(JwtError::KeysUnavailable),
                None => return Err(JwtError::UnknownIssuer),
            },
        };
        let issuer = &issuer;
        // `none`, HS*, anything unknown or not on this issuer's list.
        let alg = Algorithm::from_str(&header.alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }

        let keys = self.key_set_for(issuer, header.kid.as_deref()).await?;
        let mut candidates = keys
            .candidates(header.kid.as_deref())
            .ok_or(JwtError::UnknownKey)?
            .filter(|k| k.accepts(alg))
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let signed_input = seg.signing_input.as_bytes();
        let mut valid = false;
        for key in candidates {
            self.inner.signature_checks.fetch_add(1, Ordering::Relaxed);
            if key.verify(alg, signed_input, seg.signature) {
                valid = true;
                break;
            }
        }
        if !valid {
            return Err(JwtError::BadSignature);
        }

        let expect = Expectations {
            issuer: &issuer.issuer,
            audiences: &issuer.audiences,
            tenant_claim: issuer.tenant_claim,
            tenant_idx: issuer.tenant_idx,
            role_claim: issuer.role_claim,
            role_idx: issuer.role_idx,
            now: now_ms().div_euclid(1000),
            leeway: self.inner.leeway,
            max_lifetime: issuer.max_lifetime,
            bound_tenant: bound.as_ref().map(|b| b.tenant_id.as_str()),
            default_role: bound.as_ref().and_then(|b| b.default_role.as_deref()),
        };
        let checked = claims::check(&claims, &expect)?;
        let principal = Principal::new(
            &checked.tenant_id,
            &checked.user_id,
            &checked.role,
            AuthMethod::Jwt,
            None,
        )
        .map_err(|_| JwtError::Malformed)?;
        Ok(Identity {
            principal,
            tenant_id: checked.tenant_id,
            user_id: checked.user_id,
            role: checked.role,
            issuer: issuer.issuer.clone(),
            exp: checked.exp,
            token_version: claims.tv,
        })
    }

    /// The issuer's key set, refetched first when it was invalidated, never loaded,
    /// or lacks `kid` (coalesced and paced by the issuer).
    async fn key_set_for(
        &self,
        issuer: &Arc<IssuerState>,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, JwtError> {
        let seen = issuer.attempts();
        let current = issuer.keys();
        let must_fetch = match &current {
            None => true,
            Some(set) => issuer.is_stale() || set.candidates(kid).is_none(),
        };
        if !must_fetch {
            if let Some(set) = current {
                issuer.maybe_refresh(&set);
                return Ok(set);
            }
        }
        issuer.refetch(seen).await;
        issuer.keys().ok_or(JwtError::KeysUnavailable)
    }
}
