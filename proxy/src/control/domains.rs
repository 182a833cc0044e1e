//! Tenant domains as the proxy sees them: the whole map, kept in memory (a host
//! name sent by a client must never cost a store lookup), loaded at start and
//! after missed changes, and updated entry by entry from the change feed.
//!
//! A request whose host is a tenant's domain belongs to that tenant: a credential
//! of another tenant there is 403 `forbidden`. Until the first load succeeds the
//! map is empty (the check is an extra restriction on credentials that are valid
//! anyway; the load is retried every second and the gauge shows it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tenantgate_core::store::{Change, ChangeKind, Store};

type Map = HashMap<Box<str>, Arc<str>>;

pub struct Domains {
    store: Store,
    map: RwLock<Arc<Map>>,
    /// Any domain at all: requests skip the host lookup while there is none.
    any: AtomicBool,
    loaded: AtomicBool,
    refused: AtomicU64,
}

impl Domains {
    pub fn new(store: Store) -> Self {
        Domains {
            store,
            map: RwLock::new(Arc::new(Map::new())),
            any: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Arc<Map> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, f: impl FnOnce(&mut Map)) {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        self.any.store(!next.is_empty(), Ordering::Relaxed);
        *guard = Arc::new(next);
    }

    /// Whether a request on `host` (its `Host` or authority, as sent) with a
    /// credential of `tenant_id` may go on: `false` when the host is another
    /// tenant's domain. Costs nothing while no tenant has a domain.
    pub fn allows(&self, host: Option<&str>, tenant_id: &str) -> bool {
        let ok = self.would_allow(host, tenant_id);
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// [`Domains::allows`] without counting a refusal (explain).
    pub fn would_allow(&self, host: Option<&str>, tenant_id: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return true;
        }
        let Some(host) = host.and_then(tenantgate_core::domain::request_host) else {
            return true;
        };
        !matches!(self.current().get(host.as_str()), Some(owner) if &**owner != tenant_id)
    }

    /// Loads every domain; `false` if the store could not be read.
    pub async fn load(&self) -> bool {
        match self.store.all_tenant_domains().await {
            Ok(all) => {
                let map: Map = all
                    .into_iter()
                    .map(|(d, t)| (d.into_boxed_str(), Arc::from(t)))
                    .collect();
                self.replace(|m| *m = map);
                self.loaded.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not load the tenant domains; retrying");
                false
            }
        }
    }

    /// Loads every domain, retrying every second until it works.
    pub async fn load_until_ok(self: Arc<Self>) {
        while !self.load().await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Applies a change: a domain added or removed, or a tenant (deleted with its
    /// domains) changed.
    pub async fn apply(&self, c: &Change) {
        match c.kind {
            ChangeKind::Domain => match self.store.tenant_of_domain(&c.subject).await {
                Ok(Some(t)) => self.replace(|m| {
                    m.insert(c.subject.as_str().into(), Arc::from(t));
                }),
                Ok(None) => self.replace(|m| {
                    m.remove(c.subject.as_str());
                }),
                Err(_) => self.reload_later(),
            },
            ChangeKind::Tenant => {
                let owned = self.current().values().any(|t| **t == *c.tenant_id);
                if !owned {
                    return;
                }
                match self.store.list_tenant_domains(&c.tenant_id).await {
                    Ok(list) => self.replace(|m| {
                        m.retain(|_, t| **t != *c.tenant_id);
                        for d in list {
                            m.insert(d.domain.into_boxed_str(), Arc::from(d.tenant_id));
                        }
                    }),
                    Err(_) => self.reload_later(),
                }
            }
            _ => {}
        }
    }

    /// A change could not be applied (store unreachable): the follower loads
    /// everything again at its next feed read.
    fn reload_later(&self) {
        self.loaded.store(false, Ordering::Relaxed);
    }

    /// Whether the map was loaded since the last failure (for the follower).
    pub fn needs_reload(&self) -> bool {
        !self.loaded.load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tenantgate_proxy_tenant_domains Tenant domains the proxy knows.\n\
             # TYPE tenantgate_proxy_tenant_domains gauge\n\
             tenantgate_proxy_tenant_domains {}\n\
             # HELP tenantgate_proxy_tenant_domains_loaded 1 once the tenant domains were loaded (0: not yet, or a change could not be applied and a reload is due).\n\
             # TYPE tenantgate_proxy_tenant_domains_loaded gauge\n\
             tenantgate_proxy_tenant_domains_loaded {}\n\
             # HELP tenantgate_proxy_domain_refusals_total Requests refused 403 because their host is another tenant's domain.\n\
             # TYPE tenantgate_proxy_domain_refusals_total counter\n\
             tenantgate_proxy_domain_refusals_total {}",
            self.current().len(),
            u8::from(self.loaded.load(Ordering::Relaxed)),
            self.refused.load(Ordering::Relaxed),
        );
    }
}
