//! SQL for the demo's one table. Portable across SQLite and PostgreSQL through
//! sqlx's `Any` driver; every statement is scoped by `tenant_id`.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use std::time::Duration;
use tenantgate_core::time::now_ms;
use tenantgate_core::StoreError;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS demo_resources (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, owner_id TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS demo_resources_tenant_idx ON demo_resources (tenant_id, created_at)",
];

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

/// Creates the table and its index. Retries a few times because concurrent
/// `CREATE TABLE IF NOT EXISTS` on PostgreSQL (a fleet starting at once) can
/// still fail with a unique violation in the catalog.
pub async fn create_schema(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match create_schema_once(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying demo schema creation");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn create_schema_once(pool: &AnyPool) -> Result<(), sqlx::Error> {
    for stmt in SCHEMA {
        sqlx::query(stmt).execute(pool).await?;
    }
    Ok(())
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
    pool: &AnyPool,
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
    .execute(pool)
    .await?;
    Ok(Resource {
        id,
        name: name.to_owned(),
        data: data.clone(),
        owner_id: owner_id.map(str::to_owned),
    })
}

pub async fn list(
    pool: &AnyPool,
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
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(
    pool: &AnyPool,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Resource>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM demo_resources WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Applies `changes` in one statement; `None` when the tenant has no such row.
pub async fn update(
    pool: &AnyPool,
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
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Whether a row of the tenant was deleted.
pub async fn delete(pool: &AnyPool, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM demo_resources WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(res.rows_affected() > 0)
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
