//! `POST /v1/explain` and `tenantgate explain` through the real binary: the
//! proxy's own decision for a described request, stage by stage, without spending
//! anything and without echoing a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stack, Stack, TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const STAGES: [&str; 7] = [
    "route",
    "scrub",
    "authenticate",
    "tenant",
    "authorize",
    "limit",
    "quota",
];

async fn explain(s: &Stack, token: &str, body: Value) -> (u16, Value) {
    s.admin_as(token, "POST", "/v1/explain", Some(body)).await
}

fn step<'a>(v: &'a Value, stage: &str) -> &'a Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .unwrap_or_else(|| panic!("no {stage} step in {v}"))
}

/// The decision, status, code and the stage that refused (if any).
fn verdict(v: &Value) -> (String, u64, String, String) {
    let denied = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["outcome"] == "deny")
        .map(|s| s["stage"].as_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        v["decision"].as_str().unwrap().to_owned(),
        v["status"].as_u64().unwrap(),
        v["code"].as_str().unwrap_or("").to_owned(),
        denied,
    )
}

fn with_key(method: &str, path: &str, key: &str) -> Value {
    json!({"method": method, "path": path, "headers": {"X-API-Key": key}})
}

#[tokio::test]
async fn explains_every_stage_without_side_effects_or_secrets() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    s.tenant("beta", "pro").await;
    let (dev, _) = s.key("acme", "developer").await;
    let (ro, _) = s.key("acme", "read_only").await;
    let (beta_key, _) = s.key("beta", "developer").await;
    let (revoked, revoked_id) = s.key("acme", "developer").await;
    let (st, _) = s
        .admin(
            "DELETE",
            &format!("/v1/tenants/acme/api-keys/{revoked_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants/beta/domains",
            Some(json!({"domain": "api.beta.example"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Allowed: every stage in order, the key shown by its prefix only.
    let (st, v) = explain(
        &s,
        TOKEN,
        json!({"method": "GET", "path": "/api/v1/resources/42",
            "headers": {"X-API-Key": dev, "X-Tenant-Id": "beta"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(verdict(&v), ("allow".into(), 200, "".into(), "".into()));
    let stages: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, STAGES);
    assert_eq!(v["tenant_id"], "acme");
    assert!(step(&v, "scrub")["detail"]
        .as_str()
        .unwrap()
        .contains("x-tenant-id"));
    assert_eq!(step(&v, "quota")["outcome"], "skip");
    let text = v.to_string();
    let secret = dev.rsplit('_').next().unwrap();
    assert!(!text.contains(secret), "secret echoed: {text}");
    let prefix = dev.split('_').nth(1).unwrap();
    assert!(text.contains(&format!("tg_{prefix}_")), "{text}");

    // A login JWT is used, never shown.
    let jwt = s.tenant_admin_token("acme").await;
    let (_, v) = explain(
        &s,
        TOKEN,
        json!({"method": "GET", "path": "/api/v1/resources",
            "headers": {"Authorization": format!("Bearer {jwt}")}}),
    )
    .await;
    assert_eq!(v["decision"], "allow", "{v}");
    assert!(!v.to_string().contains(&jwt));

    // Each refusing stage.
    let cases = [
        (
            json!({"method": "GET", "path": "/nowhere"}),
            (404, "no_route", "route"),
        ),
        (
            json!({"method": "GET", "path": "/api/v1/resources"}),
            (401, "unauthorized", "authenticate"),
        ),
        (
            with_key("GET", "/api/v1/resources", "tg_nosuch_0123456789abcdef"),
            (401, "invalid_api_key", "authenticate"),
        ),
        (
            with_key("GET", "/api/v1/resources", &revoked),
            (401, "invalid_api_key", "authenticate"),
        ),
        (
            json!({"method": "GET", "path": "/api/v1/resources", "host": "api.beta.example",
                "headers": {"X-API-Key": dev}}),
            (403, "forbidden", "tenant"),
        ),
        (
            with_key("POST", "/api/v1/resources", &ro),
            (403, "forbidden", "authorize"),
        ),
    ];
    for (req, (status, code, stage)) in cases {
        let (st, v) = explain(&s, TOKEN, req.clone()).await;
        assert_eq!(st, 200, "{req}: {v}");
        assert_eq!(
            verdict(&v),
            ("deny".into(), status, code.into(), stage.into()),
            "{req}: {v}"
        );
        assert!(!v.to_string().contains(secret));
    }
    // The real proxy agrees on the RBAC refusal.
    let (st, _, _) = s
        .call(
            "POST",
            "/api/v1/resources",
            &[("x-api-key", &ro)],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 403);

    // Tenant admins: their own tenant's requests only.
    let (st, v) = explain(&s, &jwt, with_key("GET", "/api/v1/resources", &dev)).await;
    assert_eq!((st, v["decision"].as_str()), (200, Some("allow")), "{v}");
    let (st, v) = explain(&s, &jwt, with_key("GET", "/api/v1/resources", &beta_key)).await;
    assert_eq!(st, 403, "{v}");
    // No credential: nothing of another tenant to hide.
    let (st, _) = explain(&s, &jwt, json!({"method": "GET", "path": "/api/v1/x"})).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .admin_as(
            "nope",
            "POST",
            "/v1/explain",
            Some(json!({"method": "GET", "path": "/"})),
        )
        .await;
    assert_eq!(st, 401);
    let (st, v) = explain(&s, TOKEN, json!({"method": "GET", "path": "no-slash"})).await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("path")),
        "{v}"
    );

    // Nothing spent: a limit of 2 per hour survives many explanations, then the
    // real requests spend it and explain sees it exhausted.
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/acme/rate-limit",
            Some(json!({"max_requests": 2, "window_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        let (_, v) = explain(&s, TOKEN, with_key("GET", "/api/v1/resources", &dev)).await;
        assert_eq!(v["decision"], "allow", "{v}");
    }
    for _ in 0..2 {
        let (st, _, _) = s
            .call("GET", "/api/v1/resources", &[("x-api-key", &dev)], None)
            .await;
        assert_eq!(st, 200);
    }
    let (_, v) = explain(&s, TOKEN, with_key("GET", "/api/v1/resources", &dev)).await;
    assert_eq!(
        verdict(&v),
        ("deny".into(), 429, "rate_limited".into(), "limit".into()),
        "{v}"
    );
    assert_eq!(step(&v, "quota")["outcome"], "skip");

    // Quota: one request a day, spent by a real request.
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/beta/quota",
            Some(json!({"period": "day", "max_requests": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let (_, v) = explain(&s, TOKEN, with_key("GET", "/api/v1/resources", &beta_key)).await;
        assert_eq!(v["decision"], "allow", "{v}");
        assert_eq!(step(&v, "quota")["outcome"], "pass", "{v}");
    }
    let (st, _, _) = s
        .call(
            "GET",
            "/api/v1/resources",
            &[("x-api-key", &beta_key)],
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = explain(&s, TOKEN, with_key("GET", "/api/v1/resources", &beta_key)).await;
    assert_eq!(
        verdict(&v),
        ("deny".into(), 429, "quota_exceeded".into(), "quota".into()),
        "{v}"
    );

    // The CLI prints the trace (table and JSON); a refusal explained is success.
    let bin = env!("CARGO_BIN_EXE_tenantgate");
    let out = std::process::Command::new(bin)
        .args(["explain", "POST", "/api/v1/resources", "-H"])
        .arg(format!("X-API-Key: {ro}"))
        .args(["--admin-url", &s.admin, "--token", TOKEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deny"), "{stdout}");
    for stage in STAGES {
        assert!(stdout.contains(stage), "{stage} missing: {stdout}");
    }
    assert!(!stdout.contains(secret));
    let out = std::process::Command::new(bin)
        .args(["explain", "GET", "/api/v1/resources", "-o", "json"])
        .args(["-H", &format!("x-api-key: {dev}")])
        .args(["--admin-url", &s.admin, "--token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 7);
    // A bad header is a usage error (2); a bad token an API error (1).
    let out = std::process::Command::new(bin)
        .args(["explain", "GET", "/", "-H", "no-colon"])
        .args(["--admin-url", &s.admin, "--token", TOKEN])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(bin)
        .args(["explain", "GET", "/"])
        .args(["--admin-url", &s.admin, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
