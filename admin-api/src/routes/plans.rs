//! `/v1/plans`: plans as data. A tenant's tier names its plan; a tenant follows its
//! plan's rate limit and quota until it sets its own.

use super::quota::{validate_quota, QuotaBody};
use super::rate_limit::{validate_at, RateLimitBody};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{valid_name_token, Plan};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanBody {
    /// `[a-z0-9_][a-z0-9_-]{0,63}`
    pub name: String,
    pub rate_limit: RateLimitBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaBody>,
}

impl From<Plan> for PlanBody {
    fn from(p: Plan) -> Self {
        PlanBody {
            name: p.name,
            rate_limit: p.rate_limit.into(),
            quota: p.quota.map(QuotaBody::from),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PutPlanRequest {
    /// Accepted for symmetry with the response; must equal the name in the path
    /// (422 otherwise), so it is left out of the document.
    #[schema(ignore)]
    pub name: Option<String>,
    pub rate_limit: RateLimitBody,
    /// Absent or null: the plan has no quota.
    pub quota: Option<QuotaBody>,
}

fn plan_not_found() -> ApiError {
    ApiError::NotFound("plan not found")
}

#[utoipa::path(
    get, path = "/v1/plans", operation_id = "listPlans", tag = "plans",
    responses(
        (status = 200, description = "Every plan", body = [PlanBody]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    _caller: Caller,
) -> Result<Json<Vec<PlanBody>>, ApiError> {
    let plans = state.store().list_plans().await?;
    Ok(Json(plans.into_iter().map(PlanBody::from).collect()))
}

#[utoipa::path(
    get, path = "/v1/plans/{name}", operation_id = "getPlan", tag = "plans",
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan", body = PlanBody),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown plan", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlanBody>, ApiError> {
    if !valid_name_token(&name) {
        return Err(plan_not_found());
    }
    let plan = state
        .store()
        .get_plan(&name)
        .await?
        .ok_or_else(plan_not_found)?;
    Ok(Json(plan.into()))
}

#[utoipa::path(
    put, path = "/v1/plans/{name}", operation_id = "putPlan", tag = "plans",
    params(("name" = String, Path, description = "Plan name", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = PutPlanRequest,
    responses(
        (status = 200, description = "The stored plan (created or replaced); every tenant following it follows within 1 s", body = PlanBody),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PlanBody>, ApiError> {
    caller.require_platform()?;
    if !valid_name_token(&name) {
        return Err(ApiError::validation(
            "name",
            "must be a plan name ([a-z0-9_-], at most 64 characters)",
        ));
    }
    let req: PutPlanRequest = json::parse(&body)?;
    if req.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::validation(
            "name",
            "must match the name in the path",
        ));
    }
    let plan = Plan {
        name,
        rate_limit: validate_at("rate_limit.", &req.rate_limit)?,
        quota: req
            .quota
            .as_ref()
            .map(|q| validate_quota("quota.", q))
            .transpose()?,
    };
    let created = state.store().put_plan(&plan).await?;
    tracing::info!(plan = %plan.name, created, "plan stored");
    Ok(Json(plan.into()))
}

#[utoipa::path(
    delete, path = "/v1/plans/{name}", operation_id = "deletePlan", tag = "plans",
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 404, description = "Unknown plan", body = ErrorResponse),
        (status = 409, description = "A built-in plan (free, pro, enterprise), or one a tenant's tier still names", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<http::StatusCode, ApiError> {
    caller.require_platform()?;
    state
        .store()
        .delete_plan(&name)
        .await
        .map_err(|e| match e {
            tenantgate_core::StoreError::NotFound => plan_not_found(),
            tenantgate_core::StoreError::Conflict(_) => ApiError::Conflict(format!(
                "plan {name:?} is built in or still named by a tenant's tier"
            )),
            e => e.into(),
        })?;
    tracing::info!(plan = %name, "plan deleted");
    Ok(http::StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, put, delete))
}
