//! What a cache table holds for a key: a found value with its load stamps, or a
//! "known not to exist" stamp.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// When a cached answer was loaded: `started_at` is when its load began (older
/// than a change ⇒ possibly stale), `loaded_at` when it finished.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    pub(super) started_at: Instant,
    pub(super) loaded_at: Instant,
}

impl Stamp {
    pub(super) fn new(started_at: Instant) -> Self {
        Stamp {
            started_at,
            loaded_at: Instant::now(),
        }
    }
}

/// A found value with its stamp, in one allocation: a hit reaches the value in one
/// hop from the table (with 100k keys every hop is a cache miss).
pub(super) struct Entry<T> {
    pub(super) stamp: Stamp,
    /// A background refresh of this entry is running (one at a time).
    pub(super) refreshing: AtomicBool,
    pub(super) value: T,
}

/// What the table holds for a key: the value, or "known not to exist".
pub(super) enum Slot<T> {
    Found(Arc<Entry<T>>),
    Missing(Arc<Stamp>),
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Slot::Found(e) => Slot::Found(e.clone()),
            Slot::Missing(s) => Slot::Missing(s.clone()),
        }
    }
}

impl<T> Slot<T> {
    pub(super) fn new(value: Option<T>, started_at: Instant) -> Self {
        let stamp = Stamp::new(started_at);
        match value {
            Some(value) => Slot::Found(Arc::new(Entry {
                stamp,
                refreshing: AtomicBool::new(false),
                value,
            })),
            None => Slot::Missing(Arc::new(stamp)),
        }
    }

    pub(super) fn stamp(&self) -> &Stamp {
        match self {
            Slot::Found(e) => &e.stamp,
            Slot::Missing(s) => s,
        }
    }

    pub(super) fn value(&self) -> Option<Shared<T>> {
        match self {
            Slot::Found(e) => Some(Shared(e.clone())),
            Slot::Missing(_) => None,
        }
    }

    pub(super) fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Slot::Found(a), Slot::Found(b)) => Arc::ptr_eq(a, b),
            (Slot::Missing(a), Slot::Missing(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A cached value. It shares the table's entry (the value is stored inline in it),
/// so handing it out is one reference-count increment on a line the lookup
/// already read.
pub struct Shared<T>(pub(super) Arc<Entry<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value
    }
}
