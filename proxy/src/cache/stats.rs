//! Per-cache event counters and their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the counter family every cache reports into.
pub const CACHE_EVENTS: &str = "tenantgate_proxy_cache_events_total";

/// Hit/miss counters of one cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
    pub load_errors: AtomicU64,
    pub refreshes: AtomicU64,
}

impl CacheStats {
    /// Appends this cache's samples of [`CACHE_EVENTS`] (the family's HELP and
    /// TYPE lines are written once by [`render_header`]).
    pub fn render(&self, cache: &str, out: &mut String) {
        for (event, v) in [
            ("hit", &self.hits),
            ("miss", &self.misses),
            ("negative_hit", &self.negative_hits),
            ("load_error", &self.load_errors),
            ("refresh", &self.refreshes),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{CACHE_EVENTS}{{cache=\"{cache}\",event=\"{event}\"}} {v}"
            );
        }
    }
}

/// The HELP and TYPE lines of [`CACHE_EVENTS`].
pub fn render_header(out: &mut String) {
    let _ = writeln!(out, "# HELP {CACHE_EVENTS} Control-plane cache events");
    let _ = writeln!(out, "# TYPE {CACHE_EVENTS} counter");
}
