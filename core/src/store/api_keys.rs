//! API key records (the digest, never the key).

use super::{conflict_as, to_i64, to_u64, ChangeKind, Result, Store, StoreError};
use crate::domain::{ApiKeyRecord, KeyExtras, RateLimit};
use crate::time::{from_ms, now_ms};
use sqlx::any::AnyRow;
use sqlx::Row;

impl Store {
    pub(super) fn key_from_row(row: &AnyRow) -> Result<ApiKeyRecord> {
        let exp: Option<i64> = row.try_get("expires_at")?;
        let rev: Option<i64> = row.try_get("revoked_at")?;
        Ok(ApiKeyRecord {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            prefix: row.try_get("prefix")?,
            digest: row.try_get("digest")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            created_at: from_ms(row.try_get("created_at")?),
            expires_at: exp.map(from_ms),
            revoked_at: rev.map(from_ms),
            extras: Self::extras_from_row(row)?,
        })
    }

    fn extras_from_row(row: &AnyRow) -> Result<KeyExtras> {
        let max: Option<i64> = row.try_get("rl_max_requests")?;
        let window: Option<i64> = row.try_get("rl_window_seconds")?;
        let burst: Option<i64> = row.try_get("rl_burst")?;
        let rate_limit = match (max, window) {
            (Some(m), Some(w)) => Some(RateLimit {
                max_requests: to_u64(m),
                window_seconds: to_u64(w),
                burst: burst.map(to_u64),
            }),
            _ => None,
        };
        let scopes: Option<String> = row.try_get("scopes")?;
        let cidrs: Option<String> = row.try_get("allowed_cidrs")?;
        Ok(KeyExtras {
            rate_limit,
            scopes: scopes.as_deref().map(from_json).transpose()?,
            allowed_cidrs: cidrs.as_deref().map(from_json).transpose()?,
        })
    }

    pub(super) const KEY_COLS: &'static str =
        "id, tenant_id, prefix, digest, name, role, created_at, expires_at, revoked_at, \
         rl_max_requests, rl_window_seconds, rl_burst, scopes, allowed_cidrs";

    pub(super) async fn insert_key(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        k: &ApiKeyRecord,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, prefix, digest, name, role, created_at, expires_at, revoked_at, \
             rl_max_requests, rl_window_seconds, rl_burst, scopes, allowed_cidrs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, $13)",
        )
        .bind(&k.id)
        .bind(&k.tenant_id)
        .bind(&k.prefix)
        .bind(&k.digest)
        .bind(&k.name)
        .bind(&k.role)
        .bind(k.created_at.timestamp_millis())
        .bind(k.expires_at.map(|t| t.timestamp_millis()))
        .bind(k.extras.rate_limit.map(|r| to_i64(r.max_requests)))
        .bind(k.extras.rate_limit.map(|r| to_i64(r.window_seconds)))
        .bind(k.extras.rate_limit.and_then(|r| r.burst).map(to_i64))
        .bind(k.extras.scopes.as_ref().map(to_json).transpose()?)
        .bind(k.extras.allowed_cidrs.as_ref().map(to_json).transpose()?)
        .execute(&mut **tx)
        .await
        .map_err(conflict_as("prefix"))?;
        Ok(())
    }

    pub async fn create_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::insert_key(&mut tx, k).await?;
        let change =
            Self::record_change(&mut tx, ChangeKind::ApiKey, &k.tenant_id, &k.prefix).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    pub async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
            Self::KEY_COLS
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::key_from_row).collect()
    }

    /// One key of a tenant, read with `exec` (the pool, or a transaction).
    pub(super) async fn fetch_key<'e, E>(
        exec: E,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query(&format!(
            "SELECT {} FROM api_keys WHERE tenant_id = $1 AND id = $2",
            Self::KEY_COLS
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(exec)
        .await?;
        row.as_ref().map(Self::key_from_row).transpose()
    }

    pub async fn get_api_key(&self, tenant_id: &str, id: &str) -> Result<Option<ApiKeyRecord>> {
        Self::fetch_key(&self.pool, tenant_id, id).await
    }

    /// The proxy's lookup: by public prefix, any tenant.
    pub async fn find_api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM api_keys WHERE prefix = $1",
            Self::KEY_COLS
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::key_from_row).transpose()
    }

    /// Revokes a key now. Revoking twice is fine; an unknown key is `NotFound`.
    pub async fn revoke_api_key(&self, tenant_id: &str, id: &str) -> Result<ApiKeyRecord> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut key = Self::fetch_key(&mut *tx, tenant_id, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if key.revoked_at.is_none() {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            key.revoked_at = Some(from_ms(now));
        }
        let change =
            Self::record_change(&mut tx, ChangeKind::ApiKey, tenant_id, &key.prefix).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(key)
    }

    /// Inserts `new` and makes the old key expire after `grace_seconds` (now when 0).
    pub async fn rotate_api_key(
        &self,
        tenant_id: &str,
        old_id: &str,
        new: &ApiKeyRecord,
        grace_seconds: u64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let old = Self::fetch_key(&mut *tx, tenant_id, old_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if !old.is_usable_at(from_ms(now)) {
            return Err(StoreError::NotFound);
        }
        Self::insert_key(&mut tx, new).await?;
        let grace_ms = i64::try_from(grace_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let until = now.saturating_add(grace_ms);
        let until = match old.expires_at {
            Some(e) => until.min(e.timestamp_millis()),
            None => until,
        };
        if grace_seconds == 0 {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
                .bind(now)
                .bind(old_id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
                .bind(until)
                .bind(old_id)
                .execute(&mut *tx)
                .await?;
        }
        let c1 = Self::record_change(&mut tx, ChangeKind::ApiKey, tenant_id, &old.prefix).await?;
        let c2 = Self::record_change(&mut tx, ChangeKind::ApiKey, tenant_id, &new.prefix).await?;
        tx.commit().await?;
        self.publish(vec![c1, c2]);
        Ok(())
    }

    /// Changes a key's extras (its own rate limit, scopes, allow-list) with `edit`
    /// and returns the stored key; an unknown key is `NotFound`.
    pub async fn update_api_key_extras(
        &self,
        tenant_id: &str,
        id: &str,
        edit: impl FnOnce(&mut KeyExtras),
    ) -> Result<ApiKeyRecord> {
        let mut tx = self.begin_write().await?;
        let mut key = Self::fetch_key(&mut *tx, tenant_id, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        edit(&mut key.extras);
        let e = &key.extras;
        sqlx::query(
            "UPDATE api_keys SET rl_max_requests = $1, rl_window_seconds = $2, rl_burst = $3, \
             scopes = $4, allowed_cidrs = $5 WHERE id = $6",
        )
        .bind(e.rate_limit.map(|r| to_i64(r.max_requests)))
        .bind(e.rate_limit.map(|r| to_i64(r.window_seconds)))
        .bind(e.rate_limit.and_then(|r| r.burst).map(to_i64))
        .bind(e.scopes.as_ref().map(to_json).transpose()?)
        .bind(e.allowed_cidrs.as_ref().map(to_json).transpose()?)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let change =
            Self::record_change(&mut tx, ChangeKind::ApiKey, tenant_id, &key.prefix).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(key)
    }

    /// The prefixes of every API key not revoked: the proxy's index of keys that
    /// may exist.
    pub async fn live_api_key_prefixes(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT prefix FROM api_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("prefix").map_err(StoreError::from))
            .collect()
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}
