//! `GET /v1/audit` (platform) and `GET /v1/tenants/{id}/audit` (its admins): the
//! audit log, newest first, with cursor pagination.

use crate::auth::{Caller, TenantScope};
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::routes::ts;
use crate::AdminState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use std::collections::HashMap;
use tenantgate_core::store::{AuditEntry, AuditQuery};
use tenantgate_core::time::from_ms;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditActor {
    /// platform | user
    pub kind: String,
    /// The user's id (`platform` for the platform token).
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub id: String,
    /// RFC 3339.
    pub at: String,
    pub actor: AuditActor,
    pub tenant_id: Option<String>,
    /// `<resource>.<verb>`, e.g. `api_key.create`, `tenant.update`.
    pub action: String,
    /// The path of the resource changed.
    pub target: String,
    pub request_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryResponse>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(e: AuditEntry) -> Self {
        AuditEntryResponse {
            id: e.id.to_string(),
            at: ts(from_ms(e.at_ms)),
            actor: AuditActor {
                kind: e.actor_kind,
                id: e.actor_id,
            },
            tenant_id: e.tenant_id,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
        }
    }
}

/// The validated filters (`tenant_id` is the caller's business).
fn query(params: &HashMap<String, String>) -> Result<AuditQuery, ApiError> {
    let limit = super::query_limit(params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let before_id = super::query_param(params, "cursor")
        .map(|raw| {
            raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::validation("cursor", "must be a cursor from a previous page")
            })
        })
        .transpose()?;
    let from_ms = super::query_time_ms(params, "from")?;
    let to_ms = super::query_time_ms(params, "to")?;
    Ok(AuditQuery {
        tenant_id: None,
        from_ms,
        to_ms,
        before_id,
        limit,
    })
}

async fn page(state: &AdminState, q: AuditQuery) -> Result<Json<AuditPage>, ApiError> {
    let entries = state.store().list_audit(&q).await?;
    let next_cursor = (i64::try_from(entries.len()).unwrap_or(0) == q.limit)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        entries: entries.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/v1/audit", operation_id = "listAudit", tag = "audit",
    params(
        ("tenant_id" = Option<String>, Query, description = "Only this tenant's entries", pattern = "^[a-z0-9][a-z0-9-]{1,62}$"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("limit" = Option<i64>, Query, description = "Entries per page (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<i64>, Query, description = "`next_cursor` of the previous page", minimum = 1),
    ),
    responses(
        (status = 200, description = "Audit entries, newest first (none when `from` is not before `to`)", body = AuditPage),
        (status = 400, description = "Malformed query string", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform token", body = ErrorResponse),
        (status = 422, description = "Bad tenant_id/from/to/limit/cursor", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require_platform()?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut q = query(&params)?;
    if let Some(t) = super::query_param(&params, "tenant_id") {
        if !tenantgate_core::domain::valid_tenant_id(t) {
            return Err(ApiError::validation(
                "tenant_id",
                "must match [a-z0-9][a-z0-9-]{1,62}",
            ));
        }
        q.tenant_id = Some(t.to_owned());
    }
    page(&state, q).await
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/audit", operation_id = "listTenantAudit", tag = "audit",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("limit" = Option<i64>, Query, description = "Entries per page (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<i64>, Query, description = "`next_cursor` of the previous page", minimum = 1),
    ),
    responses(
        (status = 200, description = "The tenant's audit entries, newest first (none when `from` is not before `to`)", body = AuditPage),
        (status = 400, description = "Malformed query string", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not an admin of the tenant", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Bad from/to/limit/cursor", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list_for_tenant(
    State(state): State<AdminState>,
    scope: TenantScope,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut q = query(&params)?;
    q.tenant_id = Some(scope.tenant.id);
    page(&state, q).await
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(list_for_tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_query::{field, params};

    #[test]
    fn bad_filters_name_the_field() {
        assert_eq!(query(&params(&[])).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(field(query(&params(&[("limit", "0")]))), "limit");
        assert_eq!(field(query(&params(&[("limit", "1001")]))), "limit");
        assert_eq!(field(query(&params(&[("limit", "x")]))), "limit");
        assert_eq!(field(query(&params(&[("cursor", "abc")]))), "cursor");
        assert_eq!(field(query(&params(&[("from", "yesterday")]))), "from");
        assert_eq!(field(query(&params(&[("to", "")]))), "to");
        // An empty range is no error: it holds no entries.
        assert!(query(&params(&[
            ("from", "2024-01-02T00:00:00Z"),
            ("to", "2024-01-01T00:00:00Z")
        ]))
        .is_ok());
        let q = query(&params(&[("cursor", "42"), ("limit", "5")])).unwrap();
        assert_eq!((q.before_id, q.limit), (Some(42), 5));
    }
}
