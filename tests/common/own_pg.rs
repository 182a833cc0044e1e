//! An own PostgreSQL for tests that stop or restart it: `initdb` + `pg_ctl` as user
//! postgres, on a free port, removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::free_port;
use std::path::PathBuf;
use std::process::Command;

pub struct OwnPg {
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
    /// A fresh cluster on a free port; `None` when initdb/pg_ctl are not here.
    pub fn start() -> Option<OwnPg> {
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

    /// `pg_ctl start|stop|restart`, waiting for it.
    pub fn ctl(&self, action: &str) -> bool {
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

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
