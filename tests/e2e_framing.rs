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

/// An upstream that records the head of every request it receives (lowercased),
/// reading bodies by their own framing (Content-Length or chunked).
struct Recorder {
    addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heads.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(conn, h.clone()));
            }
        });
        Recorder { addr, heads }
    }

    fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    fn since(&self, n: usize) -> Vec<String> {
        self.heads.lock().unwrap()[n..].to_vec()
    }

    async fn serve(
        mut conn: tokio::net::TcpStream,
        heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        // Reads until `buf` holds at least `n` bytes; false on EOF.
        macro_rules! fill {
            ($cond:expr) => {
                while !$cond(&buf) {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
        }
        loop {
            fill!(|b: &Vec<u8>| b.windows(4).any(|w| w == b"\r\n\r\n"));
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            let chunked = head
                .lines()
                .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if chunked {
                loop {
                    fill!(|b: &Vec<u8>| b.windows(2).any(|w| w == b"\r\n"));
                    let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
                    let size =
                        usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                            .unwrap_or(0);
                    buf.drain(..line_end + 2);
                    fill!(|b: &Vec<u8>| b.len() >= size + 2);
                    buf.drain(..size + 2);
                    if size == 0 {
                        break;
                    }
                }
            } else {
                fill!(|b: &Vec<u8>| b.len() >= length);
                buf.drain(..length);
            }
            heads.lock().unwrap().push(head);
            let body = b"{\"recorded\":true}";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() || conn.write_all(body).await.is_err()
            {
                return;
            }
        }
    }
}

/// Each framing attack with a valid key on every request it contains: what the
/// upstream received is checked, not just the status line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_attacks_are_decided_by_what_the_upstream_received() {
    let up = Recorder::start().await;
    let s = stack()
        .routes(&format!(
            "[[routes]]\nprefix = \"/api/v1/\"\nupstream = \"{}\"",
            up.addr
        ))
        .start()
        .await;
    let t = s.tenant("framing2", "pro").await;
    let (k, _) = s.key(&t, "admin").await;
    let send = |data: String| {
        let proxy = s.proxy.clone();
        tokio::task::spawn_blocking(move || raw(&proxy, data.as_bytes()))
    };

    // CL + TE, the second half a complete request with a valid key: the proxy and
    // the upstream must agree on where the first request ends.
    let before = up.count();
    let smuggle = send(format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nX-Tenant-Id: evil\r\n\r\n"
    ))
    .await
    .unwrap();
    let seen = up.since(before);
    let answered_ok = status_lines(&smuggle)
        .iter()
        .filter(|l| l.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(
        seen.len(),
        answered_ok,
        "the upstream saw as many requests as the client got answers: {seen:?}\n{smuggle}"
    );
    for head in &seen {
        assert!(
            !(head.contains("\r\ncontent-length:") && head.contains("\r\ntransfer-encoding:")),
            "a request reached the upstream with both framings: {head}"
        );
        assert!(!head.contains("x-tenant-id: evil"), "{head}");
    }
    let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap()).collect();
    let expected = ["post /api/v1/echo http/1.1", "get /api/v1/whoami http/1.1"];
    assert!(
        lines.len() <= 2 && lines.iter().zip(expected).all(|(l, e)| *l == e),
        "requests reached the upstream in the client's order, none hidden in a body: {lines:?}"
    );

    // Header sections the parser refuses: a JSON 400 in the contract's shape, and
    // nothing reaches the upstream.
    for (name, attack) in [
        (
            "duplicate Content-Length",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ),
        (
            "space before the colon",
            format!("GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-Tenant-Id : evil\r\nX-API-Key: {k}\r\n\r\n"),
        ),
        (
            "obs-fold",
            format!("GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\nX-Foo: a\r\n X-Tenant-Id: evil\r\n\r\n"),
        ),
    ] {
        let before = up.count();
        let resp = send(attack).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{name}: {resp}");
        assert!(
            resp.contains("\"code\":\"bad_request\"") && resp.contains("\"request_id\""),
            "{name}: the contract's JSON shape: {resp}"
        );
        assert!(!resp.to_ascii_lowercase().contains("server: pingora"), "{name}: {resp}");
        assert_eq!(up.count(), before, "{name}: nothing reached the upstream");
    }
    let metrics = s.proxy_metrics().await;
    assert!(
        metrics.contains("tenantgate_proxy_malformed_requests_total 3"),
        "{metrics}"
    );

    // And a normal request still goes through, once.
    let before = up.count();
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &k).await;
    assert_eq!((st, v["recorded"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(up.count(), before + 1);
}
