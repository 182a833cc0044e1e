//! Fleet harness: `tenantgate admin`, `tenantgate demo-upstream` and N
//! `tenantgate proxy` processes sharing one PostgreSQL database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::{free_port, TOKEN};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Fleet {
    pub dir: PathBuf,
    pub admin: String,
    pub demo: String,
    pub proxies: Vec<String>,
    pub proxy_admins: Vec<String>,
    pub procs: Vec<Proc>,
    pub http: reqwest::Client,
}

fn spawn(dir: &PathBuf, name: &str, args: &[&str], envs: &[(String, String)]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantgate"));
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        name: name.into(),
        child: Some(cmd.spawn().unwrap()),
        log,
    }
}

impl Fleet {
    /// Starts admin, demo and `n` proxies on `store_url` with `extra` TOML; the
    /// proxies poll the change feed every 250 ms.
    pub async fn start(store_url: &str, n: usize, extra: &str) -> Fleet {
        Self::start_polling(store_url, n, extra, 250).await
    }

    /// [`Fleet::start`] with the proxies polling the change feed every `poll_ms`.
    pub async fn start_polling(store_url: &str, n: usize, extra: &str, poll_ms: u64) -> Fleet {
        let dir = std::env::temp_dir().join(format!(
            "tenantgate_fleet_{}_{}",
            std::process::id(),
            tenantgate_core::secrets::random_token(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, d) = (free_port(), free_port());
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:{a}"
bootstrap_token = "{TOKEN}"
secret_key = "fleet-test-secret-key-0123456789"
[upstream_demo]
listen = "127.0.0.1:{d}"
[store]
url = "{store_url}"
data_dir = "{data}"
[proxy]
grace_period_seconds = 1
change_poll_interval_ms = {poll_ms}
[metering]
flush_interval_ms = 200
[log]
level = "warn"
format = "text"
{extra}
[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:{d}"
"#,
            data = dir.display()
        );
        let cfg = dir.join("fleet.toml");
        std::fs::write(&cfg, config).unwrap();
        let cfg_s = cfg.display().to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut procs = vec![spawn(&dir, "admin", &["admin", "--config", &cfg_s], &[])];
        wait_http(&http, &format!("http://127.0.0.1:{a}/health"), &procs[0]).await;
        procs.push(spawn(
            &dir,
            "demo",
            &["demo-upstream", "--config", &cfg_s],
            &[],
        ));
        wait_http(&http, &format!("http://127.0.0.1:{d}/health"), &procs[1]).await;
        let mut proxies = Vec::new();
        let mut proxy_admins = Vec::new();
        for i in 0..n {
            let (p, pa) = (free_port(), free_port());
            let envs = vec![
                (
                    "TENANTGATE__PROXY__LISTEN".to_owned(),
                    format!("\"127.0.0.1:{p}\""),
                ),
                (
                    "TENANTGATE__PROXY__ADMIN_LISTEN".to_owned(),
                    format!("\"127.0.0.1:{pa}\""),
                ),
                (
                    "TENANTGATE__METERING__NODE_ID".to_owned(),
                    format!("\"proxy-{i}\""),
                ),
            ];
            let proc_ = spawn(
                &dir,
                &format!("proxy{i}"),
                &["proxy", "--config", &cfg_s],
                &envs,
            );
            wait_http(&http, &format!("http://127.0.0.1:{pa}/health"), &proc_).await;
            let url = format!("http://127.0.0.1:{p}");
            let deadline = Instant::now() + Duration::from_secs(20);
            while http.get(format!("{url}/")).send().await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "proxy{i} not up: {}",
                    proc_.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            procs.push(proc_);
            proxies.push(url);
            proxy_admins.push(format!("http://127.0.0.1:{pa}"));
        }
        Fleet {
            dir,
            admin: format!("http://127.0.0.1:{a}"),
            demo: format!("http://127.0.0.1:{d}"),
            proxies,
            proxy_admins,
            procs,
            http,
        }
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET through proxy `i` with an API key: `(status, body)`.
    pub async fn get(&self, i: usize, path: &str, key: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.proxies[i]))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn stop_all(&mut self) {
        for p in self.procs.iter_mut().rev() {
            if p.child.is_some() {
                let _ = p.sigterm();
            }
        }
    }
}

async fn wait_http(http: &reqwest::Client, url: &str, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready; {} log:\n{}",
            p.name,
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Fleet {
    /// Starts one more `tenantgate admin` on the fleet's config (on its own
    /// port) and returns its base URL.
    pub async fn add_admin(&mut self) -> String {
        let a = free_port();
        let cfg = self.dir.join("fleet.toml").display().to_string();
        let name = format!("admin{}", self.procs.len());
        let envs = vec![(
            "TENANTGATE__ADMIN__LISTEN".to_owned(),
            format!("\"127.0.0.1:{a}\""),
        )];
        let p = spawn(&self.dir, &name, &["admin", "--config", &cfg], &envs);
        let url = format!("http://127.0.0.1:{a}");
        wait_http(&self.http, &format!("{url}/health"), &p).await;
        self.procs.push(p);
        url
    }

    /// The value of an unlabelled metric on proxy `i`'s `/metrics`.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.proxy_admins[i]))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        crate::common::sample(&text, name)
    }
}
