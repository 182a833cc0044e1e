//! Recording: per-tenant, per-minute counters in sharded maps, drained into
//! numbered batches.

use super::queue::{row_bytes, Batch};
use super::{lock, Meter, Sample};
use crate::cache::IdKey;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use tenantgate_core::usage::{key_row_id, latency_bucket, split_key_row, UsageCounts, UsageDelta};

/// Adds one request to a (tenant, minute)'s counters.
#[inline]
fn add(c: &mut UsageCounts, s: &Sample) {
    c.requests += 1;
    c.rate_limited += u64::from(s.rate_limited);
    c.denied += u64::from(s.denied);
    c.upstream_errors += u64::from(s.upstream_error);
    c.bytes_in += s.bytes_in;
    c.bytes_out += s.bytes_out;
    c.latency_sum_us += s.latency_us;
    c.latency_buckets[latency_bucket(s.latency_us)] += 1;
}

pub(super) const SHARDS: usize = 32;

/// Tenant ids are hashed twice per request (shard, then map). They are made by
/// admins, not clients, so foldhash's fast per-process-seeded hasher is enough;
/// SipHash's flooding resistance buys nothing here.
pub(super) type TenantHash = foldhash::fast::RandomState;

/// A tenant's minutes since the last seal: the latest inline (the common case is one
/// map lookup and no further pointer chase), earlier ones (an interval that spans a
/// minute boundary, late requests) in `older`.
#[derive(Debug)]
pub(super) struct Slots {
    minute: i64,
    cur: UsageCounts,
    older: Vec<(i64, UsageCounts)>,
}

impl Slots {
    fn new(minute: i64, s: &Sample) -> Self {
        let mut cur = UsageCounts::default();
        add(&mut cur, s);
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
            add(&mut self.cur, s);
            return false;
        }
        if let Some((_, c)) = self.older.iter_mut().find(|(m, _)| *m == minute) {
            add(c, s);
            return false;
        }
        let mut c = UsageCounts::default();
        add(&mut c, s);
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

    pub(super) fn requests(&self) -> u64 {
        self.cur.requests + self.older.iter().map(|(_, c)| c.requests).sum::<u64>()
    }

    fn into_rows(self) -> impl Iterator<Item = (i64, UsageCounts)> {
        std::iter::once((self.minute, self.cur)).chain(self.older)
    }
}

pub(super) type Shard = HashMap<IdKey, Slots, TenantHash>;

impl Meter {
    /// Adds one request to its tenant's current minute. Never blocks on I/O.
    #[inline]
    pub fn record(&self, tenant_id: &str, s: &Sample) {
        self.record_row(tenant_id, s);
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Also counts a request made with an API key as that key's share (a second
    /// row, keyed `tenant ␟ key`, stored per hour; see `key_row_id`). Not a request
    /// of its own: call it beside [`Meter::record`].
    pub fn record_key(&self, tenant_id: &str, api_key_id: &str, s: &Sample) {
        self.record_row(&key_row_id(tenant_id, api_key_id), s);
    }

    fn record_row(&self, tenant_id: &str, s: &Sample) {
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
                        counts: c,
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
        let requests = tenant_requests(&rows);
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

    pub(super) fn count_dropped(&self, batches: u64, requests: u64) {
        self.dropped_batches.fetch_add(batches, Ordering::Relaxed);
        self.dropped_requests.fetch_add(requests, Ordering::Relaxed);
    }
}

/// Requests in `rows`, not counting per-key rows (a key's share of its tenant's
/// requests, already in the tenant's rows).
pub(super) fn tenant_requests(rows: &[UsageDelta]) -> u64 {
    rows.iter()
        .filter(|d| split_key_row(&d.tenant_id).is_none())
        .map(|d| d.counts.requests)
        .sum()
}
