//! `/v1/tenants/{id}/domains`: a tenant's own host names. A request whose `Host` is
//! one of them belongs to that tenant: a credential of another tenant there is 403.
//! Giving a domain to a tenant is a trust decision (the operator has checked that the
//! tenant owns it), so creating and deleting take the platform token; the tenant's
//! admins may list them. The proxies pick up every change within a second.

use super::ts;
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::normalize_hostname;
use tenantgate_core::store::{TenantDomain, MAX_DOMAINS_PER_TENANT};
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDomainRequest {
    /// A fully qualified host name (stored lowercase, without a trailing dot; no
    /// port, path or wildcard; internationalised names in punycode).
    #[schema(
        example = "api.acme.example",
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    pub domain: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DomainResponse {
    pub domain: String,
    pub tenant_id: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<TenantDomain> for DomainResponse {
    fn from(d: TenantDomain) -> Self {
        DomainResponse {
            domain: d.domain,
            tenant_id: d.tenant_id,
            created_at: ts(tenantgate_core::time::from_ms(d.created_at_ms)),
        }
    }
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/domains", operation_id = "createDomain", tag = "domains",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateDomainRequest,
    responses(
        (status = 201, description = "The domain is the tenant's; the proxies apply it within a second", body = DomainResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin token", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 409, description = "The domain belongs to a tenant already, or the tenant has the most domains allowed", body = ErrorResponse),
        (status = 422, description = "Not a valid host name", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<(StatusCode, Json<DomainResponse>), ApiError> {
    scope.caller.require_platform()?;
    let req: CreateDomainRequest = json::parse(&body)?;
    if req.domain.chars().count() > 253 {
        return Err(ApiError::validation(
            "domain",
            "must be at most 253 characters",
        ));
    }
    let domain = normalize_hostname(&req.domain).map_err(|m| ApiError::validation("domain", m))?;
    let rec = TenantDomain {
        domain,
        tenant_id: scope.tenant.id.clone(),
        created_at_ms: tenantgate_core::time::now_ms(),
    };
    state
        .store()
        .create_tenant_domain(&rec)
        .await
        .map_err(|e| match e {
            StoreError::Conflict("domains") => ApiError::Conflict(format!(
                "the tenant has {MAX_DOMAINS_PER_TENANT} domains already (the most allowed)"
            )),
            StoreError::Conflict(_) => {
                ApiError::Conflict("the domain belongs to a tenant already".into())
            }
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %rec.tenant_id, domain = %rec.domain, "tenant domain added");
    Ok((StatusCode::CREATED, Json(rec.into())))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/domains", operation_id = "listDomains", tag = "domains",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's domains, by name", body = [DomainResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<DomainResponse>>, ApiError> {
    let list = state.store().list_tenant_domains(&scope.tenant.id).await?;
    Ok(Json(list.into_iter().map(DomainResponse::from).collect()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/domains/{domain}", operation_id = "deleteDomain", tag = "domains",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("domain" = String, Path, description = "The domain (any case, trailing dot allowed)"),
    ),
    responses(
        (status = 204, description = "Removed; the proxies stop applying it within a second"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform admin token", body = ErrorResponse),
        (status = 404, description = "Unknown tenant, or not a domain of it", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, domain)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    scope.caller.require_platform()?;
    let domain = normalize_hostname(&domain).map_err(|_| ApiError::NotFound("domain not found"))?;
    state
        .store()
        .delete_tenant_domain(&scope.tenant.id, &domain)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("domain not found"),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, domain = %domain, "tenant domain removed");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
}
