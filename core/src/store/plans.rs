//! Plans as data: the limits a tier names.

use super::{to_i64, to_u64, ChangeKind, Result, Store, StoreError};
use crate::domain::{Plan, Quota, RateLimit};
use crate::time::now_ms;
use sqlx::any::AnyRow;
use sqlx::Row;

const PLAN_COLS: &str =
    "name, max_requests, window_seconds, burst, quota_period, quota_max_requests";

impl Store {
    fn plan_from_row(row: &AnyRow) -> Result<Plan> {
        let burst: Option<i64> = row.try_get("burst")?;
        let period: Option<String> = row.try_get("quota_period")?;
        let qmax: Option<i64> = row.try_get("quota_max_requests")?;
        let quota = match (period, qmax) {
            (Some(p), Some(m)) => Some(Quota {
                period: p
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("quota period {p:?}")))?,
                max_requests: to_u64(m),
            }),
            _ => None,
        };
        Ok(Plan {
            name: row.try_get("name")?,
            rate_limit: RateLimit {
                max_requests: to_u64(row.try_get("max_requests")?),
                window_seconds: to_u64(row.try_get("window_seconds")?),
                burst: burst.map(to_u64),
            },
            quota,
        })
    }

    pub async fn list_plans(&self) -> Result<Vec<Plan>> {
        let rows = sqlx::query(&format!("SELECT {PLAN_COLS} FROM plans ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::plan_from_row).collect()
    }

    pub async fn get_plan(&self, name: &str) -> Result<Option<Plan>> {
        let row = sqlx::query(&format!("SELECT {PLAN_COLS} FROM plans WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::plan_from_row).transpose()
    }

    /// Creates or replaces a plan; every tenant following it follows the change.
    /// Returns whether it was created.
    pub async fn put_plan(&self, plan: &Plan) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let existed = sqlx::query("SELECT name FROM plans WHERE name = $1")
            .bind(&plan.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let rl = &plan.rate_limit;
        sqlx::query(
            "INSERT INTO plans (name, max_requests, window_seconds, burst, quota_period, quota_max_requests, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
             max_requests = excluded.max_requests, window_seconds = excluded.window_seconds, \
             burst = excluded.burst, quota_period = excluded.quota_period, \
             quota_max_requests = excluded.quota_max_requests, updated_at = excluded.updated_at",
        )
        .bind(&plan.name)
        .bind(to_i64(rl.max_requests))
        .bind(to_i64(rl.window_seconds))
        .bind(rl.burst.map(to_i64))
        .bind(plan.quota.map(|q| q.period.as_str()))
        .bind(plan.quota.map(|q| to_i64(q.max_requests)))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let change = Self::record_change(&mut tx, ChangeKind::Plan, "", &plan.name).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(!existed)
    }

    /// Deletes a plan no tenant names. `NotFound` if there is none;
    /// `Conflict("plan")` if a built-in plan or one still in use.
    pub async fn delete_plan(&self, name: &str) -> Result<()> {
        if crate::domain::BUILT_IN_PLANS.contains(&name) {
            return Err(StoreError::Conflict("plan"));
        }
        let mut tx = self.begin_write().await?;
        let used = sqlx::query("SELECT id FROM tenants WHERE tier = $1 LIMIT 1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if used {
            return Err(StoreError::Conflict("plan"));
        }
        let gone = sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound);
        }
        let change = Self::record_change(&mut tx, ChangeKind::Plan, "", name).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
