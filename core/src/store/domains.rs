//! Tenant domains: a request whose `Host` is one of them belongs to that tenant.
//! Every change appends a `domain` change (subject: the domain), so proxies update
//! their map within a second; a deleted tenant's domains go with it (cascade), and
//! proxies drop them on the tenant's own change.

use super::{conflict_as, ChangeKind, Result, Store, StoreError};
use sqlx::Row;

/// The most domains a proxy loads (all of them, kept in memory).
pub const MAX_DOMAINS: usize = 1_000_000;
/// The most domains one tenant may have.
pub const MAX_DOMAINS_PER_TENANT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDomain {
    pub domain: String,
    pub tenant_id: String,
    pub created_at_ms: i64,
}

impl Store {
    /// Gives `domain` (normalised already) to `tenant_id`. `Conflict("domain")`
    /// when any tenant has it; `Conflict("domains")` past [`MAX_DOMAINS_PER_TENANT`].
    pub async fn create_tenant_domain(&self, d: &TenantDomain) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM tenant_domains WHERE tenant_id = $1",
        )
        .bind(&d.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("n")?;
        if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_DOMAINS_PER_TENANT {
            return Err(StoreError::Conflict("domains"));
        }
        sqlx::query(
            "INSERT INTO tenant_domains (domain, tenant_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&d.domain)
        .bind(&d.tenant_id)
        .bind(d.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("domain"))?;
        let change =
            Self::record_change(&mut tx, ChangeKind::Domain, &d.tenant_id, &d.domain).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// A tenant's domains, by name.
    pub async fn list_tenant_domains(&self, tenant_id: &str) -> Result<Vec<TenantDomain>> {
        let rows = sqlx::query(
            "SELECT domain, tenant_id, created_at FROM tenant_domains WHERE tenant_id = $1 ORDER BY domain",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TenantDomain {
                    domain: r.try_get("domain")?,
                    tenant_id: r.try_get("tenant_id")?,
                    created_at_ms: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Every `(domain, tenant_id)` (at most [`MAX_DOMAINS`]): what a proxy loads.
    pub async fn all_tenant_domains(&self) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT domain, tenant_id FROM tenant_domains ORDER BY domain LIMIT $1")
                .bind(super::to_i64(MAX_DOMAINS as u64))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("domain")?, r.try_get("tenant_id")?)))
            .collect()
    }

    /// The tenant `domain` belongs to, if any.
    pub async fn tenant_of_domain(&self, domain: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT tenant_id FROM tenant_domains WHERE domain = $1")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("tenant_id")?),
            None => None,
        })
    }

    /// Removes a tenant's domain; `NotFound` when the tenant has no such domain.
    pub async fn delete_tenant_domain(&self, tenant_id: &str, domain: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("DELETE FROM tenant_domains WHERE tenant_id = $1 AND domain = $2")
            .bind(tenant_id)
            .bind(domain)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let change = Self::record_change(&mut tx, ChangeKind::Domain, tenant_id, domain).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
