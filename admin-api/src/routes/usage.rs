//! `GET /v1/tenants/{id}/usage`: the tenant's metered usage, zero-filled per bucket.

use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::openapi::{ErrorResponse, UsagePointDoc};
use crate::routes::ts;
use crate::AdminState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::HashMap;
use tenantgate_core::time::{from_ms, parse_rfc3339};
use tenantgate_core::usage::{roll_up, Granularity, UsagePoint, UsageRow};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most points one answer may hold.
pub const MAX_POINTS: i64 = 10_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    pub tenant_id: String,
    /// minute | hour | day
    pub granularity: &'static str,
    /// Start of the first bucket (the requested `from` aligned down), RFC 3339.
    pub from: String,
    /// RFC 3339.
    pub to: String,
    #[schema(value_type = Vec<UsagePointDoc>)]
    pub series: Vec<UsagePoint>,
    #[schema(value_type = UsagePointDoc)]
    pub totals: UsagePoint,
}

/// The validated query: bucket starts from `first` (aligned) while `< to`.
#[derive(Debug, PartialEq, Eq)]
struct Window {
    granularity: Granularity,
    first: i64,
    /// Exclusive end in whole seconds (rounded up).
    end: i64,
    to: DateTime<Utc>,
}

fn time_param(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => parse_rfc3339(raw)
            .map(Some)
            .ok_or_else(|| ApiError::validation(name, "must be an RFC 3339 timestamp")),
    }
}

fn window(params: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Window, ApiError> {
    let granularity = match params
        .get("granularity")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g).ok_or_else(|| {
            ApiError::validation("granularity", "must be one of minute, hour, day")
        })?,
    };
    let to = time_param(params, "to")?.unwrap_or(now);
    let from = match time_param(params, "from")? {
        Some(f) => f,
        None => to - Duration::hours(24),
    };
    if from >= to {
        return Err(ApiError::validation("from", "must be before `to`"));
    }
    let step = granularity.seconds();
    let first = from.timestamp().div_euclid(step) * step;
    let end = to.timestamp() + i64::from(to.timestamp_subsec_nanos() > 0);
    let points = (end - first + step - 1) / step;
    if points > MAX_POINTS {
        let hint = match granularity {
            Granularity::Minute => "; use hour or day",
            Granularity::Hour => "; use day",
            Granularity::Day => "; narrow from/to",
        };
        return Err(ApiError::validation(
            "granularity",
            format!("the range holds {points} buckets, at most {MAX_POINTS} are allowed{hint}"),
        ));
    }
    Ok(Window {
        granularity,
        first,
        end,
        to,
    })
}

/// Every bucket of the window, zero where nothing was metered, and the totals.
fn series(w: &Window, rows: &[UsageRow]) -> (Vec<UsagePoint>, UsagePoint) {
    let step = w.granularity.seconds();
    let rolled: HashMap<i64, UsageRow> = roll_up(rows, w.granularity)
        .into_iter()
        .map(|r| (r.bucket_start, r))
        .collect();
    let mut totals = UsageRow::default();
    let mut out = Vec::new();
    let mut b = w.first;
    while b < w.end {
        let row = rolled.get(&b).cloned().unwrap_or(UsageRow {
            bucket_start: b,
            ..UsageRow::default()
        });
        totals.counts.merge(&row.counts);
        out.push(UsagePoint::from_row(&row, true));
        b += step;
    }
    (out, UsagePoint::from_row(&totals, false))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/usage", operation_id = "getUsage", tag = "usage",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: `to` minus 24 h"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("granularity" = Option<String>, Query, description = "minute | hour | day (default hour)"),
    ),
    responses(
        (status = 200, description = "Usage series and totals", body = UsageResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Bad from/to/granularity", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let w = window(&params, Utc::now())?;
    let rows = state
        .store()
        .usage_minutes(&scope.tenant.id, w.first, w.end)
        .await?;
    let (series, totals) = series(&w, &rows);
    Ok(Json(UsageResponse {
        tenant_id: scope.tenant.id,
        granularity: w.granularity.as_str(),
        from: ts(from_ms(w.first.saturating_mul(1000))),
        to: ts(w.to),
        series,
        totals,
    }))
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(get))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn field(r: Result<Window, ApiError>) -> String {
        match r {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_alignment() {
        let now = parse_rfc3339("2024-05-01T12:34:56Z").unwrap();
        let w = window(&params(&[]), now).unwrap();
        assert_eq!(w.granularity, Granularity::Hour);
        assert_eq!(ts(from_ms(w.first * 1000)), "2024-04-30T12:00:00Z");
        let (s, _) = series(&w, &[]);
        assert_eq!(s.len(), 25);
        let w = window(
            &params(&[
                ("from", "2024-05-01T00:00:30Z"),
                ("to", "2024-05-01T00:05:00Z"),
                ("granularity", "minute"),
            ]),
            now,
        )
        .unwrap();
        let (s, t) = series(&w, &[]);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].bucket_start.as_deref(), Some("2024-05-01T00:00:00Z"));
        assert_eq!(t.requests, 0);
    }

    #[test]
    fn rows_land_in_their_buckets() {
        let now = parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let w = window(
            &params(&[
                ("from", "2024-05-01T00:00:00Z"),
                ("to", "2024-05-01T03:00:00Z"),
            ]),
            now,
        )
        .unwrap();
        let base = parse_rfc3339("2024-05-01T01:00:00Z").unwrap().timestamp();
        let rows = [base, base + 60, base + 3_600].map(|b| UsageRow {
            bucket_start: b,
            counts: tenantgate_core::usage::UsageCounts {
                requests: 2,
                bytes_in: 10,
                ..Default::default()
            },
        });
        let (s, t) = series(&w, &rows);
        assert_eq!(
            s.iter().map(|p| p.requests).collect::<Vec<_>>(),
            vec![0, 4, 2]
        );
        assert_eq!(t.requests, 6);
        assert_eq!(t.bytes_in, 30);
    }

    #[test]
    fn bad_queries_name_the_field() {
        let now = Utc::now();
        assert_eq!(
            field(window(&params(&[("granularity", "week")]), now)),
            "granularity"
        );
        assert_eq!(
            field(window(&params(&[("from", "yesterday")]), now)),
            "from"
        );
        assert_eq!(
            field(window(&params(&[("to", "2024-13-01T00:00:00Z")]), now)),
            "to"
        );
        assert_eq!(
            field(window(
                &params(&[
                    ("from", "2024-05-02T00:00:00Z"),
                    ("to", "2024-05-01T00:00:00Z")
                ]),
                now
            )),
            "from"
        );
        assert_eq!(
            field(window(
                &params(&[
                    ("from", "2000-01-01T00:00:00Z"),
                    ("to", "2024-01-01T00:00:00Z"),
                    ("granularity", "minute")
                ]),
                now
            )),
            "granularity"
        );
    }
}
