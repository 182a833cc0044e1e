#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fleet metering on PostgreSQL: `tenantgate admin`, `tenantgate demo-upstream` and
//! two `tenantgate proxy` processes on one database meter the same tenant; one proxy
//! is stopped with SIGTERM in the middle of the load. What the clients were served
//! (by status) is exactly what the usage API reports.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::{eventually, free_port};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tenantgate_core::testing::TestDb;

/// (proxy index, status) → responses; status 0: no response (connection failed).
type Tally = BTreeMap<(usize, u16), u64>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_equals_metered_with_a_proxy_stopped_mid_load() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let dead = free_port();
    let extra = format!(
        "[[routes]]\nprefix = \"/dead/\"\nupstream = \"127.0.0.1:{dead}\"\nresource = \"dead\"\n"
    );
    let mut f = fleet::Fleet::start(&db.url, 2, &extra).await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "fleetmeter", "name": "F", "tier": "pro"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // A small bucket per proxy (local limiter), so both proxies answer some 429s.
    let (st, v) = f
        .admin(
            "PUT",
            "/v1/tenants/fleetmeter/rate-limit",
            Some(json!({"max_requests": 40, "window_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut keys = Vec::new();
    for role in ["developer", "read_only"] {
        let (st, v) = f
            .admin(
                "POST",
                "/v1/tenants/fleetmeter/api-keys",
                Some(json!({"name": role, "role": role})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        keys.push(v["key"].as_str().unwrap().to_owned());
    }
    let (dev, ro) = (keys[0].clone(), keys[1].clone());

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, proxies) = (f.http.clone(), f.proxies.clone());
        let (dev, ro, stop, counter) = (dev.clone(), ro.clone(), stop.clone(), counter.clone());
        workers.spawn(async move {
            let mut tally = Tally::new();
            while !stop.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let p = (n % 2) as usize;
                let base = &proxies[p];
                let req = match (n / 2) % 6 {
                    0..=2 => http
                        .get(format!("{base}/api/v1/whoami"))
                        .header("x-api-key", &dev),
                    3 => http
                        .post(format!("{base}/api/v1/resources"))
                        .header("x-api-key", &ro)
                        .json(&json!({"name": "nope"})),
                    4 => http.get(format!("{base}/dead/x")).header("x-api-key", &dev),
                    _ => http.get(format!("{base}/api/v1/whoami")).header(
                        "x-api-key",
                        "tg_nosuchprefix_0000000000000000000000000000000000000000000",
                    ),
                };
                let st = match req.send().await {
                    // Served only once the whole response arrived.
                    Ok(r) => {
                        let st = r.status().as_u16();
                        if r.bytes().await.is_ok() {
                            st
                        } else {
                            0
                        }
                    }
                    Err(_) => 0,
                };
                *tally.entry((p, st)).or_default() += 1;
                if st == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            tally
        });
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGTERM proxy 1 mid-load (procs: admin, demo, proxy0, proxy1).
    let mut p1 = f.procs.remove(3);
    let exit = tokio::task::spawn_blocking(move || {
        let st = p1.sigterm();
        (st, p1.log_text())
    })
    .await
    .unwrap();
    assert!(
        exit.0.success(),
        "proxy1 exit {:?}; log:\n{}",
        exit.0,
        exit.1
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = Tally::new();
    while let Some(t) = workers.join_next().await {
        for (k, v) in t.unwrap() {
            *served.entry(k).or_default() += v;
        }
    }
    let count = |pred: &dyn Fn(usize, u16) -> bool| -> u64 {
        served
            .iter()
            .filter(|((p, s), _)| pred(*p, *s))
            .map(|(_, n)| n)
            .sum()
    };
    let unexpected = count(&|_, s| ![0u16, 200, 401, 403, 429, 502].contains(&s));
    assert_eq!(unexpected, 0, "unexpected statuses: {served:?}");
    for p in 0..2 {
        for s in [200u16, 403, 429, 502] {
            assert!(
                count(&|pp, ss| pp == p && ss == s) > 0,
                "proxy{p} served no {s}: {served:?}"
            );
        }
    }
    assert!(
        count(&|p, s| p == 1 && s == 0) > 0,
        "proxy1 was not stopped mid-load: {served:?}"
    );
    let want = (
        count(&|_, s| s != 0 && s != 401),
        count(&|_, s| s == 403),
        count(&|_, s| s == 429),
        count(&|_, s| s == 502),
    );

    let usage = || async {
        let (st, v) = f
            .admin("GET", "/v1/tenants/fleetmeter/usage?granularity=day", None)
            .await;
        assert_eq!(st, 200, "{v}");
        v["totals"].clone()
    };
    let totals = |v: &Value| {
        let g = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
        (
            g("requests"),
            g("denied"),
            g("rate_limited"),
            g("upstream_errors"),
        )
    };
    let took = eventually(Duration::from_secs(10), || async {
        totals(&usage().await) == want
    })
    .await;
    assert!(
        took.is_some(),
        "metered {} != served {want:?} ({served:?}); proxy1 log:\n{}",
        usage().await,
        exit.1
    );
    // Across two full flush cycles of the proxy still running: nothing more arrives.
    common::flush_cycles(&f.http, &f.proxy_admins[0], 2).await;
    assert_eq!(totals(&usage().await), want, "usage changed after settling");

    f.stop_all();
    db.cleanup().await;
}
