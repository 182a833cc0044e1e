//! The autoscaling evaluator: every admin process runs it, one of the fleet at
//! a time does the work (the store elects it per pass, see
//! `tenantgate_core::store::Store::scaling_pass`). Each pass sums the proxies'
//! signals per route, runs the pure policy (`tenantgate_core::scaling`), stores
//! the decisions as scaling events, and sets the
//! `tenantgate_autoscale_desired_replicas{route}` gauge. A process that was not
//! elected reads the replicas the last pass left, so every admin process's
//! `/metrics` shows the same desired replicas.

use crate::AdminState;
use tenantgate_core::time::now_ms;
use tokio::sync::watch;

/// Runs one pass and records its metrics.
pub async fn run_once(state: &AdminState) {
    let opts = state.options();
    if opts.autoscale.is_empty() {
        return;
    }
    let m = state.metrics().scaling();
    let now = now_ms();
    let max_age = i64::try_from(opts.scaling.signal_max_age.as_millis()).unwrap_or(i64::MAX);
    match state
        .store()
        .scaling_pass(&opts.autoscale, now, now.saturating_sub(max_age))
        .await
    {
        Ok(Some(outcomes)) => {
            m.passes.with_label_values(&["ran"]).inc();
            for o in outcomes {
                m.desired_replicas
                    .with_label_values(&[&o.route])
                    .set(f64::from(o.replicas));
                m.signal_rps
                    .with_label_values(&[&o.route])
                    .set(o.signals.rps);
                if let Some(e) = o.event {
                    tracing::info!(
                        route = %e.route,
                        from = e.from_replicas,
                        to = e.to_replicas,
                        reason = %e.reason,
                        "scaling decision"
                    );
                }
            }
        }
        Ok(None) => {
            m.passes.with_label_values(&["not_elected"]).inc();
            if let Ok(replicas) = state.store().scaling_replicas().await {
                for (route, n) in replicas {
                    if opts.autoscale.iter().any(|(r, _)| *r == route) {
                        m.desired_replicas
                            .with_label_values(&[&route])
                            .set(f64::from(n));
                    }
                }
            }
        }
        Err(e) => {
            m.passes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "scaling pass failed; retrying at the next interval");
        }
    }
}

/// Runs a pass every `[scaling] evaluate_interval_ms` until `shutdown` (nothing
/// when no `[[autoscale]]` is configured).
pub async fn run(state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let opts = state.options();
    if opts.autoscale.is_empty() {
        return;
    }
    // The gauge exists from the start: each policy starts at its `min`.
    for (route, policy) in &opts.autoscale {
        state
            .metrics()
            .scaling()
            .desired_replicas
            .with_label_values(&[route])
            .set(f64::from(policy.min));
    }
    let mut tick = tokio::time::interval(opts.scaling.evaluate_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => run_once(&state).await,
            _ = shutdown.changed() => return,
        }
    }
}
