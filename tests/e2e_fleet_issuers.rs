#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fleet mode on PostgreSQL (separate admin and proxy processes): issuer bindings
//! reach every proxy within a second, and a key created by the admin process works
//! at once on a proxy flooded with random keys (its change may not have arrived).

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::eventually;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::jwt::SigningKey;
use tenantgate_core::testing::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDP: &str = "https://idp.fleet.e2e.test";

async fn jwks_server(key: &SigningKey) -> String {
    let body = serde_json::to_string(&json!({ "keys": [key.public_jwk()] })).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
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
    format!("http://{addr}/jwks")
}

async fn whoami(f: &fleet::Fleet, i: usize, token: &str) -> (u16, Value) {
    let r = f
        .http
        .get(format!("{}/api/v1/whoami", f.proxies[i]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_bindings_reach_every_proxy_within_a_second() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let idp = SigningKey::generate().unwrap();
    let jwks = jwks_server(&idp).await;
    let mut f = fleet::Fleet::start(&db.url, 2, "[jwt]\nallow_insecure_jwks = true\n").await;
    for id in ["acme", "other"] {
        let (st, v) = f
            .admin(
                "POST",
                "/v1/tenants",
                Some(json!({"id": id, "name": id, "tier": "pro"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let now = chrono::Utc::now().timestamp();
    let token = idp
        .sign(
            &json!({"iss": IDP, "aud": "tenantgate", "sub": "u1", "role": "developer",
            "iat": now, "exp": now + 600}),
        )
        .unwrap();
    let other = idp
        .sign(
            &json!({"iss": IDP, "aud": "tenantgate", "sub": "u1", "role": "developer",
            "tenant_id": "other", "iat": now, "exp": now + 600}),
        )
        .unwrap();
    assert_eq!(whoami(&f, 0, &token).await.0, 401);

    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants/acme/issuers",
            Some(json!({"issuer": IDP, "jwks_url": jwks, "audiences": ["tenantgate"]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let issuer_id = v["id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let took = eventually(Duration::from_secs(1), || async {
            whoami(&f, i, &token).await.0 == 200
        })
        .await;
        assert!(
            took.is_some(),
            "proxy {i} did not accept the bound issuer within 1 s"
        );
        let (_, v) = whoami(&f, i, &token).await;
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(whoami(&f, i, &other).await.0, 401, "proxy {i}");
    }

    let (st, _) = f
        .admin(
            "DELETE",
            &format!("/v1/tenants/acme/issuers/{issuer_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    for i in 0..2 {
        let took = eventually(Duration::from_secs(1), || async {
            whoami(&f, i, &token).await.0 == 401
        })
        .await;
        assert!(
            took.is_some(),
            "proxy {i} still accepts the unbound issuer after 1 s"
        );
    }
    f.stop_all();
    db.cleanup().await;
}

fn random_key() -> String {
    use tenantgate_core::secrets::{random_bytes, random_token, API_KEY_SECRET_LEN};
    let hex: String = random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tg_{hex}_{}", random_token(API_KEY_SECRET_LEN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_from_the_admin_process_work_at_once_on_a_flooded_proxy() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // Slow polling: only NOTIFY, the budget or the wait for the feed can help.
    let f = fleet::Fleet::start_polling(&db.url, 1, "", 1000).await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "floodfleet", "name": "f", "tier": "enterprise"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let f = Arc::new(f);
    let stop = Instant::now() + Duration::from_secs(3);
    let (flooded, unexpected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flood = Vec::new();
    for _ in 0..32 {
        let (f, flooded, unexpected) = (f.clone(), flooded.clone(), unexpected.clone());
        flood.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let (st, _) = f.get(0, "/api/v1/whoami", &random_key()).await;
                flooded.fetch_add(1, Ordering::Relaxed);
                if st != 401 {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut used = 0;
    while Instant::now() < stop {
        let (st, v) = f
            .admin(
                "POST",
                "/v1/tenants/floodfleet/api-keys",
                Some(json!({"name": "k", "role": "developer"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let key = v["key"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let (st, v) = f.get(0, "/api/v1/whoami", &key).await;
            assert_eq!(st, 200, "fresh key refused during the flood: {v}");
            used += 1;
        }
    }
    for t in flood {
        t.await.unwrap();
    }
    assert!(used >= 9, "{used}");
    assert!(flooded.load(Ordering::Relaxed) > 100);
    assert_eq!(unexpected.load(Ordering::Relaxed), 0);
    if let Ok(mut f) = Arc::try_unwrap(f) {
        f.stop_all();
    }
    db.cleanup().await;
}
