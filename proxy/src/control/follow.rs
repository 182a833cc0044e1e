//! The change follower: applies control-plane changes to the proxy's caches as
//! they happen. Changes arrive on the in-process bus (same process, immediate),
//! through PostgreSQL `NOTIFY` (a poke to read the feed now) and by polling the
//! store's change feed (the safety net); each change is applied once, by id.

use super::domains::Domains;
use super::ControlPlane;
use crate::assertion::Assertions;
use crate::auth::Authenticator;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::store::{Change, ChangeKind, Store};
use tokio::sync::{mpsc, watch};

/// How far back each feed read looks besides the ids after the last one seen:
/// ids can commit out of order.
const FEED_OVERLAP_MS: i64 = 5_000;
/// Changes read at most per feed read.
const FEED_PAGE: i64 = 5_000;
/// How long an applied id is remembered (longer than the overlap).
const SEEN_FOR: Duration = Duration::from_secs(30);

/// Applies changes to the caches and counts how late they arrive.
pub struct Follower {
    store: Store,
    control: Arc<ControlPlane>,
    auth: Arc<Authenticator>,
    assertions: Option<Arc<Assertions>>,
    domains: Option<Arc<Domains>>,
    /// Age of the last applied change when it was applied (commit → invalidation), ms.
    last_lag_ms: AtomicU64,
    max_lag_ms: AtomicU64,
    applied: AtomicU64,
    /// Times the feed this proxy knew was pruned under it (it reloaded everything).
    reloads: AtomicU64,
}

impl Follower {
    pub fn new(store: Store, control: Arc<ControlPlane>, auth: Arc<Authenticator>) -> Self {
        Follower {
            store,
            control,
            auth,
            assertions: None,
            domains: None,
            last_lag_ms: AtomicU64::new(0),
            max_lag_ms: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }

    /// Also pokes `assertions` when the assertion keys change.
    pub fn with_assertions(mut self, assertions: Arc<Assertions>) -> Self {
        self.assertions = Some(assertions);
        self
    }

    /// Also keeps `domains` (the tenant domains) up to date.
    pub fn with_domains(mut self, domains: Arc<Domains>) -> Self {
        self.domains = Some(domains);
        self
    }

    /// Applies one change to every cache it touches.
    pub async fn apply(&self, c: &Change) {
        tracing::debug!(id = c.id, kind = c.kind.as_str(), tenant = %c.tenant_id, "control-plane change");
        let lag = u64::try_from(tenantgate_core::time::now_ms().saturating_sub(c.created_at_ms))
            .unwrap_or(0);
        self.last_lag_ms.store(lag, Ordering::Relaxed);
        self.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.control.apply(c).await;
        self.auth.apply(c).await;
        if c.kind == ChangeKind::AssertionKey {
            if let Some(a) = &self.assertions {
                a.poke();
            }
        }
        // Issuers bound to tenants (an issuer change, or a tenant of theirs changed).
        self.auth.jwt.apply_change(c).await;
        if let Some(d) = &self.domains {
            d.apply(c).await;
        }
    }

    /// After missed changes: forget everything cached, and reload what is kept
    /// whole rather than cached (bound issuers, the API key prefix index).
    pub fn invalidate_all(&self) {
        self.control.invalidate_all();
        self.auth.invalidate_all();
        if let Some(a) = &self.assertions {
            a.poke();
        }
        tokio::spawn(load_credential_indexes(self.auth.clone()));
        if let Some(d) = &self.domains {
            tokio::spawn(d.clone().load_until_ok());
        }
    }

    /// Follows changes until `shutdown`: the bus, NOTIFY pokes (`notified`) and a
    /// feed read every `poll`.
    pub async fn run(
        self: Arc<Self>,
        poll: Duration,
        mut notified: Option<mpsc::Receiver<()>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut bus = self.store.subscribe();
        let mut feed = Feed {
            last_id: self.store.latest_change_id().await.unwrap_or(0),
            seen: HashMap::new(),
            ok: true,
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = bus.recv() => match msg {
                    Ok(c) => {
                        if feed.seen.insert(c.id, Instant::now()).is_none() {
                            self.apply(&c).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "change bus lagged: invalidating all caches");
                        self.invalidate_all();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        bus = self.store.subscribe();
                    }
                },
                // PostgreSQL NOTIFY: read the feed now instead of at the next tick.
                Some(()) = recv_opt(&mut notified) => self.read_feed(&mut feed).await,
                _ = tick.tick() => {
                    self.read_feed(&mut feed).await;
                    // A domain change that could not be applied: load them all again.
                    if let Some(d) = self.domains.as_ref().filter(|d| d.needs_reload()) {
                        d.load().await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Reads the feed past the last id seen (and the last few seconds, for ids
    /// that committed out of order) and applies what was not applied yet.
    async fn read_feed(&self, feed: &mut Feed) {
        let started = tenantgate_core::time::now_ms();
        let since = started - FEED_OVERLAP_MS;
        let read = async {
            // Away longer than `[retention] changes_hours`: what it missed may be
            // pruned, so it cannot know what changed. Forget everything instead.
            let pruned = self.store.changes_pruned_through().await?;
            if pruned > feed.last_id {
                tracing::warn!(
                    last_seen = feed.last_id,
                    pruned_through = pruned,
                    "the change feed was pruned past this proxy's position: reloading all caches"
                );
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.invalidate_all();
                feed.last_id = pruned;
            }
            self.store
                .changes_since(feed.last_id, since, FEED_PAGE)
                .await
        };
        match read.await {
            Ok(changes) => {
                if !feed.ok {
                    tracing::info!("change feed reachable again");
                    feed.ok = true;
                }
                for c in changes {
                    feed.last_id = feed.last_id.max(c.id);
                    if feed.seen.insert(c.id, Instant::now()).is_none() {
                        self.apply(&c).await;
                    }
                }
                // Requests with a prefix the key index did not know wait for this.
                self.auth.api_keys.index.caught_up(started);
            }
            Err(e) => {
                if feed.ok {
                    tracing::warn!(error = %e, "change feed unreachable; serving from cache");
                    feed.ok = false;
                }
            }
        }
        feed.seen.retain(|_, at| at.elapsed() < SEEN_FOR);
    }

    /// Appends the change-propagation gauges as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let secs = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = write!(
            out,
            "# HELP tenantgate_proxy_change_lag_seconds Age of the last control-plane change when this proxy applied it\n\
             # TYPE tenantgate_proxy_change_lag_seconds gauge\n\
             tenantgate_proxy_change_lag_seconds {}\n\
             # HELP tenantgate_proxy_change_lag_max_seconds Largest change age seen at application since start\n\
             # TYPE tenantgate_proxy_change_lag_max_seconds gauge\n\
             tenantgate_proxy_change_lag_max_seconds {}\n\
             # HELP tenantgate_proxy_changes_applied_total Control-plane changes applied to the caches\n\
             # TYPE tenantgate_proxy_changes_applied_total counter\n\
             tenantgate_proxy_changes_applied_total {}\n\
             # HELP tenantgate_proxy_change_feed_reloads_total Times the change feed was pruned past this proxy's position and it reloaded all caches\n\
             # TYPE tenantgate_proxy_change_feed_reloads_total counter\n\
             tenantgate_proxy_change_feed_reloads_total {}\n",
            secs(&self.last_lag_ms),
            secs(&self.max_lag_ms),
            self.applied.load(Ordering::Relaxed),
            self.reloads.load(Ordering::Relaxed)
        );
    }
}

/// Loads what the authenticators keep whole (the issuers bound to tenants and the
/// API key prefix index), retrying until each load succeeds. Run at start, and
/// after missed changes.
pub async fn load_credential_indexes(auth: Arc<Authenticator>) {
    let jwt = auth.jwt.clone();
    futures::join!(
        jwt.reload_bound_until_ok(),
        auth.api_keys.load_index_until_ok()
    );
}

/// Where the feed reader is.
struct Feed {
    last_id: i64,
    seen: HashMap<i64, Instant>,
    ok: bool,
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
