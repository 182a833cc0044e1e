//! `/v1/tenants/{id}/quota`: requests per UTC calendar day or month, the tenant's
//! own or its plan's, and what is spent of it.

use super::rate_limit::LimitSource;
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{Quota, QuotaPeriod};
use tenantgate_core::time::{from_ms, now_ms};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest quota: 10^12 requests per period.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriodName {
    Day,
    Month,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaBody {
    /// A UTC calendar day or month.
    #[schema(value_type = QuotaPeriodName)]
    pub period: QuotaPeriod,
    /// Requests per period, 1..=10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    pub max_requests: u64,
}

impl From<Quota> for QuotaBody {
    fn from(q: Quota) -> Self {
        QuotaBody {
            period: q.period,
            max_requests: q.max_requests,
        }
    }
}

/// The quota in force, where it comes from, and the current period's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaState {
    #[schema(value_type = QuotaPeriodName)]
    pub period: QuotaPeriod,
    pub max_requests: u64,
    pub source: LimitSource,
    /// Requests counted in the current period (proxies report within a second or so).
    pub used: u64,
    pub remaining: u64,
    /// RFC 3339: the start of the next period.
    pub resets_at: String,
}

/// Checks a quota; fields named with `prefix`.
pub fn validate_quota(prefix: &str, b: &QuotaBody) -> Result<Quota, ApiError> {
    if !(1..=MAX_QUOTA).contains(&b.max_requests) {
        return Err(ApiError::validation(
            format!("{prefix}max_requests"),
            format!("must be between 1 and {MAX_QUOTA}"),
        ));
    }
    Ok(Quota {
        period: b.period,
        max_requests: b.max_requests,
    })
}

fn no_quota() -> ApiError {
    ApiError::NotFound("the tenant has no quota (neither its own nor its plan's)")
}

async fn state_of(
    state: &AdminState,
    tenant_id: &str,
    q: Quota,
    source: LimitSource,
) -> Result<QuotaState, ApiError> {
    let (start, end) = q.period.bounds(now_ms());
    let used = state.store().quota_used(tenant_id, start).await?;
    Ok(QuotaState {
        period: q.period,
        max_requests: q.max_requests,
        source,
        used,
        remaining: q.max_requests.saturating_sub(used),
        resets_at: super::ts(from_ms(end)),
    })
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/quota", operation_id = "getQuota", tag = "quota",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The quota in force and its current period", body = QuotaState),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant, or no quota applies", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<QuotaState>, ApiError> {
    let id = &scope.tenant.id;
    let (q, source) = match state.store().get_quota(id).await? {
        Some(q) => (q, LimitSource::Tenant),
        None => {
            let plan = state.store().get_plan(scope.tenant.tier.as_str()).await?;
            let q = plan.and_then(|p| p.quota).ok_or_else(no_quota)?;
            (q, LimitSource::Plan)
        }
    };
    Ok(Json(state_of(&state, id, q, source).await?))
}

#[utoipa::path(
    put, path = "/v1/tenants/{id}/quota", operation_id = "putQuota", tag = "quota",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = QuotaBody,
    responses(
        (status = 200, description = "The stored quota and its current period", body = QuotaState),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<Json<QuotaState>, ApiError> {
    // A quota is a billing decision: the platform's.
    scope.caller.require_platform()?;
    let req: QuotaBody = json::parse(&body)?;
    let q = validate_quota("", &req)?;
    state.store().put_quota(&scope.tenant.id, &q).await?;
    tracing::info!(tenant_id = %scope.tenant.id, period = q.period.as_str(), max_requests = q.max_requests, "quota set");
    Ok(Json(
        state_of(&state, &scope.tenant.id, q, LimitSource::Tenant).await?,
    ))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/quota", operation_id = "deleteQuota", tag = "quota",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "The tenant follows its plan's quota (if any) again"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<StatusCode, ApiError> {
    scope.caller.require_platform()?;
    state.store().delete_quota(&scope.tenant.id).await?;
    tracing::info!(tenant_id = %scope.tenant.id, "quota removed");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(get, put, delete))
}
