//! `/v1/tenants/{id}/client-certs`: register, list, read and delete the client
//! certificates that authenticate as a tenant and role (`x-auth-method: mtls`).
//! Only the certificate's SHA-256 fingerprint is kept; the proxies forget a
//! deleted certificate within a second.

use super::{display_name, existing_role, ts};
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::store::ClientCert;
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest accepted PEM text, bytes.
const MAX_PEM_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateClientCertRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// A role with a policy in the tenant.
    #[schema(value_type = crate::openapi::RoleName)]
    pub role: String,
    /// The client's certificate, PEM (one certificate, not a chain). Its chain
    /// must verify against the proxy's `[proxy.tls] client_ca_file` at handshake.
    pub certificate: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientCertResponse {
    pub id: String,
    pub tenant_id: String,
    /// Lower-case hex SHA-256 of the certificate's DER bytes.
    pub fingerprint_sha256: String,
    pub name: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
}

impl From<ClientCert> for ClientCertResponse {
    fn from(c: ClientCert) -> Self {
        ClientCertResponse {
            id: c.id,
            tenant_id: c.tenant_id,
            fingerprint_sha256: c.fingerprint,
            name: c.name,
            role: c.role,
            created_at: ts(tenantgate_core::time::from_ms(c.created_at_ms)),
        }
    }
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/client-certs", operation_id = "createClientCert", tag = "client-certs",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateClientCertRequest,
    responses(
        (status = 201, description = "Registered; the proxies accept it within a second", body = ClientCertResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 409, description = "The certificate is registered already", body = ErrorResponse),
        (status = 422, description = "Validation error (malformed certificate, unknown role)", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<(StatusCode, Json<ClientCertResponse>), ApiError> {
    let req: CreateClientCertRequest = json::parse(&body)?;
    let tenant_id = scope.tenant.id.as_str();
    let name = display_name("name", &req.name)?;
    if req.certificate.len() > MAX_PEM_BYTES {
        return Err(ApiError::validation(
            "certificate",
            format!("must be at most {MAX_PEM_BYTES} bytes"),
        ));
    }
    let der = tenantgate_core::pem::parse_client_cert(&req.certificate)
        .map_err(|m| ApiError::validation("certificate", m))?;
    existing_role(&state, tenant_id, "role", &req.role).await?;
    let rec = ClientCert {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant_id.to_owned(),
        fingerprint: tenantgate_core::pem::fingerprint_sha256(der.as_ref()),
        name,
        role: req.role,
        created_at_ms: tenantgate_core::time::now_ms(),
    };
    state
        .store()
        .create_client_cert(&rec)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::Conflict("the certificate is registered already".into())
            }
            e => e.into(),
        })?;
    tracing::info!(tenant_id, cert_id = %rec.id, fingerprint = %rec.fingerprint, "client certificate registered");
    Ok((StatusCode::CREATED, Json(rec.into())))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/client-certs", operation_id = "listClientCerts", tag = "client-certs",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's client certificates", body = [ClientCertResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<ClientCertResponse>>, ApiError> {
    let list = state.store().list_client_certs(&scope.tenant.id).await?;
    Ok(Json(
        list.into_iter().map(ClientCertResponse::from).collect(),
    ))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/client-certs/{cert_id}", operation_id = "getClientCert", tag = "client-certs",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("cert_id" = String, Path, description = "Client certificate id"),
    ),
    responses(
        (status = 200, description = "The client certificate", body = ClientCertResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or certificate", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, cert_id)): Path<(String, String)>,
) -> Result<Json<ClientCertResponse>, ApiError> {
    state
        .store()
        .get_client_cert(&scope.tenant.id, &cert_id)
        .await?
        .map(|c| Json(c.into()))
        .ok_or(ApiError::NotFound("client certificate not found"))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/client-certs/{cert_id}", operation_id = "deleteClientCert", tag = "client-certs",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("cert_id" = String, Path, description = "Client certificate id"),
    ),
    responses(
        (status = 204, description = "Deleted; the proxies refuse it within a second"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or certificate", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, cert_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .delete_client_cert(&scope.tenant.id, &cert_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("client certificate not found"),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, cert_id = %cert_id, "client certificate deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
}
