//! The data lifecycle job: every admin process runs it, one of the fleet at a
//! time does the work (the store elects it per pass, see
//! `tenantgate_core::store::Store::lifecycle_pass`). Progress and lag are metrics
//! of the admin API's `/metrics`.

use crate::AdminState;
use tenantgate_core::time::now_ms;
use tokio::sync::watch;

/// Runs one pass and records its metrics.
pub async fn run_once(state: &AdminState) {
    let m = state.metrics().lifecycle();
    let started = std::time::Instant::now();
    let now = now_ms();
    match state
        .store()
        .lifecycle_pass(&state.options().retention, now)
        .await
    {
        Ok(report) if !report.elected => {
            m.passes.with_label_values(&["not_elected"]).inc();
        }
        Ok(report) => {
            m.passes.with_label_values(&["ran"]).inc();
            for s in &report.steps {
                m.rows.with_label_values(&[s.step]).inc_by(s.rows);
                m.step_seconds.with_label_values(&[s.step]).set(s.seconds);
            }
            m.pass_seconds.set(started.elapsed().as_secs_f64());
            m.last_success.set(now as f64 / 1000.0);
            if let Ok(marks) = state.store().rollup_marks().await {
                let now_s = now.div_euclid(1000);
                for (level, mark) in [("hour", marks.hour), ("day", marks.day)] {
                    if mark != i64::MIN {
                        m.rollup_lag
                            .with_label_values(&[level])
                            .set(now_s.saturating_sub(mark) as f64);
                    }
                }
            }
            tracing::debug!(?report, "lifecycle pass done");
        }
        Err(e) => {
            m.passes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "lifecycle pass failed; retrying at the next interval");
        }
    }
}

/// Runs a pass every `[retention] run_interval_seconds` until `shutdown`.
pub async fn run(state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.options().retention.run_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => run_once(&state).await,
            _ = shutdown.changed() => return,
        }
    }
}
