//! Tenant-dedicated upstreams through the real binary: a route's
//! `tenant_upstreams` entry, a tenant's `upstream_pool`, moves within 1 s
//! without a restart, and a dead pool answered as the contract's 502.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{echo_upstream, eventually, free_port, stack, Stack};
use serde_json::{json, Value};
use std::time::Duration;

/// Which upstream answered `key`'s request (and the tenant it was told).
async fn served_by(s: &Stack, key: &str) -> (u16, Value) {
    s.with_key("GET", "/svc/resources/1", key).await
}

async fn upstream_of(s: &Stack, key: &str) -> String {
    let (st, v) = served_by(s, key).await;
    assert_eq!(st, 200, "{v}");
    v["upstream"].as_str().unwrap_or_default().to_owned()
}

/// Patches `tenant`'s pool and returns how long until `key`'s requests reach
/// `expect` (panics past 1 s).
async fn move_to(s: &Stack, tenant: &str, pool: Value, key: &str, expect: &str) -> Duration {
    let (st, v) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{tenant}"),
            Some(json!({ "upstream_pool": pool })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["upstream_pool"], pool, "{v}");
    let took = eventually(Duration::from_secs(1), || async {
        upstream_of(s, key).await == expect
    })
    .await;
    took.unwrap_or_else(|| panic!("{tenant} did not move to {expect} within 1 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silo_tenants_reach_their_own_upstreams_and_move_without_restart() {
    let shared = echo_upstream("shared").await;
    let acme_own = echo_upstream("acme-own").await;
    let big = echo_upstream("pool-big").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let s = stack()
        .routes(&format!(
            r#"
[[routes]]
prefix = "/svc/"
upstream = "{shared}"
tenant_upstreams = {{ "acme" = "{acme_own}" }}

[[upstream_pools]]
name = "big"
upstream = "{big}"

[[upstream_pools]]
name = "dead"
upstream = "{dead}"
"#
        ))
        .start()
        .await;
    s.tenant("acme", "pro").await;
    s.tenant("globex", "pro").await;
    let (acme, _) = s.key("acme", "admin").await;
    let (globex, _) = s.key("globex", "admin").await;

    // The route's entry for acme; everyone else the route's upstream, with
    // their own tenant's headers.
    let (st, v) = served_by(&s, &acme).await;
    assert_eq!(
        (st, v["upstream"].as_str(), v["tenant"].as_str()),
        (200, Some("acme-own"), Some("acme"))
    );
    let (st, v) = served_by(&s, &globex).await;
    assert_eq!(
        (st, v["upstream"].as_str(), v["tenant"].as_str()),
        (200, Some("shared"), Some("globex"))
    );

    // A pool moves a tenant within 1 s, and null moves it back.
    let took = move_to(&s, "globex", json!("big"), &globex, "pool-big").await;
    eprintln!("globex moved to its pool in {took:?}");
    assert_eq!(upstream_of(&s, &acme).await, "acme-own", "others stay");
    // The route's tenant_upstreams entry wins over the tenant's pool.
    let (st, v) = s
        .admin(
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({"upstream_pool": "big"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream_of(&s, &acme).await, "acme-own");
    let took = move_to(&s, "globex", Value::Null, &globex, "shared").await;
    eprintln!("globex moved back in {took:?}");

    // An unknown pool is refused and changes nothing.
    let (st, v) = s
        .admin(
            "PATCH",
            "/v1/tenants/globex",
            Some(json!({"upstream_pool": "nope"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["field"], "upstream_pool", "{v}");
    assert_eq!(upstream_of(&s, &globex).await, "shared");

    // A pool whose upstream is down: 502 upstream_unavailable, as for routes.
    let (st, v) = s
        .admin(
            "PATCH",
            "/v1/tenants/globex",
            Some(json!({"upstream_pool": "dead"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let failed = eventually(Duration::from_secs(1), || async {
        let (st, v) = served_by(&s, &globex).await;
        st == 502 && v["error"]["code"] == "upstream_unavailable"
    })
    .await;
    assert!(failed.is_some(), "{:?}", served_by(&s, &globex).await);
    assert_eq!(
        upstream_of(&s, &acme).await,
        "acme-own",
        "only that tenant fails"
    );
}
