//! The Redis rate limiter against a real Redis.
//!
//! Most tests use the Redis at 127.0.0.1:6379 (override with `TENANTGATE_TEST_REDIS`)
//! under a random key prefix they delete afterwards; the ones that kill Redis run
//! their own `redis-server` on a free port. With `CI` set, a missing Redis or
//! `redis-server` fails the test; elsewhere the test is skipped with a loud note.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::config::FailMode;
use tenantgate_core::domain::RateLimit;
use tenantgate_core::testing::{in_ci, OwnRedis};
use tenantgate_proxy::limiter::redis_backend::{bucket_script, bucket_take};
use tenantgate_proxy::limiter::{LimitError, Limiter, RedisLimiterOptions};
use tenantgate_proxy::limiter::{LocalLimiter, MonotonicClock};

fn skip(why: &str) {
    assert!(!in_ci(), "CI requires Redis for this test: {why}");
    eprintln!("\n!!!!!!!! SKIPPED (no Redis): {why} !!!!!!!!\n");
}

fn shared_url() -> String {
    tenantgate_core::testing::test_redis_url()
}

fn lim(max: u64, window: u64, burst: Option<u64>) -> RateLimit {
    RateLimit {
        max_requests: max,
        window_seconds: window,
        burst,
    }
}

/// A random key prefix whose keys are deleted on drop (even when the test panics).
struct Keys {
    url: String,
    prefix: String,
}

impl Keys {
    fn new(url: &str) -> Self {
        Keys {
            url: url.to_owned(),
            prefix: format!("tgtest:{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return;
        };
        let keys: Vec<String> = match redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(1_000_000)
            .query::<(u64, Vec<String>)>(&mut con)
        {
            Ok((_, k)) => k,
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(&keys).query::<i64>(&mut con);
        }
    }
}

/// The shared Redis, or `None` (skipped) outside CI.
async fn shared() -> Option<(String, Keys)> {
    let url = shared_url();
    let ok = async {
        let c = redis::Client::open(url.as_str()).ok()?;
        let mut con =
            tokio::time::timeout(Duration::from_secs(1), c.get_multiplexed_async_connection())
                .await
                .ok()?
                .ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    }
    .await;
    if ok.is_none() {
        skip(&format!("no Redis at {url}"));
        return None;
    }
    let keys = Keys::new(&url);
    Some((url, keys))
}

fn local() -> Arc<LocalLimiter> {
    Arc::new(LocalLimiter::new(Arc::new(MonotonicClock::default())))
}

/// Generous timeouts: these tests are about arithmetic, not about a loaded box.
fn relaxed(prefix: &str) -> RedisLimiterOptions {
    RedisLimiterOptions {
        key_prefix: prefix.to_owned(),
        call_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        ..RedisLimiterOptions::default()
    }
}

/// Tight timeouts and a short cool-down: these tests kill Redis.
fn tight(prefix: &str) -> RedisLimiterOptions {
    RedisLimiterOptions {
        key_prefix: prefix.to_owned(),
        call_timeout: Duration::from_millis(10),
        connect_timeout: Duration::from_millis(200),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_secs(3),
        ..RedisLimiterOptions::default()
    }
}

async fn fleet(
    url: &str,
    n: usize,
    fail_mode: FailMode,
    opts: &RedisLimiterOptions,
) -> Vec<Limiter> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Limiter::redis(url, &format!("node-{i}"), fail_mode, local(), opts.clone())
                .await
                .unwrap(),
        );
    }
    v
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Default)]
struct Tally {
    admitted: AtomicU64,
    denied: AtomicU64,
    unavailable: AtomicU64,
}

/// `tasks` concurrent tasks per limiter, each making `per_task` checks.
async fn hammer(
    limiters: &[Limiter],
    tenant: &str,
    limit: RateLimit,
    tasks: usize,
    per_task: u64,
) -> (Arc<Tally>, Duration) {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut handles = Vec::new();
    for l in limiters {
        for _ in 0..tasks {
            let (l, t, tenant) = (l.clone(), tally.clone(), tenant.to_owned());
            handles.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    match l.check(&tenant, &limit).await {
                        Ok(d) if d.allowed => t.admitted.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => t.denied.fetch_add(1, Ordering::Relaxed),
                        Err(LimitError::Unavailable) => {
                            t.unavailable.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    (tally, start.elapsed())
}

#[tokio::test]
async fn script_bucket_arithmetic_uses_redis_time() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let s = bucket_script();
    let key = format!("{}:b:two-per-second", keys.prefix);
    let l = lim(2, 1, None);

    let g = bucket_take(&s, &mut c, &key, &l, 1, 0).await.unwrap();
    assert_eq!((g.granted, g.remaining, g.ms_to_one), (1, 1, Some(0)));
    assert!(matches!(g.ms_to_full, Some(1..=500)), "{g:?}");
    let g = bucket_take(&s, &mut c, &key, &l, 1, 0).await.unwrap();
    assert_eq!((g.granted, g.remaining), (1, 0));
    assert!(matches!(g.ms_to_one, Some(1..=500)), "{g:?}");
    let g = bucket_take(&s, &mut c, &key, &l, 1, 0).await.unwrap();
    assert_eq!((g.granted, g.remaining), (0, 0), "empty");
    assert!(matches!(g.ms_to_one, Some(1..=500)), "{g:?}");
    assert!(matches!(g.ms_to_full, Some(501..=1000)), "{g:?}");
    // TTL: twice the time to refill fully (1 s), at least 1 s.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=2000).contains(&pttl), "pttl {pttl}");

    // 2 per second: one token per 500 ms of Redis TIME. The refill is decided by
    // how long really passed (a busy CI host may sleep longer than asked): at least
    // the 520 ms slept, at most what the clock says after the take.
    let emptied = Instant::now();
    tokio::time::sleep(Duration::from_millis(520)).await;
    let g = bucket_take(&s, &mut c, &key, &l, 5, 0).await.unwrap();
    let most = (emptied.elapsed().as_millis() / 500).min(2) as u64;
    assert!(
        (1..=most).contains(&g.granted),
        "refilled {g:?} after {:?}",
        emptied.elapsed()
    );
    assert_eq!(g.remaining, 0);

    // Give back: the token is there again, and giving back never exceeds capacity.
    let g = bucket_take(&s, &mut c, &key, &l, 0, 1).await.unwrap();
    assert_eq!((g.granted, g.remaining), (0, 1));
    let g = bucket_take(&s, &mut c, &key, &l, 0, 10).await.unwrap();
    assert_eq!((g.granted, g.remaining, g.ms_to_full), (0, 2, Some(0)));
    let g = bucket_take(&s, &mut c, &key, &l, 10, 0).await.unwrap();
    assert_eq!(
        (g.granted, g.remaining),
        (2, 0),
        "a lease is capped by the bucket"
    );

    // Burst sets the capacity, not the rate (1 token/s).
    let key2 = format!("{}:b:burst", keys.prefix);
    let b = lim(10, 10, Some(3));
    let g = bucket_take(&s, &mut c, &key2, &b, 5, 0).await.unwrap();
    assert_eq!((g.granted, g.remaining), (3, 0));
    assert!(matches!(g.ms_to_one, Some(900..=1000)), "{g:?}");
    assert!(matches!(g.ms_to_full, Some(2900..=3000)), "{g:?}");
    // A lowered limit clamps the stored tokens to the new capacity.
    let key3 = format!("{}:b:lowered", keys.prefix);
    let g = bucket_take(&s, &mut c, &key3, &lim(100, 60, None), 1, 0)
        .await
        .unwrap();
    assert_eq!(g.remaining, 99);
    let g = bucket_take(&s, &mut c, &key3, &lim(5, 60, None), 1, 0)
        .await
        .unwrap();
    assert_eq!((g.granted, g.remaining), (1, 4));

    // Giving back to a bucket that expired (= full) writes nothing.
    let key4 = format!("{}:b:gone", keys.prefix);
    let g = bucket_take(&s, &mut c, &key4, &l, 0, 5).await.unwrap();
    assert_eq!((g.granted, g.remaining), (0, 2));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key4)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

async fn exact_small_limit_across(n: usize) {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let limiters = fleet(&url, n, FailMode::Closed, &relaxed(&keys.prefix)).await;
    let limit = lim(100, 60, None);
    let (t, elapsed) = hammer(&limiters, "small", limit, 4, 60).await;
    let admitted = t.admitted.load(Ordering::Relaxed);
    // The exact bucket allows the capacity plus what refilled during the test.
    let refill = (elapsed.as_secs_f64() * limit.refill_per_sec()).floor() as u64;
    eprintln!(
        "{n} limiters: admitted {admitted} of {} in {elapsed:?}",
        n * 4 * 60
    );
    assert_eq!(t.unavailable.load(Ordering::Relaxed), 0);
    assert!(admitted >= 100, "admitted {admitted}");
    assert!(admitted <= 101.max(100 + refill), "admitted {admitted}");
    for l in &limiters {
        assert!(l.stats().redis_calls > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_over_admit_100_per_60s_across_2_limiters() {
    exact_small_limit_across(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_over_admit_100_per_60s_across_4_limiters() {
    exact_small_limit_across(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_limit_leases_stay_within_one_percent_and_spare_redis() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let limiters = fleet(&url, 4, FailMode::Closed, &relaxed(&keys.prefix)).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    for l in &limiters {
        l.spawn_background(&tokio::runtime::Handle::current(), rx.clone());
    }
    wait_for("4 live proxies", Duration::from_secs(5), || {
        limiters.iter().all(|l| l.stats().live_proxies == 4)
    })
    .await;
    let limit = lim(100_000, 60, None);
    let (t, elapsed) = hammer(&limiters, "big", limit, 4, 6_875).await;
    let admitted = t.admitted.load(Ordering::Relaxed);
    let refill = (elapsed.as_secs_f64() * limit.refill_per_sec()).ceil() as u64;
    let calls: u64 = limiters.iter().map(|l| l.stats().redis_calls).sum();
    let leased: u64 = limiters.iter().map(|l| l.stats().leased_decisions).sum();
    eprintln!(
        "admitted {admitted} of 110000 in {elapsed:?} (refill {refill}); redis calls {calls}, leased decisions {leased}"
    );
    assert_eq!(t.unavailable.load(Ordering::Relaxed), 0);
    assert!(
        admitted <= 100_000 + refill + 1_000,
        "over-admitted: {admitted}"
    );
    assert!(admitted >= 99_000, "under-admitted: {admitted}");
    assert!(
        leased > 50_000,
        "leases should keep Redis off most requests"
    );
    let _ = tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_under_its_limit_never_sees_429_with_4_limiters() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let opts = relaxed(&keys.prefix);
    let limiters = fleet(&url, 4, FailMode::Closed, &opts).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    for l in &limiters {
        l.spawn_background(&tokio::runtime::Handle::current(), rx.clone());
    }
    wait_for("4 live proxies", Duration::from_secs(5), || {
        limiters.iter().all(|l| l.stats().live_proxies == 4)
    })
    .await;

    // Exactly the limit, all at once: 100 per 60 s.
    let (t, _) = hammer(&limiters, "exact", lim(100, 60, None), 5, 5).await;
    assert_eq!(t.admitted.load(Ordering::Relaxed), 100);
    assert_eq!(t.denied.load(Ordering::Relaxed), 0);

    // 99 % of a big bucket in one burst, leases in play.
    let (t, elapsed) = hammer(&limiters, "burst", lim(100_000, 60, None), 4, 6_187).await;
    eprintln!("99 % burst in {elapsed:?}: {t:?}");
    assert_eq!(t.denied.load(Ordering::Relaxed), 0);
    assert_eq!(t.admitted.load(Ordering::Relaxed), 4 * 4 * 6_187);

    // Steady at 80 % of the rate for longer than the bucket lasts: 1000 per 1 s,
    // 4 × 200/s for 1.5 s = 1200 requests.
    let steady = lim(1_000, 1, None);
    let tally = Arc::new(Tally::default());
    let mut handles = Vec::new();
    for l in &limiters {
        let (l, t) = (l.clone(), tally.clone());
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for _ in 0..300 {
                tick.tick().await;
                match l.check("steady", &steady).await {
                    Ok(d) if d.allowed => t.admitted.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => t.denied.fetch_add(1, Ordering::Relaxed),
                    Err(_) => t.unavailable.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    eprintln!("steady: {tally:?}");
    assert_eq!(tally.denied.load(Ordering::Relaxed), 0);
    assert_eq!(tally.unavailable.load(Ordering::Relaxed), 0);
    let _ = tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_when_redis_dies_and_open_checks_do_not_call_redis() {
    let Some(mut own) = OwnRedis::start() else {
        return;
    };
    let keys = Keys::new(&own.url());
    let l = Limiter::redis(
        &own.url(),
        "n1",
        FailMode::Open,
        local(),
        tight(&keys.prefix),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    l.spawn_background(&tokio::runtime::Handle::current(), rx);
    let limit = lim(1_000, 60, None);
    assert!(l.check("t", &limit).await.unwrap().allowed);
    assert!(!l.stats().breaker_open);
    let errors_before = l.stats().redis_errors;

    own.kill();
    let mut until_open = 0;
    while !l.stats().breaker_open {
        assert!(l.check("t", &limit).await.unwrap().allowed);
        until_open += 1;
        assert!(until_open <= 10, "breaker did not open: {:?}", l.stats());
    }
    // Open: checks are decided locally and do not wait on Redis. Decided by counts,
    // not by timing them: only the background work (heartbeat, one probe per
    // cooldown) may call Redis meanwhile, never the checks.
    let calls_before = l.stats().redis_calls;
    let t = Instant::now();
    for _ in 0..200 {
        assert!(l.check("t", &limit).await.unwrap().allowed);
    }
    let background = 2 + 2 * (t.elapsed().as_millis() as u64 / 100);
    let calls = l.stats().redis_calls - calls_before;
    eprintln!(
        "breaker open after {until_open} checks; 200 fallback checks made {calls} Redis calls; {:?}",
        l.stats()
    );
    assert!(l.stats().redis_errors > errors_before);
    assert!(l.stats().fallback_decisions >= 200);
    assert!(
        calls <= background,
        "{calls} Redis calls for 200 open-breaker checks"
    );
    let _ = tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_falls_back_to_limit_over_live_proxies() {
    let Some(mut own) = OwnRedis::start() else {
        return;
    };
    let keys = Keys::new(&own.url());
    let opts = tight(&keys.prefix);
    let limiters = fleet(&own.url(), 2, FailMode::Open, &opts).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    for l in &limiters {
        l.spawn_background(&tokio::runtime::Handle::current(), rx.clone());
    }
    wait_for("2 live proxies", Duration::from_secs(5), || {
        limiters.iter().all(|l| l.stats().live_proxies == 2)
    })
    .await;
    own.kill();
    let a = &limiters[0];
    let other = lim(1_000, 60, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.stats().breaker_open {
        assert!(Instant::now() < deadline, "breaker did not open");
        let _ = a.check("warm", &other).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        a.stats().live_proxies,
        2,
        "last known count while Redis is down"
    );
    // 10 per 60 s shared by 2 proxies: 5 here, then 429 — never unlimited.
    let limit = lim(10, 60, None);
    for i in 0..5 {
        let d = a.check("fresh", &limit).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.limit, 10);
    }
    let d = a.check("fresh", &limit).await.unwrap();
    assert!(!d.allowed);
    assert!(d.retry_after_secs >= 1);
    assert!(a.stats().fallback_decisions >= 6);
    let _ = tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_is_unavailable_and_recovers_after_restart() {
    let Some(mut own) = OwnRedis::start() else {
        return;
    };
    let keys = Keys::new(&own.url());
    let l = Limiter::redis(
        &own.url(),
        "n1",
        FailMode::Closed,
        local(),
        tight(&keys.prefix),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    l.spawn_background(&tokio::runtime::Handle::current(), rx);
    let limit = lim(1_000, 60, None);
    assert!(l.check("t", &limit).await.unwrap().allowed);

    own.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = l.check("t", &limit).await;
        if r == Err(LimitError::Unavailable) && l.stats().breaker_open {
            break;
        }
        assert!(Instant::now() < deadline, "never unavailable: {r:?}");
    }
    // Open: `Unavailable` is answered without calling Redis (counted, not timed).
    let calls_before = l.stats().redis_calls;
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(l.check("t", &limit).await, Err(LimitError::Unavailable));
    }
    let background = 2 + 2 * (t.elapsed().as_millis() as u64 / 100);
    let calls = l.stats().redis_calls - calls_before;
    assert!(
        calls <= background,
        "{calls} Redis calls for 100 open-breaker checks"
    );
    assert!(l.stats().unavailable_decisions >= 100);

    // Same port, empty Redis (no script cache): the probe closes the breaker.
    assert!(own.restart());
    let start = Instant::now();
    wait_for("recovery", Duration::from_secs(5), || {
        !l.stats().breaker_open
    })
    .await;
    let calls = l.stats().redis_calls;
    // On a loaded box a single call may still miss its 10 ms; recovery must stick.
    let mut ok = 0;
    for _ in 0..50 {
        if l.check("t", &limit).await.is_ok_and(|d| d.allowed) {
            ok += 1;
        }
    }
    assert!(
        ok >= 45,
        "{ok} of 50 answered after recovery: {:?}",
        l.stats()
    );
    assert!(l.stats().redis_calls > calls, "answered by Redis again");
    eprintln!("recovered {:?} after restart", start.elapsed());
    let _ = tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_while_redis_is_down_works_and_connects_later() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        skip("redis-server is not installed");
        return;
    }
    let mut own = OwnRedis::unstarted();
    let keys = Keys::new(&own.url());
    let l = Limiter::redis(
        &own.url(),
        "n1",
        FailMode::Closed,
        local(),
        tight(&keys.prefix),
    )
    .await
    .unwrap();
    assert!(l.stats().breaker_open);
    assert_eq!(
        l.check("t", &lim(10, 60, None)).await,
        Err(LimitError::Unavailable)
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    l.spawn_background(&tokio::runtime::Handle::current(), rx);
    assert!(own.restart());
    wait_for("connect", Duration::from_secs(5), || {
        !l.stats().breaker_open
    })
    .await;
    assert!(l.check("t", &lim(10, 60, None)).await.unwrap().allowed);
    let _ = tx.send(true);
}

/// How `build_gate` uses it: built with no runtime around, connected by the
/// background task on the control runtime, checked from another runtime (Pingora's).
#[test]
fn lazy_limiter_is_built_without_a_runtime_and_checked_from_another() {
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let Some((url, keys)) = control.block_on(shared()) else {
        return;
    };
    let l = Limiter::redis_lazy(
        &url,
        "lazy",
        FailMode::Closed,
        local(),
        relaxed(&keys.prefix),
    )
    .unwrap();
    assert!(
        Limiter::redis_lazy("http://x", "lazy", FailMode::Closed, local(), relaxed("x")).is_err()
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    l.spawn_background(control.handle(), rx);
    let pingora = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limit = lim(3, 60, None);
    for _ in 0..3 {
        assert!(pingora.block_on(l.check("t", &limit)).unwrap().allowed);
    }
    assert!(!pingora.block_on(l.check("t", &limit)).unwrap().allowed);
    let s = l.stats();
    assert!(!s.breaker_open && s.redis_errors == 0, "{s:?}");
    let _ = tx.send(true);
    drop(pingora);
    drop(control);
}

/// Shutdown gives leases back and leaves the live set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_leases_and_leaves() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let opts = RedisLimiterOptions {
        lease_lifetime: Duration::from_secs(30),
        min_expected_proxies: 1,
        ..relaxed(&keys.prefix)
    };
    let l = Limiter::redis(&url, "solo", FailMode::Closed, local(), opts)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    l.spawn_background(&tokio::runtime::Handle::current(), rx);
    wait_for("heartbeat", Duration::from_secs(5), || {
        l.stats().redis_calls > 0
    })
    .await;
    // 1 token/s refill, so the bucket barely moves while the test runs; a 30 s
    // lifetime keeps the lease until shutdown.
    let limit = lim(1_000_000, 1_000_000, None);
    let start = Instant::now();
    for _ in 0..5_000 {
        assert!(l.check("busy", &limit).await.unwrap().allowed);
    }
    let client = redis::Client::open(url.as_str()).unwrap();
    let key = format!("{}:b:busy", keys.prefix);
    let tokens = || {
        let mut con = client.get_connection().unwrap();
        let t: String = redis::cmd("HGET")
            .arg(&key)
            .arg("t")
            .query(&mut con)
            .unwrap();
        t.parse::<f64>().unwrap()
    };
    let before = tokens();
    let _ = tx.send(true);
    let proxies = format!("{}:proxies", keys.prefix);
    wait_for("leave", Duration::from_secs(5), || {
        let mut con = client.get_connection().unwrap();
        redis::cmd("ZCARD")
            .arg(&proxies)
            .query::<u64>(&mut con)
            .unwrap()
            == 0
    })
    .await;
    let after = tokens();
    let spent = 1_000_000.0 - 5_000.0;
    let refill = start.elapsed().as_secs_f64() + 1.0;
    eprintln!("bucket: {before} with leases out, {after} after shutdown");
    assert!(after >= before);
    assert!(
        (spent..=spent + refill).contains(&after),
        "exactly the unspent tokens went back: {after}"
    );
}

/// Not a test: how fast `check` is. `cargo test -p tenantgate-proxy --test
/// redis_limiter -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_check_paths() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let limit = lim(100_000_000, 60, None);
    let run = |l: Limiter, n: u64, tenant: &'static str| async move {
        // warm up
        for _ in 0..1_000 {
            let _ = l.check(tenant, &limit).await;
        }
        let t = Instant::now();
        for _ in 0..n {
            assert!(l.check(tenant, &limit).await.unwrap().allowed);
        }
        let per = t.elapsed() / u32::try_from(n).unwrap();
        (per, l.stats())
    };
    let local_l = Limiter::local(local());
    let (per, _) = run(local_l, 200_000, "local").await;
    eprintln!("local backend:        {per:?} per check");

    let opts = RedisLimiterOptions {
        min_expected_proxies: 1,
        ..relaxed(&keys.prefix)
    };
    let leased = Limiter::redis(&url, "m1", FailMode::Closed, local(), opts.clone())
        .await
        .unwrap();
    let (per, s) = run(leased, 200_000, "leased").await;
    eprintln!(
        "redis, leased path:   {per:?} per check ({} redis calls for 201000 checks)",
        s.redis_calls
    );

    let rt_opts = RedisLimiterOptions {
        max_outstanding: 0.0,
        ..opts
    };
    let every = Limiter::redis(&url, "m2", FailMode::Closed, local(), rt_opts)
        .await
        .unwrap();
    let (per, s) = run(every, 20_000, "roundtrip").await;
    eprintln!(
        "redis, no lease:      {per:?} per check ({} redis calls for 21000 checks)",
        s.redis_calls
    );

    // 8 concurrent tasks on the leased path.
    let opts8 = RedisLimiterOptions {
        min_expected_proxies: 1,
        ..relaxed(&keys.prefix)
    };
    let l = Limiter::redis(&url, "m3", FailMode::Closed, local(), opts8)
        .await
        .unwrap();
    let t = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..8 {
        let l = l.clone();
        hs.push(tokio::spawn(async move {
            for _ in 0..50_000 {
                let _ = l.check("conc", &limit).await;
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    eprintln!(
        "redis, leased, 8 tasks: {:?} per check (throughput), {:?}",
        t.elapsed() / 400_000,
        l.stats()
    );
}

/// A 100 000-request daily quota spent by `n` proxies sharing Redis, 8 tasks each,
/// until every proxy is refused: never one request past the quota, every unit leased
/// is spent, and a proxy calls Redis about once per lease (1 % / proxies of the quota).
async fn quota_shared_by(n: usize) {
    use tenantgate_core::domain::{Quota, QuotaPeriod};
    use tenantgate_proxy::limiter::quota::Quotas;
    let Some((url, keys)) = shared().await else {
        return;
    };
    let db = tenantgate_core::testing::TestDb::sqlite();
    let store = tenantgate_core::store::Store::open(&db.url, 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let limiters = fleet(&url, n, FailMode::Closed, &relaxed(&keys.prefix)).await;
    let quota = Quota {
        period: QuotaPeriod::Day,
        max_requests: 100_000,
    };
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut handles = Vec::new();
    for l in &limiters {
        let quotas = Arc::new(Quotas::new(store.clone(), l.clone()));
        for _ in 0..8 {
            let (q, t) = (quotas.clone(), tally.clone());
            handles.push(tokio::spawn(async move {
                // Until this proxy is refused twice in a row (nothing leased, nothing left).
                let mut refused = 0;
                while refused < 2 {
                    let now = tenantgate_core::time::now_ms();
                    match q.check("quota-tenant", &quota, now).await {
                        Ok(d) if d.allowed => {
                            refused = 0;
                            t.admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            refused += 1;
                            t.denied.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(LimitError::Unavailable) => {
                            t.unavailable.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let admitted = tally.admitted.load(Ordering::Relaxed);
    let calls: u64 = limiters.iter().map(|l| l.stats().redis_calls).sum();
    eprintln!(
        "quota 100000/day, {n} proxies: admitted {admitted} in {:?}, {calls} Redis calls",
        start.elapsed()
    );
    assert_eq!(tally.unavailable.load(Ordering::Relaxed), 0);
    assert!(admitted <= 100_000, "over-admitted: {admitted}");
    assert!(admitted >= 99_000, "under-admitted: {admitted}");
    assert!(calls < 2_000, "{calls} Redis calls for 100000 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_leases_never_over_admit_across_2_proxies() {
    quota_shared_by(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_leases_never_over_admit_across_4_proxies() {
    quota_shared_by(4).await;
}

/// Explain's peek: answers like `check` would, takes nothing from the shared bucket.
#[tokio::test]
async fn peek_spends_nothing_from_the_shared_bucket() {
    let Some((url, keys)) = shared().await else {
        return;
    };
    let limiters = fleet(&url, 2, FailMode::Closed, &relaxed(&keys.prefix)).await;
    let l = lim(3, 3600, None);
    for _ in 0..20 {
        let d = limiters[1].peek("peeked", &l).await.unwrap();
        assert!(d.allowed, "{d:?}");
    }
    let mut admitted = 0;
    for _ in 0..5 {
        if limiters[0].check("peeked", &l).await.unwrap().allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "the peeks took tokens");
    let d = limiters[1].peek("peeked", &l).await.unwrap();
    assert!(!d.allowed, "{d:?}");
    assert!(d.retry_after_secs >= 1);
}
