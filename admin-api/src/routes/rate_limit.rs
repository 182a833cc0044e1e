//! `/v1/tenants/{id}/rate-limit`: the tenant's token bucket.

use crate::auth::{Caller, TenantScope};
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::RateLimit;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const MAX_REQUESTS_LIMIT: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECONDS: u64 = 86_400;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RateLimitBody {
    /// Requests per window, 1..=10^9.
    pub max_requests: u64,
    /// 1..=86400.
    pub window_seconds: u64,
    /// Bucket capacity, 1..=10^9; default max_requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    if !(1..=MAX_REQUESTS_LIMIT).contains(&b.max_requests) {
        return Err(ApiError::validation(
            "max_requests",
            format!("must be between 1 and {MAX_REQUESTS_LIMIT}"),
        ));
    }
    if !(1..=MAX_WINDOW_SECONDS).contains(&b.window_seconds) {
        return Err(ApiError::validation(
            "window_seconds",
            format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
        ));
    }
    if let Some(burst) = b.burst {
        if !(1..=MAX_REQUESTS_LIMIT).contains(&burst) {
            return Err(ApiError::validation(
                "burst",
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

#[utoipa::path(
    get, path = "/v1/tenants/{id}/rate-limit", operation_id = "getRateLimit", tag = "rate-limit",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's rate limit", body = RateLimitBody),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<RateLimitBody>, ApiError> {
    let rl = state
        .store()
        .get_rate_limit(&scope.tenant.id)
        .await?
        .unwrap_or_else(|| scope.tenant.tier.default_rate_limit());
    Ok(Json(rl.into()))
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
        && exceeds(&rl, &scope.tenant.tier.default_rate_limit())
    {
        return Err(ApiError::Forbidden(
            "a tenant admin may lower the tenant's rate limit, not raise it above its plan's",
        ));
    }
    state.store().put_rate_limit(&scope.tenant.id, &rl).await?;
    tracing::info!(tenant_id = %scope.tenant.id, max_requests = rl.max_requests, window_seconds = rl.window_seconds, "rate limit set");
    Ok(Json(rl.into()))
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
    OpenApiRouter::new().routes(routes!(get, put))
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
