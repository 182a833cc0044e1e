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
    components(schemas(
        ErrorResponse, ErrorBody, TierName, TenantStatusName, ApiKeyStatusName, UserStatusName, RoleName, ActionName,
        crate::routes::usage::GranularityName, crate::routes::usage::GroupByName, crate::routes::usage::ExportFormatName,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "tenants"), (name = "api-keys"), (name = "users"), (name = "issuers"), (name = "domains"), (name = "client-certs"), (name = "auth"),
        (name = "policies"), (name = "rate-limit"), (name = "plans"), (name = "quota"), (name = "usage"), (name = "audit"), (name = "scaling"), (name = "explain"), (name = "meta"),
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

/// A plan's name. The three listed are built in and always exist; a plan created
/// with `PUT /v1/plans/{name}` (`[a-z0-9_-]{1,64}`) is accepted too, and a name
/// that is no plan is 422.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    Free,
    Pro,
    Enterprise,
}

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
    DOC.get_or_init(|| {
        let mut doc = crate::api_router().split_for_parts().1;
        add_common_responses(&mut doc);
        doc
    })
}

/// The document as this process serves it: what depends on the configuration is
/// filled in — a tenant's `upstream_pool` can only name one of the
/// `[[upstream_pools]]` this admin API was started with (or `null`).
pub fn document_for(upstream_pools: &[String]) -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    let mut names: Vec<serde_json::Value> = upstream_pools
        .iter()
        .map(|n| serde_json::Value::String(n.clone()))
        .collect();
    names.push(serde_json::Value::Null);
    if let Some(prop) = doc
        .pointer_mut("/components/schemas/PatchTenantRequest/properties/upstream_pool")
        .and_then(serde_json::Value::as_object_mut)
    {
        prop.remove("pattern");
        prop.insert("enum".into(), serde_json::Value::Array(names));
    }
    doc
}

/// The statuses any operation of a kind can answer, from the one place that
/// produces them (the JSON body parser, the query parser, the auth extractor, the
/// store): added to every operation that can meet them, so no handler's list can
/// forget one.
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{path::ParameterIn, RefOr, ResponseBuilder};
    let error = |what: &str| -> RefOr<utoipa::openapi::Response> {
        RefOr::T(
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name(
                            "ErrorResponse",
                        )))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let has_query = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query));
            let responses = &mut op.responses.responses;
            if op.request_body.is_some() || has_query {
                responses
                    .entry("400".into())
                    .or_insert_with(|| error("Malformed JSON body or query string"));
            }
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("No or bad credential"));
            }
            responses
                .entry("503".into())
                .or_insert_with(|| error("A dependency (the store) is unavailable; retry"));
        }
    }
}

/// Patterns the handlers' checks enforce, as the document states them.
pub mod patterns {
    /// A tenant id (`tenantgate_core::domain::valid_tenant_id`).
    pub const TENANT_ID: &str = "^[a-z0-9][a-z0-9-]{1,62}$";
    /// A role, plan or resource name (`valid_name_token`).
    pub const NAME_TOKEN: &str = "^[a-z0-9_-]{1,64}$";
    /// A display name: at least one non-blank character (it is stored trimmed).
    pub const DISPLAY_NAME: &str = r"\S";
    /// What `valid_email` accepts: no blanks or controls, one `@`, a dotted domain.
    pub const EMAIL: &str =
        r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s.\x00-\x1f\x7f-\x9f]+(\.[^@\s.\x00-\x1f\x7f-\x9f]+)+$";
    /// An IPv4 network in CIDR notation (IPv6 ones are accepted too, as is a single
    /// address of either family).
    pub const IPV4_CIDR: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$";
    /// A host name as a tenant domain (`normalize_hostname`).
    pub const HOSTNAME: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$";
    /// An http(s) URL without user information (`check_http_url`).
    pub const HTTP_URL: &str = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$";
    /// An https URL (`check_http_url`, JWKS without `[jwt] allow_insecure_jwks`).
    pub const HTTPS_URL: &str = r"^[Hh][Tt][Tt][Pp][Ss]://[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$";
    /// Text without control characters.
    pub const NO_CONTROLS: &str = r"^[^\x00-\x1f\x7f-\x9f]+$";
}

/// A role of the tenant. The three listed exist in every tenant (onboarding
/// creates their policies, and policies are replaced, never deleted); any other
/// role with a policy (`PUT /v1/tenants/{id}/policies/{role}`) is accepted too.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Admin,
    Developer,
    ReadOnly,
}

/// An RBAC action.
#[derive(Serialize, ToSchema)]
pub enum ActionName {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "*")]
    Any,
}

/// A client-address allow-list: IPv4 CIDRs, or single IPv4/IPv6 addresses (IPv6
/// CIDRs such as `2001:db8::/32` are accepted too).
pub fn cidr_list_schema() -> utoipa::openapi::Array {
    cidr_list(false)
}

/// [`cidr_list_schema`], or `null` (PATCH: removes the allow-list).
pub fn nullable_cidr_list_schema() -> utoipa::openapi::Array {
    cidr_list(true)
}

fn cidr_list(nullable: bool) -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{
        AnyOfBuilder, ArrayBuilder, ObjectBuilder, SchemaFormat, SchemaType, Type,
    };
    let item = AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(patterns::IPV4_CIDR)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("ipv4".into()))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("ipv6".into()))),
        );
    let types = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::Type(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(types)
        .items(item)
        .max_items(Some(crate::routes::api_keys::MAX_CIDRS))
        .build()
}

#[cfg(test)]
mod tests {

    #[test]
    fn upstream_pool_names_the_configured_pools() {
        let doc = super::document_for(&["silo-a".to_owned()]);
        let prop =
            &doc["components"]["schemas"]["PatchTenantRequest"]["properties"]["upstream_pool"];
        assert_eq!(prop["enum"], serde_json::json!(["silo-a", null]), "{prop}");
        let none = super::document_for(&[]);
        assert_eq!(
            none["components"]["schemas"]["PatchTenantRequest"]["properties"]["upstream_pool"]
                ["enum"],
            serde_json::json!([null])
        );
    }

    /// Every operation has an id, no id is used twice (code generators key on them),
    /// and the statuses every route can meet are listed.
    #[test]
    fn operation_ids_are_unique_and_common_statuses_listed() {
        let doc = serde_json::to_value(super::document()).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        assert!(paths.len() > 30);
        for (path, item) in paths {
            for (method, op) in item.as_object().cloned().unwrap_or_default() {
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(seen.insert(id.clone()), "operationId {id} used twice");
                assert!(
                    op["responses"].get("503").is_some(),
                    "{method} {path}: no 503"
                );
                if op.get("requestBody").is_some() {
                    assert!(
                        op["responses"].get("400").is_some(),
                        "{method} {path}: no 400"
                    );
                }
                if op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
                {
                    assert!(
                        op["responses"].get("401").is_some(),
                        "{method} {path}: no 401"
                    );
                }
            }
        }
    }
}
