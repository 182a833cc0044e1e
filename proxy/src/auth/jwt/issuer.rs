//! A trusted issuer: its rules, and its key set with coalesced, rate-limited fetches.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use tenantgate_core::config::{IssuerKeys, IssuerSettings};
use tenantgate_core::Store;

use super::keys::KeySet;
use super::source::{JwksUrlSource, KeySource, PemFileSource, StoreKeySource};

/// The longest a login token may live (the maximum of `admin.token_ttl_seconds`).
pub const LOGIN_MAX_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// No key source may hold an issuer's fetch (and the requests waiting on it) longer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An issuer the proxy trusts, as configured.
pub struct IssuerSpec {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// A token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// The allow-list for the header's `alg`. HMAC algorithms are dropped by the
    /// verifier even if listed.
    pub algorithms: Vec<Algorithm>,
    pub tenant_claim: String,
    pub role_claim: String,
    pub source: Arc<dyn KeySource>,
    /// At most one fetch per this interval for unknown `kid`s.
    pub min_refetch: Duration,
    /// Key sets older than this are refreshed in the background.
    pub refresh: Duration,
    /// Tokens whose `exp` lies further than this from now (or from `iat`) are refused.
    pub max_lifetime: Option<Duration>,
}

impl std::fmt::Debug for IssuerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSpec")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("tenant_claim", &self.tenant_claim)
            .field("role_claim", &self.role_claim)
            .field("source", &self.source.describe())
            .field("min_refetch", &self.min_refetch)
            .field("refresh", &self.refresh)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

impl IssuerSpec {
    /// An external issuer from `[[jwt.issuers]]`: a JWKS URL or a public key file.
    pub fn from_settings(cfg: &IssuerSettings) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| match Algorithm::from_str(a) {
                Ok(alg) if alg.family() != AlgorithmFamily::Hmac => Ok(alg),
                _ => Err(format!(
                    "issuer {:?}: algorithm {a:?} is not allowed",
                    cfg.issuer
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err(format!("issuer {:?}: no algorithms", cfg.issuer));
        }
        if cfg.audiences.is_empty() {
            return Err(format!("issuer {:?}: no audiences", cfg.issuer));
        }
        let source: Arc<dyn KeySource> = match &cfg.keys {
            IssuerKeys::JwksUrl(url) => Arc::new(JwksUrlSource::new(url)?),
            IssuerKeys::PublicKeyFile(path) => Arc::new(PemFileSource::new(path)?),
        };
        Ok(IssuerSpec {
            issuer: cfg.issuer.clone(),
            audiences: cfg.audiences.clone(),
            algorithms,
            tenant_claim: cfg.tenant_claim.clone(),
            role_claim: cfg.role_claim.clone(),
            source,
            min_refetch: cfg.jwks_min_refetch.max(Duration::from_secs(1)),
            refresh: cfg.jwks_refresh.max(Duration::from_secs(1)),
            max_lifetime: cfg.max_lifetime,
        })
    }

    /// The admin API's own login tokens: RS256, audience `tenantgate`, keys from the
    /// store. Key changes should also call `JwtVerifier::invalidate_issuer_keys`.
    /// Their lifetime is capped at [`LOGIN_MAX_LIFETIME`] (the longest
    /// `admin.token_ttl_seconds` allows): the proxy may not know the admin API's
    /// own setting.
    pub fn login(issuer: &str, store: Store) -> Self {
        IssuerSpec {
            issuer: issuer.to_owned(),
            audiences: vec![tenantgate_core::jwt::LOGIN_AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::RS256],
            tenant_claim: "tenant_id".to_owned(),
            role_claim: "role".to_owned(),
            source: Arc::new(StoreKeySource::new(store)),
            min_refetch: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
            max_lifetime: Some(LOGIN_MAX_LIFETIME),
        }
    }
}

/// An issuer at run time.
pub(crate) struct IssuerState {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub tenant_claim: &'static str,
    pub tenant_idx: usize,
    pub role_claim: &'static str,
    pub role_idx: usize,
    /// Seconds; see [`IssuerSpec::max_lifetime`].
    pub max_lifetime: Option<i64>,
    source: Arc<dyn KeySource>,
    min_refetch: Duration,
    refresh: Duration,
    /// `None` until a fetch has succeeded once; afterwards always the last good set.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held for the whole of a fetch: the fetch coalescing point.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Completed fetch attempts (successful or not).
    attempts: AtomicU64,
    /// When the last fetch started, as nanoseconds since `born` plus one (0: never).
    last_attempt: AtomicU64,
    born: Instant,
    /// Set by an invalidation: the next use refetches first, ignoring `min_refetch`.
    stale: AtomicBool,
    /// A background refresh is running.
    refreshing: AtomicBool,
}

pub(crate) struct ClaimSlots {
    pub tenant_claim: &'static str,
    pub tenant_idx: usize,
    pub role_claim: &'static str,
    pub role_idx: usize,
}

impl IssuerState {
    pub(crate) fn new(spec: IssuerSpec, slots: ClaimSlots) -> Self {
        IssuerState {
            issuer: spec.issuer,
            audiences: spec.audiences,
            algorithms: spec.algorithms,
            tenant_claim: slots.tenant_claim,
            tenant_idx: slots.tenant_idx,
            role_claim: slots.role_claim,
            role_idx: slots.role_idx,
            max_lifetime: spec
                .max_lifetime
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            source: spec.source,
            min_refetch: spec.min_refetch,
            refresh: spec.refresh,
            keys: RwLock::new(None),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            attempts: AtomicU64::new(0),
            last_attempt: AtomicU64::new(0),
            born: Instant::now(),
            stale: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        }
    }

    pub(crate) fn describe_source(&self) -> String {
        self.source.describe()
    }

    pub(crate) fn keys(&self) -> Option<Arc<KeySet>> {
        match self.keys.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_keys(&self, set: KeySet) {
        let set = Some(Arc::new(set));
        match self.keys.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    pub(crate) fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Refetches the keys unless a fetch completed since the caller read `seen`
    /// (it then shares that one) or the last attempt is younger than `min_refetch`
    /// (and no invalidation asked for a fresh one). Returns once the keys are as
    /// fresh as they are going to get; read them again with [`Self::keys`].
    pub(crate) async fn refetch(self: &Arc<Self>, seen: u64) {
        let guard = Arc::clone(&self.fetch_lock).lock_owned().await;
        // Someone fetched while we waited: share that result — unless an
        // invalidation arrived after that fetch started.
        if self.attempts() != seen && !self.is_stale() {
            return;
        }
        if !self.is_stale() && self.attempted_within(self.min_refetch) {
            return;
        }
        // The fetch runs in its own task, which owns the lock: a waiter that goes
        // away (client disconnect) neither cancels it nor lets a second one start.
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _guard = guard;
            this.fetch_now().await;
        });
        if let Err(e) = task.await {
            tracing::error!(issuer = %self.issuer, error = %e, "JWKS fetch task failed");
        }
    }

    /// Whether a fetch started less than `window` ago.
    fn attempted_within(&self, window: Duration) -> bool {
        match self.last_attempt.load(Ordering::Acquire) {
            0 => false,
            at => {
                let now = self.born.elapsed().as_nanos();
                now.saturating_sub(u128::from(at - 1)) < window.as_nanos()
            }
        }
    }

    async fn fetch_now(&self) {
        let started = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_attempt.store(started + 1, Ordering::Release);
        // Cleared before the fetch: an invalidation arriving meanwhile asks again.
        self.stale.store(false, Ordering::Release);
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {FETCH_TIMEOUT:?}")),
        };
        match result {
            Ok(jwks) => {
                let set = KeySet::build(&jwks, |kid, why| {
                    tracing::debug!(issuer = %self.issuer, kid = ?kid, reason = why, "skipping key");
                });
                if set.is_empty() {
                    // Most likely a broken publication: keep verifying with what we had.
                    tracing::warn!(issuer = %self.issuer, source = %self.source.describe(), fetched = jwks.len(),
                        "key source returned no usable key; keeping the previous key set");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = set.len(), "key set loaded");
                    self.set_keys(set);
                }
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, source = %self.source.describe(), error = %e,
                    "key fetch failed; keeping the previous key set");
            }
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts a background refresh when the key set is older than `refresh`.
    /// Needs a Tokio runtime (it is always called from `verify`).
    pub(crate) fn maybe_refresh(self: &Arc<Self>, set: &KeySet) {
        // A failed refresh leaves the set old; `min_refetch` paces the retries.
        if set.fetched_at.elapsed() < self.refresh || self.attempted_within(self.min_refetch) {
            return;
        }
        if self
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let seen = this.attempts();
            this.refetch(seen).await;
            this.refreshing.store(false, Ordering::Release);
        });
    }
}
