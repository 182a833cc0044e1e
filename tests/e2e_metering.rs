#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Metering end to end through the real binary: what the clients were served is
//! exactly what the usage API reports, across a SIGTERM and a restart, and spooled
//! usage left by a previous process is replayed on start.

mod common;

use common::{eventually, free_port, stack, Stack};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinSet;

/// Statuses the clients got, by status code.
type Tally = BTreeMap<u16, u64>;

fn routes(dead_port: u16) -> String {
    format!(
        r#"
[[routes]]
prefix = "/api/v1/"
upstream = "DEMO"
[[routes]]
prefix = "/dead/"
upstream = "127.0.0.1:{dead_port}"
resource = "dead"
"#
    )
}

/// What the usage API must report for a tally: every attributed request (all but 401).
fn expected(t: &Tally) -> (u64, u64, u64, u64) {
    let get = |s: u16| t.get(&s).copied().unwrap_or(0);
    let requests = t
        .iter()
        .filter(|(s, _)| **s != 401)
        .map(|(_, n)| n)
        .sum::<u64>();
    (requests, get(403), get(429), get(502))
}

async fn usage(s: &Stack, tenant: &str) -> Value {
    let (st, v) = s
        .admin(
            "GET",
            &format!("/v1/tenants/{tenant}/usage?granularity=day"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["totals"].clone()
}

fn totals(v: &Value) -> (u64, u64, u64, u64) {
    let f = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    (
        f("requests"),
        f("denied"),
        f("rate_limited"),
        f("upstream_errors"),
    )
}

/// `n` mixed requests from 4 concurrent clients: 200 (whoami), 403 (read-only key
/// creating), 502 (dead upstream), 401 (bad key, no key); 429 once the bucket is empty.
async fn mixed_load(s: &Stack, dev: &str, ro: &str, n: usize) -> Tally {
    let mut set = JoinSet::new();
    for w in 0..4 {
        let http = s.http.clone();
        let base = s.proxy.clone();
        let (dev, ro) = (dev.to_owned(), ro.to_owned());
        set.spawn(async move {
            let mut tally = Tally::new();
            for i in (w..n).step_by(4) {
                let req = match i % 7 {
                    0..=2 => http
                        .get(format!("{base}/api/v1/whoami"))
                        .header("x-api-key", &dev),
                    3 => http
                        .post(format!("{base}/api/v1/resources"))
                        .header("x-api-key", &ro)
                        .json(&json!({"name": "nope"})),
                    4 => http
                        .get(format!("{base}/dead/thing"))
                        .header("x-api-key", &dev),
                    5 => http.get(format!("{base}/api/v1/whoami")).header(
                        "x-api-key",
                        "tg_nosuchprefix_0000000000000000000000000000000000000000000",
                    ),
                    _ => http.get(format!("{base}/api/v1/whoami")),
                };
                let r = req.send().await.unwrap();
                let st = r.status().as_u16();
                let _ = r.bytes().await;
                *tally.entry(st).or_default() += 1;
            }
            tally
        });
    }
    let mut all = Tally::new();
    while let Some(t) = set.join_next().await {
        for (k, v) in t.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    let unexpected: Vec<_> = all
        .keys()
        .filter(|k| ![200u16, 401, 403, 429, 502].contains(k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected statuses {all:?}; log:\n{}",
        s.log()
    );
    all
}

fn add(a: &mut Tally, b: &Tally) {
    for (k, v) in b {
        *a.entry(*k).or_default() += v;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_equals_metered_across_a_restart() {
    let dead = free_port();
    let mut s = stack().routes(&routes(dead)).start().await;
    let t = s.tenant("metered", "pro").await;
    let other = s.tenant("bystander", "pro").await;
    // A small bucket, so that some requests are rate limited (refill: 1 per 2 min).
    let (st, v) = s
        .admin(
            "PUT",
            &format!("/v1/tenants/{t}/rate-limit"),
            Some(json!({"max_requests": 30, "window_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (dev, _) = s.key(&t, "developer").await;
    let (ro, _) = s.key(&t, "read_only").await;
    let (bystander, _) = s.key(&other, "developer").await;

    let mut served = mixed_load(&s, &dev, &ro, 140).await;
    for st in [200u16, 401, 403, 429, 502] {
        assert!(
            served.get(&st).copied().unwrap_or(0) > 0,
            "no {st} in {served:?}"
        );
    }
    // Another tenant's traffic is metered for it, not for ours.
    for _ in 0..5 {
        assert_eq!(s.with_key("GET", "/api/v1/whoami", &bystander).await.0, 200);
    }

    let status = s.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
    let dir = s.dir.clone();
    drop(s);

    // SIGTERM lost nothing: right after the restart the totals are exact.
    let mut s = stack().routes(&routes(dead)).dir(dir).start().await;
    assert_eq!(
        totals(&usage(&s, &t).await),
        expected(&served),
        "after restart; served {served:?}"
    );
    assert_eq!(usage(&s, &other).await["requests"], 5);

    // More traffic on the restarted process (a fresh local bucket: more 200s).
    let more = mixed_load(&s, &dev, &ro, 70).await;
    add(&mut served, &more);
    let want = expected(&served);
    let took = eventually(Duration::from_secs(10), || async {
        totals(&usage(&s, &t).await) == want
    })
    .await;
    assert!(
        took.is_some(),
        "usage {} != served {served:?} ({want:?})",
        usage(&s, &t).await
    );
    // And it stays exact (no late double count) across two full flush cycles.
    common::flush_cycles(&s.http, &s.proxy_admin, 2).await;
    assert_eq!(totals(&usage(&s, &t).await), want);

    let m = s.proxy_metrics().await;
    for name in [
        "tenantgate_metering_flush_lag_seconds",
        "tenantgate_metering_spool_bytes",
        "tenantgate_metering_spool_batches",
        "tenantgate_metering_dropped_total",
        "tenantgate_metering_pending_requests",
    ] {
        assert!(m.contains(&format!("\n{name} ")), "{name} missing:\n{m}");
    }
    assert!(
        m.contains("\ntenantgate_metering_pending_requests 0\n"),
        "{m}"
    );
    assert!(m.contains("\ntenantgate_metering_dropped_total 0\n"), "{m}");

    let status = s.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
}

/// One batch as a spool line, in the format `proxy/src/meter.rs` writes.
fn spool_line(
    node: &str,
    seq: i64,
    tenant: &str,
    bucket_start: i64,
    requests: u64,
    denied: u64,
) -> String {
    json!({
        "v": 1,
        "node_id": node,
        "seq": seq,
        "rows": [{
            "tenant_id": tenant,
            "bucket_start": bucket_start,
            "requests": requests,
            "rate_limited": 0,
            "denied": denied,
            "upstream_errors": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "latency_sum_us": 0,
            "latency_buckets": [requests, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_left_by_a_previous_process_is_replayed_once_on_start() {
    let mut s = stack().start().await;
    let t = s.tenant("spooled", "pro").await;
    let (k, _) = s.key(&t, "developer").await;
    for _ in 0..3 {
        assert_eq!(s.with_key("GET", "/api/v1/whoami", &k).await.0, 200);
    }
    let status = s.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
    let dir = s.dir.clone();
    drop(s);

    // What a process that could not reach its store left behind: two batches of a
    // node that no longer runs (one of them twice, as after a crash before deletion).
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let minute = chrono::Utc::now().timestamp().div_euclid(60) * 60;
    let body = format!(
        "{}\n{}\n{}\n",
        spool_line("gone-node", 7, &t, minute, 4, 1),
        spool_line("gone-node", 8, &t, minute, 2, 0),
        spool_line("gone-node", 7, &t, minute, 4, 1),
    );
    std::fs::write(spool.join("0000000000001-000001-test-b3-r10.jsonl"), body).unwrap();

    let s = stack().dir(dir).start().await;
    let took = eventually(Duration::from_secs(10), || async {
        totals(&usage(&s, &t).await) == (9, 1, 0, 0)
    })
    .await;
    assert!(
        took.is_some(),
        "spool not replayed: {}; log:\n{}",
        usage(&s, &t).await,
        s.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_dir(&spool)
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        })
        .await
        .is_some(),
        "the applied spool file is deleted"
    );
    common::flush_cycles(&s.http, &s.proxy_admin, 2).await;
    assert_eq!(totals(&usage(&s, &t).await), (9, 1, 0, 0));
}
