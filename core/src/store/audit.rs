//! The audit log: one row per admin change (who, what, which target, request id).
//! It never holds a secret or a request body.

use super::{Result, Store};
use crate::time::now_ms;
use sqlx::Row;

/// An entry to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// `platform` or `user`.
    pub actor_kind: String,
    pub actor_id: String,
    pub tenant_id: Option<String>,
    /// e.g. `api_key.create`.
    pub action: String,
    /// The resource changed, e.g. `/v1/tenants/acme/api-keys/k1`.
    pub target: String,
    pub request_id: String,
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub tenant_id: Option<String>,
    pub action: String,
    pub target: String,
    pub request_id: String,
}

/// Filters of a listing; entries come newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub tenant_id: Option<String>,
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    /// Only entries with a smaller id (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: i64,
}

impl Store {
    pub async fn record_audit(&self, e: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_kind, actor_id, tenant_id, action, target, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(e.actor_kind.as_str())
        .bind(e.actor_id.as_str())
        .bind(e.tenant_id.as_deref())
        .bind(e.action.as_str())
        .bind(e.target.as_str())
        .bind(e.request_id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Entries matching `q`, newest first, at most `q.limit`.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut conds = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.tenant_id.is_some() {
            conds.push(format!("tenant_id = {}", next()));
        }
        if q.from_ms.is_some() {
            conds.push(format!("at >= {}", next()));
        }
        if q.to_ms.is_some() {
            conds.push(format!("at < {}", next()));
        }
        if q.before_id.is_some() {
            conds.push(format!("id < {}", next()));
        }
        let limit = next();
        let sql = format!(
            "SELECT id, at, actor_kind, actor_id, tenant_id, action, target, request_id FROM audit_log{} ORDER BY id DESC LIMIT {limit}",
            if conds.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conds.join(" AND "))
            }
        );
        let mut query = sqlx::query(&sql);
        if let Some(t) = &q.tenant_id {
            query = query.bind(t.as_str());
        }
        for v in [q.from_ms, q.to_ms, q.before_id].into_iter().flatten() {
            query = query.bind(v);
        }
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at")?,
                    actor_kind: r.try_get("actor_kind")?,
                    actor_id: r.try_get("actor_id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    request_id: r.try_get("request_id")?,
                })
            })
            .collect()
    }
}
