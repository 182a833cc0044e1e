//! The demo's own versioned migrations. Two sets, each recorded in a
//! `demo_migrations (scope, version, applied_at)` table of the schema it applies to:
//!
//! * [`SHARED`] once per database (PostgreSQL `public`, the SQLite file): the job
//!   queue, which every tenant's jobs share (scoped by a `tenant_id` column).
//! * [`TENANT`] into every tenant schema on PostgreSQL (`tenant_<id>`), and once
//!   into the SQLite file, where each table is scoped by a `tenant_id` column.
//!
//! A migration's statements and its version row commit in one transaction, so a
//! schema is always at exactly one version. Append new versions; never edit an
//! applied one.

use sqlx::{AnyConnection, Row};
use tenantgate_core::time::now_ms;

/// One step of a set: its statements run in order, in the set's transaction.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// Which set a version row belongs to (both sets share SQLite's one table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Shared,
    Tenant,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Shared => "shared",
            Scope::Tenant => "tenant",
        }
    }

    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Scope::Shared => SHARED,
            Scope::Tenant => TENANT,
        }
    }

    /// The newest version of the set.
    pub fn latest(self) -> i64 {
        self.migrations().last().map_or(0, |m| m.version)
    }
}

pub const SHARED: &[Migration] = &[Migration {
    version: 1,
    name: "job queue",
    statements: &[
        "CREATE TABLE IF NOT EXISTS demo_jobs (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, user_id TEXT, request_id TEXT NOT NULL, kind TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL, attempts BIGINT NOT NULL, max_attempts BIGINT NOT NULL, run_at BIGINT NOT NULL, locked_by TEXT, locked_until BIGINT, result TEXT, error TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS demo_jobs_due_idx ON demo_jobs (status, run_at)",
        "CREATE INDEX IF NOT EXISTS demo_jobs_tenant_idx ON demo_jobs (tenant_id, created_at)",
    ],
}];

pub const TENANT: &[Migration] = &[
    Migration {
        version: 1,
        name: "resources",
        statements: &[
            "CREATE TABLE IF NOT EXISTS demo_resources (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, owner_id TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS demo_resources_tenant_idx ON demo_resources (tenant_id, created_at)",
        ],
    },
    Migration {
        version: 2,
        name: "job outputs",
        statements: &[
            "CREATE TABLE IF NOT EXISTS demo_job_outputs (job_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, kind TEXT NOT NULL, user_id TEXT, request_id TEXT NOT NULL, output TEXT NOT NULL, created_at BIGINT NOT NULL)",
        ],
    },
];

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS demo_migrations (scope TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, applied_at BIGINT NOT NULL, PRIMARY KEY (scope, version))";

/// The version of `scope` recorded in the current schema (0: none).
pub async fn current_version(conn: &mut AnyConnection, scope: Scope) -> Result<i64, sqlx::Error> {
    let row =
        sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM demo_migrations WHERE scope = $1")
            .bind(scope.as_str())
            .fetch_one(&mut *conn)
            .await?;
    row.try_get("v")
}

/// Applies the versions of `scope` newer than the recorded one, on `conn` (which
/// is inside the caller's transaction, on the schema to migrate). Returns the
/// versions applied.
pub async fn apply(conn: &mut AnyConnection, scope: Scope) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query(VERSION_TABLE).execute(&mut *conn).await?;
    let current = current_version(conn, scope).await?;
    let mut applied = Vec::new();
    for m in scope.migrations().iter().filter(|m| m.version > current) {
        for stmt in m.statements {
            sqlx::query(stmt).execute(&mut *conn).await?;
        }
        sqlx::query(
            "INSERT INTO demo_migrations (scope, version, name, applied_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(scope.as_str())
        .bind(m.version)
        .bind(m.name)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_from_one() {
        for scope in [Scope::Shared, Scope::Tenant] {
            let versions: Vec<i64> = scope.migrations().iter().map(|m| m.version).collect();
            let expected: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(versions, expected, "{scope:?}");
            assert_eq!(scope.latest(), versions.len() as i64);
        }
    }
}
