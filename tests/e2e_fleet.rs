#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fleet mode on PostgreSQL: separate admin, demo and proxy processes. Changes made
//! through the admin API reach every proxy within a second (LISTEN/NOTIFY plus the
//! polled change feed).

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::eventually;
use serde_json::json;
use std::time::Duration;
use tenantgate_core::testing::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_proxy_within_a_second() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut f = fleet::Fleet::start(&db.url, 2, "").await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "fleetco", "name": "F", "tier": "pro"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants/fleetco/api-keys",
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let key_id = v["id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let (st, v) = f.get(i, "/api/v1/whoami", &key).await;
        assert_eq!(st, 200, "proxy {i}: {v}");
        assert_eq!(v["tenant_id"], "fleetco");
    }

    // Policy change: both proxies deny within 1 s.
    let (st, _) = f
        .admin(
            "PUT",
            "/v1/tenants/fleetco/policies/developer",
            Some(json!({"permissions": [{"action": "create", "resource": "resources"}]})),
        )
        .await;
    assert_eq!(st, 200);
    for i in 0..2 {
        let took = eventually(Duration::from_secs(1), || async {
            f.get(i, "/api/v1/whoami", &key).await.0 == 403
        })
        .await;
        assert!(
            took.is_some(),
            "policy change did not reach proxy {i} within 1 s"
        );
    }
    f.admin(
        "PUT",
        "/v1/tenants/fleetco/policies/developer",
        Some(json!({"permissions": [{"action": "*", "resource": "*"}]})),
    )
    .await;
    for i in 0..2 {
        assert!(eventually(Duration::from_secs(1), || async {
            f.get(i, "/api/v1/whoami", &key).await.0 == 200
        })
        .await
        .is_some());
    }

    // Revocation: both proxies reject within 1 s.
    let (st, _) = f
        .admin(
            "DELETE",
            &format!("/v1/tenants/fleetco/api-keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    for i in 0..2 {
        let took = eventually(Duration::from_secs(1), || async {
            f.get(i, "/api/v1/whoami", &key).await.1["error"]["code"] == "invalid_api_key"
        })
        .await;
        assert!(
            took.is_some(),
            "revocation did not reach proxy {i} within 1 s"
        );
    }

    f.stop_all();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_redis_limit() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let redis_ok = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
    if !redis_ok {
        assert!(
            !tenantgate_core::testing::in_ci(),
            "Redis is required in CI"
        );
        eprintln!("\n!!! SKIPPING: no Redis at 127.0.0.1:6379\n");
        db.cleanup().await;
        return;
    }
    let f = fleet::Fleet::start(
        &db.url,
        2,
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\ntimeout_ms = 200\n[ratelimit]\nbackend = \"redis\"\nfail_mode = \"open\"\n",
    )
    .await;
    let tenant = format!(
        "shared-{}",
        tenantgate_core::secrets::random_token(6).to_ascii_lowercase()
    );
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": tenant, "name": "S", "tier": "pro"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = f
        .admin(
            "PUT",
            &format!("/v1/tenants/{tenant}/rate-limit"),
            Some(json!({"max_requests": 100, "window_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = f
        .admin(
            "POST",
            &format!("/v1/tenants/{tenant}/api-keys"),
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await;
    let key = v["key"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let f = std::sync::Arc::new(f);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let f = f.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u32;
            let mut limited = 0u32;
            for _ in 0..40 {
                match f.get(w % 2, "/api/v1/whoami", &key).await.0 {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    assert_eq!(ok + limited, 320);
    assert!(
        (97..=101).contains(&ok),
        "admitted {ok} of a 100 limit across two proxies"
    );
    let mut f = std::sync::Arc::try_unwrap(f).ok().unwrap();
    f.stop_all();
    db.cleanup().await;
}
