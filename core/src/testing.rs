//! Test support shared by the crates' test suites: throwaway SQLite files and
//! PostgreSQL databases. PostgreSQL tests are required in CI (`CI` set) and skipped
//! loudly elsewhere when no server answers.

use sqlx::{Connection, Executor, PgConnection};

/// Base URL of the test PostgreSQL server (no database part).
pub fn pg_base_url() -> String {
    std::env::var("TENANTGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A throwaway database. Call [`TestDb::cleanup`] at the end of the test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sqlite(std::path::PathBuf),
    Postgres { name: String },
}

fn unique_suffix() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        crate::secrets::random_token(10).to_ascii_lowercase()
    )
}

impl TestDb {
    /// A fresh SQLite file in a new temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("tenantgate_test_{}", unique_suffix()));
        let path = dir.join("tg.db");
        TestDb {
            url: format!("sqlite://{}", path.display()),
            kind: Kind::Sqlite(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a loud message) when no server
    /// answers outside CI. In CI a missing server is a test failure.
    pub async fn postgres() -> Option<TestDb> {
        let base = pg_base_url();
        let admin_url = format!("{base}/postgres");
        let mut conn = match PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                if in_ci() {
                    panic!("PostgreSQL is required in CI but {admin_url} failed: {e}");
                }
                eprintln!(
                    "\n!!! SKIPPING PostgreSQL test: cannot connect to {admin_url}: {e}\n!!! set TENANTGATE_TEST_PG or start PostgreSQL to run it\n"
                );
                return None;
            }
        };
        let name = format!("tg_test_{}", unique_suffix());
        if let Err(e) = conn
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
        {
            panic!("cannot create test database {name}: {e}");
        }
        let _ = conn.close().await;
        Some(TestDb {
            url: format!("{base}/{name}"),
            kind: Kind::Postgres { name },
        })
    }

    /// Both backends: SQLite always, PostgreSQL when available.
    pub async fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        if let Some(pg) = TestDb::postgres().await {
            v.push(pg);
        }
        v
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    /// Removes the database (the caller must have closed its pools).
    pub async fn cleanup(self) {
        match self.kind {
            Kind::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Postgres { name } => {
                let admin_url = format!("{}/postgres", pg_base_url());
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = conn.close().await;
                }
            }
        }
    }
}
