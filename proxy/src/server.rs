//! Assembly: builds the gate from the config, runs its background work (change
//! follower, metering flusher, limiter sweep) and its admin listener on a control
//! runtime, and runs the Pingora server until SIGTERM/SIGINT. After Pingora has
//! drained in-flight requests, the remaining usage is flushed.

use crate::control::{CacheSettings, ControlPlane};
use crate::jwt::{IssuerSpec, JwtVerifier};
use crate::limiter::{Limiter, RedisLimiterOptions};
use crate::meter::Meter;
use crate::metrics::ProxyMetrics;
use crate::ratelimit::{LocalLimiter, MonotonicClock};
use crate::route::{RouteTable, Upstream};
use crate::service::{Gate, GateOptions};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use pingora::lb::health_check::TcpHealthCheck;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::{background_service, GenBackgroundService};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::config::{Config, RateLimitBackend, RouteConfig};
use tenantgate_core::store::Store;
use tokio::sync::watch;

/// Everything the background tasks and the admin listener share with the gate.
#[derive(Clone)]
pub struct ProxyShared {
    pub store: Store,
    pub control: Arc<ControlPlane>,
    pub jwt: Arc<JwtVerifier>,
    pub meter: Arc<Meter>,
    pub metrics: Arc<ProxyMetrics>,
    pub limiter: Arc<LocalLimiter>,
    /// The rate limiter the gate uses (local, or Redis with the local one as fallback).
    pub rate: Limiter,
    pub login_issuer: String,
}

/// Builds the gate and its health-checked upstream balancers.
pub fn build_gate(
    cfg: &Config,
    store: Store,
    routes: &[RouteConfig],
) -> Result<(Gate, Vec<GenBackgroundService<Upstream>>, ProxyShared), String> {
    let mut balancers = Vec::new();
    let mut built = Vec::new();
    for (i, rc) in routes.iter().enumerate() {
        let addrs = rc.upstream.addrs();
        let mut lb = Upstream::try_from_iter(addrs.iter().map(String::as_str))
            .map_err(|e| format!("routes[{i}].upstream: {e}"))?;
        lb.set_health_check(TcpHealthCheck::new());
        lb.health_check_frequency = Some(Duration::from_secs(2));
        let svc = background_service(&format!("health check {}", rc.prefix), lb);
        built.push(Arc::new(crate::route::Route::new(rc, addrs, svc.task())));
        balancers.push(svc);
    }
    let settings = CacheSettings {
        ttl: Duration::from_secs(cfg.proxy.cache_ttl_seconds),
        negative_ttl: Duration::from_millis(cfg.proxy.negative_cache_ttl_ms),
        max_staleness: Duration::from_secs(cfg.proxy.max_staleness_seconds),
        ..CacheSettings::default()
    };
    let control = Arc::new(ControlPlane::new(store.clone(), settings));
    let mut issuers = vec![IssuerSpec::login(&cfg.admin.issuer, store.clone())];
    for (i, ic) in cfg.jwt.issuers.iter().enumerate() {
        issuers.push(IssuerSpec::from_config(ic).map_err(|e| format!("jwt.issuers[{i}]: {e}"))?);
    }
    let jwt = Arc::new(JwtVerifier::new(
        issuers,
        cfg.jwt.leeway_seconds,
        cfg.proxy.max_token_bytes,
    ));
    let node_id = cfg
        .metering
        .node_id
        .clone()
        .unwrap_or_else(|| format!("proxy-{}", uuid::Uuid::new_v4()));
    let meter = Arc::new(Meter::with_spool(
        node_id,
        cfg.store.data_dir.join("spool"),
        crate::meter::SpoolLimits::default(),
    ));
    let metrics =
        Arc::new(ProxyMetrics::new(cfg.proxy.metrics_top_tenants).map_err(|e| e.to_string())?);
    let limiter = Arc::new(LocalLimiter::new(Arc::new(MonotonicClock::default())));
    let rate = match cfg.ratelimit.backend {
        RateLimitBackend::Local => Limiter::local(limiter.clone()),
        RateLimitBackend::Redis => {
            let url = cfg.redis.url.as_deref().ok_or_else(|| {
                "redis.url: required when ratelimit.backend = \"redis\"".to_owned()
            })?;
            Limiter::redis_lazy(
                url,
                meter.node_id(),
                cfg.ratelimit.fail_mode,
                limiter.clone(),
                RedisLimiterOptions {
                    key_prefix: cfg.redis.key_prefix.clone(),
                    call_timeout: Duration::from_millis(cfg.redis.timeout_ms),
                    connect_timeout: Duration::from_millis(cfg.redis.connect_timeout_ms),
                    ..RedisLimiterOptions::default()
                },
            )?
        }
    };
    let gate = Gate {
        routes: RouteTable::from_routes(built),
        control: control.clone(),
        jwt: jwt.clone(),
        limiter: rate.clone(),
        meter: meter.clone(),
        metrics: metrics.clone(),
        digester: tenantgate_core::secrets::ApiKeyDigester::new(cfg.api_key_pepper()),
        opts: GateOptions {
            connect_timeout: Duration::from_millis(cfg.proxy.upstream_connect_timeout_ms),
            read_timeout: Duration::from_millis(cfg.proxy.upstream_read_timeout_ms),
            ..GateOptions::default()
        },
    };
    let shared = ProxyShared {
        store,
        control,
        jwt,
        meter,
        metrics,
        limiter,
        rate,
        login_issuer: cfg.admin.issuer.clone(),
    };
    Ok((gate, balancers, shared))
}

/// Follows control-plane changes: the in-process bus (immediate) and the store's
/// change feed (other processes), deduplicated by change id.
pub async fn follow_changes(
    shared: ProxyShared,
    poll: Duration,
    mut notified: Option<tokio::sync::mpsc::Receiver<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut bus = shared.store.subscribe();
    let mut last_id = shared.store.latest_change_id().await.unwrap_or(0);
    let mut seen: HashMap<i64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feed_ok = true;
    loop {
        tokio::select! {
            msg = bus.recv() => match msg {
                Ok(c) => {
                    if seen.insert(c.id, Instant::now()).is_none() {
                        apply_change(&shared, &c).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "change bus lagged: invalidating all caches");
                    shared.control.invalidate_all();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    bus = shared.store.subscribe();
                }
            },
            // PostgreSQL NOTIFY: read the feed now instead of at the next tick.
            Some(()) = recv_opt(&mut notified) => {
                read_feed(&shared, &mut last_id, &mut seen, &mut feed_ok).await;
            },
            _ = tick.tick() => {
                read_feed(&shared, &mut last_id, &mut seen, &mut feed_ok).await;
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn recv_opt(rx: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the store's change feed past `last_id` (plus the last 5 s, for ids that
/// committed out of order) and applies what was not seen yet.
async fn read_feed(
    shared: &ProxyShared,
    last_id: &mut i64,
    seen: &mut HashMap<i64, Instant>,
    feed_ok: &mut bool,
) {
    let since = tenantgate_core::time::now_ms() - 5_000;
    match shared.store.changes_since(*last_id, since, 5_000).await {
        Ok(changes) => {
            if !*feed_ok {
                tracing::info!("change feed reachable again");
                *feed_ok = true;
            }
            for c in changes {
                *last_id = (*last_id).max(c.id);
                if seen.insert(c.id, Instant::now()).is_none() {
                    apply_change(shared, &c).await;
                }
            }
        }
        Err(e) => {
            if *feed_ok {
                tracing::warn!(error = %e, "change feed unreachable; serving from cache");
                *feed_ok = false;
            }
        }
    }
    seen.retain(|_, at| at.elapsed() < Duration::from_secs(30));
}

/// Keeps a PostgreSQL `LISTEN` on the change channel, reconnecting with backoff, and
/// pokes the follower on every notification (and once after each reconnect, to
/// catch what happened while disconnected).
pub async fn listen_changes(
    url: String,
    tx: tokio::sync::mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(tenantgate_core::store::CHANGE_CHANNEL).await?;
            let _ = tx.try_send(());
            loop {
                l.recv().await?;
                let _ = tx.try_send(());
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            res = attempt => {
                if let Err(e) = res {
                    tracing::warn!(error = %e, "change LISTEN lost; reconnecting");
                }
            }
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn apply_change(shared: &ProxyShared, c: &tenantgate_core::store::Change) {
    tracing::debug!(id = c.id, kind = c.kind.as_str(), tenant = %c.tenant_id, "control-plane change");
    if shared.control.apply(c).await {
        shared.jwt.invalidate_issuer_keys(&shared.login_issuer);
    }
}

/// Flushes usage every `interval` (or early when the recording maps grow past their
/// bound). While the store is down the flush attempts back off (up to 30 s), but every
/// tick still seals the new usage and spools it, so memory stays bounded and a crash
/// loses at most one interval.
pub async fn flush_loop(
    shared: ProxyShared,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let meter = shared.meter.clone();
    let mut backoff = interval;
    let mut retry_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = meter.seal_requested() => {}
            _ = shutdown.changed() => break,
        }
        if Instant::now() < retry_at {
            tokio::select! {
                _ = meter.seal_and_spill() => {}
                _ = shutdown.changed() => break,
            }
            continue;
        }
        // A flush against a hanging store must not hold up the shutdown flush; the
        // meter is safe to interrupt (a batch leaves its queue only once applied).
        let res = tokio::select! {
            r = meter.flush(&shared.store) => r,
            _ = shutdown.changed() => break,
        };
        match res {
            Ok(()) => {
                backoff = interval;
                retry_at = Instant::now();
            }
            Err(e) => {
                backoff = (backoff * 2).min(Duration::from_secs(30)).max(interval);
                retry_at = Instant::now() + backoff;
                let st = meter.stats();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    pending_requests = st.pending_requests,
                    spool_bytes = st.spool_bytes,
                    "usage flush failed"
                );
            }
        }
    }
}

pub async fn sweep_loop(shared: ProxyShared, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => shared.limiter.sweep(),
            _ = shutdown.changed() => break,
        }
    }
}

/// The proxy's own `/health` and `/metrics`.
pub fn admin_router(shared: ProxyShared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn health(State(s): State<ProxyShared>) -> impl IntoResponse {
    let started = Instant::now();
    let store = tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await;
    let ok = matches!(store, Ok(Ok(())));
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "checks": {
            "store": {
                "status": if ok { "ok" } else { "unavailable" },
                "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
            },
            "metering": {
                "pending_requests": s.meter.pending_requests(),
            }
        }
    });
    // Cached credentials keep working while the store is down, so the proxy stays
    // live; "degraded" tells the operator.
    (StatusCode::OK, Json(body))
}

async fn metrics(State(s): State<ProxyShared>) -> impl IntoResponse {
    let mut body = s.metrics.render(&s.control, &s.meter);
    body.push_str(&s.rate.stats().render_prometheus());
    body.push_str(&s.control.render_prometheus());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Starts the background tasks and the admin listener on `rt`.
pub fn start_background(
    rt: &tokio::runtime::Handle,
    cfg: &Config,
    shared: &ProxyShared,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let admin_listener = rt
        .block_on(tokio::net::TcpListener::bind(cfg.proxy.admin_listen))
        .map_err(|e| format!("proxy.admin_listen {}: {e}", cfg.proxy.admin_listen))?;
    let jwt = shared.jwt.clone();
    rt.spawn(async move { jwt.warm_up().await });
    let notified = if shared.store.backend() == tenantgate_core::store::Backend::Postgres {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        rt.spawn(listen_changes(cfg.store.url.clone(), tx, shutdown.clone()));
        Some(rx)
    } else {
        None
    };
    rt.spawn(follow_changes(
        shared.clone(),
        Duration::from_millis(cfg.proxy.change_poll_interval_ms),
        notified,
        shutdown.clone(),
    ));
    rt.spawn(flush_loop(
        shared.clone(),
        Duration::from_millis(cfg.metering.flush_interval_ms),
        shutdown.clone(),
    ));
    rt.spawn(sweep_loop(shared.clone(), shutdown.clone()));
    shared.rate.spawn_background(rt, shutdown.clone());
    let app = admin_router(shared.clone());
    let mut sd = shutdown;
    rt.spawn(async move {
        let serve = axum::serve(admin_listener, app).with_graceful_shutdown(async move {
            let _ = sd.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "proxy admin listener failed");
        }
    });
    Ok(())
}

/// Builds the Pingora server with the gate on `proxy.listen`.
pub fn pingora_server(
    cfg: &Config,
    gate: Gate,
    balancers: Vec<GenBackgroundService<Upstream>>,
) -> Server {
    let conf = ServerConf {
        threads: cfg.proxy.threads,
        grace_period_seconds: Some(cfg.proxy.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(Option::<pingora::server::configuration::Opt>::None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, gate);
    svc.add_tcp(&cfg.proxy.listen.to_string());
    server.add_service(svc);
    for b in balancers {
        server.add_service(b);
    }
    server
}

/// Runs Pingora until a shutdown signal, then stops the background work and flushes
/// the remaining usage (retrying for a few seconds; what still cannot reach the store
/// is spooled to disk for the next start). Blocking.
pub fn run_until_shutdown(
    rt: &tokio::runtime::Handle,
    server: Server,
    shared: &ProxyShared,
    shutdown_tx: watch::Sender<bool>,
) {
    server.run(RunArgs::default());
    tracing::info!("proxy drained; flushing usage");
    let _ = shutdown_tx.send(true);
    let meter = shared.meter.clone();
    let store = shared.store.clone();
    rt.block_on(final_flush(meter, store, Duration::from_secs(5)));
}

/// The shutdown flush: retries until `within` passes, then spools what is left.
pub async fn final_flush(meter: Arc<Meter>, store: Store, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt =
            tokio::time::timeout(left.max(Duration::from_millis(100)), meter.flush(&store))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
        match attempt {
            Ok(()) => {
                tracing::info!(flushed = meter.stats().flushed_requests, "usage flushed");
                return;
            }
            Err(e) if Instant::now() + Duration::from_millis(200) < deadline => {
                tracing::warn!(error = %e, "final usage flush failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "final usage flush failed; spooling what is left");
                break;
            }
        }
    }
    let spooled = tokio::time::timeout(Duration::from_secs(5), meter.spool_all())
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
    match spooled {
        Ok(n) => tracing::warn!(
            spooled_requests = n,
            "usage spooled to disk; the next start replays it into the store"
        ),
        Err(e) => tracing::error!(
            error = %e,
            pending = meter.pending_requests(),
            "final usage flush failed and the spool is unusable; usage lost"
        ),
    }
}
