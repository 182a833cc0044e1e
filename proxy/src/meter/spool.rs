//! The spool: batches the store could not take yet, as JSON lines on disk.

use super::queue::Batch;
use super::{lock, sub, Meter};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use tenantgate_core::store::Store;
use tenantgate_core::usage::UsageDelta;
use tokio::io::AsyncBufReadExt;

/// One spool file waiting to be replayed.
#[derive(Debug, Clone)]
pub(super) struct SpoolFile {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    /// What the file still holds (from its name; lowered as lines are applied).
    pub(super) batches: u64,
    pub(super) requests: u64,
}

#[derive(Debug, Default)]
pub(super) struct SpoolIo {
    pub(super) dir: Option<PathBuf>,
    pub(super) files: VecDeque<SpoolFile>,
    /// Lines of the front file already applied.
    pub(super) cursor: usize,
    /// Distinguishes files written in the same millisecond.
    pub(super) counter: u64,
    /// The last flush failed.
    pub(super) degraded: bool,
}

/// One spool line: one batch. Written from a queued batch (borrowed), read back
/// owned.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SpoolLine<'a> {
    #[serde(default)]
    pub(super) v: u32,
    pub(super) node_id: Cow<'a, str>,
    pub(super) seq: i64,
    pub(super) rows: Cow<'a, [UsageDelta]>,
}

/// `<ms>-<counter>-<tag>-b<batches>-r<requests>.jsonl`: the name sorts by time and
/// tells what the file holds without reading it.
pub(super) fn spool_name(ms: i64, counter: u64, tag: &str, batches: u64, requests: u64) -> String {
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
pub(super) fn scan_spool(dir: &Path) -> std::io::Result<Vec<SpoolFile>> {
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
    pub(super) async fn spill_locked(&self, io: &mut SpoolIo, all: bool) {
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
                node_id: Cow::Borrowed(&self.node_id),
                seq: b.seq,
                rows: Cow::Borrowed(&b.rows),
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

    /// Applies the lines of one spool file from `io.cursor` on.
    pub(super) async fn replay_file(
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
            let rows = parsed.rows;
            let requests = super::record::tenant_requests(&rows);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
