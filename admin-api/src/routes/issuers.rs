//! `/v1/tenants/{id}/issuers`: bind, list and unbind a tenant's own token issuers
//! (its IdP). A bound issuer's tokens authenticate for that tenant only; the proxies
//! pick up every change within a second.

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
use tenantgate_core::config::ALLOWED_JWT_ALGORITHMS;
use tenantgate_core::domain::valid_name_token;
use tenantgate_core::issuers::{
    check_http_url, same_issuer, TenantIssuer, UrlScheme, MAX_ISSUERS_PER_TENANT,
    MAX_LIFETIME_SECONDS,
};
use tenantgate_core::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The most audiences one issuer may list.
pub const MAX_AUDIENCES: usize = 32;
/// Longest audience or claim name, characters.
pub const MAX_TEXT_CHARS: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateIssuerRequest {
    /// The exact `iss` of the IdP's tokens: an http(s) URL, bound to at most one
    /// tenant and never one of the configured `[[jwt.issuers]]`.
    #[schema(
        example = "https://idp.acme.example",
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$"
    )]
    pub issuer: String,
    /// Where the IdP publishes its keys; `https://` unless `[jwt] allow_insecure_jwks`.
    #[schema(
        example = "https://idp.acme.example/.well-known/jwks.json",
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]://[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$"
    )]
    pub jwks_url: String,
    /// A token's `aud` must contain one of these (at least one).
    #[schema(schema_with = audiences_schema)]
    pub audiences: Vec<String>,
    /// Allowed `alg`s (asymmetric only); default `["RS256"]`.
    #[schema(schema_with = algorithms_schema)]
    pub algorithms: Option<Vec<String>>,
    /// The claim that may name the tenant (default `tenant_id`): when present it
    /// must name this tenant.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub tenant_claim: Option<String>,
    /// The claim holding the role (default `role`).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub role_claim: Option<String>,
    /// The role of a token without a role claim; absent: such tokens are refused.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub default_role: Option<String>,
    /// Tokens whose `exp` lies further than this from now (or from `iat`) are refused.
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub max_lifetime_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuerResponse {
    pub id: String,
    pub tenant_id: String,
    pub issuer: String,
    pub jwks_url: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub tenant_claim: String,
    pub role_claim: String,
    pub default_role: Option<String>,
    pub max_lifetime_seconds: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<TenantIssuer> for IssuerResponse {
    fn from(i: TenantIssuer) -> Self {
        IssuerResponse {
            id: i.id,
            tenant_id: i.tenant_id,
            issuer: i.issuer,
            jwks_url: i.jwks_url,
            audiences: i.audiences,
            algorithms: i.algorithms,
            tenant_claim: i.tenant_claim,
            role_claim: i.role_claim,
            default_role: i.default_role,
            max_lifetime_seconds: i.max_lifetime_seconds,
            created_at: ts(tenantgate_core::time::from_ms(i.created_at_ms)),
        }
    }
}

fn audiences_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_TEXT_CHARS))
                .pattern(Some(crate::openapi::patterns::NO_CONTROLS)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_AUDIENCES))
        .build()
}

fn algorithms_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ALLOWED_JWT_ALGORITHMS.iter().copied())),
        )
        .min_items(Some(1))
        .build()
}

/// Non-empty, at most [`MAX_TEXT_CHARS`], no control characters.
fn text(field: &str, raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if raw.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// The validated record of a request (id and time filled in).
fn validate(
    state: &AdminState,
    tenant_id: &str,
    req: CreateIssuerRequest,
) -> Result<TenantIssuer, ApiError> {
    let opts = state.options();
    check_http_url(&req.issuer).map_err(|m| ApiError::validation("issuer", m))?;
    match check_http_url(&req.jwks_url).map_err(|m| ApiError::validation("jwks_url", m))? {
        UrlScheme::Https => {}
        _ if opts.allow_insecure_jwks => {}
        _ => {
            return Err(ApiError::validation(
                "jwks_url",
                "must be an https:// URL (plain http needs [jwt] allow_insecure_jwks = true)",
            ))
        }
    }
    if req.audiences.is_empty() {
        return Err(ApiError::validation(
            "audiences",
            "must list at least one audience",
        ));
    }
    if req.audiences.len() > MAX_AUDIENCES {
        return Err(ApiError::validation(
            "audiences",
            format!("must list at most {MAX_AUDIENCES} audiences"),
        ));
    }
    let mut audiences = Vec::with_capacity(req.audiences.len());
    for (i, a) in req.audiences.iter().enumerate() {
        let a = text(&format!("audiences[{i}]"), a)?;
        if !audiences.contains(&a) {
            audiences.push(a);
        }
    }
    let algorithms = match req.algorithms {
        None => vec!["RS256".to_owned()],
        Some(list) => {
            if list.is_empty() {
                return Err(ApiError::validation("algorithms", "must not be empty"));
            }
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for a in list {
                if !ALLOWED_JWT_ALGORITHMS.contains(&a.as_str()) {
                    return Err(ApiError::validation(
                        "algorithms",
                        format!(
                            "{a:?} is not allowed (one of {})",
                            ALLOWED_JWT_ALGORITHMS.join(", ")
                        ),
                    ));
                }
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            out
        }
    };
    let tenant_claim = text(
        "tenant_claim",
        req.tenant_claim.as_deref().unwrap_or("tenant_id"),
    )?;
    let role_claim = text("role_claim", req.role_claim.as_deref().unwrap_or("role"))?;
    let default_role = match req.default_role {
        None => None,
        Some(r) if valid_name_token(&r) => Some(r),
        Some(_) => {
            return Err(ApiError::validation(
                "default_role",
                "must be a role name ([a-z0-9_-], at most 64 characters)",
            ))
        }
    };
    let max_lifetime_seconds = match req.max_lifetime_seconds {
        None => None,
        Some(s) => match u64::try_from(s) {
            Ok(s) if (1..=MAX_LIFETIME_SECONDS).contains(&s) => Some(s),
            _ => {
                return Err(ApiError::validation(
                    "max_lifetime_seconds",
                    format!("must be between 1 and {MAX_LIFETIME_SECONDS}"),
                ))
            }
        },
    };
    if opts
        .reserved_issuers
        .iter()
        .any(|c| same_issuer(c, &req.issuer))
    {
        return Err(ApiError::Conflict(
            "issuer is a configured issuer of this deployment".into(),
        ));
    }
    Ok(TenantIssuer {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant_id.to_owned(),
        issuer: req.issuer,
        jwks_url: req.jwks_url,
        audiences,
        algorithms,
        tenant_claim,
        role_claim,
        default_role,
        max_lifetime_seconds,
        created_at_ms: tenantgate_core::time::now_ms(),
    })
}

#[utoipa::path(
    post, path = "/v1/tenants/{id}/issuers", operation_id = "createIssuer", tag = "issuers",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateIssuerRequest,
    responses(
        (status = 201, description = "Bound; the proxies accept its tokens within a second", body = IssuerResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not an admin of this tenant, or the tenant is suspended", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 409, description = "The issuer is bound already, is a configured issuer, or the tenant has the most issuers allowed", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AdminState>,
    scope: TenantScope,
    body: Bytes,
) -> Result<(StatusCode, Json<IssuerResponse>), ApiError> {
    let req: CreateIssuerRequest = json::parse(&body)?;
    let rec = validate(&state, &scope.tenant.id, req)?;
    state
        .store()
        .create_tenant_issuer(&rec, MAX_ISSUERS_PER_TENANT)
        .await
        .map_err(|e| match e {
            StoreError::Conflict("issuers") => ApiError::Conflict(format!(
                "the tenant has {MAX_ISSUERS_PER_TENANT} issuers already (the most allowed)"
            )),
            StoreError::Conflict(_) => {
                ApiError::Conflict("issuer is bound to a tenant already".into())
            }
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %rec.tenant_id, issuer_id = %rec.id, issuer = %rec.issuer, "issuer bound");
    Ok((StatusCode::CREATED, Json(rec.into())))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/issuers", operation_id = "listIssuers", tag = "issuers",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's bound issuers", body = [IssuerResponse]),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not an admin of this tenant, or the tenant is suspended", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    scope: TenantScope,
) -> Result<Json<Vec<IssuerResponse>>, ApiError> {
    let list = state.store().list_tenant_issuers(&scope.tenant.id).await?;
    Ok(Json(list.into_iter().map(IssuerResponse::from).collect()))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{id}/issuers/{issuer_id}", operation_id = "deleteIssuer", tag = "issuers",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("issuer_id" = String, Path, description = "Bound issuer id"),
    ),
    responses(
        (status = 204, description = "Unbound; the proxies refuse its tokens within a second"),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not an admin of this tenant, or the tenant is suspended", body = ErrorResponse),
        (status = 404, description = "Unknown tenant or issuer", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AdminState>,
    scope: TenantScope,
    Path((_, issuer_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .store()
        .delete_tenant_issuer(&scope.tenant.id, &issuer_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("issuer not found"),
            e => e.into(),
        })?;
    tracing::info!(tenant_id = %scope.tenant.id, issuer_id = %issuer_id, "issuer unbound");
    Ok(StatusCode::NO_CONTENT)
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
}
