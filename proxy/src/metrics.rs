//! Prometheus metrics of the proxy: requests by outcome, latency, and requests
//! per tenant. Per-tenant labels are capped: the K tenants with the most requests
//! over the last ranking period get their own series, the rest share `other`, so
//! the series count stays bounded however many tenants there are. The ranking is
//! redone at most once per [`RERANK_EVERY`], at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How often the busiest tenants are ranked again.
pub const RERANK_EVERY: Duration = Duration::from_secs(60);

const TENANT_REQUESTS: &str = "tenantgate_proxy_tenant_requests_total";
const TENANT_SHED: &str = "tenantgate_proxy_tenant_refusals_shed_total";

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
/// counting is then one atomic add, with no per-thread map of tenants to probe.
#[derive(Debug, Default)]
pub struct TenantSeries(OnceLock<(u64, Arc<AtomicU64>)>);

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

/// Which tenants have their own label, and what they had counted when ranked.
#[derive(Default)]
struct Ranking {
    top: HashSet<Box<str>>,
    counted_at_rank: HashMap<Box<str>, u64>,
    ranked_at: Option<Instant>,
}

pub struct ProxyMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Every tenant's total since start (tenants are made by admins, not clients).
    tenants: Mutex<HashMap<Box<str>, Arc<AtomicU64>>>,
    /// Refusals shed by [`crate::fairness`] per tenant (a flood is rate-limited
    /// by the shedding itself, so a lock here is cheap).
    shed: Mutex<HashMap<Box<str>, u64>>,
    ranking: Mutex<Ranking>,
    top_k: usize,
    proxied: Histogram,
    rejected: Histogram,
    id: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(ProxyMetrics {
            registry,
            requests,
            proxied: latency.get_metric_with_label_values(&["proxied"])?,
            rejected: latency.get_metric_with_label_values(&["rejected"])?,
            latency,
            tenants: Mutex::new(HashMap::new()),
            shed: Mutex::new(HashMap::new()),
            ranking: Mutex::new(Ranking::default()),
            top_k,
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn tenant_counter(&self, tenant: &str) -> Arc<AtomicU64> {
        lock(&self.tenants)
            .entry(tenant.into())
            .or_default()
            .clone()
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
            match series.0.get_or_init(|| (self.id, self.tenant_counter(t))) {
                (owner, c) if *owner == self.id => c.fetch_add(1, Ordering::Relaxed),
                // Resolved by another `ProxyMetrics` (only in tests).
                _ => self.tenant_counter(t).fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Counts a refusal shed for `tenant` (delayed, or its connection closed).
    pub fn observe_shed(&self, tenant: &str) {
        *lock(&self.shed).entry(tenant.into()).or_default() += 1;
    }

    fn observe_uncached(&self, code: &str, status: u16) {
        self.requests
            .with_label_values(&[code, status.to_string().as_str()])
            .inc();
    }

    /// The tenants with their own label: the `top_k` with the most requests since
    /// the last ranking, ranked again once [`RERANK_EVERY`] has passed.
    fn busiest(&self, now: Instant) -> HashSet<Box<str>> {
        let mut r = lock(&self.ranking);
        if r.ranked_at
            .is_some_and(|at| now.duration_since(at) < RERANK_EVERY)
        {
            return r.top.clone();
        }
        let totals: Vec<(Box<str>, u64)> = lock(&self.tenants)
            .iter()
            .map(|(t, c)| (t.clone(), c.load(Ordering::Relaxed)))
            .collect();
        let mut recent: Vec<(u64, &Box<str>)> = totals
            .iter()
            .map(|(t, n)| (n - r.counted_at_rank.get(t).copied().unwrap_or(0), t))
            .collect();
        // Most recent requests first; ties by name, so the ranking is stable.
        recent.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let top = recent
            .iter()
            .take(self.top_k)
            .map(|(_, t)| (*t).clone())
            .collect();
        r.top = top;
        r.counted_at_rank = totals.into_iter().collect();
        r.ranked_at = Some(now);
        r.top.clone()
    }

    /// Appends the registry's metrics and the per-tenant series as Prometheus text.
    pub fn render(&self, out: &mut String) {
        self.render_at(out, Instant::now());
    }

    fn render_at(&self, out: &mut String, now: Instant) {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        out.push_str(&String::from_utf8_lossy(&buf));
        let top = self.busiest(now);
        let requests: Vec<(Box<str>, u64)> = lock(&self.tenants)
            .iter()
            .map(|(t, c)| (t.clone(), c.load(Ordering::Relaxed)))
            .collect();
        per_tenant(out, TENANT_REQUESTS, "Requests per tenant", &top, requests);
        let shed: Vec<(Box<str>, u64)> = lock(&self.shed)
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        per_tenant(
            out,
            TENANT_SHED,
            "Refusals shed per tenant: delayed or closed because the client kept being refused (proxy.fairness)",
            &top,
            shed,
        );
    }
}

/// One counter per tenant of `top`, the rest summed as `other`.
fn per_tenant(
    out: &mut String,
    name: &str,
    help: &str,
    top: &HashSet<Box<str>>,
    counts: Vec<(Box<str>, u64)>,
) {
    let mut own: Vec<(Box<str>, u64)> = Vec::new();
    let mut other = 0u64;
    for (t, n) in counts {
        if top.contains(&t) {
            own.push((t, n));
        } else {
            other += n;
        }
    }
    own.sort();
    let _ = writeln!(
        out,
        "# HELP {name} {help} (the busiest tenants of the last ranking; the rest as `other`)\n\
         # TYPE {name} counter"
    );
    for (t, n) in own {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {n}", escape(&t));
    }
    let _ = writeln!(out, "{name}{{tenant=\"other\"}} {other}");
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_line(text: &str, tenant: &str) -> Option<u64> {
        let prefix = format!("{TENANT_REQUESTS}{{tenant=\"{tenant}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
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
        let mut text = String::new();
        m.render(&mut text);
        assert_eq!(tenant_line(&text, "t"), Some(2));
        assert_eq!(tenant_line(&text, "other"), Some(0));
        let hist = |m: &ProxyMetrics, outcome: &str| {
            m.latency.with_label_values(&[outcome]).get_sample_count()
        };
        assert_eq!((hist(&m, "proxied"), hist(&m, "rejected")), (1, 2));
    }

    #[test]
    fn the_busiest_tenants_get_labels_and_are_ranked_again() {
        let m = ProxyMetrics::new(2).unwrap();
        let series: Vec<TenantSeries> = (0..4).map(|_| TenantSeries::default()).collect();
        let hit = |i: usize, n: usize| {
            for _ in 0..n {
                m.observe("ok", 200, 0.001, Some((&format!("t{i}"), &series[i])));
            }
        };
        // t0 arrives first but is quiet; t2 and t3 are the busy ones.
        hit(0, 1);
        hit(1, 2);
        hit(2, 30);
        hit(3, 20);
        let t0 = Instant::now();
        let mut text = String::new();
        m.render_at(&mut text, t0);
        assert_eq!(tenant_line(&text, "t2"), Some(30));
        assert_eq!(tenant_line(&text, "t3"), Some(20));
        assert_eq!(tenant_line(&text, "t0"), None);
        assert_eq!(tenant_line(&text, "other"), Some(3));
        // t0 becomes the busiest: it gets its label at the next ranking, not before.
        hit(0, 100);
        hit(2, 1);
        let mut text = String::new();
        m.render_at(&mut text, t0 + RERANK_EVERY / 2);
        assert_eq!(tenant_line(&text, "t0"), None);
        let mut text = String::new();
        m.render_at(&mut text, t0 + RERANK_EVERY);
        assert_eq!(tenant_line(&text, "t0"), Some(101));
        assert_eq!(tenant_line(&text, "t2"), Some(31));
        assert_eq!(tenant_line(&text, "t3"), None);
        assert_eq!(tenant_line(&text, "other"), Some(22));
    }

    #[test]
    fn cached_series_stay_with_their_registry() {
        // Two instances on one thread (as in tests): each counts only its own, also
        // when a tenant's series was resolved by the other one.
        let a = ProxyMetrics::new(1).unwrap();
        let b = ProxyMetrics::new(1).unwrap();
        let (t1, t2) = (TenantSeries::default(), TenantSeries::default());
        for _ in 0..3 {
            a.observe("ok", 200, 0.001, Some(("t1", &t1)));
            b.observe("ok", 200, 0.001, Some(("t2", &t2)));
        }
        b.observe("ok", 200, 0.001, Some(("t1", &t1)));
        assert_eq!(a.requests.with_label_values(&["ok", "200"]).get(), 3);
        assert_eq!(b.requests.with_label_values(&["ok", "200"]).get(), 4);
        let (mut ta, mut tb) = (String::new(), String::new());
        a.render(&mut ta);
        b.render(&mut tb);
        assert_eq!(tenant_line(&ta, "t1"), Some(3));
        assert_eq!(tenant_line(&tb, "t2"), Some(3));
        assert_eq!(tenant_line(&tb, "other"), Some(1));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
