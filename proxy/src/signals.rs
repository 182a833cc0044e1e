//! Autoscaling signals per route: request rate, in-flight requests and p95
//! latency of the requests forwarded upstream. The hot path only touches
//! atomics (no lock, no I/O); the metering flusher reads and resets them once per
//! flush and writes this proxy's reading to the store (`route_signals`, one row
//! per node and route, replaced each time), where the admin API's evaluator sums
//! the fleet's.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tenantgate_core::store::{RouteSignalRow, Store};

/// Upper bounds of the latency buckets, µs (the last bucket is open).
const BOUNDS_US: [u64; 27] = [
    1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000, 100_000,
    150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
    5_000_000, 7_500_000, 10_000_000, 15_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Counter shards per route: each thread adds to its own (by a per-thread
/// index), so busy routes do not bounce one cache line between cores.
const SHARDS: usize = 8;

/// One shard's counters, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    /// Started minus finished on this shard (a request may finish on another
    /// thread's shard: only the sum over shards means anything).
    in_flight: AtomicI64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// This thread's shard (threads are numbered in the order they first record).
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteSignals {
    shards: [Shard; SHARDS],
}

/// What a route's counters held since the last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub requests: u64,
    pub in_flight: u64,
    /// Upper bound of the bucket holding the 95th percentile, µs (0: no requests).
    pub p95_us: u64,
}

impl RouteSignals {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// A request is being forwarded.
    pub fn started(&self) {
        self.shard().in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request [`started`](Self::started) is done after `latency_us`.
    pub fn finished(&self, latency_us: u64) {
        let s = self.shard();
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        let i = BOUNDS_US.partition_point(|&b| b < latency_us);
        s.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads and resets the counts (in-flight is a level, not reset).
    pub fn take(&self) -> Reading {
        let mut requests = 0;
        let mut in_flight = 0i64;
        let mut counts = [0u64; BUCKETS];
        for s in &self.shards {
            requests += s.requests.swap(0, Ordering::Relaxed);
            in_flight += s.in_flight.load(Ordering::Relaxed);
            for (c, l) in counts.iter_mut().zip(&s.latency) {
                *c += l.swap(0, Ordering::Relaxed);
            }
        }
        Reading {
            requests,
            in_flight: u64::try_from(in_flight).unwrap_or(0),
            p95_us: percentile_us(&counts, 0.95),
        }
    }
}

/// The upper bound of the bucket where the `q` quantile falls (the open
/// bucket reports the last bound).
fn percentile_us(counts: &[u64; BUCKETS], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return BOUNDS_US
                .get(i)
                .copied()
                .unwrap_or(BOUNDS_US[BOUNDS_US.len() - 1]);
        }
    }
    BOUNDS_US[BOUNDS_US.len() - 1]
}

/// Every route's signals, and when they were last read.
#[derive(Debug)]
pub struct SignalBoard {
    routes: Vec<(Arc<str>, Arc<RouteSignals>)>,
    last_read: Mutex<Instant>,
}

impl SignalBoard {
    pub fn new(routes: Vec<(Arc<str>, Arc<RouteSignals>)>) -> Self {
        SignalBoard {
            routes,
            last_read: Mutex::new(Instant::now()),
        }
    }

    /// Reads every route (rates over the time since the last read).
    pub fn read(&self) -> Vec<RouteSignalRow> {
        let elapsed = {
            let mut last = match self.last_read.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let now = Instant::now();
            let e = now.duration_since(*last);
            *last = now;
            e.as_secs_f64().max(0.001)
        };
        self.routes
            .iter()
            .map(|(name, s)| {
                let r = s.take();
                RouteSignalRow {
                    route: name.to_string(),
                    rps_milli: ((r.requests as f64) * 1000.0 / elapsed).round() as i64,
                    in_flight: i64::try_from(r.in_flight).unwrap_or(i64::MAX),
                    p95_us: i64::try_from(r.p95_us).unwrap_or(i64::MAX),
                    requests: i64::try_from(r.requests).unwrap_or(i64::MAX),
                }
            })
            .collect()
    }

    /// Writes this proxy's reading to the store (part of each metering flush).
    pub async fn flush(&self, store: &Store, node_id: &str) {
        if self.routes.is_empty() {
            return;
        }
        let rows = self.read();
        if let Err(e) = store
            .put_route_signals(node_id, tenantgate_core::time::now_ms(), &rows)
            .await
        {
            tracing::debug!(error = %e, "scaling signals not written (the next flush writes fresh ones)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rate_in_flight_and_p95() {
        let s = RouteSignals::default();
        for i in 0..100u64 {
            s.started();
            // 95 fast requests (≤ 1 ms), 5 slow ones (~40 ms).
            s.finished(if i < 95 { 800 } else { 40_000 });
        }
        s.started();
        let r = s.take();
        assert_eq!(r.requests, 100);
        assert_eq!(r.in_flight, 1);
        assert_eq!(r.p95_us, 1_000);
        s.finished(40_000);
        let r = s.take();
        assert_eq!((r.requests, r.in_flight, r.p95_us), (1, 0, 50_000));
        assert_eq!(s.take(), Reading::default(), "reset after each reading");
    }

    #[test]
    fn requests_finishing_on_other_threads_add_up() {
        let s = std::sync::Arc::new(RouteSignals::default());
        for _ in 0..10 {
            s.started();
        }
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || s.finished(2_500))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = s.take();
        assert_eq!((r.requests, r.in_flight, r.p95_us), (10, 0, 3_000));
    }

    #[test]
    fn very_slow_requests_land_in_the_open_bucket() {
        let s = RouteSignals::default();
        s.started();
        s.finished(3_600_000_000);
        assert_eq!(s.take().p95_us, 60_000_000);
    }
}
