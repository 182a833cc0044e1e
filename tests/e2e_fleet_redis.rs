#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fleet mode with the Redis rate-limit backend, through real `tenantgate proxy`
//! processes on PostgreSQL: a limit shared by two and three proxies, and Redis
//! killed mid-load with `fail_mode = "open"` (requests keep passing, each proxy
//! enforces `limit / live proxies` locally) and `"closed"` (503 `unavailable`),
//! then restarted (automatic recovery).

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::eventually;
use fleet::Fleet;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::testing::{OwnRedis, TestDb};

fn redis_config(url: &str, timeout_ms: u64, fail_mode: &str) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\nkey_prefix = \"tg-test-{}\"\n\
         [ratelimit]\nbackend = \"redis\"\nfail_mode = \"{fail_mode}\"\n",
        tenantgate_core::secrets::random_token(6).to_ascii_lowercase()
    )
}

/// Creates a tenant with `max_requests` per `window_seconds` and a developer key.
async fn tenant_with_limit(f: &Fleet, prefix: &str, max_requests: u64, window: u64) -> String {
    let tenant = format!(
        "{prefix}-{}",
        tenantgate_core::secrets::random_token(6).to_ascii_lowercase()
    );
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": tenant, "name": "R", "tier": "pro"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = f
        .admin(
            "PUT",
            &format!("/v1/tenants/{tenant}/rate-limit"),
            Some(json!({"max_requests": max_requests, "window_seconds": window})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = f
        .admin(
            "POST",
            &format!("/v1/tenants/{tenant}/api-keys"),
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

/// Waits until every proxy counts `n` live proxies from the Redis heartbeats.
async fn all_see_live(f: &Fleet, n: usize) {
    for i in 0..f.proxies.len() {
        let seen = eventually(Duration::from_secs(10), || async {
            f.metric(i, "tenantgate_ratelimit_live_proxies").await == Some(n as f64)
        })
        .await;
        assert!(seen.is_some(), "proxy {i} never counted {n} live proxies");
    }
}

/// Status counts and the slowest request of a background load.
#[derive(Debug, Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    codes: BTreeMap<String, u64>,
    slowest: Duration,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.codes {
            *self.codes.entry(k).or_default() += v;
        }
        self.slowest = self.slowest.max(o.slowest);
    }
    fn total(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// `workers` tasks sending GETs round-robin over the proxies until `stop`.
fn load(
    f: &Arc<Fleet>,
    key: &str,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..workers)
        .map(|w| {
            let (f, key, stop) = (f.clone(), key.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (st, v) = f.get(i % f.proxies.len(), "/api/v1/whoami", &key).await;
                    t.slowest = t.slowest.max(started.elapsed());
                    *t.statuses.entry(st).or_default() += 1;
                    if let Some(code) = v["error"]["code"].as_str() {
                        *t.codes.entry(code.to_owned()).or_default() += 1;
                    }
                    i += 1;
                }
                t
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all
}

/// A 100-request limit hammered through `n` proxies admits 97..=101.
async fn proxies_share_one_limit(n: usize) {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(redis) = tenantgate_core::testing::test_redis() else {
        db.cleanup().await;
        return;
    };
    let f = Fleet::start(&db.url, n, &redis_config(&redis, 200, "open")).await;
    let key = tenant_with_limit(&f, "shared", 100, 3600).await;
    all_see_live(&f, n).await;

    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for w in 0..4 * n {
        let (f, key) = (f.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            for _ in 0..40 {
                match f.get(w % n, "/api/v1/whoami", &key).await {
                    (200, _) => ok += 1,
                    (429, v) => {
                        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                        limited += 1;
                    }
                    (other, v) => panic!("unexpected status {other}: {v}"),
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
    assert_eq!(ok + limited, 160 * n as u32);
    eprintln!("{n} proxies: admitted {ok} of a 100 limit, {limited} refused");
    assert!(
        (97..=101).contains(&ok),
        "admitted {ok} of a 100 limit across {n} proxies"
    );
    shut_down(f, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_redis_limit() {
    proxies_share_one_limit(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_one_redis_limit() {
    proxies_share_one_limit(3).await;
}

/// A 150-request daily quota hammered through two proxies sharing Redis admits
/// exactly 150 (small quotas are taken one unit at a time), and the admin API
/// reports them as used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_redis_quota() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(redis) = tenantgate_core::testing::test_redis() else {
        db.cleanup().await;
        return;
    };
    let n = 2;
    let f = Fleet::start(&db.url, n, &redis_config(&redis, 200, "closed")).await;
    let key = tenant_with_limit(&f, "quota", 100_000, 60).await;
    let (_, v) = f.admin("GET", "/v1/tenants", None).await;
    let tenant = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .find(|id| id.starts_with("quota-"))
        .unwrap();
    let (st, v) = f
        .admin(
            "PUT",
            &format!("/v1/tenants/{tenant}/quota"),
            Some(json!({"period": "day", "max_requests": 150})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    all_see_live(&f, n).await;
    // Every proxy has the quota before the load starts.
    for i in 0..n {
        let (st, _) = f.get(i, "/api/v1/whoami", &key).await;
        assert_eq!(st, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for w in 0..4 * n {
        let (f, key) = (f.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut over) = (0u32, 0u32);
            for _ in 0..40 {
                match f.get(w % n, "/api/v1/whoami", &key).await {
                    (200, _) => ok += 1,
                    (429, v) => {
                        assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
                        over += 1;
                    }
                    (other, v) => panic!("unexpected status {other}: {v}"),
                }
            }
            (ok, over)
        }));
    }
    let (mut ok, mut over) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        over += l;
    }
    eprintln!("{n} proxies: admitted {ok} under a 150 quota (+ the warm-up), refused {over}");
    // The warm-up requests may or may not have counted (the quota may not have
    // reached a proxy yet): 148..=150 of the load.
    assert!((148..=150).contains(&ok), "admitted {ok}");
    let reported = eventually(Duration::from_secs(5), || async {
        let (_, v) = f
            .admin("GET", &format!("/v1/tenants/{tenant}/quota"), None)
            .await;
        v["used"] == 150 && v["remaining"] == 0
    })
    .await;
    assert!(
        reported.is_some(),
        "the proxies' counts did not reach the store"
    );
    shut_down(f, db).await;
}

/// Two proxies on PostgreSQL using a `redis-server` of the test's own with
/// `fail_mode`, a busy tenant far under its limit, and a load on it that has run for
/// 700 ms; `None` when PostgreSQL or redis-server is missing (a skip outside CI).
async fn fleet_under_load_with_own_redis(fail_mode: &str) -> Option<Outage> {
    let db = TestDb::postgres().await?;
    let Some(redis) = OwnRedis::start() else {
        db.cleanup().await;
        return None;
    };
    let f = Fleet::start(&db.url, 2, &redis_config(&redis.url(), 10, fail_mode)).await;
    let busy = tenant_with_limit(&f, "busy", 1_000_000, 60).await;
    all_see_live(&f, 2).await;
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&f, &busy, 6, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    Some(Outage {
        db,
        redis,
        f,
        busy,
        stop,
        tasks,
    })
}

struct Outage {
    db: TestDb,
    redis: OwnRedis,
    f: Arc<Fleet>,
    busy: String,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

async fn shut_down(f: Arc<Fleet>, db: TestDb) {
    let mut f = Arc::try_unwrap(f).ok().unwrap();
    f.stop_all();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_open_at_limit_over_n_and_recovers() {
    let Some(Outage {
        db,
        mut redis,
        f,
        busy,
        stop,
        tasks,
    }) = fleet_under_load_with_own_redis("open").await
    else {
        return;
    };
    // Load on a tenant far under its limit; Redis dies in the middle of it.
    let before = f.metric(0, "tenantgate_ratelimit_redis_calls_total").await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let t = finish(tasks).await;
    eprintln!("fail open, Redis killed mid-load: {t:?}");
    assert!(t.total() > 50, "too little load to mean anything: {t:?}");
    assert_eq!(
        t.statuses.get(&200).copied(),
        Some(t.total()),
        "a tenant under its limit must keep passing while Redis is down: {t:?}"
    );
    // Not a benchmark: a bound that only a request hanging on the dead Redis breaks.
    assert!(
        t.slowest < Duration::from_secs(2),
        "a request took {:?} while Redis was down",
        t.slowest
    );
    assert!(before.unwrap_or(0.0) > 0.0, "Redis was never used");
    for i in 0..2 {
        assert_eq!(
            f.metric(i, "tenantgate_ratelimit_breaker_open").await,
            Some(1.0),
            "proxy {i}'s breaker is not open"
        );
        assert!(
            f.metric(i, "tenantgate_ratelimit_fallback_decisions_total")
                .await
                .unwrap_or(0.0)
                > 0.0
        );
    }

    // Never unlimited: each proxy holds a small tenant to 40 / 2 live proxies.
    // (Created while Redis is down: tenants and keys come from the store.)
    let small = tenant_with_limit(&f, "small", 40, 3600).await;
    for i in 0..2 {
        let (mut ok, mut limited) = (0, 0);
        for _ in 0..40 {
            match f.get(i, "/api/v1/whoami", &small).await {
                (200, _) => ok += 1,
                (429, v) => {
                    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                    limited += 1;
                }
                (other, v) => panic!("unexpected status {other}: {v}"),
            }
        }
        assert_eq!(
            (ok, limited),
            (20, 20),
            "proxy {i}: fail-open bucket must be 40 / 2 proxies"
        );
    }

    // Redis back on the same port: the breaker closes by itself, Redis is used again.
    assert!(redis.restart(), "redis-server did not come back");
    for i in 0..2 {
        let closed = eventually(Duration::from_secs(10), || async {
            f.get(i, "/api/v1/whoami", &busy).await.0 == 200
                && f.metric(i, "tenantgate_ratelimit_breaker_open").await == Some(0.0)
        })
        .await;
        assert!(
            closed.is_some(),
            "proxy {i} did not recover from the outage"
        );
    }
    // Leases keep most requests off Redis, so the proof that Redis is in use again is
    // its call counter moving (takes, give-backs, heartbeats) with no new errors.
    let calls = f.metric(0, "tenantgate_ratelimit_redis_calls_total").await;
    let errors = f.metric(0, "tenantgate_ratelimit_redis_errors_total").await;
    let used = eventually(Duration::from_secs(5), || async {
        assert_eq!(f.get(0, "/api/v1/whoami", &busy).await.0, 200);
        f.metric(0, "tenantgate_ratelimit_redis_calls_total").await > calls
    })
    .await;
    assert!(used.is_some(), "no Redis calls after recovery");
    assert_eq!(
        f.metric(0, "tenantgate_ratelimit_redis_errors_total").await,
        errors,
        "Redis calls still failing after recovery"
    );

    shut_down(f, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_closed_then_recovers() {
    let Some(Outage {
        db,
        mut redis,
        f,
        busy,
        stop,
        tasks,
    }) = fleet_under_load_with_own_redis("closed").await
    else {
        return;
    };
    redis.kill();
    let killed = Instant::now();
    // Leases already held may be spent for their short lifetime; after that every
    // request is refused 503 `unavailable`.
    for i in 0..2 {
        let refused = eventually(Duration::from_secs(3), || async {
            f.get(i, "/api/v1/whoami", &busy).await.1["error"]["code"] == "unavailable"
        })
        .await;
        assert!(
            refused.is_some(),
            "proxy {i} kept admitting with Redis dead"
        );
    }
    eprintln!(
        "fail closed: refusing {:?} after the kill",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let t = finish(tasks).await;
    eprintln!("fail closed, Redis killed mid-load: {t:?}");
    let ok = t.statuses.get(&200).copied().unwrap_or(0);
    let refused = t.statuses.get(&503).copied().unwrap_or(0);
    assert!(ok > 0 && refused > 0, "{t:?}");
    assert_eq!(ok + refused, t.total(), "only 200 and 503 expected: {t:?}");
    assert_eq!(t.codes.get("unavailable").copied(), Some(refused), "{t:?}");
    assert!(
        t.slowest < Duration::from_secs(2),
        "a request took {:?} while Redis was down",
        t.slowest
    );
    for i in 0..2 {
        let (st, v) = f.get(i, "/api/v1/whoami", &busy).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (503, Some("unavailable"))
        );
        assert!(
            f.metric(i, "tenantgate_ratelimit_unavailable_total")
                .await
                .unwrap_or(0.0)
                > 0.0
        );
    }

    assert!(redis.restart(), "redis-server did not come back");
    for i in 0..2 {
        let back = eventually(Duration::from_secs(10), || async {
            f.get(i, "/api/v1/whoami", &busy).await.0 == 200
        })
        .await;
        assert!(back.is_some(), "proxy {i} did not recover from the outage");
    }
    for i in 0..2 {
        for _ in 0..10 {
            assert_eq!(f.get(i, "/api/v1/whoami", &busy).await.0, 200);
        }
    }

    shut_down(f, db).await;
}
