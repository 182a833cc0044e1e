//! `[proxy] header_timeout_ms`: a header section trickled byte by byte is cut off
//! at the deadline, counted from its first byte; slow bodies and idle kept-alive
//! connections are not affected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::stack;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(proxy: &str) -> TcpStream {
    TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Trickles header lines every 200 ms for up to `for_at_most`; returns how long
/// the proxy let it go on before closing (None: it never closed).
async fn trickle(conn: &mut TcpStream, for_at_most: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < for_at_most {
        if conn.write_all(b"x-slow: 1\r\n").await.is_err() {
            return Some(start.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            // Anything the proxy sends here ends the test's header section too.
            Ok(Ok(_)) => return Some(start.elapsed()),
            Err(_) => {}
        }
    }
    None
}

async fn read_response(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn trickled_headers_are_cut_off_but_slow_bodies_and_idle_connections_are_not() {
    let s = stack()
        .proxy_extra("header_timeout_ms = 1000")
        .start()
        .await;
    s.tenant("acme", "pro").await;
    let (key, _) = s.key("acme", "admin").await;

    // A header section trickled line by line: each read is quick, the whole is not.
    let mut conn = connect(&s.proxy).await;
    conn.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = trickle(&mut conn, Duration::from_secs(8)).await;
    let took = closed.expect("the proxy closed the slow connection");
    assert!(
        took >= Duration::from_millis(700),
        "not before the deadline: {took:?}"
    );

    // A slow body after complete headers goes through.
    let mut conn = connect(&s.proxy).await;
    let head = format!(
        "POST /api/v1/echo HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/octet-stream\r\ncontent-length: 6\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for b in b"abcdef" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write_all(&[*b]).await.unwrap();
    }
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"body_len\":6"), "{resp}");

    // Idle longer than the deadline on a kept-alive connection, then a request:
    // the deadline counts from the request's first byte.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let get = format!("GET /api/v1/whoami HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n");
    conn.write_all(get.as_bytes()).await.unwrap();
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // The next request on the same connection is timed again.
    conn.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(
        trickle(&mut conn, Duration::from_secs(8)).await.is_some(),
        "the second slow header section is cut off too"
    );

    let metrics = s.proxy_metrics().await;
    assert!(
        metrics.contains("tenantgate_proxy_header_timeouts_total 2"),
        "{metrics}"
    );
}
