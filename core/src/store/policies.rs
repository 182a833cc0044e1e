//! RBAC policies per (tenant, role).

use super::{ChangeKind, Result, Store, StoreError};
use crate::domain::{Permission, Policy};
use crate::time::now_ms;
use sqlx::any::AnyRow;
use sqlx::Row;

impl Store {
    pub async fn get_policy(&self, tenant_id: &str, role: &str) -> Result<Option<Policy>> {
        let row = sqlx::query(
            "SELECT role, permissions FROM rbac_policies WHERE tenant_id = $1 AND role = $2",
        )
        .bind(tenant_id)
        .bind(role)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::policy_from_row).transpose()
    }

    pub(super) fn policy_from_row(row: &AnyRow) -> Result<Policy> {
        let perms: String = row.try_get("permissions")?;
        let permissions: Vec<Permission> =
            serde_json::from_str(&perms).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Policy {
            role: row.try_get("role")?,
            permissions,
        })
    }

    pub async fn list_policies(&self, tenant_id: &str) -> Result<Vec<Policy>> {
        let rows = sqlx::query(
            "SELECT role, permissions FROM rbac_policies WHERE tenant_id = $1 ORDER BY role",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::policy_from_row).collect()
    }

    pub async fn put_policy(&self, tenant_id: &str, policy: &Policy) -> Result<()> {
        let perms = serde_json::to_string(&policy.permissions)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO rbac_policies (tenant_id, role, permissions, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, role) DO UPDATE SET permissions = excluded.permissions, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(&policy.role)
        .bind(perms)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let change =
            Self::record_change(&mut tx, ChangeKind::Policy, tenant_id, &policy.role).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
