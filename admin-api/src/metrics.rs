//! Prometheus metrics of the admin API, in a registry owned by the state.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "tenantgate_admin_requests_total";
pub const REQUEST_DURATION: &str = "tenantgate_admin_request_duration_seconds";
pub const LOGIN_FAILURES_TOTAL: &str = "tenantgate_admin_login_failures_total";
pub const LIFECYCLE_PASSES_TOTAL: &str = "tenantgate_lifecycle_passes_total";
pub const LIFECYCLE_ROWS_TOTAL: &str = "tenantgate_lifecycle_rows_total";
pub const LIFECYCLE_STEP_SECONDS: &str = "tenantgate_lifecycle_step_duration_seconds";
pub const LIFECYCLE_PASS_SECONDS: &str = "tenantgate_lifecycle_pass_duration_seconds";
pub const LIFECYCLE_LAST_SUCCESS: &str = "tenantgate_lifecycle_last_success_timestamp_seconds";
pub const LIFECYCLE_ROLLUP_LAG: &str = "tenantgate_lifecycle_rollup_lag_seconds";
pub const AUTOSCALE_DESIRED_REPLICAS: &str = "tenantgate_autoscale_desired_replicas";
pub const AUTOSCALE_SIGNAL_RPS: &str = "tenantgate_autoscale_signal_rps";
pub const SCALING_PASSES_TOTAL: &str = "tenantgate_scaling_passes_total";

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
    lifecycle: LifecycleMetrics,
    scaling: ScalingMetrics,
}

/// The autoscaling evaluator's output (see `crate::scaling`).
#[derive(Debug, Clone)]
pub struct ScalingMetrics {
    /// Replicas each `route`'s policy asks for: what an HPA or a target-tracking
    /// policy follows.
    pub desired_replicas: GaugeVec,
    /// The fleet's request rate per `route` at the last evaluation.
    pub signal_rps: GaugeVec,
    /// `outcome`: ran | not_elected | failed.
    pub passes: IntCounterVec,
}

/// The rollup and retention job's progress (see `crate::lifecycle`).
#[derive(Debug, Clone)]
pub struct LifecycleMetrics {
    /// `outcome`: ran | not_elected | failed.
    pub passes: IntCounterVec,
    /// Rows written (rollups) or deleted (pruning) per `step`.
    pub rows: IntCounterVec,
    /// Duration of each `step` in the last pass this process ran.
    pub step_seconds: GaugeVec,
    pub pass_seconds: Gauge,
    pub last_success: Gauge,
    /// Now minus the rollup watermark per `level` (hour | day).
    pub rollup_lag: GaugeVec,
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
        let lifecycle = LifecycleMetrics {
            passes: IntCounterVec::new(
                Opts::new(
                    LIFECYCLE_PASSES_TOTAL,
                    "Rollup and retention passes by outcome (ran, not_elected, failed)",
                ),
                &["outcome"],
            )?,
            rows: IntCounterVec::new(
                Opts::new(
                    LIFECYCLE_ROWS_TOTAL,
                    "Rows written by rollups or deleted by retention, per step",
                ),
                &["step"],
            )?,
            step_seconds: GaugeVec::new(
                Opts::new(
                    LIFECYCLE_STEP_SECONDS,
                    "Duration of each step of the last pass this process ran",
                ),
                &["step"],
            )?,
            pass_seconds: Gauge::new(
                LIFECYCLE_PASS_SECONDS,
                "Duration of the last pass this process ran",
            )?,
            last_success: Gauge::new(
                LIFECYCLE_LAST_SUCCESS,
                "Unix time of the last pass this process completed",
            )?,
            rollup_lag: GaugeVec::new(
                Opts::new(
                    LIFECYCLE_ROLLUP_LAG,
                    "How far each rollup level's watermark is behind now, seconds",
                ),
                &["level"],
            )?,
        };
        registry.register(Box::new(lifecycle.passes.clone()))?;
        registry.register(Box::new(lifecycle.rows.clone()))?;
        registry.register(Box::new(lifecycle.step_seconds.clone()))?;
        registry.register(Box::new(lifecycle.pass_seconds.clone()))?;
        registry.register(Box::new(lifecycle.last_success.clone()))?;
        registry.register(Box::new(lifecycle.rollup_lag.clone()))?;
        let scaling = ScalingMetrics {
            desired_replicas: GaugeVec::new(
                Opts::new(
                    AUTOSCALE_DESIRED_REPLICAS,
                    "Replicas the [[autoscale]] policy of each route asks for",
                ),
                &["route"],
            )?,
            signal_rps: GaugeVec::new(
                Opts::new(
                    AUTOSCALE_SIGNAL_RPS,
                    "Requests per second of each autoscaled route, summed over the proxies, at the last evaluation",
                ),
                &["route"],
            )?,
            passes: IntCounterVec::new(
                Opts::new(
                    SCALING_PASSES_TOTAL,
                    "Autoscaling evaluations by outcome (ran, not_elected, failed)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(scaling.desired_replicas.clone()))?;
        registry.register(Box::new(scaling.signal_rps.clone()))?;
        registry.register(Box::new(scaling.passes.clone()))?;
        for o in ["ran", "not_elected", "failed"] {
            lifecycle.passes.with_label_values(&[o]);
            scaling.passes.with_label_values(&[o]);
        }
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
            lifecycle,
            scaling,
        })
    }

    pub fn lifecycle(&self) -> &LifecycleMetrics {
        &self.lifecycle
    }

    pub fn scaling(&self) -> &ScalingMetrics {
        &self.scaling
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
