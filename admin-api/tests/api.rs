#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin API driven in-process (`tower::ServiceExt::oneshot`), the same suite
//! on SQLite and on PostgreSQL.

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;
use std::future::Future;
use tenantgate_admin::{app, build_state, AdminOptions, AdminState};
use tenantgate_core::jwt::{LoginClaims, SigningKey, LOGIN_AUDIENCE};
use tenantgate_core::testing::TestDb;
use tenantgate_core::Store;
use tower::ServiceExt;

const TOKEN: &str = "test-bootstrap-token-0123456789";
const ISSUER: &str = "tenantgate-test";
const TTL: u64 = 900;

fn options(kek: [u8; 32]) -> AdminOptions {
    use sha2::Digest;
    AdminOptions {
        bootstrap_token_sha256: sha2::Sha256::digest(TOKEN.as_bytes()).into(),
        issuer: ISSUER.into(),
        token_ttl_seconds: TTL,
        api_key_pepper: None,
        kek,
        assertion_algorithm: tenantgate_core::assertion::AssertionAlg::Es256,
        assertion_publish_ahead: std::time::Duration::from_secs(60),
        trusted_proxies: Vec::new(),
        login_limits: tenantgate_admin::login_guard::LoginLimits::default(),
        reserved_issuers: vec![ISSUER.into(), "https://configured.example".into()],
        allow_insecure_jwks: false,
        // Minute usage from 2024 stays answerable (the fixtures are dated).
        retention: tenantgate_core::config::RetentionSettings {
            usage_minute: std::time::Duration::from_secs(50 * 365 * 86_400),
            usage_hour: std::time::Duration::from_secs(50 * 365 * 86_400),
            ..Default::default()
        },
        upstream_pools: vec!["silo-a".into()],
        autoscale: Vec::new(),
        scaling: Default::default(),
        proxy_admin_url: None,
    }
}

#[derive(Clone)]
struct H {
    app: Router,
    state: AdminState,
}

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        &self.body
    }

    /// An error in the contract's shape with this status and code.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        let err = &self.body["error"];
        assert_eq!(err["code"], code, "body: {}", self.text);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        let rid = err["request_id"].as_str().expect("request_id");
        assert!(!rid.is_empty());
        assert_eq!(self.headers["x-request-id"].to_str().unwrap(), rid);
        assert!(self.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        err
    }

    #[track_caller]
    fn invalid(&self, field: &str) {
        let err = self.error(422, "validation_error");
        assert_eq!(err["field"], field, "body: {}", self.text);
    }
}

impl H {
    async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 16 * 1024 * 1024)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    async fn raw(&self, method: &str, uri: &str, token: Option<&str>, body: &str) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        self.send(b.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, uri, token, &text).await
    }

    /// As the platform admin.
    async fn p(&self, method: &str, uri: &str, body: Option<Value>) -> Resp {
        self.call(method, uri, Some(TOKEN), body).await
    }

    async fn tenant(&self, id: &str, tier: &str) -> Value {
        self.p(
            "POST",
            "/v1/tenants",
            Some(json!({"id": id, "name": format!("Tenant {id}"), "tier": tier})),
        )
        .await
        .expect(201)
        .clone()
    }

    /// A tenant with an admin user; returns the admin's login token.
    async fn tenant_with_admin(&self, id: &str) -> String {
        self.p(
            "POST",
            "/v1/tenants",
            Some(json!({"id": id, "name": id, "tier": "pro",
                "admin_user": {"email": format!("admin@{id}.example"), "password": "correct horse battery"}})),
        )
        .await
        .expect(201);
        self.login(id, &format!("admin@{id}.example"), "correct horse battery")
            .await
    }

    async fn user(&self, tenant: &str, email: &str, role: &str) -> Value {
        self.p(
            "POST",
            &format!("/v1/tenants/{tenant}/users"),
            Some(json!({"email": email, "password": "password123", "role": role})),
        )
        .await
        .expect(201)
        .clone()
    }

    async fn login(&self, tenant: &str, email: &str, password: &str) -> String {
        let r = self
            .call(
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"tenant_id": tenant, "email": email, "password": password})),
            )
            .await;
        r.expect(200)["access_token"].as_str().unwrap().to_owned()
    }

    fn store(&self) -> &Store {
        self.state.store()
    }
}

async fn harness(url: &str) -> H {
    let store = Store::open(url, 5).await.unwrap();
    let state = build_state(store, options([7u8; 32])).await.unwrap();
    H {
        app: app(state.clone()),
        state,
    }
}

/// Runs `f` against a fresh database, cleaning it up even when `f` panics.
async fn run<F, Fut>(db: TestDb, f: F)
where
    F: FnOnce(H, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let h = harness(&db.url).await;
    let store = h.store().clone();
    let res = tokio::spawn(f(h, db.url.clone())).await;
    store.close().await;
    db.cleanup().await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Each named `async fn(H, url)` runs as `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::run(super::TestDb::sqlite(), super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = super::TestDb::postgres().await {
                    super::run(db, super::$name).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    auth_matrix,
    forged_and_foreign_tokens_are_rejected,
    tenants_crud_and_onboarding,
    tenant_validation,
    api_keys_lifecycle,
    api_key_validation,
    api_key_rotation,
    users_and_password_hashes,
    user_lifecycle,
    user_lifecycle_validation,
    login_throttling,
    tenant_recreation_drops_old_tokens,
    login_and_jwks,
    policies,
    rate_limits,
    usage,
    meta_routes,
    error_shapes,
    signing_keys_persist_and_rotate,
    store_failures_are_503,
    tenant_upstream_pools,
    scaling_events_api,
);

fn is_rfc3339_z(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z') && s.len() == 20
}

// ---- auth -----------------------------------------------------------------------------

async fn auth_matrix(h: H, _url: String) {
    // No credential, a bad one, a wrong scheme: 401 with WWW-Authenticate.
    for token in [None, Some("nope"), Some("tg_abc_def")] {
        let r = h.call("GET", "/v1/tenants", token, None).await;
        r.error(401, "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let basic = Request::builder()
        .uri("/v1/tenants")
        .header("authorization", format!("Basic {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    h.send(basic).await.error(401, "unauthorized");

    let alpha = h.tenant_with_admin("alpha").await;
    h.tenant("beta", "free").await;

    // Own tenant: fine.
    h.call("GET", "/v1/tenants/alpha", Some(&alpha), None)
        .await
        .expect(200);
    h.call("GET", "/v1/tenants/alpha/api-keys", Some(&alpha), None)
        .await
        .expect(200);
    h.call("GET", "/v1/tenants/alpha/users", Some(&alpha), None)
        .await
        .expect(200);
    h.call(
        "GET",
        "/v1/tenants/alpha/policies/admin",
        Some(&alpha),
        None,
    )
    .await
    .expect(200);
    h.call("GET", "/v1/tenants/alpha/rate-limit", Some(&alpha), None)
        .await
        .expect(200);
    h.call("GET", "/v1/tenants/alpha/usage", Some(&alpha), None)
        .await
        .expect(200);
    h.call(
        "POST",
        "/v1/tenants/alpha/api-keys",
        Some(&alpha),
        Some(json!({"name": "ci", "role": "developer"})),
    )
    .await
    .expect(201);

    // Another tenant: as if it did not exist, whatever the route.
    for (m, uri) in [
        ("GET", "/v1/tenants/beta"),
        ("PATCH", "/v1/tenants/beta"),
        ("DELETE", "/v1/tenants/beta"),
        ("GET", "/v1/tenants/beta/api-keys"),
        ("POST", "/v1/tenants/beta/api-keys"),
        ("GET", "/v1/tenants/beta/users"),
        ("GET", "/v1/tenants/beta/policies"),
        ("GET", "/v1/tenants/beta/policies/admin"),
        ("PUT", "/v1/tenants/beta/rate-limit"),
        ("GET", "/v1/tenants/beta/usage"),
        ("GET", "/v1/tenants/nonexistent"),
    ] {
        h.call(m, uri, Some(&alpha), Some(json!({"name": "x"})))
            .await
            .error(404, "not_found");
    }

    // Platform-wide routes: 403.
    h.call("GET", "/v1/tenants", Some(&alpha), None)
        .await
        .error(403, "forbidden");
    h.call(
        "POST",
        "/v1/tenants",
        Some(&alpha),
        Some(json!({"name": "x", "tier": "free"})),
    )
    .await
    .error(403, "forbidden");
    h.call("DELETE", "/v1/tenants/alpha", Some(&alpha), None)
        .await
        .error(403, "forbidden");
    h.call(
        "PATCH",
        "/v1/tenants/alpha",
        Some(&alpha),
        Some(json!({"tier": "enterprise"})),
    )
    .await
    .error(403, "forbidden");
    h.call(
        "PATCH",
        "/v1/tenants/alpha",
        Some(&alpha),
        Some(json!({"status": "active"})),
    )
    .await
    .error(403, "forbidden");
    // ... but the name of its own tenant it may change.
    let r = h
        .call(
            "PATCH",
            "/v1/tenants/alpha",
            Some(&alpha),
            Some(json!({"name": "Alpha Inc"})),
        )
        .await;
    assert_eq!(r.expect(200)["name"], "Alpha Inc");
    assert_eq!(r.body["tier"], "pro");

    // A valid login token of a non-admin role: 403.
    h.user("alpha", "dev@alpha.example", "developer").await;
    let dev = h.login("alpha", "dev@alpha.example", "password123").await;
    h.call("GET", "/v1/tenants/alpha", Some(&dev), None)
        .await
        .error(403, "forbidden");
    h.call("GET", "/v1/tenants", Some(&dev), None)
        .await
        .error(403, "forbidden");

    // A suspended tenant's admin is stopped.
    h.p(
        "PATCH",
        "/v1/tenants/alpha",
        Some(json!({"status": "suspended"})),
    )
    .await
    .expect(200);
    h.call("GET", "/v1/tenants/alpha", Some(&alpha), None)
        .await
        .error(403, "tenant_suspended");
    h.p(
        "PATCH",
        "/v1/tenants/alpha",
        Some(json!({"status": "active"})),
    )
    .await
    .expect(200);
    h.call("GET", "/v1/tenants/alpha", Some(&alpha), None)
        .await
        .expect(200);

    // Once its tenant is gone, the token is no credential.
    h.p("DELETE", "/v1/tenants/alpha", None).await.expect(204);
    h.call("GET", "/v1/tenants/alpha", Some(&alpha), None)
        .await
        .error(401, "unauthorized");
}

/// The user `u1` (admin) of `claims`' tokens, straight in the store.
async fn user_u1(h: &H, tenant: &str) {
    h.store()
        .create_user(
            tenant,
            &tenantgate_core::store::NewUser {
                id: "u1".into(),
                email: "u1@example.com".into(),
                password_hash: "unused".into(),
                role: "admin".into(),
            },
        )
        .await
        .unwrap();
}

fn claims(tenant: &str, role: &str, exp_in: i64) -> LoginClaims {
    let now = chrono::Utc::now().timestamp();
    LoginClaims {
        sub: "u1".into(),
        tenant_id: tenant.into(),
        role: role.into(),
        iat: now,
        exp: now + exp_in,
        iss: ISSUER.into(),
        aud: LOGIN_AUDIENCE.into(),
        tv: 0,
    }
}

async fn forged_and_foreign_tokens_are_rejected(h: H, _url: String) {
    h.tenant("gamma", "free").await;
    user_u1(&h, "gamma").await;
    let ours = h.state.keys().signer();
    // Sanity: a token we sign ourselves is accepted.
    let good = ours.sign(&claims("gamma", "admin", 300)).unwrap();
    h.call("GET", "/v1/tenants/gamma", Some(&good), None)
        .await
        .expect(200);

    let mut wrong_iss = claims("gamma", "admin", 300);
    wrong_iss.iss = "someone-else".into();
    let mut wrong_aud = claims("gamma", "admin", 300);
    wrong_aud.aud = "other".into();
    let foreign = SigningKey::generate().unwrap();
    let foreign_same_kid = foreign
        .sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": ours.kid}),
            &claims("gamma", "admin", 300),
        )
        .unwrap();
    let hs256_header = ours
        .sign_with_header(
            &json!({"alg": "HS256", "typ": "JWT", "kid": ours.kid}),
            &claims("gamma", "admin", 300),
        )
        .unwrap();
    let none_alg = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(json!({"alg": "none", "kid": ours.kid}).to_string()),
            e.encode(serde_json::to_string(&claims("gamma", "admin", 300)).unwrap())
        )
    };
    let no_kid = ours
        .sign_with_header(&json!({"alg": "RS256"}), &claims("gamma", "admin", 300))
        .unwrap();
    for token in [
        ours.sign(&claims("gamma", "admin", -600)).unwrap(), // expired
        ours.sign(&wrong_iss).unwrap(),
        ours.sign(&wrong_aud).unwrap(),
        ours.sign(&claims("ghost", "admin", 300)).unwrap(), // tenant does not exist
        foreign.sign(&claims("gamma", "admin", 300)).unwrap(), // unknown kid
        foreign_same_kid,
        hs256_header,
        none_alg,
        no_kid,
        format!("{good}x"),
    ] {
        h.call("GET", "/v1/tenants/gamma", Some(&token), None)
            .await
            .error(401, "unauthorized");
    }
}

// ---- tenants ----------------------------------------------------------------------------

async fn tenants_crud_and_onboarding(h: H, _url: String) {
    let t = h
        .p(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "acme", "name": "Acme Corp", "tier": "pro", "unknown_field": 1})),
        )
        .await;
    let body = t.expect(201);
    assert_eq!(body["id"], "acme");
    assert_eq!(body["name"], "Acme Corp");
    assert_eq!(body["tier"], "pro");
    assert_eq!(body["status"], "active");
    assert!(is_rfc3339_z(body["created_at"].as_str().unwrap()), "{body}");
    assert!(body.get("admin_user").is_none());

    h.p(
        "POST",
        "/v1/tenants",
        Some(json!({"id": "acme", "name": "Again", "tier": "free"})),
    )
    .await
    .error(409, "conflict");

    // Generated id.
    let g = h
        .p(
            "POST",
            "/v1/tenants",
            Some(json!({"name": "Globex Corporation!", "tier": "free"})),
        )
        .await;
    let gid = g.expect(201)["id"].as_str().unwrap().to_owned();
    assert!(tenantgate_core::domain::valid_tenant_id(&gid), "{gid}");
    assert!(gid.starts_with("globex-corporation-"), "{gid}");

    // With an admin user.
    let w = h
        .p(
            "POST",
            "/v1/tenants",
            Some(
                json!({"id": "initech", "name": "Initech", "tier": "enterprise",
                "admin_user": {"email": "  Boss@Initech.Example ", "password": "hunter2hunter2"}}),
            ),
        )
        .await;
    let wb = w.expect(201);
    assert_eq!(wb["admin_user"]["email"], "boss@initech.example");
    assert_eq!(wb["admin_user"]["role"], "admin");
    assert!(wb["admin_user"].get("password").is_none());
    assert!(wb["admin_user"].get("password_hash").is_none());

    // Onboarding: default policies and the tier's rate limit.
    let pols = h.p("GET", "/v1/tenants/acme/policies", None).await;
    let mut roles: Vec<&str> = pols
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["admin", "developer", "read_only"]);
    let admin = h.p("GET", "/v1/tenants/acme/policies/admin", None).await;
    assert_eq!(
        admin.expect(200)["permissions"],
        json!([{"action": "*", "resource": "*"}])
    );
    let ro = h
        .p("GET", "/v1/tenants/acme/policies/read_only", None)
        .await;
    assert_eq!(
        ro.expect(200)["permissions"],
        json!([{"action": "read", "resource": "*"}])
    );
    for (id, max) in [("acme", 1000), (gid.as_str(), 60), ("initech", 10_000)] {
        let rl = h
            .p("GET", &format!("/v1/tenants/{id}/rate-limit"), None)
            .await;
        assert_eq!(
            rl.expect(200),
            &json!({"max_requests": max, "window_seconds": 60, "source": "plan"})
        );
    }

    // List, get.
    let list = h.p("GET", "/v1/tenants", None).await;
    let ids: Vec<&str> = list
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&"acme") && ids.contains(&"initech") && ids.contains(&gid.as_str()));
    let one = h.p("GET", "/v1/tenants/acme", None).await;
    assert_eq!(one.expect(200), body);
    h.p("GET", "/v1/tenants/nope", None)
        .await
        .error(404, "not_found");

    // Patch.
    let p = h
        .p(
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({"name": "Acme 2", "tier": "free", "status": "suspended"})),
        )
        .await;
    let pb = p.expect(200);
    assert_eq!(
        (
            pb["name"].as_str(),
            pb["tier"].as_str(),
            pb["status"].as_str()
        ),
        (Some("Acme 2"), Some("free"), Some("suspended"))
    );
    // A tenant following its plan follows its new tier's.
    let rl = h.p("GET", "/v1/tenants/acme/rate-limit", None).await;
    assert_eq!(rl.expect(200)["max_requests"], 60);
    let empty = h.p("PATCH", "/v1/tenants/acme", Some(json!({}))).await;
    assert_eq!(empty.expect(200)["name"], "Acme 2");
    h.p("PATCH", "/v1/tenants/nope", Some(json!({"name": "x"})))
        .await
        .error(404, "not_found");

    // Delete.
    h.p("DELETE", "/v1/tenants/acme", None).await.expect(204);
    h.p("GET", "/v1/tenants/acme", None)
        .await
        .error(404, "not_found");
    h.p("DELETE", "/v1/tenants/acme", None)
        .await
        .error(404, "not_found");
    h.p("GET", "/v1/tenants/acme/policies", None)
        .await
        .error(404, "not_found");
}

async fn tenant_validation(h: H, _url: String) {
    let long = "x".repeat(201);
    let cases = [
        (json!({"id": "A", "name": "n", "tier": "free"}), "id"),
        (json!({"id": "-abc", "name": "n", "tier": "free"}), "id"),
        (
            json!({"id": "has_underscore", "name": "n", "tier": "free"}),
            "id",
        ),
        (
            json!({"id": "a".repeat(64), "name": "n", "tier": "free"}),
            "id",
        ),
        (json!({"id": 42, "name": "n", "tier": "free"}), "id"),
        (json!({"name": "", "tier": "free"}), "name"),
        (json!({"name": "   ", "tier": "free"}), "name"),
        (json!({"name": long, "tier": "free"}), "name"),
        (json!({"tier": "free"}), "name"),
        (json!({"name": "n", "tier": "gold"}), "tier"),
        (json!({"name": "n"}), "tier"),
        (json!({"name": "n", "tier": 1}), "tier"),
        (
            json!({"name": "n", "tier": "free", "admin_user": {"email": "not-an-email", "password": "long enough"}}),
            "admin_user.email",
        ),
        (
            json!({"name": "n", "tier": "free", "admin_user": {"password": "long enough"}}),
            "admin_user.email",
        ),
        (
            json!({"name": "n", "tier": "free", "admin_user": {"email": "a@b.co", "password": "short"}}),
            "admin_user.password",
        ),
        (
            json!({"name": "n", "tier": "free", "admin_user": {"email": "a@b.co", "password": "p".repeat(1025)}}),
            "admin_user.password",
        ),
        (
            json!({"name": "n", "tier": "free", "admin_user": {"email": "a@b.co"}}),
            "admin_user.password",
        ),
    ];
    for (body, field) in cases {
        h.p("POST", "/v1/tenants", Some(body)).await.invalid(field);
    }
    // 200 characters is fine.
    h.p(
        "POST",
        "/v1/tenants",
        Some(json!({"name": "y".repeat(200), "tier": "free"})),
    )
    .await
    .expect(201);
    // Malformed JSON and non-objects: 400.
    for body in ["{", "not json", "[]", "\"x\"", ""] {
        h.raw("POST", "/v1/tenants", Some(TOKEN), body)
            .await
            .error(400, "bad_request");
    }
    h.tenant("valid", "free").await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"tier": "gold"}), "tier"),
        (json!({"status": "paused"}), "status"),
        (json!({"name": 5}), "name"),
    ] {
        h.p("PATCH", "/v1/tenants/valid", Some(body))
            .await
            .invalid(field);
    }
    h.raw("PATCH", "/v1/tenants/valid", Some(TOKEN), "{nope")
        .await
        .error(400, "bad_request");
}

// ---- silo tenants and scaling events ----------------------------------------------------

async fn tenant_upstream_pools(h: H, _url: String) {
    let admin = h.tenant_with_admin("silo").await;
    let t = h
        .p("GET", "/v1/tenants/silo", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(t["upstream_pool"], Value::Null, "{t}");
    h.p(
        "PATCH",
        "/v1/tenants/silo",
        Some(json!({"upstream_pool": "nope"})),
    )
    .await
    .invalid("upstream_pool");
    h.p(
        "PATCH",
        "/v1/tenants/silo",
        Some(json!({"upstream_pool": 7})),
    )
    .await
    .invalid("upstream_pool");
    // Only the platform moves a tenant to a pool.
    h.call(
        "PATCH",
        "/v1/tenants/silo",
        Some(&admin),
        Some(json!({"upstream_pool": "silo-a"})),
    )
    .await
    .error(403, "forbidden");
    let t = h
        .p(
            "PATCH",
            "/v1/tenants/silo",
            Some(json!({"upstream_pool": "silo-a"})),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(t["upstream_pool"], "silo-a");
    let t = h
        .p("GET", "/v1/tenants/silo", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(t["upstream_pool"], "silo-a");
    // Another field leaves the pool alone; null clears it.
    let t = h
        .p("PATCH", "/v1/tenants/silo", Some(json!({"name": "Silo"})))
        .await
        .expect(200)
        .clone();
    assert_eq!(t["upstream_pool"], "silo-a");
    let t = h
        .p(
            "PATCH",
            "/v1/tenants/silo",
            Some(json!({"upstream_pool": null})),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(t["upstream_pool"], Value::Null);
}

async fn scaling_events_api(h: H, _url: String) {
    let admin = h.tenant_with_admin("scaler").await;
    h.call("GET", "/v1/scaling/events", None, None)
        .await
        .error(401, "unauthorized");
    h.call("GET", "/v1/scaling/events", Some(&admin), None)
        .await
        .error(403, "forbidden");
    let r = h.p("GET", "/v1/scaling/events", None).await;
    assert_eq!(r.expect(200), &json!([]));
    let policy = tenantgate_core::scaling::Policy {
        target_rps_per_replica: 10.0,
        min: 1,
        max: 5,
        cooldown_s: 0,
        stabilisation_s: 60,
    };
    // No proxy heard from: the policy holds (at min, no event).
    let now = tenantgate_core::time::now_ms();
    let out = h
        .store()
        .scaling_pass(&[("/api/".into(), policy)], now - 1, now - 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((out[0].replicas, out[0].event.is_none()), (1, true));
    for (q, field) in [
        ("from=yesterday", "from"),
        ("to=2024-13-40T00:00:00Z", "to"),
        ("to=", "to"),
        ("limit=0", "limit"),
        ("route=a%07b", "route"),
    ] {
        h.p("GET", &format!("/v1/scaling/events?{q}"), None)
            .await
            .invalid(field);
    }
    // A pass over a policy with signals above target stores an event.
    h.store()
        .put_route_signals(
            "node-1",
            now,
            &[tenantgate_core::store::RouteSignalRow {
                route: "/api/".into(),
                rps_milli: 35_000,
                in_flight: 3,
                p95_us: 12_000,
                requests: 35,
            }],
        )
        .await
        .unwrap();
    // A second proxy's reading adds to the first's; a stale third one is left out.
    let row = |rps_milli, p95_us| tenantgate_core::store::RouteSignalRow {
        route: "/api/".into(),
        rps_milli,
        in_flight: 1,
        p95_us,
        requests: 1,
    };
    h.store()
        .put_route_signals("node-2", now, &[row(5_000, 30_000)])
        .await
        .unwrap();
    h.store()
        .put_route_signals("node-3", now - 60_000, &[row(900_000, 1)])
        .await
        .unwrap();
    let out = h
        .store()
        .scaling_pass(&[("/api/".into(), policy)], now, now - 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out[0].replicas, 4);
    let r = h.p("GET", "/v1/scaling/events?route=/api/", None).await;
    let events = r.expect(200).as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (e["from_replicas"].as_u64(), e["to_replicas"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(e["route"], "/api/");
    assert!(is_rfc3339_z(e["at"].as_str().unwrap()), "{e}");
    assert_eq!(e["signals"]["rps"], 40.0);
    assert_eq!(e["signals"]["in_flight"], 4);
    assert_eq!(e["signals"]["p95_ms"], 30.0, "the highest proxy's");
    assert_eq!(e["signals"]["proxies"], 2);
    assert!(e["reason"].as_str().unwrap().contains("scale up"), "{e}");
    let other = h.p("GET", "/v1/scaling/events?route=/other/", None).await;
    assert_eq!(other.expect(200), &json!([]));
}

// ---- API keys ---------------------------------------------------------------------------

async fn api_keys_lifecycle(h: H, _url: String) {
    h.tenant("keys", "pro").await;
    let r = h
        .p(
            "POST",
            "/v1/tenants/keys/api-keys",
            Some(json!({"name": "ci deploy", "role": "developer"})),
        )
        .await;
    let k = r.expect(201).clone();
    let key = k["key"].as_str().unwrap().to_owned();
    let prefix = k["prefix"].as_str().unwrap();
    assert!(key.starts_with(&format!("tg_{prefix}_")), "{key}");
    assert!(tenantgate_core::secrets::parse_api_key(&key).is_some());
    assert_eq!(k["name"], "ci deploy");
    assert_eq!(k["role"], "developer");
    assert_eq!(k["expires_at"], Value::Null);
    assert!(uuid::Uuid::parse_str(k["id"].as_str().unwrap()).is_ok());
    assert!(is_rfc3339_z(k["created_at"].as_str().unwrap()));

    let exp = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let r2 = h
        .p(
            "POST",
            "/v1/tenants/keys/api-keys",
            Some(json!({"name": "temp", "role": "read_only", "expires_at": exp})),
        )
        .await;
    let k2 = r2.expect(201).clone();
    assert!(is_rfc3339_z(k2["expires_at"].as_str().unwrap()));

    // The list never shows the secret; the store holds only a digest.
    let list = h.p("GET", "/v1/tenants/keys/api-keys", None).await;
    let text = list.text.clone();
    let items = list.expect(200).as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    assert!(!text.contains(&key));
    for item in &items {
        assert!(
            item.get("key").is_none() && item.get("digest").is_none(),
            "{item}"
        );
        assert_eq!(item["status"], "active");
        assert_eq!(item["revoked_at"], Value::Null);
        for f in ["id", "prefix", "name", "role", "created_at", "expires_at"] {
            assert!(item.get(f).is_some(), "{f} missing in {item}");
        }
    }
    let row = sqlx::query("SELECT digest, prefix FROM api_keys WHERE id = $1")
        .bind(k["id"].as_str().unwrap())
        .fetch_one(h.store().pool())
        .await
        .unwrap();
    let digest: String = row.get("digest");
    assert_ne!(digest, key);
    assert!(!digest.contains(&key[16..]));
    assert_eq!(digest, tenantgate_core::secrets::api_key_digest(&key, None));
    let all: Vec<String> = sqlx::query("SELECT id, prefix, digest, name, role FROM api_keys")
        .fetch_all(h.store().pool())
        .await
        .unwrap()
        .iter()
        .flat_map(|r| (0..5).map(|i| r.get::<String, _>(i)).collect::<Vec<_>>())
        .collect();
    assert!(all.iter().all(|v| !v.contains(&key[16..])));

    // Revoke: 204, idempotent; unknown 404.
    let kid = k["id"].as_str().unwrap();
    h.p("DELETE", &format!("/v1/tenants/keys/api-keys/{kid}"), None)
        .await
        .expect(204);
    h.p("DELETE", &format!("/v1/tenants/keys/api-keys/{kid}"), None)
        .await
        .expect(204);
    h.p("DELETE", "/v1/tenants/keys/api-keys/does-not-exist", None)
        .await
        .error(404, "not_found");
    let list = h.p("GET", "/v1/tenants/keys/api-keys", None).await;
    let revoked = list
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == kid)
        .unwrap()
        .clone();
    assert_eq!(revoked["status"], "revoked");
    assert!(is_rfc3339_z(revoked["revoked_at"].as_str().unwrap()));
    let stored = h
        .store()
        .find_api_key_by_prefix(prefix)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.revoked_at.is_some());

    // Another tenant's key id is unknown here.
    h.tenant("other", "free").await;
    h.p(
        "DELETE",
        &format!("/v1/tenants/other/api-keys/{}", k2["id"].as_str().unwrap()),
        None,
    )
    .await
    .error(404, "not_found");
    h.p("DELETE", "/v1/tenants/nope/api-keys/x", None)
        .await
        .error(404, "not_found");
}

async fn api_key_validation(h: H, _url: String) {
    h.tenant("kv", "free").await;
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let cases = [
        (json!({"role": "developer"}), "name"),
        (json!({"name": "", "role": "developer"}), "name"),
        (json!({"name": "  ", "role": "developer"}), "name"),
        (
            json!({"name": "n".repeat(201), "role": "developer"}),
            "name",
        ),
        (json!({"name": "n"}), "role"),
        (json!({"name": "n", "role": "superuser"}), "role"),
        (json!({"name": "n", "role": "Bad Role"}), "role"),
        (json!({"name": "n", "role": 3}), "role"),
        (
            json!({"name": "n", "role": "developer", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            json!({"name": "n", "role": "developer", "expires_at": 12345}),
            "expires_at",
        ),
    ];
    for (body, field) in cases {
        h.p("POST", "/v1/tenants/kv/api-keys", Some(body))
            .await
            .invalid(field);
    }
    // A time already past is what the document allows: the key is born expired.
    let r = h
        .p(
            "POST",
            "/v1/tenants/kv/api-keys",
            Some(json!({"name": "n", "role": "developer", "expires_at": past})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    h.raw("POST", "/v1/tenants/kv/api-keys", Some(TOKEN), "{\"name\":")
        .await
        .error(400, "bad_request");
    h.p(
        "POST",
        "/v1/tenants/nope/api-keys",
        Some(json!({"name": "n", "role": "developer"})),
    )
    .await
    .error(404, "not_found");
    // A custom role with a policy is accepted.
    h.p(
        "PUT",
        "/v1/tenants/kv/policies/billing",
        Some(json!({"permissions": [{"action": "read", "resource": "invoices"}]})),
    )
    .await
    .expect(200);
    h.p(
        "POST",
        "/v1/tenants/kv/api-keys",
        Some(json!({"name": "n", "role": "billing", "expires_at": null})),
    )
    .await
    .expect(201);
}

async fn api_key_rotation(h: H, _url: String) {
    h.tenant("rot", "free").await;
    let create = |name: &'static str| {
        let h = h.clone();
        async move {
            h.p(
                "POST",
                "/v1/tenants/rot/api-keys",
                Some(json!({"name": name, "role": "developer"})),
            )
            .await
            .expect(201)
            .clone()
        }
    };

    // With grace: the old key stays usable until then.
    let old = create("svc").await;
    let old_id = old["id"].as_str().unwrap();
    let r = h
        .p(
            "POST",
            &format!("/v1/tenants/rot/api-keys/{old_id}/rotate"),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    let new = r.expect(201).clone();
    assert_eq!(new["rotated_from"], old_id);
    assert_eq!(new["name"], "svc");
    assert_eq!(new["role"], "developer");
    assert_eq!(new["expires_at"], Value::Null);
    assert_ne!(new["key"], old["key"]);
    assert_ne!(new["id"], old["id"]);
    assert!(tenantgate_core::secrets::parse_api_key(new["key"].as_str().unwrap()).is_some());
    let now = chrono::Utc::now();
    let stored_old = h.store().get_api_key("rot", old_id).await.unwrap().unwrap();
    assert!(stored_old.is_usable_at(now));
    let until = stored_old.expires_at.unwrap();
    assert!(
        until > now + chrono::Duration::seconds(3500)
            && until <= now + chrono::Duration::seconds(3601)
    );
    let stored_new = h
        .store()
        .get_api_key("rot", new["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored_new.is_usable_at(now));
    assert_eq!(
        stored_new.digest,
        tenantgate_core::secrets::api_key_digest(new["key"].as_str().unwrap(), None)
    );

    // Without a body: grace 0, the old key is revoked now.
    let a = create("a").await;
    let a_id = a["id"].as_str().unwrap();
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/tenants/rot/api-keys/{a_id}/rotate"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    h.send(req).await.expect(201);
    let stored_a = h.store().get_api_key("rot", a_id).await.unwrap().unwrap();
    assert!(!stored_a.is_usable_at(chrono::Utc::now()));
    // A revoked key cannot be rotated.
    h.p(
        "POST",
        &format!("/v1/tenants/rot/api-keys/{a_id}/rotate"),
        None,
    )
    .await
    .error(409, "conflict");
    // Explicit zero.
    let b = create("b").await;
    let b_id = b["id"].as_str().unwrap();
    h.p(
        "POST",
        &format!("/v1/tenants/rot/api-keys/{b_id}/rotate"),
        Some(json!({"grace_seconds": 0})),
    )
    .await
    .expect(201);
    let list = h.p("GET", "/v1/tenants/rot/api-keys", None).await;
    let status_of = |id: &str| {
        list.body
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(b_id), "revoked");
    assert_eq!(status_of(old_id), "active");

    // Validation and unknown keys.
    let c = create("c").await;
    let c_id = c["id"].as_str().unwrap();
    for (body, field) in [
        (json!({"grace_seconds": -1}), "grace_seconds"),
        (json!({"grace_seconds": 2_592_001}), "grace_seconds"),
        (json!({"grace_seconds": "10"}), "grace_seconds"),
        (json!({"grace_seconds": 1.5}), "grace_seconds"),
    ] {
        h.p(
            "POST",
            &format!("/v1/tenants/rot/api-keys/{c_id}/rotate"),
            Some(body),
        )
        .await
        .invalid(field);
    }
    h.p(
        "POST",
        &format!("/v1/tenants/rot/api-keys/{c_id}/rotate"),
        Some(json!({"grace_seconds": 2_592_000})),
    )
    .await
    .expect(201);
    h.p("POST", "/v1/tenants/rot/api-keys/unknown/rotate", None)
        .await
        .error(404, "not_found");
    h.raw(
        "POST",
        &format!("/v1/tenants/rot/api-keys/{c_id}/rotate"),
        Some(TOKEN),
        "{",
    )
    .await
    .error(400, "bad_request");
}

// ---- users and login -------------------------------------------------------------------

async fn users_and_password_hashes(h: H, _url: String) {
    h.tenant("people", "free").await;
    let r = h
        .p("POST", "/v1/tenants/people/users", Some(json!({"email": " Ann@Example.COM ", "password": "s3cret-pass", "role": "read_only"})))
        .await;
    let u = r.expect(201).clone();
    assert_eq!(u["email"], "ann@example.com");
    assert_eq!(u["role"], "read_only");
    assert!(uuid::Uuid::parse_str(u["id"].as_str().unwrap()).is_ok());
    assert!(u.get("password").is_none() && u.get("password_hash").is_none());

    h.p(
        "POST",
        "/v1/tenants/people/users",
        Some(json!({"email": "ANN@example.com", "password": "another-pass", "role": "developer"})),
    )
    .await
    .error(409, "conflict");
    // The same email in another tenant is fine.
    h.tenant("people2", "free").await;
    h.user("people2", "ann@example.com", "developer").await;

    for (body, field) in [
        (
            json!({"email": "nope", "password": "password1", "role": "developer"}),
            "email",
        ),
        (
            json!({"password": "password1", "role": "developer"}),
            "email",
        ),
        (
            json!({"email": "b@example.com", "password": "short", "role": "developer"}),
            "password",
        ),
        (
            json!({"email": "b@example.com", "password": "x".repeat(1025), "role": "developer"}),
            "password",
        ),
        (
            json!({"email": "b@example.com", "role": "developer"}),
            "password",
        ),
        (
            json!({"email": "b@example.com", "password": "password1", "role": "ghost"}),
            "role",
        ),
        (
            json!({"email": "b@example.com", "password": "password1", "role": "Nope!"}),
            "role",
        ),
        (
            json!({"email": "b@example.com", "password": "password1"}),
            "role",
        ),
    ] {
        h.p("POST", "/v1/tenants/people/users", Some(body))
            .await
            .invalid(field);
    }
    h.raw("POST", "/v1/tenants/people/users", Some(TOKEN), "[")
        .await
        .error(400, "bad_request");
    h.p(
        "POST",
        "/v1/tenants/nope/users",
        Some(json!({"email": "a@b.co", "password": "password1", "role": "developer"})),
    )
    .await
    .error(404, "not_found");

    let list = h.p("GET", "/v1/tenants/people/users", None).await;
    let text = list.text.clone();
    let users = list.expect(200).as_array().unwrap().clone();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["email"], "ann@example.com");
    assert!(is_rfc3339_z(users[0]["created_at"].as_str().unwrap()));
    assert!(!text.contains("argon2") && !text.contains("password"));

    let row = sqlx::query("SELECT password_hash FROM users WHERE tenant_id = $1")
        .bind("people")
        .fetch_one(h.store().pool())
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret-pass"));
}

async fn login_and_jwks(h: H, _url: String) {
    h.p(
        "POST",
        "/v1/tenants",
        Some(json!({"id": "login", "name": "Login", "tier": "free", "admin_user": {"email": "root@login.example", "password": "right-password"}})),
    )
    .await
    .expect(201);
    let r = h
        .call("POST", "/v1/auth/login", None, Some(json!({"tenant_id": "login", "email": "ROOT@login.example", "password": "right-password"})))
        .await;
    let body = r.expect(200).clone();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], TTL);
    let token = body["access_token"].as_str().unwrap();

    // Verify with the published JWKS.
    let jwks = h.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.headers["cache-control"], "public, max-age=60");
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let kid = header.kid.unwrap();
    let jwk = jwks.expect(200)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("token kid in the JWKS")
        .clone();
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["use"].as_str(),
            jwk["alg"].as_str()
        ),
        (Some("RSA"), Some("sig"), Some("RS256"))
    );
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[LOGIN_AUDIENCE]);
    v.set_issuer(&[ISSUER]);
    let data = jsonwebtoken::decode::<LoginClaims>(token, &dk, &v).unwrap();
    let c = data.claims;
    assert_eq!(
        (
            c.tenant_id.as_str(),
            c.role.as_str(),
            c.aud.as_str(),
            c.iss.as_str()
        ),
        ("login", "admin", "tenantgate", ISSUER)
    );
    assert_eq!(c.exp - c.iat, i64::try_from(TTL).unwrap());
    let users = h.p("GET", "/v1/tenants/login/users", None).await;
    assert_eq!(users.expect(200)[0]["id"], c.sub.as_str());
    // The token is a tenant-admin credential.
    h.call("GET", "/v1/tenants/login", Some(token), None)
        .await
        .expect(200);

    // Failures look alike.
    let mut messages = Vec::new();
    for body in [
        json!({"tenant_id": "login", "email": "root@login.example", "password": "wrong-password"}),
        json!({"tenant_id": "login", "email": "nobody@login.example", "password": "right-password"}),
        json!({"tenant_id": "ghost", "email": "root@login.example", "password": "right-password"}),
        json!({"tenant_id": "Not Valid", "email": "root@login.example", "password": "right-password"}),
    ] {
        let r = h.call("POST", "/v1/auth/login", None, Some(body)).await;
        messages.push(r.error(401, "unauthorized")["message"].clone());
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");

    for (body, field) in [
        (json!({"email": "a@b.co", "password": "x"}), "tenant_id"),
        (json!({"tenant_id": "login", "password": "x"}), "email"),
        (json!({"tenant_id": "login", "email": "a@b.co"}), "password"),
    ] {
        h.call("POST", "/v1/auth/login", None, Some(body))
            .await
            .invalid(field);
    }
    h.raw("POST", "/v1/auth/login", None, "{{")
        .await
        .error(400, "bad_request");

    // Suspended tenant.
    h.p(
        "PATCH",
        "/v1/tenants/login",
        Some(json!({"status": "suspended"})),
    )
    .await
    .expect(200);
    h.call("POST", "/v1/auth/login", None, Some(json!({"tenant_id": "login", "email": "root@login.example", "password": "right-password"})))
        .await
        .error(403, "tenant_suspended");
}

fn login_body(tenant: &str, email: &str, password: &str) -> Option<Value> {
    Some(json!({"tenant_id": tenant, "email": email, "password": password}))
}

async fn user_lifecycle(h: H, _url: String) {
    let admin = h.tenant_with_admin("life").await;
    let dev = h.user("life", "dev@life.example", "developer").await;
    let dev_id = dev["id"].as_str().unwrap().to_owned();
    let dev_path = format!("/v1/tenants/life/users/{dev_id}");
    let admin2 = h.user("life", "admin2@life.example", "admin").await;
    let admin2_path = format!("/v1/tenants/life/users/{}", admin2["id"].as_str().unwrap());

    // The list shows status and never a hash; a tenant admin sees its own tenant.
    let list = h
        .call("GET", "/v1/tenants/life/users", Some(&admin), None)
        .await;
    assert!(!list.text.contains("argon2") && !list.text.contains("password"));
    let users = list.expect(200).as_array().unwrap().clone();
    assert_eq!(users.len(), 3);
    assert!(users.iter().all(|u| u["status"] == "active"));

    // A role change ends the user's tokens, at once.
    let t2 = h.login("life", "admin2@life.example", "password123").await;
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .expect(200);
    let r = h
        .call(
            "PATCH",
            &admin2_path,
            Some(&admin),
            Some(json!({"role": "developer"})),
        )
        .await;
    assert_eq!(r.expect(200)["role"], "developer");
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .error(401, "unauthorized");
    // Back to admin: the old token stays dead, a new login works.
    h.p("PATCH", &admin2_path, Some(json!({"role": "admin"})))
        .await
        .expect(200);
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .error(401, "unauthorized");
    let t2 = h.login("life", "admin2@life.example", "password123").await;

    // A password change: old tokens and the old password stop working.
    h.p(
        "PATCH",
        &admin2_path,
        Some(json!({"password": "brand-new-secret"})),
    )
    .await
    .expect(200);
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .error(401, "unauthorized");
    h.call(
        "POST",
        "/v1/auth/login",
        None,
        login_body("life", "admin2@life.example", "password123"),
    )
    .await
    .error(401, "unauthorized");
    let t2 = h
        .login("life", "admin2@life.example", "brand-new-secret")
        .await;

    // Disabled: tokens die and login answers like a wrong password.
    let r = h
        .call(
            "PATCH",
            &admin2_path,
            Some(&admin),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(r.expect(200)["status"], "disabled");
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .error(401, "unauthorized");
    let disabled = h
        .call(
            "POST",
            "/v1/auth/login",
            None,
            login_body("life", "admin2@life.example", "brand-new-secret"),
        )
        .await;
    let wrong = h
        .call(
            "POST",
            "/v1/auth/login",
            None,
            login_body("life", "dev@life.example", "wrong-password"),
        )
        .await;
    assert_eq!(
        disabled.error(401, "unauthorized")["message"],
        wrong.error(401, "unauthorized")["message"]
    );
    // Enabled again: a fresh login works.
    h.p("PATCH", &admin2_path, Some(json!({"status": "active"})))
        .await
        .expect(200);
    let t2 = h
        .login("life", "admin2@life.example", "brand-new-secret")
        .await;
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .expect(200);

    // Delete: 204, its tokens die, a second delete is 404.
    h.call("DELETE", &admin2_path, Some(&admin), None)
        .await
        .expect(204);
    h.call("GET", "/v1/tenants/life", Some(&t2), None)
        .await
        .error(401, "unauthorized");
    h.call("DELETE", &admin2_path, Some(&admin), None)
        .await
        .error(404, "not_found");
    h.p("PATCH", &admin2_path, Some(json!({"role": "admin"})))
        .await
        .error(404, "not_found");

    // Each change is in the feed for the proxies.
    let changes = h.store().changes_since(0, 0, 1000).await.unwrap();
    let user_changes = changes
        .iter()
        .filter(|c| c.kind == tenantgate_core::store::ChangeKind::User && c.tenant_id == "life")
        .count();
    assert!(user_changes >= 8, "{user_changes}");

    // A developer's PATCH is fine and its listing shows it.
    h.p(
        "PATCH",
        &dev_path,
        Some(json!({"role": "read_only", "status": "disabled"})),
    )
    .await
    .expect(200);
    let list = h.p("GET", "/v1/tenants/life/users", None).await;
    let users = list.expect(200).as_array().unwrap().clone();
    let d = users.iter().find(|u| u["id"] == dev_id.as_str()).unwrap();
    assert_eq!(
        (d["role"].as_str(), d["status"].as_str()),
        (Some("read_only"), Some("disabled"))
    );
}

async fn user_lifecycle_validation(h: H, _url: String) {
    let admin = h.tenant_with_admin("val").await;
    let other = h.tenant_with_admin("val-other").await;
    let u = h.user("val", "u@val.example", "developer").await;
    let path = format!("/v1/tenants/val/users/{}", u["id"].as_str().unwrap());

    for (body, field) in [
        (json!({"status": "gone"}), "status"),
        (json!({"status": 1}), "status"),
        (json!({"role": "ghost"}), "role"),
        (json!({"role": "Not A Role"}), "role"),
        (json!({"password": "short"}), "password"),
        (json!({"password": "x".repeat(1025)}), "password"),
    ] {
        h.call("PATCH", &path, Some(&admin), Some(body))
            .await
            .invalid(field);
    }
    h.raw("PATCH", &path, Some(&admin), "{")
        .await
        .error(400, "bad_request");
    // Unknown user: 404 (after validation of the body).
    h.call(
        "PATCH",
        "/v1/tenants/val/users/nobody",
        Some(&admin),
        Some(json!({"role": "developer"})),
    )
    .await
    .error(404, "not_found");
    h.call("DELETE", "/v1/tenants/val/users/nobody", Some(&admin), None)
        .await
        .error(404, "not_found");
    // Another tenant's admin sees nothing of this tenant.
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"role": "developer"}))),
        ("DELETE", None),
    ] {
        let uri = if method == "GET" {
            "/v1/tenants/val/users".to_owned()
        } else {
            path.clone()
        };
        h.call(method, &uri, Some(&other), body)
            .await
            .error(404, "not_found");
    }
    // Nor can it reach this tenant's user through its own tenant's path.
    h.call(
        "PATCH",
        &format!("/v1/tenants/val-other/users/{}", u["id"].as_str().unwrap()),
        Some(&other),
        Some(json!({"role": "developer"})),
    )
    .await
    .error(404, "not_found");
    // A developer's login token is no admin credential.
    let dev = h.login("val", "u@val.example", "password123").await;
    h.call("GET", "/v1/tenants/val/users", Some(&dev), None)
        .await
        .error(403, "forbidden");
    // No credential.
    h.call("DELETE", &path, None, None)
        .await
        .error(401, "unauthorized");
    // Nothing changed.
    let list = h.p("GET", "/v1/tenants/val/users", None).await;
    let users = list.expect(200).as_array().unwrap().clone();
    let still = users.iter().find(|x| x["id"] == u["id"]).unwrap();
    assert_eq!(
        (still["role"].as_str(), still["status"].as_str()),
        (Some("developer"), Some("active"))
    );
}

async fn login_throttling(h: H, _url: String) {
    h.p(
        "POST",
        "/v1/tenants",
        Some(json!({"id": "thr", "name": "Thr", "tier": "free", "admin_user": {"email": "root@thr.example", "password": "right-password"}})),
    )
    .await
    .expect(201);
    for _ in 0..5 {
        h.call(
            "POST",
            "/v1/auth/login",
            None,
            login_body("thr", "root@thr.example", "wrong-password"),
        )
        .await
        .error(401, "unauthorized");
    }
    // The right password does not get through while throttled (any spelling).
    for email in ["root@thr.example", " ROOT@thr.example "] {
        let r = h
            .call(
                "POST",
                "/v1/auth/login",
                None,
                login_body("thr", email, "right-password"),
            )
            .await;
        r.error(429, "rate_limited");
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&after), "{after}");
    }
    // Another user of the tenant is not affected (the client is unknown in-process).
    h.user("thr", "other@thr.example", "developer").await;
    h.login("thr", "other@thr.example", "password123").await;
    // Counted in /metrics, by reason.
    let m = h.call("GET", "/metrics", None, None).await;
    let text = m.text;
    let count = |reason: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tenantgate_admin_login_failures_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {reason} series in {text}"))
    };
    assert_eq!(count("bad_credentials"), 5);
    assert_eq!(count("throttled"), 2);
    assert_eq!(count("busy"), 0);
}

/// Every hashing slot busy: a login waits briefly, then 503 with `Retry-After: 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_503_when_every_hashing_slot_stays_busy() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 5).await.unwrap();
    let mut opts = options([7u8; 32]);
    opts.login_limits.hash_permits = 1;
    opts.login_limits.hash_wait = std::time::Duration::from_millis(100);
    let state = build_state(store, opts).await.unwrap();
    let h = H {
        app: app(state.clone()),
        state: state.clone(),
    };
    h.tenant_with_admin("busy").await;
    let held = state.login_guard().hashing_slot().await.unwrap();
    let r = h
        .call(
            "POST",
            "/v1/auth/login",
            None,
            login_body("busy", "admin@busy.example", "correct horse battery"),
        )
        .await;
    r.error(503, "unavailable");
    assert_eq!(r.headers["retry-after"], "1");
    // A user create waits for a slot the same way.
    h.p(
        "POST",
        "/v1/tenants/busy/users",
        Some(json!({"email": "x@busy.example", "password": "password123", "role": "developer"})),
    )
    .await
    .error(503, "unavailable");
    let m = h.call("GET", "/metrics", None, None).await;
    assert!(
        m.text
            .contains("tenantgate_admin_login_failures_total{reason=\"busy\"} 1"),
        "{}",
        m.text
    );
    drop(held);
    h.login("busy", "admin@busy.example", "correct horse battery")
        .await;
    state.store().close().await;
    db.cleanup().await;
}

async fn tenant_recreation_drops_old_tokens(h: H, _url: String) {
    let old = h.tenant_with_admin("phoenix").await;
    h.call("GET", "/v1/tenants/phoenix", Some(&old), None)
        .await
        .expect(200);
    h.p("DELETE", "/v1/tenants/phoenix", None).await.expect(204);
    // Re-created with the same admin email and password.
    let fresh = h.tenant_with_admin("phoenix").await;
    h.call("GET", "/v1/tenants/phoenix", Some(&old), None)
        .await
        .error(401, "unauthorized");
    h.call("GET", "/v1/tenants/phoenix", Some(&fresh), None)
        .await
        .expect(200);
}

// ---- policies, rate limits, usage --------------------------------------------------------

async fn policies(h: H, _url: String) {
    h.tenant("pol", "free").await;
    let body = json!({"role": "auditor", "permissions": [{"action": "read", "resource": "*"}, {"action": "*", "resource": "reports"}]});
    let r = h
        .p("PUT", "/v1/tenants/pol/policies/auditor", Some(body))
        .await;
    assert_eq!(
        r.expect(200),
        &json!({"role": "auditor", "permissions": [{"action": "read", "resource": "*"}, {"action": "*", "resource": "reports"}]})
    );
    let g = h.p("GET", "/v1/tenants/pol/policies/auditor", None).await;
    assert_eq!(g.expect(200)["permissions"].as_array().unwrap().len(), 2);
    // Replace (role in the body is optional).
    let r = h
        .p(
            "PUT",
            "/v1/tenants/pol/policies/developer",
            Some(json!({"permissions": [{"action": "read", "resource": "resources"}]})),
        )
        .await;
    assert_eq!(
        r.expect(200)["permissions"],
        json!([{"action": "read", "resource": "resources"}])
    );
    let g = h.p("GET", "/v1/tenants/pol/policies/developer", None).await;
    assert_eq!(
        g.expect(200)["permissions"],
        json!([{"action": "read", "resource": "resources"}])
    );
    let list = h.p("GET", "/v1/tenants/pol/policies", None).await;
    assert_eq!(list.expect(200).as_array().unwrap().len(), 4);
    // Empty permissions are allowed.
    h.p(
        "PUT",
        "/v1/tenants/pol/policies/nobody",
        Some(json!({"permissions": []})),
    )
    .await
    .expect(200);
    // The new role can hold users.
    h.user("pol", "aud@pol.example", "auditor").await;

    h.p("GET", "/v1/tenants/pol/policies/ghost", None)
        .await
        .error(404, "not_found");
    h.p("GET", "/v1/tenants/nope/policies/admin", None)
        .await
        .error(404, "not_found");
    let too_many: Vec<Value> = (0..257)
        .map(|i| json!({"action": "read", "resource": format!("r{i}")}))
        .collect();
    let max: Vec<Value> = (0..256)
        .map(|i| json!({"action": "read", "resource": format!("r{i}")}))
        .collect();
    h.p(
        "PUT",
        "/v1/tenants/pol/policies/big",
        Some(json!({"permissions": max})),
    )
    .await
    .expect(200);
    for (uri, body, field) in [
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": [{"action": "write", "resource": "a"}]}),
            "permissions[0].action",
        ),
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": [{"action": "read", "resource": "a"}, {"action": "read", "resource": "Bad Res"}]}),
            "permissions[1].resource",
        ),
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": [{"action": "read"}]}),
            "permissions[0].resource",
        ),
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": [{"resource": "a"}]}),
            "permissions[0].action",
        ),
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": "all"}),
            "permissions",
        ),
        ("/v1/tenants/pol/policies/x", json!({}), "permissions"),
        (
            "/v1/tenants/pol/policies/x",
            json!({"permissions": too_many}),
            "permissions",
        ),
        (
            "/v1/tenants/pol/policies/x",
            json!({"role": "y", "permissions": []}),
            "role",
        ),
        (
            "/v1/tenants/pol/policies/Bad%20Role",
            json!({"permissions": []}),
            "role",
        ),
        (
            "/v1/tenants/pol/policies/UPPER",
            json!({"permissions": []}),
            "role",
        ),
    ] {
        h.p("PUT", uri, Some(body)).await.invalid(field);
    }
    h.raw("PUT", "/v1/tenants/pol/policies/x", Some(TOKEN), "nope")
        .await
        .error(400, "bad_request");
    h.p("GET", "/v1/tenants/pol/policies/x", None)
        .await
        .error(404, "not_found");
}

async fn rate_limits(h: H, _url: String) {
    h.tenant("rl", "enterprise").await;
    let g = h.p("GET", "/v1/tenants/rl/rate-limit", None).await;
    assert_eq!(
        g.expect(200),
        &json!({"max_requests": 10000, "window_seconds": 60, "source": "plan"})
    );
    let p = h
        .p(
            "PUT",
            "/v1/tenants/rl/rate-limit",
            Some(json!({"max_requests": 5, "window_seconds": 1, "burst": 10})),
        )
        .await;
    assert_eq!(
        p.expect(200),
        &json!({"max_requests": 5, "window_seconds": 1, "burst": 10})
    );
    let g = h.p("GET", "/v1/tenants/rl/rate-limit", None).await;
    assert_eq!(
        g.expect(200),
        &json!({"max_requests": 5, "window_seconds": 1, "burst": 10, "source": "tenant"})
    );
    let p = h
        .p(
            "PUT",
            "/v1/tenants/rl/rate-limit",
            Some(json!({"max_requests": 1_000_000_000, "window_seconds": 86400})),
        )
        .await;
    assert_eq!(
        p.expect(200),
        &json!({"max_requests": 1_000_000_000, "window_seconds": 86400})
    );
    for (body, field) in [
        (
            json!({"max_requests": 0, "window_seconds": 60}),
            "max_requests",
        ),
        (
            json!({"max_requests": -5, "window_seconds": 60}),
            "max_requests",
        ),
        (
            json!({"max_requests": 1_000_000_001u64, "window_seconds": 60}),
            "max_requests",
        ),
        (
            json!({"max_requests": "10", "window_seconds": 60}),
            "max_requests",
        ),
        (json!({"window_seconds": 60}), "max_requests"),
        (
            json!({"max_requests": 10, "window_seconds": 0}),
            "window_seconds",
        ),
        (
            json!({"max_requests": 10, "window_seconds": 86401}),
            "window_seconds",
        ),
        (
            json!({"max_requests": 10, "window_seconds": -1}),
            "window_seconds",
        ),
        (json!({"max_requests": 10}), "window_seconds"),
        (
            json!({"max_requests": 10, "window_seconds": 60, "burst": 0}),
            "burst",
        ),
        (
            json!({"max_requests": 10, "window_seconds": 60, "burst": -1}),
            "burst",
        ),
        (
            json!({"max_requests": 10, "window_seconds": 60, "burst": 2_000_000_000u64}),
            "burst",
        ),
    ] {
        h.p("PUT", "/v1/tenants/rl/rate-limit", Some(body))
            .await
            .invalid(field);
    }
    h.raw("PUT", "/v1/tenants/rl/rate-limit", Some(TOKEN), "{]")
        .await
        .error(400, "bad_request");
    h.p("GET", "/v1/tenants/nope/rate-limit", None)
        .await
        .error(404, "not_found");

    // A tenant admin may lower its limit, not raise it above its plan's (pro: 1000/60 s).
    let admin = h.tenant_with_admin("rlself").await;
    let put = |body: serde_json::Value| {
        let admin = admin.clone();
        let h = &h;
        async move {
            h.call(
                "PUT",
                "/v1/tenants/rlself/rate-limit",
                Some(&admin),
                Some(body),
            )
            .await
        }
    };
    put(json!({"max_requests": 100, "window_seconds": 60}))
        .await
        .expect(200);
    put(json!({"max_requests": 1000, "window_seconds": 60, "burst": 1000}))
        .await
        .expect(200);
    put(json!({"max_requests": 1001, "window_seconds": 60}))
        .await
        .error(403, "forbidden");
    put(json!({"max_requests": 1000000000, "window_seconds": 1}))
        .await
        .error(403, "forbidden");
    put(json!({"max_requests": 100, "window_seconds": 60, "burst": 5000}))
        .await
        .error(403, "forbidden");
    let g = h.p("GET", "/v1/tenants/rlself/rate-limit", None).await;
    assert_eq!(
        g.body["max_requests"], 1000,
        "the refused PUTs changed nothing"
    );
    // The platform token may set anything.
    h.p(
        "PUT",
        "/v1/tenants/rlself/rate-limit",
        Some(json!({"max_requests": 1000000, "window_seconds": 1})),
    )
    .await
    .expect(200);
}

const USAGE_FIELDS: [&str; 6] = [
    "requests",
    "rate_limited",
    "denied",
    "upstream_errors",
    "bytes_in",
    "bytes_out",
];

async fn usage(h: H, _url: String) {
    h.tenant("use", "free").await;
    // Defaults: hourly, the last 24 h, zero-filled.
    let r = h.p("GET", "/v1/tenants/use/usage", None).await;
    let b = r.expect(200).clone();
    assert_eq!(b["tenant_id"], "use");
    assert_eq!(b["granularity"], "hour");
    assert!(is_rfc3339_z(b["from"].as_str().unwrap()) && is_rfc3339_z(b["to"].as_str().unwrap()));
    let series = b["series"].as_array().unwrap();
    assert!((24..=25).contains(&series.len()), "{}", series.len());
    for p in series {
        assert!(is_rfc3339_z(p["bucket_start"].as_str().unwrap()));
        for f in USAGE_FIELDS {
            assert_eq!(p[f], 0, "{p}");
        }
    }
    for f in USAGE_FIELDS {
        assert_eq!(b["totals"][f], 0);
    }
    assert!(b["totals"].get("bucket_start").is_none());

    // Metered minutes roll up.
    let t0 = chrono::DateTime::parse_from_rfc3339("2024-03-01T10:00:00Z")
        .unwrap()
        .timestamp();
    let delta = |offset: i64, requests: u64| tenantgate_core::usage::UsageDelta {
        tenant_id: "use".into(),
        bucket_start: t0 + offset,
        counts: tenantgate_core::usage::UsageCounts {
            requests,
            denied: 1,
            bytes_in: 100,
            ..Default::default()
        },
    };
    h.store()
        .apply_usage("node-a", 1, &[delta(0, 5), delta(60, 7), delta(3_600, 11)])
        .await
        .unwrap();
    let r = h
        .p("GET", "/v1/tenants/use/usage?from=2024-03-01T10:00:00Z&to=2024-03-01T12:00:00Z&granularity=hour", None)
        .await;
    let b = r.expect(200).clone();
    let reqs: Vec<u64> = b["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(reqs, [12, 11]);
    assert_eq!(b["series"][0]["bucket_start"], "2024-03-01T10:00:00Z");
    assert_eq!(b["totals"]["requests"], 23);
    assert_eq!(b["totals"]["denied"], 3);
    assert_eq!(b["totals"]["bytes_in"], 300);
    let r = h
        .p("GET", "/v1/tenants/use/usage?from=2024-03-01T10:00:30Z&to=2024-03-01T10:03:00Z&granularity=minute", None)
        .await;
    let b = r.expect(200).clone();
    assert_eq!(b["from"], "2024-03-01T10:00:00Z");
    let reqs: Vec<u64> = b["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(reqs, [5, 7, 0]);
    let r = h
        .p("GET", "/v1/tenants/use/usage?from=2024-03-01T00:00:00%2B02:00&to=2024-03-03T00:00:00Z&granularity=day", None)
        .await;
    let b = r.expect(200).clone();
    assert_eq!(b["series"].as_array().unwrap().len(), 3);
    assert_eq!(b["series"][0]["bucket_start"], "2024-02-29T00:00:00Z");
    assert_eq!(b["series"][1]["requests"], 23);
    // Any range: past 10 000 buckets only the non-empty ones, totals complete.
    let r = h
        .p("GET", "/v1/tenants/use/usage?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=minute", None)
        .await;
    let b = r.expect(200).clone();
    assert_eq!(b["sparse"], true);
    assert_eq!(b["series"].as_array().unwrap().len(), 3);
    assert_eq!(b["totals"]["requests"], 23);

    for (q, field) in [
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("to=2024-13-45T00:00:00Z", "to"),
        ("to=", "to"),
        ("group_by=colour", "group_by"),
        ("group_by=tenant", "group_by"),
    ] {
        h.p("GET", &format!("/v1/tenants/use/usage?{q}"), None)
            .await
            .invalid(field);
    }
    h.p("GET", "/v1/tenants/nope/usage", None)
        .await
        .error(404, "not_found");
}

// ---- meta -------------------------------------------------------------------------------

async fn meta_routes(h: H, _url: String) {
    let r = h.call("GET", "/health", None, None).await;
    let b = r.expect(200);
    assert_eq!(b["status"], "ok");
    assert_eq!(b["checks"]["store"]["status"], "ok");
    assert!(b["checks"]["store"]["latency_ms"].is_number());

    h.call("GET", "/v1/tenants", None, None)
        .await
        .error(401, "unauthorized");
    h.p("GET", "/v1/tenants", None).await.expect(200);
    let m = h.call("GET", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        m.text.contains(
            r#"tenantgate_admin_requests_total{method="GET",route="/v1/tenants",status="401"} 1"#
        ),
        "{}",
        m.text
    );
    assert!(
        m.text.contains(r#"route="/v1/tenants",status="200"} 1"#),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("tenantgate_admin_request_duration_seconds_bucket"),
        "{}",
        m.text
    );

    let o = h.call("GET", "/openapi.json", None, None).await;
    let doc = o.expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/tenants", &["post", "get"][..]),
        ("/v1/tenants/{id}", &["get", "patch", "delete"][..]),
        ("/v1/tenants/{id}/api-keys", &["post", "get"][..]),
        (
            "/v1/tenants/{id}/api-keys/{key_id}",
            &["delete", "patch"][..],
        ),
        ("/v1/tenants/{id}/api-keys/{key_id}/rotate", &["post"][..]),
        ("/v1/tenants/{id}/users", &["post", "get"][..]),
        ("/v1/auth/login", &["post"][..]),
        ("/.well-known/jwks.json", &["get"][..]),
        ("/v1/tenants/{id}/policies", &["get"][..]),
        ("/v1/tenants/{id}/policies/{role}", &["get", "put"][..]),
        ("/v1/tenants/{id}/rate-limit", &["get", "put", "delete"][..]),
        (
            "/v1/tenants/{id}/api-keys/{key_id}/rate-limit",
            &["get", "put", "delete"][..],
        ),
        ("/v1/tenants/{id}/quota", &["get", "put", "delete"][..]),
        ("/v1/plans", &["get"][..]),
        ("/v1/plans/{name}", &["get", "put"][..]),
        ("/v1/tenants/{id}/usage", &["get"][..]),
        ("/health", &["get"][..]),
        ("/metrics", &["get"][..]),
        ("/openapi.json", &["get"][..]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for m in methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing");
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let j = h.call("GET", "/.well-known/jwks.json", None, None).await;
    let keys = j.expect(200)["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], h.state.signing_kid());
    for f in ["kty", "use", "alg", "kid", "n", "e"] {
        assert!(keys[0][f].is_string(), "{f}");
    }
    assert!(keys[0].get("d").is_none());
}

async fn error_shapes(h: H, _url: String) {
    // Unknown route and wrong method, in the contract's shape.
    h.p("GET", "/v1/nothing-here", None)
        .await
        .error(404, "not_found");
    h.call("GET", "/", None, None).await.error(404, "not_found");
    let r = h.p("PUT", "/v1/tenants", Some(json!({}))).await;
    r.error(405, "method_not_allowed");
    assert!(r.headers.contains_key("allow"));
    h.call("DELETE", "/health", None, None)
        .await
        .error(405, "method_not_allowed");

    // The request id: the client's when sane, else a new uuid; always echoed.
    let req = Request::builder()
        .uri("/v1/tenants/x")
        .header("x-request-id", "client-id_1.2")
        .body(Body::empty())
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.error(401, "unauthorized")["request_id"], "client-id_1.2");
    let req = Request::builder()
        .uri("/v1/tenants/x")
        .header("x-request-id", "not sane!")
        .body(Body::empty())
        .unwrap();
    let r = h.send(req).await;
    let rid = r.error(401, "unauthorized")["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&rid).is_ok());
    let r = h.call("GET", "/health", None, None).await;
    assert!(uuid::Uuid::parse_str(r.headers["x-request-id"].to_str().unwrap()).is_ok());
    let req = Request::builder()
        .uri("/health")
        .header("x-request-id", "abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(req).await.headers["x-request-id"], "abc");

    // Oversized bodies are refused in the same shape.
    let big = format!(
        "{{\"name\": \"{}\", \"tier\": \"free\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = h.raw("POST", "/v1/tenants", Some(TOKEN), &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["error"]["code"], "payload_too_large");
}

// ---- signing keys and failures ------------------------------------------------------------

async fn signing_keys_persist_and_rotate(h: H, url: String) {
    let kid = h.state.signing_kid().to_owned();
    // The private key is stored sealed.
    let row = sqlx::query("SELECT private_sealed, public_jwk FROM signing_keys WHERE kid = $1")
        .bind(&kid)
        .fetch_one(h.store().pool())
        .await
        .unwrap();
    let sealed: String = row.get(0);
    assert!(!sealed.contains("PRIVATE"));
    let der = h.state.keys().signer().pkcs8_der().unwrap();
    {
        use base64::Engine;
        let plain = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(!sealed.contains(&plain[40..120]));
    }
    assert_eq!(
        tenantgate_core::sealing::open(&[7u8; 32], &sealed).unwrap(),
        der
    );

    // A restart with the same KEK keeps the key.
    let again = build_state(Store::open(&url, 2).await.unwrap(), options([7u8; 32]))
        .await
        .unwrap();
    assert_eq!(again.signing_kid(), kid);

    // Two processes starting at once on one database both come up.
    let (a, b) = tokio::join!(
        async { build_state(Store::open(&url, 2).await.unwrap(), options([9u8; 32])).await },
        async { build_state(Store::open(&url, 2).await.unwrap(), options([9u8; 32])).await },
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // The old key did not open with the new KEK: it is retired, but still published
    // while its tokens may live.
    let keys = h.store().list_signing_keys().await.unwrap();
    let old = keys.iter().find(|k| k.kid == kid).unwrap();
    assert!(old.retired_at_ms.is_some());
    assert_ne!(a.signing_kid(), kid);

    // A token of one process is accepted by the other (after its key refresh).
    h.tenant("shared", "free").await;
    user_u1(&h, "shared").await;
    let token = a
        .keys()
        .signer()
        .sign(&claims("shared", "admin", 300))
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let hb = H {
        app: app(b.clone()),
        state: b.clone(),
    };
    hb.call("GET", "/v1/tenants/shared", Some(&token), None)
        .await
        .expect(200);
    let jwks = hb.call("GET", "/.well-known/jwks.json", None, None).await;
    let kids: Vec<&str> = jwks.expect(200)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&a.signing_kid()) && kids.contains(&b.signing_kid()),
        "{kids:?}"
    );
    // A token from the retired key is still honoured by the original process.
    let old_token = h
        .state
        .keys()
        .signer()
        .sign(&claims("shared", "admin", 300))
        .unwrap();
    h.call("GET", "/v1/tenants/shared", Some(&old_token), None)
        .await
        .expect(200);
    for s in [again, a, b] {
        s.store().close().await;
    }
}

async fn store_failures_are_503(h: H, _url: String) {
    h.tenant("down", "free").await;
    h.store().close().await;
    let r = h.p("GET", "/v1/tenants/down", None).await;
    let err = r.error(503, "unavailable");
    let msg = err["message"].as_str().unwrap().to_lowercase();
    assert!(!msg.contains("pool") && !msg.contains("sql"), "{msg}");
    let r = h.call("GET", "/health", None, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["status"], "unavailable");
    assert_eq!(r.body["checks"]["store"]["status"], "unavailable");
}

// ---- KEK ----------------------------------------------------------------------------------

#[tokio::test]
async fn kek_from_secret_or_generated_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tenantgate_core::Settings::default();
    cfg.store.data_dir = dir.path().join("nested/data");
    let k1 = tenantgate_core::sealing::load_kek(&cfg).await.unwrap();
    let path = cfg.store.data_dir.join("secret.key");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let k2 = tenantgate_core::sealing::load_kek(&cfg).await.unwrap();
    assert_eq!(k1, k2);

    cfg.admin.secret_key = Some("a-long-server-secret".into());
    let k3 = tenantgate_core::sealing::load_kek(&cfg).await.unwrap();
    assert_eq!(
        k3,
        tenantgate_core::sealing::derive_kek(b"a-long-server-secret")
    );
    assert_ne!(k3, k1);

    cfg.admin.secret_key = None;
    std::fs::write(&path, "garbage").unwrap();
    assert!(tenantgate_core::sealing::load_kek(&cfg).await.is_err());
}

#[test]
fn options_from_config() {
    use sha2::Digest;
    let mut cfg = tenantgate_core::Settings::default();
    cfg.security.api_key_pepper = Some("zq-pepper-value".into());
    let o = AdminOptions::from_settings(&cfg, sha2::Sha256::digest(b"tok").into(), [1u8; 32]);
    assert_eq!(
        o.bootstrap_token_sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(b"tok"))
    );
    assert_eq!(o.api_key_pepper.as_deref(), Some(&b"zq-pepper-value"[..]));
    assert_eq!(o.issuer, cfg.admin.issuer);
    assert_eq!(o.token_ttl_seconds, cfg.admin.token_ttl.as_secs());
    assert!(!format!("{o:?}").contains("zq-pepper"));
}

/// The real server: HTTP over TCP, and a graceful stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http_and_stops_on_shutdown() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let state = build_state(store.clone(), options([3u8; 32]))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tenantgate_admin::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    let created = client
        .post(format!("http://{addr}/v1/tenants"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "wire", "name": "Wire", "tier": "free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let denied = client
        .get(format!("http://{addr}/v1/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    store.close().await;
    db.cleanup().await;
}

/// With a pepper the stored digest is HMAC-SHA-256 keyed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_digest_uses_the_pepper() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let mut opts = options([5u8; 32]);
    opts.api_key_pepper = Some(b"fleet-pepper".to_vec());
    let state = build_state(store.clone(), opts).await.unwrap();
    let h = H {
        app: app(state.clone()),
        state,
    };
    h.tenant("pep", "free").await;
    let k = h
        .p(
            "POST",
            "/v1/tenants/pep/api-keys",
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await
        .expect(201)
        .clone();
    let key = k["key"].as_str().unwrap();
    let stored = store
        .get_api_key("pep", k["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.digest,
        tenantgate_core::secrets::api_key_digest(key, Some(b"fleet-pepper"))
    );
    assert_ne!(
        stored.digest,
        tenantgate_core::secrets::api_key_digest(key, None)
    );
    store.close().await;
    db.cleanup().await;
}

// ---- issuers bound to a tenant ---------------------------------------------------------

on_both_backends!(issuers_bound_to_tenants);

async fn issuers_bound_to_tenants(h: H, _url: String) {
    let acme_admin = h.tenant_with_admin("acme").await;
    h.tenant("other", "free").await;
    let body = |iss: &str| {
        json!({"issuer": iss, "jwks_url": "https://idp.acme.example/jwks",
            "audiences": ["tenantgate", "tenantgate"], "algorithms": ["ES256", "RS256"],
            "role_claim": "groups", "default_role": "read_only", "max_lifetime_seconds": 900})
    };
    let created = h
        .p(
            "POST",
            "/v1/tenants/acme/issuers",
            Some(body("https://idp.acme.example")),
        )
        .await
        .expect(201)
        .clone();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant_id"], "acme");
    assert_eq!(created["issuer"], "https://idp.acme.example");
    assert_eq!(created["audiences"], json!(["tenantgate"]));
    assert_eq!(created["algorithms"], json!(["ES256", "RS256"]));
    assert_eq!(created["tenant_claim"], "tenant_id");
    assert_eq!(created["role_claim"], "groups");
    assert_eq!(created["default_role"], "read_only");
    assert_eq!(created["max_lifetime_seconds"], 900);
    assert!(is_rfc3339_z(created["created_at"].as_str().unwrap()));
    // An issue change is in the feed for the proxies.
    let changes = h.store().changes_since(0, i64::MAX, 1000).await.unwrap();
    assert!(changes
        .iter()
        .any(|c| c.kind == tenantgate_core::ChangeKind::Issuer && c.subject == id));

    // Listed for its tenant, by its tenant admin too; never for another.
    let list = h
        .p("GET", "/v1/tenants/acme/issuers", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(list, json!([created.clone()]));
    let own = h
        .call("GET", "/v1/tenants/acme/issuers", Some(&acme_admin), None)
        .await;
    assert_eq!(own.expect(200).clone(), json!([created.clone()]));
    h.call("GET", "/v1/tenants/other/issuers", Some(&acme_admin), None)
        .await
        .error(404, "not_found");
    h.call(
        "POST",
        "/v1/tenants/other/issuers",
        Some(&acme_admin),
        Some(body("https://idp.other.example")),
    )
    .await
    .error(404, "not_found");
    assert_eq!(
        h.p("GET", "/v1/tenants/other/issuers", None)
            .await
            .expect(200)
            .clone(),
        json!([])
    );

    // One tenant per issuer; never a configured issuer (nor the login tokens').
    for (tenant, iss) in [
        ("other", "https://idp.acme.example"),
        ("acme", "https://idp.acme.example"),
        ("other", "https://configured.example"),
        ("other", "https://configured.example/"),
    ] {
        h.p(
            "POST",
            &format!("/v1/tenants/{tenant}/issuers"),
            Some(body(iss)),
        )
        .await
        .error(409, "conflict");
    }

    // Validation names the field.
    let with = |k: &str, v: Value| {
        let mut b = body("https://idp2.acme.example");
        b[k] = v;
        b
    };
    for (b, field) in [
        (
            with("jwks_url", json!("http://idp.acme.example/jwks")),
            "jwks_url",
        ),
        (
            with("jwks_url", json!("http://127.0.0.1:1/jwks")),
            "jwks_url",
        ),
        (with("issuer", json!("")), "issuer"),
        (with("issuer", json!("acme-idp")), "issuer"),
        (with("audiences", json!([])), "audiences"),
        (with("audiences", json!([""])), "audiences[0]"),
        (with("algorithms", json!(["HS256"])), "algorithms"),
        (
            with("max_lifetime_seconds", json!(0)),
            "max_lifetime_seconds",
        ),
        (with("default_role", json!("Admin!")), "default_role"),
    ] {
        h.p("POST", "/v1/tenants/acme/issuers", Some(b))
            .await
            .invalid(field);
    }
    h.raw("POST", "/v1/tenants/acme/issuers", Some(TOKEN), "{nope")
        .await
        .error(400, "bad_request");

    // Unbinding: another tenant's path is 404, twice is 404.
    h.p("DELETE", &format!("/v1/tenants/other/issuers/{id}"), None)
        .await
        .error(404, "not_found");
    let r = h
        .call(
            "DELETE",
            &format!("/v1/tenants/acme/issuers/{id}"),
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    h.p("DELETE", &format!("/v1/tenants/acme/issuers/{id}"), None)
        .await
        .error(404, "not_found");
    assert_eq!(
        h.p("GET", "/v1/tenants/acme/issuers", None)
            .await
            .expect(200)
            .clone(),
        json!([])
    );
    // Now free for another tenant; deleting that tenant unbinds it.
    h.p(
        "POST",
        "/v1/tenants/other/issuers",
        Some(body("https://idp.acme.example")),
    )
    .await
    .expect(201);
    h.p("DELETE", "/v1/tenants/other", None).await;
    assert!(h.store().all_tenant_issuers().await.unwrap().is_empty());

    // At most MAX_ISSUERS_PER_TENANT per tenant.
    for i in 0..tenantgate_core::issuers::MAX_ISSUERS_PER_TENANT {
        h.p(
            "POST",
            "/v1/tenants/acme/issuers",
            Some(body(&format!("https://idp{i}.acme.example"))),
        )
        .await
        .expect(201);
    }
    h.p(
        "POST",
        "/v1/tenants/acme/issuers",
        Some(body("https://one-too-many.example")),
    )
    .await
    .error(409, "conflict");
}
