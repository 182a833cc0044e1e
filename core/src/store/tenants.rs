//! Tenants: onboarding (default policies, the tier's limit, the first admin) in one
//! transaction, and the rest of their lifecycle.

use super::{conflict_as, ChangeKind, NewUser, Result, Store, StoreError};
use crate::domain::{default_policies, Tenant, TenantStatus, Tier};
use crate::time::{from_ms, now_ms};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A tenant to create with its onboarding pieces.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: String,
    pub name: String,
    pub tier: Tier,
    pub admin_user: Option<NewUser>,
}

#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub tier: Option<Tier>,
    pub status: Option<TenantStatus>,
    /// `Some(None)` clears the allow-list.
    pub allowed_cidrs: Option<Option<Vec<String>>>,
    /// `Some(None)` moves the tenant back to the routes' upstreams.
    pub upstream_pool: Option<Option<String>>,
}

impl Store {
    /// Creates a tenant with its default policies, the tier's rate limit and,
    /// optionally, its first admin user, in one transaction.
    pub async fn create_tenant(&self, t: &NewTenant) -> Result<Tenant> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenants (id, name, tier, status, created_at, updated_at) VALUES ($1, $2, $3, 'active', $4, $4)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.tier.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("id"))?;
        for p in default_policies() {
            let perms = serde_json::to_string(&p.permissions)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO rbac_policies (tenant_id, role, permissions, updated_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&t.id)
            .bind(&p.role)
            .bind(perms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(u) = &t.admin_user {
            Self::insert_user(&mut tx, &t.id, u, now).await?;
        }
        let change = Self::record_change(&mut tx, ChangeKind::Tenant, &t.id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(Tenant {
            id: t.id.clone(),
            name: t.name.clone(),
            tier: t.tier.clone(),
            status: TenantStatus::Active,
            created_at: from_ms(now),
            allowed_cidrs: None,
            upstream_pool: None,
        })
    }

    pub(super) fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
        let tier: String = row.try_get("tier")?;
        let status: String = row.try_get("status")?;
        Ok(Tenant {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            tier: tier
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("tier {tier:?}")))?,
            status: status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("status {status:?}")))?,
            created_at: from_ms(row.try_get("created_at")?),
            allowed_cidrs: match row.try_get::<Option<String>, _>("allowed_cidrs")? {
                Some(j) => {
                    Some(serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                }
                None => None,
            },
            upstream_pool: row.try_get("upstream_pool")?,
        })
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT id, name, tier, status, created_at, allowed_cidrs, upstream_pool FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::tenant_from_row).transpose()
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT id, name, tier, status, created_at, allowed_cidrs, upstream_pool FROM tenants ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::tenant_from_row).collect()
    }

    /// Applies a patch. A tenant following its plan follows the new tier's plan.
    pub async fn update_tenant(&self, id: &str, patch: &TenantPatch) -> Result<Tenant> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT id, name, tier, status, created_at, allowed_cidrs, upstream_pool FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut tenant = Self::tenant_from_row(&row)?;
        if let Some(n) = &patch.name {
            tenant.name = n.clone();
        }
        if let Some(t) = &patch.tier {
            tenant.tier = t.clone();
        }
        if let Some(c) = &patch.allowed_cidrs {
            tenant.allowed_cidrs = c.clone();
        }
        let cidrs = tenant
            .allowed_cidrs
            .as_ref()
            .map(|c| serde_json::to_string(c).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        if let Some(s) = patch.status {
            tenant.status = s;
        }
        if let Some(p) = &patch.upstream_pool {
            tenant.upstream_pool = p.clone();
        }
        sqlx::query(
            "UPDATE tenants SET name = $1, tier = $2, status = $3, updated_at = $4, allowed_cidrs = $5, \
             upstream_pool = $6 WHERE id = $7",
        )
        .bind(&tenant.name)
        .bind(tenant.tier.as_str())
        .bind(tenant.status.as_str())
        .bind(now)
        .bind(cidrs)
        .bind(tenant.upstream_pool.clone())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let change = Self::record_change(&mut tx, ChangeKind::Tenant, id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(tenant)
    }

    /// Deletes a tenant and everything it owns (usage rollups are kept).
    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let prefixes: Vec<String> = sqlx::query("SELECT prefix FROM api_keys WHERE tenant_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("prefix"))
            .collect::<std::result::Result<_, _>>()?;
        // Each user's change lets proxies drop that user's cached view at once.
        let user_ids: Vec<String> = sqlx::query("SELECT id FROM users WHERE tenant_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        for table in [
            "users",
            "api_keys",
            "rbac_policies",
            "rate_limit_configs",
            "tenant_quotas",
            "quota_usage",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let res = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut changes = vec![Self::record_change(&mut tx, ChangeKind::Tenant, id, "").await?];
        for p in prefixes {
            changes.push(Self::record_change(&mut tx, ChangeKind::ApiKey, id, &p).await?);
        }
        for u in user_ids {
            changes.push(Self::record_change(&mut tx, ChangeKind::User, id, &u).await?);
        }
        tx.commit().await?;
        self.publish(changes);
        Ok(())
    }
}
