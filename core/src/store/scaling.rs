//! Autoscaling in the store: the proxies' signals (`route_signals`, one row per
//! node and route, replaced at each metering flush), the policy state per route
//! (`scaling_state`) and the decisions (`scaling_events`, append-only, pruned by
//! the lifecycle job).
//!
//! Election: a pass runs in one transaction that first takes
//! `pg_try_advisory_xact_lock(SCALING_LOCK)` on PostgreSQL (a process that does
//! not get it skips the pass: another one is evaluating) and SQLite's write lock.
//! The whole policy state is read and written inside it, so whichever admin
//! process evaluates next goes on exactly where the last one stopped.

use super::{to_u64, Backend, Result, Store, StoreError};
use crate::scaling::{evaluate, Policy, Signals, State};
use sqlx::any::AnyRow;
use sqlx::Row;

/// PostgreSQL advisory lock key of the scaling evaluator ("tgscale!").
pub const SCALING_LOCK: i64 = 0x7467_7363_616c_6521;
/// Signal rows of proxies silent this long are deleted by the lifecycle job.
pub const SIGNALS_KEEP_MS: i64 = 3_600_000;

/// One proxy's reading of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSignalRow {
    pub route: String,
    /// Requests per second × 1000 over the last flush interval.
    pub rps_milli: i64,
    pub in_flight: i64,
    pub p95_us: i64,
    /// Requests in the last flush interval.
    pub requests: i64,
}

/// A stored scaling decision.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingEvent {
    pub id: i64,
    pub at_ms: i64,
    pub route: String,
    pub from_replicas: u32,
    pub to_replicas: u32,
    pub reason: String,
    pub signals: Signals,
}

/// What one route came to in a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteOutcome {
    pub route: String,
    pub replicas: u32,
    pub signals: Signals,
    pub event: Option<ScalingEvent>,
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl Store {
    /// Replaces this node's reading of each route (idempotent: a replayed write
    /// leaves the same rows).
    pub async fn put_route_signals(
        &self,
        node_id: &str,
        at_ms: i64,
        rows: &[RouteSignalRow],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO route_signals (node_id, route, at, rps_milli, in_flight, p95_us, requests) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (node_id, route) DO UPDATE SET at = excluded.at, \
                 rps_milli = excluded.rps_milli, in_flight = excluded.in_flight, \
                 p95_us = excluded.p95_us, requests = excluded.requests",
            )
            .bind(node_id)
            .bind(&r.route)
            .bind(at_ms)
            .bind(r.rps_milli)
            .bind(r.in_flight)
            .bind(r.p95_us)
            .bind(r.requests)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The fleet's signals of `route`: rates and in-flight summed over the
    /// proxies that wrote since `since_ms`, the highest p95.
    pub async fn fleet_signals(&self, route: &str, since_ms: i64) -> Result<Signals> {
        let mut conn = self.pool.acquire().await?;
        Self::fleet_signals_on(&mut conn, route, since_ms).await
    }

    async fn fleet_signals_on(
        conn: &mut sqlx::AnyConnection,
        route: &str,
        since_ms: i64,
    ) -> Result<Signals> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(rps_milli), 0) AS BIGINT) AS rps, \
             CAST(COALESCE(SUM(in_flight), 0) AS BIGINT) AS inf, \
             CAST(COALESCE(MAX(p95_us), 0) AS BIGINT) AS p95, \
             CAST(COUNT(*) AS BIGINT) AS n \
             FROM route_signals WHERE route = $1 AND at >= $2",
        )
        .bind(route)
        .bind(since_ms)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Signals {
            rps: row.try_get::<i64, _>("rps")? as f64 / 1000.0,
            in_flight: to_u64(row.try_get("inf")?),
            p95_ms: row.try_get::<i64, _>("p95")? as f64 / 1000.0,
            proxies: to_u32(row.try_get("n")?),
        })
    }

    /// One evaluation of every policy at `now_ms` over the signals written since
    /// `signals_since_ms`. `None`: another process holds the evaluator this time.
    pub async fn scaling_pass(
        &self,
        policies: &[(String, Policy)],
        now_ms: i64,
        signals_since_ms: i64,
    ) -> Result<Option<Vec<RouteOutcome>>> {
        let mut tx = self.pool.begin().await?;
        match self.backend {
            Backend::Postgres => {
                let ok: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS ok")
                    .bind(SCALING_LOCK)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("ok")?;
                if !ok {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            Backend::Sqlite => {
                // A write first: the transaction holds SQLite's write lock from here.
                sqlx::query("UPDATE scaling_state SET updated_at = updated_at WHERE route = ''")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut out = Vec::with_capacity(policies.len());
        for (route, policy) in policies {
            let signals = Self::fleet_signals_on(&mut tx, route, signals_since_ms).await?;
            let stored: Option<String> =
                sqlx::query("SELECT state FROM scaling_state WHERE route = $1")
                    .bind(route)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("state"))
                    .transpose()?;
            let mut state = match stored.as_deref().map(serde_json::from_str::<State>) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(route, error = %e, "unreadable scaling state: starting over");
                    State::new(policy, now_ms)
                }
                None => State::new(policy, now_ms),
            };
            // No proxy heard from (all down, or none started yet): no data is not
            // zero load, so the policy holds rather than scale down blind.
            let decision = if signals.proxies == 0 {
                None
            } else {
                evaluate(policy, &mut state, &signals, now_ms)
            };
            let json =
                serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO scaling_state (route, state, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (route) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(route)
            .bind(json)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            let event = match decision {
                Some(d) => {
                    let signals_json = serde_json::to_string(&signals)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let id: i64 = sqlx::query(
                        "INSERT INTO scaling_events (at, route, from_replicas, to_replicas, reason, signals) \
                         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    )
                    .bind(now_ms)
                    .bind(route)
                    .bind(i64::from(d.from))
                    .bind(i64::from(d.to))
                    .bind(&d.reason)
                    .bind(signals_json)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("id")?;
                    Some(ScalingEvent {
                        id,
                        at_ms: now_ms,
                        route: route.clone(),
                        from_replicas: d.from,
                        to_replicas: d.to,
                        reason: d.reason,
                        signals,
                    })
                }
                None => None,
            };
            out.push(RouteOutcome {
                route: route.clone(),
                replicas: state.replicas,
                signals,
                event,
            });
        }
        tx.commit().await?;
        Ok(Some(out))
    }

    /// The replicas each route's policy stands at (as the last pass left them).
    pub async fn scaling_replicas(&self) -> Result<Vec<(String, u32)>> {
        let rows = sqlx::query("SELECT route, state FROM scaling_state ORDER BY route")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let route: String = r.try_get("route")?;
            let state: String = r.try_get("state")?;
            if let Ok(s) = serde_json::from_str::<State>(&state) {
                out.push((route, s.replicas));
            }
        }
        Ok(out)
    }

    fn scaling_event_from_row(row: &AnyRow) -> Result<ScalingEvent> {
        let signals: String = row.try_get("signals")?;
        Ok(ScalingEvent {
            id: row.try_get("id")?,
            at_ms: row.try_get("at")?,
            route: row.try_get("route")?,
            from_replicas: to_u32(row.try_get("from_replicas")?),
            to_replicas: to_u32(row.try_get("to_replicas")?),
            reason: row.try_get("reason")?,
            signals: serde_json::from_str(&signals).unwrap_or_default(),
        })
    }

    /// Scaling events with `from_ms <= at < to_ms` (of `route` when given),
    /// oldest first, at most `limit`.
    pub async fn scaling_events(
        &self,
        route: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<ScalingEvent>> {
        const COLS: &str = "id, at, route, from_replicas, to_replicas, reason, signals";
        let rows = match route {
            Some(r) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM scaling_events WHERE route = $1 AND at >= $2 AND at < $3 \
                     ORDER BY at, id LIMIT $4"
                ))
                .bind(r)
                .bind(from_ms)
                .bind(to_ms)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM scaling_events WHERE at >= $1 AND at < $2 \
                     ORDER BY at, id LIMIT $3"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(Self::scaling_event_from_row).collect()
    }
}
