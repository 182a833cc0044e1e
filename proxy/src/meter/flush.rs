//! Flushing: batches applied to the store in order, exactly once each; the
//! flusher's loop and the shutdown flush.

use super::spool::SpoolIo;
use super::{lock, sub, Meter};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantgate_core::store::Store;
use tenantgate_core::usage::UsageDelta;
use tokio::sync::watch;

impl Meter {
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
                self.flushes.fetch_add(1, Ordering::Relaxed);
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

    pub(super) async fn apply(
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
}

/// Flushes usage every `interval` (or early when the recording maps grow past their
/// bound). While the store is down the flush attempts back off (up to 30 s), but every
/// tick still seals the new usage and spools it, so memory stays bounded and a crash
/// loses at most one interval.
pub async fn flush_loop(
    meter: Arc<Meter>,
    store: Store,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = interval;
    let mut retry_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = meter.seal_requested() => {}
            _ = shutdown.changed() => break,
        }
        if Instant::now() < retry_at {
            tokio::select! {
                _ = meter.seal_and_spill() => {}
                _ = shutdown.changed() => break,
            }
            continue;
        }
        // A flush against a hanging store must not hold up the shutdown flush; the
        // meter is safe to interrupt (a batch leaves its queue only once applied).
        let res = tokio::select! {
            r = meter.flush(&store) => r,
            _ = shutdown.changed() => break,
        };
        match res {
            Ok(()) => {
                // The scaling signals ride the same tick: one upsert per route.
                if let Some(board) = meter.signals.get() {
                    tokio::select! {
                        _ = board.flush(&store, meter.node_id()) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                backoff = interval;
                retry_at = Instant::now();
            }
            Err(e) => {
                backoff = (backoff * 2).min(Duration::from_secs(30)).max(interval);
                retry_at = Instant::now() + backoff;
                let st = meter.stats();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    pending_requests = st.pending_requests,
                    spool_bytes = st.spool_bytes,
                    "usage flush failed"
                );
            }
        }
    }
}

/// The shutdown flush: retries until `within` passes, then spools what is left.
pub async fn final_flush(meter: Arc<Meter>, store: Store, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt =
            tokio::time::timeout(left.max(Duration::from_millis(100)), meter.flush(&store))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
        match attempt {
            Ok(()) => {
                tracing::info!(flushed = meter.stats().flushed_requests, "usage flushed");
                return;
            }
            Err(e) if Instant::now() + Duration::from_millis(200) < deadline => {
                tracing::warn!(error = %e, "final usage flush failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "final usage flush failed; spooling what is left");
                break;
            }
        }
    }
    let spooled = tokio::time::timeout(Duration::from_secs(5), meter.spool_all())
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
    match spooled {
        Ok(n) => tracing::warn!(
            spooled_requests = n,
            "usage spooled to disk; the next start replays it into the store"
        ),
        Err(e) => tracing::error!(
            error = %e,
            pending = meter.pending_requests(),
            "final usage flush failed and the spool is unusable; usage lost"
        ),
    }
}
