//! Unauthenticated service routes: health, metrics, OpenAPI, JWKS; the 404 fallback.

use crate::error::ApiError;
use crate::openapi::JwksDoc;
use crate::AdminState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use serde::Serialize;
use std::time::{Duration, Instant};
use tenantgate_core::jwt::Jwks;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long /health waits for the store.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// ok | unavailable
    pub status: &'static str,
    pub checks: HealthChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    pub store: HealthCheck,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthCheck {
    /// ok | unavailable
    pub status: &'static str,
    pub latency_ms: f64,
}

#[utoipa::path(
    get, path = "/health", operation_id = "health", tag = "meta",
    responses(
        (status = 200, description = "Up, and the store answers", body = HealthResponse),
        (status = 503, description = "The store does not answer", body = HealthResponse),
    )
)]
pub async fn health(State(state): State<AdminState>) -> (StatusCode, Json<HealthResponse>) {
    let started = Instant::now();
    let ok = match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: store check failed");
            false
        }
        Err(_) => {
            tracing::warn!("health: store check timed out");
            false
        }
    };
    let latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let status = if ok { "ok" } else { "unavailable" };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(HealthResponse {
            status,
            checks: HealthChecks {
                store: HealthCheck { status, latency_ms },
            },
        }),
    )
}

#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let text = state
        .metrics()
        .render()
        .map_err(|e| ApiError::internal("rendering metrics failed", e))?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3)", content_type = "application/json", body = Object))
)]
pub async fn openapi(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::openapi::document_for(
        &state.options().upstream_pools,
    ))
}

#[utoipa::path(
    get, path = "/.well-known/jwks.json", operation_id = "loginJwks", tag = "auth",
    responses((status = 200, description = "Public keys of the login tokens", body = JwksDoc))
)]
pub async fn jwks(State(state): State<AdminState>) -> Response {
    let keys = state.keys().jwks(state.store()).await;
    ([(CACHE_CONTROL, "public, max-age=60")], Json(Jwks { keys })).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .routes(routes!(jwks))
}
