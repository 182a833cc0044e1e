//! The web console (`/console`) and the API reference (`/docs`) of the real binary,
//! driven in headless Chromium through chromedriver (WebDriver).
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROMEDRIVER` / `CHROME_BIN`).
//! Without them the browser tests are skipped with a loud message, except in CI
//! (`CI` set), where that is a failure. A failing browser test leaves a screenshot in
//! `target/e2e-screenshots/` and names it in the panic message;
//! `TENANTGATE_E2E_SCREENSHOTS=1` also keeps one per step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{free_port, stack, Stack, TOKEN};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::testing::in_ci;

const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ the browser

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the screenshots go beside it.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("e2e-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/e2e-screenshots"))
}

struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One headless Chromium session, with the chromedriver it runs under.
#[derive(Clone)]
struct Browser {
    c: Client,
    driver_url: String,
    test: &'static str,
    step: Arc<std::sync::atomic::AtomicUsize>,
    _driver: Arc<Driver>,
}

impl Browser {
    /// `None` (after a loud message) when Chromium or chromedriver is missing outside CI.
    async fn start(test: &'static str) -> Option<Browser> {
        let driver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let chrome = find_program(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let (Some(driver), Some(chrome)) = (driver, chrome) else {
            let msg = "chromium and chromedriver are needed for the console's browser tests \
                       (Debian: apt-get install chromium chromium-driver)";
            if in_ci() {
                panic!("{msg}; they are required in CI");
            }
            eprintln!("\n!!! SKIPPING {test}: {msg} !!!\n");
            return None;
        };
        // Screenshots of an earlier run of this test would only confuse.
        if let Ok(old) = std::fs::read_dir(screenshot_dir()) {
            for f in old.flatten() {
                if f.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{test}-"))
                {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let port = free_port();
        let profile = std::env::temp_dir().join(format!(
            "tenantgate_chrome_{}_{}",
            std::process::id(),
            tenantgate_core::secrets::random_token(8)
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromedriver.log")).unwrap();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let driver_proc = Arc::new(Driver {
            child,
            profile: profile.clone(),
        });
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = match http.get(format!("{driver_url}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chrome,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.join("chrome").display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}"));
        Some(Browser {
            c,
            driver_url,
            test,
            step: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            _driver: driver_proc,
        })
    }

    /// Saves a screenshot; returns its path.
    async fn screenshot(&self, name: &str) -> Option<PathBuf> {
        let png = self.c.screenshot().await.ok()?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).ok()?;
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}-{n:02}-{name}.png", self.test));
        std::fs::write(&path, png).ok()?;
        Some(path)
    }

    /// A screenshot per step when `TENANTGATE_E2E_SCREENSHOTS` is set.
    async fn step(&self, name: &str) {
        if std::env::var_os("TENANTGATE_E2E_SCREENSHOTS").is_some() {
            self.screenshot(name).await;
        }
    }

    async fn goto(&self, url: &str) {
        self.c.goto(url).await.unwrap();
    }

    async fn wait(&self, css: &str) -> Element {
        self.c
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?} within {WAIT:?}: {e}"))
    }

    async fn gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.c.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{css:?} still there");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.c.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.wait(css).await.click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.wait(css).await;
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn choose(&self, css: &str, value: &str) {
        // The role select is filled in once the tenant's policies have loaded.
        let deadline = Instant::now() + WAIT;
        loop {
            let el = self.wait(css).await;
            if el.select_by_value(value).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "no option {value:?} in {css:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element's text contains `want`; returns the text.
    async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if last.contains(want) {
                    return last;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} never said {want:?}; last text: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    async fn hash(&self) -> String {
        self.c
            .current_url()
            .await
            .unwrap()
            .fragment()
            .unwrap_or_default()
            .to_owned()
    }

    async fn wait_hash(&self, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let hash = self.hash().await;
            if hash == want {
                return;
            }
            assert!(Instant::now() < deadline, "at #{hash}, not #{want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the page wrote to the console so far (chromedriver's log endpoint).
    async fn console_log(&self) -> Vec<Value> {
        let sid = self.c.session_id().await.unwrap().unwrap();
        let r = reqwest::Client::new()
            .post(format!("{}/session/{sid}/se/log", self.driver_url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["value"].as_array().cloned().unwrap_or_default()
    }

    /// No Content-Security-Policy violation and no uncaught script error.
    async fn assert_clean_console(&self) {
        let bad: Vec<String> = self
            .console_log()
            .await
            .into_iter()
            .filter_map(|e| {
                let msg = e["message"].as_str().unwrap_or_default().to_owned();
                let csp = msg.contains("Content Security Policy") || e["source"] == "security";
                let uncaught = e["source"] == "javascript" && e["level"] == "SEVERE";
                (csp || uncaught).then_some(msg)
            })
            .collect();
        assert!(bad.is_empty(), "the page logged: {bad:#?}");
    }
}

/// Runs `body`; on a panic saves a screenshot, names it, and fails with the cause.
async fn run<F, Fut>(browser: Browser, body: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body(browser.clone())).await;
    if let Err(e) = outcome {
        let shot = browser.screenshot("failure").await;
        let _ = browser.c.clone().close().await;
        let cause = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            })
            .unwrap_or_else(|| "the test task failed".into());
        match shot {
            Some(path) => panic!("{cause}\nscreenshot of the page: {}", path.display()),
            None => panic!("{cause}\n(no screenshot could be taken)"),
        }
    }
    let _ = browser.c.clone().close().await;
}

// ------------------------------------------------------------------ helpers

/// Sum of the `data-value`s of a chart series' points.
async fn chart_sum(b: &Browser, chart: &str, series: &str) -> f64 {
    let v = b
        .js(&format!(
            "return [...document.querySelectorAll('svg[data-chart={chart}] g[data-series={series}] circle.point')]\
             .reduce((a, c) => a + Number(c.dataset.value), 0);"
        ))
        .await;
    v.as_f64().unwrap_or(0.0)
}

async fn sign_in_platform(b: &Browser, admin: &str) {
    b.goto(&format!("{admin}/console")).await;
    b.fill("#token", TOKEN).await;
    b.click("#signin-token button[type=submit]").await;
    b.wait("#new-tenant").await;
}

// ------------------------------------------------------------------ tests

/// No browser needed: the pages' security headers, the JSON 404 of an unknown asset,
/// request ids and revalidation, and that the rest of the API is unchanged.
#[tokio::test]
async fn console_and_docs_are_served_with_strict_headers() {
    let s = stack().start().await;
    for (path, ctype) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/docs", "text/html"),
        ("/docs/docs.js", "text/javascript"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        let r = s
            .http
            .get(format!("{}{path}", s.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ctype),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(d), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.contains_key("x-request-id"), "{path}");
        assert!(!h.contains_key("set-cookie"), "{path}");
        // Revalidation answers 304 without a body.
        let tag = h["etag"].clone();
        let r = s
            .http
            .get(format!("{}{path}", s.admin))
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
    }
    // The page itself has no inline script or style and loads only its own files.
    let page = s
        .http
        .get(format!("{}/console", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script type="module" src="/console/console.js">"#));
    assert!(!page.contains("style=") && !page.contains("<style"));
    // Unknown files and routes keep the API's JSON errors.
    for path in [
        "/console/nope.js",
        "/docs/../Cargo.toml",
        "/v1/nope",
        "/consoles",
    ] {
        let r = s
            .http
            .get(format!("{}{path}", s.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{path}: {v}");
        assert_eq!(v["error"]["request_id"], rid.as_str(), "{path}");
    }
    let r = s
        .http
        .post(format!("{}/console", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    // The API itself is unchanged and still needs its credential.
    let (st, _) = s.admin_as("wrong", "GET", "/v1/tenants", None).await;
    assert_eq!(st, 401);
}

/// Sign-in (a wrong token, then the platform token), a tenant and an API key
/// created (its secret shown once), limits edited, traffic through the proxy seen
/// in the usage chart, the key revoked, suspend and reactivate, a tenant admin who
/// sees only its own tenant, and an ended session sent back to sign-in.
#[tokio::test]
async fn console_end_to_end() {
    let Some(browser) = Browser::start("console_end_to_end").await else {
        return;
    };
    let s = Arc::new(stack().start().await);
    run(browser, move |b| async move { console_steps(b, s).await }).await;
}

async fn console_steps(b: Browser, s: Arc<Stack>) {
    let admin = s.admin.clone();

    // --- sign-in: a wrong token is refused in words, the right one gets in
    b.goto(&format!("{admin}/console")).await;
    b.wait("#signin-token").await;
    b.step("signin").await;
    b.fill("#token", "not-the-token").await;
    b.click("#signin-token button[type=submit]").await;
    b.wait_text("#signin-token .field-error", "token was not accepted")
        .await;
    b.step("wrong-token").await;
    b.fill("#token", TOKEN).await;
    b.click("#signin-token button[type=submit]").await;
    b.wait("#tenants-table").await;
    b.step("tenants").await;
    let where_it_is = b
        .js(
            "return {url: location.href, local: localStorage.length, \
             session: sessionStorage.getItem('tenantgate.console.session'), cookies: document.cookie};",
        )
        .await;
    assert!(
        !where_it_is["url"].as_str().unwrap().contains(TOKEN),
        "{where_it_is}"
    );
    assert_eq!(where_it_is["local"], 0, "{where_it_is}");
    assert_eq!(where_it_is["cookies"], "", "{where_it_is}");
    assert!(where_it_is["session"].as_str().unwrap().contains(TOKEN));

    // --- a tenant: a field error, then created, then a duplicate id refused
    b.click("#new-tenant").await;
    b.fill("#create-tenant [name=name]", "Acme Corp").await;
    b.fill("#create-tenant [name=id]", "Not_A_Valid_Id").await;
    b.click("#create-tenant button[type=submit]").await;
    b.wait_text("#create-tenant .field-error", "Must match")
        .await;
    assert_eq!(b.count("#create-tenant input[name=id].invalid").await, 1);
    b.fill("#create-tenant [name=id]", "acme").await;
    b.choose("#create-tenant [name=tier]", "pro").await;
    b.fill("#create-tenant [name='admin_user.email']", "ops@acme.test")
        .await;
    b.fill(
        "#create-tenant [name='admin_user.password']",
        "correct horse battery",
    )
    .await;
    b.click("#create-tenant button[type=submit]").await;
    b.wait_text("#tenant-name", "Acme Corp").await;
    b.wait_hash("/tenants/acme").await;
    b.step("tenant-created").await;
    b.goto(&format!("{admin}/console#/tenants")).await;
    b.click("#new-tenant").await;
    b.fill("#create-tenant [name=name]", "Acme again").await;
    b.fill("#create-tenant [name=id]", "acme").await;
    b.click("#create-tenant button[type=submit]").await;
    b.wait_text("#create-tenant .form-error", "already exists")
        .await;
    b.step("duplicate").await;

    // --- API keys: empty state, create (secret shown once), listed without it
    b.goto(&format!("{admin}/console#/tenants/acme/keys")).await;
    b.wait_text(".empty", "No API keys yet").await;
    b.step("keys-empty").await;
    b.fill("#create-key [name=name]", "ci").await;
    b.choose("#create-key select[name=role]", "developer").await;
    b.click("#create-key button[type=submit]").await;
    let secret = b
        .wait("#new-key-secret")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("tg_"), "{secret}");
    b.wait_text("#secret-panel", "you will not see it again")
        .await;
    b.wait("#keys-table tr[data-status=active]").await;
    b.step("key-created").await;
    let listed = b.wait("#keys-table").await.text().await.unwrap();
    assert!(!listed.contains(&secret[secret.len() - 20..]), "{listed}");
    let (st, who) = s.with_key("GET", "/api/v1/whoami", &secret).await;
    assert_eq!(st, 200, "{who}");
    assert_eq!(who["tenant_id"], "acme");
    b.click("#secret-done").await;
    b.gone("#secret-panel").await;

    // --- limits: a small rate limit, applied by the proxy
    b.click("a[data-tab=limits]").await;
    b.fill("#rate-limit [name=max_requests]", "10").await;
    b.fill("#rate-limit [name=window_seconds]", "60").await;
    b.fill("#rate-limit [name=burst]", "10").await;
    b.click("#rate-limit button[type=submit]").await;
    b.wait_text("#rate-summary", "10 requests per 60 s").await;
    b.wait_text("#quota", "No quota set").await;
    b.step("limits").await;
    let (st, rl) = s.admin("GET", "/v1/tenants/acme/rate-limit", None).await;
    assert_eq!((st, rl["max_requests"].as_u64()), (200, Some(10)), "{rl}");

    // --- traffic: allowed, rate limited and denied requests show in the chart
    tokio::time::sleep(Duration::from_millis(1200)).await; // the limit reaches the proxy
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(s.with_key("GET", "/api/v1/whoami", &secret).await.0);
    }
    for _ in 0..3 {
        statuses.push(s.with_key("POST", "/api/v1/whoami", &secret).await.0);
    }
    let limited = statuses.iter().filter(|&&st| st == 429).count();
    assert!(limited >= 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&st| st == 403).count(),
        3,
        "{statuses:?}"
    );
    let total = statuses.len() + 1; // and the whoami above
    b.click("a[data-tab=overview]").await;
    b.click("button[data-granularity=minute]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        b.wait("svg[data-chart=traffic]").await;
        let requests = chart_sum(&b, "traffic", "requests").await;
        if requests >= total as f64 {
            assert_eq!(requests, total as f64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chart shows {requests} requests, not {total}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.click("#usage-refresh").await;
    }
    assert_eq!(chart_sum(&b, "traffic", "denied").await, 3.0);
    assert!(chart_sum(&b, "traffic", "rate_limited").await >= 1.0);
    assert!(b.count("svg[data-chart=traffic] polyline").await >= 1);
    assert!(
        b.count("svg[data-chart=latency] g[data-series=p99] circle.point")
            .await
            >= 1
    );
    b.wait_text("#stat-requests", &total.to_string()).await;
    b.step("usage-chart").await;

    // --- revoke the key: gone at the proxy within a second or two
    b.click("a[data-tab=keys]").await;
    b.click("#keys-table button[data-action=revoke]").await;
    b.wait_text("#dialog", "cannot be undone").await;
    b.step("revoke-dialog").await;
    b.click("#dialog button[type=submit]").await;
    b.wait("#keys-table tr[data-status=revoked]").await;
    assert_eq!(b.count("#keys-table tr[data-status=active]").await, 0);
    let revoked = common::eventually(Duration::from_secs(3), || async {
        s.with_key("GET", "/api/v1/whoami", &secret).await.0 == 401
    })
    .await;
    assert!(revoked.is_some(), "the revoked key still works");
    b.step("revoked").await;

    // --- suspend and reactivate from the tenant's page
    b.click(".tenant-head button[data-action=suspend]").await;
    b.click("#dialog button[type=submit]").await;
    b.wait_text("#tenant-status", "suspended").await;
    b.click(".tenant-head button[data-action=reactivate]").await;
    b.wait_text("#tenant-status", "active").await;

    // --- sign out; a tenant admin: wrong password, then only its own tenant
    b.click("#sign-out").await;
    b.wait_text("#signin-notice", "signed out").await;
    b.click("#mode-login").await;
    b.fill("#tenant_id", "acme").await;
    b.fill("#email", "ops@acme.test").await;
    b.fill("#password", "wrong password").await;
    b.click("#signin-login button[type=submit]").await;
    b.wait_text("#signin-login .form-error", "wrong").await;
    b.fill("#password", "correct horse battery").await;
    b.click("#signin-login button[type=submit]").await;
    b.wait_text("#tenant-name", "Acme Corp").await;
    b.wait_text("#who", "ops@acme.test").await;
    b.step("tenant-admin").await;
    assert_eq!(b.count("#new-tenant").await, 0);
    assert_eq!(b.count(".topnav a[href='#/audit']").await, 0);
    assert_eq!(b.count("[data-action=suspend]").await, 0);
    assert_eq!(b.count("#tenant-tier").await, 0);
    for elsewhere in ["#/tenants", "#/tenants/demo/keys", "#/audit"] {
        b.goto(&format!("{admin}/console{elsewhere}")).await;
        b.wait_hash("/tenants/acme").await;
        b.wait_text("#tenant-name", "Acme Corp").await;
    }
    // Its keys (the revoked one), users, and what this server does not offer yet.
    b.click("a[data-tab=keys]").await;
    b.wait("#keys-table tr[data-status=revoked]").await;
    b.click("a[data-tab=users]").await;
    b.wait_text("#users-table", "ops@acme.test (you)").await;
    b.fill("#create-user [name=email]", "dev@acme.test").await;
    b.fill("#create-user [name=password]", "short").await;
    b.choose("#create-user select[name=role]", "developer")
        .await;
    b.click("#create-user button[type=submit]").await;
    b.wait_text("#create-user .field-error", "between 8 and")
        .await;
    b.fill("#create-user [name=password]", "a long enough password")
        .await;
    b.click("#create-user button[type=submit]").await;
    b.wait_text("#users-table", "dev@acme.test").await;
    // Disabling a user works (its tokens stop working).
    let dev = "#users-table tr:not(:has(.muted)) button[data-user-action=status]";
    b.click(dev).await;
    b.wait_text("#users-table tr:not(:has(.muted)) .badge", "disabled")
        .await;
    b.step("user-disabled").await;
    // The audit log shows what this admin just did (users created, disabled).
    b.click("a[data-tab=audit]").await;
    b.wait_text("#audit-table", "user.create").await;
    b.wait_text("#audit-table", "user.update").await;

    // --- a session the API no longer accepts goes back to sign-in, with a reason
    b.js(
        "const s = JSON.parse(sessionStorage.getItem('tenantgate.console.session')); \
         s.token = 'expired.or.revoked'; \
         sessionStorage.setItem('tenantgate.console.session', JSON.stringify(s));",
    )
    .await;
    b.c.refresh().await.unwrap();
    b.wait_text("#signin-notice", "session has ended").await;
    b.step("session-ended").await;
    b.assert_clean_console().await;
}

/// `/docs` renders the operations of `/openapi.json` and "Try it out" works, with
/// the console's session in the same tab as the bearer token.
#[tokio::test]
async fn docs_render_the_operations() {
    let Some(browser) = Browser::start("docs_render_the_operations").await else {
        return;
    };
    let s = Arc::new(stack().start().await);
    run(browser, move |b| async move { docs_steps(b, s).await }).await;
}

async fn docs_steps(b: Browser, s: Arc<Stack>) {
    let admin = s.admin.clone();
    b.goto(&format!("{admin}/docs")).await;
    b.wait(".opblock").await;
    b.step("docs").await;
    let paths = b
        .js(
            "return [...document.querySelectorAll('.opblock-summary-path')]\
             .map(e => e.getAttribute('data-path'));",
        )
        .await;
    let paths: Vec<String> = serde_json::from_value(paths).unwrap();
    let (_, doc) = s.admin("GET", "/openapi.json", None).await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(paths.len(), operations, "{paths:?}");
    for p in [
        "/v1/tenants",
        "/v1/tenants/{id}/api-keys",
        "/v1/tenants/{id}/usage",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not in {paths:?}");
    }

    // Try it out, signed in through the console in this tab.
    sign_in_platform(&b, &admin).await;
    b.goto(&format!("{admin}/docs")).await;
    b.wait_text("#tg-auth-note", "Platform admin").await;
    let op = "#operations-tenants-listTenants";
    b.wait(op).await;
    if b.count(&format!("{op}.is-open")).await == 0 {
        b.click(&format!("{op} .opblock-summary-control")).await;
    }
    b.click(&format!("{op} .try-out__btn")).await;
    b.click(&format!("{op} .execute")).await;
    let status = b
        .wait_text(
            &format!("{op} .live-responses-table tbody .response-col_status"),
            "200",
        )
        .await;
    assert!(status.contains("200"), "{status}");
    b.wait_text(&format!("{op} .live-responses-table"), "demo")
        .await;
    b.step("try-it-out").await;
    b.assert_clean_console().await;
}
