//! The generic cache against a fake store: coalescing, negative entries,
//! refresh-ahead, staleness, the breaker and invalidation races.

use super::*;
use std::sync::atomic::AtomicBool;

fn settings(ttl_ms: u64, neg_ms: u64, stale_ms: u64) -> CacheSettings {
    CacheSettings::for_tests(ttl_ms, neg_ms, stale_ms)
}

/// A cache whose store answers `value` (None: not found) for every key, or fails
/// while `down`; every load is counted and takes `delay_ms`.
struct Fake {
    value: Arc<AtomicU64>,
    exists: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    loads: Arc<AtomicU64>,
    /// Most loads seen running at once.
    max_in_flight: Arc<AtomicU64>,
}

fn cache(s: CacheSettings, delay_ms: u64) -> (Cached<String, u32>, Fake) {
    let fake = Fake {
        value: Arc::new(AtomicU64::new(1)),
        exists: Arc::new(AtomicBool::new(true)),
        down: Arc::new(AtomicBool::new(false)),
        loads: Arc::new(AtomicU64::new(0)),
        max_in_flight: Arc::new(AtomicU64::new(0)),
    };
    let (value, exists, down, loads) = (
        fake.value.clone(),
        fake.exists.clone(),
        fake.down.clone(),
        fake.loads.clone(),
    );
    let (in_flight, max_in_flight) = (Arc::new(AtomicU64::new(0)), fake.max_in_flight.clone());
    let c = Cached::new(
        "test",
        s,
        Arc::new(Breaker::new(1, Duration::from_millis(200))),
        move |_k: String| {
            let (value, exists, down, loads) =
                (value.clone(), exists.clone(), down.clone(), loads.clone());
            let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
            Box::pin(async move {
                loads.fetch_add(1, Ordering::SeqCst);
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                // The row is read when the load begins; the delay is the rest of
                // the round trip (so a change during it is not seen).
                let row = exists
                    .load(Ordering::SeqCst)
                    .then(|| value.load(Ordering::SeqCst) as u32);
                let failed = down.load(Ordering::SeqCst);
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if failed {
                    return Err(StoreError::Unavailable("down".into()));
                }
                Ok(row)
            })
        },
    );
    (c, fake)
}

#[tokio::test]
async fn misses_are_coalesced_and_hits_do_not_load() {
    let (c, fake) = cache(settings(60_000, 1_000, 600_000), 50);
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.get("k").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_deref(), Some(&1));
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
    for _ in 0..10 {
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats.hits.load(Ordering::SeqCst), 10);
    assert_eq!(c.entry_count(), 1);
}

#[tokio::test]
async fn unknown_keys_are_cached_negatively_for_a_short_time() {
    let (c, fake) = cache(settings(60_000, 100, 600_000), 0);
    fake.exists.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        assert!(c.get("nope").await.unwrap().is_none());
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats.negative_hits.load(Ordering::SeqCst), 9);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The key was created meanwhile: found on the next load.
    fake.exists.store(true, Ordering::SeqCst);
    assert_eq!(c.get("nope").await.unwrap().as_deref(), Some(&1));
    assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stale_entries_are_refreshed_in_the_background_once() {
    let (c, fake) = cache(settings(50, 50, 600_000), 20);
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
    fake.value.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Past the TTL: the old value is served at once and one refresh starts.
    for _ in 0..20 {
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&1));
    }
    // The refresh lands shortly (polled, so a loaded CI machine does not flake).
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("k").await.unwrap().as_deref() != Some(&2) {
        assert!(Instant::now() < deadline, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats.refreshes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn entries_that_go_stale_together_refresh_a_few_at_a_time() {
    let (c, fake) = cache(settings(300, 50, 600_000), 30);
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_eq!(c.get(k.as_str()).await.unwrap().as_deref(), Some(&1));
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 20);
    fake.value.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // All stale at once: every hit still answers at once, only two refresh.
    for k in &keys {
        assert_eq!(c.get(k.as_str()).await.unwrap().as_deref(), Some(&1));
    }
    assert_eq!(
        c.stats.refreshes.load(Ordering::SeqCst),
        REFRESHES_IN_FLIGHT as u64
    );
    // Later hits start the rest as slots free up, until every entry is new.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = 0;
        for k in &keys {
            if c.get(k.as_str()).await.unwrap().as_deref() == Some(&2) {
                fresh += 1;
            }
        }
        if fresh == keys.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {fresh} entries refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(c.stats.refreshes.load(Ordering::SeqCst) >= 20);
    assert!(fake.max_in_flight.load(Ordering::SeqCst) <= REFRESHES_IN_FLIGHT as u64);
    // No load failed, so the breaker never opened: a miss still loads.
    assert_eq!(c.get("new").await.unwrap().as_deref(), Some(&2));
}

#[tokio::test]
async fn stale_entries_serve_while_the_store_is_down_until_max_staleness() {
    // TTL 50 ms, max staleness 1 s: the checks below wait for events (polled), and
    // only need the host not to stall for most of a second.
    let (c, fake) = cache(settings(50, 50, 1_000), 0);
    assert_eq!(c.get("t").await.unwrap().as_deref(), Some(&1));
    fake.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // past the TTL: still served (a background refresh fails quietly)
    let loads = fake.loads.load(Ordering::SeqCst);
    assert_eq!(c.get("t").await.unwrap().as_deref(), Some(&1));
    // the failed refresh happened (it is what opens the breaker)
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.loads.load(Ordering::SeqCst) == loads {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // past max staleness: fail closed
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("t").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "stale entry served past max staleness"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // unknown keys while down: fail closed without a load each (the breaker
    // lets one probe through per 200 ms cooldown)
    let (loads, started) = (fake.loads.load(Ordering::SeqCst), Instant::now());
    for i in 0..50 {
        assert_eq!(c.get(format!("other{i}").as_str()).await, Err(Unavailable));
    }
    let probes = 1 + started.elapsed().as_millis() as u64 / 200;
    assert!(fake.loads.load(Ordering::SeqCst) - loads <= probes);
    // recovery: the next probe finds the store back
    fake.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("t").await.ok().flatten().as_deref() != Some(&1) {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn waiters_of_a_failed_load_fail_fast() {
    let (c, fake) = cache(settings(60_000, 1_000, 600_000), 100);
    fake.down.store(true, Ordering::SeqCst);
    let c = Arc::new(c);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.get("k").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(Unavailable));
    }
    // One slow load, not twenty in a row (a second one only if a waiter came
    // after the breaker window, on a very slow machine).
    assert!(fake.loads.load(Ordering::SeqCst) <= 2);
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

#[tokio::test]
async fn invalidation_forces_a_reload() {
    let (c, fake) = cache(settings(60_000, 1_000, 600_000), 0);
    assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&1));
    fake.value.store(2, Ordering::SeqCst);
    assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&1));
    c.invalidate(&"x".to_owned()).await;
    assert_eq!(c.get("x").await.unwrap().as_deref(), Some(&2));
}

#[tokio::test]
async fn a_load_that_began_before_an_invalidation_is_dropped_after_it() {
    let (c, fake) = cache(settings(60_000, 1_000, 600_000), 100);
    let c = Arc::new(c);
    let loading = {
        let c = c.clone();
        tokio::spawn(async move { c.get("x").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The change lands while the old value is being read.
    fake.value.store(2, Ordering::SeqCst);
    c.invalidate(&"x".to_owned()).await;
    // The load read the old row: it answers (and is cached) with it...
    assert_eq!(loading.await.unwrap().unwrap().as_deref(), Some(&1));
    // ...until the re-check after the change drops it (polled: no flake on a
    // slow machine), and the next load reads the new row.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("x").await.unwrap().as_deref() != Some(&2) {
        assert!(
            Instant::now() < deadline,
            "the stale load was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.loads.load(Ordering::SeqCst), 2);
}

#[test]
fn borrowed_keys_hash_and_compare_like_the_owned_ones() {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    let owned = (IdKey::new("acme"), IdKey::new("developer"));
    assert_eq!(s.hash_one(PairRef("acme", "developer")), s.hash_one(&owned));
    assert!(PairRef("acme", "developer").equivalent(&owned));
    assert!(!PairRef("acmed", "eveloper").equivalent(&owned));
    assert!(!PairRef("acme", "developers").equivalent(&owned));
    for id in [
        "",
        "a",
        &"x".repeat(30),
        &"y".repeat(31),
        &"z".repeat(200),
        "ü-tenant",
    ] {
        let k = IdKey::new(id);
        assert_eq!(k.as_bytes(), id.as_bytes());
        assert_eq!(k.to_text(), id);
        assert_eq!(s.hash_one(id.as_bytes()), s.hash_one(&k));
        assert!(id.as_bytes().equivalent(&k));
        assert_eq!(k, IdKey::new(id));
    }
    assert!(matches!(IdKey::new(&"x".repeat(30)), IdKey::Inline(30, _)));
    assert!(matches!(IdKey::new(&"x".repeat(31)), IdKey::Heap(_)));
    assert_ne!(IdKey::new("ab"), IdKey::new("abc"));
    assert!(!"ab".as_bytes().equivalent(&IdKey::new("abc")));
}

#[tokio::test]
async fn id_keyed_caches_find_what_they_loaded() {
    let c: Cached<IdKey, String> = Cached::new(
        "ids",
        settings(60_000, 1_000, 600_000),
        Arc::new(Breaker::new(1, Duration::from_millis(200))),
        |k: IdKey| Box::pin(async move { Ok(Some(format!("v-{}", k.to_text()))) }),
    );
    let long = "t".repeat(40);
    for id in ["acme", long.as_str()] {
        let now = Instant::now();
        assert_eq!(
            c.get_id(id, now).await.unwrap().0.unwrap().as_str(),
            format!("v-{id}")
        );
        assert_eq!(
            c.get_id(id, now).await.unwrap().0.unwrap().as_str(),
            format!("v-{id}")
        );
    }
    assert_eq!(c.stats.misses.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats.hits.load(Ordering::SeqCst), 2);
    c.invalidate(&IdKey::new("acme")).await;
    assert!(c.get_id("acme", Instant::now()).await.unwrap().0.is_some());
    assert_eq!(c.stats.misses.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn not_found_never_counts_as_a_breaker_failure() {
    let (c, fake) = cache(settings(60_000, 0, 600_000), 0);
    fake.exists.store(false, Ordering::SeqCst);
    for i in 0..50 {
        assert_eq!(c.get(&format!("k{i}")).await, Ok(None));
    }
    assert!(!c.breaker.is_open());
}

#[tokio::test]
async fn unmetered_loads_neither_trip_nor_wait_for_the_breaker() {
    let (c, fake) = cache(settings(60_000, 1_000, 600_000), 0);
    fake.down.store(true, Ordering::SeqCst);
    for i in 0..5 {
        assert!(c.load_unmetered(&format!("u{i}")).await.is_err());
    }
    assert!(!c.breaker.is_open(), "unmetered failures are not counted");
    // A metered failure opens it; unmetered loads still go through.
    assert_eq!(c.get("m").await, Err(Unavailable));
    assert!(c.breaker.is_open());
    fake.down.store(false, Ordering::SeqCst);
    let (found, _) = c.load_unmetered("u9").await.unwrap();
    assert_eq!(found.as_deref(), Some(&1));
    assert!(c.breaker.is_open(), "nor do unmetered successes close it");
    // What it loaded is cached like any load.
    assert_eq!(c.get("u9").await.unwrap().as_deref(), Some(&1));
}
