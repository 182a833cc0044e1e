//! Autoscaling through the real binary: load on a route raises the fleet's
//! signals, the admin API's evaluator stores a scaling event, serves it at
//! `GET /v1/scaling/events` and exports the desired replicas on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, stack, Stack};
use serde_json::Value;
use std::time::Duration;

/// `tenantgate_autoscale_desired_replicas{route="<route>"}` on the admin API.
async fn desired(s: &Stack, route: &str) -> Option<f64> {
    let text = s.text(&format!("{}/metrics", s.admin)).await;
    let prefix = format!("tenantgate_autoscale_desired_replicas{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn events(s: &Stack, query: &str) -> Vec<Value> {
    let (st, v) = s
        .admin("GET", &format!("/v1/scaling/events{query}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_a_route_scales_it_up_and_back_down() {
    let s = stack()
        .routes(
            r#"
[[routes]]
prefix = "/api/v1/"
upstream = "DEMO"
name = "demo"

[[autoscale]]
route = "demo"
target_rps_per_replica = 5
min = 1
max = 4
cooldown_seconds = 0
scale_down_stabilisation_seconds = 2

[scaling]
evaluate_interval_ms = 200
signal_max_age_ms = 1500
"#,
        )
        .start()
        .await;
    assert_eq!(desired(&s, "demo").await, Some(1.0), "starts at min");
    assert!(events(&s, "?route=demo").await.is_empty());
    s.tenant("busy", "enterprise").await;
    let (key, _) = s.key("busy", "admin").await;

    // ~2 s of steady load, far above 5 rps.
    let load = {
        let (http, url, key) = (
            s.http.clone(),
            format!("{}/api/v1/resources", s.proxy),
            key.clone(),
        );
        tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(2);
            let mut ok = 0u32;
            while std::time::Instant::now() < until {
                let r = http
                    .get(&url)
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                ok += u32::from(r.status().is_success());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        })
    };
    let up = eventually(Duration::from_secs(10), || async {
        events(&s, "?route=demo")
            .await
            .iter()
            .any(|e| e["to_replicas"].as_u64() > Some(1))
    })
    .await;
    assert!(up.is_some(), "no scale-up event; log:\n{}", s.log());
    assert!(load.await.unwrap() > 20);
    let evs = events(&s, "?route=demo").await;
    let first = &evs[0];
    assert_eq!(first["route"], "demo");
    assert_eq!(first["from_replicas"], 1);
    assert!(first["signals"]["rps"].as_f64().unwrap() > 5.0, "{first}");
    assert!(
        first["signals"]["proxies"].as_u64().unwrap() >= 1,
        "{first}"
    );
    assert!(
        first["reason"].as_str().unwrap().starts_with("scale up"),
        "{first}"
    );
    let peak = evs
        .iter()
        .filter_map(|e| e["to_replicas"].as_u64())
        .max()
        .unwrap();
    assert!(desired(&s, "demo").await.unwrap() >= 2.0);
    assert!(peak <= 4, "max clamps: {evs:?}");

    // Idle: after the 2 s stabilisation window it comes back to min.
    let down = eventually(Duration::from_secs(15), || async {
        desired(&s, "demo").await == Some(1.0)
    })
    .await;
    assert!(
        down.is_some(),
        "never scaled down: {:?}",
        events(&s, "").await
    );
    let evs = events(&s, "?route=demo").await;
    let last = evs.last().unwrap();
    assert_eq!(last["to_replicas"], 1, "{evs:?}");
    assert!(
        last["reason"].as_str().unwrap().starts_with("scale down"),
        "{last}"
    );
    // Filters: another route has none; a window before the events has none.
    assert!(events(&s, "?route=other").await.is_empty());
    assert!(events(&s, "?to=2020-01-01T00:00:00Z").await.is_empty());
    let (st, v) = s.admin("GET", "/v1/scaling/events?from=soon", None).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["field"], "from", "{v}");
}
