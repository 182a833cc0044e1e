//! API key records (the digest, never the key).

use super::{conflict_as, ChangeKind, Result, Store, StoreError};
use crate::domain::ApiKeyRecord;
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
        })
    }

    pub(super) const KEY_COLS: &'static str =
        "id, tenant_id, prefix, digest, name, role, created_at, expires_at, revoked_at";

    pub(super) async fn insert_key(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        k: &ApiKeyRecord,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, prefix, digest, name, role, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
        )
        .bind(&k.id)
        .bind(&k.tenant_id)
        .bind(&k.prefix)
        .bind(&k.digest)
        .bind(&k.name)
        .bind(&k.role)
        .bind(k.created_at.timestamp_millis())
        .bind(k.expires_at.map(|t| t.timestamp_millis()))
        .execute(&mut **tx)
        .await
        .map_err(conflict_as("prefix"))?;
        Ok(())
    }

    pub async fn create_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
