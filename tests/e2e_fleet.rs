#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fleet mode on PostgreSQL: separate admin, demo and proxy processes. Changes made
//! through the admin API reach every proxy within a second (LISTEN/NOTIFY plus the
//! polled change feed). The Redis-backed shared limits are in e2e_fleet_redis.rs.

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/own_pg.rs"]
mod own_pg;

use common::eventually;
use serde_json::json;
use std::time::Duration;
use tenantgate_core::testing::TestDb;

/// A pro tenant `id` and a developer key of it: `(key, key_id)`.
async fn tenant_with_key(f: &fleet::Fleet, id: &str) -> (String, String) {
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": id, "name": id, "tier": "pro"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = f
        .admin(
            "POST",
            &format!("/v1/tenants/{id}/api-keys"),
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_proxy_within_a_second() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut f = fleet::Fleet::start(&db.url, 2, "").await;
    let (key, key_id) = tenant_with_key(&f, "fleetco").await;
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

/// With the feed polled once a minute, only PostgreSQL's NOTIFY can bring a change
/// to the proxies within a second: this fails if `LISTEN`/`NOTIFY` is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_alone_brings_changes_within_a_second() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let f = fleet::Fleet::start_polling(&db.url, 2, "", 60_000).await;
    let (key, key_id) = tenant_with_key(&f, "notifyco").await;
    // Cache the key and the tenant view on both proxies.
    for i in 0..2 {
        assert_eq!(f.get(i, "/api/v1/whoami", &key).await.0, 200, "proxy {i}");
    }
    let (st, _) = f
        .admin(
            "PUT",
            "/v1/tenants/notifyco/policies/developer",
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
            "policy change: no NOTIFY reached proxy {i} within 1 s"
        );
    }
    let (st, _) = f
        .admin(
            "DELETE",
            &format!("/v1/tenants/notifyco/api-keys/{key_id}"),
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
            "revocation: no NOTIFY reached proxy {i} within 1 s"
        );
    }
    let mut f = f;
    f.stop_all();
    db.cleanup().await;
}

/// PostgreSQL restarted under a fleet that polls the feed only once a minute: the
/// LISTEN connection comes back by itself, a change made right after the restart
/// arrives (the reconnect reads the feed, so nothing is missed), and notifications
/// flow again within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_resumes_after_a_postgres_restart_and_nothing_is_missed() {
    let Some(pg) = own_pg::OwnPg::start() else {
        assert!(
            !tenantgate_core::testing::in_ci(),
            "CI needs initdb/pg_ctl to run this test"
        );
        eprintln!(
            "\n!!! SKIPPING: cannot start an own PostgreSQL (initdb/pg_ctl as user postgres)\n"
        );
        return;
    };
    let mut f = fleet::Fleet::start_polling(&pg.url(), 1, "", 60_000).await;
    let (key1, key1_id) = tenant_with_key(&f, "restartco").await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants/restartco/api-keys",
            Some(json!({"name": "k2", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let key2_id = v["id"].as_str().unwrap().to_owned();
    let key2 = v["key"].as_str().unwrap().to_owned();
    for k in [&key1, &key2] {
        assert_eq!(f.get(0, "/api/v1/whoami", k).await.0, 200);
    }

    assert!(pg.ctl("restart"), "could not restart PostgreSQL");
    // Right after the restart (the admin API's pool reconnects on its own).
    let revoked = eventually(Duration::from_secs(10), || async {
        f.admin(
            "DELETE",
            &format!("/v1/tenants/restartco/api-keys/{key1_id}"),
            None,
        )
        .await
        .0 == 204
    })
    .await;
    assert!(revoked.is_some(), "the admin API did not recover");
    // Polling is a minute away: only the reconnected LISTEN (and the feed read
    // it triggers) can bring this.
    let took = eventually(Duration::from_secs(5), || async {
        f.get(0, "/api/v1/whoami", &key1).await.1["error"]["code"] == "invalid_api_key"
    })
    .await;
    assert!(
        took.is_some(),
        "the change made after the restart never arrived; proxy log:\n{}",
        f.procs
            .iter()
            .map(|p| p.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And notifications are live again: the next change within a second.
    let (st, _) = f
        .admin(
            "DELETE",
            &format!("/v1/tenants/restartco/api-keys/{key2_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let took = eventually(Duration::from_secs(1), || async {
        f.get(0, "/api/v1/whoami", &key2).await.1["error"]["code"] == "invalid_api_key"
    })
    .await;
    assert!(took.is_some(), "no NOTIFY within 1 s after the restart");
    f.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_survived_by_every_process_of_a_fleet() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut f = fleet::Fleet::start(&db.url, 1, "").await;
    // An operator's `kill -HUP` to every tenantgate process of a host (the proxy
    // reloads its certificates; the admin API and the demo have nothing to reload).
    for p in &f.procs {
        let pid = p.child.as_ref().unwrap().id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for url in [
        format!("{}/health", f.admin),
        format!("{}/health", f.demo),
        format!("{}/health", f.proxy_admins[0]),
    ] {
        let r = f.http.get(&url).send().await;
        assert!(
            r.is_ok_and(|r| r.status().is_success()),
            "{url} after SIGHUP"
        );
    }
    for p in &mut f.procs {
        assert!(
            p.sigterm().success(),
            "{} after SIGHUP then SIGTERM",
            p.name
        );
    }
    db.cleanup().await;
}
