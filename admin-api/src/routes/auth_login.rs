//! `POST /v1/auth/login`: a tenant user's email and password for an RS256 login JWT.
//!
//! Unknown tenant, unknown user and wrong password answer alike, and spend the same
//! argon2 time (unknown users are checked against a dummy hash).

use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::routes::normalize_email;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{valid_tenant_id, TenantStatus};
use tenantgate_core::secrets::{dummy_password_hash, verify_password};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub tenant_id: String,
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// RS256 JWT: sub, tenant_id, role, iat, exp, iss, aud = "tenantgate"; kid header.
    pub access_token: String,
    /// Always "bearer".
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

#[utoipa::path(
    post, path = "/v1/auth/login", operation_id = "login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A login token", body = LoginResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Unknown tenant or user, or wrong password", body = ErrorResponse),
        (status = 403, description = "tenant_suspended", body = ErrorResponse),
        (status = 422, description = "Missing fields", body = ErrorResponse),
    )
)]
pub async fn login(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<LoginResponse>, ApiError> {
    let req: LoginRequest = json::parse(&body)?;
    let tenant = if valid_tenant_id(&req.tenant_id) {
        state.store().get_tenant(&req.tenant_id).await?
    } else {
        None
    };
    let user = match (&tenant, normalize_email(&req.email)) {
        (Some(t), Some(email)) => state.store().find_user_by_email(&t.id, &email).await?,
        _ => None,
    };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let password = req.password;
    let verified = tokio::task::spawn_blocking(move || {
        let hash = hash.as_deref().unwrap_or_else(|| dummy_password_hash());
        verify_password(&password, hash)
    })
    .await
    .map_err(|e| ApiError::internal("password verification task failed", e))?;
    let (Some(tenant), Some(user), true) = (tenant, user, verified) else {
        return Err(ApiError::Unauthorized);
    };
    if tenant.status == TenantStatus::Suspended {
        return Err(ApiError::TenantSuspended);
    }
    let ttl = state.options().token_ttl_seconds;
    let access_token = state
        .keys()
        .issue(&user.id, &tenant.id, &user.role, ttl)
        .map_err(|e| ApiError::internal("signing a login token failed", e))?;
    tracing::info!(tenant_id = %tenant.id, user_id = %user.id, "login");
    Ok(Json(LoginResponse {
        access_token,
        token_type: "bearer",
        expires_in: ttl,
    }))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(login))
}
