//! `/v1/tenants/{id}/users`: create and list a tenant's users (never their hashes).

use super::{email, existing_role, hash_password, password, ts};
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::UserRecord;
use tenantgate_core::store::NewUser;
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    pub email: String,
    pub password: String,
    /// A role with a policy in the tenant.
    pub role: String,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserResponse {
    pub id: String,
    pub email: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<UserRecord> for UserResponse {
    fn from(u: UserRecord) -> Self {
        UserResponse {
            id: u.id,
            email: u.email,
            role: u.role,
            created_at: ts(u.created_at),
        }
    }
}

fn duplicate() -> ApiError {
    ApiError::Conflict("a user with this email already exists in the tenant".into())
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/users", operation_id = "createUser", tag = "users",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 409, description = "Duplicate email in the tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let req: CreateUserRequest = json::parse(&body)?;
    let tenant_id = scope.tenant.id.as_str();
    let email = email("email", &req.email)?;
    password("password", &req.password)?;
    existing_role(&state, tenant_id, "role", &req.role).await?;
    // Cheap check first so a duplicate does not cost an argon2 hash.
    if state
        .store()
        .find_user_by_email(tenant_id, &email)
        .await?
        .is_some()
    {
        return Err(duplicate());
    }
    let new = NewUser {
        id: uuid::Uuid::now_v7().to_string(),
        email,
        password_hash: hash_password(req.password).await?,
        role: req.role,
    };
    let user = state
        .store()
        .create_user(tenant_id, &new)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => duplicate(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id, user_id = %user.id, role = %user.role, "user created");
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/users", operation_id = "listUsers", tag = "users",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's users", body = [UserResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<UserResponse>>, ApiError> {
    let users = state.store().list_users(&scope.tenant.id).await?;
    Ok(Json(users.into_iter().map(UserResponse::from).collect()))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(create, list))
}
