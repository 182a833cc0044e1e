//! End-to-end harness: runs the real `tenantgate` binary on free loopback ports
//! with a throwaway SQLite store and talks HTTP to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "e2e-bootstrap-token-0123456789";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Stack {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub proxy: String,
    pub proxy_admin: String,
    pub admin: String,
    pub demo: String,
    pub http: reqwest::Client,
    pub config_path: PathBuf,
}

pub struct StackBuilder {
    extra: String,
    proxy_extra: String,
    demo_extra: String,
    admin_extra: String,
    routes: Option<String>,
    store_url: Option<String>,
    dir: Option<PathBuf>,
}

pub fn stack() -> StackBuilder {
    StackBuilder {
        extra: String::new(),
        proxy_extra: String::new(),
        demo_extra: String::new(),
        admin_extra: String::new(),
        routes: None,
        store_url: None,
        dir: None,
    }
}

impl StackBuilder {
    /// Extra TOML appended to the config (e.g. `[[jwt.issuers]]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Extra keys of the `[proxy]` table (e.g. `trusted_proxies = [...]`).
    pub fn proxy_extra(mut self, toml: &str) -> Self {
        self.proxy_extra.push_str(toml);
        self.proxy_extra.push('\n');
        self
    }

    /// Extra keys of the `[upstream_demo]` table (e.g. `require_assertion = true`).
    pub fn demo_extra(mut self, toml: &str) -> Self {
        self.demo_extra.push_str(toml);
        self.demo_extra.push('\n');
        self
    }

    /// Extra keys of the `[admin]` table (e.g. `trusted_proxies = [...]`).
    pub fn admin_extra(mut self, toml: &str) -> Self {
        self.admin_extra.push_str(toml);
        self.admin_extra.push('\n');
        self
    }

    /// Custom `[[routes]]` (the placeholder `DEMO` is replaced by the demo address).
    pub fn routes(mut self, toml: &str) -> Self {
        self.routes = Some(toml.to_owned());
        self
    }

    pub fn store_url(mut self, url: &str) -> Self {
        self.store_url = Some(url.to_owned());
        self
    }

    /// Reuse a data directory (restart tests).
    pub fn dir(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Starts `tenantgate up`. A free port taken by another test between
    /// `free_port()` and the bind ("Address already in use") is retried with new
    /// ports (tests run in parallel processes).
    pub async fn start(self) -> Stack {
        let dir = self.dir.clone().unwrap_or_else(|| {
            let d = std::env::temp_dir().join(format!(
                "tenantgate_e2e_{}_{}",
                std::process::id(),
                tenantgate_core::secrets::random_token(8)
            ));
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        let mut attempt = 0;
        loop {
            attempt += 1;
            let s = self.spawn(&dir);
            match s.wait_ready().await {
                Ok(()) => return s,
                Err(log) if attempt < 4 && log.contains("Address already in use") => drop(s),
                Err(log) => panic!("tenantgate did not start; log:\n{log}"),
            }
        }
    }

    fn spawn(&self, dir: &std::path::Path) -> Stack {
        let dir = dir.to_path_buf();
        let (p, pa, a, d) = (free_port(), free_port(), free_port(), free_port());
        let demo = format!("127.0.0.1:{d}");
        let store = self
            .store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/tg.db", dir.display()));
        let routes = self
            .routes
            .as_ref()
            .map(|r| r.replace("DEMO", &demo))
            .unwrap_or_default();
        let config = format!(
            r#"
[proxy]
listen = "127.0.0.1:{p}"
admin_listen = "127.0.0.1:{pa}"
grace_period_seconds = 1
change_poll_interval_ms = 100
{proxy_extra}
[admin]
listen = "127.0.0.1:{a}"
bootstrap_token = "{TOKEN}"
{admin_extra}
[upstream_demo]
listen = "{demo}"
{demo_extra}
[store]
url = "{store}"
data_dir = "{data}"
[metering]
flush_interval_ms = 200
[log]
level = "warn"
format = "text"
{extra}
{routes}
"#,
            data = dir.display(),
            extra = self.extra,
            proxy_extra = self.proxy_extra,
            demo_extra = self.demo_extra,
            admin_extra = self.admin_extra,
        );
        let config_path = dir.join("tenantgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .args(["up", "--config"])
            .arg(&config_path)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Stack {
            child: Some(child),
            dir,
            proxy: format!("http://127.0.0.1:{p}"),
            proxy_admin: format!("http://127.0.0.1:{pa}"),
            admin: format!("http://127.0.0.1:{a}"),
            demo: format!("http://{demo}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            config_path,
        }
    }
}

impl Stack {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits until every listener answers; the log when it does not (at once
    /// when a port was taken).
    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = || {
            let log = self.log();
            (Instant::now() >= deadline || log.contains("Address already in use")).then_some(log)
        };
        for url in [
            format!("{}/health", self.admin),
            format!("{}/health", self.proxy_admin),
            format!("{}/health", self.demo),
        ] {
            loop {
                if let Ok(r) = self.http.get(&url).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                if let Some(log) = failed() {
                    return Err(format!("{url} not ready\n{log}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The proxy port itself (Pingora binds a little after the admin listener).
        loop {
            if self
                .http
                .get(format!("{}/", self.proxy))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(log) = failed() {
                return Err(format!("proxy not ready\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The body of a GET of `url`, as text.
    pub async fn text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The proxy's Prometheus text (its admin listener's `/metrics`).
    pub async fn proxy_metrics(&self) -> String {
        self.text(&format!("{}/metrics", self.proxy_admin)).await
    }

    /// One unlabelled sample of the proxy's metrics.
    pub async fn proxy_metric(&self, name: &str) -> f64 {
        let text = self.proxy_metrics().await;
        sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    }

    /// An admin API call with the bootstrap token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_as(TOKEN, method, path, body).await
    }

    pub async fn admin_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.admin))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a tenant (with an admin user `admin@<id>.test` / `password-<id>`) and
    /// returns its id.
    pub async fn tenant(&self, id: &str, tier: &str) -> String {
        let (s, v) = self
            .admin(
                "POST",
                "/v1/tenants",
                Some(json!({"id": id, "name": format!("Tenant {id}"), "tier": tier,
                    "admin_user": {"email": format!("admin@{id}.test"), "password": format!("password-{id}")}})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// A login token of the admin user [`Stack::tenant`] created for `tenant`.
    pub async fn tenant_admin_token(&self, tenant: &str) -> String {
        let (st, v) = self
            .admin(
                "POST",
                "/v1/auth/login",
                Some(json!({"tenant_id": tenant, "email": format!("admin@{tenant}.test"), "password": format!("password-{tenant}")})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates an API key and returns `(key, key_id)`.
    pub async fn key(&self, tenant: &str, role: &str) -> (String, String) {
        let (s, v) = self
            .admin(
                "POST",
                &format!("/v1/tenants/{tenant}/api-keys"),
                Some(json!({"name": "e2e", "role": role})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["key"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }

    /// A proxied request: `(status, headers, json body)`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.call_at(&self.proxy, method, path, headers, body).await
    }

    /// A request to `base` (the proxy, the demo upstream, …): `(status, headers,
    /// json body)`.
    pub async fn call_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, format!("{base}{path}"));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let h = r.headers().clone();
        let text = r.text().await.unwrap();
        (
            status,
            h,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// A proxied request with `Authorization: Bearer <token>`.
    pub async fn with_bearer(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let bearer = format!("Bearer {token}");
        let (s, _, v) = self
            .call(method, path, &[("authorization", &bearer)], None)
            .await;
        (s, v)
    }

    pub async fn with_key(&self, method: &str, path: &str, key: &str) -> (u16, Value) {
        let (s, _, v) = self.call(method, path, &[("x-api-key", key)], None).await;
        (s, v)
    }

    /// Sends SIGTERM and waits for the exit status.
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
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("no exit within 20 s after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or `within` passes; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the proxy whose admin listener is `proxy_admin` has completed `n`
/// more metering flush cycles (`tenantgate_metering_flushes_total`): whatever was
/// going to reach the store by then has.
pub async fn flush_cycles(http: &reqwest::Client, proxy_admin: &str, n: u64) {
    let read = || async {
        let text = http
            .get(format!("{proxy_admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        sample(&text, "tenantgate_metering_flushes_total").map(|v| v as u64)
    };
    let start = read().await.expect("the proxy reports its flush cycles");
    let done = eventually(Duration::from_secs(20), || async {
        read().await.is_some_and(|now| now >= start + n)
    })
    .await;
    assert!(done.is_some(), "{n} flush cycles did not complete");
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A raw TCP connection to the proxy's listener (tests that need to see what
/// happens to one connection: keep-alive, closing, waiting).
pub async fn raw_connect(s: &Stack) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(s.proxy.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Writes `request` (a whole HTTP/1.1 request) on `conn` and reads one response:
/// `(status, header section)`, or None when the connection was closed instead
/// (or nothing came within 10 s).
pub async fn raw_request(conn: &mut tokio::net::TcpStream, request: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                let status = text.get(9..12).and_then(|c| c.parse().ok())?;
                return Some((status, head));
            }
        }
    }
}

/// A tiny HTTP/1.1 upstream on a free loopback port: every request (bodies by
/// `content-length` only) is answered `{"upstream": name, "tenant": <x-tenant-id>}`
/// on a kept-alive connection. Returns its `host:port`.
pub async fn echo_upstream(name: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    };
                    let len: usize = field("content-length:")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let tenant = field("x-tenant-id:").unwrap_or_default();
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    let body = json!({"upstream": name, "tenant": tenant}).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
