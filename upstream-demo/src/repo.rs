//! SQL for the demo's resources. Portable across SQLite and PostgreSQL through
//! sqlx's `Any` driver. Every function runs on a connection inside the tenant's
//! transaction ([`crate::tenancy::Tenancy::begin`]: on PostgreSQL the tenant's own
//! schema), and every statement is also scoped by `tenant_id`, so the SQLite
//! layout (one table for all tenants) needs no other code.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tenantgate_core::time::now_ms;
use tenantgate_core::StoreError;

const COLUMNS: &str = "id, name, data, owner_id";

/// A resource as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub id: String,
    pub name: String,
    pub data: Value,
    pub owner_id: Option<String>,
}

/// What an update changes; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub data: Option<Value>,
}

fn from_row(row: &AnyRow) -> Result<Resource, StoreError> {
    let data: String = row.try_get("data")?;
    // The column is always written from a serialized `Value`; a hand-edited row
    // that does not parse is shown as the raw string rather than failing.
    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
    Ok(Resource {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        data,
        owner_id: row.try_get("owner_id")?,
    })
}

/// Creation time in ms, strictly increasing within this process, so that listing
/// in creation order (`ORDER BY created_at, id`) is the order of the inserts even
/// when several land in the same millisecond (ties would fall back to the random id).
fn creation_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let prev = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
            Some(now.max(p.saturating_add(1)))
        })
        .unwrap_or(now);
    now.max(prev.saturating_add(1))
}

pub async fn insert(
    conn: &mut AnyConnection,
    tenant_id: &str,
    name: &str,
    data: &Value,
    owner_id: Option<&str>,
) -> Result<Resource, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let now = creation_ms();
    sqlx::query(
        "INSERT INTO demo_resources (id, tenant_id, name, data, owner_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(tenant_id)
    .bind(name)
    .bind(data.to_string())
    .bind(owner_id.map(str::to_owned))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(Resource {
        id,
        name: name.to_owned(),
        data: data.clone(),
        owner_id: owner_id.map(str::to_owned),
    })
}

pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Resource>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM demo_resources WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
    ))
    .bind(tenant_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Resource>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM demo_resources WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Applies `changes` in one statement; `None` when the tenant has no such row.
pub async fn update(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    changes: &Changes,
) -> Result<Option<Resource>, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE demo_resources SET name = COALESCE($1, name), data = COALESCE($2, data), updated_at = $3 \
         WHERE tenant_id = $4 AND id = $5 RETURNING {COLUMNS}"
    ))
    .bind(changes.name.clone())
    .bind(changes.data.as_ref().map(Value::to_string))
    .bind(now_ms())
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Whether a row of the tenant was deleted.
pub async fn delete(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM demo_resources WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(res.rows_affected() > 0)
}

/// How many rows the tenant has.
pub async fn count(conn: &mut AnyConnection, tenant_id: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM demo_resources WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(conn)
        .await?;
    Ok(row.try_get("n")?)
}

/// The tenant's rows per owner (`None`: rows created without a user).
pub async fn count_by_owner(
    conn: &mut AnyConnection,
    tenant_id: &str,
) -> Result<Vec<(Option<String>, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT owner_id, COUNT(*) AS n FROM demo_resources WHERE tenant_id = $1 GROUP BY owner_id ORDER BY owner_id",
    )
    .bind(tenant_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("owner_id")?, r.try_get("n")?)))
        .collect()
}

/// What a job wrote for its tenant: one row per job, replaced when a job that
/// was interrupted after writing runs again.
#[derive(Debug)]
pub struct JobOutput<'a> {
    pub job_id: &'a str,
    pub tenant_id: &'a str,
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub request_id: &'a str,
    pub output: &'a Value,
}

pub async fn save_output(conn: &mut AnyConnection, out: &JobOutput<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO demo_job_outputs (job_id, tenant_id, kind, user_id, request_id, output, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (job_id) DO UPDATE SET output = excluded.output, created_at = excluded.created_at",
    )
    .bind(out.job_id)
    .bind(out.tenant_id)
    .bind(out.kind)
    .bind(out.user_id.map(str::to_owned))
    .bind(out.request_id)
    .bind(out.output.to_string())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn creation_times_strictly_increase_within_a_millisecond() {
        let mut last = super::creation_ms();
        for _ in 0..1_000 {
            let t = super::creation_ms();
            assert!(t > last, "{t} after {last}");
            last = t;
        }
    }
}
