//! `/v1/tenants/{id}/policies[/{role}]`: a role's RBAC permissions in a tenant.

use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{valid_name_token, Permission, Policy};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most permissions one role may hold.
pub const MAX_PERMISSIONS: usize = 256;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct PermissionBody {
    /// read | create | update | delete | *
    #[schema(value_type = crate::openapi::ActionName)]
    pub action: String,
    /// A resource name (`[a-z0-9_-]`, at most 64) or *
    #[schema(pattern = r"^([a-z0-9_-]{1,64}|\*)$")]
    pub resource: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyResponse {
    pub role: String,
    pub permissions: Vec<PermissionBody>,
}

impl From<Policy> for PolicyResponse {
    fn from(p: Policy) -> Self {
        PolicyResponse {
            role: p.role,
            permissions: p
                .permissions
                .into_iter()
                .map(|p| PermissionBody {
                    action: p.action,
                    resource: p.resource,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PutPolicyRequest {
    /// Accepted for symmetry with the response; must equal the role in the path
    /// (422 otherwise), so it is left out of the document: send the path's role
    /// or nothing.
    #[schema(ignore)]
    pub role: Option<String>,
    #[schema(max_items = 256)]
    pub permissions: Vec<PermissionBody>,
}

/// Checks a list of permissions (a policy's, or a key's scopes), naming `field[i]`.
pub fn validate_permissions(
    field: &str,
    list: Vec<PermissionBody>,
) -> Result<Vec<Permission>, ApiError> {
    if list.len() > MAX_PERMISSIONS {
        return Err(ApiError::validation(
            field,
            format!("at most {MAX_PERMISSIONS} permissions"),
        ));
    }
    let mut permissions = Vec::with_capacity(list.len());
    for (i, p) in list.into_iter().enumerate() {
        if !matches!(
            p.action.as_str(),
            "*" | "read" | "create" | "update" | "delete"
        ) {
            return Err(ApiError::validation(
                format!("{field}[{i}].action"),
                "must be one of read, create, update, delete, *",
            ));
        }
        if p.resource != "*" && !valid_name_token(&p.resource) {
            return Err(ApiError::validation(
                format!("{field}[{i}].resource"),
                "must be a resource name ([a-z0-9_-], at most 64 characters) or *",
            ));
        }
        let permission = Permission::new(&p.action, &p.resource);
        debug_assert!(permission.is_valid());
        permissions.push(permission);
    }
    Ok(permissions)
}

fn validate(path_role: &str, req: PutPolicyRequest) -> Result<Policy, ApiError> {
    if !valid_name_token(path_role) {
        return Err(ApiError::validation(
            "role",
            "must be a role name ([a-z0-9_-], at most 64 characters)",
        ));
    }
    if req.role.as_deref().is_some_and(|r| r != path_role) {
        return Err(ApiError::validation(
            "role",
            "must match the role in the path",
        ));
    }
    let permissions = validate_permissions("permissions", req.permissions)?;
    Ok(Policy {
        role: path_role.to_owned(),
        permissions,
    })
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/policies", operation_id = "listPolicies", tag = "policies",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Every role's policy", body = [PolicyResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<PolicyResponse>>, ApiError> {
    let policies = state.store().list_policies(&scope.tenant.id).await?;
    Ok(Json(
        policies.into_iter().map(PolicyResponse::from).collect(),
    ))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/policies/{role}", operation_id = "getPolicy", tag = "policies",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("role" = String, Path, description = "Role name", pattern = "^[a-z0-9_-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The role's policy", body = PolicyResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or role", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, role)): Path<(String, String)>,
) -> Result<Json<PolicyResponse>, ApiError> {
    let not_found = || ApiError::NotFound("no policy for this role");
    if !valid_name_token(&role) {
        return Err(not_found());
    }
    let policy = state
        .store()
        .get_policy(&scope.tenant.id, &role)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(policy.into()))
}

#[utoipa::path(
    put, path = "/v1/tenants/{id}/policies/{role}", operation_id = "putPolicy", tag = "policies",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("role" = String, Path, description = "Role name", pattern = "^[a-z0-9_-]{1,64}$"),
    ),
    request_body = PutPolicyRequest,
    responses(
        (status = 200, description = "Created or replaced", body = PolicyResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, role)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<PolicyResponse>, ApiError> {
    let req: PutPolicyRequest = json::parse(&body)?;
    let policy = validate(&role, req)?;
    state.store().put_policy(&scope.tenant.id, &policy).await?;
    tracing::info!(tenant_id = %scope.tenant.id, role = %policy.role, "policy set");
    Ok(Json(policy.into()))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, put))
}
