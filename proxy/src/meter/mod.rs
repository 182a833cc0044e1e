//! Stage 8: metering that loses nothing.
//!
//! * `record` runs in `logging` and never awaits: it adds to per-tenant, per-minute
//!   counters in sharded maps (one short mutex section, no I/O).
//! * `seal_batch` moves everything recorded into a numbered batch `(node id, seq)` on
//!   an in-memory queue; `flush` applies the queued batches in order with one store
//!   transaction per batch. The store applies each `(node id, seq)` once, so a retried
//!   (or replayed) batch never double counts.
//! * The spool: past a memory bound, or as soon as a flush fails (so a crash while the
//!   store is down loses at most one interval), queued batches are written, oldest
//!   first, as JSON lines to a file under the spool directory (written to a `.tmp`
//!   file, fsynced, renamed, directory fsynced). `flush` replays the spool files in
//!   name (= time) order before the memory queue and deletes each file once every
//!   line of it is applied. A new meter adopts the files it finds there, whatever
//!   node wrote them: each line carries its own `(node id, seq)`.
//! * Bounds: past `max_disk_bytes` of spool a batch is dropped (counted); when the
//!   spool cannot be written, the memory queue is capped at `hard_memory_rows`
//!   (oldest dropped, counted). The recording maps are drained every interval and ask
//!   for an early seal past `max_live_rows`.
//!
//! Sequence numbers are `max(previous + 1, unix microseconds)`, so they keep growing
//! across restarts even with a fixed `[metering] node_id`.

mod flush;
mod queue;
mod record;
mod spool;
#[cfg(test)]
mod tests;

pub use flush::{final_flush, flush_loop};

use queue::MemQueue;
use record::{Shard, TenantHash, SHARDS};
use spool::{scan_spool, SpoolIo};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// Memory and disk bounds of the meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Queued rows (tenant × minute) kept in memory; past it the oldest batches go to
    /// the spool.
    pub max_memory_rows: usize,
    /// Estimated bytes of queued rows kept in memory; past it, as above.
    pub max_memory_bytes: usize,
    /// Spool size on disk; a batch that would go past it is dropped and counted.
    pub max_disk_bytes: u64,
    /// Spool the whole memory queue as soon as a flush fails, so that a crash while
    /// the store is down loses at most the current interval.
    pub spool_on_failure: bool,
    /// When the spool cannot be written, the memory queue is capped here (the oldest
    /// batches are dropped and counted).
    pub hard_memory_rows: usize,
    /// Rows in the recording maps past which the flusher is asked to seal early.
    pub max_live_rows: usize,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_memory_rows: 50_000,
            max_memory_bytes: 64 << 20,
            max_disk_bytes: 256 << 20,
            spool_on_failure: true,
            hard_memory_rows: 1_000_000,
            max_live_rows: 200_000,
        }
    }
}

/// A point-in-time view of the meter, for metrics and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterStats {
    pub recorded: u64,
    pub flushed_requests: u64,
    pub dropped_requests: u64,
    pub dropped_batches: u64,
    pub flush_failures: u64,
    /// Flush cycles that completed (caught up with the store).
    pub flushes: u64,
    pub spool_write_errors: u64,
    pub spool_corrupt_lines: u64,
    /// Requests recorded and not yet in the store (maps + memory queue + spool).
    pub pending_requests: u64,
    pub queued_batches: u64,
    pub spool_bytes: u64,
    pub spool_batches: u64,
    pub spool_files: u64,
    /// Milliseconds since the meter was last fully caught up with the store (since it
    /// started when it never was).
    pub flush_lag_ms: u64,
}

pub struct Meter {
    shards: Vec<Mutex<Shard>>,
    /// Picks the shard (a different seed from the maps' own hasher).
    hasher: TenantHash,
    node_id: String,
    limits: SpoolLimits,
    /// The last sequence number handed out.
    last_seq: AtomicI64,
    live_rows: AtomicUsize,
    seal_wanted: AtomicBool,
    seal_notify: tokio::sync::Notify,
    queue: Mutex<MemQueue>,
    /// Serializes flushes and spool I/O (held across awaits).
    io: tokio::sync::Mutex<SpoolIo>,
    started_ms: i64,
    pub recorded: AtomicU64,
    pub flushed_requests: AtomicU64,
    pub dropped_requests: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub flush_failures: AtomicU64,
    /// Successful flush cycles.
    pub flushes: AtomicU64,
    pub spool_write_errors: AtomicU64,
    pub spool_corrupt_lines: AtomicU64,
    /// Unix ms of the last flush that left nothing behind (0: never).
    pub last_flush_ms: AtomicI64,
    spool_bytes: AtomicU64,
    spool_batches: AtomicU64,
    spool_requests: AtomicU64,
    spool_files: AtomicU64,
    /// The routes' autoscaling signals, written with each flush.
    signals: std::sync::OnceLock<std::sync::Arc<crate::signals::SignalBoard>>,
    #[cfg(test)]
    applied: Mutex<Vec<(String, i64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn sub(a: &AtomicU64, v: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
        Some(x.saturating_sub(v))
    });
}

impl Meter {
    /// A meter without a spool: batches stay in memory (up to `hard_memory_rows`).
    pub fn new(node_id: String) -> Self {
        Self::build(node_id, None, SpoolLimits::default())
    }

    /// A meter that spools to `dir` (created when missing) and adopts the spool files
    /// a previous process left there. A spool directory that cannot be read or created
    /// is logged and the meter falls back to memory until writes succeed.
    pub fn with_spool(node_id: String, dir: PathBuf, limits: SpoolLimits) -> Self {
        let m = Self::build(node_id, Some(dir.clone()), limits);
        let found = std::fs::create_dir_all(&dir).and_then(|()| scan_spool(&dir));
        match found {
            Ok(files) => {
                if !files.is_empty() {
                    let requests: u64 = files.iter().map(|f| f.requests).sum();
                    tracing::info!(
                        dir = %dir.display(),
                        files = files.len(),
                        requests,
                        "metering spool found: replaying it into the store"
                    );
                }
                for f in &files {
                    m.spool_bytes.fetch_add(f.bytes, Ordering::Relaxed);
                    m.spool_batches.fetch_add(f.batches, Ordering::Relaxed);
                    m.spool_requests.fetch_add(f.requests, Ordering::Relaxed);
                    m.spool_files.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut io) = m.io.try_lock() {
                    io.files = files.into();
                }
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "metering spool directory unusable; usage is kept in memory only");
            }
        }
        m
    }

    fn build(node_id: String, dir: Option<PathBuf>, limits: SpoolLimits) -> Self {
        Meter {
            shards: {
                let map_hash = TenantHash::default();
                (0..SHARDS)
                    .map(|_| Mutex::new(HashMap::with_hasher(map_hash.clone())))
                    .collect()
            },
            hasher: TenantHash::default(),
            node_id,
            limits,
            last_seq: AtomicI64::new(0),
            live_rows: AtomicUsize::new(0),
            seal_wanted: AtomicBool::new(false),
            seal_notify: tokio::sync::Notify::new(),
            queue: Mutex::new(MemQueue::default()),
            io: tokio::sync::Mutex::new(SpoolIo {
                dir,
                ..SpoolIo::default()
            }),
            started_ms: tenantgate_core::time::now_ms(),
            recorded: AtomicU64::new(0),
            flushed_requests: AtomicU64::new(0),
            dropped_requests: AtomicU64::new(0),
            dropped_batches: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            spool_write_errors: AtomicU64::new(0),
            spool_corrupt_lines: AtomicU64::new(0),
            last_flush_ms: AtomicI64::new(0),
            spool_bytes: AtomicU64::new(0),
            spool_batches: AtomicU64::new(0),
            spool_requests: AtomicU64::new(0),
            spool_files: AtomicU64::new(0),
            signals: std::sync::OnceLock::new(),
            #[cfg(test)]
            applied: Mutex::new(Vec::new()),
        }
    }

    /// Writes `board`'s readings with every flush (once; later calls are ignored).
    pub fn attach_signals(&self, board: std::sync::Arc<crate::signals::SignalBoard>) {
        let _ = self.signals.set(board);
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn limits(&self) -> &SpoolLimits {
        &self.limits
    }

    /// Requests recorded but not yet in the store (in memory or spooled).
    pub fn pending_requests(&self) -> u64 {
        let in_maps: u64 = self
            .shards
            .iter()
            .map(|s| {
                lock(s)
                    .iter()
                    .filter(|(id, _)| !id.as_bytes().contains(&0x1f))
                    .map(|(_, slots)| slots.requests())
                    .sum::<u64>()
            })
            .sum();
        let queued = lock(&self.queue).requests;
        in_maps + queued + self.spool_requests.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> MeterStats {
        let now = tenantgate_core::time::now_ms();
        let caught_up = self
            .last_flush_ms
            .load(Ordering::Relaxed)
            .max(self.started_ms);
        let queued_batches = lock(&self.queue).batches.len() as u64;
        MeterStats {
            recorded: self.recorded.load(Ordering::Relaxed),
            flushed_requests: self.flushed_requests.load(Ordering::Relaxed),
            dropped_requests: self.dropped_requests.load(Ordering::Relaxed),
            dropped_batches: self.dropped_batches.load(Ordering::Relaxed),
            flush_failures: self.flush_failures.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            spool_write_errors: self.spool_write_errors.load(Ordering::Relaxed),
            spool_corrupt_lines: self.spool_corrupt_lines.load(Ordering::Relaxed),
            pending_requests: self.pending_requests(),
            queued_batches,
            spool_bytes: self.spool_bytes.load(Ordering::Relaxed),
            spool_batches: self.spool_batches.load(Ordering::Relaxed),
            spool_files: self.spool_files.load(Ordering::Relaxed),
            flush_lag_ms: u64::try_from(now - caught_up).unwrap_or(0),
        }
    }

    /// Appends the meter's counters and gauges as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let st = self.stats();
        for (name, kind, help, v) in [
            (
                "tenantgate_metering_recorded_total",
                "counter",
                "Requests recorded by metering",
                st.recorded as f64,
            ),
            (
                "tenantgate_metering_flushed_total",
                "counter",
                "Requests flushed to the store",
                st.flushed_requests as f64,
            ),
            (
                "tenantgate_metering_dropped_total",
                "counter",
                "Requests dropped past the memory and disk bounds",
                st.dropped_requests as f64,
            ),
            (
                "tenantgate_metering_dropped_batches_total",
                "counter",
                "Batches dropped past the memory and disk bounds",
                st.dropped_batches as f64,
            ),
            (
                "tenantgate_metering_flushes_total",
                "counter",
                "Flush cycles that completed (everything recorded before them is in the store)",
                st.flushes as f64,
            ),
            (
                "tenantgate_metering_flush_failures_total",
                "counter",
                "Failed flush attempts",
                st.flush_failures as f64,
            ),
            (
                "tenantgate_metering_spool_errors_total",
                "counter",
                "Spool files that could not be written or read",
                st.spool_write_errors as f64,
            ),
            (
                "tenantgate_metering_spool_corrupt_lines_total",
                "counter",
                "Spool lines skipped as torn or corrupt",
                st.spool_corrupt_lines as f64,
            ),
            (
                "tenantgate_metering_pending_requests",
                "gauge",
                "Requests recorded and not yet in the store (memory and spool)",
                st.pending_requests as f64,
            ),
            (
                "tenantgate_metering_queued_batches",
                "gauge",
                "Sealed batches waiting in memory",
                st.queued_batches as f64,
            ),
            (
                "tenantgate_metering_spool_bytes",
                "gauge",
                "Bytes of usage spooled to disk",
                st.spool_bytes as f64,
            ),
            (
                "tenantgate_metering_spool_batches",
                "gauge",
                "Batches spooled to disk waiting for the store",
                st.spool_batches as f64,
            ),
            (
                "tenantgate_metering_spool_files",
                "gauge",
                "Spool files waiting for the store",
                st.spool_files as f64,
            ),
            (
                "tenantgate_metering_flush_lag_seconds",
                "gauge",
                "Seconds since metering was last fully caught up with the store",
                st.flush_lag_ms as f64 / 1000.0,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}
