//! Login-token signing keys (public JWK in the clear, private key sealed).

use super::{conflict_as, ChangeKind, Result, Store};
use crate::time::now_ms;
use sqlx::Row;

/// A signing key as stored: the public JWK in the clear, the private key sealed.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    pub kid: String,
    pub public_jwk: String,
    pub private_sealed: String,
    pub created_at_ms: i64,
    pub retired_at_ms: Option<i64>,
}

impl Store {
    pub async fn insert_signing_key(&self, k: &StoredSigningKey) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_jwk, private_sealed, created_at, retired_at) VALUES ($1, 'RS256', $2, $3, $4, NULL)",
        )
        .bind(&k.kid)
        .bind(&k.public_jwk)
        .bind(&k.private_sealed)
        .bind(k.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("kid"))?;
        let change = Self::record_change(&mut tx, ChangeKind::SigningKey, &k.kid, &k.kid).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    pub async fn retire_signing_key(&self, kid: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
        )
        .bind(now_ms())
        .bind(kid)
        .execute(&mut *tx)
        .await?;
        let change = Self::record_change(&mut tx, ChangeKind::SigningKey, kid, kid).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// All signing keys, newest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
        let rows = sqlx::query(
            "SELECT kid, public_jwk, private_sealed, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSigningKey {
                    kid: r.try_get("kid")?,
                    public_jwk: r.try_get("public_jwk")?,
                    private_sealed: r.try_get("private_sealed")?,
                    created_at_ms: r.try_get("created_at")?,
                    retired_at_ms: r.try_get("retired_at")?,
                })
            })
            .collect()
    }
}
