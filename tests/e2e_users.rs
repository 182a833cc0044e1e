#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Users have a lifecycle, and logins are hardened, through the real binary:
//! disabling, deleting, changing the role or the password of a user ends its login
//! tokens at the proxy and the admin API within a second; a re-created tenant does
//! not take the old tenant's tokens; failed logins are throttled per email and per
//! client IP (by the trusted-proxy rule), logged and counted.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::{eventually, stack, Stack};
use serde_json::{json, Value};
use std::time::Duration;

/// Propagation bound of the contract, with the polling margin.
const WITHIN: Duration = Duration::from_secs(2);

async fn login_raw(
    s: &Stack,
    tenant: &str,
    email: &str,
    password: &str,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut req = s
        .http
        .post(format!("{}/v1/auth/login", s.admin))
        .json(&json!({"tenant_id": tenant, "email": email, "password": password}));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

async fn login(s: &Stack, tenant: &str, email: &str, password: &str) -> String {
    let r = login_raw(s, tenant, email, password, None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// `(proxy status, proxy error code, admin API status)` for a login token.
async fn token_status(s: &Stack, tenant: &str, token: &str) -> (u16, String, u16) {
    let (p, v) = s.with_bearer("GET", "/api/v1/whoami", token).await;
    let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
    let (a, _) = s
        .admin_as(token, "GET", &format!("/v1/tenants/{tenant}"), None)
        .await;
    (p, code, a)
}

async fn user(s: &Stack, tenant: &str, email: &str, role: &str) -> String {
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{tenant}/users"),
            Some(json!({"email": email, "password": "password-123", "role": role})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Waits until `token` is refused by both the proxy (401 `invalid_token`) and the
/// admin API (401).
async fn refused_everywhere(s: &Stack, tenant: &str, token: &str, what: &str) {
    let took = eventually(WITHIN, || async {
        let (p, code, a) = token_status(s, tenant, token).await;
        p == 401 && code == "invalid_token" && a == 401
    })
    .await;
    let last = token_status(s, tenant, token).await;
    assert!(took.is_some(), "{what}: token still accepted: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_action_ends_login_tokens_at_proxy_and_admin_api() {
    let s = stack().start().await;
    let t = s.tenant("life", "pro").await;
    let actions: [(&str, Option<Value>); 4] = [
        ("disable", Some(json!({"status": "disabled"}))),
        ("role", Some(json!({"role": "developer"}))),
        ("password", Some(json!({"password": "another-password"}))),
        ("delete", None),
    ];
    for (what, patch) in actions {
        let email = format!("{what}@life.test");
        let id = user(&s, &t, &email, "admin").await;
        let token = login(&s, &t, &email, "password-123").await;
        // Accepted, and cached by the proxy's verified-token cache.
        for _ in 0..2 {
            assert_eq!(
                token_status(&s, &t, &token).await,
                (200, String::new(), 200)
            );
        }
        let path = format!("/v1/tenants/{t}/users/{id}");
        let (st, v) = match patch {
            Some(body) => s.admin("PATCH", &path, Some(body)).await,
            None => s.admin("DELETE", &path, None).await,
        };
        assert!(st == 200 || st == 204, "{what}: {st} {v}");
        refused_everywhere(&s, &t, &token, what).await;
    }
    // Other users' tokens are untouched.
    let admin = login(&s, &t, "admin@life.test", "password-life").await;
    assert_eq!(
        token_status(&s, &t, &admin).await,
        (200, String::new(), 200)
    );
    // The listing shows what happened, and never a hash.
    let (st, list) = s
        .admin("GET", &format!("/v1/tenants/{t}/users"), None)
        .await;
    assert_eq!(st, 200);
    let text = list.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password_hash"),
        "{text}"
    );
    let users = list.as_array().unwrap();
    assert_eq!(users.len(), 4, "{list}");
    assert!(users.iter().all(|u| u.get("password").is_none()), "{list}");
    let by_email = |e: &str| users.iter().find(|u| u["email"] == e).unwrap().clone();
    assert_eq!(by_email("disable@life.test")["status"], "disabled");
    assert_eq!(by_email("role@life.test")["role"], "developer");
    // A disabled user cannot log in (401 like a wrong password).
    let r = login_raw(&s, &t, "disable@life.test", "password-123", None).await;
    assert_eq!(r.status(), 401);
    // A new password works, the old one not.
    assert_eq!(
        login_raw(&s, &t, "password@life.test", "password-123", None)
            .await
            .status(),
        401
    );
    login(&s, &t, "password@life.test", "another-password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_tenant_does_not_accept_the_old_tenants_tokens() {
    let s = stack().start().await;
    let t = s.tenant("phoenix", "pro").await;
    let old = login(&s, &t, "admin@phoenix.test", "password-phoenix").await;
    let (key, _) = s.key(&t, "developer").await;
    assert_eq!(token_status(&s, &t, &old).await, (200, String::new(), 200));
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &key).await.0, 200);

    let (st, _) = s.admin("DELETE", &format!("/v1/tenants/{t}"), None).await;
    assert_eq!(st, 204);
    // Same id, same admin email and password.
    s.tenant("phoenix", "pro").await;
    refused_everywhere(&s, &t, &old, "token of the deleted tenant").await;
    let took = eventually(WITHIN, || async {
        s.with_key("GET", "/api/v1/whoami", &key).await.0 == 401
    })
    .await;
    assert!(
        took.is_some(),
        "API key of the deleted tenant still accepted"
    );
    let fresh = login(&s, &t, "admin@phoenix.test", "password-phoenix").await;
    assert_eq!(
        token_status(&s, &t, &fresh).await,
        (200, String::new(), 200)
    );
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("tenantgate_admin_login_failures_total{{reason=\"{reason}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_email_and_per_client_ip() {
    let s = stack().start().await;
    let t = s.tenant("thr", "pro").await;
    let admin_email = "admin@thr.test";
    for _ in 0..5 {
        let r = login_raw(&s, &t, admin_email, "wrong-password", None).await;
        assert_eq!(r.status(), 401);
    }
    // The right password does not bypass the throttle.
    let r = login_raw(&s, &t, admin_email, "password-thr", None).await;
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&after), "{after}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert!(v["error"]["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    // Per client IP: 20 failures from this address (5 above + 15 more, each a new
    // email), then even a fresh email is refused. Without trusted proxies a
    // forged x-forwarded-for changes nothing.
    for i in 0..15 {
        let r = login_raw(
            &s,
            &t,
            &format!("nobody{i}@thr.test"),
            "wrong-password",
            Some(&format!("203.0.113.{i}")),
        )
        .await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = login_raw(
        &s,
        &t,
        "fresh@thr.test",
        "whatever-pass",
        Some("198.51.100.1"),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    let m = s.text(&format!("{}/metrics", s.admin)).await;
    assert_eq!(failures(&m, "bad_credentials"), 20);
    assert_eq!(failures(&m, "throttled"), 2);
    // Logged without the password (nor the email).
    let log = s.log();
    assert!(log.contains("login failed"), "{log}");
    assert!(!log.contains("wrong-password") && !log.contains("password-thr"));
    assert!(!log.contains("nobody3@thr.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled() {
    let s = stack()
        .admin_extra("trusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let t = s.tenant("fwd", "pro").await;
    let attacker = "203.0.113.7";
    for i in 0..20 {
        let r = login_raw(
            &s,
            &t,
            &format!("u{i}@fwd.test"),
            "wrong-password",
            Some(&format!("10.9.9.9, {attacker}")),
        )
        .await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = login_raw(&s, &t, "admin@fwd.test", "password-fwd", Some(attacker)).await;
    assert_eq!(r.status(), 429);
    // Another client behind the same proxy logs in.
    let r = login_raw(
        &s,
        &t,
        "admin@fwd.test",
        "password-fwd",
        Some("198.51.100.2"),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_routes_refuse_bad_input_and_other_tenants() {
    let s = stack().start().await;
    let t = s.tenant("vals", "pro").await;
    let other = s.tenant("vals-other", "pro").await;
    let id = user(&s, &t, "dev@vals.test", "developer").await;
    let path = format!("/v1/tenants/{t}/users/{id}");
    // Nothing to change is no error: the user as it is.
    let (st, v) = s.admin("PATCH", &path, Some(json!({}))).await;
    assert_eq!((st, v["role"].as_str()), (200, Some("developer")), "{v}");
    for (body, field) in [
        (json!({"status": "deleted"}), "status"),
        (json!({"role": "ghost"}), "role"),
        (json!({"password": "short"}), "password"),
    ] {
        let (st, v) = s.admin("PATCH", &path, Some(body)).await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    for (method, body) in [("PATCH", Some(json!({"role": "admin"}))), ("DELETE", None)] {
        let (st, v) = s
            .admin(method, &format!("/v1/tenants/{t}/users/no-such-user"), body)
            .await;
        assert_eq!(st, 404, "{v}");
    }
    // Another tenant's admin: the tenant does not exist for it.
    let other_admin = login(&s, &other, "admin@vals-other.test", "password-vals-other").await;
    for (method, uri) in [
        ("GET", format!("/v1/tenants/{t}/users")),
        ("DELETE", path.clone()),
    ] {
        let (st, v) = s.admin_as(&other_admin, method, &uri, None).await;
        assert_eq!(st, 404, "{v}");
    }
    // A developer's login token is no admin credential.
    let dev = login(&s, &t, "dev@vals.test", "password-123").await;
    let (st, v) = s
        .admin_as(&dev, "PATCH", &path, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(st, 403, "{v}");
    // The tenant's own admin manages its users.
    let own = login(&s, &t, "admin@vals.test", "password-vals").await;
    let (st, v) = s
        .admin_as(&own, "PATCH", &path, Some(json!({"role": "read_only"})))
        .await;
    assert_eq!((st, v["role"].as_str()), (200, Some("read_only")), "{v}");
    let (st, _) = s.admin_as(&own, "DELETE", &path, None).await;
    assert_eq!(st, 204);

    // The OpenAPI document lists the operations once each.
    let doc: Value = s
        .http
        .get(format!("{}/openapi.json", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops = &doc["paths"]["/v1/tenants/{id}/users/{user_id}"];
    assert_eq!(ops["patch"]["operationId"], "updateUser");
    assert_eq!(ops["delete"]["operationId"], "deleteUser");
    assert_eq!(
        doc["paths"]["/v1/tenants/{id}/users"]["get"]["operationId"],
        "listUsers"
    );
    assert!(doc["paths"]["/v1/auth/login"]["post"]["responses"]["429"].is_object());
}

/// In a fleet (separate admin and proxy processes on PostgreSQL), a disabled
/// user's token is refused by every proxy within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_refuses_a_disabled_users_token_within_a_second() {
    let Some(db) = tenantgate_core::testing::TestDb::postgres().await else {
        return;
    };
    let mut f = fleet::Fleet::start(&db.url, 2, "").await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "fleetusers", "name": "F", "tier": "pro",
                "admin_user": {"email": "admin@f.test", "password": "password-f1"}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let user_id = v["admin_user"]["id"].as_str().unwrap().to_owned();
    let r = f
        .http
        .post(format!("{}/v1/auth/login", f.admin))
        .json(
            &json!({"tenant_id": "fleetusers", "email": "admin@f.test", "password": "password-f1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let via = |i: usize| {
        let (f, token) = (&f, &token);
        async move {
            f.http
                .get(format!("{}/api/v1/whoami", f.proxies[i]))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for i in 0..2 {
        assert_eq!(via(i).await, 200, "proxy {i}");
    }
    let (st, v) = f
        .admin(
            "PATCH",
            &format!("/v1/tenants/fleetusers/users/{user_id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for i in 0..2 {
        let took = eventually(Duration::from_secs(1), || async { via(i).await == 401 }).await;
        assert!(took.is_some(), "disable did not reach proxy {i} within 1 s");
    }
    f.stop_all();
    db.cleanup().await;
}
