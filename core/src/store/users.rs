//! Users of a tenant.

use super::{conflict_as, ChangeKind, Result, Store, StoreError};
use crate::domain::{UserRecord, UserStatus};
use crate::time::{from_ms, now_ms};
use sqlx::any::AnyRow;
use sqlx::Row;

/// What a `PATCH` of a user changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub role: Option<String>,
    pub status: Option<UserStatus>,
    /// A new argon2id hash.
    pub password_hash: Option<String>,
}

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
            "INSERT INTO users (id, tenant_id, email, password_hash, role, status, token_version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7)",
        )
        .bind(&u.id)
        .bind(tenant_id)
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(&u.role)
        .bind(UserStatus::Active.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(conflict_as("email"))?;
        Ok(())
    }

    pub async fn create_user(&self, tenant_id: &str, u: &NewUser) -> Result<UserRecord> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
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
            status: UserStatus::Active,
            token_version: 0,
            created_at: from_ms(now),
        })
    }

    pub(super) fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
        let status: String = row.try_get("status")?;
        let status = status
            .parse()
            .map_err(|()| StoreError::Corrupt(format!("user status {status:?}")))?;
        Ok(UserRecord {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            email: row.try_get("email")?,
            role: row.try_get("role")?,
            password_hash: row.try_get("password_hash")?,
            status,
            token_version: row.try_get("token_version")?,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }

    pub async fn find_user_by_email(
        &self,
        tenant_id: &str,
        email: &str,
    ) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, status, token_version, created_at FROM users WHERE tenant_id = $1 AND email = $2",
        )
        .bind(tenant_id)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::user_from_row).transpose()
    }

    pub async fn get_user(&self, tenant_id: &str, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, status, token_version, created_at FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::user_from_row).transpose()
    }

    pub async fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, status, token_version, created_at FROM users WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::user_from_row).collect()
    }

    /// Applies `patch` and bumps the user's token version, so every login token
    /// issued before ends (the user logs in again). `NotFound` for an unknown user.
    pub async fn update_user(
        &self,
        tenant_id: &str,
        id: &str,
        patch: &UserPatch,
    ) -> Result<UserRecord> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE users SET role = COALESCE($1, role), status = COALESCE($2, status), password_hash = COALESCE($3, password_hash), token_version = token_version + 1, updated_at = $4 WHERE tenant_id = $5 AND id = $6",
        )
        .bind(patch.role.as_deref())
        .bind(patch.status.map(UserStatus::as_str))
        .bind(patch.password_hash.as_deref())
        .bind(now)
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(
            "SELECT id, tenant_id, email, role, password_hash, status, token_version, created_at FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let user = Self::user_from_row(&row)?;
        let change = Self::record_change(&mut tx, ChangeKind::User, tenant_id, id).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(user)
    }

    /// Deletes a user (its login tokens end with it). `NotFound` for an unknown user.
    pub async fn delete_user(&self, tenant_id: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let change = Self::record_change(&mut tx, ChangeKind::User, tenant_id, id).await?;
        tx.commit().await?;
        self.publish(vec![change]);
        Ok(())
    }
}
