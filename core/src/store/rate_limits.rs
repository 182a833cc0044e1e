//! A tenant's own rate limit and quota (set apart from its plan's).

use super::{to_i64, to_u64, ChangeKind, Result, Store};
use crate::domain::{OwnLimits, Quota, RateLimit};
use crate::time::now_ms;
use sqlx::any::AnyRow;
use sqlx::Row;

impl Store {
    pub(super) async fn upsert_rate_limit(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant_id: &str,
        rl: &RateLimit,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rate_limit_configs (tenant_id, max_requests, window_seconds, burst, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id) DO UPDATE SET max_requests = excluded.max_requests, \
             window_seconds = excluded.window_seconds, burst = excluded.burst, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(to_i64(rl.max_requests))
        .bind(to_i64(rl.window_seconds))
        .bind(rl.burst.map(to_i64))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub(super) fn rate_limit_from_row(row: &AnyRow) -> Result<RateLimit> {
        let burst: Option<i64> = row.try_get("burst")?;
        Ok(RateLimit {
            max_requests: to_u64(row.try_get("max_requests")?),
            window_seconds: to_u64(row.try_get("window_seconds")?),
            burst: burst.map(to_u64),
        })
    }

    pub async fn get_rate_limit(&self, tenant_id: &str) -> Result<Option<RateLimit>> {
        let row = sqlx::query("SELECT max_requests, window_seconds, burst FROM rate_limit_configs WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::rate_limit_from_row).transpose()
    }

    pub async fn put_rate_limit(&self, tenant_id: &str, rl: &RateLimit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::upsert_rate_limit(&mut tx, tenant_id, rl, now_ms()).await?;
        let change = Self::record_change(&mut tx, ChangeKind::RateLimit, tenant_id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// The tenant follows its plan's rate limit again. `false`: it had none.
    pub async fn delete_rate_limit(&self, tenant_id: &str) -> Result<bool> {
        self.delete_own(tenant_id, "rate_limit_configs").await
    }

    async fn delete_own(&self, tenant_id: &str, table: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        let change = Self::record_change(&mut tx, ChangeKind::RateLimit, tenant_id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(res.rows_affected() > 0)
    }

    pub async fn get_quota(&self, tenant_id: &str) -> Result<Option<Quota>> {
        let row =
            sqlx::query("SELECT period, max_requests FROM tenant_quotas WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(Self::quota_from_row).transpose()
    }

    fn quota_from_row(row: &AnyRow) -> Result<Quota> {
        let period: String = row.try_get("period")?;
        Ok(Quota {
            period: period
                .parse()
                .map_err(|_| super::StoreError::Corrupt(format!("quota period {period:?}")))?,
            max_requests: to_u64(row.try_get("max_requests")?),
        })
    }

    /// Sets the tenant's own quota (a changed quota reaches the proxies like a
    /// changed rate limit).
    pub async fn put_quota(&self, tenant_id: &str, q: &Quota) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenant_quotas (tenant_id, period, max_requests, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET period = excluded.period, \
             max_requests = excluded.max_requests, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(q.period.as_str())
        .bind(to_i64(q.max_requests))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let change = Self::record_change(&mut tx, ChangeKind::RateLimit, tenant_id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// The tenant follows its plan's quota again. `false`: it had none.
    pub async fn delete_quota(&self, tenant_id: &str) -> Result<bool> {
        self.delete_own(tenant_id, "tenant_quotas").await
    }

    /// The tenant's own rate limit and quota (what the proxy caches per tenant).
    pub async fn own_limits(&self, tenant_id: &str) -> Result<OwnLimits> {
        Ok(OwnLimits {
            rate_limit: self.get_rate_limit(tenant_id).await?,
            quota: self.get_quota(tenant_id).await?,
        })
    }

    /// Requests counted against the tenant's quota in the period starting at
    /// `period_start` (unix ms).
    pub async fn quota_used(&self, tenant_id: &str, period_start: i64) -> Result<u64> {
        let row =
            sqlx::query("SELECT used FROM quota_usage WHERE tenant_id = $1 AND period_start = $2")
                .bind(tenant_id)
                .bind(period_start)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => to_u64(r.try_get("used")?),
            None => 0,
        })
    }

    /// Adds `n` to the requests counted in a period; returns the new total.
    pub async fn add_quota_used(&self, tenant_id: &str, period_start: i64, n: u64) -> Result<u64> {
        let row = sqlx::query(
            "INSERT INTO quota_usage (tenant_id, period_start, used) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, period_start) DO UPDATE SET used = quota_usage.used + excluded.used \
             RETURNING used",
        )
        .bind(tenant_id)
        .bind(period_start)
        .bind(to_i64(n))
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(row.try_get("used")?))
    }
}
