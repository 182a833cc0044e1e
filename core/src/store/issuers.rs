//! Issuers bound to a tenant. Every change appends an `issuer` change (subject: the
//! issuer's id), so proxies reload their bound issuers within a second.

use super::{conflict_as, ChangeKind, Result, Store, StoreError};
use crate::issuers::{TenantIssuer, MAX_BOUND_ISSUERS};
use sqlx::any::AnyRow;
use sqlx::Row;

const COLS: &str = "id, tenant_id, issuer, jwks_url, audiences, algorithms, tenant_claim, \
                    role_claim, default_role, max_lifetime_seconds, created_at";

fn string_list(row: &AnyRow, col: &str) -> Result<Vec<String>> {
    let raw: String = row.try_get(col)?;
    serde_json::from_str(&raw)
        .map_err(|e| StoreError::Corrupt(format!("tenant_issuers.{col}: {e}")))
}

fn issuer_from_row(row: &AnyRow) -> Result<TenantIssuer> {
    let max: Option<i64> = row.try_get("max_lifetime_seconds")?;
    Ok(TenantIssuer {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        issuer: row.try_get("issuer")?,
        jwks_url: row.try_get("jwks_url")?,
        audiences: string_list(row, "audiences")?,
        algorithms: string_list(row, "algorithms")?,
        tenant_claim: row.try_get("tenant_claim")?,
        role_claim: row.try_get("role_claim")?,
        default_role: row.try_get("default_role")?,
        max_lifetime_seconds: max.and_then(|m| u64::try_from(m).ok()),
        created_at_ms: row.try_get("created_at")?,
    })
}

fn json_list(v: &[String]) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Binds `i.issuer` to `i.tenant_id`. `Conflict("issuer")` when that issuer is
    /// bound already (to any tenant); `Conflict("issuers")` when the tenant already
    /// has `max_per_tenant`.
    pub async fn create_tenant_issuer(
        &self,
        i: &TenantIssuer,
        max_per_tenant: usize,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM tenant_issuers WHERE tenant_id = $1",
        )
        .bind(&i.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("n")?;
        if usize::try_from(n).unwrap_or(usize::MAX) >= max_per_tenant {
            return Err(StoreError::Conflict("issuers"));
        }
        sqlx::query(
            "INSERT INTO tenant_issuers (id, tenant_id, issuer, jwks_url, audiences, algorithms, \
             tenant_claim, role_claim, default_role, max_lifetime_seconds, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&i.id)
        .bind(&i.tenant_id)
        .bind(&i.issuer)
        .bind(&i.jwks_url)
        .bind(json_list(&i.audiences)?)
        .bind(json_list(&i.algorithms)?)
        .bind(&i.tenant_claim)
        .bind(&i.role_claim)
        .bind(i.default_role.as_deref())
        .bind(i.max_lifetime_seconds.map(super::to_i64))
        .bind(i.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("issuer"))?;
        let change = Self::record_change(&mut tx, ChangeKind::Issuer, &i.tenant_id, &i.id).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// A tenant's bound issuers, oldest first.
    pub async fn list_tenant_issuers(&self, tenant_id: &str) -> Result<Vec<TenantIssuer>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM tenant_issuers WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(issuer_from_row).collect()
    }

    /// Every bound issuer (at most [`MAX_BOUND_ISSUERS`], oldest first): what a
    /// proxy loads.
    pub async fn all_tenant_issuers(&self) -> Result<Vec<TenantIssuer>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM tenant_issuers ORDER BY created_at, id LIMIT $1"
        ))
        .bind(super::to_i64(MAX_BOUND_ISSUERS as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(issuer_from_row).collect()
    }

    /// Unbinds an issuer of a tenant; `NotFound` when the tenant has no such issuer.
    pub async fn delete_tenant_issuer(&self, tenant_id: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("DELETE FROM tenant_issuers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let change = Self::record_change(&mut tx, ChangeKind::Issuer, tenant_id, id).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
