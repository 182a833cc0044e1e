#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP framing abuse against the real proxy, over raw TCP.

mod common;

use common::stack;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(base: &str, data: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.write_all(data).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_lines(resp: &str) -> Vec<&str> {
    resp.lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_abuse_is_refused() {
    let s = stack().start().await;
    let t = s.tenant("framing", "pro").await;
    let (key, _) = s.key(&t, "admin").await;
    let proxy = s.proxy.clone();
    let k = key.clone();
    let results = tokio::task::spawn_blocking(move || {
        let smuggle = format!(
            "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-Tenant-Id: evil\r\n\r\n"
        );
        let big = format!(
            "GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100_000)
        );
        let dup_cl = format!(
            "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
        );
        let space = format!("GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-Tenant-Id : evil\r\nX-API-Key: {k}\r\n\r\n");
        let dots = format!("GET /api/v1/../../admin HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\n\r\n");
        let encoded = format!("GET /api/v1/%2e%2e/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\n\r\n");
        let fold = format!("GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nX-Foo: a\r\n X-Tenant-Id: evil\r\n\r\n");
        [smuggle, big, dup_cl, space, dots, encoded, fold].map(|r| raw(&proxy, r.as_bytes()))
    })
    .await
    .unwrap();
    let [smuggle, big, dup_cl, space, dots, encoded, fold] = results;

    // CL + TE: at most one response; the smuggled request is never answered.
    assert!(status_lines(&smuggle).len() <= 1, "{smuggle}");
    assert!(!smuggle.contains("\"tenant_id\":\"evil\""), "{smuggle}");
    // Oversized header section: 431 in the JSON shape (or refused by the HTTP layer).
    assert!(
        big.starts_with("HTTP/1.1 431") && big.contains("headers_too_large")
            || big.starts_with("HTTP/1.1 400"),
        "{big}"
    );
    assert!(dup_cl.starts_with("HTTP/1.1 400"), "{dup_cl}");
    assert!(space.starts_with("HTTP/1.1 400"), "{space}");
    assert!(
        dots.starts_with("HTTP/1.1 400") && dots.contains("bad_request"),
        "{dots}"
    );
    assert!(encoded.starts_with("HTTP/1.1 400"), "{encoded}");
    assert!(
        fold.starts_with("HTTP/1.1 400") || !fold.contains("\"tenant_id\":\"evil\""),
        "{fold}"
    );

    // The proxy is still healthy and correct afterwards.
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &key).await;
    assert_eq!((st, v["tenant_id"].as_str()), (200, Some("framing")));
}
