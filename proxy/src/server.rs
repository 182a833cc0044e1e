//! Assembly: builds the gate from the settings, runs its background work (change
//! follower, metering flusher, limiter upkeep) and its admin listener on a control
//! runtime, and runs the Pingora server until SIGTERM/SIGINT. After Pingora has
//! drained in-flight requests, the remaining usage is flushed.

use crate::admit::Pipeline;
use crate::assertion::Assertions;
use crate::auth::jwt::{BoundOptions, IssuerSpec, JwtVerifier};
use crate::auth::users::LoginUsers;
use crate::auth::{ApiKeys, Authenticator, ClientCerts};
use crate::cache::{Breaker, CacheSettings};
use crate::control::domains::Domains;
use crate::control::follow::Follower;
use crate::control::ControlPlane;
use crate::fairness::Fairness;
use crate::forwarded::Forwarding;
use crate::limiter::quota::Quotas;
use crate::limiter::{Limiter, LocalLimiter, MonotonicClock, RedisLimiterOptions};
use crate::listener::{GateListener, ListenerLimits};
use crate::meter::{self, Meter};
use crate::metrics::ProxyMetrics;
use crate::route::{LiveRoutes, Route, RouteTable, Routing, Upstream, UpstreamGroup};
use crate::service::{Gate, GateOptions};
use crate::signals::SignalBoard;
use crate::tls::{TlsAcceptor, UpstreamTls};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use pingora::lb::health_check::TcpHealthCheck;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::config::{LimiterBackend, RouteSettings, Settings, UpstreamSettings};
use tenantgate_core::secrets::ApiKeyDigester;
use tenantgate_core::store::{Backend, Store};
use tokio::sync::watch;

/// How long misses fail fast after the store failed, before one probe.
const STORE_BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
/// How long the shutdown flush keeps retrying before it spools.
const FINAL_FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What the background tasks and the proxy's admin listener share with the gate.
#[derive(Clone)]
pub struct ProxyParts {
    pub store: Store,
    pub control: Arc<ControlPlane>,
    pub auth: Arc<Authenticator>,
    pub follower: Arc<Follower>,
    pub meter: Arc<Meter>,
    pub metrics: Arc<ProxyMetrics>,
    pub limiter: Limiter,
    pub quotas: Arc<Quotas>,
    pub assertions: Arc<Assertions>,
    pub fairness: Arc<Fairness>,
    pub domains: Arc<Domains>,
    /// Stages 1–6, for `POST /explain`.
    pub pipeline: Arc<Pipeline>,
}

/// The gate, its health-checked upstreams and the parts shared with the
/// background work.
pub struct Built {
    pub gate: Gate,
    /// The route table's upstreams, whose health checks run on the control runtime.
    pub upstreams: Vec<Arc<Upstream>>,
    pub parts: ProxyParts,
}

/// How often each upstream backend is health-checked (TCP connect).
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(2);

/// A balancer over `up` with its health check set (started by
/// [`spawn_health_checks`]), its balancer pushed to `upstreams`; `key` names it in
/// errors.
fn upstream_group(
    settings: &Settings,
    up: &UpstreamSettings,
    key: &str,
    upstreams: &mut Vec<Arc<Upstream>>,
) -> Result<Arc<UpstreamGroup>, String> {
    let mut lb = Upstream::try_from_iter(up.addrs.iter().map(String::as_str))
        .map_err(|e| format!("{key}: {e}"))?;
    lb.set_health_check(TcpHealthCheck::new());
    lb.health_check_frequency = Some(HEALTH_CHECK_EVERY);
    let lb = Arc::new(lb);
    let tls = if up.tls {
        Some(Arc::new(
            UpstreamTls::new(
                &up.addrs,
                up.ca_file.as_deref(),
                settings.proxy.upstream_connect_timeout,
            )
            .map_err(|e| format!("{key}: {e}"))?,
        ))
    } else {
        None
    };
    let group = UpstreamGroup::new(up.addrs.clone(), lb.clone(), tls);
    upstreams.push(lb);
    Ok(Arc::new(group))
}

/// The routing for `routes` and `settings.upstream_pools`, and its upstreams
/// (health checks set, not started). `previous`: the routing it replaces; a route
/// of the same name keeps its autoscaling signals.
pub fn build_routes(
    settings: &Settings,
    routes: &[RouteSettings],
    previous: Option<&Routing>,
) -> Result<(Routing, Vec<Arc<Upstream>>), String> {
    let mut upstreams = Vec::new();
    let mut built = Vec::new();
    for (i, rc) in routes.iter().enumerate() {
        let own = UpstreamSettings {
            addrs: rc.upstreams.clone(),
            tls: rc.tls,
            ca_file: rc.ca_file.clone(),
        };
        let group = upstream_group(
            settings,
            &own,
            &format!("routes[{i}].upstream"),
            &mut upstreams,
        )?;
        let mut route = Route::new(rc, group);
        for (tenant, up) in &rc.tenant_upstreams {
            let key = format!("routes[{i}].tenant_upstreams.{tenant}");
            let group = upstream_group(settings, up, &key, &mut upstreams)?;
            route.tenant_upstreams.insert(tenant.as_str().into(), group);
        }
        if let Some(old) = previous.and_then(|p| {
            p.table
                .routes()
                .iter()
                .find(|r| r.name == route.name)
                .cloned()
        }) {
            route.signals = old.signals.clone();
        }
        built.push(Arc::new(route));
    }
    let mut pools = HashMap::new();
    for (i, p) in settings.upstream_pools.iter().enumerate() {
        let key = format!("upstream_pools[{i}].upstream");
        let group = upstream_group(settings, &p.upstream, &key, &mut upstreams)?;
        pools.insert(p.name.as_str().into(), group);
    }
    let routing = Routing {
        table: RouteTable::from_routes(built),
        pools,
    };
    Ok((routing, upstreams))
}

/// Runs the health checks of `upstreams` on `rt` until `stop` says true.
pub fn spawn_health_checks(
    rt: &tokio::runtime::Handle,
    upstreams: Vec<Arc<Upstream>>,
    stop: &watch::Receiver<bool>,
) {
    use pingora::services::background::BackgroundService;
    for lb in upstreams {
        let stop = stop.clone();
        rt.spawn(async move { lb.start(stop).await });
    }
}

/// Builds the gate for `routes` over `store`.
pub fn build(settings: &Settings, store: Store, routes: &[RouteSettings]) -> Result<Built, String> {
    let (routing, upstreams) = build_routes(settings, routes, None)?;
    let signals = Arc::new(SignalBoard::new(
        routing
            .table
            .routes()
            .iter()
            .map(|r| (r.name.clone(), r.signals.clone()))
            .collect(),
    ));
    let p = &settings.proxy;
    let cache = CacheSettings {
        ttl: p.cache_ttl,
        negative_ttl: p.negative_cache_ttl,
        max_staleness: p.max_staleness,
        ..CacheSettings::default()
    };
    // One breaker for every cache that reads the store: when it fails, all of
    // them fail fast until one probe finds it back.
    let breaker = Arc::new(Breaker::new(1, STORE_BREAKER_COOLDOWN));
    let control = Arc::new(ControlPlane::new(
        store.clone(),
        cache.clone(),
        breaker.clone(),
    ));
    let mut issuers = vec![IssuerSpec::login(&settings.admin.issuer, store.clone())];
    for (i, ic) in settings.jwt.issuers.iter().enumerate() {
        issuers.push(IssuerSpec::from_settings(ic).map_err(|e| format!("jwt.issuers[{i}]: {e}"))?);
    }
    let jwt = Arc::new(JwtVerifier::new(
        issuers,
        settings.jwt.leeway.as_secs(),
        p.max_token_bytes,
    ));
    let users = LoginUsers::new(store.clone(), cache.clone(), breaker.clone());
    let client_certs = ClientCerts::new(store.clone(), cache.clone(), breaker.clone());
    jwt.follow_bound_issuers(
        store.clone(),
        BoundOptions {
            allow_insecure_jwks: settings.jwt.allow_insecure_jwks,
        },
    );
    let api_keys = ApiKeys::new(
        store.clone(),
        cache,
        breaker,
        ApiKeyDigester::new(settings.api_key_pepper()),
    );
    let auth = Arc::new(Authenticator::new(
        api_keys,
        jwt,
        users,
        client_certs,
        settings.admin.issuer.clone(),
    ));
    let assertions = Arc::new(Assertions::new(settings.assertion.clone()));
    let domains = Arc::new(Domains::new(store.clone()));
    let follower = Arc::new(
        Follower::new(store.clone(), control.clone(), auth.clone())
            .with_assertions(assertions.clone())
            .with_domains(domains.clone()),
    );
    let node_id = settings
        .metering
        .node_id
        .clone()
        .unwrap_or_else(|| format!("proxy-{}", uuid::Uuid::new_v4()));
    let meter = Arc::new(Meter::with_spool(
        node_id,
        settings.store.data_dir.join("spool"),
        meter::SpoolLimits::default(),
    ));
    meter.attach_signals(signals);
    let metrics = Arc::new(ProxyMetrics::new(p.metrics_top_tenants).map_err(|e| e.to_string())?);
    let local = Arc::new(LocalLimiter::new(Arc::new(MonotonicClock::default())));
    let limiter = match &settings.ratelimit.backend {
        LimiterBackend::Local => Limiter::local(local),
        LimiterBackend::Redis(r) => Limiter::redis_lazy(
            &r.url,
            meter.node_id(),
            settings.ratelimit.fail_mode,
            local,
            RedisLimiterOptions {
                key_prefix: r.key_prefix.clone(),
                call_timeout: r.timeout,
                connect_timeout: r.connect_timeout,
                ..RedisLimiterOptions::default()
            },
        )?,
    };
    let open_files = crate::listener::raise_open_file_limit();
    let max_connections = p
        .max_connections
        .unwrap_or_else(|| crate::listener::default_max_connections(open_files));
    let fairness = Arc::new(Fairness::new(p.fairness, max_connections, p.grace_period));
    let quotas = Arc::new(Quotas::new(store.clone(), limiter.clone()));
    let opts = GateOptions {
        connect_timeout: p.upstream_connect_timeout,
        read_timeout: p.upstream_read_timeout,
        ..GateOptions::default()
    };
    let pipeline = Arc::new(Pipeline {
        routes: Arc::new(LiveRoutes::new(routing)),
        auth: auth.clone(),
        control: control.clone(),
        limiter: limiter.clone(),
        quotas: quotas.clone(),
        forwarding: Forwarding::new(p.trusted_proxies.clone()),
        assertions: assertions.clone(),
        domains: domains.clone(),
        max_header_bytes: opts.max_header_bytes,
    });
    let gate = Gate {
        pipeline: pipeline.clone(),
        meter: meter.clone(),
        metrics: metrics.clone(),
        fairness: fairness.clone(),
        opts,
    };
    let parts = ProxyParts {
        store,
        pipeline,
        control,
        auth,
        follower,
        meter,
        metrics,
        limiter,
        quotas,
        assertions,
        fairness,
        domains,
    };
    Ok(Built {
        gate,
        upstreams,
        parts,
    })
}

/// The proxy's own `/health`, `/metrics` and the tenant-assertion JWKS.
pub fn admin_router(parts: ProxyParts) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/explain", axum::routing::post(explain))
        .with_state(parts)
}

/// The decision this proxy would make for a described request (see
/// [`crate::explain`]); the admin API's `POST /v1/explain` asks here.
async fn explain(State(s): State<ProxyParts>, body: axum::body::Bytes) -> axum::response::Response {
    let fail = |status: StatusCode, field: Option<&str>, message: String| {
        let mut err = serde_json::json!({
            "code": if status == StatusCode::BAD_REQUEST { "bad_request" } else { "validation_error" },
            "message": message,
        });
        if let (Some(f), Some(o)) = (field, err.as_object_mut()) {
            o.insert("field".into(), f.into());
        }
        (status, Json(serde_json::json!({ "error": err }))).into_response()
    };
    let req: crate::explain::ExplainRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                None,
                format!("malformed body: {e}"),
            )
        }
    };
    match crate::explain::explain(&s.pipeline, &req).await {
        Ok(x) => Json(x).into_response(),
        Err(bad) => fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&bad.field),
            bad.message,
        ),
    }
}

/// The public keys upstreams verify `x-tenant-assertion` with (keys published
/// ahead of use are already in it).
async fn jwks(State(s): State<ProxyParts>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=30"),
        ],
        s.assertions.jwks(),
    )
}

async fn health(State(s): State<ProxyParts>) -> impl IntoResponse {
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

/// Every component appends its own series.
async fn metrics(State(s): State<ProxyParts>) -> impl IntoResponse {
    let mut body = String::new();
    s.metrics.render(&mut body);
    crate::cache::render_header(&mut body);
    s.control.render(&mut body);
    s.auth.render(&mut body);
    s.meter.render(&mut body);
    s.limiter.render(&mut body);
    s.follower.render(&mut body);
    s.assertions.render(&mut body);
    crate::listener::render(&mut body);
    s.fairness.render(&mut body);
    s.domains.render(&mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Starts the background tasks and the admin listener on `rt`.
pub fn start_background(
    rt: &tokio::runtime::Handle,
    settings: &Settings,
    parts: &ProxyParts,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let admin_listen = settings.proxy.admin_listen;
    let admin_listener = rt
        .block_on(tokio::net::TcpListener::bind(admin_listen))
        .map_err(|e| format!("proxy.admin_listen {admin_listen}: {e}"))?;
    let jwt = parts.auth.jwt.clone();
    rt.spawn(async move { jwt.warm_up().await });
    rt.spawn(crate::control::follow::load_credential_indexes(
        parts.auth.clone(),
    ));
    rt.spawn(parts.domains.clone().load_until_ok());
    // PostgreSQL NOTIFY pokes the follower to read the feed at once.
    let notified = (parts.store.backend() == Backend::Postgres).then(|| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (store, stop) = (parts.store.clone(), shutdown.clone());
        rt.spawn(async move { store.listen(tx, stop).await });
        rx
    });
    rt.spawn(parts.follower.clone().run(
        settings.proxy.change_poll_interval,
        notified,
        shutdown.clone(),
    ));
    rt.spawn(meter::flush_loop(
        parts.meter.clone(),
        parts.store.clone(),
        settings.metering.flush_interval,
        shutdown.clone(),
    ));
    parts.limiter.spawn_background(rt, shutdown.clone());
    rt.spawn(
        parts
            .quotas
            .clone()
            .flush_loop(settings.metering.flush_interval, shutdown.clone()),
    );
    if settings.assertion.enabled {
        let kek = rt
            .block_on(tenantgate_core::sealing::load_kek(settings))
            .map_err(|e| format!("admin.secret_key: {e}"))?;
        // The first load before serving, so the first request can be signed; a
        // store that is down now is retried by the keeper (requests get 503 meanwhile).
        let first = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                parts.assertions.refresh(&parts.store, &kek),
            )
            .await
        });
        match first {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "tenant-assertion keys not loaded yet"),
            Err(_) => tracing::warn!("tenant-assertion keys not loaded yet (store slow)"),
        }
        rt.spawn(
            parts
                .assertions
                .clone()
                .keep(parts.store.clone(), kek, shutdown.clone()),
        );
    }
    let app = admin_router(parts.clone());
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

/// The Pingora server with the gate on `proxy.listen`.
pub fn pingora_server(settings: &Settings, gate: Gate, tls: Option<Arc<TlsAcceptor>>) -> Server {
    let conf = ServerConf {
        threads: settings.proxy.threads,
        grace_period_seconds: Some(settings.proxy.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(Option::<pingora::server::configuration::Opt>::None, conf);
    server.bootstrap();
    let fairness = gate.fairness.clone();
    let max_connections = fairness.max_connections();
    tracing::info!(max_connections, "client connection limit");
    let proxy = Arc::new(pingora::proxy::http_proxy(&server.configuration, gate));
    let limits = ListenerLimits {
        header_timeout: settings.proxy.header_timeout,
        keepalive_timeout: settings.proxy.keepalive_timeout,
        max_connections,
    };
    let app = GateListener::shared(proxy.clone(), limits, fairness.clone(), None);
    let mut svc = pingora::services::listening::Service::new("tenantgate proxy".into(), app);
    // No L4 read buffer on plain HTTP: the HTTP/1 session reads the header section
    // into its own buffer, so Pingora's 64 KiB per-connection read buffer only cost
    // memory (held by every idle keep-alive connection) and a copy.
    svc.add_listener(
        ListenerConfig::tcp(settings.proxy.listen.to_string())
            .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
    );
    server.add_service(svc);
    if let Some(tls) = tls {
        // The same gate behind a TLS listener; TLS is terminated in the listener
        // app (see `crate::tls`), so Pingora listens on plain TCP here.
        let listen = tls.settings().listen.to_string();
        let app = GateListener::shared(proxy, limits, fairness, Some(tls));
        let mut svc = pingora::services::listening::Service::new("tenantgate tls".into(), app);
        svc.add_listener(
            ListenerConfig::tcp(listen)
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
        );
        server.add_service(svc);
    }
    server
}

/// Reads the config file again (validated whole) for a reload: the new settings
/// (their `[[upstream_pools]]`) and the routes to serve.
pub type RouteSource =
    Box<dyn Fn() -> Result<(Settings, Vec<RouteSettings>), String> + Send + Sync>;

/// What SIGHUP reloads: the TLS certificates and the routes.
pub struct Reloadable {
    pub tls: Option<Arc<TlsAcceptor>>,
    pub routes: Arc<LiveRoutes>,
    /// `None`: no config file (built-in defaults), so no routes to read again.
    pub source: Option<RouteSource>,
}

impl Reloadable {
    /// One SIGHUP: the config file is read and validated whole first; if it does
    /// not load, nothing changes and one error line names the file and the key.
    /// Otherwise the certificates are read again and the new routing (route table
    /// and pools) is built and swapped in, starting its health checks and stopping
    /// the previous ones.
    fn reload(&self, rt: &tokio::runtime::Handle, generation: &mut watch::Sender<bool>) {
        let Some(source) = &self.source else {
            if let Some(tls) = &self.tls {
                tls.reload();
            }
            tracing::info!("SIGHUP: routes not reloaded (no config file)");
            return;
        };
        let (settings, routes) = match source() {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "SIGHUP: configuration not reloaded; keeping the previous certificates and routes"
                );
                return;
            }
        };
        if let Some(tls) = &self.tls {
            tls.reload();
        }
        let current = self.routes.current();
        let built = if routes.is_empty() {
            Err("routes: the new configuration has no [[routes]]".to_owned())
        } else {
            build_routes(&settings, &routes, Some(&current))
        };
        match built {
            Ok((routing, upstreams)) => {
                let (next, stop) = watch::channel(false);
                spawn_health_checks(rt, upstreams, &stop);
                let n = routing.table.routes().len();
                let pools = routing.pools.len();
                self.routes.replace(routing);
                let _ = generation.send(true);
                *generation = next;
                tracing::info!(routes = n, pools, "SIGHUP: routes reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: routes not reloaded; keeping the previous ones");
            }
        }
    }
}

/// SIGHUP reloads the TLS certificates (open connections keep theirs) and the
/// routes (requests in flight keep theirs). Pingora does not handle SIGHUP (its
/// upgrade signal is SIGQUIT), and its default action would end the process, so
/// the handler is installed before serving. `generation` stops the health checks
/// of the route table in force when it is replaced (or at shutdown).
pub fn reload_on_hangup(
    rt: &tokio::runtime::Handle,
    reload: Reloadable,
    mut generation: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let _entered = rt.enter();
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
    let handle = rt.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    // Reading and parsing the file blocks; it is small and rare.
                    reload.reload(&handle, &mut generation);
                }
                _ = shutdown.changed() => break,
            }
        }
        let _ = generation.send(true);
    });
    Ok(())
}

/// Pingora binds late and aborts on failure; checking first makes the error ours.
pub fn check_listen_free(addr: std::net::SocketAddr, key: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{key} {addr}: cannot listen: {e}"))
}

/// Runs the proxy for `routes` until SIGTERM/SIGINT (blocking): builds it, starts
/// its background work on `rt`, calls `ready` once it is about to serve, serves,
/// then stops the background work (through `shutdown`) and flushes the remaining
/// usage (what cannot reach the store is spooled to disk for the next start).
pub fn run(
    rt: &tokio::runtime::Handle,
    settings: &Settings,
    store: Store,
    routes: &[RouteSettings],
    source: Option<RouteSource>,
    shutdown: &watch::Sender<bool>,
    ready: impl FnOnce(),
) -> Result<(), String> {
    let Built {
        gate,
        upstreams,
        parts,
    } = build(settings, store, routes)?;
    let tls = match &settings.proxy.tls {
        Some(t) => Some(Arc::new(TlsAcceptor::new(t.clone())?)),
        None => None,
    };
    start_background(rt, settings, &parts, shutdown.subscribe())?;
    check_listen_free(settings.proxy.listen, "proxy.listen")?;
    if let Some(t) = &settings.proxy.tls {
        check_listen_free(t.listen, "proxy.tls.listen")?;
    }
    let (generation, checks) = watch::channel(false);
    spawn_health_checks(rt, upstreams, &checks);
    let reload = Reloadable {
        tls: tls.clone(),
        routes: gate.pipeline.routes.clone(),
        source,
    };
    reload_on_hangup(rt, reload, generation, shutdown.subscribe())?;
    let server = pingora_server(settings, gate, tls);
    tracing::info!(
        listen = %settings.proxy.listen,
        tls = ?settings.proxy.tls.as_ref().map(|t| t.listen),
        admin = %settings.proxy.admin_listen,
        "proxy listening"
    );
    ready();
    server.run(RunArgs::default());
    tracing::info!("proxy drained; flushing usage");
    let _ = shutdown.send(true);
    rt.block_on(meter::final_flush(
        parts.meter.clone(),
        parts.store.clone(),
        FINAL_FLUSH_WITHIN,
    ));
    // What was counted against quotas since the last flush (a restart starts there).
    let quotas = parts.quotas.clone();
    rt.block_on(async move {
        let flushed = tokio::time::timeout(
            FINAL_FLUSH_WITHIN,
            quotas.flush(tenantgate_core::time::now_ms()),
        )
        .await;
        if flushed.is_err() {
            tracing::warn!("quota counts could not be flushed before exit");
        }
    });
    Ok(())
}
