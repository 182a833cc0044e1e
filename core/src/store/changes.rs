//! The change feed: every mutation a proxy caches appends a row in the same
//! transaction (and, on PostgreSQL, a `NOTIFY`), and is published on the
//! in-process bus once committed.

use super::{Result, Store};
use crate::time::now_ms;
use sqlx::Row;

/// PostgreSQL `LISTEN`/`NOTIFY` channel carrying change ids.
pub const CHANGE_CHANNEL: &str = "tenantgate_changes";

/// What changed; proxies invalidate exactly the affected cache entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A tenant was created, updated or deleted (subject: empty).
    Tenant,
    /// An API key was created, revoked or rotated (subject: the key's prefix).
    ApiKey,
    /// A role's policy was set (subject: the role).
    Policy,
    /// The tenant's own rate limit or quota was set or removed (subject: empty).
    RateLimit,
    /// A user was created, changed or deleted (subject: user id).
    User,
    /// Signing keys changed (tenant and subject: the kid).
    SigningKey,
    /// Tenant-assertion keys changed (tenant empty, subject: the kid).
    AssertionKey,
    /// An issuer was bound to the tenant or unbound (subject: the issuer's id).
    Issuer,
    /// A domain was given to the tenant or taken away (subject: the domain).
    Domain,
    /// A plan was created or changed (tenant empty, subject: the plan's name).
    Plan,
    /// A client certificate was registered or deleted (subject: its fingerprint).
    ClientCert,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Tenant => "tenant",
            ChangeKind::ApiKey => "api_key",
            ChangeKind::Policy => "policy",
            ChangeKind::RateLimit => "rate_limit",
            ChangeKind::User => "user",
            ChangeKind::SigningKey => "signing_key",
            ChangeKind::AssertionKey => "assertion_key",
            ChangeKind::Issuer => "issuer",
            ChangeKind::Domain => "domain",
            ChangeKind::Plan => "plan",
            ChangeKind::ClientCert => "client_cert",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tenant" => ChangeKind::Tenant,
            "api_key" => ChangeKind::ApiKey,
            "policy" => ChangeKind::Policy,
            "rate_limit" => ChangeKind::RateLimit,
            "user" => ChangeKind::User,
            "signing_key" => ChangeKind::SigningKey,
            "assertion_key" => ChangeKind::AssertionKey,
            "issuer" => ChangeKind::Issuer,
            "domain" => ChangeKind::Domain,
            "plan" => ChangeKind::Plan,
            "client_cert" => ChangeKind::ClientCert,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub kind: ChangeKind,
    pub tenant_id: String,
    pub subject: String,
    pub created_at_ms: i64,
}

impl Store {
    pub(super) async fn record_change(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        kind: ChangeKind,
        tenant_id: &str,
        subject: &str,
    ) -> Result<Change> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO changes (kind, tenant_id, subject, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(tenant_id)
        .bind(subject)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        if tx.backend_name() == "PostgreSQL" {
            // Wakes every proxy's LISTEN at commit; the id is an integer, so the
            // literal is safe (NOTIFY takes no bind parameters).
            sqlx::query(&format!("NOTIFY {CHANGE_CHANNEL}, '{id}'"))
                .execute(&mut **tx)
                .await?;
        }
        Ok(Change {
            id,
            kind,
            tenant_id: tenant_id.to_owned(),
            subject: subject.to_owned(),
            created_at_ms: now,
        })
    }

    pub(super) fn publish(&self, changes: Vec<Change>) {
        {
            let hooks = match self.hooks.read() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            for c in &changes {
                for hook in hooks.iter() {
                    hook(c);
                }
            }
        }
        for c in changes {
            // No receivers is fine: nobody in this process caches.
            let _ = self.bus.send(c);
        }
    }

    pub async fn latest_change_id(&self) -> Result<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) AS id FROM changes")
            .fetch_one(&self.pool)
            .await?;
        let id: i64 = row.try_get("id")?;
        // Past a pruned feed's end even when every row was pruned.
        Ok(id.max(self.changes_pruned_through().await?))
    }

    /// Changes with `id > after_id`, plus any recorded at or after `since_ms` (so a
    /// reader that dedupes by id also sees rows whose ids committed out of order).
    pub async fn changes_since(
        &self,
        after_id: i64,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT id, kind, tenant_id, subject, created_at FROM changes WHERE id > $1 OR created_at >= $2 ORDER BY id LIMIT $3",
        )
        .bind(after_id)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: String = r.try_get("kind")?;
            let Some(kind) = ChangeKind::parse(&kind) else {
                continue;
            };
            out.push(Change {
                id: r.try_get("id")?,
                kind,
                tenant_id: r.try_get("tenant_id")?,
                subject: r.try_get("subject")?,
                created_at_ms: r.try_get("created_at")?,
            });
        }
        Ok(out)
    }

    /// Keeps a PostgreSQL `LISTEN` on [`CHANGE_CHANNEL`] until `shutdown`,
    /// reconnecting with backoff, and pokes `tx` on every notification (and once
    /// after each (re)connect, to catch what happened while disconnected). Returns
    /// at once on SQLite, which has no notifications.
    pub async fn listen(
        &self,
        tx: tokio::sync::mpsc::Sender<()>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.backend != super::Backend::Postgres {
            return;
        }
        const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let listening = std::sync::atomic::AtomicBool::new(false);
            let attempt = async {
                let mut l = sqlx::postgres::PgListener::connect(&self.url).await?;
                l.listen(CHANGE_CHANNEL).await?;
                listening.store(true, std::sync::atomic::Ordering::Relaxed);
                // (Re)connected: read the feed once, for what was missed meanwhile.
                let _ = tx.try_send(());
                // `try_recv`, not `recv`: `recv` reconnects silently, and the
                // notifications sent while it was away would wait for the next poll.
                while l.try_recv().await?.is_some() {
                    let _ = tx.try_send(());
                }
                Err::<(), sqlx::Error>(sqlx::Error::Protocol(
                    "the LISTEN connection was closed".into(),
                ))
            };
            tokio::select! {
                res = attempt => {
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "change LISTEN lost; reconnecting");
                    }
                }
                _ = shutdown.changed() => return,
            }
            if listening.load(std::sync::atomic::Ordering::Relaxed) {
                // It was up: reconnect quickly; back off only while connects fail.
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
        }
    }
}
