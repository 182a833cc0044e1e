//! Usage counters per (tenant, minute), applied exactly once per metering flush.

use super::{to_i64, to_u64, Backend, Result, Store};
use crate::time::now_ms;
use crate::usage::{UsageCounts, UsageDelta, UsageRow, LATENCY_BUCKETS};
use sqlx::Row;
use std::collections::HashMap;

impl Store {
    /// Applies one metering flush exactly once per `(node_id, seq)`. Returns false
    /// when that flush had already been applied.
    pub async fn apply_usage(
        &self,
        node_id: &str,
        seq: i64,
        deltas: &[UsageDelta],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
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
        // One row per (tenant, minute): a multi-row upsert may not touch a row twice.
        let mut merged: Vec<UsageDelta> = Vec::with_capacity(deltas.len());
        let mut index: HashMap<(&str, i64), usize> = HashMap::with_capacity(deltas.len());
        for d in deltas {
            match index.get(&(d.tenant_id.as_str(), d.bucket_start)) {
                Some(&i) => merged[i].counts.merge(&d.counts),
                None => {
                    index.insert((d.tenant_id.as_str(), d.bucket_start), merged.len());
                    merged.push(d.clone());
                }
            }
        }
        // Every chunk but the last has the same text: build it once.
        let full_sql = usage_upsert_sql(USAGE_ROWS_PER_STATEMENT.min(merged.len()), self.backend);
        for chunk in merged.chunks(USAGE_ROWS_PER_STATEMENT) {
            let partial;
            let sql = if chunk.len() == USAGE_ROWS_PER_STATEMENT.min(merged.len()) {
                full_sql.as_str()
            } else {
                partial = usage_upsert_sql(chunk.len(), self.backend);
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
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Minute rows of a tenant with `from_s <= bucket_start < to_s` (unix seconds).
    pub async fn usage_minutes(
        &self,
        tenant_id: &str,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<UsageRow>> {
        let lat_cols: Vec<String> = (0..LATENCY_BUCKETS).map(|i| format!("lat_b{i}")).collect();
        let sql = format!(
            "SELECT bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out, latency_sum_us, {} \
             FROM usage_minute WHERE tenant_id = $1 AND bucket_start >= $2 AND bucket_start < $3 ORDER BY bucket_start",
            lat_cols.join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(from_s)
            .bind(to_s)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut latency_buckets = [0u64; LATENCY_BUCKETS];
            for (i, c) in lat_cols.iter().enumerate() {
                latency_buckets[i] = to_u64(r.try_get(c.as_str())?);
            }
            out.push(UsageRow {
                bucket_start: r.try_get("bucket_start")?,
                counts: UsageCounts {
                    requests: to_u64(r.try_get("requests")?),
                    rate_limited: to_u64(r.try_get("rate_limited")?),
                    denied: to_u64(r.try_get("denied")?),
                    upstream_errors: to_u64(r.try_get("upstream_errors")?),
                    bytes_in: to_u64(r.try_get("bytes_in")?),
                    bytes_out: to_u64(r.try_get("bytes_out")?),
                    latency_sum_us: to_u64(r.try_get("latency_sum_us")?),
                    latency_buckets,
                },
            });
        }
        Ok(out)
    }
}

/// Rows per multi-row usage upsert: one statement per row costs a round trip each
/// (see `report_flush_of_ten_thousand_rows`), and 200 × 33 parameters stays far
/// below SQLite's (32 766) and PostgreSQL's (65 535) limits.
const USAGE_ROWS_PER_STATEMENT: usize = 200;

/// `INSERT INTO usage_minute … VALUES (…), (…) … ON CONFLICT … DO UPDATE` adding the
/// deltas of `rows` rows. SQLite gets anonymous `?` placeholders: with numbered ones
/// binding looks every name up by a linear scan (`sqlite3_bind_parameter_name`),
/// quadratic in the statement's parameters. PostgreSQL needs numbered ones.
fn usage_upsert_sql(rows: usize, backend: Backend) -> String {
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
        .map(|c| format!("{c} = usage_minute.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO usage_minute (tenant_id, bucket_start, requests, rate_limited, denied, upstream_errors, bytes_in, bytes_out, latency_sum_us, {}) \
         VALUES {} \
         ON CONFLICT (tenant_id, bucket_start) DO UPDATE SET \
         requests = usage_minute.requests + excluded.requests, \
         rate_limited = usage_minute.rate_limited + excluded.rate_limited, \
         denied = usage_minute.denied + excluded.denied, \
         upstream_errors = usage_minute.upstream_errors + excluded.upstream_errors, \
         bytes_in = usage_minute.bytes_in + excluded.bytes_in, \
         bytes_out = usage_minute.bytes_out + excluded.bytes_out, \
         latency_sum_us = usage_minute.latency_sum_us + excluded.latency_sum_us, {}",
        lat_cols.join(", "),
        values.join(", "),
        updates.join(", ")
    )
}
