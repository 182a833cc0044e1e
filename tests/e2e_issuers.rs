#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issuers bound to a tenant through the admin API, end to end: a local JWKS
//! server plays the tenant's IdP.

mod common;

use common::{eventually, stack, Stack};
use serde_json::{json, Value};
use std::time::Duration;
use tenantgate_core::jwt::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDP: &str = "https://idp.acme.e2e.test";
const CONFIGURED: &str = "https://configured-idp.e2e.test";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Serves `{"keys": [key]}` at any path over plain HTTP on loopback.
async fn jwks_server(key: &SigningKey) -> String {
    let body = serde_json::to_string(&json!({ "keys": [key.public_jwk()] })).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if read == buf.len() {
                        return;
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

async fn whoami(s: &Stack, token: &str) -> (u16, Value) {
    s.with_bearer("GET", "/api/v1/whoami", token).await
}

#[track_caller]
fn invalid_token((st, v): (u16, Value)) {
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_token", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_issuer_tokens_speak_for_their_tenant_only() {
    let idp = SigningKey::generate().unwrap();
    let jwks = jwks_server(&idp).await;
    let conf_key = SigningKey::generate().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tg_issuers_e2e_{}",
        tenantgate_core::secrets::random_token(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("conf.pem");
    std::fs::write(&pem, conf_key.public_key_pem().unwrap()).unwrap();
    let s = stack()
        .dir(dir.clone())
        .extra(&format!(
            "[jwt]\nallow_insecure_jwks = true\n[[jwt.issuers]]\nissuer = \"{CONFIGURED}\"\naudiences = [\"tenantgate\"]\npublic_key_file = \"{}\"\nmax_lifetime_seconds = 600\n",
            pem.display()
        ))
        .start()
        .await;
    let acme = s.tenant("acme", "pro").await;
    let other = s.tenant("other", "pro").await;

    // Before the binding the IdP's tokens are strangers.
    let claims = |extra: Value| {
        let mut c = json!({"iss": IDP, "aud": "tenantgate", "sub": "idp-user-1", "role": "developer",
            "iat": now(), "exp": now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        idp.sign(&c).unwrap()
    };
    let token = claims(json!({"tenant_id": "acme"}));
    invalid_token(whoami(&s, &token).await);

    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{acme}/issuers"),
            Some(json!({"issuer": IDP, "jwks_url": jwks, "audiences": ["tenantgate"],
                "algorithms": ["RS256"], "default_role": "read_only", "max_lifetime_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let issuer_id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["issuer"], IDP);
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["jwks_url"], jwks.as_str());
    assert_eq!(v["audiences"], json!(["tenantgate"]));
    assert_eq!(v["algorithms"], json!(["RS256"]));
    assert_eq!(v["role_claim"], "role");
    assert_eq!(v["default_role"], "read_only");
    assert_eq!(v["max_lifetime_seconds"], 3600);
    let (st, list) = s
        .admin("GET", &format!("/v1/tenants/{acme}/issuers"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], issuer_id.as_str());
    let (_, none) = s
        .admin("GET", &format!("/v1/tenants/{other}/issuers"), None)
        .await;
    assert_eq!(none, json!([]));

    // Within a second the token works, for acme.
    let took = eventually(Duration::from_secs(1), || async {
        whoami(&s, &token).await.0 == 200
    })
    .await;
    assert!(took.is_some(), "bound issuer not accepted within 1 s");
    let (st, v) = whoami(&s, &token).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["user_id"], "idp-user-1");
    assert_eq!(v["role"], "developer");
    assert_eq!(v["auth_method"], "jwt");
    // No tenant claim: the bound tenant; no role claim: the default role.
    let (st, v) = whoami(&s, &claims(json!({"role": null}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["role"], "read_only");
    // Claiming another tenant (existing or not) is an invalid token.
    invalid_token(whoami(&s, &claims(json!({"tenant_id": other}))).await);
    invalid_token(whoami(&s, &claims(json!({"tenant_id": "ghost"}))).await);
    // Longer lived than max_lifetime_seconds: from now, or from iat.
    invalid_token(whoami(&s, &claims(json!({"exp": now() + 7200}))).await);
    invalid_token(
        whoami(
            &s,
            &claims(json!({"iat": now() - 3500, "exp": now() + 300})),
        )
        .await,
    );
    assert_eq!(
        whoami(&s, &claims(json!({"exp": now() + 3000}))).await.0,
        200
    );
    // The usual checks still apply: audience, signature.
    invalid_token(whoami(&s, &claims(json!({"aud": "someone-else"}))).await);
    let forged = SigningKey::generate()
        .unwrap()
        .sign(&json!({"iss": IDP, "aud": "tenantgate", "sub": "x", "exp": now() + 60}))
        .unwrap();
    invalid_token(whoami(&s, &forged).await);

    // One tenant per issuer URL, and never a configured issuer's.
    for (tenant, iss) in [(&other, IDP), (&acme, IDP), (&other, CONFIGURED)] {
        let (st, v) = s
            .admin(
                "POST",
                &format!("/v1/tenants/{tenant}/issuers"),
                Some(json!({"issuer": iss, "jwks_url": jwks, "audiences": ["tenantgate"]})),
            )
            .await;
        assert_eq!(st, 409, "{iss} for {tenant}: {v}");
        assert_eq!(v["error"]["code"], "conflict");
    }

    // The configured issuer's max_lifetime_seconds applies too.
    let conf =
        |exp: i64| {
            conf_key
            .sign(&json!({"iss": CONFIGURED, "aud": "tenantgate", "sub": "u", "tenant_id": "other",
                "role": "developer", "exp": exp}))
            .unwrap()
        };
    assert_eq!(whoami(&s, &conf(now() + 300)).await.0, 200);
    invalid_token(whoami(&s, &conf(now() + 31_000_000 * 365 * 24 * 3600)).await);
    invalid_token(whoami(&s, &conf(now() + 900)).await);

    // Tenant admins manage their own tenant's issuers only.
    let acme_admin = s.tenant_admin_token(&acme).await;
    let (st, v) = s
        .admin_as(
            &acme_admin,
            "GET",
            &format!("/v1/tenants/{acme}/issuers"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s
        .admin_as(
            &acme_admin,
            "GET",
            &format!("/v1/tenants/{other}/issuers"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .admin_as(
            &acme_admin,
            "POST",
            &format!("/v1/tenants/{other}/issuers"),
            Some(json!({"issuer": "https://x.e2e.test", "jwks_url": jwks, "audiences": ["a"]})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .admin(
            "DELETE",
            &format!("/v1/tenants/{other}/issuers/{issuer_id}"),
            None,
        )
        .await;
    assert_eq!(st, 404, "another tenant's issuer id");

    // Unbinding: the IdP's tokens fail within a second, cached or not.
    assert_eq!(whoami(&s, &token).await.0, 200);
    let (st, _) = s
        .admin_as(
            &acme_admin,
            "DELETE",
            &format!("/v1/tenants/{acme}/issuers/{issuer_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let took = eventually(Duration::from_secs(1), || async {
        whoami(&s, &token).await.0 == 401
    })
    .await;
    assert!(took.is_some(), "unbound issuer still accepted after 1 s");
    invalid_token(whoami(&s, &token).await);
    let (st, _) = s
        .admin(
            "DELETE",
            &format!("/v1/tenants/{acme}/issuers/{issuer_id}"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    // Now another tenant may bind it, and only that tenant's tokens pass.
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{other}/issuers"),
            Some(json!({"issuer": IDP, "jwks_url": jwks, "audiences": ["tenantgate"]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let for_other = claims(json!({"tenant_id": null}));
    assert!(eventually(Duration::from_secs(1), || async {
        whoami(&s, &for_other).await.0 == 200
    })
    .await
    .is_some());
    assert_eq!(whoami(&s, &for_other).await.1["tenant_id"], "other");
    invalid_token(whoami(&s, &claims(json!({"tenant_id": "acme"}))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_input_is_validated() {
    let s = stack().start().await;
    let t = s.tenant("valco", "free").await;
    let path = format!("/v1/tenants/{t}/issuers");
    let base = json!({"issuer": IDP, "jwks_url": "https://idp.acme.e2e.test/jwks", "audiences": ["tenantgate"]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        b
    };
    for (body, field) in [
        (
            with("jwks_url", json!("http://127.0.0.1:9/jwks")),
            "jwks_url",
        ),
        (
            with("jwks_url", json!("http://idp.acme.e2e.test/jwks")),
            "jwks_url",
        ),
        (with("jwks_url", json!("ftp://idp/jwks")), "jwks_url"),
        (with("jwks_url", Value::Null), "jwks_url"),
        (with("issuer", json!("")), "issuer"),
        (with("issuer", json!("not a url")), "issuer"),
        (with("issuer", Value::Null), "issuer"),
        (with("audiences", json!([])), "audiences"),
        (with("audiences", json!("tenantgate")), "audiences"),
        (with("audiences", Value::Null), "audiences"),
        (with("algorithms", json!(["HS256"])), "algorithms"),
        (with("algorithms", json!(["none"])), "algorithms"),
        (with("algorithms", json!([])), "algorithms"),
        (
            with("max_lifetime_seconds", json!(0)),
            "max_lifetime_seconds",
        ),
        (
            with("max_lifetime_seconds", json!(-5)),
            "max_lifetime_seconds",
        ),
        (
            with("max_lifetime_seconds", json!("1h")),
            "max_lifetime_seconds",
        ),
        (with("default_role", json!("Not A Role")), "default_role"),
        (with("role_claim", json!("")), "role_claim"),
    ] {
        let (st, v) = s.admin("POST", &path, Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "validation_error", "{v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (st, v) = s.admin("POST", &path, Some(base.clone())).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["algorithms"], json!(["RS256"]));
    assert!(v["max_lifetime_seconds"].is_null());
    let (st, _) = s
        .admin("POST", "/v1/tenants/nope/issuers", Some(base))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s.admin("DELETE", &format!("{path}/no-such-id"), None).await;
    assert_eq!(st, 404);
    // The OpenAPI document lists the operations.
    let doc: Value = s
        .http
        .get(format!("{}/openapi.json", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops = doc["paths"]["/v1/tenants/{id}/issuers"].clone();
    assert_eq!(ops["post"]["operationId"], "createIssuer");
    assert_eq!(ops["get"]["operationId"], "listIssuers");
    assert_eq!(
        doc["paths"]["/v1/tenants/{id}/issuers/{issuer_id}"]["delete"]["operationId"],
        "deleteIssuer"
    );
}
