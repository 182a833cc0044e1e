#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The demo upstream's seed services through the real binary (`tenantgate up`):
//! schema-per-tenant on PostgreSQL and jobs that keep their tenant context.

mod common;

use common::{eventually, stack, Stack};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use std::time::{Duration, Instant};
use tenantgate_core::testing::TestDb;

async fn pg(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

async fn schemas(url: &str) -> Vec<String> {
    let mut c = pg(url).await;
    let rows = sqlx::query(
        "SELECT nspname::text AS n FROM pg_namespace WHERE nspname LIKE 'tenant%' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let _ = c.close().await;
    rows.iter().map(|r| r.get::<String, _>("n")).collect()
}

async fn version(c: &mut PgConnection) -> i64 {
    sqlx::query(
        "SELECT MAX(version) AS v FROM tenant_old_co.demo_migrations WHERE scope = 'tenant'",
    )
    .fetch_one(c)
    .await
    .unwrap()
    .get::<i64, _>("v")
}

async fn count_in(url: &str, table: &str) -> Option<i64> {
    let mut c = pg(url).await;
    let r = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(&mut c)
        .await
        .ok()
        .map(|r| r.get::<i64, _>("n"));
    let _ = c.close().await;
    r
}

/// A request straight to the demo upstream (bypassing the proxy).
async fn direct(
    s: &Stack,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = s.call_at(&s.demo, method, path, headers, body).await;
    (status, body)
}

fn assert_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
}

/// Waits until the job reaches a final status; returns its last view.
async fn wait_job(s: &Stack, key: &str, id: &str, within: Duration) -> Value {
    let path = format!("/api/v1/jobs/{id}");
    let deadline = Instant::now() + within;
    loop {
        let (st, v) = s.with_key("GET", &path, key).await;
        assert_eq!(st, 200, "{v}");
        if matches!(v["status"].as_str(), Some("succeeded" | "failed")) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not finish: {v}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `text` without ANSI colour sequences (the text log colours its fields).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn submit(s: &Stack, key: &str, body: Value) -> String {
    let (st, _, v) = s
        .call("POST", "/api/v1/jobs", &[("x-api-key", key)], Some(body))
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "queued", "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

// ---- schema per tenant ---------------------------------------------------------------

#[tokio::test]
async fn tenants_rows_live_in_their_own_schema_and_nothing_the_client_sends_moves_them() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    {
        let s = stack().store_url(&url).start().await;
        s.tenant("acme-one", "enterprise").await;
        s.tenant("beta", "enterprise").await;
        let (ka, _) = s.key("acme-one", "developer").await;
        let (kb, _) = s.key("beta", "developer").await;
        assert!(schemas(&url).await.is_empty(), "no schema before first use");

        // acme writes, trying every way a client could name another schema or tenant.
        let (st, _, row) = s
            .call(
                "POST",
                "/api/v1/resources?schema=tenant_beta&tenant=beta&tenant_id=beta",
                &[
                    ("x-api-key", &ka),
                    ("x-tenant-id", "beta"),
                    ("x-tenant-schema", "tenant_beta"),
                    ("x-forwarded-tenant", "beta"),
                ],
                Some(
                    json!({"name": "a-secret", "schema": "tenant_beta", "tenant_id": "beta",
                            "tenant": "beta", "data": {"search_path": "tenant_beta"}}),
                ),
            )
            .await;
        assert_eq!(st, 201, "{row}");
        let id = row["id"].as_str().unwrap().to_owned();
        // Created on first use, in acme's schema only.
        assert_eq!(schemas(&url).await, vec!["tenant_acme_one"]);
        assert_eq!(
            count_in(&url, "tenant_acme_one.demo_resources").await,
            Some(1)
        );
        assert_eq!(count_in(&url, "public.demo_resources").await, None);

        // beta sees nothing of it, whatever it sends.
        for path in [
            "/api/v1/resources".to_owned(),
            "/api/v1/resources?schema=tenant_acme_one&tenant_id=acme-one".to_owned(),
        ] {
            let (st, _, v) = s
                .call(
                    "GET",
                    &path,
                    &[("x-api-key", &kb), ("x-tenant-id", "acme-one")],
                    None,
                )
                .await;
            assert_eq!((st, v), (200, json!([])), "{path}");
        }
        assert_eq!(schemas(&url).await, vec!["tenant_acme_one", "tenant_beta"]);
        for method in ["GET", "PATCH", "DELETE"] {
            let body = (method == "PATCH").then(|| json!({"name": "stolen"}));
            let (st, _, v) = s
                .call(
                    method,
                    &format!("/api/v1/resources/{id}"),
                    &[("x-api-key", &kb), ("x-tenant-id", "acme-one")],
                    body,
                )
                .await;
            assert_error(st, &v, 404, "not_found");
        }
        let (st, v) = s.with_key("GET", "/api/v1/resources", &ka).await;
        assert_eq!(st, 200);
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v[0]["name"], "a-secret");

        // Straight to the demo: a header that is not a tenant id never names a schema.
        for bad in [
            "tenant_acme_one",
            "acme_one",
            "ACME-ONE",
            "public",
            "pg_catalog",
            "acme-one\";DROP_SCHEMA_tenant_beta",
            "acme-one,public",
            "acme-one;select",
            "../acme-one",
            "'acme-one'",
            "a",
        ] {
            let (st, v) = direct(
                &s,
                "GET",
                "/api/v1/resources",
                &[("x-tenant-id", bad)],
                None,
            )
            .await;
            if bad == "public" {
                // A valid tenant id: its own (empty) prefixed schema, never `public`.
                assert_eq!((st, &v), (200, &json!([])), "{bad}");
                continue;
            }
            assert_error(st, &v, 400, "missing_tenant");
        }
        let long = "x".repeat(64);
        let (st, v) = direct(
            &s,
            "GET",
            "/api/v1/resources",
            &[("x-tenant-id", &long)],
            None,
        )
        .await;
        assert_error(st, &v, 400, "missing_tenant");
        // The valid id got a prefixed schema; nothing else appeared, nothing was dropped.
        assert_eq!(
            schemas(&url).await,
            vec!["tenant_acme_one", "tenant_beta", "tenant_public"]
        );
        assert_eq!(
            count_in(&url, "tenant_acme_one.demo_resources").await,
            Some(1)
        );

        // A 60-character id (past PostgreSQL's identifier limit once prefixed) gets
        // a hashed schema of its own; a sibling with the same long prefix another.
        let long_a = format!("{}-a", "l".repeat(58));
        let long_b = format!("{}-b", "l".repeat(58));
        let (st, _) = direct(
            &s,
            "POST",
            "/api/v1/resources",
            &[("x-tenant-id", &long_a)],
            Some(json!({"name": "la"})),
        )
        .await;
        assert_eq!(st, 201);
        let (st, v) = direct(
            &s,
            "GET",
            "/api/v1/resources",
            &[("x-tenant-id", &long_b)],
            None,
        )
        .await;
        assert_eq!((st, v), (200, json!([])));
        let (_, v) = direct(
            &s,
            "GET",
            "/api/v1/resources",
            &[("x-tenant-id", &long_a)],
            None,
        )
        .await;
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn start_migrates_every_existing_tenant_schema() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    // A tenant schema left at version 1 by an older demo, made by hand.
    let mut c = pg(&url).await;
    for stmt in [
        "CREATE SCHEMA tenant_old_co",
        "CREATE TABLE tenant_old_co.demo_migrations (scope TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, applied_at BIGINT NOT NULL, PRIMARY KEY (scope, version))",
        "INSERT INTO tenant_old_co.demo_migrations VALUES ('tenant', 1, 'resources', 0)",
        "CREATE TABLE tenant_old_co.demo_resources (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, owner_id TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
        "INSERT INTO tenant_old_co.demo_resources VALUES ('r-1', 'old-co', 'kept', '{}', NULL, 1, 1)",
    ] {
        sqlx::query(stmt).execute(&mut c).await.unwrap();
    }
    assert_eq!(version(&mut c).await, 1);
    {
        let s = stack().store_url(&url).start().await;
        // Migrated at start, before any request of the tenant.
        assert_eq!(version(&mut c).await, 2);
        assert_eq!(
            count_in(&url, "tenant_old_co.demo_job_outputs").await,
            Some(0)
        );
        let (st, v) = direct(
            &s,
            "GET",
            "/api/v1/resources",
            &[("x-tenant-id", "old-co")],
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v[0]["name"], "kept", "{v}");
    }
    let _ = c.close().await;
    db.cleanup().await;
}

// ---- jobs ----------------------------------------------------------------------------

#[tokio::test]
async fn jobs_run_as_their_tenant_retry_with_backoff_and_fail_for_good() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    {
        let s = stack().store_url(&url).start().await;
        s.tenant("acme", "enterprise").await;
        s.tenant("beta", "enterprise").await;
        let (ka, _) = s.key("acme", "developer").await;
        let (kb, _) = s.key("beta", "developer").await;
        for name in ["one", "two"] {
            let (st, _, v) = s
                .call(
                    "POST",
                    "/api/v1/resources",
                    &[("x-api-key", &ka)],
                    Some(json!({"name": name})),
                )
                .await;
            assert_eq!(st, 201, "{v}");
        }
        let (st, _, v) = s
            .call(
                "POST",
                "/api/v1/resources",
                &[("x-api-key", &kb)],
                Some(json!({"name": "b"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");

        // Export: submitted through the proxy with a spoofed tenant; runs as acme.
        let (st, h, v) = s
            .call(
                "POST",
                "/api/v1/jobs",
                &[
                    ("x-api-key", &ka),
                    ("x-tenant-id", "beta"),
                    ("x-request-id", "job-req-1"),
                ],
                Some(json!({"kind": "export", "params": {}})),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        let rid = h["x-request-id"].to_str().unwrap().to_owned();
        let id = v["id"].as_str().unwrap().to_owned();
        let job = wait_job(&s, &ka, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["kind"], "export");
        assert_eq!(job["attempts"], 1);
        let r = &job["result"];
        assert_eq!(r["tenant_id"], "acme", "{job}");
        assert_eq!(r["request_id"], rid.as_str(), "{job}");
        assert_eq!(r["schema"], "tenant_acme", "{job}");
        assert_eq!(r["count"], 2, "{job}");
        let names: Vec<&str> = r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["one", "two"]);
        // What it wrote is in acme's schema only.
        assert_eq!(
            count_in(&url, "tenant_acme.demo_job_outputs").await,
            Some(1)
        );
        assert_eq!(
            count_in(&url, "tenant_beta.demo_job_outputs").await,
            Some(0)
        );

        // Another tenant's job is a 404, like a missing one.
        let (st, v) = s.with_key("GET", &format!("/api/v1/jobs/{id}"), &kb).await;
        assert_error(st, &v, 404, "not_found");
        let (st, v) = s
            .with_key(
                "GET",
                &format!("/api/v1/jobs/{}", uuid::Uuid::new_v4()),
                &ka,
            )
            .await;
        assert_error(st, &v, 404, "not_found");

        // Report for beta.
        let id = submit(&s, &kb, json!({"kind": "report"})).await;
        let job = wait_job(&s, &kb, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["tenant_id"], "beta");
        assert_eq!(job["result"]["count"], 1);

        // Bad submissions: 422 naming the field, 400 for a body that is not an object.
        for (body, field) in [
            (json!({}), "kind"),
            (json!({"kind": "delete"}), "kind"),
            (json!({"kind": "export", "params": "x"}), "params"),
            (
                json!({"kind": "export", "params": {"tenant_id": "beta"}}),
                "params",
            ),
            (
                json!({"kind": "export", "params": {"schema": "tenant_beta"}}),
                "params",
            ),
            (
                json!({"kind": "export", "params": {"max_attempts": 0}}),
                "params.max_attempts",
            ),
            (
                json!({"kind": "export", "params": {"fail_times": -1}}),
                "params.fail_times",
            ),
        ] {
            let (st, _, v) = s
                .call(
                    "POST",
                    "/api/v1/jobs",
                    &[("x-api-key", &ka)],
                    Some(body.clone()),
                )
                .await;
            assert_error(st, &v, 422, "validation_error");
            assert_eq!(v["error"]["field"], field, "{body}");
        }
        let (st, _, v) = s
            .call(
                "POST",
                "/api/v1/jobs",
                &[("x-api-key", &ka)],
                Some(json!([1])),
            )
            .await;
        assert_error(st, &v, 400, "bad_request");

        // Retries with backoff (0.5 s, then 1 s) until the third attempt succeeds.
        let started = Instant::now();
        let id = submit(
            &s,
            &ka,
            json!({"kind": "report", "params": {"fail_times": 2}}),
        )
        .await;
        let job = wait_job(&s, &ka, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 3, "{job}");
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "backoff: {:?}",
            started.elapsed()
        );
        // The retries were logged inside the job's span, with its tenant.
        let log = plain(&s.log());
        let retries: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&id) && l.contains("retrying"))
            .collect();
        assert_eq!(retries.len(), 2, "{log}");
        for l in retries {
            assert!(
                l.contains("tenant_id=acme") && l.contains("request_id="),
                "{l}"
            );
        }

        // Permanent failure: failed after max_attempts, with the last error.
        let id = submit(
            &s,
            &ka,
            json!({"kind": "export", "params": {"fail_times": 9, "max_attempts": 2}}),
        )
        .await;
        let job = wait_job(&s, &ka, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["attempts"], 2, "{job}");
        assert!(
            job["error"].as_str().unwrap().contains("simulated failure"),
            "{job}"
        );
        assert!(job.get("result").is_none(), "{job}");

        // The job meter, per tenant.
        let (st, v) = s.with_key("GET", "/api/v1/jobs/usage", &ka).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["jobs"], 3, "{v}");
        assert_eq!(v["attempts"], 1 + 3 + 2, "{v}");
        assert_eq!(v["kinds"]["export"]["failed"]["jobs"], 1, "{v}");
        let (_, v) = s.with_key("GET", "/api/v1/jobs/usage", &kb).await;
        assert_eq!(
            (v["jobs"].clone(), v["attempts"].clone()),
            (json!(1), json!(1)),
            "{v}"
        );
    }
    db.cleanup().await;
}

/// Kills the whole process mid-job and with a job queued for later; a new process
/// on the same store finishes both.
async fn jobs_survive_a_restart(store_url: &str, dir: Option<std::path::PathBuf>) {
    let builder = || {
        let b = stack().store_url(store_url);
        match &dir {
            Some(d) => b.dir(d.clone()),
            None => b,
        }
    };
    let (key, running, queued) = {
        let mut s = builder().start().await;
        s.tenant("acme", "enterprise").await;
        let (key, _) = s.key("acme", "developer").await;
        let running = submit(
            &s,
            &key,
            json!({"kind": "export", "params": {"sleep_ms": 3000}}),
        )
        .await;
        let up = eventually(Duration::from_secs(10), || async {
            let (_, v) = s
                .with_key("GET", &format!("/api/v1/jobs/{running}"), &key)
                .await;
            v["status"] == "running"
        })
        .await;
        assert!(up.is_some(), "job never ran:\n{}", s.log());
        // Fails its first attempt, so it waits queued (0.5 s backoff) when we kill.
        let queued = submit(
            &s,
            &key,
            json!({"kind": "report", "params": {"fail_times": 1, "sleep_ms": 200}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut child = s.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        (key, running, queued)
    };
    let s = builder().start().await;
    let job = wait_job(&s, &key, &running, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["result"]["tenant_id"], "acme");
    let job = wait_job(&s, &key, &queued, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["tenant_id"], "acme");
}

#[tokio::test]
async fn jobs_survive_a_restart_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    jobs_survive_a_restart(&db.url.clone(), None).await;
    db.cleanup().await;
}

#[tokio::test]
async fn jobs_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/tg.db", dir.path().display());
    jobs_survive_a_restart(&url, Some(dir.path().to_path_buf())).await;
}

/// With `require_assertion`, the tenant header that picks the schema is the one the
/// signed assertion vouches for: a direct caller forging it reaches no schema.
#[tokio::test]
async fn with_require_assertion_a_forged_tenant_header_reaches_no_schema() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    {
        let s = stack()
            .store_url(&url)
            .demo_extra("require_assertion = true")
            .start()
            .await;
        s.tenant("acme", "enterprise").await;
        let (key, _) = s.key("acme", "developer").await;
        let (st, _, v) = s
            .call(
                "POST",
                "/api/v1/resources",
                &[("x-api-key", &key)],
                Some(json!({"name": "a"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let id = submit(&s, &key, json!({"kind": "report"})).await;
        let job = wait_job(&s, &key, &id, Duration::from_secs(20)).await;
        assert_eq!(job["result"]["count"], 1, "{job}");
        for (method, path, body) in [
            ("GET", "/api/v1/resources", None),
            ("POST", "/api/v1/resources", Some(json!({"name": "x"}))),
            ("POST", "/api/v1/jobs", Some(json!({"kind": "export"}))),
        ] {
            let (st, v) = direct(
                &s,
                method,
                path,
                &[("x-tenant-id", "victim"), ("x-user-id", "u")],
                body,
            )
            .await;
            assert_error(st, &v, 401, "invalid_assertion");
        }
        assert_eq!(schemas(&url).await, vec!["tenant_acme"]);
    }
    db.cleanup().await;
}

/// SIGTERM while a job runs longer than the drain: the job is handed back to the
/// queue (due now, the interrupted attempt not counted) instead of waiting for its
/// lease to run out.
#[tokio::test]
async fn sigterm_hands_a_running_job_back_to_the_queue() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url.clone();
    {
        let mut s = stack().store_url(&url).start().await;
        s.tenant("acme", "enterprise").await;
        let (key, _) = s.key("acme", "developer").await;
        let id = submit(
            &s,
            &key,
            json!({"kind": "export", "params": {"sleep_ms": 9000}}),
        )
        .await;
        let up = eventually(Duration::from_secs(10), || async {
            let (_, v) = s.with_key("GET", &format!("/api/v1/jobs/{id}"), &key).await;
            v["status"] == "running"
        })
        .await;
        assert!(up.is_some(), "job never ran:\n{}", s.log());
        let st = s.sigterm();
        assert!(st.success(), "{st:?}\n{}", s.log());
        let mut c = pg(&url).await;
        let row = sqlx::query("SELECT status, attempts, locked_by FROM demo_jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("status"), "queued");
        assert_eq!(row.get::<i64, _>("attempts"), 0);
        assert_eq!(row.get::<Option<String>, _>("locked_by"), None);
        let _ = c.close().await;
    }
    db.cleanup().await;
}
