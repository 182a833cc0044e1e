//! Client certificates registered as credentials. Every change appends a
//! `client_cert` change (subject: the fingerprint), so proxies forget a deleted
//! certificate within a second.

use super::{conflict_as, ChangeKind, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A registered client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub id: String,
    pub tenant_id: String,
    /// Lower-case hex SHA-256 of the certificate's DER bytes.
    pub fingerprint: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: i64,
}

const COLS: &str = "id, tenant_id, fingerprint, name, role, created_at";

fn from_row(row: &AnyRow) -> Result<ClientCert> {
    Ok(ClientCert {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        fingerprint: row.try_get("fingerprint")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

impl Store {
    /// Registers a certificate; `Conflict("fingerprint")` when it is registered
    /// already (to any tenant).
    pub async fn create_client_cert(&self, c: &ClientCert) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO client_certs (id, tenant_id, fingerprint, name, role, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.id)
        .bind(&c.tenant_id)
        .bind(&c.fingerprint)
        .bind(&c.name)
        .bind(&c.role)
        .bind(c.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_as("fingerprint"))?;
        let change = Self::record_change(
            &mut tx,
            ChangeKind::ClientCert,
            &c.tenant_id,
            &c.fingerprint,
        )
        .await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }

    /// A tenant's certificates, oldest first.
    pub async fn list_client_certs(&self, tenant_id: &str) -> Result<Vec<ClientCert>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM client_certs WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get_client_cert(&self, tenant_id: &str, id: &str) -> Result<Option<ClientCert>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM client_certs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The certificate with this fingerprint (what a proxy looks up).
    pub async fn client_cert_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<ClientCert>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM client_certs WHERE fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deletes a tenant's certificate; `NotFound` when the tenant has no such one.
    pub async fn delete_client_cert(&self, tenant_id: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM client_certs WHERE tenant_id = $1 AND id = $2 RETURNING fingerprint",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound);
        };
        let fingerprint: String = row.try_get("fingerprint")?;
        let change =
            Self::record_change(&mut tx, ChangeKind::ClientCert, tenant_id, &fingerprint).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
