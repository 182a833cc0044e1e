#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Autoscaling in a PostgreSQL fleet: two proxies record the route's signals, two
//! admin processes offer to evaluate the policy every 200 ms, and exactly one
//! evaluates each pass: the stored events form one chain (each starts where the
//! last ended) over the signals of both proxies, and both admins export the same
//! desired replicas.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::eventually;
use serde_json::{json, Value};
use std::time::Duration;
use tenantgate_core::testing::TestDb;

async fn desired(http: &reqwest::Client, admin: &str) -> Option<f64> {
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = "tenantgate_autoscale_desired_replicas{route=\"/api/v1/\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evaluator_scales_on_the_whole_fleets_signals() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let extra = "[scaling]\nevaluate_interval_ms = 200\nsignal_max_age_ms = 1500\n\
                 [[autoscale]]\nroute = \"/api/v1/\"\ntarget_rps_per_replica = 2\nmin = 1\nmax = 100\n\
                 cooldown_seconds = 0\nscale_down_stabilisation_seconds = 1\n";
    let mut f = fleet::Fleet::start(&db.url, 2, extra).await;
    let second_admin = f.add_admin().await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "fleetscale", "name": "F", "tier": "enterprise"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants/fleetscale/api-keys",
            Some(json!({"name": "load", "role": "admin"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();

    // Paced load through both proxies for ~3 s.
    let mut load = Vec::new();
    for i in 0..2 {
        let (http, url, key) = (
            f.http.clone(),
            format!("{}/api/v1/resources", f.proxies[i]),
            key.clone(),
        );
        load.push(tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(3);
            let mut ok = 0u32;
            while std::time::Instant::now() < until {
                let r = http.get(&url).header("x-api-key", &key).send().await;
                ok += u32::from(r.is_ok_and(|r| r.status().is_success()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        }));
    }
    for l in load {
        assert!(l.await.unwrap() > 10);
    }
    // Then idle: back to min once the 1 s window has passed.
    let down = eventually(Duration::from_secs(15), || async {
        desired(&f.http, &f.admin).await == Some(1.0)
            && desired(&f.http, &second_admin).await == Some(1.0)
    })
    .await;
    assert!(down.is_some(), "not back at min on both admins");

    let (st, v) = f
        .admin("GET", "/v1/scaling/events?route=/api/v1/", None)
        .await;
    assert_eq!(st, 200, "{v}");
    let events: Vec<Value> = v.as_array().cloned().unwrap();
    assert!(events.len() >= 2, "{events:?}");
    // One chain: every decision starts where the previous one ended (two
    // evaluators with their own state would fork it).
    let mut at = 1;
    for e in &events {
        assert_eq!(e["from_replicas"].as_u64(), Some(at), "{events:#?}");
        at = e["to_replicas"].as_u64().unwrap();
    }
    assert_eq!(at, 1);
    // Both proxies' signals were counted.
    assert!(
        events.iter().any(|e| e["signals"]["proxies"] == 2),
        "{events:#?}"
    );
    // The second admin serves the same events.
    let r = f
        .http
        .get(format!("{second_admin}/v1/scaling/events?route=/api/v1/"))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    let same: Value = r.json().await.unwrap();
    assert_eq!(same, Value::Array(events));
    f.stop_all();
    db.cleanup().await;
}
