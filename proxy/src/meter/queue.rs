//! The in-memory queue of sealed batches waiting for the store.

use std::collections::VecDeque;
use tenantgate_core::usage::UsageDelta;

/// One sealed batch of this process.
#[derive(Debug, Clone)]
pub(super) struct Batch {
    pub(super) seq: i64,
    pub(super) rows: Vec<UsageDelta>,
    pub(super) requests: u64,
    pub(super) bytes: usize,
}

#[derive(Debug, Default)]
pub(super) struct MemQueue {
    pub(super) batches: VecDeque<Batch>,
    pub(super) rows: usize,
    pub(super) bytes: usize,
    pub(super) requests: u64,
}

impl MemQueue {
    pub(super) fn push_back(&mut self, b: Batch) {
        self.rows += b.rows.len();
        self.bytes += b.bytes;
        self.requests += b.requests;
        self.batches.push_back(b);
    }

    pub(super) fn pop_front(&mut self) -> Option<Batch> {
        let b = self.batches.pop_front()?;
        self.rows -= b.rows.len();
        self.bytes -= b.bytes;
        self.requests -= b.requests;
        Some(b)
    }

    /// Removes the front batch if it is still `seq` (it may have been dropped meanwhile).
    pub(super) fn remove_front_if(&mut self, seq: i64) -> Option<Batch> {
        if self.batches.front().map(|b| b.seq) == Some(seq) {
            self.pop_front()
        } else {
            None
        }
    }
}

pub(super) fn row_bytes(d: &UsageDelta) -> usize {
    std::mem::size_of::<UsageDelta>() + d.tenant_id.len()
}
