//! The OpenAPI 3 document: its frame (info, security, tags) here, the paths from
//! the handlers' `#[utoipa::path]`s as the resource routers register them
//! ([`crate::api_router`]), plus schema-only types for shapes serialized by core
//! types.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantgate admin API",
        description = "Tenants, users, API keys, bound issuers, RBAC policies, rate limits and usage; login tokens and their JWKS.",
    ),
    components(schemas(ErrorResponse, ErrorBody, TierName, TenantStatusName, ApiKeyStatusName, UserStatusName)),
    modifiers(&BearerAuth),
    tags(
        (name = "tenants"), (name = "api-keys"), (name = "users"), (name = "issuers"), (name = "domains"), (name = "client-certs"), (name = "auth"),
        (name = "policies"), (name = "rate-limit"), (name = "plans"), (name = "quota"), (name = "usage"), (name = "audit"), (name = "scaling"), (name = "meta"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The platform bootstrap token, or a login JWT of a tenant user with role admin",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error: `{"error": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// bad_request | unauthorized | forbidden | tenant_suspended | not_found |
    /// method_not_allowed | conflict | validation_error | unavailable
    pub code: String,
    pub message: String,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// Validation errors: the offending field, e.g. `admin_user.email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A plan's name (`free`, `pro`, `enterprise`, or a plan created with
/// `PUT /v1/plans/{name}`): `[a-z0-9_][a-z0-9_-]{0,63}`.
#[derive(Serialize, ToSchema)]
pub struct TierName(String);

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatusName {
    Active,
    Suspended,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatusName {
    Active,
    Disabled,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyStatusName {
    Active,
    Revoked,
    Expired,
}

/// One usage bucket (series) or the totals (no `bucket_start`).
#[derive(Serialize, ToSchema)]
pub struct UsagePointDoc {
    /// RFC 3339; series points only.
    pub bucket_start: Option<String>,
    pub requests: u64,
    pub rate_limited: u64,
    pub denied: u64,
    pub upstream_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Present when latencies were recorded.
    pub latency_ms: Option<LatencyDoc>,
}

#[derive(Serialize, ToSchema)]
pub struct LatencyDoc {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

#[derive(Serialize, ToSchema)]
pub struct JwksDoc {
    pub keys: Vec<JwkDoc>,
}

#[derive(Serialize, ToSchema)]
pub struct JwkDoc {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// The whole document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| crate::api_router().split_for_parts().1)
}
