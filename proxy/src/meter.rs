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

use crate::control::IdKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tenantgate_core::store::Store;
use tenantgate_core::usage::{latency_bucket, UsageDelta, LATENCY_BUCKETS};
use tokio::io::AsyncBufReadExt;

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
    #[inline]
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

/// Tenant ids are hashed twice per request (shard, then map). They are made by
/// admins, not clients, so foldhash's fast per-process-seeded hasher is enough;
/// SipHash's flooding resistance buys nothing here.
type TenantHash = foldhash::fast::RandomState;

/// A tenant's minutes since the last seal: the latest inline (the common case is one
/// map lookup and no further pointer chase), earlier ones (an interval that spans a
/// minute boundary, late requests) in `older`.
#[derive(Debug)]
struct Slots {
    minute: i64,
    cur: Counters,
    older: Vec<(i64, Counters)>,
}

impl Slots {
    fn new(minute: i64, s: &Sample) -> Self {
        let mut cur = Counters::default();
        cur.add(s);
        Slots {
            minute,
            cur,
            older: Vec::new(),
        }
    }

    /// Adds a sample; true when it opened a new (tenant, minute) row.
    #[inline]
    fn add(&mut self, minute: i64, s: &Sample) -> bool {
        if self.minute == minute {
            self.cur.add(s);
            return false;
        }
        if let Some((_, c)) = self.older.iter_mut().find(|(m, _)| *m == minute) {
            c.add(s);
            return false;
        }
        let mut c = Counters::default();
        c.add(s);
        if minute > self.minute {
            let prev = std::mem::replace(&mut self.cur, c);
            self.older.push((self.minute, prev));
            self.minute = minute;
        } else {
            self.older.push((minute, c));
        }
        true
    }

    fn len(&self) -> usize {
        1 + self.older.len()
    }

    fn requests(&self) -> u64 {
        self.cur.requests + self.older.iter().map(|(_, c)| c.requests).sum::<u64>()
    }

    fn into_rows(self) -> impl Iterator<Item = (i64, Counters)> {
        std::iter::once((self.minute, self.cur)).chain(self.older)
    }
}

type Shard = HashMap<IdKey, Slots, TenantHash>;

/// One sealed batch of this process.
#[derive(Debug, Clone)]
struct Batch {
    seq: i64,
    rows: Vec<UsageDelta>,
    requests: u64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct MemQueue {
    batches: VecDeque<Batch>,
    rows: usize,
    bytes: usize,
    requests: u64,
}

impl MemQueue {
    fn push_back(&mut self, b: Batch) {
        self.rows += b.rows.len();
        self.bytes += b.bytes;
        self.requests += b.requests;
        self.batches.push_back(b);
    }

    fn pop_front(&mut self) -> Option<Batch> {
        let b = self.batches.pop_front()?;
        self.rows -= b.rows.len();
        self.bytes -= b.bytes;
        self.requests -= b.requests;
        Some(b)
    }

    /// Removes the front batch if it is still `seq` (it may have been dropped meanwhile).
    fn remove_front_if(&mut self, seq: i64) -> Option<Batch> {
        if self.batches.front().map(|b| b.seq) == Some(seq) {
            self.pop_front()
        } else {
            None
        }
    }
}

/// One spool file waiting to be replayed.
#[derive(Debug, Clone)]
struct SpoolFile {
    path: PathBuf,
    bytes: u64,
    /// What the file still holds (from its name; lowered as lines are applied).
    batches: u64,
    requests: u64,
}

#[derive(Debug, Default)]
struct SpoolIo {
    dir: Option<PathBuf>,
    files: VecDeque<SpoolFile>,
    /// Lines of the front file already applied.
    cursor: usize,
    /// Distinguishes files written in the same millisecond.
    counter: u64,
    /// The last flush failed.
    degraded: bool,
}

/// One spool line: one batch.
#[derive(Debug, Serialize, Deserialize)]
struct SpoolLine {
    #[serde(default)]
    v: u32,
    node_id: String,
    seq: i64,
    rows: Vec<SpoolRow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SpoolRow {
    tenant_id: String,
    bucket_start: i64,
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    rate_limited: u64,
    #[serde(default)]
    denied: u64,
    #[serde(default)]
    upstream_errors: u64,
    #[serde(default)]
    bytes_in: u64,
    #[serde(default)]
    bytes_out: u64,
    #[serde(default)]
    latency_sum_us: u64,
    #[serde(default)]
    latency_buckets: [u64; LATENCY_BUCKETS],
}

impl From<&UsageDelta> for SpoolRow {
    fn from(d: &UsageDelta) -> Self {
        SpoolRow {
            tenant_id: d.tenant_id.clone(),
            bucket_start: d.bucket_start,
            requests: d.requests,
            rate_limited: d.rate_limited,
            denied: d.denied,
            upstream_errors: d.upstream_errors,
            bytes_in: d.bytes_in,
            bytes_out: d.bytes_out,
            latency_sum_us: d.latency_sum_us,
            latency_buckets: d.latency_buckets,
        }
    }
}

impl From<SpoolRow> for UsageDelta {
    fn from(r: SpoolRow) -> Self {
        UsageDelta {
            tenant_id: r.tenant_id,
            bucket_start: r.bucket_start,
            requests: r.requests,
            rate_limited: r.rate_limited,
            denied: r.denied,
            upstream_errors: r.upstream_errors,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            latency_sum_us: r.latency_sum_us,
            latency_buckets: r.latency_buckets,
        }
    }
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
    pub spool_write_errors: AtomicU64,
    pub spool_corrupt_lines: AtomicU64,
    /// Unix ms of the last flush that left nothing behind (0: never).
    pub last_flush_ms: AtomicI64,
    spool_bytes: AtomicU64,
    spool_batches: AtomicU64,
    spool_requests: AtomicU64,
    spool_files: AtomicU64,
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

fn row_bytes(d: &UsageDelta) -> usize {
    std::mem::size_of::<UsageDelta>() + d.tenant_id.len()
}

/// `<ms>-<counter>-<tag>-b<batches>-r<requests>.jsonl`: the name sorts by time and
/// tells what the file holds without reading it.
fn spool_name(ms: i64, counter: u64, tag: &str, batches: u64, requests: u64) -> String {
    format!("{ms:013}-{counter:06}-{tag}-b{batches}-r{requests}.jsonl")
}

/// `(batches, requests)` from a spool file name (`.tmp` included).
fn parse_spool_name(name: &str) -> Option<(u64, u64)> {
    let stem = name
        .strip_suffix(".jsonl.tmp")
        .or_else(|| name.strip_suffix(".jsonl"))?;
    let mut parts = stem.rsplit('-');
    let r = parts.next()?.strip_prefix('r')?.parse().ok()?;
    let b = parts.next()?.strip_prefix('b')?.parse().ok()?;
    Some((b, r))
}

fn is_spool_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".jsonl") || name.ends_with(".jsonl.tmp"))
}

/// The spool files in `dir`, oldest first. Files left as `.tmp` by a crash are
/// adopted too: their complete lines are replayed (idempotently), a torn last line
/// is skipped.
fn scan_spool(dir: &Path) -> std::io::Result<Vec<SpoolFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_spool_name(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let bytes = entry.metadata()?.len();
        let (batches, requests) = parse_spool_name(&name).unwrap_or((0, 0));
        out.push((
            name,
            SpoolFile {
                path: entry.path(),
                bytes,
                batches,
                requests,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// Writes `buf` durably as `dir/name`: temp file, fsync, rename, fsync of the directory.
fn write_durably(dir: &Path, name: &str, buf: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|()| path)
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
            spool_write_errors: AtomicU64::new(0),
            spool_corrupt_lines: AtomicU64::new(0),
            last_flush_ms: AtomicI64::new(0),
            spool_bytes: AtomicU64::new(0),
            spool_batches: AtomicU64::new(0),
            spool_requests: AtomicU64::new(0),
            spool_files: AtomicU64::new(0),
            #[cfg(test)]
            applied: Mutex::new(Vec::new()),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn limits(&self) -> &SpoolLimits {
        &self.limits
    }

    /// Adds one request to its tenant's current minute. Never blocks on I/O.
    #[inline]
    pub fn record(&self, tenant_id: &str, s: &Sample) {
        let minute = s.at_unix_s.div_euclid(60) * 60;
        let idx = (self.hasher.hash_one(tenant_id) as usize) % SHARDS;
        let mut shard = lock(&self.shards[idx]);
        let added = match shard.get_mut(tenant_id.as_bytes()) {
            Some(slots) => slots.add(minute, s),
            None => {
                shard.insert(IdKey::new(tenant_id), Slots::new(minute, s));
                true
            }
        };
        drop(shard);
        if added {
            let live = self.live_rows.fetch_add(1, Ordering::Relaxed) + 1;
            if live > self.limits.max_live_rows && !self.seal_wanted.swap(true, Ordering::AcqRel) {
                self.seal_notify.notify_one();
            }
        }
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the recording maps grew past `max_live_rows` (the flusher should
    /// seal now rather than at its next tick).
    pub async fn seal_requested(&self) {
        self.seal_notify.notified().await;
    }

    fn next_seq(&self) -> i64 {
        let now_us = chrono::Utc::now().timestamp_micros();
        let prev = self
            .last_seq
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(1).max(now_us))
            })
            .unwrap_or(0);
        prev.saturating_add(1).max(now_us)
    }

    /// Moves everything recorded so far into a numbered batch on the memory queue.
    pub fn seal_batch(&self) {
        self.seal_wanted.store(false, Ordering::Release);
        let mut rows = Vec::new();
        for shard in &self.shards {
            let taken = {
                let mut g = lock(shard);
                // The next interval likely sees as many tenants: start it at this
                // size rather than growing (and rehashing) from empty every second.
                let next = HashMap::with_capacity_and_hasher(g.len(), g.hasher().clone());
                std::mem::replace(&mut *g, next)
            };
            for (tenant, slots) in taken {
                let n = slots.len();
                for (minute, c) in slots.into_rows() {
                    rows.push(UsageDelta {
                        tenant_id: tenant.to_text(),
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
                let _ = self
                    .live_rows
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                        Some(x.saturating_sub(n))
                    });
            }
        }
        if rows.is_empty() {
            return;
        }
        let requests = rows.iter().map(|d| d.requests).sum();
        let bytes = rows.iter().map(row_bytes).sum();
        let batch = Batch {
            seq: self.next_seq(),
            rows,
            requests,
            bytes,
        };
        let mut q = lock(&self.queue);
        q.push_back(batch);
        while q.rows > self.limits.hard_memory_rows {
            match q.pop_front() {
                Some(b) => {
                    self.count_dropped(1, b.requests);
                    tracing::error!(
                        lost = b.requests,
                        "metering memory queue over its hard bound: dropped the oldest batch"
                    );
                }
                None => break,
            }
        }
    }

    fn count_dropped(&self, batches: u64, requests: u64) {
        self.dropped_batches.fetch_add(batches, Ordering::Relaxed);
        self.dropped_requests.fetch_add(requests, Ordering::Relaxed);
    }

    /// Seals, and spools what is over the memory bound (or everything, while the store
    /// is failing and `spool_on_failure` is set). For the flusher's ticks while it backs
    /// off.
    pub async fn seal_and_spill(&self) {
        let mut io = self.io.lock().await;
        self.seal_batch();
        let all = io.degraded && self.limits.spool_on_failure;
        self.spill_locked(&mut io, all).await;
    }

    /// Seals and writes the whole memory queue to the spool (for shutdown when the
    /// store is unreachable). Returns the requests now on disk.
    pub async fn spool_all(&self) -> Result<u64, String> {
        let mut io = self.io.lock().await;
        self.seal_batch();
        self.spill_locked(&mut io, true).await;
        let left = lock(&self.queue).requests;
        if left > 0 {
            return Err(format!("{left} requests could not be spooled"));
        }
        Ok(self.spool_requests.load(Ordering::Relaxed))
    }

    /// Writes the oldest memory batches (all of them with `all`) to one spool file.
    async fn spill_locked(&self, io: &mut SpoolIo, all: bool) {
        let Some(dir) = io.dir.clone() else {
            return;
        };
        // Copy (not take) the batches: if this future is dropped mid-write they are
        // still queued.
        let picked: Vec<Batch> = {
            let q = lock(&self.queue);
            let (mut rows, mut bytes) = (q.rows, q.bytes);
            let mut out = Vec::new();
            for b in &q.batches {
                let over =
                    rows > self.limits.max_memory_rows || bytes > self.limits.max_memory_bytes;
                if !all && !over {
                    break;
                }
                rows -= b.rows.len();
                bytes -= b.bytes;
                out.push(b.clone());
            }
            out
        };
        if picked.is_empty() {
            return;
        }
        let batches = picked.len() as u64;
        let requests: u64 = picked.iter().map(|b| b.requests).sum();
        let mut buf = Vec::new();
        for b in &picked {
            let line = SpoolLine {
                v: 1,
                node_id: self.node_id.clone(),
                seq: b.seq,
                rows: b.rows.iter().map(SpoolRow::from).collect(),
            };
            if serde_json::to_writer(&mut buf, &line).is_err() {
                self.spool_write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            buf.push(b'\n');
        }
        let len = buf.len() as u64;
        let on_disk = self.spool_bytes.load(Ordering::Relaxed);
        let write = if on_disk.saturating_add(len) > self.limits.max_disk_bytes {
            Err(None)
        } else {
            io.counter += 1;
            let tag: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
            let name = spool_name(
                tenantgate_core::time::now_ms(),
                io.counter,
                &tag,
                batches,
                requests,
            );
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || write_durably(&d, &name, &buf)).await {
                Ok(Ok(path)) => Ok(path),
                Ok(Err(e)) => Err(Some(e.to_string())),
                Err(e) => Err(Some(e.to_string())),
            }
        };
        match write {
            Ok(path) => {
                let mut q = lock(&self.queue);
                for b in &picked {
                    q.remove_front_if(b.seq);
                }
                drop(q);
                self.spool_bytes.fetch_add(len, Ordering::Relaxed);
                self.spool_batches.fetch_add(batches, Ordering::Relaxed);
                self.spool_requests.fetch_add(requests, Ordering::Relaxed);
                self.spool_files.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %path.display(), batches, requests, "metering batches spooled to disk");
                io.files.push_back(SpoolFile {
                    path,
                    bytes: len,
                    batches,
                    requests,
                });
            }
            Err(None) => {
                // Over the disk bound: what is also over the memory bound is lost (and
                // counted); the rest stays in memory.
                let mut q = lock(&self.queue);
                let mut lost = 0;
                while q.rows > self.limits.max_memory_rows || q.bytes > self.limits.max_memory_bytes
                {
                    match q.pop_front() {
                        Some(b) => {
                            lost += b.requests;
                            self.count_dropped(1, b.requests);
                        }
                        None => break,
                    }
                }
                drop(q);
                if lost > 0 {
                    tracing::error!(
                        dir = %dir.display(),
                        spool_bytes = on_disk,
                        max_disk_bytes = self.limits.max_disk_bytes,
                        lost_requests = lost,
                        "metering spool full and memory bound reached: dropped batches"
                    );
                } else {
                    tracing::debug!(
                        dir = %dir.display(),
                        spool_bytes = on_disk,
                        max_disk_bytes = self.limits.max_disk_bytes,
                        "metering spool full: keeping usage in memory"
                    );
                }
            }
            Err(Some(e)) => {
                // They stay in memory (up to the hard bound); retried at the next tick.
                self.spool_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %dir.display(), error = %e, "cannot write the metering spool; keeping usage in memory");
            }
        }
    }

    /// Seals what was recorded and applies, in order, every spooled batch and then
    /// every queued one. Stops at the first store failure (nothing is lost: the batch
    /// stays where it was; with `spool_on_failure` the memory queue goes to disk).
    pub async fn flush(&self, store: &Store) -> Result<(), String> {
        let mut io = self.io.lock().await;
        self.seal_batch();
        match self.flush_locked(&mut io, store).await {
            Ok(()) => {
                if io.degraded {
                    tracing::info!("metering flush succeeded again");
                }
                io.degraded = false;
                self.last_flush_ms
                    .store(tenantgate_core::time::now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.flush_failures.fetch_add(1, Ordering::Relaxed);
                io.degraded = true;
                let all = self.limits.spool_on_failure;
                self.spill_locked(&mut io, all).await;
                Err(e)
            }
        }
    }

    async fn flush_locked(&self, io: &mut SpoolIo, store: &Store) -> Result<(), String> {
        while let Some(file) = io.files.front().cloned() {
            self.replay_file(io, &file, store).await?;
            match tokio::fs::remove_file(&file.path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(file = %file.path.display(), error = %e, "cannot delete an applied metering spool file (replaying it again is harmless)");
                }
            }
            if let Some(done) = io.files.pop_front() {
                sub(&self.spool_bytes, done.bytes);
                sub(&self.spool_batches, done.batches);
                sub(&self.spool_requests, done.requests);
                sub(&self.spool_files, 1);
            }
            io.cursor = 0;
        }
        loop {
            let front = lock(&self.queue).batches.front().cloned();
            let Some(b) = front else {
                return Ok(());
            };
            self.apply(store, &self.node_id, b.seq, &b.rows).await?;
            self.flushed_requests
                .fetch_add(b.requests, Ordering::Relaxed);
            lock(&self.queue).remove_front_if(b.seq);
        }
    }

    async fn apply(
        &self,
        store: &Store,
        node_id: &str,
        seq: i64,
        rows: &[UsageDelta],
    ) -> Result<bool, String> {
        let fresh = store
            .apply_usage(node_id, seq, rows)
            .await
            .map_err(|e| e.to_string())?;
        #[cfg(test)]
        lock(&self.applied).push((node_id.to_owned(), seq));
        Ok(fresh)
    }

    /// Applies the lines of one spool file from `io.cursor` on.
    async fn replay_file(
        &self,
        io: &mut SpoolIo,
        file: &SpoolFile,
        store: &Store,
    ) -> Result<(), String> {
        let f = match tokio::fs::File::open(&file.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                // Unreadable: skip it (left on disk) rather than block every later batch.
                tracing::error!(file = %file.path.display(), error = %e, "cannot read a metering spool file; skipping it");
                self.spool_write_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let mut lines = tokio::io::BufReader::new(f).lines();
        let mut idx = 0usize;
        loop {
            let line = match lines.next_line().await {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::error!(file = %file.path.display(), error = %e, "metering spool file unreadable past line {idx}; skipping the rest");
                    self.spool_corrupt_lines.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            };
            idx += 1;
            if idx <= io.cursor || line.trim().is_empty() {
                continue;
            }
            let parsed: SpoolLine = match serde_json::from_str(&line) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(file = %file.path.display(), line = idx, error = %e, "skipping a torn or corrupt metering spool line");
                    self.spool_corrupt_lines.fetch_add(1, Ordering::Relaxed);
                    io.cursor = idx;
                    continue;
                }
            };
            let rows: Vec<UsageDelta> = parsed.rows.into_iter().map(UsageDelta::from).collect();
            let requests: u64 = rows.iter().map(|d| d.requests).sum();
            self.apply(store, &parsed.node_id, parsed.seq, &rows)
                .await?;
            io.cursor = idx;
            self.flushed_requests.fetch_add(requests, Ordering::Relaxed);
            if let Some(front) = io.files.front_mut() {
                let r = requests.min(front.requests);
                let b = 1u64.min(front.batches);
                front.requests -= r;
                front.batches -= b;
                sub(&self.spool_requests, r);
                sub(&self.spool_batches, b);
            }
        }
    }

    /// Requests recorded but not yet in the store (in memory or spooled).
    pub fn pending_requests(&self) -> u64 {
        let in_maps: u64 = self
            .shards
            .iter()
            .map(|s| lock(s).values().map(Slots::requests).sum::<u64>())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            .map(|r| r.requests)
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
                rows[0].requests
            ),
            ("a", 120, 2)
        );
        assert_eq!(rows[0].bytes_out, 200);
        assert_eq!(rows[0].latency_buckets[1], 2);
        assert_eq!((rows[1].bucket_start, rows[1].requests), (180, 1));
        assert_eq!((rows[2].tenant_id.as_str(), rows[2].denied), ("b", 1));
        assert_eq!(m.pending_requests(), 4);
        assert_eq!(m.live_rows.load(Ordering::Relaxed), 0);
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
            .map(|d| (d.bucket_start, d.requests))
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
        assert_eq!(rows[0].requests, 10);
        assert_eq!(m.stats().flushed_requests, 10);
        // A replay of the same (node, seq) is ignored.
        let (node, seq) = applied(&m)[0].clone();
        let replay = vec![UsageDelta {
            tenant_id: "t1".into(),
            bucket_start: 600,
            requests: 10,
            ..Default::default()
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
        assert_eq!((line.node_id.as_str(), line.rows.len()), ("node-a", 3));

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
                .map(|r| (r.bucket_start, r.requests, r.rate_limited))
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
        assert_eq!((rows[0].requests, rows[0].denied), (5, 1));
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
                rows: vec![SpoolRow::from(&UsageDelta {
                    tenant_id: "t".into(),
                    bucket_start: 60,
                    requests: n,
                    ..Default::default()
                })],
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

    #[test]
    fn spool_names_round_trip() {
        let n = spool_name(1_700_000_000_000, 7, "abcd", 3, 42);
        assert!(is_spool_name(&n));
        assert_eq!(parse_spool_name(&n), Some((3, 42)));
        assert_eq!(parse_spool_name(&format!("{n}.tmp")), Some((3, 42)));
        assert_eq!(parse_spool_name("junk.jsonl"), None);
        assert!(!is_spool_name("x.txt"));
    }
}
