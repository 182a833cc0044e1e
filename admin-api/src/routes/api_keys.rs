//! `/v1/tenants/{id}/api-keys`: create, list, revoke, rotate. The full key is shown
//! only in the create and rotate responses; the store keeps a digest.

use super::policies::{validate_permissions, PermissionBody};
use super::rate_limit::RateLimitBody;
use super::{display_name, existing_role, opt_ts, ts};
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::{ApiKeyStatusName, ErrorResponse};
use crate::{json, AdminState};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantgate_core::domain::{ApiKeyRecord, Permission};
use tenantgate_core::secrets::mint_api_key;
use tenantgate_core::time::parse_rfc3339;
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest rotation grace period: 30 days.
pub const MAX_GRACE_SECONDS: u64 = 30 * 86_400;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// A role with a policy in the tenant.
    #[schema(value_type = crate::openapi::RoleName)]
    pub role: String,
    /// RFC 3339; absent or null: never expires (a time already past makes a key
    /// that is refused as expired).
    #[schema(format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub expires_at: Option<String>,
    /// What the key may do besides what its role allows (both must allow a
    /// request); absent or null: its role decides alone.
    #[schema(max_items = 256)]
    pub scopes: Option<Vec<PermissionBody>>,
    /// Client addresses (CIDRs or single addresses, v4 or v6) the key may be used
    /// from; absent or null: any.
    #[schema(schema_with = crate::openapi::nullable_cidr_list_schema)]
    pub allowed_cidrs: Option<Vec<String>>,
}

/// `PATCH …/api-keys/{key_id}`: absent fields are kept; `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PatchApiKeyRequest {
    #[serde(default, deserialize_with = "super::present")]
    #[schema(schema_with = crate::openapi::nullable_cidr_list_schema)]
    pub allowed_cidrs: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<Vec<PermissionBody>>, max_items = 256)]
    pub scopes: Option<Option<Vec<PermissionBody>>>,
}

/// Most CIDRs in one allow-list.
pub const MAX_CIDRS: usize = 256;

/// Checks an allow-list, naming `field[i]`; returns it normalised (`10.0.0.0/8`).
pub fn validate_cidrs(field: &str, list: Vec<String>) -> Result<Vec<String>, ApiError> {
    if list.len() > MAX_CIDRS {
        return Err(ApiError::validation(
            field,
            format!("at most {MAX_CIDRS} entries"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let net = c
                .trim()
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| {
                    c.trim()
                        .parse::<std::net::IpAddr>()
                        .ok()
                        .map(ipnet::IpNet::from)
                })
                .ok_or_else(|| {
                    ApiError::validation(
                        format!("{field}[{i}]"),
                        "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
                    )
                })?;
            Ok(net.trunc().to_string())
        })
        .collect()
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RotateApiKeyRequest {
    /// How long the old key keeps working (0..=2592000, default 0 = revoked now).
    #[schema(minimum = 0, maximum = 2_592_000)]
    pub grace_seconds: Option<u64>,
}

/// A new key; `key` is shown only here.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: String,
    /// The full key `tg_<prefix>_<secret>`: store it now, it is never shown again.
    pub key: String,
    pub prefix: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<PermissionBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Rotate only: the key this one replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub prefix: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    #[schema(value_type = ApiKeyStatusName)]
    pub status: &'static str,
    /// The key's own rate limit, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<PermissionBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
}

fn permission_bodies(list: &Option<Vec<Permission>>) -> Option<Vec<PermissionBody>> {
    list.as_ref().map(|l| {
        l.iter()
            .map(|p| PermissionBody {
                action: p.action.clone(),
                resource: p.resource.clone(),
            })
            .collect()
    })
}

fn status_at(k: &ApiKeyRecord, now: DateTime<Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

impl ApiKeyInfo {
    fn from_record(k: ApiKeyRecord, now: DateTime<Utc>) -> Self {
        let status = status_at(&k, now);
        ApiKeyInfo {
            id: k.id,
            prefix: k.prefix,
            name: k.name,
            role: k.role,
            created_at: ts(k.created_at),
            expires_at: opt_ts(k.expires_at),
            revoked_at: opt_ts(k.revoked_at),
            status,
            rate_limit: k.extras.rate_limit.map(RateLimitBody::from),
            scopes: permission_bodies(&k.extras.scopes),
            allowed_cidrs: k.extras.allowed_cidrs,
        }
    }
}

/// A fresh key record (digest only) and the full key to show once.
fn new_key(
    state: &AdminState,
    tenant_id: &str,
    name: String,
    role: String,
    expires_at: Option<DateTime<Utc>>,
) -> (ApiKeyRecord, String) {
    mint_api_key(
        tenant_id,
        name,
        role,
        expires_at,
        state.options().api_key_pepper.as_deref(),
    )
}

fn created(record: ApiKeyRecord, key: String, rotated_from: Option<String>) -> ApiKeyCreated {
    ApiKeyCreated {
        id: record.id,
        key,
        prefix: record.prefix,
        name: record.name,
        role: record.role,
        created_at: ts(record.created_at),
        expires_at: opt_ts(record.expires_at),
        scopes: permission_bodies(&record.extras.scopes),
        allowed_cidrs: record.extras.allowed_cidrs,
        rotated_from,
    }
}

fn key_not_found() -> ApiError {
    ApiError::NotFound("api key not found")
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/api-keys", operation_id = "createApiKey", tag = "api-keys",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = ApiKeyCreated),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let req: CreateApiKeyRequest = json::parse(&body)?;
    let tenant_id = scope.tenant.id.as_str();
    let name = display_name("name", &req.name)?;
    existing_role(&state, tenant_id, "role", &req.role).await?;
    let expires_at = match req.expires_at.as_deref() {
        None => None,
        Some(raw) => {
            let t = parse_rfc3339(raw).ok_or_else(|| {
                ApiError::validation("expires_at", "must be an RFC 3339 timestamp")
            })?;
            Some(t)
        }
    };
    let scopes = req
        .scopes
        .map(|l| validate_permissions("scopes", l))
        .transpose()?;
    let allowed_cidrs = req
        .allowed_cidrs
        .map(|l| validate_cidrs("allowed_cidrs", l))
        .transpose()?;
    let (mut record, key) = new_key(&state, tenant_id, name, req.role, expires_at);
    record.extras.scopes = scopes;
    record.extras.allowed_cidrs = allowed_cidrs;
    state.store().create_api_key(&record).await?;
    tracing::info!(tenant_id, key_id = %record.id, prefix = %record.prefix, "api key created");
    Ok((StatusCode::CREATED, Json(created(record, key, None))))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/api-keys", operation_id = "listApiKeys", tag = "api-keys",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's keys, never their secrets", body = [ApiKeyInfo]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    let now = Utc::now();
    let keys = state.store().list_api_keys(&scope.tenant.id).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| ApiKeyInfo::from_record(k, now))
            .collect(),
    ))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/api-keys/{key_id}", operation_id = "revokeApiKey", tag = "api-keys",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = state
        .store()
        .revoke_api_key(&scope.tenant.id, &key_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => key_not_found(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, key_id = %key.id, prefix = %key.prefix, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/api-keys/{key_id}/rotate", operation_id = "rotateApiKey", tag = "api-keys",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    request_body(content = Option<RotateApiKeyRequest>, description = "Optional; empty body means grace 0"),
    responses(
        (status = 201, description = "The new key; the old one works for grace_seconds more", body = ApiKeyCreated),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key", body = ErrorResponse),
        (status = 409, description = "The old key is revoked or expired", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn rotate(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let req: RotateApiKeyRequest = json::parse_optional(&body)?;
    let grace = req.grace_seconds.unwrap_or(0);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::validation(
            "grace_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    let tenant_id = scope.tenant.id.as_str();
    let old = state
        .store()
        .get_api_key(tenant_id, &key_id)
        .await?
        .ok_or_else(key_not_found)?;
    let not_usable = || ApiError::Conflict("the api key is revoked or expired".into());
    if !old.is_usable_at(Utc::now()) {
        return Err(not_usable());
    }
    let (mut record, key) = new_key(
        &state,
        tenant_id,
        old.name.clone(),
        old.role.clone(),
        old.expires_at,
    );
    // The new key keeps the old one's limit, scopes and allow-list.
    record.extras = old.extras.clone();
    state
        .store()
        .rotate_api_key(tenant_id, &old.id, &record, grace)
        .await
        .map_err(|e| match e {
            // It was usable a moment ago: it just got revoked or expired.
            StoreError::NotFound => not_usable(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id, old_key_id = %old.id, key_id = %record.id, grace_seconds = grace, "api key rotated");
    Ok((
        StatusCode::CREATED,
        Json(created(record, key, Some(old.id))),
    ))
}

#[utoipa::path(
    patch, path = "/v1/tenants/{id}/api-keys/{key_id}", operation_id = "patchApiKey", tag = "api-keys",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("key_id" = String, Path, description = "API key id"),
    ),
    request_body = PatchApiKeyRequest,
    responses(
        (status = 200, description = "The key as stored", body = ApiKeyInfo),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or key, or a revoked key", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    let req: PatchApiKeyRequest = json::parse(&body)?;
    // A revoked key is gone for changes (its listing entry stays, for the record).
    match state.store().get_api_key(&scope.tenant.id, &key_id).await? {
        Some(k) if k.revoked_at.is_none() => {}
        _ => return Err(key_not_found()),
    }
    let cidrs = match req.allowed_cidrs {
        Some(Some(l)) => Some(Some(validate_cidrs("allowed_cidrs", l)?)),
        other => other.map(|_| None),
    };
    let scopes = match req.scopes {
        Some(Some(l)) => Some(Some(validate_permissions("scopes", l)?)),
        other => other.map(|_| None),
    };
    let key = state
        .store()
        .update_api_key_extras(&scope.tenant.id, &key_id, |e| {
            if let Some(c) = cidrs {
                e.allowed_cidrs = c;
            }
            if let Some(s) = scopes {
                e.scopes = s;
            }
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => key_not_found(),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, key_id = %key.id, "api key updated");
    Ok(Json(ApiKeyInfo::from_record(key, Utc::now())))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke, patch))
        .routes(routes!(rotate))
}
