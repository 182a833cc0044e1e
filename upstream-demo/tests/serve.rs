#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `serve` over a real socket: answers, then shuts down gracefully.

use tenantgate_core::testing::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: demo\r\n{headers}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serves_until_shutdown() {
    let db = TestDb::sqlite();
    let state = tenantgate_demo::init(&db.url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tenantgate_demo::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    let health = get(addr, "/health", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#"{"status":"ok"}"#), "{health}");
    let whoami = get(addr, "/api/v1/whoami", "x-tenant-id: acme\r\n").await;
    assert!(whoami.starts_with("HTTP/1.1 200"), "{whoami}");
    assert!(whoami.contains(r#""tenant_id":"acme""#), "{whoami}");
    let list = get(addr, "/api/v1/resources", "").await;
    assert!(list.starts_with("HTTP/1.1 400"), "{list}");

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    state.close().await;
    db.cleanup().await;
}
