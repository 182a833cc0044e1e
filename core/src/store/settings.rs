//! Small process-wide settings (e.g. the generated admin token's digest).

use super::{Result, Store};
use sqlx::Row;

impl Store {
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Sets a value only if the key is absent; returns whether it was set.
    pub async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }
}
