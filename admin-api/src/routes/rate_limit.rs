//! `/v1/tenants/{id}/rate-limit`: the tenant's token bucket.

use crate::auth::{Caller, TenantScope};
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::RateLimit;
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const MAX_REQUESTS_LIMIT: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECONDS: u64 = 86_400;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RateLimitBody {
    /// Requests per window, 1..=10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub max_requests: u64,
    /// 1..=86400.
    #[schema(minimum = 1, maximum = 86_400)]
    pub window_seconds: u64,
    /// Bucket capacity, 1..=10^9; default max_requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub burst: Option<u64>,
}

impl From<RateLimit> for RateLimitBody {
    fn from(r: RateLimit) -> Self {
        RateLimitBody {
            max_requests: r.max_requests,
            window_seconds: r.window_seconds,
            burst: r.burst,
        }
    }
}

fn validate(b: &RateLimitBody) -> Result<RateLimit, ApiError> {
    validate_at("", b)
}

/// Checks a rate limit; the fields are named with `prefix` (e.g. `rate_limit.`).
pub fn validate_at(prefix: &str, b: &RateLimitBody) -> Result<RateLimit, ApiError> {
    if !(1..=MAX_REQUESTS_LIMIT).contains(&b.max_requests) {
        return Err(ApiError::validation(
            format!("{prefix}max_requests"),
            format!("must be between 1 and {MAX_REQUESTS_LIMIT}"),
        ));
    }
    if !(1..=MAX_WINDOW_SECONDS).contains(&b.window_seconds) {
        return Err(ApiError::validation(
            format!("{prefix}window_seconds"),
            format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
        ));
    }
    if let Some(burst) = b.burst {
        if !(1..=MAX_REQUESTS_LIMIT).contains(&burst) {
            return Err(ApiError::validation(
                format!("{prefix}burst"),
                format!("must be between 1 and {MAX_REQUESTS_LIMIT}"),
            ));
        }
    }
    Ok(RateLimit {
        max_requests: b.max_requests,
        window_seconds: b.window_seconds,
        burst: b.burst,
    })
}

/// Where the limit in force comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// The tenant's plan (its tier).
    Plan,
    /// Set for the tenant with `PUT …/rate-limit` (or `…/quota`).
    Tenant,
}

/// The rate limit in force for a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantRateLimit {
    pub max_requests: u64,
    pub window_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    pub source: LimitSource,
}

impl TenantRateLimit {
    fn new(r: RateLimit, source: LimitSource) -> Self {
        TenantRateLimit {
            max_requests: r.max_requests,
            window_seconds: r.window_seconds,
            burst: r.burst,
            source,
        }
    }
}

/// The tenant's plan's rate limit (the built-in default if the plan is gone).
pub async fn plan_limit(
    state: &AdminState,
    tenant: &tenantgate_core::domain::Tenant,
) -> Result<RateLimit, ApiError> {
    Ok(state
        .store()
        .get_plan(tenant.tier.as_str())
        .await?
        .map(|p| p.rate_limit)
        .unwrap_or_else(|| tenant.tier.default_rate_limit()))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/rate-limit", operation_id = "getRateLimit", tag = "rate-limit",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's rate limit in force and where it comes from", body = TenantRateLimit),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<TenantRateLimit>, ApiError> {
    let out = match state.store().get_rate_limit(&scope.tenant.id).await? {
        Some(own) => TenantRateLimit::new(own, LimitSource::Tenant),
        None => TenantRateLimit::new(plan_limit(&state, &scope.tenant).await?, LimitSource::Plan),
    };
    Ok(Json(out))
}

#[utoipa::path(
    put, path = "/v1/tenants/{id}/rate-limit", operation_id = "putRateLimit", tag = "rate-limit",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = RateLimitBody,
    responses(
        (status = 200, description = "The stored rate limit", body = RateLimitBody),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "A tenant admin asked for more than the tenant's plan allows", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<Json<RateLimitBody>, ApiError> {
    let req: RateLimitBody = json::parse(&body)?;
    let rl = validate(&req)?;
    if matches!(scope.caller, Caller::TenantAdmin { .. })
        && exceeds(&rl, &plan_limit(&state, &scope.tenant).await?)
    {
        return Err(ApiError::Forbidden(
            "a tenant admin may lower the tenant's rate limit, not raise it above its plan's",
        ));
    }
    state.store().put_rate_limit(&scope.tenant.id, &rl).await?;
    tracing::info!(tenant_id = %scope.tenant.id, max_requests = rl.max_requests, window_seconds = rl.window_seconds, "rate limit set");
    Ok(Json(rl.into()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/rate-limit", operation_id = "deleteRateLimit", tag = "rate-limit",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "The tenant follows its plan's limit again (also when it did)"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<StatusCode, ApiError> {
    state.store().delete_rate_limit(&scope.tenant.id).await?;
    tracing::info!(tenant_id = %scope.tenant.id, "rate limit removed; the plan's applies");
    Ok(StatusCode::NO_CONTENT)
}

fn key_not_found() -> ApiError {
    ApiError::NotFound("api key not found")
}

/// The key of this tenant (revoked ones included: their limit can still be read).
async fn tenant_key(
    state: &AdminState,
    scope: &TenantScope,
    key_id: &str,
) -> Result<tenantgate_core::domain::ApiKeyRecord, ApiError> {
    state
        .store()
        .get_api_key(&scope.tenant.id, key_id)
        .await?
        .ok_or_else(key_not_found)
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/api-keys/{key_id}/rate-limit", operation_id = "getApiKeyRateLimit", tag = "rate-limit",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    responses(
        (status = 200, description = "The key's own rate limit", body = RateLimitBody),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key, or the key has no limit of its own", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get_key(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<Json<RateLimitBody>, ApiError> {
    let key = tenant_key(&state, &scope, &key_id).await?;
    let rl = key.extras.rate_limit.ok_or(ApiError::NotFound(
        "the api key has no rate limit of its own",
    ))?;
    Ok(Json(rl.into()))
}

#[utoipa::path(
    put, path = "/v1/tenants/{id}/api-keys/{key_id}/rate-limit", operation_id = "putApiKeyRateLimit", tag = "rate-limit",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    request_body = RateLimitBody,
    responses(
        (status = 200, description = "The stored limit; requests with the key spend from it and from the tenant's", body = RateLimitBody),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn put_key(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RateLimitBody>, ApiError> {
    let req: RateLimitBody = json::parse(&body)?;
    let rl = validate(&req)?;
    state
        .store()
        .update_api_key_extras(&scope.tenant.id, &key_id, |e| e.rate_limit = Some(rl))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => key_not_found(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, key_id, max_requests = rl.max_requests, window_seconds = rl.window_seconds, "api key rate limit set");
    Ok(Json(rl.into()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/api-keys/{key_id}/rate-limit", operation_id = "deleteApiKeyRateLimit", tag = "rate-limit",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    responses(
        (status = 204, description = "The key has no limit of its own any more (also when it had none)"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete_key(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .update_api_key_extras(&scope.tenant.id, &key_id, |e| e.rate_limit = None)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => key_not_found(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, key_id, "api key rate limit removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `rl` allows more than `plan`: a higher sustained rate
/// (`max_requests / window_seconds`) or a larger burst.
fn exceeds(rl: &RateLimit, plan: &RateLimit) -> bool {
    let rate = u128::from(rl.max_requests) * u128::from(plan.window_seconds);
    let plan_rate = u128::from(plan.max_requests) * u128::from(rl.window_seconds);
    let burst = rl.burst.unwrap_or(rl.max_requests);
    let plan_burst = plan.burst.unwrap_or(plan.max_requests);
    rate > plan_rate || burst > plan_burst
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(get, put, delete))
        .routes(routes!(get_key, put_key, delete_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(max_requests: u64, window_seconds: u64, burst: Option<u64>) -> RateLimit {
        RateLimit {
            max_requests,
            window_seconds,
            burst,
        }
    }

    #[test]
    fn a_limit_exceeds_the_plan_by_rate_or_burst() {
        let plan = rl(1000, 60, None);
        assert!(!exceeds(&rl(1000, 60, None), &plan));
        assert!(!exceeds(&rl(10, 1, None), &plan), "600/min is lower");
        assert!(
            !exceeds(&rl(2000, 120, Some(1000)), &plan),
            "the same rate over a longer window, the same burst"
        );
        assert!(
            exceeds(&rl(2000, 120, None), &plan),
            "the same rate, but the burst defaults to 2000"
        );
        assert!(!exceeds(&rl(100, 60, Some(1000)), &plan));
        assert!(exceeds(&rl(1001, 60, None), &plan));
        assert!(exceeds(&rl(17, 1, None), &plan), "1020/min");
        assert!(exceeds(&rl(100, 60, Some(1001)), &plan), "a larger burst");
        assert!(exceeds(&rl(u64::MAX, 1, None), &plan));
    }
}
