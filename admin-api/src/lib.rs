//! tenantgate admin API: a JSON API (axum) over the control-plane store — tenants,
//! users, API keys, RBAC policies, rate limits, usage — that also issues login JWTs
//! (RS256) and serves their JWKS.
//!
//! `main` only builds a [`Store`], loads the KEK (`tenantgate_core::sealing`), calls
//! [`build_state`] and [`serve`];
//! tests drive [`app`] in-process.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod client_ip;
pub mod error;
pub mod json;
pub mod lifecycle;
pub mod login_guard;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod scaling;
pub mod signing;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tenantgate_core::{Settings, Store, StoreError};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminInitError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("signing key: {0}")]
    Key(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// Settings of the admin API.
#[derive(Clone)]
pub struct AdminOptions {
    /// SHA-256 of the platform admin's bootstrap token (the token itself is not kept).
    pub bootstrap_token_sha256: [u8; 32],
    /// `iss` of the login tokens.
    pub issuer: String,
    /// Lifetime of the login tokens.
    pub token_ttl_seconds: u64,
    /// When set, API key digests are HMAC-SHA-256 keyed by it.
    pub api_key_pepper: Option<Vec<u8>>,
    /// Key-encryption key of the stored signing keys.
    pub kek: [u8; 32],
    /// Algorithm of the assertion keys a rotation creates.
    pub assertion_algorithm: tenantgate_core::assertion::AssertionAlg,
    /// How long a rotated assertion key is published before it signs.
    pub assertion_publish_ahead: std::time::Duration,
    /// Peers whose `x-forwarded-for` names the client (`[admin] trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Login throttling and the password-hashing bound.
    pub login_limits: login_guard::LoginLimits,
    /// Issuers no tenant may bind: the configured `[[jwt.issuers]]` and the
    /// login tokens' own.
    pub reserved_issuers: Vec<String>,
    /// `[jwt] allow_insecure_jwks`: bound issuers may use plain `http://` JWKS URLs.
    pub allow_insecure_jwks: bool,
    /// `[retention]`: the usage API's minute window and the lifecycle job.
    pub retention: tenantgate_core::config::RetentionSettings,
    /// `[[upstream_pools]]` names a tenant's `upstream_pool` may take.
    pub upstream_pools: Vec<String>,
    /// `[[autoscale]]`: (route name, policy), evaluated by [`scaling`].
    pub autoscale: Vec<(String, tenantgate_core::scaling::Policy)>,
    /// `[scaling]`: the evaluation interval and the signals' freshness.
    pub scaling: tenantgate_core::config::ScalingSettings,
    /// The proxy admin listener `POST /v1/explain` asks (`http://host:port`);
    /// `None`: explain answers 503.
    pub proxy_admin_url: Option<String>,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("issuer", &self.issuer)
            .field("token_ttl_seconds", &self.token_ttl_seconds)
            .field(
                "api_key_pepper",
                &self.api_key_pepper.as_ref().map(|_| "<set>"),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("login_limits", &self.login_limits)
            .finish_non_exhaustive()
    }
}

impl AdminOptions {
    /// The options `settings` give, for the platform token whose SHA-256 is
    /// `bootstrap_token_sha256`.
    pub fn from_settings(cfg: &Settings, bootstrap_token_sha256: [u8; 32], kek: [u8; 32]) -> Self {
        AdminOptions {
            bootstrap_token_sha256,
            issuer: cfg.admin.issuer.clone(),
            token_ttl_seconds: cfg.admin.token_ttl.as_secs(),
            api_key_pepper: cfg.api_key_pepper().map(<[u8]>::to_vec),
            kek,
            assertion_algorithm: cfg.assertion.algorithm,
            assertion_publish_ahead: cfg.assertion.publish_ahead,
            trusted_proxies: cfg.admin.trusted_proxies.clone(),
            login_limits: login_guard::LoginLimits::default(),
            reserved_issuers: std::iter::once(cfg.admin.issuer.clone())
                .chain(cfg.jwt.issuers.iter().map(|i| i.issuer.clone()))
                .collect(),
            allow_insecure_jwks: cfg.jwt.allow_insecure_jwks,
            retention: cfg.retention.clone(),
            upstream_pools: cfg.upstream_pools.iter().map(|p| p.name.clone()).collect(),
            autoscale: cfg
                .autoscale
                .iter()
                .map(|a| (a.route.clone(), a.policy))
                .collect(),
            scaling: cfg.scaling.clone(),
            proxy_admin_url: Some(
                cfg.admin
                    .explain_proxy_url
                    .clone()
                    .unwrap_or_else(|| proxy_admin_url(cfg.proxy.admin_listen)),
            ),
        }
    }
}

/// The proxy admin listener as this host reaches it (an unspecified listen address
/// is asked on loopback).
fn proxy_admin_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

struct Inner {
    store: Store,
    options: AdminOptions,
    keys: signing::Keys,
    metrics: metrics::Metrics,
    login: login_guard::LoginGuard,
    /// Calls to the proxy (explain).
    http: reqwest::Client,
}

/// Shared state of the admin API (cheap to clone).
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.inner.store)
            .field("options", &self.inner.options)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn options(&self) -> &AdminOptions {
        &self.inner.options
    }

    pub fn keys(&self) -> &signing::Keys {
        &self.inner.keys
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Login throttling and the password-hashing bound of this process.
    pub fn login_guard(&self) -> &login_guard::LoginGuard {
        &self.inner.login
    }

    /// The HTTP client of calls to the proxy.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The kid of the key this process signs login tokens with.
    pub fn signing_kid(&self) -> &str {
        &self.inner.keys.signer().kid
    }
}

/// Loads (or creates) the signing key and assembles the state.
pub async fn build_state(store: Store, opts: AdminOptions) -> Result<AdminState, AdminInitError> {
    let signer = signing::load_or_create(&store, &opts.kek).await?;
    let keys =
        signing::Keys::new(&store, signer, opts.issuer.clone(), opts.token_ttl_seconds).await?;
    let metrics = metrics::Metrics::new().map_err(|e| AdminInitError::Metrics(e.to_string()))?;
    let login = login_guard::LoginGuard::new(opts.login_limits.clone());
    Ok(AdminState {
        inner: Arc::new(Inner {
            store,
            options: opts,
            keys,
            metrics,
            login,
            http: reqwest::Client::new(),
        }),
    })
}

/// Every resource's routes with their OpenAPI operations: the one place a route
/// is registered.
pub fn api_router() -> OpenApiRouter<AdminState> {
    use routes::{
        api_keys, assertion_keys, audit, auth_login, client_certs, domains, explain, issuers, meta,
        plans, policies, quota, rate_limit, scaling, tenants, usage, users,
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(tenants::router())
        .merge(api_keys::router())
        .merge(users::router())
        .merge(issuers::router())
        .merge(domains::router())
        .merge(client_certs::router())
        .merge(policies::router())
        .merge(rate_limit::router())
        .merge(plans::router())
        .merge(quota::router())
        .merge(usage::router())
        .merge(audit::router())
        .merge(scaling::router())
        .merge(auth_login::router())
        .merge(assertion_keys::router())
        .merge(explain::router())
        .merge(meta::router())
}

/// The admin API router.
pub fn app(state: AdminState) -> Router {
    let (router, _) = api_router().split_for_parts();
    router
        .merge(ui::router())
        .fallback(routes::meta::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::around,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the admin API until `shutdown` resolves, then drains in-flight requests.
/// Each connection's peer address is known to the handlers (the client IP of
/// login throttling).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
