//! Issuers bound to a tenant through the admin API (a tenant's own IdP).
//!
//! Unlike the configured issuers, these change at run time: the whole set is
//! loaded from the store at start and reloaded on every `issuer` change (and on a
//! change of a tenant that has some), within a second of the change. A token of a
//! bound issuer speaks for that issuer's tenant only. An issuer that goes away
//! takes its verified tokens out of the cache with it.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use tenantgate_core::issuers::{check_http_url, TenantIssuer, UrlScheme};
use tenantgate_core::store::{Change, ChangeKind, Store, StoreError};

use super::issuer::{ClaimSlots, IssuerSpec, IssuerState};
use super::source::JwksUrlSource;

/// At most one JWKS fetch per this interval for unknown `kid`s of a bound issuer.
const BOUND_MIN_REFETCH: Duration = Duration::from_secs(10);
/// Regular JWKS refresh of a bound issuer.
const BOUND_REFRESH: Duration = Duration::from_secs(300);

/// How bound issuers are followed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundOptions {
    /// `[jwt] allow_insecure_jwks`: plain `http://` JWKS URLs are used too.
    pub allow_insecure_jwks: bool,
}

/// A bound issuer at run time.
pub(crate) struct BoundIssuer {
    pub id: String,
    pub tenant_id: String,
    pub tenant_claim: String,
    pub role_claim: String,
    pub default_role: Option<String>,
    /// The rules and keys; its claim slots are unused (the claim names above are
    /// read in a second pass over the payload).
    pub state: Arc<IssuerState>,
}

impl BoundIssuer {
    fn build(rec: &TenantIssuer, opts: BoundOptions) -> Result<Self, String> {
        match check_http_url(&rec.jwks_url)? {
            UrlScheme::Https => {}
            UrlScheme::Http | UrlScheme::HttpLoopback if opts.allow_insecure_jwks => {}
            _ => return Err("plain http JWKS URL and [jwt] allow_insecure_jwks is off".into()),
        }
        let algorithms: Vec<Algorithm> = rec
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect();
        if algorithms.is_empty() || rec.audiences.is_empty() {
            return Err("no usable algorithm or audience".into());
        }
        let spec = IssuerSpec {
            issuer: rec.issuer.clone(),
            audiences: rec.audiences.clone(),
            algorithms,
            tenant_claim: rec.tenant_claim.clone(),
            role_claim: rec.role_claim.clone(),
            source: Arc::new(JwksUrlSource::new(&rec.jwks_url)?),
            min_refetch: BOUND_MIN_REFETCH,
            refresh: BOUND_REFRESH,
            max_lifetime: rec.max_lifetime_seconds.map(Duration::from_secs),
        };
        let slots = ClaimSlots {
            tenant_claim: "tenant_id",
            tenant_idx: 0,
            role_claim: "role",
            role_idx: 1,
        };
        Ok(BoundIssuer {
            id: rec.id.clone(),
            tenant_id: rec.tenant_id.clone(),
            tenant_claim: rec.tenant_claim.clone(),
            role_claim: rec.role_claim.clone(),
            default_role: rec.default_role.clone(),
            state: Arc::new(IssuerState::new(spec, slots)),
        })
    }
}

type Map = Arc<HashMap<String, Arc<BoundIssuer>>>;

struct Source {
    store: Store,
    opts: BoundOptions,
}

/// The bound issuers, by their `iss`.
#[derive(Default)]
pub(crate) struct BoundIssuers {
    map: RwLock<Map>,
    /// Set once following is enabled; reloads read from it.
    source: OnceLock<Source>,
    /// The first load succeeded (or following is off): an unknown `iss` is unknown.
    loaded: AtomicBool,
    reload: tokio::sync::Mutex<()>,
    /// A background retry of a failed reload is running.
    pub retrying: AtomicBool,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Issuers gone or replaced: their verified tokens must go.
    pub removed: Vec<String>,
    pub added: usize,
}

impl BoundIssuers {
    pub(crate) fn get(&self, iss: &str) -> Option<Arc<BoundIssuer>> {
        let map = match self.map.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        map.get(iss).cloned()
    }

    /// Whether an `iss` not found is really unknown (rather than not loaded yet).
    pub(crate) fn is_loaded(&self) -> bool {
        self.source.get().is_none() || self.loaded.load(Ordering::Acquire)
    }

    pub(crate) fn len(&self) -> usize {
        match self.map.read() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    fn has_tenant(&self, tenant_id: &str) -> bool {
        let map = match self.map.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        map.values().any(|b| b.tenant_id == tenant_id)
    }

    /// Starts following the store's bound issuers (once; later calls are ignored).
    pub(crate) fn follow(&self, store: Store, opts: BoundOptions) {
        let _ = self.source.set(Source { store, opts });
    }

    /// Whether `c` asks for a reload: an issuer change, or a change of a tenant
    /// that has bound issuers (it may have been deleted with them).
    pub(crate) fn wants_reload(&self, c: &Change) -> bool {
        self.source.get().is_some()
            && match c.kind {
                ChangeKind::Issuer => true,
                ChangeKind::Tenant => self.has_tenant(&c.tenant_id),
                _ => false,
            }
    }

    /// Reloads every bound issuer from the store. Unchanged issuers keep their
    /// state (and keys); new ones start fetching their keys in the background.
    pub(crate) async fn reload(&self) -> Result<Diff, StoreError> {
        let Some(src) = self.source.get() else {
            return Ok(Diff::default());
        };
        let _one_at_a_time = self.reload.lock().await;
        let records = src.store.all_tenant_issuers().await?;
        Ok(self.replace(&records, src.opts))
    }

    /// Replaces the set with `records` (the store's rows).
    pub(crate) fn replace(&self, records: &[TenantIssuer], opts: BoundOptions) -> Diff {
        let old = match self.map.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut next: HashMap<String, Arc<BoundIssuer>> = HashMap::with_capacity(records.len());
        let mut diff = Diff::default();
        for rec in records {
            if next.contains_key(&rec.issuer) {
                continue;
            }
            if let Some(cur) = old.get(&rec.issuer).filter(|b| b.id == rec.id) {
                next.insert(rec.issuer.clone(), cur.clone());
                continue;
            }
            match BoundIssuer::build(rec, opts) {
                Ok(b) => {
                    let b = Arc::new(b);
                    diff.added += 1;
                    warm(&b);
                    next.insert(rec.issuer.clone(), b);
                }
                Err(e) => {
                    tracing::warn!(issuer = %rec.issuer, tenant_id = %rec.tenant_id, error = %e,
                        "bound issuer not usable; its tokens are refused");
                }
            }
        }
        for (iss, b) in old.iter() {
            if next.get(iss).is_none_or(|n| !Arc::ptr_eq(n, b)) {
                diff.removed.push(iss.clone());
            }
        }
        let next = Arc::new(next);
        match self.map.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        self.loaded.store(true, Ordering::Release);
        diff
    }
}

/// Fetches a new issuer's keys in the background (when there is a runtime), so its
/// first token does not wait for them.
fn warm(b: &Arc<BoundIssuer>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let state = b.state.clone();
        rt.spawn(async move {
            let seen = state.attempts();
            state.refetch(seen).await;
        });
    }
}
