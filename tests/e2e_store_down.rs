#![allow(clippy::unwrap_used, clippy::expect_used)]
//! PostgreSQL stopped under a running proxy: cached credentials keep working,
//! unknown ones fail closed with 503, and service recovers when it is back.
//! Starts its own PostgreSQL (initdb + pg_ctl as user postgres) on a free port.

mod common;
#[path = "common/own_pg.rs"]
mod own_pg;

use common::{eventually, stack};
use own_pg::OwnPg;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_survive_a_postgres_outage_and_unknown_keys_fail_closed() {
    let Some(pg) = OwnPg::start() else {
        assert!(
            !tenantgate_core::testing::in_ci(),
            "CI needs initdb/pg_ctl to run this test"
        );
        eprintln!(
            "\n!!! SKIPPING: cannot start an own PostgreSQL (initdb/pg_ctl as user postgres)\n"
        );
        return;
    };
    let s = stack().store_url(&pg.url()).start().await;
    let t = s.tenant("outage", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    let (unused_key, _) = s.key(&t, "developer").await;
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &key).await.0, 200);

    assert!(pg.ctl("stop"), "could not stop PostgreSQL");
    // The cached key still passes (tenant, policy, limit all cached).
    for _ in 0..5 {
        let (st, v) = s.with_key("GET", "/api/v1/whoami", &key).await;
        assert_eq!(st, 200, "cached key during the outage: {v}");
    }
    // A key the proxy has never seen cannot be checked: 503, never a false 200.
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &unused_key).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    let random = tenantgate_core::secrets::generate_api_key().key;
    let (st, _) = s.with_key("GET", "/api/v1/whoami", &random).await;
    assert_eq!(st, 503);

    assert!(pg.ctl("start"), "could not restart PostgreSQL");
    let back = eventually(Duration::from_secs(15), || async {
        s.with_key("GET", "/api/v1/whoami", &unused_key).await.0 == 200
    })
    .await;
    assert!(
        back.is_some(),
        "no recovery after PostgreSQL came back; log:\n{}",
        s.log()
    );
}
