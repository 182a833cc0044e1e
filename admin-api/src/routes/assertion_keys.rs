//! Tenant-assertion keys: the public JWKS upstreams verify `x-tenant-assertion`
//! with, and (platform only) listing and rotating the fleet's keys.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::routes::ts;
use crate::AdminState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::CACHE_CONTROL;
use serde::Serialize;
use tenantgate_core::assertion::{create_key, jwks_of};
use tenantgate_core::time::{from_ms, now_ms};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Serialize, ToSchema)]
pub struct AssertionKeyInfo {
    pub kid: String,
    /// ES256 or EdDSA.
    pub algorithm: String,
    /// Published (in the JWKS) from here on.
    pub created_at: String,
    /// Signs from here on (or will, when in the future).
    pub active_from: String,
    /// `published` (not signing yet), `active` (signing) or `superseded` (a newer
    /// key signs; kept in the JWKS until its assertions have expired).
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssertionKeyList {
    pub keys: Vec<AssertionKeyInfo>,
}

#[utoipa::path(
    get, path = "/.well-known/tenant-assertion-jwks.json", operation_id = "assertionJwks", tag = "auth",
    responses(
        (status = 200, description = "Public keys of the tenant assertions (keys published ahead of use included)", content_type = "application/jwk-set+json", body = Object),
        (status = 503, description = "The store does not answer", body = ErrorResponse),
    )
)]
pub async fn assertion_jwks(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let stored = state.store().list_assertion_keys().await?;
    let body = serde_json::to_string(&jwks_of(&stored))
        .map_err(|e| ApiError::internal("rendering the JWKS failed", e))?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/jwk-set+json"),
            (CACHE_CONTROL, "public, max-age=30"),
        ],
        body,
    )
        .into_response())
}

fn infos(stored: &[tenantgate_core::store::StoredAssertionKey]) -> Vec<AssertionKeyInfo> {
    let now = now_ms();
    // Newest activation first: the first one active is the one signing.
    let current = stored
        .iter()
        .find(|k| k.active_from_ms <= now)
        .map(|k| k.kid.as_str());
    stored
        .iter()
        .map(|k| AssertionKeyInfo {
            kid: k.kid.clone(),
            algorithm: k.algorithm.clone(),
            created_at: ts(from_ms(k.created_at_ms)),
            active_from: ts(from_ms(k.active_from_ms)),
            status: if k.active_from_ms > now {
                "published"
            } else if Some(k.kid.as_str()) == current {
                "active"
            } else {
                "superseded"
            },
        })
        .collect()
}

#[utoipa::path(
    get, path = "/v1/assertion-keys", operation_id = "listAssertionKeys", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fleet's assertion keys not retired, newest activation first", body = AssertionKeyList),
        (status = 401, description = "No or bad token", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
    )
)]
pub async fn list_assertion_keys(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<AssertionKeyList>, ApiError> {
    caller.require_platform()?;
    let stored = state.store().list_assertion_keys().await?;
    Ok(Json(AssertionKeyList {
        keys: infos(&stored),
    }))
}

#[utoipa::path(
    post, path = "/v1/assertion-keys/rotate", operation_id = "rotateAssertionKey", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A new key, published now and signing after `[assertion] publish_ahead_seconds`", body = AssertionKeyInfo),
        (status = 401, description = "No or bad token", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
    )
)]
pub async fn rotate_assertion_key(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<(StatusCode, Json<AssertionKeyInfo>), ApiError> {
    caller.require_platform()?;
    let opts = state.options();
    let ahead = i64::try_from(opts.assertion_publish_ahead.as_millis()).unwrap_or(i64::MAX);
    let row = create_key(
        state.store(),
        &opts.kek,
        opts.assertion_algorithm,
        now_ms().saturating_add(ahead),
    )
    .await?;
    tracing::info!(kid = %row.kid, "assertion key rotation requested");
    let info = infos(std::slice::from_ref(&row)).remove(0);
    Ok((StatusCode::CREATED, Json(info)))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(assertion_jwks))
        .routes(routes!(list_assertion_keys))
        .routes(routes!(rotate_assertion_key))
}
