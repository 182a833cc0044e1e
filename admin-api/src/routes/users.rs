//! `/v1/tenants/{id}/users`: create, list, update and delete a tenant's users
//! (never showing their hashes).
//!
//! Disabling a user, changing its role or password, or deleting it ends its login
//! tokens: the store bumps the user's token version (or the row is gone) and
//! records a `user` change, which proxies apply within the change feed's delay;
//! the admin API reads the user on every request.

use super::{email, existing_role, hash_password, password, ts};
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::{ErrorResponse, UserStatusName};
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{UserRecord, UserStatus};
use tenantgate_core::store::{NewUser, UserPatch};
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s.\x00-\x1f\x7f-\x9f]+(\.[^@\s.\x00-\x1f\x7f-\x9f]+)+$"
    )]
    pub email: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    /// A role with a policy in the tenant.
    #[schema(value_type = crate::openapi::RoleName)]
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

/// A `PATCH`: any of these; at least one.
#[derive(Default, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    /// A role with a policy in the tenant.
    #[schema(value_type = Option<crate::openapi::RoleName>)]
    pub role: Option<String>,
    /// `disabled`: the user cannot log in and its tokens stop working.
    #[schema(value_type = Option<UserStatusName>)]
    pub status: Option<UserStatus>,
    /// A new password (same rules as on create).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
}

impl std::fmt::Debug for UpdateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateUserRequest")
            .field("role", &self.role)
            .field("status", &self.status)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserResponse {
    pub id: String,
    pub email: String,
    pub role: String,
    #[schema(value_type = UserStatusName)]
    pub status: UserStatus,
    /// RFC 3339.
    pub created_at: String,
}

impl From<UserRecord> for UserResponse {
    fn from(u: UserRecord) -> Self {
        UserResponse {
            id: u.id,
            email: u.email,
            role: u.role,
            status: u.status,
            created_at: ts(u.created_at),
        }
    }
}

fn user_not_found() -> ApiError {
    ApiError::NotFound("user not found")
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
        (status = 503, description = "Store unavailable, or every password-hashing slot busy (Retry-After)", body = ErrorResponse),
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
        password_hash: hash_password(&state, req.password).await?,
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
        (status = 403, description = "A login token without the admin role", body = ErrorResponse),
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

#[utoipa::path(
    patch, path = "/v1/tenants/{id}/users/{user_id}", operation_id = "updateUser", tag = "users",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("user_id" = String, Path, description = "User id"),
    ),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user; its earlier login tokens no longer work", body = UserResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "A login token without the admin role", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or user", body = ErrorResponse),
        (status = 422, description = "Validation error (bad role, status or password; nothing to change)", body = ErrorResponse),
        (status = 503, description = "Store unavailable, or every password-hashing slot busy (Retry-After)", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, user_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<UserResponse>, ApiError> {
    let req: UpdateUserRequest = json::parse(&body)?;
    let tenant_id = scope.tenant.id.as_str();
    if let Some(role) = &req.role {
        existing_role(&state, tenant_id, "role", role).await?;
    }
    if let Some(pw) = &req.password {
        password("password", pw)?;
    }
    // Cheap check first so an unknown user does not cost an argon2 hash.
    if state.store().get_user(tenant_id, &user_id).await?.is_none() {
        return Err(user_not_found());
    }
    let password_hash = match req.password {
        Some(pw) => Some(hash_password(&state, pw).await?),
        None => None,
    };
    let patch = UserPatch {
        role: req.role,
        status: req.status,
        password_hash,
    };
    let user = state
        .store()
        .update_user(tenant_id, &user_id, &patch)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => user_not_found(),
            e => e.into(),
        })?;
    tracing::info!(
        tenant_id,
        user_id = %user.id,
        role = %user.role,
        status = user.status.as_str(),
        password_changed = patch.password_hash.is_some(),
        "user updated; earlier login tokens revoked"
    );
    Ok(Json(user.into()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/users/{user_id}", operation_id = "deleteUser", tag = "users",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("user_id" = String, Path, description = "User id"),
    ),
    responses(
        (status = 204, description = "Deleted; its login tokens no longer work"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "A login token without the admin role", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or user", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .delete_user(&scope.tenant.id, &user_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => user_not_found(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, user_id = %user_id, "user deleted; its login tokens revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(update, delete))
}
