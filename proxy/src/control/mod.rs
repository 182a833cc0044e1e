//! The control plane as the hot path sees it: per (tenant, role), a flat
//! [`TenantView`] built from four caches (tenants, policies, the tenants' own
//! limits, plans) and kept while none of them changed. The change follower ([`follow`]) applies the
//! store's change events to these caches and to the credential caches.

pub mod domains;
pub mod follow;

use crate::cache::{
    Breaker, CacheSettings, CacheStats, Cached, IdKey, PairRef, Shared, Unavailable,
};
use crate::metrics::TenantSeries;
use ipnet::IpNet;
use quick_cache::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::domain::{
    Grants, OwnLimits, Plan, Policy, Quota, RateLimit, Tenant, TenantStatus,
};
use tenantgate_core::store::{Change, ChangeKind, Store};

/// What a request needs once it knows its tenant and role: the tenant, the role's
/// policy and the tenant's limits (its own, else its plan's), resolved together so
/// a request makes one lookup instead of four, and laid out flat (id inline,
/// policy compiled, limits resolved, allow-list parsed) so that lookup is all it
/// reads. Built from the caches; valid
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
    /// The tenant's own rate limit, or its plan's.
    pub limit: RateLimit,
    /// The tenant's own quota, or its plan's; `None`: no quota.
    pub quota: Option<Quota>,
    /// Client addresses the tenant's requests may come from; `None`: any.
    pub allowed: Option<Box<[IpNet]>>,
    /// The `[[upstream_pools]]` entry the tenant's requests go to (`None`: the route's).
    pub upstream_pool: Option<Box<str>>,
    /// The tenant's request counter, resolved by the first request through the view.
    pub series: TenantSeries,
    changes_seen: u64,
    fresh_until: Instant,
}

/// The tenant-side caches the hot path reads, and the views built from them.
pub struct ControlPlane {
    store: Store,
    pub tenants: Cached<IdKey, Tenant>,
    pub policies: Cached<(IdKey, IdKey), Policy>,
    /// Each tenant's own rate limit and quota.
    pub limits: Cached<IdKey, OwnLimits>,
    /// Plans by name.
    pub plans: Cached<IdKey, Plan>,
    views: Cache<(IdKey, IdKey), Arc<TenantView>>,
    view_stats: Arc<CacheStats>,
    /// Invalidations of the tenant, policy and limit caches (views built before
    /// the last one are stale).
    changes: Arc<AtomicU64>,
}

impl ControlPlane {
    /// `breaker` is shared with the other caches that read the same store.
    pub fn new(store: Store, settings: CacheSettings, breaker: Arc<Breaker>) -> Self {
        let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
        let changes = Arc::new(AtomicU64::new(0));
        let view_capacity = usize::try_from(settings.max_entries.max(16)).unwrap_or(usize::MAX);
        ControlPlane {
            store,
            views: Cache::new(view_capacity),
            view_stats: Arc::new(CacheStats::default()),
            changes: changes.clone(),
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
            policies: Cached::new(
                "policies",
                settings.clone(),
                breaker.clone(),
                move |(t, r): (IdKey, IdKey)| {
                    let s = s2.clone();
                    Box::pin(async move { s.get_policy(&t.to_text(), &r.to_text()).await })
                },
            )
            .sharing_changes(changes.clone()),
            limits: Cached::new(
                "rate_limits",
                settings.clone(),
                breaker.clone(),
                move |id: IdKey| {
                    let s = s3.clone();
                    Box::pin(async move { s.own_limits(&id.to_text()).await.map(Some) })
                },
            )
            .sharing_changes(changes.clone()),
            plans: Cached::new("plans", settings, breaker, move |name: IdKey| {
                let s = s4.clone();
                Box::pin(async move { s.get_plan(&name.to_text()).await })
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

    pub async fn policy(
        &self,
        tenant: &str,
        role: &str,
        now: Instant,
    ) -> Result<Option<Shared<Policy>>, Unavailable> {
        Ok(self.policies.get_pair(tenant, role, now).await?.0)
    }

    /// The tenant's own rate limit and quota.
    pub async fn own_limits(
        &self,
        tenant: &str,
        now: Instant,
    ) -> Result<Option<Shared<OwnLimits>>, Unavailable> {
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
        if let Some(v) = self.views.get(&PairRef(tenant, role)) {
            if v.changes_seen == changes_seen && now < v.fresh_until {
                self.view_stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(v));
            }
        }
        self.view_stats.misses.fetch_add(1, Ordering::Relaxed);
        let (Some(t), t_until) = self.tenants.get_id(tenant, now).await? else {
            return Ok(None);
        };
        let (policy, p_until) = self.policies.get_pair(tenant, role, now).await?;
        let (own, l_until) = self.limits.get_id(tenant, now).await?;
        let own = own.as_deref().copied().unwrap_or_default();
        // The plan is read only for what the tenant has not set itself.
        let (plan, plan_until) = if own.rate_limit.is_some() && own.quota.is_some() {
            (None, l_until)
        } else {
            self.plans.get_id(t.tier.as_str(), now).await?
        };
        let limit = own
            .rate_limit
            .or_else(|| plan.as_deref().map(|p| p.rate_limit))
            .unwrap_or_else(|| t.tier.default_rate_limit());
        let quota = own.quota.or_else(|| plan.as_deref().and_then(|p| p.quota));
        let view = Arc::new(TenantView {
            tenant_id: IdKey::new(tenant),
            status: t.status,
            grants: policy.as_deref().map(Grants::new),
            limit,
            quota,
            allowed: t.allowed_cidrs.as_ref().map(|list| {
                list.iter()
                    .filter_map(|c| crate::auth::parse_cidr(c))
                    .collect()
            }),
            upstream_pool: t.upstream_pool.as_deref().map(Box::from),
            series: TenantSeries::default(),
            changes_seen,
            fresh_until: t_until.min(p_until).min(l_until).min(plan_until),
        });
        self.views
            .insert((IdKey::new(tenant), IdKey::new(role)), view.clone());
        Ok(Some(view))
    }

    /// Applies one change event to the tenant-side caches.
    pub async fn apply(&self, c: &Change) {
        match c.kind {
            ChangeKind::Tenant => {
                self.tenants.invalidate(&IdKey::new(&c.tenant_id)).await;
                self.limits.invalidate(&IdKey::new(&c.tenant_id)).await;
            }
            ChangeKind::Policy => {
                self.policies
                    .invalidate(&(IdKey::new(&c.tenant_id), IdKey::new(&c.subject)))
                    .await
            }
            ChangeKind::RateLimit => self.limits.invalidate(&IdKey::new(&c.tenant_id)).await,
            ChangeKind::Plan => self.plans.invalidate(&IdKey::new(&c.subject)).await,
            ChangeKind::ApiKey
            | ChangeKind::User
            | ChangeKind::SigningKey
            | ChangeKind::AssertionKey
            | ChangeKind::Issuer
            | ChangeKind::Domain
            | ChangeKind::ClientCert => {}
        }
    }

    /// After missed changes (a lagged bus, a reconnect): forget everything.
    pub fn invalidate_all(&self) {
        self.tenants.invalidate_all();
        self.policies.invalidate_all();
        self.limits.invalidate_all();
        self.plans.invalidate_all();
        self.views.clear();
    }

    /// Appends the views' and the caches' counters as Prometheus samples.
    pub fn render(&self, out: &mut String) {
        self.view_stats.render("tenant_views", out);
        self.tenants.render(out);
        self.policies.render(out);
        self.limits.render(out);
        self.plans.render(out);
    }
}

#[cfg(test)]
mod tests;
