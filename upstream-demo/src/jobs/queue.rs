//! The job queue's SQL: one `demo_jobs` table shared by all tenants (every read
//! through the API filters on `tenant_id`), claimed by workers with a lease.
//!
//! Claiming takes the oldest due job — queued with `run_at` passed, or running
//! with an expired lease (its worker died) — and marks it running under a fresh
//! lease token in one statement. On PostgreSQL the inner `SELECT … FOR UPDATE SKIP
//! LOCKED` lets many workers claim at once without waiting on each other; SQLite
//! has one writer, so the single `UPDATE … WHERE id = (SELECT …)` is atomic. Every
//! later write names the lease token, so a worker that lost its lease can no
//! longer change the job.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use tenantgate_core::store::Backend;
use tenantgate_core::StoreError;

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

const COLUMNS: &str = "id, tenant_id, user_id, request_id, kind, params, status, attempts, max_attempts, result, error";

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub request_id: String,
    pub kind: String,
    pub params: Value,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub result: Option<Value>,
    pub error: Option<String>,
}

fn json_column(row: &AnyRow, name: &str) -> Result<Option<Value>, StoreError> {
    let raw: Option<String> = row.try_get(name)?;
    raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{name}: {e}"))))
        .transpose()
}

fn from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        request_id: row.try_get("request_id")?,
        kind: row.try_get("kind")?,
        params: json_column(row, "params")?.unwrap_or(Value::Null),
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        result: json_column(row, "result")?,
        error: row.try_get("error")?,
    })
}

/// A job to queue, with the identity of the request that submitted it.
#[derive(Debug)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub user_id: Option<&'a str>,
    pub request_id: &'a str,
    pub kind: &'a str,
    pub params: &'a Value,
    pub max_attempts: i64,
}

pub async fn enqueue(pool: &AnyPool, job: &NewJob<'_>, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO demo_jobs (id, tenant_id, user_id, request_id, kind, params, status, attempts, max_attempts, run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9, $9)",
    )
    .bind(job.id)
    .bind(job.tenant_id)
    .bind(job.user_id.map(str::to_owned))
    .bind(job.request_id)
    .bind(job.kind)
    .bind(job.params.to_string())
    .bind(QUEUED)
    .bind(job.max_attempts)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// The tenant's job `id`; another tenant's is `None`, like a missing one.
pub async fn get(
    pool: &AnyPool,
    tenant_id: &str,
    id: &str,
) -> Result<Option<JobRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM demo_jobs WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Whether any job is due: a cheap read an idle worker polls with, so that it
/// only writes (claims) when there is work.
pub async fn any_due(pool: &AnyPool, now: i64) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT id FROM demo_jobs \
         WHERE (status = 'queued' AND run_at <= $1) OR (status = 'running' AND locked_until < $1) LIMIT 1) AS due",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// Claims the oldest due job for `token` until `now + lease_ms`; its attempt
/// count includes this attempt.
pub async fn claim(
    pool: &AnyPool,
    backend: Backend,
    token: &str,
    now: i64,
    lease_ms: i64,
) -> Result<Option<JobRecord>, StoreError> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let due =
        "((status = 'queued' AND run_at <= $3) OR (status = 'running' AND locked_until < $3))";
    let sql = format!(
        "UPDATE demo_jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, locked_until = $2, updated_at = $3 \
         WHERE id = (SELECT id FROM demo_jobs WHERE {due} ORDER BY run_at, created_at, id LIMIT 1{lock}) AND {due} \
         RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(token)
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Extends the lease; false when `token` no longer holds the job.
pub async fn extend(pool: &AnyPool, id: &str, token: &str, until: i64) -> Result<bool, StoreError> {
    let res = sqlx::query(
        "UPDATE demo_jobs SET locked_until = $1 WHERE id = $2 AND locked_by = $3 AND status = 'running'",
    )
    .bind(until)
    .bind(id)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(res.rows_affected() > 0)
}

/// Hands a running job back to the queue, due now, without counting the
/// interrupted attempt; false when `token` no longer holds it.
pub async fn release(pool: &AnyPool, id: &str, token: &str, now: i64) -> Result<bool, StoreError> {
    let res = sqlx::query(
        "UPDATE demo_jobs SET status = 'queued', attempts = attempts - 1, run_at = $1, locked_by = NULL, locked_until = NULL, updated_at = $1 \
         WHERE id = $2 AND locked_by = $3 AND status = 'running'",
    )
    .bind(now)
    .bind(id)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(res.rows_affected() > 0)
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome<'a> {
    Succeeded(&'a Value),
    /// Queued again, due at `run_at`.
    Retry {
        error: &'a str,
        run_at: i64,
    },
    /// Final; `attempts` as reported (at most `max_attempts`).
    Failed {
        error: &'a str,
        attempts: i64,
    },
}

/// Records `outcome` for the attempt `token` holds; false when it lost the lease.
pub async fn finish(
    pool: &AnyPool,
    id: &str,
    token: &str,
    outcome: &Outcome<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let q = match outcome {
        Outcome::Succeeded(result) => sqlx::query(
            "UPDATE demo_jobs SET status = $1, result = $2, error = NULL, locked_by = NULL, locked_until = NULL, updated_at = $3 \
             WHERE id = $4 AND locked_by = $5 AND status = 'running'",
        )
        .bind(SUCCEEDED)
        .bind(result.to_string())
        .bind(now),
        Outcome::Retry { error, run_at } => sqlx::query(
            "UPDATE demo_jobs SET status = $1, error = $2, run_at = $3, locked_by = NULL, locked_until = NULL, updated_at = $4 \
             WHERE id = $5 AND locked_by = $6 AND status = 'running'",
        )
        .bind(QUEUED)
        .bind(error.to_string())
        .bind(*run_at)
        .bind(now),
        Outcome::Failed { error, attempts } => sqlx::query(
            "UPDATE demo_jobs SET status = $1, error = $2, attempts = $3, locked_by = NULL, locked_until = NULL, updated_at = $4 \
             WHERE id = $5 AND locked_by = $6 AND status = 'running'",
        )
        .bind(FAILED)
        .bind(error.to_string())
        .bind(*attempts)
        .bind(now),
    };
    let res = q.bind(id).bind(token).execute(pool).await?;
    Ok(res.rows_affected() > 0)
}

/// The tenant's jobs per kind and status, with their attempts (the job meter).
pub async fn usage(
    pool: &AnyPool,
    tenant_id: &str,
) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT kind, status, COUNT(*) AS jobs, CAST(COALESCE(SUM(attempts), 0) AS BIGINT) AS attempts \
         FROM demo_jobs WHERE tenant_id = $1 GROUP BY kind, status ORDER BY kind, status",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("kind")?,
                r.try_get("status")?,
                r.try_get("jobs")?,
                r.try_get("attempts")?,
            ))
        })
        .collect()
}
