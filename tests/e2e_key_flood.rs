#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A flood of well-formed random API keys must not make valid keys fail: the
//! proxy answers unknown prefixes from its prefix index, so the flood never
//! queues on the store's pool or trips the store breaker.

mod common;

use common::stack;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A well-formed key (`tg_<12 hex>_<44 alphanumerics>`) that does not exist.
fn random_key() -> String {
    use tenantgate_core::secrets::{random_bytes, random_token, API_KEY_SECRET_LEN};
    let hex: String = random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tg_{hex}_{}", random_token(API_KEY_SECRET_LEN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_key_flood_does_not_hurt_fresh_valid_keys() {
    let s = Arc::new(stack().start().await);
    let t = s.tenant("floodco", "enterprise").await;
    let (probe, _) = s.key(&t, "developer").await;
    assert_eq!(
        s.with_key("GET", "/api/v1/whoami", &random_key()).await.0,
        401,
        "random keys are well-formed and unknown"
    );
    assert_eq!(probe.len(), random_key().len());

    let stop = Instant::now() + Duration::from_secs(3);
    let flooded = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for _ in 0..48 {
        let (s, flooded, unexpected) = (s.clone(), flooded.clone(), unexpected.clone());
        flood.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let (st, _) = s.with_key("GET", "/api/v1/whoami", &random_key()).await;
                flooded.fetch_add(1, Ordering::Relaxed);
                if st != 401 {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Meanwhile: fresh keys, each used at once (uncached) and then repeatedly.
    let mut statuses = Vec::new();
    while Instant::now() < stop {
        let (key, _) = s.key(&t, "developer").await;
        for _ in 0..5 {
            let (st, v) = s.with_key("GET", "/api/v1/whoami", &key).await;
            statuses.push(st);
            assert_eq!(st, 200, "valid key refused during the flood: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in flood {
        f.await.unwrap();
    }
    let flooded = flooded.load(Ordering::Relaxed);
    assert!(
        flooded > 200,
        "the flood was too small to mean anything: {flooded}"
    );
    assert_eq!(
        unexpected.load(Ordering::Relaxed),
        0,
        "flood requests answered other than 401"
    );
    assert!(statuses.len() >= 20, "{}", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200));
    // The flood was answered by the index, not the store.
    let metrics = s.proxy_metrics().await;
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tenantgate_proxy_api_key_unknown_total{outcome=\"refused\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("index metric");
    assert!(refused > 0.0, "{metrics}");
}
