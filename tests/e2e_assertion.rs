//! The signed tenant assertion through the real binary: what upstreams receive,
//! where the keys are published, the demo's `require_assertion`, per-request
//! binding, rotation published ahead of use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, stack, Stack};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tenantgate_core::assertion::{decoding_key, verify, AssertionJwks, VerifiedAssertion};

async fn jwks(s: &Stack, url: &str) -> AssertionJwks {
    let r = s.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/jwk-set+json"
    );
    r.json().await.unwrap()
}

async fn proxy_jwks(s: &Stack) -> AssertionJwks {
    jwks(s, &format!("{}/.well-known/jwks.json", s.proxy_admin)).await
}

async fn admin_jwks(s: &Stack) -> AssertionJwks {
    jwks(
        s,
        &format!("{}/.well-known/tenant-assertion-jwks.json", s.admin),
    )
    .await
}

fn check(jwks: &AssertionJwks, token: &str, aud: &str) -> VerifiedAssertion {
    let keys: HashMap<_, _> = jwks
        .keys
        .iter()
        .map(|k| (k.kid.clone(), decoding_key(k).unwrap()))
        .collect();
    verify(token, &keys, "tenantgate", Some(aud), 5).unwrap()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// The assertion the upstream received, as the demo's whoami reports it.
async fn received(s: &Stack, key: &str, path: &str) -> (u16, Value) {
    let (st, _, v) = s
        .call(
            "GET",
            path,
            &[
                ("x-api-key", key),
                ("x-tenant-assertion", "forged.by.client"),
                ("x_tenant_assertion", "forged.by.client"),
            ],
            None,
        )
        .await;
    (st, v)
}

fn assertion_of(v: &Value) -> String {
    v["headers"]["x-tenant-assertion"]
        .as_str()
        .unwrap_or_else(|| panic!("no assertion upstream: {v}"))
        .to_owned()
}

#[tokio::test]
async fn upstreams_receive_a_verifiable_assertion_matching_the_identity_headers() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    let (key, key_id) = s.key("acme", "developer").await;
    let (st, v) = received(&s, &key, "/api/v1/whoami").await;
    assert_eq!(st, 200, "{v}");
    let token = assertion_of(&v);
    assert!(
        !token.contains("forged"),
        "the client's copies were scrubbed"
    );
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("tenant-assertion+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    // Both JWKS endpoints publish the key.
    let from_proxy = proxy_jwks(&s).await;
    let from_admin = admin_jwks(&s).await;
    assert_eq!(from_proxy, from_admin);
    let c = check(&from_proxy, &token, "/api/v1/");
    assert_eq!(c.tenant_id, "acme");
    assert_eq!(c.sub, key_id);
    assert_eq!(c.api_key_id.as_deref(), Some(key_id.as_str()));
    assert_eq!(c.role, "developer");
    assert_eq!(c.auth_method, "api_key");
    assert_eq!(c.exp - c.iat, 60);
    assert_eq!(v["user_id"], key_id.as_str());
    // Amortised: the next request carries the same assertion.
    let (_, again) = received(&s, &key, "/api/v1/whoami").await;
    assert_eq!(assertion_of(&again), token);
    // JWT logins get one too, with the user as sub.
    let bearer = format!("Bearer {}", s.tenant_admin_token("acme").await);
    let (st, _, v) = s
        .call("GET", "/api/v1/whoami", &[("authorization", &bearer)], None)
        .await;
    assert_eq!(st, 200, "{v}");
    let c = check(&from_proxy, &assertion_of(&v), "/api/v1/");
    assert_eq!((c.auth_method.as_str(), c.role.as_str()), ("jwt", "admin"));
    assert_eq!(c.sub, v["user_id"].as_str().unwrap());
    assert!(c.api_key_id.is_none());
    // The signer's counters.
    let metrics = s.proxy_metrics().await;
    assert!(
        metrics.contains("tenantgate_assertion_key_ready 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenantgate_assertions_reused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_demo_requiring_assertions_refuses_forged_and_mismatched_identities() {
    let s = stack()
        .demo_extra("require_assertion = true")
        .routes(
            r#"
[[routes]]
prefix = "/api/v1/"
upstream = "DEMO"
audience = "demo-app"
[[routes]]
prefix = "/api/v1/bytes/"
upstream = "DEMO"
public = true
"#,
        )
        .start()
        .await;
    s.tenant("acme", "pro").await;
    s.tenant("evil", "pro").await;
    let (key, _) = s.key("acme", "developer").await;
    // Through the proxy: accepted.
    let (st, v) = s.with_key("POST", "/api/v1/resources", &key).await;
    assert_ne!(st, 401, "{v}");
    let (st, v) = received(&s, &key, "/api/v1/whoami").await;
    assert_eq!(st, 200, "{v}");
    let token = assertion_of(&v);
    let c = check(&proxy_jwks(&s).await, &token, "demo-app");
    assert_eq!(c.tenant_id, "acme");

    // Straight to the upstream with plain headers: refused.
    let (st, v) = direct(
        &s,
        vec![("x-tenant-id", "acme".into())],
        "GET",
        "/api/v1/resources",
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_assertion")),
        "{v}"
    );
    // A valid assertion but the plain headers claim another tenant: refused.
    let spoof = identity_headers("evil", &c.sub, &token);
    let (st, v) = direct(&s, spoof, "GET", "/api/v1/resources").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_assertion")),
        "{v}"
    );
    // A forged signature: refused.
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let headers = |t: &str| identity_headers("acme", &c.sub, t);
    let (st, _) = direct(&s, headers(&forged), "GET", "/api/v1/resources").await;
    assert_eq!(st, 401);
    // The genuine assertion with matching headers is accepted (it is not bound).
    let (st, v) = direct(&s, headers(&token), "GET", "/api/v1/resources").await;
    assert_eq!(st, 200, "{v}");

    // The demo's health stays open; a public route carries no assertion and the
    // demo refuses it.
    let (st, _) = direct(&s, vec![], "GET", "/health").await;
    assert_eq!(st, 200);
    let (st, _, v) = s.call("GET", "/api/v1/bytes/3", &[], None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_assertion")),
        "{v}"
    );
}

/// The plain identity headers of an API key of `tenant` (a developer) plus `assertion`.
fn identity_headers(tenant: &str, key_id: &str, assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-tenant-id", tenant.to_owned()),
        ("x-user-id", key_id.to_owned()),
        ("x-tenant-role", "developer".into()),
        ("x-auth-method", "api_key".into()),
        ("x-api-key-id", key_id.to_owned()),
        ("x-tenant-assertion", assertion.to_owned()),
    ]
}

/// Straight to the demo upstream, bypassing the proxy.
async fn direct(
    s: &Stack,
    headers: Vec<(&'static str, String)>,
    method: &str,
    path: &str,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.http.request(m, format!("{}{path}", s.demo));
    for (n, v) in headers {
        req = req.header(n, v);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bound_assertions_name_their_request_and_cannot_be_replayed_elsewhere() {
    let s = stack()
        .demo_extra("require_assertion = true")
        .extra("[assertion]\nbind_request = true")
        .start()
        .await;
    s.tenant("acme", "pro").await;
    let (key, _) = s.key("acme", "developer").await;
    let (st, v) = received(&s, &key, "/api/v1/whoami?x=1").await;
    assert_eq!(st, 200, "{v}");
    let bound = assertion_of(&v);
    let (_, v2) = received(&s, &key, "/api/v1/whoami?x=1").await;
    assert_ne!(assertion_of(&v2), bound, "one assertion per request");
    let c = check(&proxy_jwks(&s).await, &bound, "/api/v1/");
    assert_eq!(c.htm.as_deref(), Some("GET"));
    assert_eq!(c.htu.as_deref(), Some("/api/v1/whoami?x=1"));
    assert_eq!(c.request_id.as_deref(), v["request_id"].as_str());
    let headers = |t: &str| identity_headers("acme", &c.sub, t);
    // Replayed on the same request: accepted; on another path or method: refused.
    let (st, v) = direct(&s, headers(&bound), "GET", "/api/v1/whoami?x=1").await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = direct(&s, headers(&bound), "GET", "/api/v1/whoami?x=2").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_assertion")),
        "{v}"
    );
    let (st, _) = direct(&s, headers(&bound), "GET", "/api/v1/resources").await;
    assert_eq!(st, 401);
    let (st, _) = direct(&s, headers(&bound), "DELETE", "/api/v1/whoami?x=1").await;
    assert_eq!(st, 401);
    // Through the proxy every method works.
    let (st, v) = s.with_key("POST", "/api/v1/resources", &key).await;
    assert_ne!(st, 401, "{v}");
}

#[tokio::test]
async fn a_rotated_key_is_published_before_it_signs() {
    let s = stack()
        .extra("[assertion]\npublish_ahead_seconds = 3")
        .start()
        .await;
    s.tenant("acme", "pro").await;
    let (key, _) = s.key("acme", "developer").await;
    let (_, v) = received(&s, &key, "/api/v1/whoami").await;
    let old_kid = kid(&assertion_of(&v));
    // Only the platform may rotate.
    let token = s.tenant_admin_token("acme").await;
    let (st, _) = s
        .admin_as(&token, "POST", "/v1/assertion-keys/rotate", None)
        .await;
    assert_eq!(st, 403);
    let rotated_at = Instant::now();
    let (st, rotated) = s.admin("POST", "/v1/assertion-keys/rotate", None).await;
    assert_eq!(st, 201, "{rotated}");
    assert_eq!(rotated["status"], "published");
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    // Published by the proxy within a second (the change feed), well before use.
    let published = eventually(Duration::from_secs(2), || async {
        proxy_jwks(&s).await.keys.iter().any(|k| k.kid == new_kid)
    })
    .await;
    assert!(published.is_some(), "the new key reached the proxy's JWKS");
    assert!(admin_jwks(&s).await.keys.iter().any(|k| k.kid == new_kid));
    let (_, v) = received(&s, &key, "/api/v1/whoami").await;
    let signed_by = kid(&assertion_of(&v));
    if rotated_at.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(signed_by, old_kid, "not used before its activation");
    }
    let (st, list) = s.admin("GET", "/v1/assertion-keys", None).await;
    assert_eq!(st, 200);
    assert_eq!(list["keys"].as_array().unwrap().len(), 2, "{list}");
    // After its activation, it signs (amortised assertions are re-signed).
    let switched = eventually(Duration::from_secs(10), || async {
        let (_, v) = received(&s, &key, "/api/v1/whoami").await;
        kid(&assertion_of(&v)) == new_kid
    })
    .await;
    assert!(
        switched.is_some(),
        "the new key took over; log:\n{}",
        s.log()
    );
    assert!(rotated_at.elapsed() >= Duration::from_secs(3));
    let (_, v) = received(&s, &key, "/api/v1/whoami").await;
    check(&proxy_jwks(&s).await, &assertion_of(&v), "/api/v1/");
}

#[tokio::test]
async fn assertions_can_be_turned_off_globally_or_per_route() {
    let off = stack().extra("[assertion]\nenabled = false").start().await;
    let per_route = stack()
        .routes("[[routes]]\nprefix = \"/api/v1/\"\nupstream = \"DEMO\"\nassertion = false")
        .start()
        .await;
    for s in [&off, &per_route] {
        s.tenant("acme", "pro").await;
        let (key, _) = s.key("acme", "developer").await;
        let (st, v) = received(s, &key, "/api/v1/whoami").await;
        assert_eq!(st, 200);
        // Not even the client's forged copies get through.
        assert!(v["headers"].get("x-tenant-assertion").is_none(), "{v}");
    }
}

/// Runs `program args` with `stdin`; `(success, stdout, stderr)`.
fn run(program: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a snippet's toolchain is here; in CI it must be (`.ci/run` installs it).
fn toolchain(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "{what} is required in CI (.ci/run installs it)"
        );
        eprintln!("\n*** SKIPPING the {what} snippet check: not installed here ***\n");
    }
    present
}

/// The README's Python and Node snippets (examples/verify-assertion) verify real
/// assertions with standard JWT libraries and refuse tampered ones.
#[tokio::test]
async fn standard_jwt_libraries_verify_the_assertion() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    let (key, _) = s.key("acme", "developer").await;
    let (_, v) = received(&s, &key, "/api/v1/whoami").await;
    let token = assertion_of(&v);
    let mut tampered = token.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let jwks = format!("{}/.well-known/jwks.json", s.proxy_admin);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify-assertion");
    let python = run("python3", &["-c", "import jwt, cryptography"], "").0;
    let node = std::path::Path::new(dir).join("node_modules/jose").exists();
    let mut checks: Vec<(&str, Vec<String>)> = Vec::new();
    if toolchain("Python (PyJWT[crypto])", python) {
        checks.push(("python3", vec![format!("{dir}/verify.py")]));
    }
    if toolchain("Node (jose; npm ci in examples/verify-assertion)", node) {
        checks.push(("node", vec![format!("{dir}/verify.mjs")]));
    }
    for (program, script) in checks {
        let args = |aud: &'static str| {
            let mut a: Vec<String> = script.clone();
            a.extend([jwks.clone(), "tenantgate".into(), aud.into()]);
            a
        };
        let ok_args = args("/api/v1/");
        let ok_args: Vec<&str> = ok_args.iter().map(String::as_str).collect();
        let (ok, out, err) = run(program, &ok_args, &token);
        assert!(ok, "{program}: {err}");
        let claims: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(claims["tenant_id"], "acme", "{program}: {out}");
        let (ok, _, _) = run(program, &ok_args, &tampered);
        assert!(!ok, "{program} accepted a tampered assertion");
        let wrong = args("/other/");
        let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
        let (ok, _, _) = run(program, &wrong, &token);
        assert!(!ok, "{program} accepted another audience");
    }
}
