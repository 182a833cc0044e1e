//! Usage rollups: per tenant per minute counters and a fixed latency histogram.

use serde::{Deserialize, Serialize};

/// Number of latency histogram buckets.
pub const LATENCY_BUCKETS: usize = 16;

/// Upper bounds (inclusive, microseconds) of the buckets; the last is unbounded.
pub const LATENCY_BOUNDS_US: [u64; LATENCY_BUCKETS - 1] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
    1_024_000, 2_048_000, 4_096_000,
];

/// Index of the bucket a latency falls in.
pub fn latency_bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&b| b < us)
}

/// The counters of one tenant over one bucket (a minute, hour or day): what a
/// metering flush adds and what a stored row holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageCounts {
    pub requests: u64,
    pub rate_limited: u64,
    pub denied: u64,
    pub upstream_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_sum_us: u64,
    pub latency_buckets: [u64; LATENCY_BUCKETS],
}

impl UsageCounts {
    /// Adds `o`'s counts to these.
    pub fn merge(&mut self, o: &UsageCounts) {
        self.requests = self.requests.saturating_add(o.requests);
        self.rate_limited = self.rate_limited.saturating_add(o.rate_limited);
        self.denied = self.denied.saturating_add(o.denied);
        self.upstream_errors = self.upstream_errors.saturating_add(o.upstream_errors);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.latency_sum_us = self.latency_sum_us.saturating_add(o.latency_sum_us);
        for (a, b) in self.latency_buckets.iter_mut().zip(o.latency_buckets) {
            *a = a.saturating_add(b);
        }
    }

    /// Estimated percentile `q` in (0, 1] in milliseconds: the upper bound of the
    /// bucket holding that rank (None when nothing was timed).
    pub fn latency_percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.latency_buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_US[LATENCY_BUCKETS - 2] * 2);
                return Some(bound as f64 / 1000.0);
            }
        }
        None
    }
}

/// What one flush adds to one (tenant, minute).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    pub tenant_id: String,
    /// Unix seconds, a multiple of 60.
    pub bucket_start: i64,
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// Separates tenant and API key in the `tenant_id` of a per-key metering row
/// (neither may contain it): such rows count a key's share of its tenant's usage
/// and are stored per hour apart from the tenant's own rows.
pub const KEY_ROW_SEPARATOR: char = '\u{1f}';

/// The `tenant_id` of a per-key metering row.
pub fn key_row_id(tenant_id: &str, api_key_id: &str) -> String {
    let mut s = String::with_capacity(tenant_id.len() + 1 + api_key_id.len());
    s.push_str(tenant_id);
    s.push(KEY_ROW_SEPARATOR);
    s.push_str(api_key_id);
    s
}

/// `(tenant, key)` of a per-key metering row's id; None for a tenant's own row.
pub fn split_key_row(id: &str) -> Option<(&str, &str)> {
    id.split_once(KEY_ROW_SEPARATOR)
}

/// One stored bucket of a tenant (or an aggregate of several).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// Unix seconds.
    pub bucket_start: i64,
    pub counts: UsageCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }
}

/// Rolls minute rows (sorted by time) up to `g`, in UTC.
pub fn roll_up(rows: &[UsageRow], g: Granularity) -> Vec<UsageRow> {
    let step = g.seconds();
    let mut out: Vec<UsageRow> = Vec::new();
    for r in rows {
        let start = r.bucket_start.div_euclid(step) * step;
        match out.last_mut() {
            Some(last) if last.bucket_start == start => last.counts.merge(&r.counts),
            _ => {
                let mut n = r.clone();
                n.bucket_start = start;
                out.push(n);
            }
        }
    }
    out
}

/// JSON shape of one series point and of the totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsagePoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<String>,
    pub requests: u64,
    pub rate_limited: u64,
    pub denied: u64,
    pub upstream_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl UsagePoint {
    pub fn from_row(row: &UsageRow, with_start: bool) -> Self {
        let r = &row.counts;
        let timed: u64 = r.latency_buckets.iter().sum();
        let latency_ms = match (
            r.latency_percentile_ms(0.50),
            r.latency_percentile_ms(0.95),
            r.latency_percentile_ms(0.99),
        ) {
            (Some(p50), Some(p95), Some(p99)) if timed > 0 => Some(LatencySummary {
                p50,
                p95,
                p99,
                mean: r.latency_sum_us as f64 / timed as f64 / 1000.0,
            }),
            _ => None,
        };
        UsagePoint {
            bucket_start: with_start.then(|| {
                crate::time::rfc3339(crate::time::from_ms(row.bucket_start.saturating_mul(1000)))
            }),
            requests: r.requests,
            rate_limited: r.rate_limited,
            denied: r.denied,
            upstream_errors: r.upstream_errors,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            latency_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(250), 0);
        assert_eq!(latency_bucket(251), 1);
        assert_eq!(latency_bucket(10_000_000), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn roll_up_by_hour() {
        let rows: Vec<UsageRow> = [0i64, 60, 3_600, 3_660]
            .iter()
            .map(|s| UsageRow {
                bucket_start: *s,
                counts: UsageCounts {
                    requests: 1,
                    ..Default::default()
                },
            })
            .collect();
        let h = roll_up(&rows, Granularity::Hour);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].counts.requests, 2);
        assert_eq!(h[1].bucket_start, 3_600);
    }

    #[test]
    fn key_rows() {
        let id = key_row_id("acme", "k-1");
        assert_eq!(split_key_row(&id), Some(("acme", "k-1")));
        assert_eq!(split_key_row("acme"), None);
    }

    #[test]
    fn percentiles() {
        let mut r = UsageCounts::default();
        r.latency_buckets[0] = 90;
        r.latency_buckets[5] = 10;
        assert_eq!(r.latency_percentile_ms(0.5), Some(0.25));
        assert_eq!(r.latency_percentile_ms(0.99), Some(8.0));
    }
}
