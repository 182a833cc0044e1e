use super::spool::{spool_name, SpoolLine};
use super::*;
use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;
use tenantgate_core::store::Store;
use tenantgate_core::usage::{UsageCounts, UsageDelta};

fn sample(t: i64) -> Sample {
    Sample {
        at_unix_s: t,
        bytes_in: 10,
        bytes_out: 100,
        latency_us: 300,
        ..Default::default()
    }
}

fn queued(m: &Meter) -> Vec<(i64, Vec<UsageDelta>)> {
    lock(&m.queue)
        .batches
        .iter()
        .map(|b| (b.seq, b.rows.clone()))
        .collect()
}

fn applied(m: &Meter) -> Vec<(String, i64)> {
    lock(&m.applied).clone()
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn open(url: &str) -> Store {
    Store::open(url, 2).await.unwrap()
}

/// A store whose pool is closed: every call fails like a database that is down.
async fn down(url: &str) -> Store {
    let s = open(url).await;
    s.close().await;
    s
}

async fn total(store: &Store, tenant: &str) -> u64 {
    store
        .usage_minutes(tenant, 0, i64::MAX / 4)
        .await
        .unwrap()
        .iter()
        .map(|r| r.counts.requests)
        .sum()
}

fn limits(max_memory_rows: usize) -> SpoolLimits {
    SpoolLimits {
        max_memory_rows,
        ..SpoolLimits::default()
    }
}

#[test]
fn records_per_tenant_per_minute() {
    let m = Meter::new("n1".into());
    m.record("a", &sample(120));
    m.record("a", &sample(179));
    m.record("a", &sample(180));
    m.record(
        "b",
        &Sample {
            denied: true,
            ..sample(120)
        },
    );
    m.seal_batch();
    let q = queued(&m);
    assert_eq!(q.len(), 1);
    let mut rows = q[0].1.clone();
    rows.sort_by_key(|x| (x.tenant_id.clone(), x.bucket_start));
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (
            rows[0].tenant_id.as_str(),
            rows[0].bucket_start,
            rows[0].counts.requests
        ),
        ("a", 120, 2)
    );
    assert_eq!(rows[0].counts.bytes_out, 200);
    assert_eq!(rows[0].counts.latency_buckets[1], 2);
    assert_eq!((rows[1].bucket_start, rows[1].counts.requests), (180, 1));
    assert_eq!(
        (rows[2].tenant_id.as_str(), rows[2].counts.denied),
        ("b", 1)
    );
    assert_eq!(m.pending_requests(), 4);
    assert_eq!(m.live_rows.load(Ordering::Relaxed), 0);
}

#[test]
fn a_keys_share_is_a_row_of_its_own_not_another_request() {
    let m = Meter::new("n1".into());
    for _ in 0..3 {
        m.record("a", &sample(120));
        m.record_key("a", "k1", &sample(120));
    }
    m.record("a", &sample(120));
    assert_eq!(m.pending_requests(), 4);
    m.seal_batch();
    let q = queued(&m);
    let mut rows = q[0].1.clone();
    rows.sort_by_key(|x| x.tenant_id.clone());
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].tenant_id.as_str(), rows[0].counts.requests),
        ("a", 4)
    );
    assert_eq!(
        tenantgate_core::usage::split_key_row(&rows[1].tenant_id),
        Some(("a", "k1"))
    );
    assert_eq!(rows[1].counts.requests, 3);
    assert_eq!(
        m.pending_requests(),
        4,
        "queued: the tenant's requests only"
    );
}

#[test]
fn late_and_out_of_order_minutes_land_in_their_rows() {
    let m = Meter::new("n1".into());
    for t in [180, 120, 240, 130, 181, 60] {
        m.record("a", &sample(t));
    }
    m.seal_batch();
    let mut rows: Vec<(i64, u64)> = queued(&m)[0]
        .1
        .iter()
        .map(|d| (d.bucket_start, d.counts.requests))
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, vec![(60, 1), (120, 2), (180, 2), (240, 1)]);
    assert_eq!(m.live_rows.load(Ordering::Relaxed), 0);
}

#[test]
fn empty_seal_makes_no_batch() {
    let m = Meter::new("n1".into());
    m.seal_batch();
    assert!(queued(&m).is_empty());
    assert_eq!(m.pending_requests(), 0);
}

#[test]
fn seqs_grow_within_and_across_restarts_with_a_fixed_node_id() {
    let m1 = Meter::new("fixed".into());
    let mut seqs = Vec::new();
    for _ in 0..3 {
        m1.record("t", &sample(60));
        m1.seal_batch();
    }
    seqs.extend(queued(&m1).iter().map(|(s, _)| *s));
    let m2 = Meter::new("fixed".into());
    m2.record("t", &sample(60));
    m2.seal_batch();
    seqs.extend(queued(&m2).iter().map(|(s, _)| *s));
    assert_eq!(seqs.len(), 4);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn early_seal_is_requested_past_the_live_row_bound() {
    let m = Meter::build(
        "n".into(),
        None,
        SpoolLimits {
            max_live_rows: 2,
            ..SpoolLimits::default()
        },
    );
    m.record("a", &sample(60));
    m.record("b", &sample(60));
    m.record("b", &sample(60));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), m.seal_requested())
            .await
            .is_err()
    );
    m.record("c", &sample(60));
    tokio::time::timeout(Duration::from_secs(1), m.seal_requested())
        .await
        .unwrap();
    m.seal_batch();
    assert_eq!(m.live_rows.load(Ordering::Relaxed), 0);
}

#[test]
fn hard_memory_bound_drops_the_oldest_and_counts() {
    let m = Meter::build(
        "n".into(),
        None,
        SpoolLimits {
            hard_memory_rows: 2,
            ..SpoolLimits::default()
        },
    );
    for i in 0..3 {
        for _ in 0..=i {
            m.record("t", &sample(60));
        }
        m.seal_batch();
    }
    // Batches of 1, 2, 3 requests, one row each: the first is dropped.
    assert_eq!(m.dropped_batches.load(Ordering::Relaxed), 1);
    assert_eq!(m.dropped_requests.load(Ordering::Relaxed), 1);
    assert_eq!(m.pending_requests(), 5);
}

#[tokio::test]
async fn flushes_exactly_once_and_retries_in_order() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let store = open(&db.url).await;
    let m = Meter::new("node-a".into());
    for i in 0..10 {
        m.record("t1", &sample(600 + i));
    }
    m.flush(&store).await.unwrap();
    assert_eq!(m.pending_requests(), 0);
    let rows = store.usage_minutes("t1", 0, 10_000).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].counts.requests, 10);
    assert_eq!(m.stats().flushed_requests, 10);
    // A replay of the same (node, seq) is ignored.
    let (node, seq) = applied(&m)[0].clone();
    let replay = vec![UsageDelta {
        tenant_id: "t1".into(),
        bucket_start: 600,
        counts: UsageCounts {
            requests: 10,
            ..Default::default()
        },
    }];
    assert!(!store.apply_usage(&node, seq, &replay).await.unwrap());
    assert_eq!(total(&store, "t1").await, 10);
    // Store down: the batches stay queued (no spool here), then land once, in order.
    store.close().await;
    m.record("t1", &sample(600));
    assert!(m.flush(&store).await.is_err());
    m.record("t1", &sample(660));
    m.seal_and_spill().await;
    assert_eq!(m.pending_requests(), 2);
    assert_eq!(m.stats().queued_batches, 2);
    assert_eq!(m.flush_failures.load(Ordering::Relaxed), 1);
    let store2 = open(&db.url).await;
    m.flush(&store2).await.unwrap();
    assert_eq!(total(&store2, "t1").await, 12);
    let seqs: Vec<i64> = applied(&m).iter().map(|(_, s)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(m.pending_requests(), 0);
    store2.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn spools_past_the_memory_bound_and_replays_in_order() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let m = Meter::with_spool("node-a".into(), spool.clone(), limits(4));
    // Five ticks of 3 rows each; past 4 queued rows the oldest batch goes to disk.
    for tick in 0..5 {
        for t in ["a", "b", "c"] {
            m.record(t, &sample(60 * tick));
        }
        m.seal_and_spill().await;
    }
    let files = spool_files(&spool);
    assert_eq!(files.len(), 4, "{files:?}");
    let st = m.stats();
    assert_eq!(
        (st.spool_files, st.spool_batches, st.queued_batches),
        (4, 4, 1)
    );
    assert!(st.spool_bytes > 0);
    assert_eq!(st.pending_requests, 15);
    // Every spool line carries (node id, seq).
    let text = std::fs::read_to_string(spool.join(&files[0])).unwrap();
    let line: SpoolLine = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!((line.node_id.as_ref(), line.rows.len()), ("node-a", 3));

    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    let seqs: Vec<i64> = applied(&m).iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for t in ["a", "b", "c"] {
        assert_eq!(total(&store, t).await, 5);
    }
    assert!(spool_files(&spool).is_empty());
    let st = m.stats();
    assert_eq!(
        (
            st.spool_files,
            st.spool_batches,
            st.spool_bytes,
            st.pending_requests
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(st.flushed_requests, 15);
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn store_down_spools_each_interval_then_catches_up_exactly() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let m = Meter::with_spool("node-a".into(), spool.clone(), SpoolLimits::default());
    let dead = down(&db.url).await;
    m.record("t", &sample(60));
    assert!(m.flush(&dead).await.is_err());
    // Spooled at once: a crash now would lose nothing already sealed.
    assert_eq!(spool_files(&spool).len(), 1);
    for _ in 0..3 {
        m.record("t", &sample(120));
        m.record(
            "t",
            &Sample {
                rate_limited: true,
                ..sample(120)
            },
        );
        m.seal_and_spill().await;
    }
    assert_eq!(spool_files(&spool).len(), 4);
    assert!(m.flush(&dead).await.is_err());
    assert_eq!(m.pending_requests(), 7);
    assert!(m.stats().flush_lag_ms < 60_000);

    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    let rows = store.usage_minutes("t", 0, 1_000).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.bucket_start, r.counts.requests, r.counts.rate_limited))
            .collect::<Vec<_>>(),
        vec![(60, 1, 0), (120, 6, 3)]
    );
    assert!(spool_files(&spool).is_empty());
    assert_eq!(m.pending_requests(), 0);
    assert_eq!(m.dropped_requests.load(Ordering::Relaxed), 0);
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn disk_bound_drops_batches_and_counts_them() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let m = Meter::with_spool(
        "node-a".into(),
        spool.clone(),
        SpoolLimits {
            max_memory_rows: 0,
            max_disk_bytes: 2_048,
            ..SpoolLimits::default()
        },
    );
    let mut recorded = 0;
    for tick in 0..20 {
        for _ in 0..=tick {
            m.record("t", &sample(60));
            recorded += 1;
        }
        m.seal_and_spill().await;
    }
    let st = m.stats();
    assert!(st.spool_files >= 1, "{st:?}");
    assert!(st.spool_bytes <= 2_048, "{st:?}");
    assert!(st.dropped_batches >= 1, "{st:?}");
    let on_disk: u64 = spool_files(&spool)
        .iter()
        .map(|f| std::fs::metadata(spool.join(f)).unwrap().len())
        .sum();
    assert_eq!(on_disk, st.spool_bytes);
    assert_eq!(st.queued_batches, 0);
    // Nothing is lost silently: stored + dropped == recorded.
    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    assert_eq!(
        total(&store, "t").await + m.dropped_requests.load(Ordering::Relaxed),
        recorded
    );
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn disk_full_keeps_usage_in_memory_below_the_memory_bound() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let m = Meter::with_spool(
        "node-a".into(),
        dir.path().join("spool"),
        SpoolLimits {
            max_disk_bytes: 1,
            ..SpoolLimits::default()
        },
    );
    let dead = down(&db.url).await;
    m.record("t", &sample(60));
    assert!(m.flush(&dead).await.is_err());
    assert_eq!(m.stats().spool_files, 0);
    assert_eq!(m.stats().queued_batches, 1);
    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    assert_eq!(total(&store, "t").await, 1);
    assert_eq!(m.dropped_requests.load(Ordering::Relaxed), 0);
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn restart_replays_another_nodes_spool_once() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    {
        let a = Meter::with_spool("node-a".into(), spool.clone(), SpoolLimits::default());
        let dead = down(&db.url).await;
        for _ in 0..4 {
            a.record("t", &sample(60));
        }
        a.record(
            "t",
            &Sample {
                denied: true,
                ..sample(60)
            },
        );
        assert!(a.flush(&dead).await.is_err());
        // Recorded after the last seal and never sealed: a crash loses this one.
        a.record("t", &sample(60));
    }
    let files = spool_files(&spool);
    assert_eq!(files.len(), 1);
    let saved = std::fs::read(spool.join(&files[0])).unwrap();

    let b = Meter::with_spool("node-b".into(), spool.clone(), SpoolLimits::default());
    let st = b.stats();
    assert_eq!(
        (st.spool_files, st.spool_batches, st.pending_requests),
        (1, 1, 5)
    );
    let store = open(&db.url).await;
    b.flush(&store).await.unwrap();
    assert_eq!(applied(&b)[0].0, "node-a");
    let rows = store.usage_minutes("t", 0, 1_000).await.unwrap();
    assert_eq!((rows[0].counts.requests, rows[0].counts.denied), (5, 1));
    assert!(spool_files(&spool).is_empty());
    assert_eq!(b.pending_requests(), 0);

    // The same file found again (e.g. a crash before its deletion): no double count.
    std::fs::write(spool.join(&files[0]), &saved).unwrap();
    let c = Meter::with_spool("node-c".into(), spool.clone(), SpoolLimits::default());
    c.flush(&store).await.unwrap();
    assert_eq!(total(&store, "t").await, 5);
    assert!(spool_files(&spool).is_empty());
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn torn_tmp_files_are_adopted_and_corrupt_lines_skipped() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let line = |seq: i64, n: u64| {
        serde_json::to_string(&SpoolLine {
            v: 1,
            node_id: "old".into(),
            seq,
            rows: Cow::Owned(vec![UsageDelta {
                tenant_id: "t".into(),
                bucket_start: 60,
                counts: UsageCounts {
                    requests: n,
                    ..Default::default()
                },
            }]),
        })
        .unwrap()
    };
    let older = format!("{}\nnot json\n{}\n", line(1, 2), line(2, 3));
    std::fs::write(spool.join(spool_name(1, 1, "x", 2, 5)), older).unwrap();
    let torn = format!("{}\n{{\"node_id\":\"old\",\"se", line(3, 7));
    std::fs::write(
        spool.join(format!("{}.tmp", spool_name(2, 1, "y", 2, 9))),
        torn,
    )
    .unwrap();
    std::fs::write(spool.join("unrelated.txt"), "x").unwrap();

    let m = Meter::with_spool("new".into(), spool.clone(), SpoolLimits::default());
    assert_eq!(m.stats().spool_files, 2);
    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    assert_eq!(
        applied(&m),
        vec![("old".into(), 1), ("old".into(), 2), ("old".into(), 3)]
    );
    assert_eq!(total(&store, "t").await, 12);
    assert_eq!(m.spool_corrupt_lines.load(Ordering::Relaxed), 2);
    assert_eq!(spool_files(&spool), vec!["unrelated.txt".to_owned()]);
    let st = m.stats();
    assert_eq!(
        (st.spool_files, st.spool_batches, st.spool_bytes),
        (0, 0, 0)
    );
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn unwritable_spool_keeps_usage_in_memory() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be.
    let not_a_dir = dir.path().join("spool");
    std::fs::write(&not_a_dir, "x").unwrap();
    let m = Meter::with_spool("n".into(), not_a_dir, limits(0));
    let dead = down(&db.url).await;
    m.record("t", &sample(60));
    assert!(m.flush(&dead).await.is_err());
    assert!(m.spool_write_errors.load(Ordering::Relaxed) >= 1);
    assert!(m.spool_all().await.is_err());
    assert_eq!(m.pending_requests(), 1);
    let store = open(&db.url).await;
    m.flush(&store).await.unwrap();
    assert_eq!(total(&store, "t").await, 1);
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn spool_all_persists_everything_for_the_next_start() {
    let db = tenantgate_core::testing::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let m = Meter::with_spool("n".into(), spool.clone(), SpoolLimits::default());
    for _ in 0..3 {
        m.record("t", &sample(60));
    }
    assert_eq!(m.spool_all().await.unwrap(), 3);
    assert_eq!(m.pending_requests(), 3);
    drop(m);
    let next = Meter::with_spool("n2".into(), spool.clone(), SpoolLimits::default());
    let store = open(&db.url).await;
    next.flush(&store).await.unwrap();
    assert_eq!(total(&store, "t").await, 3);
    store.close().await;
    db.cleanup().await;
}

/// Rough cost of `record` (the criterion bench in `benches/` is the reference):
/// `cargo test -p tenantgate-proxy --release record_cost -- --ignored --nocapture`.
#[test]
#[ignore = "timing"]
fn record_cost() {
    let m = Meter::new("bench".into());
    let tenants: Vec<String> = (0..1_000).map(|i| format!("tenant-{i:04}")).collect();
    let s = sample(1_700_000_000);
    for t in &tenants {
        m.record(t, &s);
    }
    let n = 2_000_000u32;
    let start = std::time::Instant::now();
    for i in 0..n {
        m.record(&tenants[i as usize % tenants.len()], &s);
    }
    let per = start.elapsed() / n;
    eprintln!("record: {per:?} per call over {} tenants", tenants.len());
    assert_eq!(m.pending_requests(), u64::from(n) + 1_000);
}

#[test]
fn tenants_spread_over_the_shards() {
    let m = Meter::new("n".into());
    for i in 0..3_200 {
        m.record(&format!("tenant-{i}"), &sample(60));
    }
    let sizes: Vec<usize> = m.shards.iter().map(|s| lock(s).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 3_200);
    assert!(sizes.iter().all(|n| (50..=150).contains(n)), "{sizes:?}");
}
