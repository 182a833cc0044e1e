//! The demo upstream: an ordinary tenant-scoped app behind tenantgate. It trusts
//! the identity headers the proxy injects (`x-tenant-id`, `x-user-id`, …) and keeps
//! `/api/v1/resources` rows per tenant in SQLite or PostgreSQL — on PostgreSQL in a
//! schema per tenant ([`tenancy`]) — and runs `/api/v1/jobs` in the background with
//! the submitting request's tenant context ([`jobs`]).
//!
//! ```text
//! tenantgate demo-upstream &
//! curl -s -H 'x-tenant-id: acme' -H 'x-user-id: u1' -d '{"name":"a"}' localhost:8082/api/v1/resources
//! curl -s -H 'x-tenant-id: acme' localhost:8082/api/v1/resources
//! curl -s localhost:8082/api/v1/whoami
//! ```
#![forbid(unsafe_code)]

mod assertion;
mod debug;
mod error;
mod identity;
pub mod jobs;
pub mod migrations;
mod repo;
mod resources;
pub mod tenancy;

pub use assertion::{AssertionVerifier, ASSERTION};
pub use error::{code, ApiError};
pub use identity::{API_KEY_ID, AUTH_METHOD, REQUEST_ID, TENANT_ID, TENANT_ROLE, USER_ID};
pub use repo::Resource;
pub use tenancy::{schema_name, Tenancy};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use identity::{RequestId, TenantCtx};
use serde_json::json;
use sqlx::{Any, AnyPool, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tenancy::TenancyError;
use tenantgate_core::{Store, StoreError};
use tokio::sync::Notify;

/// Pool size used by [`init`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;
/// Largest request body of the resource routes.
pub const MAX_BODY: usize = 1024 * 1024;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo upstream cannot connect to its store: {0}")]
    Connect(StoreError),
    #[error("demo upstream cannot migrate its tables: {0}")]
    Schema(sqlx::Error),
}

/// Shared state of the demo app: its store connection, the schema-per-tenant
/// router, and the job worker's wake-up.
#[derive(Debug, Clone)]
pub struct DemoState {
    store: Store,
    tenancy: Arc<Tenancy>,
    jobs_notify: Arc<Notify>,
    assertions: Option<Arc<AssertionVerifier>>,
}

impl DemoState {
    /// Requires a valid `x-tenant-assertion` on every route but `/health`.
    pub fn with_assertions(mut self, verifier: AssertionVerifier) -> Self {
        self.assertions = Some(Arc::new(verifier));
        self
    }

    pub fn assertions(&self) -> Option<&AssertionVerifier> {
        self.assertions.as_deref()
    }

    pub fn pool(&self) -> &AnyPool {
        self.store.pool()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    pub(crate) fn jobs_notify(&self) -> &Arc<Notify> {
        &self.jobs_notify
    }

    /// The request's tenant transaction (its schema on PostgreSQL).
    pub(crate) async fn begin(
        &self,
        ctx: &TenantCtx,
    ) -> Result<Transaction<'static, Any>, ApiError> {
        self.tenancy
            .begin(&ctx.tenant_id)
            .await
            .map_err(|e| match e {
                TenancyError::BadTenant => ApiError::bad_tenant(&ctx.request_id),
                TenancyError::Store(e) => ApiError::store(&ctx.request_id, e),
            })
    }

    /// Closes the pool (tests do this before dropping their database).
    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// Connects to `store_url` (`sqlite://…` or `postgres://…`) and migrates: the
/// shared tables, and every tenant schema that exists (PostgreSQL).
pub async fn init(store_url: &str) -> Result<DemoState, DemoError> {
    let store = Store::connect(store_url, DEFAULT_MAX_CONNECTIONS)
        .await
        .map_err(DemoError::Connect)?;
    init_with_store(store).await
}

/// Like [`init`], on an already connected store (e.g. one shared with the control plane).
pub async fn init_with_store(store: Store) -> Result<DemoState, DemoError> {
    let tenancy = Tenancy::new(store.pool().clone(), store.backend());
    let schemas = tenancy
        .migrate_at_start()
        .await
        .map_err(DemoError::Schema)?;
    if schemas > 0 {
        tracing::info!(schemas, "demo upstream: tenant schemas up to date");
    }
    Ok(DemoState {
        store,
        tenancy: Arc::new(tenancy),
        jobs_notify: Arc::new(Notify::new()),
        assertions: None,
    })
}

/// The demo's routes; every failure is a JSON error, never a 500.
pub fn app(state: DemoState) -> Router {
    let app = Router::new()
        .merge(resources::routes())
        .merge(jobs::routes())
        .merge(debug::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            assertion::require,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(app)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves [`app`] on `listener` and runs the job worker until `shutdown`
/// resolves, then finishes in-flight requests and lets running jobs finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: DemoState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "demo upstream listening");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(jobs::worker::run(state.clone(), stopped));
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
    let _ = worker.await;
    served
}

async fn health(State(state): State<DemoState>) -> Response {
    match tokio::time::timeout(HEALTH_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Json(json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "demo upstream health: store unreachable");
            unhealthy()
        }
        Err(_) => {
            tracing::warn!("demo upstream health: store ping timed out");
            unhealthy()
        }
    }
}

fn unhealthy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable"})),
    )
        .into_response()
}

async fn not_found(RequestId(rid): RequestId) -> ApiError {
    ApiError::not_found(&rid)
}

async fn method_not_allowed(RequestId(rid): RequestId) -> ApiError {
    ApiError::method_not_allowed(&rid)
}
