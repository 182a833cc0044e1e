//! Test support shared by the crates' test suites: throwaway SQLite files and
//! PostgreSQL databases, and a `redis-server` of a test's own. PostgreSQL and Redis
//! tests are required in CI (`CI` set) and skipped loudly elsewhere.

use sqlx::{Connection, Executor, PgConnection};

/// Base URL of the test PostgreSQL server (no database part).
pub fn pg_base_url() -> String {
    std::env::var("TENANTGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Redis tests share: `TENANTGATE_TEST_REDIS`, default `redis://127.0.0.1:6379`.
pub fn test_redis_url() -> String {
    std::env::var("TENANTGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared test Redis's URL when it accepts connections. Without one the
/// test is skipped with a loud message, except in CI, where it fails.
pub fn test_redis() -> Option<String> {
    let url = test_redis_url();
    let addr = url
        .strip_prefix("redis://")
        .map(|rest| rest.rsplit_once('@').map_or(rest, |(_, hp)| hp))
        .map(|hp| hp.split('/').next().unwrap_or(hp).to_owned())
        .unwrap_or_default();
    if std::net::TcpStream::connect(addr.as_str()).is_ok() {
        return Some(url);
    }
    assert!(
        !in_ci(),
        "CI requires Redis at {url} (TENANTGATE_TEST_REDIS)"
    );
    eprintln!("\n!!!!!!!! SKIPPED: no Redis at {url} (set TENANTGATE_TEST_REDIS) !!!!!!!!\n");
    None
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

/// A `redis-server` child of a test on a free port of its own, for tests that kill
/// and restart Redis. Killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// A free port where no server runs yet ([`OwnRedis::restart`] starts it): for
    /// tests of starting while Redis is down.
    pub fn unstarted() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        OwnRedis { port, child: None }
    }

    /// Starts one, or `None` when `redis-server` cannot be started: a loud skip
    /// outside CI, a failure in CI.
    pub fn start() -> Option<OwnRedis> {
        let mut r = OwnRedis::unstarted();
        if r.port == 0 || !r.restart() {
            assert!(!in_ci(), "CI requires redis-server for this test");
            eprintln!("\n!!!!!!!! SKIPPED: redis-server could not be started !!!!!!!!\n");
            return None;
        }
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port; true once it answers `PING` (within 5 s).
    pub fn restart(&mut self) -> bool {
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let pong = || -> std::io::Result<bool> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if pong().unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: the server vanishes mid-conversation, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
