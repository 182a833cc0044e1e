#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The demo upstream driven in-process, every case on SQLite and on PostgreSQL.

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use std::future::Future;
use tenantgate_core::testing::TestDb;
use tenantgate_demo::{app, init, DemoState};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    json: Value,
    raw: Vec<u8>,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_owned())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let raw = to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply { status, json, raw }
}

const A: &[(&str, &str)] = &[("x-tenant-id", "tenant-a"), ("x-user-id", "user-a")];
const B: &[(&str, &str)] = &[("x-tenant-id", "tenant-b"), ("x-user-id", "user-b")];

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.json);
    assert_eq!(r.json["error"]["code"], code, "body: {}", r.json);
    assert!(r.json["error"]["message"].is_string(), "body: {}", r.json);
    assert!(
        r.json["error"]["request_id"].is_string(),
        "body: {}",
        r.json
    );
}

async fn create(app: &Router, h: &[(&str, &str)], body: Value) -> Value {
    let r = call(app, "POST", "/api/v1/resources", h, Some(&body.to_string())).await;
    assert_eq!(r.status, StatusCode::CREATED, "body: {}", r.json);
    r.json
}

// ---- cases -----------------------------------------------------------------------

async fn crud_round_trip(state: DemoState) {
    let app = app(state);
    let created = create(&app, A, json!({"name": "first", "data": {"k": [1, 2]}})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(
        created,
        json!({"id": id, "name": "first", "data": {"k": [1, 2]}, "owner_id": "user-a"})
    );

    let r = call(&app, "GET", &format!("/api/v1/resources/{id}"), A, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, created);

    let second = create(&app, A, json!({"name": "second"})).await;
    assert_eq!(second["data"], json!({}));
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, json!([created, second]));
    let r = call(&app, "GET", "/api/v1/resources?limit=1&offset=1", A, None).await;
    assert_eq!(r.json, json!([second]));

    let r = call(
        &app,
        "PUT",
        &format!("/api/v1/resources/{id}"),
        A,
        Some(r#"{"name":"renamed"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["name"], "renamed");
    assert_eq!(r.json["data"], json!({"k": [1, 2]}));

    let r = call(
        &app,
        "PATCH",
        &format!("/api/v1/resources/{id}"),
        A,
        Some(r#"{"data":{"v":2}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json,
        json!({"id": id, "name": "renamed", "data": {"v": 2}, "owner_id": "user-a"})
    );
    let r = call(&app, "GET", &format!("/api/v1/resources/{id}"), A, None).await;
    assert_eq!(r.json["data"], json!({"v": 2}));

    let r = call(&app, "DELETE", &format!("/api/v1/resources/{id}"), A, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.raw.is_empty());
    let r = call(&app, "GET", &format!("/api/v1/resources/{id}"), A, None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, "DELETE", &format!("/api/v1/resources/{id}"), A, None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([second]));
}

async fn tenant_isolation(state: DemoState) {
    let app = app(state);
    let row = create(&app, A, json!({"name": "a-secret", "data": {"x": 1}})).await;
    let id = row["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/resources/{id}");
    let missing = format!("/api/v1/resources/{}", uuid::Uuid::new_v4());

    let r = call(&app, "GET", "/api/v1/resources", B, None).await;
    assert_eq!((r.status, r.json), (StatusCode::OK, json!([])));
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(r#"{"name":"stolen"}"#)),
        ("PATCH", Some(r#"{"data":{"x":2}}"#)),
        ("DELETE", None),
    ] {
        let theirs = call(&app, method, &path, B, body).await;
        assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
        // Indistinguishable from a row that does not exist at all.
        let nobody = call(&app, method, &missing, B, body).await;
        assert_eq!(nobody.status, theirs.status);
        assert_eq!(
            nobody.json["error"]["message"],
            theirs.json["error"]["message"]
        );
    }

    let r = call(&app, "GET", &path, A, None).await;
    assert_eq!((r.status, r.json), (StatusCode::OK, row.clone()));
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([row]));
    // B's own rows stay apart from A's.
    let b_row = create(&app, B, json!({"name": "b-row"})).await;
    assert_eq!(b_row["owner_id"], "user-b");
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([row]));
}

async fn missing_tenant_is_400(state: DemoState) {
    let app = app(state);
    let id = uuid::Uuid::new_v4();
    let item = format!("/api/v1/resources/{id}");
    let routes: [(&str, &str, Option<&str>); 9] = [
        ("GET", "/api/v1/resources", None),
        ("POST", "/api/v1/resources", Some(r#"{"name":"x"}"#)),
        ("GET", &item, None),
        ("PUT", &item, Some(r#"{"name":"x"}"#)),
        ("PATCH", &item, Some(r#"{"name":"x"}"#)),
        ("DELETE", &item, None),
        ("GET", "/api/v1/echo", None),
        ("POST", "/api/v1/echo", Some("{}")),
        ("GET", "/api/v1/bytes/3", None),
    ];
    for (method, uri, body) in routes {
        let r = call(&app, method, uri, &[("x-request-id", "req-123")], body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "missing_tenant");
        assert_eq!(r.json["error"]["request_id"], "req-123", "{method} {uri}");

        let r = call(&app, method, uri, &[], body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "missing_tenant");
        let rid = r.json["error"]["request_id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(rid).is_ok(), "{rid}");

        for bad in ["", "   ", "has space"] {
            let r = call(&app, method, uri, &[("x-tenant-id", bad)], body).await;
            assert_error(&r, StatusCode::BAD_REQUEST, "missing_tenant");
        }
    }
    // Nothing was created by the rejected POST.
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([]));
}

async fn whoami_without_headers(state: DemoState) {
    let app = app(state);
    let r = call(&app, "GET", "/api/v1/whoami", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    for field in [
        "tenant_id",
        "user_id",
        "role",
        "auth_method",
        "api_key_id",
        "request_id",
    ] {
        assert!(
            r.json.get(field).is_some_and(Value::is_null),
            "{field}: {}",
            r.json
        );
    }
    assert_eq!(r.json["headers"], json!({}));
    assert_eq!(r.json["method"], "GET");
    assert_eq!(r.json["path"], "/api/v1/whoami");
}

async fn whoami_with_headers(state: DemoState) {
    let app = app(state);
    let headers = [
        ("x-tenant-id", "acme"),
        ("x-user-id", "u-1"),
        ("x-tenant-role", "developer"),
        ("x-auth-method", "api_key"),
        ("x-api-key-id", "key-9"),
        ("x-request-id", "req-7"),
        ("X-Custom-Thing", "yes"),
        ("authorization", "Bearer nope"),
    ];
    let r = call(&app, "GET", "/api/v1/whoami?x=1", &headers, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["tenant_id"], "acme");
    assert_eq!(r.json["user_id"], "u-1");
    assert_eq!(r.json["role"], "developer");
    assert_eq!(r.json["auth_method"], "api_key");
    assert_eq!(r.json["api_key_id"], "key-9");
    assert_eq!(r.json["request_id"], "req-7");
    assert_eq!(r.json["query"], "x=1");
    assert_eq!(
        r.json["headers"],
        json!({
            "x-tenant-id": "acme", "x-user-id": "u-1", "x-tenant-role": "developer",
            "x-auth-method": "api_key", "x-api-key-id": "key-9", "x-request-id": "req-7",
            "x-custom-thing": "yes"
        })
    );
    // A duplicated identity header is shown, not hidden.
    let r = call(
        &app,
        "GET",
        "/api/v1/whoami",
        &[("x-tenant-id", "a"), ("x-tenant-id", "b")],
        None,
    )
    .await;
    assert_eq!(r.json["tenant_id"], "a, b");
}

async fn bad_json_is_400(state: DemoState) {
    let app = app(state);
    let row = create(&app, A, json!({"name": "keep"})).await;
    let item = format!("/api/v1/resources/{}", row["id"].as_str().unwrap());
    for body in ["{", "not json", "", "[1,2]", "\"name\"", "null"] {
        let r = call(&app, "POST", "/api/v1/resources", A, Some(body)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
        for method in ["PUT", "PATCH"] {
            let r = call(&app, method, &item, A, Some(body)).await;
            assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
        }
    }
    let r = call(&app, "GET", "/api/v1/resources?limit=abc", A, None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([row]));
}

async fn validation_is_422(state: DemoState) {
    let app = app(state);
    let row = create(&app, A, json!({"name": "keep"})).await;
    let item = format!("/api/v1/resources/{}", row["id"].as_str().unwrap());
    let long = "n".repeat(201);
    let bad_bodies = [
        json!({"name": ""}),
        json!({"name": "  "}),
        json!({"name": long}),
        json!({"name": 42}),
        json!({"name": null}),
    ];
    for body in &bad_bodies {
        let body = body.to_string();
        let r = call(&app, "POST", "/api/v1/resources", A, Some(&body)).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        assert_eq!(r.json["error"]["field"], "name");
        for method in ["PUT", "PATCH"] {
            let r = call(&app, method, &item, A, Some(&body)).await;
            assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
            assert_eq!(r.json["error"]["field"], "name");
        }
    }
    let r = call(&app, "POST", "/api/v1/resources", A, Some(r#"{"data":{}}"#)).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    assert_eq!(r.json["error"]["field"], "name");
    // Exactly 200 characters is fine.
    create(&app, A, json!({"name": "é".repeat(200)})).await;
    let r = call(&app, "GET", &item, A, None).await;
    assert_eq!(r.json, row);
    let r = call(&app, "GET", "/api/v1/resources?limit=0", A, None).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    assert_eq!(r.json["error"]["field"], "limit");
}

async fn unknown_path_is_404_json(state: DemoState) {
    let app = app(state);
    for uri in [
        "/api/v1/nope",
        "/api/v1/resources/x/y",
        "/api/v2/resources",
        "/nope",
        "/",
    ] {
        for h in [A, &[][..]] {
            let r = call(&app, "GET", uri, h, None).await;
            assert_error(&r, StatusCode::NOT_FOUND, "not_found");
        }
    }
    let r = call(&app, "DELETE", "/api/v1/resources", A, None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

async fn echo_and_bytes(state: DemoState) {
    let app = app(state);
    let r = call(&app, "GET", "/api/v1/echo", A, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["method"], "GET");
    assert_eq!(r.json["body_len"], 0);
    let r = call(&app, "POST", "/api/v1/echo", A, Some("hello")).await;
    assert_eq!(
        (r.status, r.json["body_len"].clone()),
        (StatusCode::OK, json!(5))
    );
    assert_eq!(r.json["path"], "/api/v1/echo");

    // Echo reads bodies beyond the 1 MiB limit of the resource routes.
    let big = "x".repeat(2 * 1024 * 1024);
    let r = call(&app, "POST", "/api/v1/echo", A, Some(&big)).await;
    assert_eq!(
        (r.status, r.json["body_len"].clone()),
        (StatusCode::OK, json!(big.len()))
    );
    let too_big = format!(r#"{{"name":"n","data":"{big}"}}"#);
    let r = call(&app, "POST", "/api/v1/resources", A, Some(&too_big)).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let r = call(&app, "GET", "/api/v1/bytes/7", A, None).await;
    assert_eq!((r.status, r.raw.len()), (StatusCode::OK, 7));
    let r = call(&app, "GET", "/api/v1/bytes/0", A, None).await;
    assert_eq!((r.status, r.raw.len()), (StatusCode::OK, 0));
    let r = call(
        &app,
        "GET",
        &format!("/api/v1/bytes/{}", 10 * 1024 * 1024),
        A,
        None,
    )
    .await;
    assert_eq!((r.status, r.raw.len()), (StatusCode::OK, 10 * 1024 * 1024));
    for n in ["10485761", "-1", "abc"] {
        let r = call(&app, "GET", &format!("/api/v1/bytes/{n}"), A, None).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        assert_eq!(r.json["error"]["field"], "n");
    }
}

async fn health_and_store_outage(state: DemoState) {
    let app = app(state.clone());
    let r = call(&app, "GET", "/health", &[], None).await;
    assert_eq!(
        (r.status, r.json),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let row = create(&app, A, json!({"name": "x"})).await;

    state.close().await;
    let r = call(&app, "GET", "/health", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let item = format!("/api/v1/resources/{}", row["id"].as_str().unwrap());
    for (method, uri, body) in [
        ("GET", "/api/v1/resources", None),
        ("POST", "/api/v1/resources", Some(r#"{"name":"y"}"#)),
        ("GET", item.as_str(), None),
        ("PATCH", item.as_str(), Some(r#"{"name":"y"}"#)),
        ("DELETE", item.as_str(), None),
    ] {
        let r = call(&app, method, uri, A, body).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
}

/// `init` is idempotent: a second instance on the same store sees the same rows.
async fn init_twice_shares_rows(state: DemoState) {
    let first = app(state.clone());
    let row = create(&first, A, json!({"name": "shared"})).await;
    let again = tenantgate_demo::init_with_store(state.store().clone())
        .await
        .unwrap();
    let second = app(again);
    let r = call(&second, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json, json!([row]));
}

/// Jobs in-process (no worker runs here): submission, status, tenant scoping.
async fn jobs_api(state: DemoState) {
    let app = app(state);
    let r = call(
        &app,
        "POST",
        "/api/v1/jobs",
        A,
        Some(r#"{"kind":"export","params":{"max_attempts":4}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "body: {}", r.json);
    assert_eq!(r.json["status"], "queued");
    let id = r.json["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{id}");
    let r = call(&app, "GET", &path, A, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json,
        json!({"id": id, "kind": "export", "status": "queued", "attempts": 0, "max_attempts": 4})
    );
    let r = call(&app, "GET", &path, B, None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, "GET", "/api/v1/jobs/usage", A, None).await;
    assert_eq!(r.json["jobs"], 1, "{}", r.json);
    assert_eq!(r.json["kinds"]["export"]["queued"]["jobs"], 1, "{}", r.json);
    let r = call(&app, "GET", "/api/v1/jobs/usage", B, None).await;
    assert_eq!(r.json["jobs"], 0, "{}", r.json);
    for (body, field) in [
        (r#"{"kind":"x"}"#, "kind"),
        (r#"{"params":{}}"#, "kind"),
        (
            r#"{"kind":"report","params":{"schema":"public"}}"#,
            "params",
        ),
        (
            r#"{"kind":"report","params":{"sleep_ms":600000}}"#,
            "params.sleep_ms",
        ),
    ] {
        let r = call(&app, "POST", "/api/v1/jobs", A, Some(body)).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        assert_eq!(r.json["error"]["field"], field, "{body}");
    }
    let r = call(&app, "POST", "/api/v1/jobs", A, Some("[]")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = call(
        &app,
        "POST",
        "/api/v1/jobs",
        &[],
        Some(r#"{"kind":"export"}"#),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "missing_tenant");
}

/// The queue's lease: an expired claim is taken over, and the worker that lost it
/// can no longer record an outcome.
async fn job_lease_guards_the_outcome(state: DemoState) {
    use tenantgate_demo::jobs::queue;
    let app = app(state.clone());
    let r = call(
        &app,
        "POST",
        "/api/v1/jobs",
        A,
        Some(r#"{"kind":"report"}"#),
    )
    .await;
    let id = r.json["id"].as_str().unwrap().to_owned();
    let (pool, backend) = (state.pool(), state.tenancy().backend());
    let now = tenantgate_core::time::now_ms() + 1;
    let first = queue::claim(pool, backend, "t1", now, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.attempts, first.tenant_id.as_str()),
        (id.as_str(), 1, "tenant-a")
    );
    // Held: nobody else gets it before the lease ends.
    assert!(queue::claim(pool, backend, "t2", now + 50, 100)
        .await
        .unwrap()
        .is_none());
    let second = queue::claim(pool, backend, "t2", now + 200, 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.id.as_str(), second.attempts), (id.as_str(), 2));
    let done = serde_json::json!({"ok": true});
    let ok = queue::Outcome::Succeeded(&done);
    assert!(!queue::finish(pool, &id, "t1", &ok, now + 300)
        .await
        .unwrap());
    assert!(!queue::extend(pool, &id, "t1", now + 9_000).await.unwrap());
    assert!(queue::finish(pool, &id, "t2", &ok, now + 300)
        .await
        .unwrap());
    let r = call(&app, "GET", &format!("/api/v1/jobs/{id}"), A, None).await;
    assert_eq!(r.json["status"], "succeeded");
    assert_eq!(r.json["result"], done);
    assert!(queue::claim(pool, backend, "t3", now + 60_000, 100)
        .await
        .unwrap()
        .is_none());
}

// ---- PostgreSQL only: the schema-per-tenant router ----------------------------------

/// A pool of one connection: after tenant requests (one of them abandoning its
/// transaction half-way), the connection is back at the default `search_path`.
#[tokio::test]
async fn pooled_connections_never_keep_a_tenant_search_path() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = tenantgate_core::Store::connect(&db.url, 1).await.unwrap();
    let state = tenantgate_demo::init_with_store(store).await.unwrap();
    let app = app(state.clone());
    create(&app, A, json!({"name": "a"})).await;
    {
        let mut tx = state.tenancy().begin("tenant-b").await.unwrap();
        let r = sqlx::query("SELECT current_setting('search_path') AS p")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let p: String = sqlx::Row::get(&r, "p");
        assert_eq!(p, "\"tenant_tenant_b\", pg_temp");
        // dropped without commit
    }
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    let row = sqlx::query("SELECT current_setting('search_path') AS p")
        .fetch_one(state.pool())
        .await
        .unwrap();
    let p: String = sqlx::Row::get(&row, "p");
    assert_eq!(p, "\"$user\", public");
    // Outside a tenant transaction there is no resource table to reach.
    assert!(sqlx::query("SELECT COUNT(*) FROM demo_resources")
        .execute(state.pool())
        .await
        .is_err());
    // A schema dropped behind the process's back is created again on next use.
    sqlx::query("DROP SCHEMA tenant_tenant_a CASCADE")
        .execute(state.pool())
        .await
        .unwrap();
    let r = call(&app, "GET", "/api/v1/resources", A, None).await;
    assert_eq!((r.status, r.json), (StatusCode::OK, json!([])));
    create(&app, A, json!({"name": "again"})).await;
    // A tenant id that cannot name a schema is refused before any SQL.
    let r = call(
        &app,
        "GET",
        "/api/v1/resources",
        &[("x-tenant-id", "x")],
        None,
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "missing_tenant");
    state.close().await;
    db.cleanup().await;
}

// ---- backends --------------------------------------------------------------------

async fn run_on<F, Fut>(db: TestDb, case: F)
where
    F: FnOnce(DemoState) -> Fut,
    Fut: Future<Output = ()>,
{
    let state = init(&db.url).await.unwrap();
    case(state.clone()).await;
    state.close().await;
    db.cleanup().await;
}

async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(DemoState) -> Fut,
    Fut: Future<Output = ()>,
{
    run_on(TestDb::sqlite(), case).await;
}

async fn run_postgres<F, Fut>(case: F)
where
    F: FnOnce(DemoState) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(db) = TestDb::postgres().await {
        run_on(db, case).await;
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $case() { super::run_sqlite(super::$case).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $case() { super::run_postgres(super::$case).await } )*
        }
    };
}

on_both_backends!(
    crud_round_trip,
    tenant_isolation,
    missing_tenant_is_400,
    whoami_without_headers,
    whoami_with_headers,
    bad_json_is_400,
    validation_is_422,
    unknown_path_is_404_json,
    echo_and_bytes,
    health_and_store_outage,
    init_twice_shares_rows,
    jobs_api,
    job_lease_guards_the_outcome,
);
