//! Stage 8: metering. `record` runs in `logging` and never awaits: it adds to
//! per-tenant, per-minute counters in sharded maps. A flusher drains them every
//! `flush_interval_ms` into one batch with a (node id, sequence) pair; the store
//! applies each pair once, so a retried flush never double counts. A batch that
//! fails stays queued (in order) and is retried with backoff.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use tenantgate_core::store::Store;
use tenantgate_core::usage::{latency_bucket, UsageDelta, LATENCY_BUCKETS};

/// What one request contributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds when the request started.
    pub at_unix_s: i64,
    pub rate_limited: bool,
    pub denied: bool,
    pub upstream_error: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us: u64,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    rate_limited: u64,
    denied: u64,
    upstream_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency_sum_us: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Counters {
    fn add(&mut self, s: &Sample) {
        self.requests += 1;
        self.rate_limited += u64::from(s.rate_limited);
        self.denied += u64::from(s.denied);
        self.upstream_errors += u64::from(s.upstream_error);
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
        self.latency_sum_us += s.latency_us;
        self.latency[latency_bucket(s.latency_us)] += 1;
    }
}

const SHARDS: usize = 32;
/// Past this many queued rows, the oldest batches are dropped (and counted).
const MAX_QUEUED_ROWS: usize = 1_000_000;

type Shard = HashMap<String, Vec<(i64, Counters)>>;

pub struct Meter {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    node_id: String,
    next_seq: AtomicI64,
    queue: Mutex<VecDeque<(i64, Vec<UsageDelta>)>>,
    pub recorded: AtomicU64,
    pub flushed_requests: AtomicU64,
    pub dropped_requests: AtomicU64,
    pub flush_failures: AtomicU64,
    /// Unix ms of the last successful flush (0: never).
    pub last_flush_ms: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Meter {
    pub fn new(node_id: String) -> Self {
        Meter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            node_id,
            next_seq: AtomicI64::new(1),
            queue: Mutex::new(VecDeque::new()),
            recorded: AtomicU64::new(0),
            flushed_requests: AtomicU64::new(0),
            dropped_requests: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            last_flush_ms: AtomicI64::new(0),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Adds one request to its tenant's current minute. Never blocks on I/O.
    pub fn record(&self, tenant_id: &str, s: &Sample) {
        let minute = s.at_unix_s.div_euclid(60) * 60;
        let idx = (self.hasher.hash_one(tenant_id) as usize) % SHARDS;
        let mut shard = lock(&self.shards[idx]);
        let slots = match shard.get_mut(tenant_id) {
            Some(v) => v,
            None => shard.entry(tenant_id.to_owned()).or_default(),
        };
        match slots.iter_mut().find(|(m, _)| *m == minute) {
            Some((_, c)) => c.add(s),
            None => {
                let mut c = Counters::default();
                c.add(s);
                slots.push((minute, c));
            }
        }
        drop(shard);
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves everything recorded so far into a numbered batch on the queue.
    pub fn seal_batch(&self) {
        let mut rows = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *lock(shard));
            for (tenant, slots) in taken {
                for (minute, c) in slots {
                    rows.push(UsageDelta {
                        tenant_id: tenant.clone(),
                        bucket_start: minute,
                        requests: c.requests,
                        rate_limited: c.rate_limited,
                        denied: c.denied,
                        upstream_errors: c.upstream_errors,
                        bytes_in: c.bytes_in,
                        bytes_out: c.bytes_out,
                        latency_sum_us: c.latency_sum_us,
                        latency_buckets: c.latency,
                    });
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        q.push_back((seq, rows));
        let mut queued: usize = q.iter().map(|(_, r)| r.len()).sum();
        while queued > MAX_QUEUED_ROWS {
            match q.pop_front() {
                Some((_, r)) => {
                    queued -= r.len();
                    let lost: u64 = r.iter().map(|d| d.requests).sum();
                    self.dropped_requests.fetch_add(lost, Ordering::Relaxed);
                    tracing::error!(
                        lost,
                        "metering queue over its bound: dropped the oldest batch"
                    );
                }
                None => break,
            }
        }
    }

    /// Seals what was recorded and applies every queued batch in order. Stops at the
    /// first failure (the batch stays queued with its sequence number).
    pub async fn flush(&self, store: &Store) -> Result<(), String> {
        self.seal_batch();
        loop {
            let next = lock(&self.queue).front().cloned();
            let Some((seq, rows)) = next else {
                return Ok(());
            };
            match store.apply_usage(&self.node_id, seq, &rows).await {
                Ok(_) => {
                    let n: u64 = rows.iter().map(|d| d.requests).sum();
                    self.flushed_requests.fetch_add(n, Ordering::Relaxed);
                    self.last_flush_ms
                        .store(tenantgate_core::time::now_ms(), Ordering::Relaxed);
                    let mut q = lock(&self.queue);
                    if q.front().map(|(s, _)| *s) == Some(seq) {
                        q.pop_front();
                    }
                }
                Err(e) => {
                    self.flush_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.to_string());
                }
            }
        }
    }

    /// Requests recorded but not yet flushed.
    pub fn pending_requests(&self) -> u64 {
        let in_maps: u64 = self
            .shards
            .iter()
            .map(|s| {
                lock(s)
                    .values()
                    .flat_map(|v| v.iter().map(|(_, c)| c.requests))
                    .sum::<u64>()
            })
            .sum();
        let queued: u64 = lock(&self.queue)
            .iter()
            .flat_map(|(_, r)| r.iter().map(|d| d.requests))
            .sum();
        in_maps + queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64) -> Sample {
        Sample {
            at_unix_s: t,
            bytes_in: 10,
            bytes_out: 100,
            latency_us: 300,
            ..Default::default()
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
        let q = lock(&m.queue);
        assert_eq!(q.len(), 1);
        let (seq, rows) = &q[0];
        assert_eq!(*seq, 1);
        let mut rows = rows.clone();
        rows.sort_by_key(|x| (x.tenant_id.clone(), x.bucket_start));
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (
                rows[0].tenant_id.as_str(),
                rows[0].bucket_start,
                rows[0].requests
            ),
            ("a", 120, 2)
        );
        assert_eq!(rows[0].bytes_out, 200);
        assert_eq!(rows[0].latency_buckets[1], 2);
        assert_eq!((rows[1].bucket_start, rows[1].requests), (180, 1));
        assert_eq!((rows[2].tenant_id.as_str(), rows[2].denied), ("b", 1));
    }

    #[test]
    fn empty_seal_makes_no_batch() {
        let m = Meter::new("n1".into());
        m.seal_batch();
        assert!(lock(&m.queue).is_empty());
        assert_eq!(m.pending_requests(), 0);
    }

    #[tokio::test]
    async fn flushes_exactly_once_and_retries_in_order() {
        let db = tenantgate_core::testing::TestDb::sqlite();
        let store = Store::open(&db.url, 2).await.unwrap();
        let m = Meter::new("node-a".into());
        for i in 0..10 {
            m.record("t1", &sample(600 + i));
        }
        m.flush(&store).await.unwrap();
        assert_eq!(m.pending_requests(), 0);
        let rows = store.usage_minutes("t1", 0, 10_000).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].requests, 10);
        // A replay of the same (node, seq) is ignored.
        let replay = vec![UsageDelta {
            tenant_id: "t1".into(),
            bucket_start: 600,
            requests: 10,
            ..Default::default()
        }];
        assert!(!store.apply_usage("node-a", 1, &replay).await.unwrap());
        assert_eq!(
            store.usage_minutes("t1", 0, 10_000).await.unwrap()[0].requests,
            10
        );
        // Store down: the batch stays queued, then lands once.
        m.record("t1", &sample(600));
        store.close().await;
        assert!(m.flush(&store).await.is_err());
        assert_eq!(m.pending_requests(), 1);
        let store2 = Store::open(&db.url, 2).await.unwrap();
        m.flush(&store2).await.unwrap();
        assert_eq!(
            store2.usage_minutes("t1", 0, 10_000).await.unwrap()[0].requests,
            11
        );
        store2.close().await;
        db.cleanup().await;
    }
}
