//! `GET /v1/tenants/{id}/usage`: the tenant's metered usage over any range, zero-filled
//! per bucket up to [`MAX_POINTS`] buckets and sparse (only non-empty buckets) past
//! it; `GET /v1/usage/export`: every tenant's usage per hour, streamed as CSV or
//! NDJSON.

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

/// Most buckets a zero-filled series may hold; past it the series is sparse.
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
    /// Present and true when the range holds more than 10 000 buckets: the
    /// series then lists only the buckets with usage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    #[schema(value_type = Vec<UsagePointDoc>)]
    pub series: Vec<UsagePoint>,
    #[schema(value_type = UsagePointDoc)]
    pub totals: UsagePoint,
    /// With `group_by=api_key`: each API key's share, over the whole hours the
    /// range touches (per-key usage is kept per hour). Requests without a key
    /// (login tokens) are in no entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_api_key: Option<Vec<KeyUsage>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyUsage {
    pub api_key_id: String,
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
    /// More buckets than [`MAX_POINTS`]: only non-empty ones are listed.
    sparse: bool,
    /// `group_by=api_key`.
    by_api_key: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GranularityName {
    Minute,
    Hour,
    Day,
}

#[derive(Serialize, ToSchema)]
pub enum GroupByName {
    #[serde(rename = "api_key")]
    ApiKey,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormatName {
    Csv,
    Ndjson,
}

fn time_param(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    // An empty value is a value (refused), not an absent parameter.
    match params.get(name).map(|s| s.trim()) {
        None => Ok(None),
        Some(raw) => parse_rfc3339(raw)
            .map(Some)
            .ok_or_else(|| ApiError::validation(name, "must be an RFC 3339 timestamp")),
    }
}

/// The validated query. Minute buckets exist only inside the minute retention
/// (`minute_retention`): an older `from` at minute granularity is refused.
fn window(
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
    minute_retention: std::time::Duration,
) -> Result<Window, ApiError> {
    let granularity = match params.get("granularity").map(|s| s.trim()) {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g).ok_or_else(|| {
            ApiError::validation("granularity", "must be one of minute, hour, day")
        })?,
    };
    let by_api_key = match params.get("group_by").map(|s| s.trim()) {
        None => false,
        Some("api_key") => true,
        Some(_) => return Err(ApiError::validation("group_by", "must be api_key")),
    };
    let to = time_param(params, "to")?.unwrap_or(now);
    let from = match time_param(params, "from")? {
        Some(f) => f,
        None => to
            .checked_sub_signed(Duration::hours(24))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    };
    // `from` not before `to`: an empty range (no buckets, zero totals).
    let to = to.max(from);
    if granularity == Granularity::Minute {
        let kept = Duration::from_std(minute_retention).unwrap_or(Duration::MAX);
        if from
            < now
                .checked_sub_signed(kept)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        {
            return Err(ApiError::validation(
                "granularity",
                format!(
                    "minute usage is kept for {} (retention.usage_minute_days); use hour or day for older ranges",
                    human(minute_retention)
                ),
            ));
        }
    }
    let step = granularity.seconds();
    let first = from.timestamp().div_euclid(step) * step;
    let end = to.timestamp() + i64::from(to.timestamp_subsec_nanos() > 0);
    let points = (end - first + step - 1) / step;
    Ok(Window {
        granularity,
        first,
        end,
        to,
        sparse: points > MAX_POINTS,
        by_api_key,
    })
}

/// "7 days", "36 hours", "90 seconds".
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 2 * 86_400 && s.is_multiple_of(86_400) {
        format!("{} days", s / 86_400)
    } else if s >= 2 * 3_600 && s.is_multiple_of(3_600) {
        format!("{} hours", s / 3_600)
    } else {
        format!("{s} seconds")
    }
}

/// The series (every bucket of the window, zero where nothing was metered; only
/// the non-empty ones when sparse) and the totals, from rows at the window's
/// granularity.
fn series(w: &Window, rows: &[UsageRow]) -> (Vec<UsagePoint>, UsagePoint) {
    let step = w.granularity.seconds();
    let rolled = roll_up(rows, w.granularity);
    let mut totals = UsageRow::default();
    for r in &rolled {
        totals.counts.merge(&r.counts);
    }
    let out = if w.sparse {
        rolled
            .iter()
            .filter(|r| r.bucket_start >= w.first && r.bucket_start < w.end)
            .map(|r| UsagePoint::from_row(r, true))
            .collect()
    } else {
        let by_start: HashMap<i64, &UsageRow> =
            rolled.iter().map(|r| (r.bucket_start, r)).collect();
        let mut out = Vec::new();
        let mut b = w.first;
        while b < w.end {
            match by_start.get(&b) {
                Some(r) => out.push(UsagePoint::from_row(r, true)),
                None => out.push(UsagePoint::from_row(
                    &UsageRow {
                        bucket_start: b,
                        ..UsageRow::default()
                    },
                    true,
                )),
            }
            b += step;
        }
        out
    };
    (out, UsagePoint::from_row(&totals, false))
}

#[utoipa::path(
    get, path = "/v1/tenants/{id}/usage", operation_id = "getUsage", tag = "usage",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: `to` minus 24 h; not before `to`: an empty range", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("granularity" = Option<GranularityName>, Query, description = "minute | hour | day (default hour); minute only inside `[retention] usage_minute_days` (an older `from` is 422 naming `granularity`)"),
        ("group_by" = Option<GroupByName>, Query, description = "api_key: add `by_api_key` (each key's totals over the hours the range touches)"),
    ),
    responses(
        (status = 200, description = "Usage series and totals over any range (sparse past 10 000 buckets)", body = UsageResponse),
        (status = 400, description = "Malformed query string", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "A tenant admin's tenant is suspended, or not an admin", body = ErrorResponse),
        (status = 404, description = "Unknown tenant", body = ErrorResponse),
        (status = 422, description = "Bad from/to/granularity (minute older than its retention)/group_by", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AdminState>,
    scope: TenantScope,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let w = window(&params, Utc::now(), state.options().retention.usage_minute)?;
    let rows = state
        .store()
        .usage_series(&scope.tenant.id, w.granularity, w.first, w.end)
        .await?;
    let (series, totals) = series(&w, &rows);
    let by_api_key = if w.by_api_key {
        let keys = state
            .store()
            .usage_by_key(&scope.tenant.id, w.first, w.end)
            .await?;
        Some(
            keys.into_iter()
                .map(|(api_key_id, counts)| KeyUsage {
                    api_key_id,
                    totals: UsagePoint::from_row(
                        &UsageRow {
                            bucket_start: 0,
                            counts,
                        },
                        false,
                    ),
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(Json(UsageResponse {
        tenant_id: scope.tenant.id,
        granularity: w.granularity.as_str(),
        from: ts(from_ms(w.first.saturating_mul(1000))),
        to: ts(w.to),
        sparse: w.sparse,
        series,
        totals,
        by_api_key,
    }))
}

/// Rows per store read of the export.
const EXPORT_PAGE: i64 = 1_000;
/// Columns of the export, in CSV order.
const EXPORT_COLUMNS: &str = "tenant_id,api_key_id,bucket_start,requests,rate_limited,denied,upstream_errors,bytes_in,bytes_out";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Csv,
    Ndjson,
}

/// One row of the export: a tenant's hour (`api_key_id` None) or a key's share.
type ExportRow = (String, Option<String>, UsageRow);

/// One line of the export.
fn export_line(format: ExportFormat, (tenant_id, key, row): &ExportRow) -> String {
    let c = &row.counts;
    let start = ts(from_ms(row.bucket_start.saturating_mul(1000)));
    match format {
        // Tenant ids are `[a-z0-9-]`, key ids uuids: nothing to quote.
        ExportFormat::Csv => format!(
            "{tenant_id},{},{start},{},{},{},{},{},{}\n",
            key.as_deref().unwrap_or(""),
            c.requests,
            c.rate_limited,
            c.denied,
            c.upstream_errors,
            c.bytes_in,
            c.bytes_out
        ),
        ExportFormat::Ndjson => {
            let mut line = serde_json::json!({
                "tenant_id": tenant_id,
                "api_key_id": key,
                "bucket_start": start,
                "requests": c.requests,
                "rate_limited": c.rate_limited,
                "denied": c.denied,
                "upstream_errors": c.upstream_errors,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
            })
            .to_string();
            line.push('\n');
            line
        }
    }
}

/// Which rows the export is reading: tenants' hours, then keys' hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportPhase {
    Tenants,
    Keys,
    Done,
}

/// The next page of the export after `last` (None: the phase's first page).
async fn export_page(
    store: &tenantgate_core::Store,
    phase: ExportPhase,
    first: i64,
    end: i64,
    last: Option<&ExportRow>,
) -> Result<Vec<ExportRow>, tenantgate_core::StoreError> {
    match phase {
        ExportPhase::Tenants => {
            let after = last.map(|(t, _, r)| (r.bucket_start, t.clone()));
            Ok(store
                .usage_hours_all(first, end, after, EXPORT_PAGE)
                .await?
                .into_iter()
                .map(|(t, r)| (t, None, r))
                .collect())
        }
        ExportPhase::Keys => {
            let after =
                last.map(|(t, k, r)| (r.bucket_start, t.clone(), k.clone().unwrap_or_default()));
            Ok(store
                .usage_key_hours_all(first, end, after, EXPORT_PAGE)
                .await?
                .into_iter()
                .map(|(t, k, r)| (t, Some(k), r))
                .collect())
        }
        ExportPhase::Done => Ok(Vec::new()),
    }
}

#[utoipa::path(
    get, path = "/v1/usage/export", operation_id = "exportUsage", tag = "usage",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 (aligned down to the hour); default: `to` minus 24 h", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive; default: now", format = DateTime, pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"),
        ("format" = Option<ExportFormatName>, Query, description = "csv (default) | ndjson"),
    ),
    responses(
        (status = 200, description = "Streamed: one row per tenant per hour with usage (ordered by hour then tenant, `api_key_id` empty), then one row per API key per hour (the key's share of its tenant's row; ordered by hour, tenant, key). CSV has a header line `tenant_id,api_key_id,bucket_start,requests,rate_limited,denied,upstream_errors,bytes_in,bytes_out`; NDJSON (`format=ndjson`, `application/x-ndjson`) one object with those fields per line (`api_key_id` null on tenant rows).", content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "Malformed query string", body = ErrorResponse),
        (status = 401, description = "No or bad credential", body = ErrorResponse),
        (status = 403, description = "Not the platform token", body = ErrorResponse),
        (status = 422, description = "Bad from/to/format", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AdminState>,
    caller: crate::auth::Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    caller.require_platform()?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let format = match params.get("format").map(|s| s.trim()) {
        None | Some("csv") => ExportFormat::Csv,
        Some("ndjson") => ExportFormat::Ndjson,
        Some(_) => return Err(ApiError::validation("format", "must be csv or ndjson")),
    };
    let to = time_param(&params, "to")?.unwrap_or_else(Utc::now);
    let from = match time_param(&params, "from")? {
        Some(f) => f,
        None => to
            .checked_sub_signed(Duration::hours(24))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    };
    // `from` not before `to`: an empty range (no rows).
    let to = to.max(from);
    let first = from.timestamp().div_euclid(3_600) * 3_600;
    let end = to.timestamp() + i64::from(to.timestamp_subsec_nanos() > 0);
    // The first page is read before answering, so a store that is down is a 503,
    // not a truncated 200.
    let store = state.store().clone();
    let first_page = export_page(&store, ExportPhase::Tenants, first, end, None).await?;
    struct Cursor {
        page: Vec<ExportRow>,
        phase: ExportPhase,
        header: bool,
    }
    let start = Cursor {
        page: first_page,
        phase: ExportPhase::Tenants,
        header: format == ExportFormat::Csv,
    };
    let body = futures::stream::unfold(start, move |mut cur| {
        let store = store.clone();
        async move {
            if cur.header {
                cur.header = false;
                return Some((Ok(format!("{EXPORT_COLUMNS}\n")), cur));
            }
            loop {
                if cur.phase == ExportPhase::Done {
                    return None;
                }
                let mut chunk = String::with_capacity(cur.page.len() * 112);
                for row in &cur.page {
                    chunk.push_str(&export_line(format, row));
                }
                let full = i64::try_from(cur.page.len()).unwrap_or(0) >= EXPORT_PAGE;
                let (next_phase, last) = if full {
                    (cur.phase, cur.page.last())
                } else if cur.phase == ExportPhase::Tenants {
                    (ExportPhase::Keys, None)
                } else {
                    (ExportPhase::Done, None)
                };
                match export_page(&store, next_phase, first, end, last).await {
                    Ok(next) => {
                        cur.page = next;
                        cur.phase = next_phase;
                    }
                    Err(e) => {
                        // Mid-stream: the connection is cut, so the client sees a
                        // truncated body rather than a complete-looking one.
                        tracing::error!(error = %e, "usage export: store read failed mid-stream");
                        cur.phase = ExportPhase::Done;
                        return Some((Err(std::io::Error::other(e.to_string())), cur));
                    }
                }
                if !chunk.is_empty() {
                    return Some((Ok(chunk), cur));
                }
            }
        }
    });
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Ndjson => "application/x-ndjson",
    };
    Ok((
        [(http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// This resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(get))
        .routes(routes!(export))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_query::{field, params};

    const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

    #[test]
    fn defaults_and_alignment() {
        let now = parse_rfc3339("2024-05-01T12:34:56Z").unwrap();
        let w = window(&params(&[]), now, WEEK).unwrap();
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
            WEEK,
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
            WEEK,
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
            field(window(&params(&[("granularity", "week")]), now, WEEK)),
            "granularity"
        );
        assert_eq!(
            field(window(&params(&[("from", "yesterday")]), now, WEEK)),
            "from"
        );
        assert_eq!(
            field(window(
                &params(&[("to", "2024-13-01T00:00:00Z")]),
                now,
                WEEK
            )),
            "to"
        );
        // An empty range is no error.
        let w = window(
            &params(&[
                ("from", "2024-05-02T00:00:00Z"),
                ("to", "2024-05-01T00:00:00Z"),
            ]),
            now,
            WEEK,
        )
        .unwrap();
        assert_eq!(series(&w, &[]).0.len(), 0);
        assert_eq!(field(window(&params(&[("to", "")]), now, WEEK)), "to");
        assert_eq!(
            field(window(
                &params(&[
                    ("from", "2000-01-01T00:00:00Z"),
                    ("to", "2024-01-01T00:00:00Z"),
                    ("granularity", "minute")
                ]),
                now,
                WEEK
            )),
            "granularity"
        );
        // Minutes only inside their retention; hour and day over any range.
        let now = parse_rfc3339("2024-05-10T00:00:00Z").unwrap();
        assert_eq!(
            field(window(
                &params(&[("from", "2024-05-02T00:00:00Z"), ("granularity", "minute")]),
                now,
                WEEK
            )),
            "granularity"
        );
        assert!(window(
            &params(&[("from", "2024-05-03T00:00:01Z"), ("granularity", "minute")]),
            now,
            WEEK
        )
        .is_ok());
        for g in ["hour", "day"] {
            let w = window(
                &params(&[
                    ("from", "2000-01-01T00:00:00Z"),
                    ("to", "2100-01-01T00:00:00Z"),
                    ("granularity", g),
                ]),
                now,
                WEEK,
            )
            .unwrap();
            assert!(w.sparse, "{g}");
        }
    }

    #[test]
    fn sparse_series_list_only_buckets_with_usage() {
        let now = parse_rfc3339("2024-05-10T00:00:00Z").unwrap();
        let w = window(
            &params(&[
                ("from", "2000-01-01T00:00:00Z"),
                ("to", "2100-01-01T00:00:00Z"),
                ("granularity", "day"),
            ]),
            now,
            WEEK,
        )
        .unwrap();
        let day = parse_rfc3339("2024-05-01T00:00:00Z").unwrap().timestamp();
        let rows = [day, day + 86_400 * 3].map(|b| UsageRow {
            bucket_start: b,
            counts: tenantgate_core::usage::UsageCounts {
                requests: 4,
                ..Default::default()
            },
        });
        let (s, t) = series(&w, &rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].bucket_start.as_deref(), Some("2024-05-04T00:00:00Z"));
        assert_eq!(t.requests, 8);
    }
}
