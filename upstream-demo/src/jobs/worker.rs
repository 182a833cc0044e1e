//! The job worker: claims due jobs from the queue and runs each attempt as the
//! tenant, user and request that submitted it.
//!
//! * Context: every attempt runs inside a `job` span with `job_id`, `kind`,
//!   `tenant_id`, `user_id`, `request_id` and `attempt`, and reads and writes
//!   through [`crate::tenancy::Tenancy::begin`] for the job's tenant (its schema on
//!   PostgreSQL). The tenant comes from the job row, written from the trusted
//!   header when the job was submitted; nothing in the params can change it.
//! * Leases: a claim holds the job for [`LEASE_MS`], renewed every
//!   [`HEARTBEAT`] while the attempt runs. When a process dies, its jobs' leases
//!   run out and any worker (the restarted process, or another of the fleet)
//!   claims them again: queued and running jobs survive a restart.
//! * Retries: a failed attempt is queued again after [`backoff_ms`] (exponential:
//!   0.5 s, 1 s, 2 s, … capped at a minute) until `max_attempts`, then the job is
//!   `failed` with its last error.

use super::queue::{self, JobRecord, Outcome};
use super::{Kind, Params};
use crate::repo::{self, JobOutput};
use crate::tenancy::TenancyError;
use crate::DemoState;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tenantgate_core::time::now_ms;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

/// How long a claim holds a job without a heartbeat.
pub const LEASE_MS: i64 = 5_000;
/// How often a running attempt renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often an idle worker looks for due jobs (a submission in this process
/// wakes it at once).
pub const POLL: Duration = Duration::from_millis(250);
/// First retry delay; doubled for each further attempt.
pub const BACKOFF_BASE_MS: i64 = 500;
pub const BACKOFF_MAX_MS: i64 = 60_000;
/// Attempts running at once in one process.
pub const CONCURRENCY: usize = 4;
/// After a stop, how long running attempts get to finish; the rest are handed
/// back to the queue (due at once, the interrupted attempt not counted), so the
/// next process to start runs them without waiting for their leases.
const DRAIN: Duration = Duration::from_secs(5);

/// The attempts this worker is running: job id → lease token.
type Active = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

fn set_active(active: &Active, id: &str, token: Option<&str>) {
    let mut map = match active.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    match token {
        Some(t) => map.insert(id.to_owned(), t.to_owned()),
        None => map.remove(id),
    };
}

/// The delay before the attempt after `attempt` (1-based): 0.5 s · 2^(attempt-1).
pub fn backoff_ms(attempt: i64) -> i64 {
    let shift = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    BACKOFF_BASE_MS
        .saturating_mul(1i64 << shift)
        .min(BACKOFF_MAX_MS)
}

/// Runs the worker until `stop` turns true (or its sender is dropped).
pub async fn run(state: DemoState, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let active: Active = Default::default();
    let notify = state.jobs_notify().clone();
    tracing::debug!("job worker started");
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let token = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let claimed = match queue::any_due(state.pool(), now).await {
            Ok(true) => {
                queue::claim(
                    state.pool(),
                    state.tenancy().backend(),
                    &token,
                    now,
                    LEASE_MS,
                )
                .await
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Some(job)) => {
                let state = state.clone();
                // At ERROR level so that the span (and its tenant fields) is on every
                // log line of the job whatever level the log is filtered at.
                let span = tracing::error_span!(
                    "job",
                    job_id = %job.id,
                    kind = %job.kind,
                    tenant_id = %job.tenant_id,
                    user_id = job.user_id.as_deref().unwrap_or(""),
                    request_id = %job.request_id,
                    attempt = job.attempts,
                );
                let active = active.clone();
                set_active(&active, &job.id, Some(&token));
                tokio::spawn(
                    async move {
                        attempt(&state, &job, &token).await;
                        set_active(&active, &job.id, None);
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = notify.notified() => {}
                    _ = stop.changed() => break,
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "job worker cannot claim jobs");
                tokio::select! {
                    _ = tokio::time::sleep(POLL * 4) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    // Let running attempts finish (or leave them to their leases).
    let all = u32::try_from(CONCURRENCY).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
    if drained.is_err() {
        let left: Vec<(String, String)> = match active.lock() {
            Ok(m) => m.clone().into_iter().collect(),
            Err(p) => p.into_inner().clone().into_iter().collect(),
        };
        for (id, token) in left {
            match queue::release(state.pool(), &id, &token, now_ms()).await {
                Ok(true) => {
                    tracing::info!(job_id = %id, "job handed back to the queue at shutdown")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "job not handed back; its lease will run out")
                }
            }
        }
    }
    tracing::debug!("job worker stopped");
}

/// One attempt of `job`, held under `token`, with its lease renewed meanwhile.
async fn attempt(state: &DemoState, job: &JobRecord, token: &str) {
    let params = Params::from_stored(&job.params);
    if job.attempts > job.max_attempts {
        // Claimed again after its last attempt was interrupted.
        let outcome = Outcome::Failed {
            error: "the last attempt was interrupted (its worker stopped)",
            attempts: job.max_attempts,
        };
        record(state, job, token, &outcome).await;
        tracing::warn!("job failed: its last attempt was interrupted");
        return;
    }
    tracing::info!("job attempt started");
    let result = tokio::select! {
        r = execute(state, job, &params) => Some(r),
        () = keep_lease(state, &job.id, token) => None,
    };
    let Some(result) = result else {
        tracing::warn!("job attempt abandoned: its lease was lost");
        return;
    };
    match result {
        Ok(value) => {
            if record(state, job, token, &Outcome::Succeeded(&value)).await {
                tracing::info!("job succeeded");
            }
        }
        Err(error) if job.attempts < job.max_attempts => {
            let delay = backoff_ms(job.attempts);
            let outcome = Outcome::Retry {
                error: &error,
                run_at: now_ms().saturating_add(delay),
            };
            if record(state, job, token, &outcome).await {
                tracing::warn!(error = %error, retry_in_ms = delay, "job attempt failed; retrying");
            }
        }
        Err(error) => {
            let outcome = Outcome::Failed {
                error: &error,
                attempts: job.attempts,
            };
            if record(state, job, token, &outcome).await {
                tracing::warn!(error = %error, "job failed after its last attempt");
            }
        }
    }
}

/// Writes the outcome; false when the lease was lost or the store failed (the
/// lease then runs out and the job is attempted again).
async fn record(state: &DemoState, job: &JobRecord, token: &str, outcome: &Outcome<'_>) -> bool {
    match queue::finish(state.pool(), &job.id, token, outcome, now_ms()).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!("job outcome dropped: another worker holds the job now");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "job outcome not recorded; the job will run again");
            false
        }
    }
}

/// Renews the lease every [`HEARTBEAT`]; returns only when it was lost.
async fn keep_lease(state: &DemoState, id: &str, token: &str) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match queue::extend(state.pool(), id, token, now_ms().saturating_add(LEASE_MS)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "job lease not renewed"),
        }
    }
}

/// The work of one attempt: the test knobs, then the kind's work as the tenant.
async fn execute(state: &DemoState, job: &JobRecord, params: &Params) -> Result<Value, String> {
    if params.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(params.sleep_ms.unsigned_abs())).await;
    }
    if job.attempts <= params.fail_times {
        return Err(format!(
            "simulated failure of attempt {} (params.fail_times = {})",
            job.attempts, params.fail_times
        ));
    }
    let kind = Kind::parse(&job.kind).ok_or_else(|| format!("unknown job kind {:?}", job.kind))?;
    let body = tenant_work(state, job, kind, params)
        .await
        .map_err(|e| match e {
            TenancyError::BadTenant => "the job's tenant id cannot name a tenant schema".to_owned(),
            TenancyError::Store(e) => format!("store error: {e}"),
        })?;
    let mut result = json!({
        "job_id": job.id,
        "kind": kind.as_str(),
        "tenant_id": job.tenant_id,
        "user_id": job.user_id,
        "request_id": job.request_id,
        "schema": state.tenancy().schema_of(&job.tenant_id),
    });
    if let (Value::Object(r), Value::Object(b)) = (&mut result, body) {
        r.extend(b);
    }
    // What the job wrote, in the tenant's own tables.
    let mut tx = state
        .tenancy()
        .begin(&job.tenant_id)
        .await
        .map_err(|e| e.to_string())?;
    let output = JobOutput {
        job_id: &job.id,
        tenant_id: &job.tenant_id,
        kind: kind.as_str(),
        user_id: job.user_id.as_deref(),
        request_id: &job.request_id,
        output: &result,
    };
    repo::save_output(&mut tx, &output)
        .await
        .map_err(|e| format!("store error: {e}"))?;
    tx.commit().await.map_err(|e| format!("store error: {e}"))?;
    Ok(result)
}

/// Reads the tenant's resources inside its transaction.
async fn tenant_work(
    state: &DemoState,
    job: &JobRecord,
    kind: Kind,
    params: &Params,
) -> Result<Value, TenancyError> {
    let tenant = job.tenant_id.as_str();
    let mut tx = state.tenancy().begin(tenant).await?;
    let count = repo::count(&mut tx, tenant).await?;
    let body = match kind {
        Kind::Export => {
            let rows = repo::list(&mut tx, tenant, params.limit, 0).await?;
            json!({
                "count": count,
                "exported": rows.len(),
                "resources": rows,
            })
        }
        Kind::Report => {
            let mut owners = Map::new();
            for (owner, n) in repo::count_by_owner(&mut tx, tenant).await? {
                owners.insert(owner.unwrap_or_default(), json!(n));
            }
            json!({
                "count": count,
                "by_owner": owners,
            })
        }
    };
    tx.commit().await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 500);
        assert_eq!(backoff_ms(2), 1_000);
        assert_eq!(backoff_ms(3), 2_000);
        assert_eq!(backoff_ms(8), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(i64::MAX), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(0), 500);
    }
}
