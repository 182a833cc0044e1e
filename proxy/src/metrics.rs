//! Prometheus metrics of the proxy. Per-tenant labels are capped: the first K
//! tenants seen get their own series, the rest share `other`, so a tenant flood
//! cannot blow up the metrics cardinality.

use crate::control::ControlPlane;
use crate::meter::Meter;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Each worker thread's resolved outcome series, so a request costs a few atomic
/// adds and no label hashing under the registry's lock. Keyed by the owning
/// [`ProxyMetrics`] (tests make several in one process).
#[derive(Default)]
struct Handles {
    owner: u64,
    requests: FastMap<(&'static str, u16), IntCounter>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

/// A tenant's request counter, resolved on first use and kept where the tenant's
/// other per-request state is (its [`TenantView`](crate::control::TenantView)):
/// counting is then one atomic add, with no per-thread map of 10k tenants to probe.
#[derive(Debug, Default)]
pub struct TenantSeries(OnceLock<(u64, IntCounter)>);

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

pub struct ProxyMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub tenant_requests: IntCounterVec,
    top_tenants: RwLock<HashSet<String>>,
    top_k: usize,
    proxied: Histogram,
    rejected: Histogram,
    id: u64,
}

impl ProxyMetrics {
    pub fn new(top_k: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_requests_total",
                "Requests by outcome code and status",
            ),
            &["code", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tenantgate_proxy_request_duration_seconds",
                "Time from request start to the end of the response",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["outcome"],
        )?;
        let tenant_requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_tenant_requests_total",
                "Requests per tenant (busiest tenants by first arrival; the rest as `other`)",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(tenant_requests.clone()))?;
        Ok(ProxyMetrics {
            registry,
            requests,
            proxied: latency.get_metric_with_label_values(&["proxied"])?,
            rejected: latency.get_metric_with_label_values(&["rejected"])?,
            latency,
            tenant_requests,
            top_tenants: RwLock::new(HashSet::new()),
            top_k,
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The label for a tenant: itself while fewer than K tenants have labels, else `other`.
    pub fn tenant_label<'a>(&self, tenant: &'a str) -> &'a str {
        if let Ok(set) = self.top_tenants.read() {
            if set.contains(tenant) {
                return tenant;
            }
            if set.len() >= self.top_k {
                return "other";
            }
        }
        if let Ok(mut set) = self.top_tenants.write() {
            if set.len() < self.top_k {
                set.insert(tenant.to_owned());
                return tenant;
            }
        }
        "other"
    }

    /// Counts one finished request: its outcome, latency and (when it was
    /// attributed to a tenant) the tenant's series.
    pub fn observe(
        &self,
        code: &'static str,
        status: u16,
        seconds: f64,
        tenant: Option<(&str, &TenantSeries)>,
    ) {
        if code == "ok" {
            self.proxied.observe(seconds);
        } else {
            self.rejected.observe(seconds);
        }
        HANDLES.with(|h| {
            let Ok(mut h) = h.try_borrow_mut() else {
                return self.observe_uncached(code, status);
            };
            if h.owner != self.id {
                *h = Handles {
                    owner: self.id,
                    ..Handles::default()
                };
            }
            h.requests
                .entry((code, status))
                .or_insert_with(|| {
                    self.requests
                        .with_label_values(&[code, status.to_string().as_str()])
                })
                .inc();
        });
        if let Some((t, series)) = tenant {
            let resolve = || {
                self.tenant_requests
                    .with_label_values(&[self.tenant_label(t)])
            };
            match series.0.get_or_init(|| (self.id, resolve())) {
                (owner, c) if *owner == self.id => c.inc(),
                // Resolved by another `ProxyMetrics` (only in tests).
                _ => resolve().inc(),
            }
        }
    }

    fn observe_uncached(&self, code: &str, status: u16) {
        self.requests
            .with_label_values(&[code, status.to_string().as_str()])
            .inc();
    }

    /// Prometheus text: the registry plus cache and metering counters.
    pub fn render(&self, control: &ControlPlane, meter: &Meter) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut s = String::from_utf8_lossy(&out).into_owned();
        let _ = writeln!(
            s,
            "# HELP tenantgate_proxy_cache_events_total Control-plane cache events"
        );
        let _ = writeln!(s, "# TYPE tenantgate_proxy_cache_events_total counter");
        for (name, st) in control.all_stats() {
            for (ev, v) in [
                ("hit", st.hits.load(Ordering::Relaxed)),
                ("miss", st.misses.load(Ordering::Relaxed)),
                ("negative_hit", st.negative_hits.load(Ordering::Relaxed)),
                ("load_error", st.load_errors.load(Ordering::Relaxed)),
                ("refresh", st.refreshes.load(Ordering::Relaxed)),
            ] {
                let _ = writeln!(
                    s,
                    "tenantgate_proxy_cache_events_total{{cache=\"{name}\",event=\"{ev}\"}} {v}"
                );
            }
        }
        let st = meter.stats();
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
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_capped() {
        let m = ProxyMetrics::new(2).unwrap();
        assert_eq!(m.tenant_label("a"), "a");
        assert_eq!(m.tenant_label("b"), "b");
        assert_eq!(m.tenant_label("c"), "other");
        assert_eq!(m.tenant_label("a"), "a");
    }

    #[test]
    fn observe_counts() {
        let m = ProxyMetrics::new(5).unwrap();
        let t = TenantSeries::default();
        m.observe("ok", 200, 0.001, Some(("t", &t)));
        m.observe("forbidden", 403, 0.0001, Some(("t", &t)));
        m.observe("unauthorized", 401, 0.0001, None);
        assert_eq!(m.requests.with_label_values(&["ok", "200"]).get(), 1);
        assert_eq!(
            m.requests.with_label_values(&["unauthorized", "401"]).get(),
            1
        );
        assert_eq!(m.tenant_requests.with_label_values(&["t"]).get(), 2);
        let hist = |m: &ProxyMetrics, outcome: &str| {
            m.latency.with_label_values(&[outcome]).get_sample_count()
        };
        assert_eq!((hist(&m, "proxied"), hist(&m, "rejected")), (1, 2));
    }

    #[test]
    fn cached_series_stay_with_their_registry() {
        // Two instances on one thread (as in tests): each counts only its own, also
        // when a tenant's series was resolved by the other one.
        let a = ProxyMetrics::new(1).unwrap();
        let b = ProxyMetrics::new(1).unwrap();
        let (t1, t2, t9) = (
            TenantSeries::default(),
            TenantSeries::default(),
            TenantSeries::default(),
        );
        for _ in 0..3 {
            a.observe("ok", 200, 0.001, Some(("t1", &t1)));
            b.observe("ok", 200, 0.001, Some(("t2", &t2)));
            a.observe("ok", 200, 0.001, Some(("t9", &t9)));
        }
        b.observe("ok", 200, 0.001, Some(("t1", &t1)));
        assert_eq!(a.requests.with_label_values(&["ok", "200"]).get(), 6);
        assert_eq!(b.requests.with_label_values(&["ok", "200"]).get(), 4);
        assert_eq!(a.tenant_requests.with_label_values(&["t1"]).get(), 3);
        assert_eq!(a.tenant_requests.with_label_values(&["other"]).get(), 3);
        assert_eq!(b.tenant_requests.with_label_values(&["t2"]).get(), 3);
        assert_eq!(b.tenant_requests.with_label_values(&["other"]).get(), 1);
    }
}
