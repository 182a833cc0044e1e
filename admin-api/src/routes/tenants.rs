//! `/v1/tenants`: create (with onboarding), list, get, patch, delete.

use super::users::UserResponse;
use super::{display_name, email, hash_password, password, ts};
use crate::auth::{Caller, TenantScope, ADMIN_ROLE};
use crate::error::ApiError;
use crate::openapi::{ErrorResponse, TenantStatusName, TierName};
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{valid_name_token, valid_tenant_id, Tenant, TenantStatus, Tier};
use tenantgate_core::secrets::random_token;
use tenantgate_core::store::{NewTenant, NewUser, TenantPatch};
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest slug taken from a name when the id is generated.
const SLUG_CHARS: usize = 40;
const GENERATED_ID_ATTEMPTS: usize = 5;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTenantRequest {
    /// `[a-z0-9][a-z0-9-]{1,62}`; generated from the name when absent.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{1,62}$")]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[schema(value_type = TierName)]
    pub tier: Tier,
    pub admin_user: Option<AdminUserRequest>,
}

#[derive(Deserialize, ToSchema)]
pub struct AdminUserRequest {
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s.\x00-\x1f\x7f-\x9f]+(\.[^@\s.\x00-\x1f\x7f-\x9f]+)+$"
    )]
    pub email: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

impl std::fmt::Debug for AdminUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUserRequest")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PatchTenantRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    #[schema(value_type = Option<TierName>)]
    pub tier: Option<Tier>,
    #[schema(value_type = Option<TenantStatusName>)]
    pub status: Option<TenantStatus>,
    /// Client addresses (CIDRs, v4 or v6) the tenant's requests may come from;
    /// `null` removes the allow-list.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(schema_with = crate::openapi::nullable_cidr_list_schema)]
    pub allowed_cidrs: Option<Option<Vec<String>>>,
    /// Platform only: the `[[upstream_pools]]` entry the tenant's requests go
    /// to (a silo tenant); `null` moves it back to the routes' upstreams.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9_-]{1,64}$")]
    pub upstream_pool: Option<Option<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantResponse {
    pub id: String,
    pub name: String,
    /// The tenant's plan.
    #[schema(value_type = String)]
    pub tier: Tier,
    #[schema(value_type = TenantStatusName)]
    pub status: TenantStatus,
    /// RFC 3339.
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// The `[[upstream_pools]]` entry the tenant's requests go to; `null`: the
    /// routes' own upstreams (a route's `tenant_upstreams` entry wins over both).
    pub upstream_pool: Option<String>,
    /// The admin user created with the tenant (create only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<UserResponse>,
}

impl From<Tenant> for TenantResponse {
    fn from(t: Tenant) -> Self {
        TenantResponse {
            id: t.id,
            name: t.name,
            tier: t.tier,
            status: t.status,
            created_at: ts(t.created_at),
            allowed_cidrs: t.allowed_cidrs,
            upstream_pool: t.upstream_pool,
            admin_user: None,
        }
    }
}

/// A tier must name a plan (422 naming `tier` otherwise).
async fn existing_plan(state: &AdminState, tier: &Tier) -> Result<(), ApiError> {
    let known =
        valid_name_token(tier.as_str()) && state.store().get_plan(tier.as_str()).await?.is_some();
    if known {
        Ok(())
    } else {
        Err(ApiError::validation(
            "tier",
            "must name a plan (see GET /v1/plans)",
        ))
    }
}

/// `acme-corp-x7k2q9` from "Acme Corp".
fn generated_id(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= SLUG_CHARS {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "tenant" } else { slug };
    format!("{slug}-{}", random_token(6).to_ascii_lowercase())
}

#[utoipa::path(
    post, path = "/v1/tenants", operation_id = "createTenant", tag = "tenants",
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "Created; onboarding done", body = TenantResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 409, description = "Duplicate id", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    body: Bytes,
) -> Result<
    (
        StatusCode,
        axum::Extension<crate::audit::AuditTenant>,
        Json<TenantResponse>,
    ),
    ApiError,
> {
    caller.require_platform()?;
    let req: CreateTenantRequest = json::parse(&body)?;
    if let Some(id) = &req.id {
        if !valid_tenant_id(id) {
            return Err(ApiError::validation(
                "id",
                "must match [a-z0-9][a-z0-9-]{1,62}",
            ));
        }
    }
    let name = display_name("name", &req.name)?;
    existing_plan(&state, &req.tier).await?;
    let admin_user = match req.admin_user {
        Some(u) => {
            let email = email("admin_user.email", &u.email)?;
            password("admin_user.password", &u.password)?;
            Some(NewUser {
                id: uuid::Uuid::now_v7().to_string(),
                email,
                password_hash: hash_password(&state, u.password).await?,
                role: ADMIN_ROLE.to_owned(),
            })
        }
        None => None,
    };
    let mut attempt = 0;
    let tenant = loop {
        attempt += 1;
        let new = NewTenant {
            id: req.id.clone().unwrap_or_else(|| generated_id(&name)),
            name: name.clone(),
            tier: req.tier.clone(),
            admin_user: admin_user.clone(),
        };
        match state.store().create_tenant(&new).await {
            Ok(t) => break t,
            Err(StoreError::Conflict(_)) if req.id.is_none() && attempt < GENERATED_ID_ATTEMPTS => {
                continue
            }
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::Conflict(format!(
                    "a tenant with id {:?} already exists",
                    new.id
                )))
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(tenant_id = %tenant.id, "tenant created");
    let mut out = TenantResponse::from(tenant.clone());
    out.admin_user = admin_user.map(|u| UserResponse {
        id: u.id,
        email: u.email,
        role: u.role,
        status: tenantgate_core::domain::UserStatus::Active,
        created_at: ts(tenant.created_at),
    });
    let audited = crate::audit::AuditTenant(out.id.clone());
    Ok((StatusCode::CREATED, axum::Extension(audited), Json(out)))
}

#[utoipa::path(
    get, path = "/v1/tenants", operation_id = "listTenants", tag = "tenants",
    responses(
        (status = 200, description = "All tenants", body = [TenantResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<TenantResponse>>, ApiError> {
    caller.require_platform()?;
    let tenants = state.store().list_tenants().await?;
    Ok(Json(
        tenants.into_iter().map(TenantResponse::from).collect(),
    ))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}", operation_id = "getTenant", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = TenantResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(scope: TenantScope) -> Json<TenantResponse> {
    Json(scope.tenant.into())
}

#[utoipa::path(
    patch, path = "/v1/tenants/{id}", operation_id = "updateTenant", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = PatchTenantRequest,
    responses(
        (status = 200, description = "The updated tenant", body = TenantResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 403, description = "Tier, status or upstream_pool by a tenant admin", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<Json<TenantResponse>, ApiError> {
    let req: PatchTenantRequest = json::parse(&body)?;
    if req.tier.is_some() || req.status.is_some() || req.upstream_pool.is_some() {
        // A tenant admin may rename its tenant, nothing more.
        scope.caller.require_platform()?;
    }
    let upstream_pool = match req.upstream_pool {
        Some(Some(name)) => {
            if !state.options().upstream_pools.contains(&name) {
                return Err(ApiError::validation(
                    "upstream_pool",
                    "must name an [[upstream_pools]] entry of the configuration",
                ));
            }
            Some(Some(name))
        }
        other => other,
    };
    let patch = TenantPatch {
        name: req
            .name
            .as_deref()
            .map(|n| display_name("name", n))
            .transpose()?,
        tier: req.tier,
        status: req.status,
        allowed_cidrs: match req.allowed_cidrs {
            Some(Some(l)) => Some(Some(super::api_keys::validate_cidrs("allowed_cidrs", l)?)),
            other => other.map(|_| None),
        },
        upstream_pool,
    };
    if let Some(tier) = &patch.tier {
        existing_plan(&state, tier).await?;
    }
    if patch.name.is_none()
        && patch.tier.is_none()
        && patch.status.is_none()
        && patch.allowed_cidrs.is_none()
        && patch.upstream_pool.is_none()
    {
        return Ok(Json(scope.tenant.into()));
    }
    let tenant = state
        .store()
        .update_tenant(&scope.tenant.id, &patch)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("tenant not found"),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %tenant.id, "tenant updated");
    Ok(Json(tenant.into()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}", operation_id = "deleteTenant", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Deleted with everything it owns"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !caller.may_see(&id) {
        return Err(ApiError::NotFound("tenant not found"));
    }
    caller.require_platform()?;
    state
        .store()
        .delete_tenant(&id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("tenant not found"),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid() {
        for name in [
            "Acme Corp",
            "",
            "---",
            "Ünïcödé",
            &"x".repeat(300),
            "9 lives!",
        ] {
            let id = generated_id(name);
            assert!(valid_tenant_id(&id), "{name:?} -> {id:?}");
        }
        assert!(generated_id("Acme Corp").starts_with("acme-corp-"));
    }
}
