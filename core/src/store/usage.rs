//! Usage counters per (tenant, minute), applied exactly once per metering flush,
//! and their hourly and daily rollups (see `lifecycle`).

use super::{to_i64, to_u64, Backend, Result, Store};
use crate::time::now_ms;
use crate::usage::{
    roll_up, split_key_row, Granularity, UsageCounts, UsageDelta, UsageRow, LATENCY_BUCKETS,
};
use sqlx::Row;
use std::collections::HashMap;

/// A rollup level's table and bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Minute,
    Hour,
    Day,
}

impl Level {
    pub(super) fn table(self) -> &'static str {
        match self {
            Level::Minute => "usage_minute",
            Level::Hour => "usage_hour",
            Level::Day => "usage_day",
        }
    }

    pub(super) fn seconds(self) -> i64 {
        match self {
            Level::Minute => 60,
            Level::Hour => 3_600,
            Level::Day => 86_400,
        }
    }
}

/// Where the rollups are: every minute before `hour` is in `usage_hour`, every hour
/// before `day` in `usage_day` (`i64::MIN`: nothing rolled up yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupMarks {
    pub hour: i64,
    pub day: i64,
}

/// PostgreSQL advisory lock key between metering flushes (shared) and rollup steps
/// (exclusive): a rollup step sees every flush that read the old watermark.
pub(super) const ROLLUP_LOCK: i64 = 0x7467_726f_6c6c_7570; // "tgrollup"

fn merge_into(
    merged: &mut Vec<UsageDelta>,
    index: &mut HashMap<(String, i64), usize>,
    tenant: &str,
    bucket: i64,
    counts: &UsageCounts,
) {
    match index.get(&(tenant.to_owned(), bucket)) {
        Some(&i) => merged[i].counts.merge(counts),
        None => {
            index.insert((tenant.to_owned(), bucket), merged.len());
            merged.push(UsageDelta {
                tenant_id: tenant.to_owned(),
                bucket_start: bucket,
                counts: counts.clone(),
            });
        }
    }
}

impl Store {
    /// Applies one metering flush exactly once per `(node_id, seq)`. Returns false
    /// when that flush had already been applied (or is at or below the node's
    /// pruned idempotency records: a node applies its flushes in order).
    ///
    /// A minute that is already rolled up (a late or replayed flush) is added to
    /// the hour (and day) rows as well, in the same transaction, so every level
    /// keeps the same totals.
    pub async fn apply_usage(
        &self,
        node_id: &str,
        seq: i64,
        deltas: &[UsageDelta],
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared($1)) AS l")
                .bind(ROLLUP_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let res = sqlx::query(
            "INSERT INTO metering_flushes (node_id, seq, applied_at) VALUES ($1, $2, $3) ON CONFLICT (node_id, seq) DO NOTHING",
        )
        .bind(node_id)
        .bind(seq)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT (SELECT done_through FROM rollup_state WHERE level = 'hour') AS h, \
                    (SELECT done_through FROM rollup_state WHERE level = 'day') AS d, \
                    (SELECT pruned_through FROM metering_nodes WHERE node_id = $1) AS p",
        )
        .bind(node_id)
        .fetch_one(&mut *tx)
        .await?;
        let pruned: Option<i64> = row.try_get("p")?;
        if pruned.is_some_and(|p| seq <= p) {
            tx.rollback().await?;
            return Ok(false);
        }
        let hour_mark: i64 = row.try_get::<Option<i64>, _>("h")?.unwrap_or(i64::MIN);
        let day_mark: i64 = row.try_get::<Option<i64>, _>("d")?.unwrap_or(i64::MIN);
        // One row per (tenant, bucket): a multi-row upsert may not touch a row twice.
        let mut minutes = Vec::with_capacity(deltas.len());
        let mut hours = Vec::new();
        let mut days = Vec::new();
        let (mut mi, mut hi, mut di) = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut keys: HashMap<(&str, &str, i64), UsageCounts> = HashMap::new();
        for d in deltas {
            if let Some((tenant, key)) = split_key_row(&d.tenant_id) {
                let h = d.bucket_start.div_euclid(3_600) * 3_600;
                keys.entry((tenant, key, h)).or_default().merge(&d.counts);
                continue;
            }
            merge_into(
                &mut minutes,
                &mut mi,
                &d.tenant_id,
                d.bucket_start,
                &d.counts,
            );
            if d.bucket_start < hour_mark {
                let h = d.bucket_start.div_euclid(3_600) * 3_600;
                merge_into(&mut hours, &mut hi, &d.tenant_id, h, &d.counts);
            }
            if d.bucket_start < day_mark {
                let day = d.bucket_start.div_euclid(86_400) * 86_400;
                merge_into(&mut days, &mut di, &d.tenant_id, day, &d.counts);
            }
        }
        for (level, rows) in [
            (Level::Minute, &minutes),
            (Level::Hour, &hours),
            (Level::Day, &days),
        ] {
            self.upsert_usage(&mut tx, level, rows).await?;
        }
        let keys: Vec<_> = keys.into_iter().collect();
        for chunk in keys.chunks(KEY_ROWS_PER_STATEMENT) {
            let mut q_sql = String::from(
                "INSERT INTO usage_key_hour (tenant_id, api_key_id, bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out) VALUES ",
            );
            let mut n = 0;
            for i in 0..chunk.len() {
                if i > 0 {
                    q_sql.push_str(", ");
                }
                let ps: Vec<String> = (0..9)
                    .map(|_| {
                        n += 1;
                        match self.backend {
                            Backend::Sqlite => "?".to_owned(),
                            Backend::Postgres => format!("${n}"),
                        }
                    })
                    .collect();
                q_sql.push_str(&format!("({})", ps.join(", ")));
            }
            q_sql.push_str(
                " ON CONFLICT (tenant_id, bucket_start, api_key_id) DO UPDATE SET \
                 requests = usage_key_hour.requests + excluded.requests, \
                 rate_limited = usage_key_hour.rate_limited + excluded.rate_limited, \
                 denied = usage_key_hour.denied + excluded.denied, \
                 upstream_errors = usage_key_hour.upstream_errors + excluded.upstream_errors, \
                 bytes_in = usage_key_hour.bytes_in + excluded.bytes_in, \
                 bytes_out = usage_key_hour.bytes_out + excluded.bytes_out",
            );
            let mut q = sqlx::query(&q_sql);
            for ((tenant, key, hour), c) in chunk {
                q = q
                    .bind(*tenant)
                    .bind(*key)
                    .bind(*hour)
                    .bind(to_i64(c.requests))
                    .bind(to_i64(c.rate_limited))
                    .bind(to_i64(c.denied))
                    .bind(to_i64(c.upstream_errors))
                    .bind(to_i64(c.bytes_in))
                    .bind(to_i64(c.bytes_out));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every key's usage per hour over `[from_s, to_s)`, ordered by (hour, tenant,
    /// key), at most `limit` rows after `after`, for the export.
    pub async fn usage_key_hours_all(
        &self,
        from_s: i64,
        to_s: i64,
        after: Option<(i64, String, String)>,
        limit: i64,
    ) -> Result<Vec<(String, String, UsageRow)>> {
        let (b, t, k) = after.unwrap_or((i64::MIN, String::new(), String::new()));
        let rows = sqlx::query(
            "SELECT tenant_id, api_key_id, bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out \
             FROM usage_key_hour WHERE bucket_start >= $1 AND bucket_start < $2 \
             AND (bucket_start > $3 OR (bucket_start = $3 AND (tenant_id > $4 OR (tenant_id = $4 AND api_key_id > $5)))) \
             ORDER BY bucket_start, tenant_id, api_key_id LIMIT $6",
        )
        .bind(from_s)
        .bind(to_s)
        .bind(b)
        .bind(t.as_str())
        .bind(k.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("tenant_id")?,
                    r.try_get("api_key_id")?,
                    UsageRow {
                        bucket_start: r.try_get("bucket_start")?,
                        counts: counts_of(r)?,
                    },
                ))
            })
            .collect()
    }

    /// A tenant's usage per API key over the hours `from_s <= hour < to_s` touches
    /// (per-key usage is kept per hour), ordered by key id.
    pub async fn usage_by_key(
        &self,
        tenant_id: &str,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<(String, UsageCounts)>> {
        let rows = sqlx::query(
            "SELECT api_key_id, CAST(SUM(requests) AS BIGINT) AS requests, \
               CAST(SUM(rate_limited) AS BIGINT) AS rate_limited, CAST(SUM(denied) AS BIGINT) AS denied, \
               CAST(SUM(upstream_errors) AS BIGINT) AS upstream_errors, \
               CAST(SUM(bytes_in) AS BIGINT) AS bytes_in, CAST(SUM(bytes_out) AS BIGINT) AS bytes_out \
             FROM usage_key_hour WHERE tenant_id = $1 AND bucket_start >= $2 AND bucket_start < $3 \
             GROUP BY api_key_id ORDER BY api_key_id",
        )
        .bind(tenant_id)
        .bind(from_s.div_euclid(3_600) * 3_600)
        .bind(to_s)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("api_key_id")?, counts_of(r)?)))
            .collect()
    }

    /// Adds `rows` (distinct buckets) to `level`'s rows.
    async fn upsert_usage(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        level: Level,
        rows: &[UsageDelta],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // Every chunk but the last has the same text: build it once.
        let full = USAGE_ROWS_PER_STATEMENT.min(rows.len());
        let full_sql = usage_upsert_sql(level.table(), full, self.backend);
        for chunk in rows.chunks(USAGE_ROWS_PER_STATEMENT) {
            let partial;
            let sql = if chunk.len() == full {
                full_sql.as_str()
            } else {
                partial = usage_upsert_sql(level.table(), chunk.len(), self.backend);
                partial.as_str()
            };
            let mut q = sqlx::query(sql);
            for d in chunk {
                q = q
                    .bind(d.tenant_id.as_str())
                    .bind(d.bucket_start)
                    .bind(to_i64(d.counts.requests))
                    .bind(to_i64(d.counts.rate_limited))
                    .bind(to_i64(d.counts.denied))
                    .bind(to_i64(d.counts.upstream_errors))
                    .bind(to_i64(d.counts.bytes_in))
                    .bind(to_i64(d.counts.bytes_out))
                    .bind(to_i64(d.counts.latency_sum_us));
                for b in d.counts.latency_buckets {
                    q = q.bind(to_i64(b));
                }
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Minute rows of a tenant with `from_s <= bucket_start < to_s` (unix seconds).
    pub async fn usage_minutes(
        &self,
        tenant_id: &str,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<UsageRow>> {
        let mut conn = self.pool.acquire().await?;
        read_level(&mut conn, Level::Minute, tenant_id, from_s, to_s).await
    }

    /// The rollup watermarks.
    pub async fn rollup_marks(&self) -> Result<RollupMarks> {
        let mut conn = self.pool.acquire().await?;
        read_marks(&mut conn).await
    }

    /// A tenant's usage per `g` bucket over `from_s <= t < to_s` (aligned to `g`),
    /// only the non-empty buckets, from the finest level that still holds each
    /// part of the range: day rows before the day watermark, hour rows before the
    /// hour watermark, minute rows after it. Read in one snapshot, so a rollup
    /// committing meanwhile is either wholly seen or not at all.
    pub async fn usage_series(
        &self,
        tenant_id: &str,
        g: Granularity,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<UsageRow>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let marks = read_marks(&mut tx).await?;
        let t = tenant_id;
        let rows = match g {
            Granularity::Minute => read_level(&mut tx, Level::Minute, t, from_s, to_s).await?,
            Granularity::Hour => {
                let mut rows =
                    read_level(&mut tx, Level::Hour, t, from_s, to_s.min(marks.hour)).await?;
                let minutes =
                    read_level(&mut tx, Level::Minute, t, from_s.max(marks.hour), to_s).await?;
                rows.extend(roll_up(&minutes, g));
                rows
            }
            Granularity::Day => {
                let mut rows =
                    read_level(&mut tx, Level::Day, t, from_s, to_s.min(marks.day)).await?;
                rows.extend(
                    read_level(
                        &mut tx,
                        Level::Hour,
                        t,
                        from_s.max(marks.day),
                        to_s.min(marks.hour),
                    )
                    .await?,
                );
                rows.extend(
                    read_level(&mut tx, Level::Minute, t, from_s.max(marks.hour), to_s).await?,
                );
                roll_up(&rows, g)
            }
        };
        tx.commit().await?;
        Ok(rows)
    }

    /// Every tenant's usage per hour over `[from_s, to_s)`, ordered by (hour,
    /// tenant), at most `limit` rows after `after` (an `(hour, tenant)` key), for
    /// the export. Hours before the hour watermark come from `usage_hour`, later
    /// ones are summed from the minute rows.
    pub async fn usage_hours_all(
        &self,
        from_s: i64,
        to_s: i64,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<(String, UsageRow)>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let marks = read_marks(&mut tx).await?;
        let (after_b, after_t) = after.unwrap_or((i64::MIN, String::new()));
        let mut out = Vec::new();
        let rolled_end = to_s.min(marks.hour);
        if from_s < rolled_end && after_b < rolled_end {
            let sql = format!(
                "SELECT tenant_id, {USAGE_COLUMNS} FROM usage_hour \
                 WHERE bucket_start >= $1 AND bucket_start < $2 \
                 AND (bucket_start > $3 OR (bucket_start = $3 AND tenant_id > $4)) \
                 ORDER BY bucket_start, tenant_id LIMIT $5"
            );
            let rows = sqlx::query(&sql)
                .bind(from_s)
                .bind(rolled_end)
                .bind(after_b)
                .bind(after_t.as_str())
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                out.push((r.try_get::<String, _>("tenant_id")?, usage_row(r)?));
            }
        }
        let left = limit - i64::try_from(out.len()).unwrap_or(limit);
        let live_from = from_s.max(marks.hour);
        if left > 0 && live_from < to_s {
            let sums: Vec<String> = usage_value_columns()
                .iter()
                .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
                .collect();
            let (after_b, after_t) = match out.last() {
                Some((t, r)) => (r.bucket_start, t.clone()),
                None => (after_b, after_t),
            };
            let sql = format!(
                "SELECT tenant_id, bucket_start, {} FROM ( \
                   SELECT tenant_id, (bucket_start / 3600) * 3600 AS bucket_start, {} \
                   FROM usage_minute WHERE bucket_start >= $1 AND bucket_start < $2) AS m \
                 WHERE bucket_start > $3 OR (bucket_start = $3 AND tenant_id > $4) \
                 GROUP BY tenant_id, bucket_start ORDER BY bucket_start, tenant_id LIMIT $5",
                sums.join(", "),
                usage_value_columns().join(", ")
            );
            let rows = sqlx::query(&sql)
                .bind(live_from)
                .bind(to_s)
                .bind(after_b)
                .bind(after_t.as_str())
                .bind(left)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                out.push((r.try_get::<String, _>("tenant_id")?, usage_row(r)?));
            }
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The value columns of a usage row (everything but tenant and bucket).
pub(super) fn usage_value_columns() -> Vec<String> {
    let mut cols: Vec<String> = [
        "requests",
        "rate_limited",
        "denied",
        "upstream_errors",
        "bytes_in",
        "bytes_out",
        "latency_sum_us",
    ]
    .iter()
    .map(|c| (*c).to_owned())
    .collect();
    cols.extend((0..LATENCY_BUCKETS).map(|i| format!("lat_b{i}")));
    cols
}

const USAGE_COLUMNS: &str = "bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out, latency_sum_us, \
    lat_b0, lat_b1, lat_b2, lat_b3, lat_b4, lat_b5, lat_b6, lat_b7, lat_b8, lat_b9, lat_b10, lat_b11, lat_b12, lat_b13, lat_b14, lat_b15";

pub(super) async fn read_marks(conn: &mut sqlx::AnyConnection) -> Result<RollupMarks> {
    let row = sqlx::query(
        "SELECT (SELECT done_through FROM rollup_state WHERE level = 'hour') AS h, \
                (SELECT done_through FROM rollup_state WHERE level = 'day') AS d",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(RollupMarks {
        hour: row.try_get::<Option<i64>, _>("h")?.unwrap_or(i64::MIN),
        day: row.try_get::<Option<i64>, _>("d")?.unwrap_or(i64::MIN),
    })
}

/// A tenant's rows of `level` with `from_s <= bucket_start < to_s`, ordered by time.
async fn read_level(
    conn: &mut sqlx::AnyConnection,
    level: Level,
    tenant_id: &str,
    from_s: i64,
    to_s: i64,
) -> Result<Vec<UsageRow>> {
    if from_s >= to_s {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {USAGE_COLUMNS} FROM {} WHERE tenant_id = $1 AND bucket_start >= $2 AND bucket_start < $3 ORDER BY bucket_start",
        level.table()
    );
    let rows = sqlx::query(&sql)
        .bind(tenant_id)
        .bind(from_s)
        .bind(to_s)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(usage_row).collect()
}

fn usage_row(r: &sqlx::any::AnyRow) -> Result<UsageRow> {
    let mut latency_buckets = [0u64; LATENCY_BUCKETS];
    for (i, b) in latency_buckets.iter_mut().enumerate() {
        *b = to_u64(r.try_get(format!("lat_b{i}").as_str())?);
    }
    Ok(UsageRow {
        bucket_start: r.try_get("bucket_start")?,
        counts: UsageCounts {
            latency_sum_us: to_u64(r.try_get("latency_sum_us")?),
            latency_buckets,
            ..counts_of(r)?
        },
    })
}

/// The counters every usage row has (per-key rows have no latency columns).
fn counts_of(r: &sqlx::any::AnyRow) -> Result<UsageCounts> {
    Ok(UsageCounts {
        requests: to_u64(r.try_get("requests")?),
        rate_limited: to_u64(r.try_get("rate_limited")?),
        denied: to_u64(r.try_get("denied")?),
        upstream_errors: to_u64(r.try_get("upstream_errors")?),
        bytes_in: to_u64(r.try_get("bytes_in")?),
        bytes_out: to_u64(r.try_get("bytes_out")?),
        ..Default::default()
    })
}

/// Rows per multi-row usage upsert: one statement per row costs a round trip each
/// (see `report_flush_of_ten_thousand_rows`), and 200 × 33 parameters stays far
/// below SQLite's (32 766) and PostgreSQL's (65 535) limits.
const USAGE_ROWS_PER_STATEMENT: usize = 200;
/// Per-key rows per statement (9 parameters each).
const KEY_ROWS_PER_STATEMENT: usize = 500;

/// `INSERT INTO usage_minute … VALUES (…), (…) … ON CONFLICT … DO UPDATE` adding the
/// deltas of `rows` rows. SQLite gets anonymous `?` placeholders: with numbered ones
/// binding looks every name up by a linear scan (`sqlite3_bind_parameter_name`),
/// quadratic in the statement's parameters. PostgreSQL needs numbered ones.
fn usage_upsert_sql(table: &str, rows: usize, backend: Backend) -> String {
    let lat_cols: Vec<String> = (0..LATENCY_BUCKETS).map(|i| format!("lat_b{i}")).collect();
    let per_row = 9 + LATENCY_BUCKETS;
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=per_row)
                .map(|c| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", r * per_row + c),
                })
                .collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    let updates: Vec<String> = lat_cols
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} (tenant_id, bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out, latency_sum_us, {}) \
         VALUES {} \
         ON CONFLICT (tenant_id, bucket_start) DO UPDATE SET \
         requests = {table}.requests + excluded.requests, \
         rate_limited = {table}.rate_limited + excluded.rate_limited, \
         denied = {table}.denied + excluded.denied, \
         upstream_errors = {table}.upstream_errors + excluded.upstream_errors, \
         bytes_in = {table}.bytes_in + excluded.bytes_in, \
         bytes_out = {table}.bytes_out + excluded.bytes_out, \
         latency_sum_us = {table}.latency_sum_us + excluded.latency_sum_us, {}",
        lat_cols.join(", "),
        values.join(", "),
        updates.join(", ")
    )
}
