//! `GET /v1/scaling/events` (platform): the autoscaling decisions the fleet's
//! evaluator stored, oldest first.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::routes::ts;
use crate::AdminState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use std::collections::HashMap;
use tenantgate_core::store::ScalingEvent;
use tenantgate_core::time::{from_ms, now_ms};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const DEFAULT_LIMIT: i64 = 1_000;
pub const MAX_LIMIT: i64 = 10_000;
/// Longest route name accepted in `route` (names and prefixes are shorter).
const MAX_ROUTE_CHARS: usize = 256;

/// What the proxies measured when the decision was made (summed over the fleet).
#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingSignalsResponse {
    /// Requests per second forwarded on the route.
    pub rps: f64,
    /// Requests forwarded and not yet answered.
    pub in_flight: u64,
    /// 95th percentile latency, ms (the highest proxy's).
    pub p95_ms: f64,
    /// Proxies whose signals were counted.
    pub proxies: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingEventResponse {
    /// RFC 3339.
    pub at: String,
    /// The route's name (`[[routes]] name`, default its prefix).
    pub route: String,
    pub from_replicas: u32,
    pub to_replicas: u32,
    pub reason: String,
    pub signals: ScalingSignalsResponse,
}

impl From<ScalingEvent> for ScalingEventResponse {
    fn from(e: ScalingEvent) -> Self {
        ScalingEventResponse {
            at: ts(from_ms(e.at_ms)),
            route: e.route,
            from_replicas: e.from_replicas,
            to_replicas: e.to_replicas,
            reason: e.reason,
            signals: ScalingSignalsResponse {
                rps: e.signals.rps,
                in_flight: e.signals.in_flight,
                p95_ms: e.signals.p95_ms,
                proxies: e.signals.proxies,
            },
        }
    }
}

/// The validated filters.
#[derive(Debug, PartialEq, Eq)]
struct EventQuery {
    route: Option<String>,
    from_ms: i64,
    to_ms: i64,
    limit: i64,
}

fn query(params: &HashMap<String, String>, now: i64) -> Result<EventQuery, ApiError> {
    let route = match super::query_param(params, "route") {
        Some(r) if r.chars().count() > MAX_ROUTE_CHARS || r.chars().any(char::is_control) => {
            return Err(ApiError::validation(
                "route",
                format!("must be a route name: 1 to {MAX_ROUTE_CHARS} printable characters"),
            ))
        }
        r => r.map(str::to_owned),
    };
    let limit = super::query_limit(params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let from_ms = super::query_time_ms(params, "from")?.unwrap_or(0);
    // Default: up to now, inclusive of this millisecond.
    let to_ms = super::query_time_ms(params, "to")?.unwrap_or(now.saturating_add(1));
    // from ≥ to is an empty range: no events, no error.
    Ok(EventQuery {
        route,
        from_ms,
        to_ms,
        limit,
    })
}

#[utoipa::path(
    get, path = "/v1/scaling/events", operation_id = "listScalingEvents", tag = "scaling",
    params(
        ("route" = Option<String>, Query, description = "Only this route's events (its name)", max_length = 256),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive (default: the oldest kept)", format = DateTime),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive (default: now)", format = DateTime),
        ("limit" = Option<i64>, Query, description = "Most events returned (default 1000), oldest first", minimum = 1, maximum = 10000),
    ),
    responses(
        (status = 200, description = "Scaling events, oldest first", body = [ScalingEventResponse]),
        (status = 400, description = "Malformed query string", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform token", body = ErrorResponse),
        (status = 422, description = "Bad route/from/to/limit", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<ScalingEventResponse>>, ApiError> {
    caller.require_platform()?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let q = query(&params, now_ms())?;
    let events = state
        .store()
        .scaling_events(q.route.as_deref(), q.from_ms, q.to_ms, q.limit)
        .await?;
    Ok(Json(events.into_iter().map(Into::into).collect()))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_query::{field, params};

    #[test]
    fn bad_filters_name_the_field() {
        let q = query(&params(&[]), 5_000).unwrap();
        assert_eq!(
            (q.route, q.from_ms, q.to_ms, q.limit),
            (None, 0, 5_001, DEFAULT_LIMIT)
        );
        assert_eq!(field(query(&params(&[("from", "yesterday")]), 0)), "from");
        assert_eq!(field(query(&params(&[("to", "2024-13-01")]), 0)), "to");
        // An empty value is a value (refused), not an absent parameter.
        assert_eq!(field(query(&params(&[("to", "")]), 0)), "to");
        assert_eq!(field(query(&params(&[("limit", "")]), 0)), "limit");
        // from ≥ to: an empty range, no error.
        let q = query(
            &params(&[
                ("from", "2024-01-02T00:00:00Z"),
                ("to", "2024-01-01T00:00:00Z"),
            ]),
            0,
        )
        .unwrap();
        assert!(q.from_ms > q.to_ms);
        assert_eq!(field(query(&params(&[("route", "a\u{7}b")]), 0)), "route");
        assert_eq!(
            field(query(&params(&[("route", &"x".repeat(257))]), 0)),
            "route"
        );
        assert_eq!(field(query(&params(&[("limit", "0")]), 0)), "limit");
        let q = query(&params(&[("route", "/api/v1/"), ("limit", "5")]), 0).unwrap();
        assert_eq!((q.route.as_deref(), q.limit), (Some("/api/v1/"), 5));
    }
}
