//! The schema-per-tenant router: every tenant-scoped query runs inside a
//! transaction that [`Tenancy::begin`] opens for the tenant of the request.
//!
//! On PostgreSQL each tenant's tables live in its own schema, `tenant_<id>` (`-` as
//! `_`), created and migrated on first use. The transaction starts with
//! `set_config('search_path', '"tenant_<id>", pg_temp', true)`, i.e. `SET LOCAL`:
//! the setting ends with the transaction (commit, rollback, or the rollback sqlx
//! runs before a dropped transaction's connection is reused), so a pooled
//! connection never carries one tenant's `search_path` into another request. The
//! path names only the tenant's schema: an unqualified table resolves there or
//! nowhere (`public` is not on it).
//!
//! The schema name comes only from the tenant id the proxy vouched for (the
//! trusted `x-tenant-id`, checked against the signed assertion when the demo
//! requires one), is validated against the tenant id rule, and is quoted as an
//! identifier; it is passed to `set_config` as a bound parameter. `CREATE SCHEMA`
//! (DDL takes no parameters) is the one statement the validated, quoted name is
//! formatted into.
//!
//! On SQLite there is one set of tables, scoped by a `tenant_id` column; `begin`
//! is a plain transaction.

use crate::migrations::{self, Scope};
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use std::collections::HashSet;
use std::sync::RwLock;
use tenantgate_core::domain::valid_tenant_id;
use tenantgate_core::store::Backend;
use tenantgate_core::StoreError;

/// Prefix of every tenant schema.
pub const SCHEMA_PREFIX: &str = "tenant_";
/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1); two long
/// tenant ids must never truncate to one schema.
const MAX_IDENTIFIER: usize = 63;
/// Long ids: `tenant__` + this many characters of the id + `_` + hash.
const LONG_KEEP: usize = 30;
const LONG_HASH_HEX: usize = 24;
/// First key of the advisory locks that serialise migrations ("tgdm").
const LOCK_CLASS: i32 = 0x7467_646d;

/// The PostgreSQL schema of `tenant_id`, or `None` when the id is not a valid
/// tenant id (`[a-z0-9][a-z0-9-]{1,62}`, the admin API's rule).
///
/// Ids of up to 56 characters map to `tenant_<id>` with `-` as `_` (one-to-one,
/// since ids have no `_`). Longer ones would pass PostgreSQL's 63-byte limit, so
/// they map to `tenant__<first 30>_<24 hex of sha256(id)>`: the double underscore
/// cannot start a short name (ids start with a letter or digit).
pub fn schema_name(tenant_id: &str) -> Option<String> {
    if !valid_tenant_id(tenant_id) {
        return None;
    }
    let mapped: String = tenant_id
        .chars()
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    if SCHEMA_PREFIX.len() + mapped.len() <= MAX_IDENTIFIER {
        return Some(format!("{SCHEMA_PREFIX}{mapped}"));
    }
    let hash = tenantgate_core::secrets::sha256_hex(tenant_id.as_bytes());
    let keep = mapped.get(..LONG_KEEP)?;
    let hash = hash.get(..LONG_HASH_HEX)?;
    Some(format!("{SCHEMA_PREFIX}_{keep}_{hash}"))
}

/// `name` as a quoted SQL identifier (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A schema name this module could have made (checked again before quoting
/// names read back from the catalog).
fn plausible_schema(name: &str) -> bool {
    name.len() <= MAX_IDENTIFIER
        && name.starts_with(SCHEMA_PREFIX)
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The tenant id cannot name a schema (PostgreSQL only).
    #[error("the tenant id cannot name a tenant schema")]
    BadTenant,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TenancyError {
    fn from(e: sqlx::Error) -> Self {
        TenancyError::Store(e.into())
    }
}

/// The router: the pool, the backend, and the schemas known to be migrated.
#[derive(Debug)]
pub struct Tenancy {
    pool: AnyPool,
    backend: Backend,
    ready: RwLock<HashSet<String>>,
}

impl Tenancy {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Tenancy {
            pool,
            backend,
            ready: RwLock::new(HashSet::new()),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether `tenant_id` can have rows here (on PostgreSQL: names a schema).
    pub fn accepts(&self, tenant_id: &str) -> bool {
        self.backend == Backend::Sqlite || schema_name(tenant_id).is_some()
    }

    /// The schema of `tenant_id`'s rows (PostgreSQL), `None` on SQLite.
    pub fn schema_of(&self, tenant_id: &str) -> Option<String> {
        match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => schema_name(tenant_id),
        }
    }

    /// A transaction on `tenant_id`'s rows: on PostgreSQL scoped to its schema
    /// (created and migrated first if this process has not seen it yet).
    pub async fn begin(&self, tenant_id: &str) -> Result<Transaction<'static, Any>, TenancyError> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin().await?),
            Backend::Postgres => {
                let schema = schema_name(tenant_id).ok_or(TenancyError::BadTenant)?;
                if !self.is_ready(&schema) {
                    self.migrate_schema(&schema).await?;
                    self.mark_ready(&schema);
                }
                let mut tx = self.pool.begin().await?;
                if scope_to(&mut tx, &schema).await? {
                    return Ok(tx);
                }
                // Dropped since this process migrated it: create it again.
                tx.rollback().await?;
                self.forget_schema(&schema);
                tracing::warn!(schema = %schema, "tenant schema was missing; creating it again");
                self.migrate_schema(&schema).await?;
                self.mark_ready(&schema);
                let mut tx = self.pool.begin().await?;
                scope_to(&mut tx, &schema).await?;
                Ok(tx)
            }
        }
    }

    fn is_ready(&self, schema: &str) -> bool {
        match self.ready.read() {
            Ok(r) => r.contains(schema),
            Err(p) => p.into_inner().contains(schema),
        }
    }

    fn mark_ready(&self, schema: &str) {
        match self.ready.write() {
            Ok(mut r) => r.insert(schema.to_owned()),
            Err(p) => p.into_inner().insert(schema.to_owned()),
        };
    }

    fn forget_schema(&self, schema: &str) {
        match self.ready.write() {
            Ok(mut r) => r.remove(schema),
            Err(p) => p.into_inner().remove(schema),
        };
    }

    /// At start: the shared set, then every tenant schema that exists (PostgreSQL)
    /// or the tenant set of the one database (SQLite). Returns how many tenant
    /// schemas were brought up to date.
    pub async fn migrate_at_start(&self) -> Result<usize, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut tx = self.pool.begin().await?;
                migrations::apply(&mut tx, Scope::Shared).await?;
                migrations::apply(&mut tx, Scope::Tenant).await?;
                tx.commit().await?;
                Ok(0)
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                lock(&mut tx, "public").await?;
                migrations::apply(&mut tx, Scope::Shared).await?;
                tx.commit().await?;
                let schemas = self.tenant_schemas().await?;
                for schema in &schemas {
                    let applied = self.migrate_schema(schema).await?;
                    if !applied.is_empty() {
                        tracing::info!(schema = %schema, versions = ?applied, "tenant schema migrated");
                    }
                    self.mark_ready(schema);
                }
                Ok(schemas.len())
            }
        }
    }

    /// The tenant schemas of the database (those holding a `demo_migrations` table).
    pub async fn tenant_schemas(&self) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT n.nspname::text AS name FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid \
             WHERE c.relname = 'demo_migrations' AND c.relkind = 'r' AND left(n.nspname::text, 7) = $1 ORDER BY 1",
        )
        .bind(SCHEMA_PREFIX)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name")?;
            if plausible_schema(&name) {
                out.push(name);
            } else {
                tracing::warn!(schema = %name, "skipping a schema that is not a tenant schema name");
            }
        }
        Ok(out)
    }

    /// Creates `schema` if needed and applies the tenant set to it, in one
    /// transaction under an advisory lock on the schema's name (processes of a
    /// fleet starting together, or two first requests of a tenant, take turns).
    pub async fn migrate_schema(&self, schema: &str) -> Result<Vec<i64>, sqlx::Error> {
        if !plausible_schema(schema) {
            return Err(sqlx::Error::Protocol(format!(
                "refusing to migrate {schema:?}: not a tenant schema name"
            )));
        }
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, schema).await?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
        sqlx::query(&create).execute(&mut *tx).await?;
        scope_to(&mut tx, schema).await?;
        let applied = migrations::apply(&mut tx, Scope::Tenant).await?;
        tx.commit().await?;
        if !applied.is_empty() {
            tracing::debug!(schema, versions = ?applied, "tenant schema migrations applied");
        }
        Ok(applied)
    }
}

/// `SET LOCAL search_path` to the tenant's schema alone (then `pg_temp`, so a
/// temporary table can never shadow a tenant table), the value bound as a
/// parameter. In the same round trip: whether the schema exists (false: it was
/// dropped since this process migrated it).
async fn scope_to(conn: &mut AnyConnection, schema: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT set_config('search_path', $1, true) AS search_path, \
         EXISTS (SELECT 1 FROM pg_namespace WHERE nspname::text = $2) AS present",
    )
    .bind(format!("{}, pg_temp", quote_ident(schema)))
    .bind(schema)
    .fetch_one(conn)
    .await?;
    row.try_get("present")
}

/// A transaction-scoped advisory lock keyed by `name`.
async fn lock(conn: &mut AnyConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1, hashtext($2))) AS l")
        .bind(LOCK_CLASS)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_map_one_to_one() {
        assert_eq!(schema_name("acme").as_deref(), Some("tenant_acme"));
        assert_eq!(
            schema_name("acme-eu-1").as_deref(),
            Some("tenant_acme_eu_1")
        );
        let longest_plain = "a".repeat(MAX_IDENTIFIER - SCHEMA_PREFIX.len());
        assert_eq!(
            schema_name(&longest_plain),
            Some(format!("tenant_{longest_plain}"))
        );
    }

    #[test]
    fn long_ids_get_a_hashed_name_within_the_limit() {
        let a = format!("{}-x", "a".repeat(60));
        let b = format!("{}-y", "a".repeat(60));
        let (sa, sb) = (schema_name(&a).unwrap(), schema_name(&b).unwrap());
        assert_ne!(sa, sb, "ids sharing a long prefix must not share a schema");
        for s in [&sa, &sb] {
            assert!(s.len() <= MAX_IDENTIFIER, "{s}");
            assert!(s.starts_with("tenant__"), "{s}");
            assert!(plausible_schema(s));
        }
        // A short id can never produce the long form's double underscore.
        assert!(!schema_name("a-b").unwrap().starts_with("tenant__"));
    }

    #[test]
    fn anything_but_a_tenant_id_is_refused() {
        for bad in [
            "",
            "a",
            "Acme",
            "acme_corp",
            "-acme",
            "acme;drop schema public",
            "acme\"",
            "acme\" cascade; --",
            "a b",
            "public",
            "tenant_acme",
            "../etc",
            "ácme",
            &"a".repeat(64),
        ] {
            if bad == "public" {
                // A valid id; it maps into the prefix like any other.
                assert_eq!(schema_name(bad).as_deref(), Some("tenant_public"));
                continue;
            }
            assert_eq!(schema_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("tenant_a"), "\"tenant_a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(!plausible_schema("tenant_a\"; drop"));
        assert!(!plausible_schema("public"));
    }
}
