//! The autoscaling policy, pure: signals + state + policy → decision. The admin
//! API's evaluator (one process of the fleet at a time) and `tenantgate
//! simulate-scaling` run this same code; neither the clock nor the store is read
//! here.
//!
//! The rule, per evaluation at `now`:
//! * the recommendation is `ceil(rps / target_rps_per_replica)`, clamped to
//!   `[min, max]`;
//! * replicas outside `[min, max]` (the policy changed) are clamped at once;
//! * a higher recommendation scales up to it once `cooldown` has passed since
//!   the last change;
//! * a lower one scales down, after the cooldown, only as low as the highest
//!   recommendation of the last `scale_down_stabilisation` (and only once that
//!   much history has been seen), so a dip does not shed replicas a returning
//!   peak needs.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Largest `max` of a policy.
pub const MAX_REPLICAS: u32 = 10_000;
/// Longest cooldown or stabilisation window accepted, seconds (a day).
pub const MAX_WINDOW_S: u64 = 86_400;

/// One route's policy (`[[autoscale]]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub target_rps_per_replica: f64,
    pub min: u32,
    pub max: u32,
    /// Least time between two changes, seconds.
    pub cooldown_s: u64,
    /// Scale-down stabilisation window, seconds.
    pub stabilisation_s: u64,
}

impl Policy {
    /// Refuses a policy that cannot work: `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let t = self.target_rps_per_replica;
        if !t.is_finite() || t <= 0.0 {
            return Err(("target_rps_per_replica", "must be a positive number".into()));
        }
        if self.max == 0 || self.max > MAX_REPLICAS {
            return Err(("max", format!("must be between 1 and {MAX_REPLICAS}")));
        }
        if self.min > self.max {
            return Err((
                "min",
                format!("must be at most max ({} > {})", self.min, self.max),
            ));
        }
        if self.cooldown_s > MAX_WINDOW_S {
            return Err((
                "cooldown_seconds",
                format!("must be at most {MAX_WINDOW_S}"),
            ));
        }
        if self.stabilisation_s > MAX_WINDOW_S {
            return Err((
                "scale_down_stabilisation_seconds",
                format!("must be at most {MAX_WINDOW_S}"),
            ));
        }
        Ok(())
    }

    /// Replicas `rps` needs, within `[min, max]`.
    pub fn recommend(&self, rps: f64) -> u32 {
        let need = if rps.is_finite() && rps > 0.0 {
            (rps / self.target_rps_per_replica).ceil()
        } else {
            0.0
        };
        // `as` saturates; the clamp keeps it in the policy's range.
        (need.min(f64::from(MAX_REPLICAS)) as u32).clamp(self.min, self.max)
    }

    fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.min, self.max)
    }
}

/// What the proxies measured for one route, summed over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Requests per second forwarded on the route.
    pub rps: f64,
    /// Requests forwarded and not yet answered.
    pub in_flight: u64,
    /// 95th percentile of the proxies' request latency, ms (the highest proxy's).
    pub p95_ms: f64,
    /// Proxies whose signals were counted.
    pub proxies: u32,
}

/// What the policy remembers between evaluations (kept in the store by the
/// fleet, in memory by the simulator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub replicas: u32,
    /// When replicas last changed, unix ms (`None`: never).
    pub last_change_ms: Option<i64>,
    /// Since when recommendations have been recorded, unix ms.
    pub observing_since_ms: i64,
    /// Recommendations of the stabilisation window as a decreasing sequence
    /// `(at_ms, replicas)`: the front is the window's highest (a sliding-window
    /// maximum, so its length stays within `max - min + 1`).
    pub recent: VecDeque<(i64, u32)>,
}

impl State {
    /// A route seen for the first time: `min` replicas.
    pub fn new(policy: &Policy, now_ms: i64) -> Self {
        State {
            replicas: policy.min,
            last_change_ms: None,
            observing_since_ms: now_ms,
            recent: VecDeque::new(),
        }
    }
}

/// A change of replicas and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// One evaluation at `now_ms`: updates `state` and returns the change, if any.
pub fn evaluate(
    policy: &Policy,
    state: &mut State,
    signals: &Signals,
    now_ms: i64,
) -> Option<Decision> {
    let rec = policy.recommend(signals.rps);
    let window_ms = i64::try_from(policy.stabilisation_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let cooldown_ms = i64::try_from(policy.cooldown_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    while state.recent.back().is_some_and(|&(_, r)| r <= rec) {
        state.recent.pop_back();
    }
    state.recent.push_back((now_ms, rec));
    while state
        .recent
        .front()
        .is_some_and(|&(at, _)| at < now_ms.saturating_sub(window_ms))
    {
        state.recent.pop_front();
    }
    let from = state.replicas;
    let change = |state: &mut State, to: u32, reason: String| {
        state.replicas = to;
        state.last_change_ms = Some(now_ms);
        Some(Decision { from, to, reason })
    };
    let clamped = policy.clamp(from);
    if clamped != from {
        return change(
            state,
            clamped,
            format!(
                "replicas {from} outside the policy's [{}, {}]: clamped",
                policy.min, policy.max
            ),
        );
    }
    let cooled = state
        .last_change_ms
        .is_none_or(|t| now_ms.saturating_sub(t) >= cooldown_ms);
    let target = policy.target_rps_per_replica;
    if rec > from && cooled {
        let capped = if rec == policy.max { " (max)" } else { "" };
        return change(
            state,
            rec,
            format!(
                "scale up: {:.1} rps needs {rec} replica(s){capped} at {target} rps each",
                signals.rps
            ),
        );
    }
    let observed_window = now_ms.saturating_sub(state.observing_since_ms) >= window_ms;
    if rec < from && cooled && observed_window {
        let stable = state.recent.front().map_or(rec, |&(_, r)| r);
        if stable < from {
            return change(
                state,
                stable,
                format!(
                    "scale down: {:.1} rps; the highest recommendation of the last {} s is {stable}",
                    signals.rps, policy.stabilisation_s
                ),
            );
        }
    }
    None
}

/// One point of a load trace: from `second` on, `rps` requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    pub second: u64,
    pub rps: f64,
}

/// A trace line that could not be read (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

/// Longest trace replayed, seconds (a year).
pub const MAX_TRACE_SECONDS: u64 = 366 * 86_400;

/// Reads a `second,rps` CSV: an optional header line (`second,rps`), blank lines
/// and `#` comments skipped; seconds are whole, non-negative and increasing, rps
/// non-negative.
pub fn parse_trace(text: &str) -> Result<Vec<TracePoint>, TraceError> {
    let mut out: Vec<TracePoint> = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| TraceError { line, message };
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let was_first = std::mem::replace(&mut first, false);
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        if was_first
            && fields.len() == 2
            && fields[0].eq_ignore_ascii_case("second")
            && fields[1].eq_ignore_ascii_case("rps")
        {
            continue;
        }
        let [second, rps] = fields[..] else {
            return Err(err(format!(
                "expected two fields `second,rps`, found {}: {l:?}",
                fields.len()
            )));
        };
        let second: u64 = second
            .parse()
            .map_err(|_| err(format!("second {second:?} is not a whole number ≥ 0")))?;
        if second > MAX_TRACE_SECONDS {
            return Err(err(format!("second {second} is past {MAX_TRACE_SECONDS}")));
        }
        let rps: f64 = rps
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| err(format!("rps {rps:?} is not a number ≥ 0")))?;
        if let Some(prev) = out.last() {
            if second <= prev.second {
                return Err(err(format!(
                    "second {second} does not come after second {}",
                    prev.second
                )));
            }
        }
        out.push(TracePoint { second, rps });
    }
    if out.is_empty() {
        return Err(TraceError {
            line: text.lines().count().max(1),
            message: "the trace has no `second,rps` rows".into(),
        });
    }
    Ok(out)
}

/// A decision of a replayed trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    pub second: u64,
    pub rps: f64,
    pub decision: Decision,
}

/// What a replay came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Seconds replayed (first to last second of the trace).
    pub seconds: u64,
    pub peak_replicas: u32,
    /// Seconds whose rps exceeded what the replicas in force could serve
    /// (`replicas × target`); a decision takes effect from the next second.
    pub under_provisioned_seconds: u64,
    pub events: usize,
}

/// Replays `trace` through the policy, evaluating every `interval_s` seconds
/// (each point's rps holds until the next point).
pub fn simulate(
    policy: &Policy,
    trace: &[TracePoint],
    interval_s: u64,
) -> (Vec<SimEvent>, SimSummary) {
    let interval_s = interval_s.max(1);
    let mut events = Vec::new();
    let (Some(first), Some(last)) = (trace.first(), trace.last()) else {
        return (events, SimSummary::default());
    };
    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut state = State::new(policy, ms(first.second));
    let mut summary = SimSummary {
        peak_replicas: state.replicas,
        ..SimSummary::default()
    };
    let mut next = 0;
    let mut rps = 0.0;
    for second in first.second..=last.second {
        while trace.get(next).is_some_and(|p| p.second <= second) {
            rps = trace[next].rps;
            next += 1;
        }
        summary.seconds += 1;
        if rps > f64::from(state.replicas) * policy.target_rps_per_replica {
            summary.under_provisioned_seconds += 1;
        }
        if (second - first.second) % interval_s == 0 {
            let signals = Signals {
                rps,
                ..Signals::default()
            };
            if let Some(decision) = evaluate(policy, &mut state, &signals, ms(second)) {
                summary.peak_replicas = summary.peak_replicas.max(decision.to);
                events.push(SimEvent {
                    second,
                    rps,
                    decision,
                });
            }
        }
    }
    summary.events = events.len();
    (events, summary)
}

#[cfg(test)]
mod tests;
