//! Users of a tenant.

use super::{conflict_as, ChangeKind, Result, Store};
use crate::domain::UserRecord;
use crate::time::{from_ms, now_ms};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
}

impl Store {
    pub(super) async fn insert_user(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant_id: &str,
        u: &NewUser,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&u.id)
        .bind(tenant_id)
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(&u.role)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(conflict_as("email"))?;
        Ok(())
    }

    pub async fn create_user(&self, tenant_id: &str, u: &NewUser) -> Result<UserRecord> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        Self::insert_user(&mut tx, tenant_id, u, now).await?;
        let change = Self::record_change(&mut tx, ChangeKind::User, tenant_id, &u.id).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(UserRecord {
            id: u.id.clone(),
            tenant_id: tenant_id.to_owned(),
            email: u.email.clone(),
            role: u.role.clone(),
            password_hash: u.password_hash.clone(),
            created_at: from_ms(now),
        })
    }

    pub(super) fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
        Ok(UserRecord {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            email: row.try_get("email")?,
            role: row.try_get("role")?,
            password_hash: row.try_get("password_hash")?,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }

    pub async fn find_user_by_email(
        &self,
        tenant_id: &str,
        email: &str,
    ) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, created_at FROM users WHERE tenant_id = $1 AND email = $2",
        )
        .bind(tenant_id)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::user_from_row).transpose()
    }

    pub async fn get_user(&self, tenant_id: &str, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, created_at FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::user_from_row).transpose()
    }

    pub async fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, created_at FROM users WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::user_from_row).collect()
    }
}
