//! Fairness under abuse (`[proxy.fairness]`): a client that keeps being refused
//! is made to wait and finally closed, refusals stay correct, admitted requests
//! and short bursts are untouched, holding is bounded, and SIGTERM still drains.
//! Behaviour only; what it buys under load is measured by benches/load/run.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{raw_connect, raw_request, stack, Stack};
use serde_json::json;
use std::time::{Duration, Instant};

const NO_CREDENTIAL: &str = "GET /api/v1/echo HTTP/1.1\r\nhost: x\r\n\r\n";

fn with_key(key: &str) -> String {
    format!("GET /api/v1/echo HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n")
}

async fn metric(s: &Stack, name: &str) -> f64 {
    common::sample(&s.proxy_metrics().await, name).unwrap_or(0.0)
}

const DELAYED_CONN: &str = "tenantgate_fairness_delayed_total{by=\"connection\"}";
const DELAYED_ADDR: &str = "tenantgate_fairness_delayed_total{by=\"address\"}";
const CLOSED_STREAK: &str = "tenantgate_fairness_closed_total{reason=\"streak\"}";
const CLOSED_HELD: &str = "tenantgate_fairness_closed_total{reason=\"held_cap\"}";

#[tokio::test]
async fn a_connection_that_keeps_being_refused_waits_then_is_closed() {
    let s = stack()
        .extra(
            "[proxy.fairness]\ngrace_refusals = 3\nmax_delay_ms = 200\nclose_after_refusals = 8\nip_refusals_per_second = 0",
        )
        .start()
        .await;
    let mut c = raw_connect(&s).await;
    // The grace: answered as always, no wait.
    for _ in 0..3 {
        let (status, head) = raw_request(&mut c, NO_CREDENTIAL).await.unwrap();
        assert_eq!(status, 401);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    assert_eq!(metric(&s, DELAYED_CONN).await, 0.0);
    // Past it: still answered correctly, but the next request waits 8, 16, 32, 64 ms.
    let started = Instant::now();
    for _ in 3..7 {
        assert_eq!(raw_request(&mut c, NO_CREDENTIAL).await.unwrap().0, 401);
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(8 + 16 + 32), "{waited:?}");
    assert_eq!(metric(&s, DELAYED_CONN).await, 4.0);
    // The eighth in a row is answered, with `connection: close`, and the connection ends.
    let (status, head) = raw_request(&mut c, NO_CREDENTIAL).await.unwrap();
    assert_eq!(status, 401);
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(raw_request(&mut c, NO_CREDENTIAL).await, None);
    assert_eq!(metric(&s, CLOSED_STREAK).await, 1.0);
    // A new connection starts a new streak.
    let mut fresh = raw_connect(&s).await;
    assert_eq!(raw_request(&mut fresh, NO_CREDENTIAL).await.unwrap().0, 401);
}

#[tokio::test]
async fn an_admitted_request_ends_the_streak_so_bursts_are_not_slowed() {
    let s = stack()
        .extra("[proxy.fairness]\ngrace_refusals = 3\nip_refusals_per_second = 0")
        .start()
        .await;
    s.tenant("burst", "enterprise").await;
    let (key, _) = s.key("burst", "developer").await;
    let mut c = raw_connect(&s).await;
    for _ in 0..5 {
        for _ in 0..3 {
            assert_eq!(raw_request(&mut c, NO_CREDENTIAL).await.unwrap().0, 401);
        }
        assert_eq!(raw_request(&mut c, &with_key(&key)).await.unwrap().0, 200);
    }
    assert_eq!(metric(&s, DELAYED_CONN).await, 0.0);
    assert_eq!(metric(&s, DELAYED_ADDR).await, 0.0);
}

#[tokio::test]
async fn a_tenant_flooding_past_its_limit_is_slowed_and_named_while_another_is_served() {
    let s = stack()
        .extra("[proxy.fairness]\ngrace_refusals = 2\nmax_delay_ms = 100")
        .start()
        .await;
    s.tenant("noisy", "free").await;
    s.tenant("quiet", "enterprise").await;
    let (status, v) = s
        .admin(
            "PUT",
            "/v1/tenants/noisy/rate-limit",
            Some(json!({"max_requests": 1, "window_seconds": 60})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (noisy, _) = s.key("noisy", "developer").await;
    let (quiet, _) = s.key("quiet", "developer").await;
    let flood = with_key(&noisy);
    let mut c = raw_connect(&s).await;
    let mut refused = 0;
    for _ in 0..12 {
        let (status, head) = raw_request(&mut c, &flood).await.unwrap();
        if status == 429 {
            refused += 1;
            assert!(head.contains("retry-after:"), "{head}");
        }
    }
    assert!(refused >= 10, "{refused}");
    assert!(metric(&s, DELAYED_CONN).await >= 8.0);
    let text = s.proxy_metrics().await;
    let shed = common::sample(
        &text,
        "tenantgate_proxy_tenant_refusals_shed_total{tenant=\"noisy\"}",
    )
    .unwrap_or(0.0);
    assert!(shed >= 8.0, "{text}");
    assert_eq!(
        common::sample(
            &text,
            "tenantgate_proxy_tenant_refusals_shed_total{tenant=\"quiet\"}"
        ),
        None,
        "{text}"
    );
    // The well-behaved tenant, from the same address, is served as always.
    let mut q = raw_connect(&s).await;
    for _ in 0..20 {
        assert_eq!(raw_request(&mut q, &with_key(&quiet)).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn an_address_flooding_with_new_connections_is_delayed() {
    let s = stack()
        .extra("[proxy.fairness]\nip_refusals_per_second = 5\nmax_delay_ms = 100")
        .start()
        .await;
    let started = Instant::now();
    for _ in 0..30 {
        let mut c = raw_connect(&s).await;
        let (status, _) = raw_request(
            &mut c,
            "GET /api/v1/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(status, 401);
    }
    let delayed = metric(&s, DELAYED_ADDR).await;
    // At most 5 a second go undelayed, and each delayed one waited 100 ms.
    let seconds = started.elapsed().as_secs_f64().ceil();
    assert!(
        delayed >= 30.0 - 5.0 * (seconds + 1.0),
        "{delayed} in {seconds} s"
    );
    assert!(delayed >= 1.0);
}

#[tokio::test]
async fn holding_is_bounded_by_max_held_connections() {
    let s = stack()
        .extra(
            "[proxy.fairness]\ngrace_refusals = 0\nmax_delay_ms = 3000\nmax_held_connections = 2\nip_refusals_per_second = 0",
        )
        .start()
        .await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = raw_connect(&s).await;
        tasks.push(tokio::spawn(async move {
            // Waits of 8, 16, …, 1024 ms: the connections overlap in their waits.
            for i in 0..9 {
                match raw_request(&mut c, NO_CREDENTIAL).await {
                    Some((401, _)) => {}
                    Some((status, _)) => panic!("{status}"),
                    None => return Some(i),
                }
            }
            None
        }));
    }
    let mut peak = 0.0f64;
    while !tasks.iter().all(|t| t.is_finished()) {
        peak = peak.max(metric(&s, "tenantgate_fairness_held_connections").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut closed = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            closed += 1;
        }
    }
    assert!(peak <= 2.0, "held {peak}");
    assert!(
        closed >= 1,
        "some connection found no room to wait and was closed"
    );
    assert!(metric(&s, CLOSED_HELD).await >= 1.0);
}

#[tokio::test]
async fn sigterm_drains_with_held_connections() {
    let mut s = stack()
        .extra(
            "[proxy.fairness]\ngrace_refusals = 0\nmax_delay_ms = 30000\nip_refusals_per_second = 0",
        )
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = raw_connect(&s).await;
        // Eight refusals: the next read waits ~1 s, then ~2 s, …
        for _ in 0..8 {
            assert_eq!(raw_request(&mut c, NO_CREDENTIAL).await.unwrap().0, 401);
        }
        held.push(c);
    }
    assert!(metric(&s, "tenantgate_fairness_held_connections").await >= 1.0);
    let started = Instant::now();
    let status = s.sigterm();
    assert!(status.success(), "{status:?}");
    // grace_period_seconds = 1 in the test stack; the 30 s waits did not hold it up.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn off_means_answered_at_full_speed_forever() {
    let s = stack()
        .extra("[proxy.fairness]\nenabled = false")
        .start()
        .await;
    let mut c = raw_connect(&s).await;
    for _ in 0..300 {
        assert_eq!(raw_request(&mut c, NO_CREDENTIAL).await.unwrap().0, 401);
    }
    assert_eq!(metric(&s, DELAYED_CONN).await, 0.0);
    assert_eq!(metric(&s, DELAYED_ADDR).await, 0.0);
}
