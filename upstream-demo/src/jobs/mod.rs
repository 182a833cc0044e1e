//! `/api/v1/jobs`: background jobs that keep the tenant context of the request
//! that submitted them.
//!
//! `POST /api/v1/jobs {kind: "export"|"report", params?}` → 202 `{id, status:
//! "queued"}`; `GET /api/v1/jobs/{id}` → `{id, kind, status, result?, error?,
//! attempts, max_attempts}` (another tenant's job is 404); `GET
//! /api/v1/jobs/usage` → the tenant's jobs and attempts per kind and status.
//!
//! The job row keeps the submitting request's tenant, user and request id; the
//! [`worker`] runs every attempt inside a tracing span carrying them and inside the
//! tenant's transaction (its own schema on PostgreSQL), so a job reads and writes
//! exactly what its tenant's requests could.

pub mod queue;
pub mod worker;

use crate::error::ApiError;
use crate::identity::TenantCtx;
use crate::resources::parse_object;
use crate::DemoState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tenantgate_core::time::now_ms;

/// Attempts a job gets unless its params say otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Largest `params.max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: i64 = 10;
/// Largest `params.sleep_ms` (a test knob: the attempt waits this long first).
pub const MAX_SLEEP_MS: i64 = 60_000;
/// Largest `params.limit` of an export (and its default).
pub const MAX_EXPORT_ROWS: i64 = 1000;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The tenant's resources (count and rows) into the result.
    Export,
    /// A summary of the tenant's resources (count, rows per owner).
    Report,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "export" => Some(Kind::Export),
            "report" => Some(Kind::Report),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Export => "export",
            Kind::Report => "report",
        }
    }
}

/// A job's validated params.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// The first `fail_times` attempts fail on purpose (tests of retries).
    pub fail_times: i64,
    /// Each attempt first waits this long (tests of restarts mid-job).
    pub sleep_ms: i64,
    pub max_attempts: i64,
    /// Export: rows at most.
    pub limit: i64,
}

impl Params {
    /// Reads the params stored with a job (validated when it was submitted).
    pub fn from_stored(v: &Value) -> Params {
        let int = |k: &str, d: i64| v.get(k).and_then(Value::as_i64).unwrap_or(d);
        Params {
            fail_times: int("fail_times", 0),
            sleep_ms: int("sleep_ms", 0).clamp(0, MAX_SLEEP_MS),
            max_attempts: int("max_attempts", DEFAULT_MAX_ATTEMPTS),
            limit: int("limit", MAX_EXPORT_ROWS).clamp(1, MAX_EXPORT_ROWS),
        }
    }
}

/// `params` of a submission: absent or null, or an object of known integer keys
/// within their ranges; anything else is a 422 naming the key.
fn parse_params(rid: &str, body: &Map<String, Value>) -> Result<(Params, Value), ApiError> {
    let obj = match body.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::validation(
                rid,
                "params",
                "params must be an object",
            ))
        }
    };
    const KEYS: [(&str, &str, i64, i64); 4] = [
        ("fail_times", "params.fail_times", 0, MAX_ATTEMPTS_LIMIT),
        ("sleep_ms", "params.sleep_ms", 0, MAX_SLEEP_MS),
        ("max_attempts", "params.max_attempts", 1, MAX_ATTEMPTS_LIMIT),
        ("limit", "params.limit", 1, MAX_EXPORT_ROWS),
    ];
    if let Some(unknown) = obj.keys().find(|k| !KEYS.iter().any(|(n, ..)| n == k)) {
        return Err(ApiError::validation(
            rid,
            "params",
            format!(
                "unknown parameter {unknown:?}; known: fail_times, sleep_ms, max_attempts, limit"
            ),
        ));
    }
    for (name, field, lo, hi) in KEYS {
        if let Some(v) = obj.get(name) {
            if !v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)) {
                return Err(ApiError::validation(
                    rid,
                    field,
                    format!("{field} must be a whole number from {lo} to {hi}"),
                ));
            }
        }
    }
    let params = Params::from_stored(&Value::Object(obj.clone()));
    Ok((params, Value::Object(obj)))
}

fn parse_kind(rid: &str, body: &Map<String, Value>) -> Result<Kind, ApiError> {
    match body.get("kind") {
        None | Some(Value::Null) => Err(ApiError::validation(rid, "kind", "kind is required")),
        Some(Value::String(s)) => Kind::parse(s).ok_or_else(|| {
            ApiError::validation(rid, "kind", "kind must be \"export\" or \"report\"")
        }),
        Some(_) => Err(ApiError::validation(
            rid,
            "kind",
            "kind must be \"export\" or \"report\"",
        )),
    }
}

pub fn routes() -> Router<DemoState> {
    Router::new()
        .route("/api/v1/jobs", post(submit))
        .route("/api/v1/jobs/usage", get(usage))
        .route("/api/v1/jobs/{id}", get(status))
}

#[derive(Debug, Serialize)]
struct Submitted {
    id: String,
    status: &'static str,
}

async fn submit(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let rid = &ctx.request_id;
    let body = parse_object(rid, body)?;
    let kind = parse_kind(rid, &body)?;
    let (params, stored) = parse_params(rid, &body)?;
    if !state.tenancy().accepts(&ctx.tenant_id) {
        return Err(ApiError::bad_tenant(rid));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let job = queue::NewJob {
        id: &id,
        tenant_id: &ctx.tenant_id,
        user_id: ctx.user_id.as_deref(),
        request_id: rid,
        kind: kind.as_str(),
        params: &stored,
        max_attempts: params.max_attempts,
    };
    queue::enqueue(state.pool(), &job, now_ms())
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    tracing::info!(request_id = %rid, tenant_id = %ctx.tenant_id, job_id = %id, kind = kind.as_str(), "job queued");
    state.jobs_notify().notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            id,
            status: queue::QUEUED,
        }),
    ))
}

/// A job as the API shows it.
fn view(job: &queue::JobRecord) -> Value {
    let mut v = json!({
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
    });
    if let Some(result) = &job.result {
        v["result"] = result.clone();
    }
    if let Some(error) = &job.error {
        v["error"] = Value::String(error.clone());
    }
    v
}

async fn status(
    State(state): State<DemoState>,
    ctx: TenantCtx,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let rid = &ctx.request_id;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found(rid));
    };
    let job = queue::get(state.pool(), &ctx.tenant_id, &id)
        .await
        .map_err(|e| ApiError::store(rid, e))?
        .ok_or_else(|| ApiError::not_found(rid))?;
    Ok(Json(view(&job)))
}

/// The tenant's job meter: `{tenant_id, kinds: {kind: {status: {jobs, attempts}}},
/// jobs, attempts}`.
async fn usage(State(state): State<DemoState>, ctx: TenantCtx) -> Result<Json<Value>, ApiError> {
    let rid = &ctx.request_id;
    let rows = queue::usage(state.pool(), &ctx.tenant_id)
        .await
        .map_err(|e| ApiError::store(rid, e))?;
    let mut kinds = Map::new();
    let (mut jobs, mut attempts) = (0i64, 0i64);
    for (kind, status, n, a) in rows {
        jobs += n;
        attempts += a;
        let entry = kinds
            .entry(kind)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[status.as_str()] = json!({"jobs": n, "attempts": a});
    }
    Ok(Json(json!({
        "tenant_id": ctx.tenant_id,
        "jobs": jobs,
        "attempts": attempts,
        "kinds": kinds,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn kind_is_required_and_known() {
        assert_eq!(
            parse_kind("r", &obj(json!({"kind": "export"}))).unwrap(),
            Kind::Export
        );
        assert_eq!(
            parse_kind("r", &obj(json!({"kind": "report"}))).unwrap(),
            Kind::Report
        );
        for bad in [
            json!({}),
            json!({"kind": null}),
            json!({"kind": "drop"}),
            json!({"kind": 1}),
            json!({"kind": "EXPORT"}),
        ] {
            let e = parse_kind("r", &obj(bad.clone())).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }

    #[test]
    fn params_are_checked() {
        let (p, _) = parse_params("r", &obj(json!({}))).unwrap();
        assert_eq!(p.max_attempts, DEFAULT_MAX_ATTEMPTS);
        let (p, stored) = parse_params(
            "r",
            &obj(json!({"params": {"fail_times": 2, "max_attempts": 5}})),
        )
        .unwrap();
        assert_eq!((p.fail_times, p.max_attempts), (2, 5));
        assert_eq!(stored, json!({"fail_times": 2, "max_attempts": 5}));
        for bad in [
            json!({"params": 1}),
            json!({"params": []}),
            json!({"params": {"schema": "public"}}),
            json!({"params": {"tenant_id": "other"}}),
            json!({"params": {"fail_times": -1}}),
            json!({"params": {"fail_times": "1"}}),
            json!({"params": {"max_attempts": 0}}),
            json!({"params": {"max_attempts": 11}}),
            json!({"params": {"sleep_ms": 1.5}}),
            json!({"params": {"limit": 100000}}),
        ] {
            let e = parse_params("r", &obj(bad.clone())).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
