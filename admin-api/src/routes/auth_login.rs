//! `POST /v1/auth/login`: a tenant user's email and password for an RS256 login JWT.
//!
//! Unknown tenant, unknown or disabled user and wrong password answer alike, and
//! spend the same argon2 time (unknown users are checked against a dummy hash).
//! Failures are throttled per (tenant, email) and per client IP, checked before
//! any password is (see [`crate::login_guard`]); hashing runs with bounded
//! concurrency. Failed logins are logged (never the password or the email, only a
//! digest of it) and counted in `/metrics`.

use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::login_guard::{email_key, email_label, retry_after_seconds};
use crate::metrics::LoginFailure;
use crate::openapi::ErrorResponse;
use crate::routes::normalize_email;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tenantgate_core::domain::{valid_tenant_id, Tenant, TenantStatus, UserRecord, UserStatus};
use tenantgate_core::secrets::{dummy_password_hash, verify_password};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub tenant_id: String,
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s.\x00-\x1f\x7f-\x9f]+(\.[^@\s.\x00-\x1f\x7f-\x9f]+)+$"
    )]
    pub email: String,
    #[schema(max_length = 1024)]
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
        (status = 401, description = "Unknown tenant or user, disabled user, or wrong password", body = ErrorResponse),
        (status = 403, description = "tenant_suspended", body = ErrorResponse),
        (status = 422, description = "Missing fields", body = ErrorResponse),
        (status = 429, description = "rate_limited: too many failed logins for this email or client address; see Retry-After", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds until an attempt is allowed again"))),
        (status = 503, description = "unavailable: every password-hashing slot is busy; see Retry-After", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn login(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Json<LoginResponse>, ApiError> {
    let req: LoginRequest = json::parse(&body)?;
    let key = email_key(&req.tenant_id, &req.email);
    let fail = |reason: LoginFailure| {
        state.metrics().login_failed(reason);
        // Only a well-formed tenant id reaches the log verbatim (no log injection).
        let tenant_id = if valid_tenant_id(&req.tenant_id) {
            req.tenant_id.as_str()
        } else {
            "<invalid>"
        };
        tracing::warn!(
            tenant_id,
            email_sha256 = %email_label(&key),
            client_ip = ?ip,
            reason = reason.as_str(),
            "login failed"
        );
    };
    let guard = state.login_guard();
    // Before any password is checked: a throttled key gets nothing, right or wrong.
    let attempt = match guard.admit(key, ip, Instant::now()) {
        Ok(a) => a,
        Err(wait) => {
            fail(LoginFailure::Throttled);
            return Err(ApiError::RateLimited {
                retry_after_seconds: retry_after_seconds(wait),
            });
        }
    };
    let checked = check_password(&state, &req.tenant_id, &req.email, req.password).await;
    let (tenant, user) = match checked {
        Ok(Some(found)) => found,
        Ok(None) => {
            fail(LoginFailure::BadCredentials);
            return Err(ApiError::Unauthorized);
        }
        // No password was checked: the attempt does not count.
        Err(e) => {
            guard.cancelled(&attempt);
            if matches!(e, ApiError::Busy) {
                fail(LoginFailure::Busy);
            }
            return Err(e);
        }
    };
    guard.succeeded(&attempt);
    if tenant.status == TenantStatus::Suspended {
        return Err(ApiError::TenantSuspended);
    }
    let ttl = state.options().token_ttl_seconds;
    let access_token = state
        .keys()
        .issue(&user.id, &tenant.id, &user.role, user.token_version, ttl)
        .map_err(|e| ApiError::internal("signing a login token failed", e))?;
    tracing::info!(tenant_id = %tenant.id, user_id = %user.id, "login");
    Ok(Json(LoginResponse {
        access_token,
        token_type: "bearer",
        expires_in: ttl,
    }))
}

/// The tenant and user whose password `password` is (`None`: no such tenant or
/// user, a disabled user, or a wrong password — all after one argon2 run).
async fn check_password(
    state: &AdminState,
    tenant_id: &str,
    email: &str,
    password: String,
) -> Result<Option<(Tenant, UserRecord)>, ApiError> {
    let tenant = if valid_tenant_id(tenant_id) {
        state.store().get_tenant(tenant_id).await?
    } else {
        None
    };
    let user = match (&tenant, normalize_email(email)) {
        (Some(t), Some(email)) => state.store().find_user_by_email(&t.id, &email).await?,
        _ => None,
    };
    let slot = state
        .login_guard()
        .hashing_slot()
        .await
        .map_err(|_| ApiError::Busy)?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let hash = hash.as_deref().unwrap_or_else(|| dummy_password_hash());
        verify_password(&password, hash)
    })
    .await
    .map_err(|e| ApiError::internal("password verification task failed", e))?;
    Ok(match (tenant, user, verified) {
        // The status is checked after the hash, so a disabled user costs (and
        // answers) the same as a wrong password.
        (Some(t), Some(u), true) if u.status == UserStatus::Active => Some((t, u)),
        _ => None,
    })
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(login))
}
