#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The data lifecycle in the store: rollups are exact (totals over any range are
//! the same before and after, with flushes arriving meanwhile), retention prunes
//! every append-only table, one process of a fleet works per pass. SQLite and
//! PostgreSQL alike.

use std::time::Duration;
use tenantgate_core::config::RetentionSettings;
use tenantgate_core::domain::Tier;
use tenantgate_core::store::{AuditQuery, NewAuditEntry, NewTenant, Store};
use tenantgate_core::testing::TestDb;
use tenantgate_core::time::now_ms;
use tenantgate_core::usage::{Granularity, UsageCounts, UsageDelta, UsageRow};

const H: i64 = 3_600;
const D: i64 = 86_400;

async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Store, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for db in TestDb::all().await {
        let store = Store::open(&db.url, 8).await.unwrap();
        f(store.clone(), db.is_postgres()).await;
        store.close().await;
        db.cleanup().await;
    }
}

fn delta(tenant: &str, bucket: i64, n: u64) -> UsageDelta {
    let mut counts = UsageCounts {
        requests: n,
        rate_limited: n / 3,
        denied: n / 5,
        upstream_errors: n / 7,
        bytes_in: n * 100,
        bytes_out: n * 1000,
        latency_sum_us: n * 900,
        ..Default::default()
    };
    counts.latency_buckets[(n % 16) as usize] = n;
    UsageDelta {
        tenant_id: tenant.into(),
        bucket_start: bucket.div_euclid(60) * 60,
        counts,
    }
}

fn sum(rows: &[UsageRow]) -> UsageCounts {
    let mut t = UsageCounts::default();
    for r in rows {
        t.merge(&r.counts);
    }
    t
}

fn retention() -> RetentionSettings {
    RetentionSettings::default()
}

/// Totals of `tenant` over several ranges and granularities (the usage API's
/// reads), to compare before and after passes.
async fn snapshot(s: &Store, tenant: &str, now: i64) -> Vec<UsageCounts> {
    let mut out = Vec::new();
    let day0 = now.div_euclid(D) * D;
    for (g, from, to) in [
        (Granularity::Hour, day0 - 12 * D, day0 + D),
        (Granularity::Day, day0 - 12 * D, day0 + D),
        (Granularity::Day, 0, i64::MAX / 4),
        (Granularity::Hour, day0 - 3 * D + 5 * H, day0 - D + 7 * H),
        (Granularity::Day, day0 - 9 * D, day0 - 2 * D),
        (Granularity::Hour, now.div_euclid(H) * H - 4 * H, now + H),
    ] {
        out.push(sum(&s.usage_series(tenant, g, from, to).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn rollups_keep_every_total_and_prune_old_minutes() {
    each_backend(|s, _| async move {
        let now = now_ms() / 1000;
        // Ten days of history (a row every 37 minutes, two tenants) up to now.
        let mut seq = 0;
        let mut all = Vec::new();
        let mut t = now - 10 * D;
        while t <= now {
            all.push(delta("acme", t, (t % 97) as u64 + 1));
            all.push(delta("beta", t, 2));
            t += 37 * 60;
        }
        for chunk in all.chunks(50) {
            seq += 1;
            assert!(s.apply_usage("seed", seq, chunk).await.unwrap());
        }
        let before = snapshot(&s, "acme", now).await;
        let minute_total = sum(&s.usage_minutes("acme", 0, i64::MAX / 4).await.unwrap());
        assert_eq!(
            before[2], minute_total,
            "all-time day totals before any rollup"
        );

        let report = s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
        assert!(report.elected);
        let rolled: u64 = report
            .steps
            .iter()
            .filter(|st| st.step.starts_with("rollup"))
            .map(|st| st.rows)
            .sum();
        assert!(rolled > 0, "{report:?}");
        let marks = s.rollup_marks().await.unwrap();
        assert_eq!(marks.hour % H, 0);
        assert!(marks.hour > now - 2 * H && marks.hour <= now, "{marks:?}");
        assert_eq!(marks.day, marks.hour.div_euclid(D) * D);
        // Minutes older than the 7-day retention are gone, newer ones kept.
        let old = s.usage_minutes("acme", 0, now - 7 * D - 60).await.unwrap();
        assert!(old.is_empty(), "{} old minute rows left", old.len());
        assert!(!s
            .usage_minutes("acme", now - 6 * D, now)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(snapshot(&s, "acme", now).await, before);

        // A second pass changes nothing.
        let again = s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
        assert!(again.steps.iter().all(|st| st.rows == 0), "{again:?}");
        assert_eq!(snapshot(&s, "acme", now).await, before);

        // A late flush for rolled-up minutes (and days) lands in every level.
        let late = [
            delta("acme", now - 3 * D, 11),
            delta("acme", now - 5 * H, 13),
        ];
        assert!(s.apply_usage("late", 1, &late).await.unwrap());
        let after = snapshot(&s, "acme", now).await;
        assert_eq!(after[2].requests, before[2].requests + 24);
        assert_eq!(after[0].requests, before[0].requests + 24);
        assert_eq!(after[1], after[0], "day and hour views agree");
        // Hour and day totals over the same aligned range agree everywhere.
        let day0 = now.div_euclid(D) * D;
        for d in 1..10 {
            let (f, t) = (day0 - d * D, day0 - d * D + D);
            let by_hour = sum(&s
                .usage_series("acme", Granularity::Hour, f, t)
                .await
                .unwrap());
            let by_day = sum(&s
                .usage_series("acme", Granularity::Day, f, t)
                .await
                .unwrap());
            assert_eq!(by_hour, by_day, "day -{d}");
        }
    })
    .await;
}

#[tokio::test]
async fn rollups_are_exact_with_concurrent_flushes() {
    each_backend(|s, _| async move {
        let now = now_ms() / 1000;
        let expected_per_round = 5 + 7 + 3;
        let rounds = 60u64;
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..rounds {
                    let rows = [
                        // A closed hour (rolled up meanwhile), a closed day, now.
                        delta("acme", now - 3 * H + (i as i64 % 50) * 60, 5),
                        delta("acme", now - 2 * D, 7),
                        delta("acme", now, 3),
                    ];
                    assert!(s.apply_usage("busy", i as i64 + 1, &rows).await.unwrap());
                }
            })
        };
        let roller = {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        writer.await.unwrap();
        roller.await.unwrap();
        s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
        let want = rounds * expected_per_round;
        for g in [Granularity::Hour, Granularity::Day] {
            let got = sum(&s.usage_series("acme", g, 0, now + D).await.unwrap());
            assert_eq!(got.requests, want, "{g:?}");
        }
        let minutes = sum(&s.usage_minutes("acme", 0, now + D).await.unwrap());
        assert_eq!(minutes.requests, want);
    })
    .await;
}

#[tokio::test]
async fn flush_records_changes_and_audit_are_pruned() {
    each_backend(|s, _| async move {
        let now = now_ms() / 1000;
        assert!(s
            .apply_usage("node-a", 5, &[delta("acme", now, 1)])
            .await
            .unwrap());
        for id in ["t-one", "t-two", "t-three"] {
            s.create_tenant(&NewTenant {
                id: id.into(),
                name: id.into(),
                tier: Tier::Free,
                admin_user: None,
            })
            .await
            .unwrap();
        }
        s.record_audit(&NewAuditEntry {
            actor_kind: "platform".into(),
            actor_id: "platform".into(),
            tenant_id: Some("t-one".into()),
            action: "tenant.create".into(),
            target: "/v1/tenants".into(),
            request_id: "r1".into(),
        })
        .await
        .unwrap();
        let latest = s.latest_change_id().await.unwrap();
        assert!(latest >= 3);
        // A scaling event and a proxy's signals (silent for longer than an hour later).
        s.put_route_signals(
            "node-a",
            now_ms(),
            &[tenantgate_core::store::RouteSignalRow {
                route: "/api/".into(),
                rps_milli: 50_000,
                in_flight: 0,
                p95_us: 1_000,
                requests: 10,
            }],
        )
        .await
        .unwrap();
        let policy = tenantgate_core::scaling::Policy {
            target_rps_per_replica: 10.0,
            min: 1,
            max: 10,
            cooldown_s: 0,
            stabilisation_s: 0,
        };
        let pass = s
            .scaling_pass(&[("/api/".into(), policy)], now_ms(), now_ms() - 5_000)
            .await
            .unwrap()
            .unwrap();
        assert!(pass[0].event.is_some());
        // A pass "25 hours later" (and 401 days for the audit and scaling events)
        // prunes them.
        let mut r = retention();
        r.audit = Duration::from_secs(3_600);
        r.scaling_events = Duration::from_secs(3_600);
        let later = now_ms() + 25 * 3_600 * 1000;
        let report = s.lifecycle_pass(&r, later).await.unwrap();
        let rows = |name: &str| {
            report
                .steps
                .iter()
                .find(|st| st.step == name)
                .map(|st| st.rows)
                .unwrap()
        };
        assert_eq!(rows("prune_flush_records"), 1);
        assert!(rows("prune_changes") >= 2);
        assert_eq!(rows("prune_audit"), 1);
        assert_eq!(rows("prune_scaling"), 2, "one event, one stale signal row");
        let counts: std::collections::HashMap<_, _> = s
            .lifecycle_row_counts()
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(counts["metering_flushes"], 0);
        assert_eq!(counts["changes"], 1, "the newest change is kept");
        assert_eq!(counts["audit_log"], 0);
        assert_eq!(counts["scaling_events"], 0);
        assert_eq!(counts["route_signals"], 0);
        // The pruned flush stays applied: replaying it is a no-op; newer ones apply.
        assert!(!s
            .apply_usage("node-a", 5, &[delta("acme", now, 1)])
            .await
            .unwrap());
        assert!(!s
            .apply_usage("node-a", 4, &[delta("acme", now, 1)])
            .await
            .unwrap());
        assert!(s
            .apply_usage("node-a", 6, &[delta("acme", now, 1)])
            .await
            .unwrap());
        let total = sum(&s.usage_minutes("acme", 0, now + 60).await.unwrap());
        assert_eq!(total.requests, 2);
        // The feed says how far it was pruned; ids keep growing past it.
        let pruned = s.changes_pruned_through().await.unwrap();
        assert!(pruned > 0 && pruned < latest, "{pruned} vs {latest}");
        assert_eq!(s.latest_change_id().await.unwrap(), latest);
        let left = s.changes_since(0, i64::MAX, 100).await.unwrap();
        assert!(left.iter().all(|c| c.id > pruned));
    })
    .await;
}

#[tokio::test]
async fn one_process_of_the_fleet_runs_a_pass() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let s = Store::open(&db.url, 4).await.unwrap();
    let other = Store::open(&db.url, 2).await.unwrap();
    // Another process holds the job: this one skips the pass.
    let mut conn = other.pool().acquire().await.unwrap();
    sqlx::query("SELECT 1 FROM (SELECT pg_advisory_lock($1)) AS l")
        .bind(tenantgate_core::store::LIFECYCLE_JOB_LOCK)
        .execute(&mut *conn)
        .await
        .unwrap();
    let report = s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
    assert!(!report.elected);
    assert!(report.steps.is_empty());
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(tenantgate_core::store::LIFECYCLE_JOB_LOCK)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let report = s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
    assert!(report.elected);
    assert_eq!(report.steps.len(), 9, "{report:?}");
    s.close().await;
    other.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_minute_rows_live_in_daily_partitions_dropped_whole() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let s = Store::open(&db.url, 4).await.unwrap();
    let partitions = |s: Store| async move {
        let rows = sqlx::query(
            "SELECT CAST(c.relname AS TEXT) AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'usage_minute'::regclass ORDER BY 1",
        )
        .fetch_all(s.pool())
        .await
        .unwrap();
        use sqlx::Row;
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").unwrap())
            .collect::<Vec<_>>()
    };
    let now = now_ms() / 1000;
    let today = now.div_euclid(D) * D;
    // The migration created today's and the next two days' partitions.
    let names = partitions(s.clone()).await;
    assert!(
        names.contains(&format!("usage_minute_p{}", today + 2 * D)),
        "{names:?}"
    );
    assert!(
        names.contains(&"usage_minute_default".to_owned()),
        "{names:?}"
    );
    // An old minute, before any partition: the default partition takes it.
    assert!(s
        .apply_usage("n", 1, &[delta("acme", today - 5 * D, 4)])
        .await
        .unwrap());
    s.lifecycle_pass(&retention(), now_ms()).await.unwrap();
    let names = partitions(s.clone()).await;
    for d in 0..=2 {
        assert!(
            names.contains(&format!("usage_minute_p{}", today + d * D)),
            "{names:?}"
        );
    }
    // Today's and tomorrow's minutes land in their partitions.
    assert!(s
        .apply_usage(
            "n",
            2,
            &[delta("acme", now, 3), delta("acme", today + D + 60, 2)]
        )
        .await
        .unwrap());
    let row = sqlx::query(
        "SELECT CAST(tableoid::regclass AS TEXT) AS p FROM usage_minute WHERE bucket_start = $1",
    )
    .bind(now.div_euclid(60) * 60)
    .fetch_one(s.pool())
    .await
    .unwrap();
    use sqlx::Row;
    assert_eq!(
        row.try_get::<String, _>("p").unwrap(),
        format!("usage_minute_p{today}")
    );
    // Ten days later, with a one-day minute retention: the old days are rolled up
    // and their partitions dropped whole; totals stay.
    let before = sum(&s
        .usage_series("acme", Granularity::Day, 0, now + 30 * D)
        .await
        .unwrap());
    assert_eq!(before.requests, 9);
    let mut r = retention();
    r.usage_minute = Duration::from_secs(D as u64);
    let later = now_ms() + 10 * D * 1000;
    let report = s.lifecycle_pass(&r, later).await.unwrap();
    let step = report
        .steps
        .iter()
        .find(|st| st.step == "minute_partitions")
        .unwrap();
    eprintln!("{step:?}");
    let names = partitions(s.clone()).await;
    assert!(
        !names.contains(&format!("usage_minute_p{today}")),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("usage_minute_p{}", today + 10 * D)),
        "{names:?}"
    );
    assert!(s
        .usage_minutes("acme", 0, now + 30 * D)
        .await
        .unwrap()
        .is_empty());
    let after = sum(&s
        .usage_series("acme", Granularity::Day, 0, now + 30 * D)
        .await
        .unwrap());
    assert_eq!(after, before);
    s.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn audit_pages_newest_first_with_a_cursor() {
    each_backend(|s, _| async move {
        for i in 0..5 {
            s.record_audit(&NewAuditEntry {
                actor_kind: "user".into(),
                actor_id: format!("u{i}"),
                tenant_id: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
                action: "api_key.create".into(),
                target: format!("/v1/tenants/x/api-keys/{i}"),
                request_id: format!("r{i}"),
            })
            .await
            .unwrap();
        }
        let page = s
            .list_audit(&AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|e| e.actor_id.as_str()).collect::<Vec<_>>(),
            ["u4", "u3"]
        );
        let next = s
            .list_audit(&AuditQuery {
                limit: 10,
                before_id: Some(page[1].id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(next.len(), 3);
        let even = s
            .list_audit(&AuditQuery {
                tenant_id: Some("even".into()),
                from_ms: Some(now_ms() - 60_000),
                to_ms: Some(now_ms() + 60_000),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(even.len(), 3);
        assert!(even.iter().all(|e| e.tenant_id.as_deref() == Some("even")));
    })
    .await;
}

#[tokio::test]
async fn per_key_rows_are_kept_per_hour_apart_from_the_tenants() {
    each_backend(|s, _| async move {
        let now = now_ms() / 1000;
        let hour = now.div_euclid(H) * H;
        let key = |k: &str, at: i64, n: u64| UsageDelta {
            tenant_id: tenantgate_core::usage::key_row_id("acme", k),
            ..delta("acme", at, n)
        };
        let rows = [
            delta("acme", hour, 10),
            key("k1", hour, 6),
            key("k2", hour, 4),
            key("k1", hour - 2 * H, 5),
            delta("acme", hour - 2 * H, 5),
        ];
        assert!(s.apply_usage("n", 1, &rows).await.unwrap());
        assert!(s
            .apply_usage("n", 2, &[key("k1", hour + 60, 1)])
            .await
            .unwrap());
        // The tenant's own rows do not include the key rows.
        let t = sum(&s.usage_minutes("acme", 0, now + D).await.unwrap());
        assert_eq!(t.requests, 15);
        let by_key = s
            .usage_by_key("acme", hour - 3 * H, hour + H)
            .await
            .unwrap();
        let got: Vec<(&str, u64)> = by_key
            .iter()
            .map(|(k, c)| (k.as_str(), c.requests))
            .collect();
        assert_eq!(got, [("k1", 12), ("k2", 4)]);
        // A range inside an hour counts that whole hour.
        let inside = s
            .usage_by_key("acme", hour + 600, hour + 1200)
            .await
            .unwrap();
        assert_eq!(inside[0].1.requests, 7);
        // Kept as long as hour rows.
        let mut r = retention();
        r.usage_hour = Duration::from_secs(H as u64);
        r.usage_minute = Duration::from_secs(H as u64);
        s.lifecycle_pass(&r, now_ms()).await.unwrap();
        let left = s.usage_by_key("acme", 0, now + D).await.unwrap();
        assert_eq!(left.iter().map(|(_, c)| c.requests).sum::<u64>(), 11);
    })
    .await;
}

/// Scale report, not a check (PostgreSQL): a store seeded with `TG_SCALE_TENANTS`
/// (default 100) tenants × 7 days of minute rows and 400 days of hour rows, then
/// usage reads, flush times, table sizes and one rollup + retention pass.
/// `cargo test --workspace --test lifecycle report_store_scale -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn report_store_scale() {
    use std::time::Instant;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let tenants: i64 = std::env::var("TG_SCALE_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let s = Store::open(&db.url, 8).await.unwrap();
    let now = now_ms() / 1000;
    let minute0 = now.div_euclid(60) * 60;
    let pct = |mut v: Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let flush_times = |s: Store, label: &'static str, seq0: i64| async move {
        let mut times = Vec::new();
        for i in 0..30 {
            let rows: Vec<UsageDelta> = (0..tenants)
                .map(|t| delta(&format!("t{t:05}"), minute0, 3))
                .collect();
            let t = Instant::now();
            assert!(s.apply_usage("flush", seq0 + i, &rows).await.unwrap());
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        eprintln!(
            "flush of {tenants} tenant-minutes ({label}): p50 {:.2} ms, p95 {:.2} ms",
            pct(times.clone(), 0.5),
            pct(times, 0.95)
        );
    };
    flush_times(s.clone(), "empty store", 1).await;

    // Seed: minute rows for 7 days (in daily partitions, as a store running with
    // them for a week has), hour rows for the 400 days before (SQL, fast).
    let t = Instant::now();
    let today = now.div_euclid(D) * D;
    for d in 1..=8 {
        let day = today - d * D;
        sqlx::query(&format!(
            "CREATE TABLE usage_minute_p{day} PARTITION OF usage_minute FOR VALUES FROM ({day}) TO ({})",
            day + D
        ))
        .execute(s.pool())
        .await
        .unwrap();
    }
    let cols = "requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out, latency_sum_us, lat_b3";
    sqlx::query(&format!(
        "INSERT INTO usage_minute (tenant_id, bucket_start, {cols}) \
         SELECT 't' || lpad(t::text, 5, '0'), m, 5, 1, 0, 0, 500, 5000, 4000, 5 \
         FROM generate_series(0, $1 - 1) AS t, generate_series($2, $3, 60) AS m"
    ))
    .bind(tenants)
    .bind(minute0 - 7 * D)
    .bind(minute0 - 60)
    .execute(s.pool())
    .await
    .unwrap();
    let hour0 = (minute0 - 7 * D).div_euclid(H) * H;
    sqlx::query(&format!(
        "INSERT INTO usage_hour (tenant_id, bucket_start, {cols}) \
         SELECT 't' || lpad(t::text, 5, '0'), h, 300, 60, 0, 0, 30000, 300000, 240000, 300 \
         FROM generate_series(0, $1 - 1) AS t, generate_series($2, $3, 3600) AS h"
    ))
    .bind(tenants)
    .bind(hour0 - 400 * D)
    .bind(hour0 - H)
    .execute(s.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(s.pool()).await.unwrap();
    eprintln!("seeded in {:?}", t.elapsed());
    let sizes = |s: Store, label: &'static str| async move {
        let mut line = format!("sizes ({label}):");
        for t in [
            "usage_minute",
            "usage_hour",
            "usage_day",
            "metering_flushes",
        ] {
            // pg_total_relation_size of a partitioned table is 0: sum its partitions.
            let row = sqlx::query(&format!(
                "SELECT (SELECT CAST(COUNT(*) AS BIGINT) FROM {t}) AS n, \
                   CAST(COALESCE((SELECT SUM(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i WHERE i.inhparent = '{t}'::regclass), 0) \
                        + pg_total_relation_size('{t}') AS BIGINT) AS b"
            ))
            .fetch_one(s.pool())
            .await
            .unwrap();
            use sqlx::Row;
            let n: i64 = row.try_get("n").unwrap();
            let b: i64 = row.try_get("b").unwrap();
            line.push_str(&format!(" {t} {n} rows {:.1} MB;", b as f64 / 1e6));
        }
        eprintln!("{line}");
    };
    sizes(s.clone(), "seeded, before the pass").await;
    flush_times(s.clone(), "seeded history", 100).await;

    let reads = |s: Store, label: &'static str| async move {
        for (name, g, span) in [
            ("day by minute", Granularity::Minute, D),
            ("month by hour", Granularity::Hour, 30 * D),
            ("year by day", Granularity::Day, 365 * D),
        ] {
            let mut times = Vec::new();
            for i in 0..40 {
                let tenant = format!("t{:05}", i % tenants);
                let t = Instant::now();
                let rows = s
                    .usage_series(&tenant, g, now - span, now + 60)
                    .await
                    .unwrap();
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                assert!(!rows.is_empty());
            }
            eprintln!(
                "usage read {name} ({label}): p50 {:.2} ms, p95 {:.2} ms",
                pct(times.clone(), 0.5),
                pct(times, 0.95)
            );
        }
    };
    reads(s.clone(), "before the pass").await;

    let mut r = retention();
    r.usage_minute = Duration::from_secs(2 * D as u64);
    let t = Instant::now();
    let report = s.lifecycle_pass(&r, now_ms()).await.unwrap();
    eprintln!("first pass (7 days of minutes, 400 days of hours to days; minute retention 2 days) took {:?}", t.elapsed());
    for st in &report.steps {
        eprintln!(
            "  {:<20} {:>9} rows {:>8.2} s",
            st.step, st.rows, st.seconds
        );
    }
    let t = Instant::now();
    let again = s.lifecycle_pass(&r, now_ms()).await.unwrap();
    eprintln!(
        "next pass took {:?} ({} rows)",
        t.elapsed(),
        again.steps.iter().map(|x| x.rows).sum::<u64>()
    );
    sqlx::query("VACUUM FULL usage_minute_default")
        .execute(s.pool())
        .await
        .unwrap();
    sqlx::query("ANALYZE").execute(s.pool()).await.unwrap();
    sizes(s.clone(), "after the pass").await;
    reads(s.clone(), "after the pass").await;
    flush_times(s.clone(), "after the pass", 200).await;
    s.close().await;
    db.cleanup().await;
}
