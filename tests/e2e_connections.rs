//! Connection limits of the proxy's listener: `proxy.max_connections` refuses new
//! connections cheaply while the open ones keep working, and
//! `proxy.keepalive_timeout_seconds` closes idle keep-alive connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, raw_connect as connect, raw_request, stack};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One request on `conn` (no credential: 401); the status, or None when the
/// connection was closed instead.
async fn request(conn: &mut TcpStream) -> Option<u16> {
    raw_request(conn, "GET /api/v1/echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .map(|(status, _)| status)
}

#[tokio::test]
async fn max_connections_refuses_new_connections_and_keeps_the_open_ones() {
    const LIMIT: usize = 4;
    let s = stack().proxy_extra("max_connections = 4").start().await;
    // The harness's HTTP client may keep a pooled connection from its readiness
    // probe: it counts against the limit too.
    let pooled = s.proxy_metric("tenantgate_proxy_open_connections").await as usize;
    assert!(pooled < LIMIT);
    let mut open = Vec::new();
    for _ in pooled..LIMIT {
        let mut c = connect(&s).await;
        assert_eq!(request(&mut c).await, Some(401));
        open.push(c);
    }
    assert_eq!(
        s.proxy_metric("tenantgate_proxy_open_connections").await,
        LIMIT as f64
    );
    // The fourth is accepted by the kernel and closed at once, unanswered.
    let mut extra = connect(&s).await;
    assert_eq!(request(&mut extra).await, None, "refused past the limit");
    assert!(
        s.proxy_metric("tenantgate_proxy_refused_connections_total")
            .await
            >= 1.0
    );
    // The open ones keep working.
    for c in &mut open {
        assert_eq!(request(c).await, Some(401));
    }
    // One closes: a new connection is served again.
    drop(open.pop());
    let served = eventually(Duration::from_secs(5), || async {
        let mut c = connect(&s).await;
        request(&mut c).await == Some(401)
    })
    .await;
    assert!(served.is_some(), "a slot freed by a close is reused");
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_the_timeout() {
    let s = stack()
        .proxy_extra("keepalive_timeout_seconds = 1")
        .start()
        .await;
    let mut c = connect(&s).await;
    assert_eq!(request(&mut c).await, Some(401));
    // A second request right away reuses the connection.
    assert_eq!(request(&mut c).await, Some(401));
    let idle_since = Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was closed by the proxy"
    );
    assert!(idle_since.elapsed() >= Duration::from_millis(900));
}
