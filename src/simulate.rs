//! `tenantgate simulate-scaling --trace FILE`: replays a load trace (CSV
//! `second,rps`) through the autoscaling policy the fleet runs
//! (`tenantgate_core::scaling`) and prints the decisions and a summary.

use crate::Fatal;
use clap::Args;
use std::path::PathBuf;
use tenantgate_core::config::Settings;
use tenantgate_core::scaling::{parse_trace, simulate, Policy, SimEvent, SimSummary};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The load trace: CSV `second,rps` (header optional).
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// A config file whose `[[autoscale]]` policy is replayed.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which `[[autoscale]]` policy of the config (its route); needed when it has several.
    #[arg(long, value_name = "ROUTE")]
    route: Option<String>,
    /// Requests per second one replica serves (required without --config).
    #[arg(long, value_name = "RPS")]
    target_rps_per_replica: Option<f64>,
    /// [default: 1, or the config's]
    #[arg(long, value_name = "N")]
    min: Option<u32>,
    /// [default: 10, or the config's]
    #[arg(long, value_name = "N")]
    max: Option<u32>,
    /// Least time between two changes [default: 60, or the config's].
    #[arg(long, value_name = "SECONDS")]
    cooldown_seconds: Option<u64>,
    /// Scale-down stabilisation window [default: 300, or the config's].
    #[arg(long, value_name = "SECONDS")]
    scale_down_stabilisation_seconds: Option<u64>,
    /// Seconds between two evaluations of the policy.
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    interval_seconds: u64,
    /// text or json.
    #[arg(long, short, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

/// The policy: the config's (when given), then the flags over it.
fn policy(a: &SimulateArgs) -> Result<(String, Policy), Fatal> {
    let (route, base) = match &a.config {
        Some(path) => {
            let cfg = Settings::load(Some(path))?;
            let picked = match &a.route {
                Some(r) => cfg.autoscale.iter().find(|p| {
                    p.route == *r
                        || cfg
                            .routes
                            .iter()
                            .any(|rt| rt.prefix == *r && rt.name == p.route)
                }),
                None if cfg.autoscale.len() == 1 => cfg.autoscale.first(),
                None => {
                    return Err(Fatal::usage(format!(
                        "simulate-scaling: {} has {} [[autoscale]] policies: name one with --route",
                        path.display(),
                        cfg.autoscale.len()
                    )))
                }
            };
            let Some(p) = picked else {
                return Err(Fatal::usage(format!(
                    "simulate-scaling: {} has no [[autoscale]] policy for route {:?}",
                    path.display(),
                    a.route.as_deref().unwrap_or("")
                )));
            };
            (p.route.clone(), Some(p.policy))
        }
        None => (a.route.clone().unwrap_or_else(|| "(flags)".into()), None),
    };
    let target = match (a.target_rps_per_replica, base) {
        (Some(t), _) => t,
        (None, Some(b)) => b.target_rps_per_replica,
        (None, None) => {
            return Err(Fatal::usage(
                "simulate-scaling: give --target-rps-per-replica (or --config with an [[autoscale]] policy)",
            ))
        }
    };
    let p = Policy {
        target_rps_per_replica: target,
        min: a.min.or(base.map(|b| b.min)).unwrap_or(1),
        max: a.max.or(base.map(|b| b.max)).unwrap_or(10),
        cooldown_s: a
            .cooldown_seconds
            .or(base.map(|b| b.cooldown_s))
            .unwrap_or(60),
        stabilisation_s: a
            .scale_down_stabilisation_seconds
            .or(base.map(|b| b.stabilisation_s))
            .unwrap_or(300),
    };
    p.check().map_err(|(field, message)| {
        Fatal::usage(format!(
            "simulate-scaling: --{}: {message}",
            field.replace('_', "-")
        ))
    })?;
    if !(1..=86_400).contains(&a.interval_seconds) {
        return Err(Fatal::usage(
            "simulate-scaling: --interval-seconds: must be between 1 and 86400",
        ));
    }
    Ok((route, p))
}

pub fn run(a: &SimulateArgs) -> Result<(), Fatal> {
    let (route, p) = policy(a)?;
    let name = a.trace.display().to_string();
    let text = std::fs::read_to_string(&a.trace)
        .map_err(|e| Fatal::usage(format!("simulate-scaling: {name}: cannot read: {e}")))?;
    let trace = parse_trace(&text).map_err(|e| Fatal::usage(format!("{name}: {e}")))?;
    let (events, summary) = simulate(&p, &trace, a.interval_seconds);
    if a.output == "json" {
        println!("{}", json(&route, &p, &events, &summary));
    } else {
        print!("{}", table(&route, &p, &events, &summary));
    }
    Ok(())
}

fn json(route: &str, p: &Policy, events: &[SimEvent], s: &SimSummary) -> serde_json::Value {
    serde_json::json!({
        "route": route,
        "policy": {
            "target_rps_per_replica": p.target_rps_per_replica,
            "min": p.min,
            "max": p.max,
            "cooldown_seconds": p.cooldown_s,
            "scale_down_stabilisation_seconds": p.stabilisation_s,
        },
        "events": events.iter().map(|e| serde_json::json!({
            "second": e.second,
            "rps": e.rps,
            "from_replicas": e.decision.from,
            "to_replicas": e.decision.to,
            "reason": e.decision.reason,
        })).collect::<Vec<_>>(),
        "summary": {
            "seconds": s.seconds,
            "peak_replicas": s.peak_replicas,
            "under_provisioned_seconds": s.under_provisioned_seconds,
            "events": s.events,
        },
    })
}

fn table(route: &str, p: &Policy, events: &[SimEvent], s: &SimSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "route {route}: target {} rps per replica, min {}, max {}, cooldown {} s, scale-down stabilisation {} s",
        p.target_rps_per_replica, p.min, p.max, p.cooldown_s, p.stabilisation_s
    );
    let _ = writeln!(
        out,
        "{:>8}  {:>10}  {:>4}  {:>4}  reason",
        "second", "rps", "from", "to"
    );
    for e in events {
        let _ = writeln!(
            out,
            "{:>8}  {:>10.1}  {:>4}  {:>4}  {}",
            e.second, e.rps, e.decision.from, e.decision.to, e.decision.reason
        );
    }
    let pct = if s.seconds == 0 {
        0.0
    } else {
        s.under_provisioned_seconds as f64 * 100.0 / s.seconds as f64
    };
    let _ = writeln!(
        out,
        "summary: {} s replayed, peak replicas {}, seconds under-provisioned {} ({pct:.1} %), events {}",
        s.seconds, s.peak_replicas, s.under_provisioned_seconds, s.events
    );
    out
}
