//! `kill -HUP` reloads the routes from the config file (the certificates are
//! covered in `e2e_tls.rs`): new routes serve at once, removed ones are 404, a
//! changed upstream is used by new requests, open connections stay, and a bad file
//! keeps the routes in force with one error line naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, free_port, raw_connect, raw_request, Stack};
use std::time::Duration;

const ROUTES: &str = r#"
[[routes]]
prefix = "/api/v1/"
upstream = "DEMO"
"#;

fn hup(s: &Stack) {
    let pid = s.child.as_ref().unwrap().id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Rewrites the stack's config file with `routes` (DEMO = the demo upstream)
/// instead of the routes it has, everything else unchanged.
fn rewrite_routes(s: &Stack, routes: &str) {
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    let head = text.split("\n[[routes").next().unwrap().to_owned() + "\n";
    let demo = s.demo.trim_start_matches("http://");
    std::fs::write(&s.config_path, head + &routes.replace("DEMO", demo)).unwrap();
}

async fn status(s: &Stack, path: &str, key: &str) -> u16 {
    s.with_key("GET", path, key).await.0
}

/// The status of a GET through the proxy without any credential.
async fn anonymous(s: &Stack, path: &str) -> u16 {
    s.http
        .get(format!("{}{path}", s.proxy))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_keeping_open_connections() {
    let s = common::stack().routes(ROUTES).start().await;
    s.tenant("acme", "enterprise").await;
    let (key, _) = s.key("acme", "admin").await;
    assert_eq!(status(&s, "/api/v1/whoami", &key).await, 200);
    assert_eq!(anonymous(&s, "/api/v1/whoami").await, 401);
    // A keep-alive connection open across the reload.
    let mut conn = raw_connect(&s).await;
    let req = format!("GET /api/v1/whoami HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n");
    assert_eq!(raw_request(&mut conn, &req).await.unwrap().0, 200);

    // A new, longer route: public.
    rewrite_routes(
        &s,
        r#"
[[routes]]
prefix = "/api/v1/"
upstream = "DEMO"

[[routes]]
prefix = "/api/v1/whoami"
upstream = "DEMO"
public = true
"#,
    );
    hup(&s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            anonymous(&s, "/api/v1/whoami").await == 200
        })
        .await
        .is_some(),
        "the new route serves; log:\n{}",
        s.log()
    );
    // The connection opened before the reload keeps working, on the new table.
    let anon = "GET /api/v1/whoami HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(raw_request(&mut conn, anon).await.unwrap().0, 200);
    assert_eq!(raw_request(&mut conn, &req).await.unwrap().0, 200);

    // A route removed by a reload no longer matches; a changed upstream is used.
    let dead = free_port();
    rewrite_routes(
        &s,
        &format!(
            r#"
[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:{dead}"
"#
        ),
    );
    hup(&s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            anonymous(&s, "/api/v1/whoami").await == 401
        })
        .await
        .is_some(),
        "the removed route is gone"
    );
    let (st, body) = s.with_key("GET", "/api/v1/whoami", &key).await;
    assert_eq!(st, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(anonymous(&s, "/other").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_on_sighup_keeps_the_routes_in_force() {
    let s = common::stack().routes(ROUTES).start().await;
    s.tenant("acme", "enterprise").await;
    let (key, _) = s.key("acme", "admin").await;
    assert_eq!(status(&s, "/api/v1/whoami", &key).await, 200);
    assert_eq!(anonymous(&s, "/api/v1/whoami").await, 401);

    let bad = [
        // not an address
        (
            "routes[0].upstream",
            "[[routes]]\nprefix = \"/api/v1/\"\nupstream = \"no such host:x\"\n",
        ),
        // a prefix without its leading slash
        (
            "routes[0].prefix",
            "[[routes]]\nprefix = \"api/\"\nupstream = \"DEMO\"\n",
        ),
        // not TOML at all
        ("line", "[[routes]\nprefix = \n"),
    ];
    for (i, (key_name, routes)) in bad.iter().enumerate() {
        rewrite_routes(&s, routes);
        hup(&s);
        assert!(
            eventually(Duration::from_secs(5), || async {
                s.log().matches("not reloaded; keeping").count() > i
            })
            .await
            .is_some(),
            "no error line for {key_name}; log:\n{}",
            s.log()
        );
        let line = s
            .log()
            .lines()
            .filter(|l| l.contains("not reloaded; keeping"))
            .nth(i)
            .unwrap()
            .to_owned();
        assert!(line.contains(key_name), "{key_name} not named in: {line}");
        assert!(
            line.contains("tenantgate.toml"),
            "file not named in: {line}"
        );
        // The routes in force still serve.
        assert_eq!(status(&s, "/api/v1/whoami", &key).await, 200);
    }
    // The process is still there and a good file is taken again.
    rewrite_routes(&s, &format!("{ROUTES}public = true\n"));
    hup(&s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            anonymous(&s, "/api/v1/whoami").await == 200
        })
        .await
        .is_some(),
        "a good file after bad ones; log:\n{}",
        s.log()
    );
}
