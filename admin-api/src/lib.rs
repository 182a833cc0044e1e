//! tenantgate admin API: a JSON API (axum) over the control-plane store — tenants,
//! users, API keys, RBAC policies, rate limits, usage — that also issues login JWTs
//! (RS256) and serves their JWKS.
//!
//! `main` only builds a [`Store`], calls [`load_kek`], [`build_state`] and [`serve`];
//! tests drive [`app`] in-process.
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod json;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod signing;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tenantgate_core::{Config, Store, StoreError};

pub use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Name of the generated server secret under `store.data_dir`.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminInitError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("signing key: {0}")]
    Key(String),
    #[error("{path}: {message}")]
    SecretFile { path: PathBuf, message: String },
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
            .finish_non_exhaustive()
    }
}

impl AdminOptions {
    pub fn from_config(cfg: &Config, bootstrap_token: &str, kek: [u8; 32]) -> Self {
        AdminOptions {
            bootstrap_token_sha256: Sha256::digest(bootstrap_token.as_bytes()).into(),
            issuer: cfg.admin.issuer.clone(),
            token_ttl_seconds: cfg.admin.token_ttl_seconds,
            api_key_pepper: cfg.api_key_pepper().map(<[u8]>::to_vec),
            kek,
        }
    }
}

/// The key-encryption key: derived from `admin.secret_key` when set, else from
/// `<store.data_dir>/secret.key` (32 random bytes, hex; created with mode 0600).
pub async fn load_kek(cfg: &Config) -> Result<[u8; 32], AdminInitError> {
    if let Some(secret) = &cfg.admin.secret_key {
        return Ok(tenantgate_core::jwt::derive_kek(secret.as_bytes()));
    }
    let path = cfg.store.data_dir.join(SECRET_KEY_FILE);
    let secret = tokio::task::spawn_blocking(move || read_or_create_secret(&path))
        .await
        .map_err(|e| AdminInitError::Key(format!("secret file task failed: {e}")))??;
    Ok(tenantgate_core::jwt::derive_kek(&secret))
}

fn read_or_create_secret(path: &Path) -> Result<[u8; 32], AdminInitError> {
    let err = |message: String| AdminInitError::SecretFile {
        path: path.to_owned(),
        message,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("cannot create directory: {e}")))?;
        }
    }
    let fresh: [u8; 32] = tenantgate_core::secrets::random_bytes();
    match create_private_file(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(format!("{}\n", hex::encode(fresh)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| err(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "created a new server secret");
            return Ok(fresh);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(format!("cannot create: {e}"))),
    }
    // Another process may be writing it right now: retry briefly on a short read.
    let mut last = String::new();
    for _ in 0..20 {
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        match hex::decode(text.trim()) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut out = [0u8; 32];
                out.copy_from_slice(&bytes);
                return Ok(out);
            }
            _ => last = "must hold 32 bytes as 64 hex characters".into(),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(err(last))
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

struct Inner {
    store: Store,
    options: AdminOptions,
    keys: signing::Keys,
    metrics: metrics::Metrics,
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
    Ok(AdminState {
        inner: Arc::new(Inner {
            store,
            options: opts,
            keys,
            metrics,
        }),
    })
}

/// The admin API router.
pub fn app(state: AdminState) -> Router {
    use routes::{api_keys, auth_login, meta, policies, rate_limit, tenants, usage, users};
    Router::new()
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/v1/tenants/{id}",
            get(tenants::get)
                .patch(tenants::update)
                .delete(tenants::delete),
        )
        .route(
            "/v1/tenants/{id}/api-keys",
            post(api_keys::create).get(api_keys::list),
        )
        .route(
            "/v1/tenants/{id}/api-keys/{key_id}",
            delete(api_keys::revoke),
        )
        .route(
            "/v1/tenants/{id}/api-keys/{key_id}/rotate",
            post(api_keys::rotate),
        )
        .route(
            "/v1/tenants/{id}/users",
            post(users::create).get(users::list),
        )
        .route("/v1/tenants/{id}/policies", get(policies::list))
        .route(
            "/v1/tenants/{id}/policies/{role}",
            get(policies::get).put(policies::put),
        )
        .route(
            "/v1/tenants/{id}/rate-limit",
            get(rate_limit::get).put(rate_limit::put),
        )
        .route("/v1/tenants/{id}/usage", get(usage::get))
        .route("/v1/auth/login", post(auth_login::login))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .route("/health", get(meta::health))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
        .fallback(meta::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::around,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the admin API until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
