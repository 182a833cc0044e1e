//! The control-plane store: one interface over SQLite (embedded default) and
//! PostgreSQL (fleets), using sqlx's `Any` driver so every query is written once.
//!
//! Every mutation that a proxy caches also appends to the `changes` feed in the same
//! transaction, and is published on an in-process bus once committed.

mod api_keys;
mod assertion_keys;
mod audit;
mod changes;
mod client_certs;
mod domains;
mod issuers;
mod lifecycle;
mod plans;
mod policies;
mod rate_limits;
mod scaling;
mod settings;
mod signing_keys;
mod tenants;
#[cfg(test)]
mod tests;
mod usage;
mod users;

pub use assertion_keys::StoredAssertionKey;
pub use audit::{AuditEntry, AuditQuery, NewAuditEntry};
pub use changes::{Change, ChangeKind, CHANGE_CHANNEL};
pub use client_certs::ClientCert;
pub use domains::{TenantDomain, MAX_DOMAINS, MAX_DOMAINS_PER_TENANT};
pub use lifecycle::{LifecycleReport, StepReport, JOB_LOCK as LIFECYCLE_JOB_LOCK};
pub use scaling::{RouteOutcome, RouteSignalRow, ScalingEvent, SCALING_LOCK, SIGNALS_KEEP_MS};
pub use signing_keys::StoredSigningKey;
pub use tenants::{NewTenant, TenantPatch};
pub use usage::RollupMarks;
pub use users::{NewUser, UserPatch};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;
use tokio::sync::broadcast;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint; the payload names the field.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The database cannot be reached or failed; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Data in the store that does not parse.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Maps a unique violation to `Conflict(field)`, anything else as usual.
fn conflict_as(field: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(field),
        _ => StoreError::from(e),
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Called synchronously with each change this process commits, before the
/// mutation returns: an in-process index can never be behind its own process's
/// writes (the bus is asynchronous).
pub type ChangeHook = std::sync::Arc<dyn Fn(&Change) + Send + Sync>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    bus: broadcast::Sender<Change>,
    hooks: std::sync::Arc<std::sync::RwLock<Vec<ChangeHook>>>,
    /// The connection URL (PostgreSQL's `LISTEN` needs a connection of its own).
    url: std::sync::Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

static DRIVERS: Once = Once::new();

/// For a SQLite URL: the file path (None for in-memory) and a URL that creates it.
fn sqlite_target(url: &str) -> (Option<String>, String) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory")) {
        return (None, url.to_owned());
    }
    let url = match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    (Some(path.to_owned()), url)
}

impl Store {
    /// Connects (creating a SQLite file and its parent directories) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (backend, url) = if url.starts_with("sqlite:") {
            let (path, url) = sqlite_target(url);
            if let Some(path) = path {
                if let Some(parent) = Path::new(&path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            StoreError::Unavailable(format!(
                                "cannot create {}: {e}",
                                parent.display()
                            ))
                        })?;
                    }
                }
            }
            (Backend::Sqlite, url)
        } else {
            (Backend::Postgres, url.to_owned())
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(3));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        let (bus, _) = broadcast::channel(4096);
        Ok(Store {
            pool,
            backend,
            bus,
            hooks: Default::default(),
            url: url.into(),
        })
    }

    /// Connects and applies the backend's migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction. On SQLite the write lock is taken at `BEGIN
    /// IMMEDIATE`: a transaction that reads before it writes then waits for a
    /// concurrent writer (`busy_timeout`) instead of failing with `SQLITE_BUSY`
    /// when it upgrades its read lock (seen as 503s under concurrent admin calls).
    pub(crate) async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            _ => self.pool.begin().await,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// In-process change events (committed changes of this process).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.bus.subscribe()
    }

    /// Registers `hook` for every change this process commits from now on (see
    /// [`ChangeHook`]). Hooks must be cheap and never block.
    pub fn on_change(&self, hook: ChangeHook) {
        match self.hooks.write() {
            Ok(mut h) => h.push(hook),
            Err(p) => p.into_inner().push(hook),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness check of the database.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
