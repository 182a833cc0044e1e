//! `POST /v1/explain`: why the proxy would allow or refuse a described request,
//! stage by stage. The decision is the proxy's own: this handler checks the caller
//! and the shape, then asks a proxy's admin listener (`POST /explain`), where the
//! same pipeline that serves traffic runs in peek mode (no token spent, nothing
//! metered). A tenant admin may explain requests of its own tenant only.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::{json, AdminState};
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// An HTTP method token (`GET`, `POST`, …; any token is accepted, an unknown one
/// maps to no RBAC action and is refused by the proxy).
pub const METHOD_PATTERN: &str = "^[A-Za-z]{1,32}$";
/// A request target: an absolute path with an optional query, URI characters only.
pub const PATH_PATTERN: &str = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$";
pub const MAX_PATH_CHARS: usize = 8192;
/// A `Host` value: a name or address with an optional port.
pub const HOST_PATTERN: &str = r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$";
/// A header name (RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$";
/// A header value: visible ASCII, spaces and tabs.
pub const HEADER_VALUE_PATTERN: &str = r"^[\t\x20-\x7e]*$";
pub const MAX_HEADER_VALUE_CHARS: usize = 8192;
pub const MAX_HEADERS: usize = 100;
/// How long the proxy may take to explain.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to explain: what a client would send to the proxy.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ExplainRequest {
    #[schema(example = "GET", pattern = "^[A-Za-z]{1,32}$")]
    pub method: String,
    /// Path and optional query, as sent to the proxy.
    #[schema(
        example = "/api/v1/resources/42",
        pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$",
        max_length = 8192
    )]
    pub path: String,
    /// The `Host` the request is sent to (tenant domains).
    #[schema(
        example = "api.acme.example",
        pattern = r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$"
    )]
    pub host: Option<String>,
    /// Request headers by name, e.g. `{"X-API-Key": "tg_…"}`. Credentials are used
    /// to decide, never echoed.
    #[serde(default)]
    #[schema(schema_with = header_map_schema)]
    pub headers: BTreeMap<String, String>,
    /// The client address IP allow-lists see (default: none known, so an
    /// allow-list refuses).
    #[schema(schema_with = ip_schema)]
    pub client_ip: Option<std::net::IpAddr>,
}

fn ip_schema() -> impl Into<RefOr<Schema>> {
    use utoipa::openapi::schema::{AnyOfBuilder, SchemaFormat};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("ipv4".into()))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("ipv6".into()))),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "The client address IP allow-lists see (default: none known, so an allow-list refuses)",
        ))
}

fn header_map_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(HEADER_NAME_PATTERN)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(HEADER_VALUE_PATTERN))
                .max_length(Some(MAX_HEADER_VALUE_CHARS)),
        ))
        .max_properties(Some(MAX_HEADERS))
        .description(Some("Header name → value"))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ExplainStep {
    /// route | scrub | authenticate | tenant | authorize | limit | quota
    #[schema(value_type = StageName)]
    pub stage: String,
    #[schema(value_type = OutcomeName)]
    pub outcome: String,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Route,
    Scrub,
    Authenticate,
    Tenant,
    Authorize,
    Limit,
    Quota,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeName {
    Pass,
    Deny,
    Skip,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecisionName {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ExplainResponse {
    #[schema(value_type = DecisionName)]
    pub decision: String,
    /// The status the proxy would answer; 200 stands for "proxied upstream".
    pub status: u16,
    /// The error code of a refusal (`forbidden`, `rate_limited`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// One per stage, in the order the proxy runs them.
    pub steps: Vec<ExplainStep>,
    /// The tenant the credential belongs to, when it was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

fn matches_pattern(
    field: &str,
    value: &str,
    ok: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), ApiError> {
    if value.chars().all(ok) {
        Ok(())
    } else {
        Err(ApiError::validation(field, what.to_owned()))
    }
}

/// The document's constraints, checked here so the proxy gets only requests a
/// client could send.
fn validate(req: &ExplainRequest) -> Result<(), ApiError> {
    let m = &req.method;
    if m.is_empty() || m.len() > 32 {
        return Err(ApiError::validation("method", "must be 1 to 32 letters"));
    }
    matches_pattern(
        "method",
        m,
        |c| c.is_ascii_alphabetic(),
        "must be letters only, e.g. GET",
    )?;
    let p = &req.path;
    if !p.starts_with('/') || p.chars().count() > MAX_PATH_CHARS {
        return Err(ApiError::validation(
            "path",
            format!("must start with / and be at most {MAX_PATH_CHARS} characters"),
        ));
    }
    matches_pattern(
        "path",
        p,
        |c| c.is_ascii_alphanumeric() || "._~!$&'()*+,;=:@%/?-".contains(c),
        "must hold URI characters only (percent-encode the rest)",
    )?;
    if let Some(h) = &req.host {
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h.as_str(), None),
        };
        let name_ok = (1..=253).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        let port_ok = port
            .is_none_or(|p| (1..=5).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()));
        if !name_ok || !port_ok {
            return Err(ApiError::validation(
                "host",
                "must be a host name with an optional :port",
            ));
        }
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(ApiError::validation(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in &req.headers {
        let field = format!("headers.{name}");
        let name_ok = (1..=256).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+.^_`|~-".contains(c));
        if !name_ok {
            return Err(ApiError::validation(field, "is not a valid header name"));
        }
        if value.chars().count() > MAX_HEADER_VALUE_CHARS
            || !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c))
        {
            return Err(ApiError::validation(
                field,
                "must be visible ASCII, spaces and tabs, at most 8192 characters",
            ));
        }
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/explain", operation_id = "explainRequest", tag = "explain",
    request_body = ExplainRequest,
    responses(
        (status = 200, description = "The proxy's decision, stage by stage (nothing spent or metered)", body = ExplainResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "A tenant admin explaining another tenant's request", body = ErrorResponse),
        (status = 422, description = "Validation error", body = ErrorResponse),
        (status = 503, description = "No proxy answered, or the store is unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn explain(
    State(state): State<AdminState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<ExplainResponse>, ApiError> {
    let req: ExplainRequest = json::parse(&body)?;
    validate(&req)?;
    let base = state
        .options()
        .proxy_admin_url
        .as_deref()
        .ok_or_else(|| ApiError::internal("explain", "no proxy admin URL configured"))?;
    let res = state
        .http()
        .post(format!("{}/explain", base.trim_end_matches('/')))
        .timeout(PROXY_TIMEOUT)
        .json(&req)
        .send()
        .await
        .map_err(|e| ApiError::internal("explain: the proxy did not answer", e))?;
    let status = res.status();
    let body: serde_json::Value = res
        .json()
        .await
        .map_err(|e| ApiError::internal("explain: the proxy's answer is not JSON", e))?;
    if status == http::StatusCode::UNPROCESSABLE_ENTITY {
        let field = body["error"]["field"].as_str().unwrap_or("body").to_owned();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("invalid")
            .to_owned();
        return Err(ApiError::validation(field, message));
    }
    if !status.is_success() {
        return Err(ApiError::internal(
            "explain: the proxy refused",
            format!("{status}: {body}"),
        ));
    }
    let out: ExplainResponse = serde_json::from_value(body)
        .map_err(|e| ApiError::internal("explain: unexpected answer from the proxy", e))?;
    if let Some(t) = &out.tenant_id {
        if !caller.may_see(t) {
            return Err(ApiError::Forbidden(
                "a tenant admin may explain only its own tenant's requests",
            ));
        }
    }
    Ok(Json(out))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(explain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> ExplainRequest {
        ExplainRequest {
            method: method.into(),
            path: path.into(),
            host: None,
            headers: BTreeMap::new(),
            client_ip: None,
        }
    }

    fn field(r: &ExplainRequest) -> String {
        match validate(r) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn checks_the_documented_shape() {
        assert!(validate(&req("GET", "/api/v1/resources?x=1")).is_ok());
        assert_eq!(field(&req("G T", "/")), "method");
        assert_eq!(field(&req("GET", "x")), "path");
        assert_eq!(field(&req("GET", "/a b")), "path");
        let mut r = req("GET", "/");
        r.host = Some("a.example:99999x".into());
        assert_eq!(field(&r), "host");
        let mut r = req("GET", "/");
        r.headers.insert("bad name".into(), "v".into());
        assert_eq!(field(&r), "headers.bad name");
        let mut r = req("GET", "/");
        r.headers.insert("x-ok".into(), "caf\u{e9}".into());
        assert_eq!(field(&r), "headers.x-ok");
    }
}
