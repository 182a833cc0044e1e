//! A tenant's own rate limit.

use super::{to_i64, to_u64, ChangeKind, Result, Store};
use crate::domain::RateLimit;
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

    pub(super) async fn rate_limit_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant_id: &str,
    ) -> Result<Option<RateLimit>> {
        let row = sqlx::query("SELECT max_requests, window_seconds, burst FROM rate_limit_configs WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(Self::rate_limit_from_row).transpose()
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
        let mut tx = self.pool.begin().await?;
        Self::upsert_rate_limit(&mut tx, tenant_id, rl, now_ms()).await?;
        let change = Self::record_change(&mut tx, ChangeKind::RateLimit, tenant_id, "").await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
