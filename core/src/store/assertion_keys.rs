//! Tenant-assertion signing keys (public JWK in the clear, private key sealed),
//! shared by every proxy of a fleet.

use super::{conflict_as, ChangeKind, Result, Store};
use crate::time::now_ms;
use sqlx::Row;

/// An assertion key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAssertionKey {
    pub kid: String,
    /// `ES256` or `EdDSA`.
    pub algorithm: String,
    pub public_jwk: String,
    pub private_sealed: String,
    pub created_at_ms: i64,
    /// Signing with it starts here; it is published from `created_at_ms`.
    pub active_from_ms: i64,
    pub retired_at_ms: Option<i64>,
}

impl Store {
    pub async fn insert_assertion_key(&self, k: &StoredAssertionKey) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO assertion_keys (kid, algorithm, public_jwk, private_sealed, created_at, active_from, retired_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&k.kid)
        .bind(&k.algorithm)
        .bind(&k.public_jwk)
        .bind(&k.private_sealed)
        .bind(k.created_at_ms)
        .bind(k.active_from_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("kid"))?;
        let change = Self::record_change(&mut tx, ChangeKind::AssertionKey, "", &k.kid).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// Retires a key: it leaves the JWKS and is never used again. False when it
    /// was unknown or already retired.
    pub async fn retire_assertion_key(&self, kid: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE assertion_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
        )
        .bind(now_ms())
        .bind(kid)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !done {
            return Ok(false);
        }
        let change = Self::record_change(&mut tx, ChangeKind::AssertionKey, "", kid).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(true)
    }

    /// Every assertion key not retired, newest activation first.
    pub async fn list_assertion_keys(&self) -> Result<Vec<StoredAssertionKey>> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, public_jwk, private_sealed, created_at, active_from, retired_at FROM assertion_keys WHERE retired_at IS NULL ORDER BY active_from DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAssertionKey {
                    kid: r.try_get("kid")?,
                    algorithm: r.try_get("algorithm")?,
                    public_jwk: r.try_get("public_jwk")?,
                    private_sealed: r.try_get("private_sealed")?,
                    created_at_ms: r.try_get("created_at")?,
                    active_from_ms: r.try_get("active_from")?,
                    retired_at_ms: r.try_get("retired_at")?,
                })
            })
            .collect()
    }
}
