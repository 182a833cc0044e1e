//! Prometheus metrics of the admin API, in a registry owned by the state.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "tenantgate_admin_requests_total";
pub const REQUEST_DURATION: &str = "tenantgate_admin_request_duration_seconds";
pub const LOGIN_FAILURES_TOTAL: &str = "tenantgate_admin_login_failures_total";

/// Why a login failed, as the `reason` label of [`LOGIN_FAILURES_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown tenant or user, wrong password, disabled user.
    BadCredentials,
    /// Refused by the throttle before any password was checked.
    Throttled,
    /// No password-hashing slot in time.
    Busy,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::BadCredentials => "bad_credentials",
            LoginFailure::Throttled => "throttled",
            LoginFailure::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    login_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Admin API requests by method, route template and status",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(REQUEST_DURATION, "Admin API request latency").buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        let login_failures = IntCounterVec::new(
            Opts::new(LOGIN_FAILURES_TOTAL, "Failed logins by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(login_failures.clone()))?;
        // Every reason shows from the start (at 0), so alerts can rate() them.
        for r in [
            LoginFailure::BadCredentials,
            LoginFailure::Throttled,
            LoginFailure::Busy,
        ] {
            login_failures.with_label_values(&[r.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            login_failures,
        })
    }

    /// Counts one failed login.
    pub fn login_failed(&self, reason: LoginFailure) {
        self.login_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Records one request. `route` is a route template (bounded cardinality).
    pub fn observe(&self, method: &http::Method, route: &str, status: u16, seconds: f64) {
        let method = match *method {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::POST
            | http::Method::PUT
            | http::Method::PATCH
            | http::Method::DELETE
            | http::Method::OPTIONS => method.as_str(),
            _ => "other",
        };
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
