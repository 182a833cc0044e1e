#![allow(clippy::unwrap_used, clippy::expect_used)]
//! PostgreSQL stopped under a running proxy: cached credentials keep working,
//! unknown ones fail closed with 503, and service recovers when it is back.
//! Starts its own PostgreSQL (initdb + pg_ctl as user postgres) on a free port.

mod common;

use common::{eventually, free_port, stack};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct OwnPg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

fn pg_bin() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut versions: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|p| p.join("initdb").exists())
}

fn as_postgres(cmd: &str) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", cmd])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl OwnPg {
    fn start() -> Option<OwnPg> {
        let bin = pg_bin()?;
        let data = std::env::temp_dir().join(format!(
            "tg_pg_{}",
            tenantgate_core::secrets::random_token(8)
        ));
        std::fs::create_dir_all(&data).ok()?;
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&data)
            .status()
            .ok()?;
        let port = free_port();
        let ok = as_postgres(&format!(
            "{}/initdb -D {} -U postgres -A trust >/dev/null",
            bin.display(),
            data.display()
        ));
        if !ok {
            return None;
        }
        let pg = OwnPg { bin, data, port };
        assert!(pg.ctl("start"), "own PostgreSQL did not start");
        Some(pg)
    }

    fn ctl(&self, action: &str) -> bool {
        let opts = format!(
            "-o '-p {} -k /tmp -c listen_addresses=127.0.0.1'",
            self.port
        );
        as_postgres(&format!(
            "{}/pg_ctl -D {} -w -m fast {opts} -l {}/log {action} >/dev/null",
            self.bin.display(),
            self.data.display(),
            self.data.display()
        ))
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_survive_a_postgres_outage_and_unknown_keys_fail_closed() {
    let Some(pg) = OwnPg::start() else {
        assert!(
            !tenantgate_core::testing::in_ci(),
            "CI needs initdb/pg_ctl to run this test"
        );
        eprintln!(
            "\n!!! SKIPPING: cannot start an own PostgreSQL (initdb/pg_ctl as user postgres)\n"
        );
        return;
    };
    let s = stack().store_url(&pg.url()).start().await;
    let t = s.tenant("outage", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    let (unused_key, _) = s.key(&t, "developer").await;
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &key).await.0, 200);

    assert!(pg.ctl("stop"), "could not stop PostgreSQL");
    // The cached key still passes (tenant, policy, limit all cached).
    for _ in 0..5 {
        let (st, v) = s.with_key("GET", "/api/v1/whoami", &key).await;
        assert_eq!(st, 200, "cached key during the outage: {v}");
    }
    // A key the proxy has never seen cannot be checked: 503, never a false 200.
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &unused_key).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    let random = tenantgate_core::secrets::generate_api_key().key;
    let (st, _) = s.with_key("GET", "/api/v1/whoami", &random).await;
    assert_eq!(st, 503);

    assert!(pg.ctl("start"), "could not restart PostgreSQL");
    let back = eventually(Duration::from_secs(15), || async {
        s.with_key("GET", "/api/v1/whoami", &unused_key).await.0 == 200
    })
    .await;
    assert!(
        back.is_some(),
        "no recovery after PostgreSQL came back; log:\n{}",
        s.log()
    );
}
