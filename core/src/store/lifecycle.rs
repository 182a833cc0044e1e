//! Data lifecycle: usage rollups (minute → hour → day) and the retention of every
//! append-only table, run as passes by one elected process of the fleet.
//!
//! Election: on PostgreSQL every step's transaction first takes
//! `pg_try_advisory_xact_lock(JOB_LOCK)`; a process that does not get it skips the
//! pass (another one is running it). SQLite has one process.
//!
//! Exactness: a rollup step moves a level's watermark over closed buckets in the
//! same transaction as it adds them to the level's rows, under a lock that metering
//! flushes take shared (PostgreSQL advisory lock; SQLite's single writer). A flush
//! for a bucket behind a watermark adds to that level too (`apply_usage`), so every
//! level holds the same totals for the buckets it covers.

use super::usage::{read_marks, usage_value_columns, Level, ROLLUP_LOCK};
use super::{to_u64, Backend, Result, Store};
use crate::config::RetentionSettings;
use sqlx::Row;
use std::time::Instant;

/// PostgreSQL advisory lock key of the lifecycle job ("tglifecy").
pub const JOB_LOCK: i64 = 0x7467_6c69_6665_6379;
/// An hour is rolled up once it ended this long ago (late flushes are still
/// exact, this only saves them the second write).
const ROLLUP_GRACE_S: i64 = 120;
/// Rollup steps one pass runs at most; the next pass goes on.
const MAX_STEPS_PER_PASS: usize = 2_000;
/// PostgreSQL: name prefix of `usage_minute`'s daily partitions (then the day's
/// start, unix seconds).
pub const MINUTE_PARTITION_PREFIX: &str = "usage_minute_p";
/// Days of partitions created ahead of today.
const PARTITIONS_AHEAD: i64 = 2;
/// Settings key: the highest change id pruned from the feed.
pub(super) const CHANGES_PRUNED_KEY: &str = "changes_pruned_through";

/// What one step of a pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// `rollup_hour`, `rollup_day`, `minute_partitions` (PostgreSQL: rows in the
    /// daily partitions dropped, estimated), `prune_usage_minute`, `prune_usage_hour`,
    /// `prune_flush_records`, `prune_changes`, `prune_audit`, `prune_scaling`
    /// (scaling events past their retention and signals of silent proxies).
    pub step: &'static str,
    /// Rows written (rollups) or deleted (pruning).
    pub rows: u64,
    pub seconds: f64,
}

/// What one pass did; `elected` is false when another process holds the job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LifecycleReport {
    pub elected: bool,
    pub steps: Vec<StepReport>,
}

enum Step {
    NotElected,
    /// Rows touched, and whether the level is caught up.
    Done(u64, bool),
}

fn floor(v: i64, w: i64) -> i64 {
    v.div_euclid(w) * w
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens a job transaction: None when another process holds the job.
    async fn job_tx(&self) -> Result<Option<sqlx::Transaction<'static, sqlx::Any>>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            let ok: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS ok")
                .bind(JOB_LOCK)
                .fetch_one(&mut *tx)
                .await?
                .try_get("ok")?;
            if !ok {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        Ok(Some(tx))
    }

    /// Waits for in-flight metering flushes and holds new ones until `tx` ends.
    async fn hold_flushes(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        level: &str,
    ) -> Result<()> {
        match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(ROLLUP_LOCK)
                    .execute(&mut **tx)
                    .await?;
            }
            Backend::Sqlite => {
                // A write first: the transaction holds SQLite's write lock from here.
                sqlx::query("UPDATE rollup_state SET done_through = done_through WHERE level = $1")
                    .bind(level)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// One rollup and retention pass at `now_ms`.
    pub async fn lifecycle_pass(
        &self,
        r: &RetentionSettings,
        now_ms: i64,
    ) -> Result<LifecycleReport> {
        let mut report = LifecycleReport {
            elected: true,
            steps: Vec::new(),
        };
        let now_s = now_ms.div_euclid(1000);
        for level in [Level::Hour, Level::Day] {
            let started = Instant::now();
            let mut rows = 0;
            for _ in 0..MAX_STEPS_PER_PASS {
                match self.rollup_step(level, now_s).await? {
                    Step::NotElected => {
                        report.elected = false;
                        return Ok(report);
                    }
                    Step::Done(n, caught_up) => {
                        rows += n;
                        if caught_up {
                            break;
                        }
                    }
                }
            }
            report.steps.push(StepReport {
                step: if level == Level::Hour {
                    "rollup_hour"
                } else {
                    "rollup_day"
                },
                rows,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        macro_rules! prune {
            ($name:literal, $fut:expr) => {{
                let started = Instant::now();
                let Some(rows) = $fut.await? else {
                    report.elected = false;
                    return Ok(report);
                };
                report.steps.push(StepReport {
                    step: $name,
                    rows,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }};
        }
        if self.backend == Backend::Postgres {
            prune!(
                "minute_partitions",
                self.manage_minute_partitions(now_s, now_ms - millis(r.usage_minute))
            );
        }
        prune!(
            "prune_usage_minute",
            self.prune_usage(Level::Minute, now_ms - millis(r.usage_minute))
        );
        prune!(
            "prune_usage_hour",
            self.prune_usage(Level::Hour, now_ms - millis(r.usage_hour))
        );
        prune!(
            "prune_flush_records",
            self.prune_flush_records(now_ms, millis(r.flush_records), secs(r.usage_hour))
        );
        prune!(
            "prune_changes",
            self.prune_changes(now_ms - millis(r.changes))
        );
        prune!("prune_audit", self.prune_audit(now_ms - millis(r.audit)));
        prune!(
            "prune_scaling",
            self.prune_scaling(
                now_ms - millis(r.scaling_events),
                now_ms - super::SIGNALS_KEEP_MS
            )
        );
        Ok(report)
    }

    /// Rolls `level`'s source up over the next closed bucket(s) with data.
    async fn rollup_step(&self, level: Level, now_s: i64) -> Result<Step> {
        let (source, name) = match level {
            Level::Day => (Level::Hour, "day"),
            _ => (Level::Minute, "hour"),
        };
        let w = level.seconds();
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(Step::NotElected);
        };
        self.hold_flushes(&mut tx, name).await?;
        let marks = read_marks(&mut tx).await?;
        let (mark, target) = match level {
            Level::Day => (marks.day, floor(marks.hour, w)),
            _ => (marks.hour, floor(now_s - ROLLUP_GRACE_S, w)),
        };
        if level == Level::Day && marks.hour == i64::MIN {
            tx.commit().await?;
            return Ok(Step::Done(0, true));
        }
        let from = mark;
        // The next source bucket with data, so empty stretches cost one step.
        let next: Option<i64> = sqlx::query(&format!(
            "SELECT MIN(bucket_start) AS b FROM {} WHERE bucket_start >= $1 AND bucket_start < $2",
            source.table()
        ))
        .bind(from)
        .bind(target)
        .fetch_one(&mut *tx)
        .await?
        .try_get("b")?;
        let (end, rows) = match next {
            None => (target.max(from), 0),
            Some(b) => {
                let end = (floor(b, w) + w).min(target);
                let cols = usage_value_columns();
                let sums: Vec<String> = cols
                    .iter()
                    .map(|c| format!("CAST(SUM({c}) AS BIGINT)"))
                    .collect();
                let updates: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{c} = {t}.{c} + excluded.{c}", t = level.table()))
                    .collect();
                let sql = format!(
                    "INSERT INTO {t} (tenant_id, bucket_start, {cols}) \
                     SELECT tenant_id, (bucket_start / {w}) * {w}, {sums} FROM {src} \
                     WHERE bucket_start >= $1 AND bucket_start < $2 \
                     GROUP BY tenant_id, (bucket_start / {w}) * {w} \
                     ON CONFLICT (tenant_id, bucket_start) DO UPDATE SET {updates}",
                    t = level.table(),
                    cols = cols.join(", "),
                    sums = sums.join(", "),
                    src = source.table(),
                    updates = updates.join(", ")
                );
                let res = sqlx::query(&sql)
                    .bind(from)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
                (end, res.rows_affected())
            }
        };
        if end != mark {
            sqlx::query(
                "INSERT INTO rollup_state (level, done_through) VALUES ($1, $2) \
                 ON CONFLICT (level) DO UPDATE SET done_through = excluded.done_through",
            )
            .bind(name)
            .bind(end)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Step::Done(rows, end >= target))
    }

    /// PostgreSQL: creates `usage_minute`'s daily partitions for today and the next
    /// [`PARTITIONS_AHEAD`] days, and drops the days that are rolled up and older
    /// than `cutoff_ms`. Returns the (estimated) rows dropped.
    async fn manage_minute_partitions(&self, now_s: i64, cutoff_ms: i64) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        let existing: Vec<(i64, f64)> = sqlx::query(
            "SELECT CAST(c.relname AS TEXT) AS name, CAST(c.reltuples AS DOUBLE PRECISION) AS rows \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'usage_minute'::regclass",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .filter_map(|r| {
            let name: String = r.try_get("name").ok()?;
            let day = name.strip_prefix(MINUTE_PARTITION_PREFIX)?.parse().ok()?;
            Some((day, r.try_get::<f64, _>("rows").ok()?.max(0.0)))
        })
        .collect();
        let today = floor(now_s, 86_400);
        for d in 0..=PARTITIONS_AHEAD {
            let day = today + d * 86_400;
            if existing.iter().any(|(e, _)| *e == day) {
                continue;
            }
            // Its own statement on the pool: should the default partition already
            // hold rows of that day (the job was down for days), creating it fails
            // and that day stays in the default partition.
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {MINUTE_PARTITION_PREFIX}{day} PARTITION OF usage_minute \
                 FOR VALUES FROM ({day}) TO ({end})",
                end = day + 86_400
            );
            if let Err(e) = sqlx::query(&sql).execute(&self.pool).await {
                tracing::info!(day, error = %e, "usage_minute partition not created; that day stays in the default partition");
            }
        }
        let marks = read_marks(&mut tx).await?;
        let cutoff = marks.hour.min(cutoff_ms.div_euclid(1000));
        let mut dropped = 0.0;
        for (day, rows) in existing {
            if day + 86_400 <= cutoff {
                sqlx::query(&format!(
                    "DROP TABLE IF EXISTS {MINUTE_PARTITION_PREFIX}{day}"
                ))
                .execute(&mut *tx)
                .await?;
                dropped += rows;
            }
        }
        tx.commit().await?;
        Ok(Some(dropped as u64))
    }

    /// Deletes `level` rows that are rolled up and older than `cutoff_ms`.
    async fn prune_usage(&self, level: Level, cutoff_ms: i64) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        // Flushes wait meanwhile: a late flush upserting rows this deletes could
        // otherwise deadlock with it.
        self.hold_flushes(&mut tx, "prune").await?;
        let marks = read_marks(&mut tx).await?;
        let rolled = if level == Level::Minute {
            marks.hour
        } else {
            marks.day
        };
        let cutoff = rolled.min(cutoff_ms.div_euclid(1000));
        let res = sqlx::query(&format!(
            "DELETE FROM {} WHERE bucket_start < $1",
            level.table()
        ))
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let mut rows = res.rows_affected();
        if level == Level::Hour {
            // Per-key hours are kept as long as the tenant's (they have no day rows).
            rows += sqlx::query("DELETE FROM usage_key_hour WHERE bucket_start < $1")
                .bind(cutoff_ms.div_euclid(1000))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(Some(rows))
    }

    /// Deletes flush idempotency records applied more than `keep_ms` ago, leaving
    /// each node's highest pruned sequence in `metering_nodes` (see `apply_usage`);
    /// those marks are kept `marks_s`.
    async fn prune_flush_records(
        &self,
        now_ms: i64,
        keep_ms: i64,
        marks_s: i64,
    ) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        let cut = now_ms.saturating_sub(keep_ms);
        sqlx::query(
            "INSERT INTO metering_nodes (node_id, pruned_through, updated_at) \
             SELECT node_id, MAX(seq), $2 FROM metering_flushes WHERE applied_at < $1 GROUP BY node_id \
             ON CONFLICT (node_id) DO UPDATE SET \
               pruned_through = CASE WHEN excluded.pruned_through > metering_nodes.pruned_through \
                 THEN excluded.pruned_through ELSE metering_nodes.pruned_through END, \
               updated_at = excluded.updated_at",
        )
        .bind(cut)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let res = sqlx::query("DELETE FROM metering_flushes WHERE applied_at < $1")
            .bind(cut)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM metering_nodes WHERE updated_at < $1")
            .bind(now_ms.saturating_sub(marks_s.saturating_mul(1000)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(res.rows_affected()))
    }

    /// Deletes changes recorded before `cutoff_ms` (never the newest one, so ids
    /// keep growing), and records the highest id deleted: a follower behind it
    /// reloads everything instead of reading the feed.
    async fn prune_changes(&self, cutoff_ms: i64) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        let upto: Option<i64> = sqlx::query(
            "SELECT MAX(id) AS id FROM changes WHERE created_at < $1 \
             AND id < (SELECT MAX(id) FROM changes)",
        )
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let Some(upto) = upto else {
            tx.commit().await?;
            return Ok(Some(0));
        };
        let res = sqlx::query("DELETE FROM changes WHERE id <= $1")
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(CHANGES_PRUNED_KEY)
        .bind(upto.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(res.rows_affected()))
    }

    async fn prune_audit(&self, cutoff_ms: i64) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        let res = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(res.rows_affected()))
    }

    async fn prune_scaling(
        &self,
        events_cutoff_ms: i64,
        signals_cutoff_ms: i64,
    ) -> Result<Option<u64>> {
        let Some(mut tx) = self.job_tx().await? else {
            return Ok(None);
        };
        let events = sqlx::query("DELETE FROM scaling_events WHERE at < $1")
            .bind(events_cutoff_ms)
            .execute(&mut *tx)
            .await?;
        let signals = sqlx::query("DELETE FROM route_signals WHERE at < $1")
            .bind(signals_cutoff_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(events.rows_affected() + signals.rows_affected()))
    }

    /// The highest change id pruned from the feed (0: none).
    pub async fn changes_pruned_through(&self) -> Result<i64> {
        Ok(self
            .get_setting(CHANGES_PRUNED_KEY)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Row counts of the tables the lifecycle bounds (for metrics and tests).
    pub async fn lifecycle_row_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for t in [
            "usage_minute",
            "usage_hour",
            "usage_day",
            "usage_key_hour",
            "metering_flushes",
            "changes",
            "audit_log",
            "scaling_events",
            "route_signals",
        ] {
            let n: i64 = sqlx::query(&format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {t}"))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            out.push((t, to_u64(n)));
        }
        Ok(out)
    }
}
