//! The memory allocator: jemalloc, configured to give memory back to the OS while
//! the process is idle.
//!
//! The proxy allocates and frees many small buffers per request (headers, futures,
//! strings); glibc's malloc/free/consolidate took about a tenth of the proxy's CPU
//! in the load harness's profiles, so a faster allocator pays for itself. Which one:
//! mimalloc was a few per cent faster here, but it kept memory a burst of connections
//! had used: its 64 KiB pages stay resident while any one block on them lives, and it
//! purges freed memory only from inside later allocations, so an idle proxy kept
//! ~1.9× its baseline 30 s after 8,000 idle connections closed (forcing a collect from
//! a side thread did not change that). jemalloc's small-object slabs are a few pages,
//! and its background threads purge dirty pages on a decay curve whether or not the
//! process allocates: the same measurement ends at ~1.05× (benches/RESULTS.md, #24).
//!
//! Configuration (compiled in; jemalloc reads it at its first allocation, and
//! `_RJEM_MALLOC_CONF` in the environment adds to it for an experiment):
//! - `background_thread:true`: purging runs on jemalloc's own threads, not inside a
//!   request's allocation, and also while no request comes.
//! - `dirty_decay_ms:10000`: freed pages go back over ~10 s (jemalloc's default),
//!   so a burst reuses them instead of faulting them in again.
//! - `muzzy_decay_ms:0`: returned with `MADV_DONTNEED` (RSS drops at once), not
//!   `MADV_FREE` (which the kernel takes back only under memory pressure, so the RSS
//!   an operator watches would not move).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (see the module docs). tikv-jemalloc-sys builds jemalloc with
/// the `_rjem_` symbol prefix, so this is the symbol it reads its options from.
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0\0";
