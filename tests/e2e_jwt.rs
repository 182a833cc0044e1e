#![allow(clippy::unwrap_used, clippy::expect_used)]
//! JWTs through the proxy: login tokens from the admin API and an external issuer
//! configured with a public key file, plus the usual attacks.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::stack;
use serde_json::{json, Value};
use tenantgate_core::jwt::SigningKey;

const IDP: &str = "https://idp.e2e.test";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(tenant: &str, aud: &str, iss: &str, exp: i64) -> Value {
    json!({"sub": "user-7", "tenant_id": tenant, "role": "developer", "iss": iss, "aud": aud, "iat": now(), "exp": exp})
}

/// A kid-less RS256 token (the PEM-file issuer has exactly one key).
fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign_with_header(&json!({"alg": "RS256", "typ": "JWT"}), claims)
        .unwrap()
}

async fn status_with_bearer(s: &common::Stack, token: &str) -> (u16, Value) {
    s.with_bearer("GET", "/api/v1/whoami", token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_and_external_issuer_tokens() {
    let idp = SigningKey::generate().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tg_jwt_e2e_{}",
        tenantgate_core::secrets::random_token(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("idp.pem");
    let pem = idp.public_key_pem().unwrap();
    std::fs::write(&pem_path, &pem).unwrap();
    let s = stack()
        .dir(dir.clone())
        .extra(&format!(
            "[[jwt.issuers]]\nissuer = \"{IDP}\"\naudiences = [\"tenantgate\"]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
            pem_path.display()
        ))
        .start()
        .await;
    let t = s.tenant("jwtco", "pro").await;

    // Login token of the admin user.
    let token = &s.tenant_admin_token(&t).await;
    let (st, v) = status_with_bearer(&s, token).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], "jwtco");
    assert_eq!(v["role"], "admin");
    assert_eq!(v["auth_method"], "jwt");
    assert!(v["api_key_id"].is_null());
    // cached path gives the same answer
    assert_eq!(status_with_bearer(&s, token).await.0, 200);

    // External issuer: valid.
    let good = sign(&idp, &claims(&t, "tenantgate", IDP, now() + 300));
    let (st, v) = status_with_bearer(&s, &good).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], "user-7");
    assert_eq!(v["role"], "developer");

    let expect_invalid = |(st, v): (u16, Value)| {
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["error"]["code"], "invalid_token", "{v}");
    };
    // expired (beyond leeway), wrong audience, wrong issuer
    expect_invalid(
        status_with_bearer(
            &s,
            &sign(&idp, &claims(&t, "tenantgate", IDP, now() - 3600)),
        )
        .await,
    );
    expect_invalid(
        status_with_bearer(
            &s,
            &sign(&idp, &claims(&t, "someone-else", IDP, now() + 300)),
        )
        .await,
    );
    expect_invalid(
        status_with_bearer(
            &s,
            &sign(
                &idp,
                &claims(&t, "tenantgate", "https://evil.test", now() + 300),
            ),
        )
        .await,
    );
    // signed by another key
    let other = SigningKey::generate().unwrap();
    expect_invalid(
        status_with_bearer(
            &s,
            &sign(&other, &claims(&t, "tenantgate", IDP, now() + 300)),
        )
        .await,
    );
    // alg none
    let seg = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let none = format!(
        "{}.{}.",
        seg(&json!({"alg": "none", "typ": "JWT"})),
        seg(&claims(&t, "tenantgate", IDP, now() + 300))
    );
    expect_invalid(status_with_bearer(&s, &none).await);
    // HS256 "signed" with the issuer's public key as the HMAC secret
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(&t, "tenantgate", IDP, now() + 300),
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    expect_invalid(status_with_bearer(&s, &hs).await);
    // tampered payload: another tenant, original signature
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        seg(&claims("other", "tenantgate", IDP, now() + 300)),
        parts[2]
    );
    expect_invalid(status_with_bearer(&s, &forged).await);
    // a token for a tenant that does not exist
    let ghost = sign(
        &idp,
        &claims("ghost-tenant", "tenantgate", IDP, now() + 300),
    );
    let (st, v) = status_with_bearer(&s, &ghost).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("unknown_tenant")),
        "{v}"
    );
}
