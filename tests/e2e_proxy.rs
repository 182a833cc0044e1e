#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The hot path end to end through the real binary (`tenantgate up`).

mod common;

use common::{eventually, stack};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_path_scrubs_injects_and_isolates_tenants() {
    let s = stack().start().await;
    let a = s.tenant("acme", "pro").await;
    let b = s.tenant("globex", "pro").await;
    let (ka, ka_id) = s.key(&a, "developer").await;
    let (kb, _) = s.key(&b, "developer").await;
    let (kro, _) = s.key(&a, "read_only").await;

    // whoami: injected identity; spoofed identity headers never reach the upstream.
    let (st, h, v) = s
        .call(
            "GET",
            "/api/v1/whoami",
            &[
                ("x-api-key", &ka),
                ("x-tenant-id", "globex"),
                ("X-Tenant-Role", "admin"),
                ("x-user-id", "root"),
                ("x-auth-method", "magic"),
                ("x-api-key-id", "forged"),
                ("x-tenant-assertion", "forged"),
                ("x-request-id", "req-e2e-1"),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["role"], "developer");
    assert_eq!(v["auth_method"], "api_key");
    assert_eq!(v["api_key_id"], ka_id.as_str());
    assert_eq!(v["request_id"], "req-e2e-1");
    let seen = v["headers"].as_object().unwrap();
    // The client's copy is gone; what arrives is the proxy's own signed assertion.
    assert_ne!(seen["x-tenant-assertion"], "forged", "{v}");
    assert_eq!(
        seen["x-tenant-assertion"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    assert!(
        !seen.contains_key("x-api-key"),
        "the secret must not reach the upstream: {v}"
    );
    assert_eq!(seen["x-tenant-id"], "acme");
    assert_eq!(h.get("x-request-id").unwrap(), "req-e2e-1");
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(h.contains_key(name), "missing {name}");
    }

    // Bearer tg_… is an API key too.
    let (st, _, v) = s
        .call(
            "GET",
            "/api/v1/whoami",
            &[("authorization", &format!("Bearer {kb}"))],
            None,
        )
        .await;
    assert_eq!((st, v["tenant_id"].as_str()), (200, Some("globex")));

    // Create as acme; globex can neither read, update nor delete it.
    let (st, _, created) = s
        .call(
            "POST",
            "/api/v1/resources",
            &[("x-api-key", &ka)],
            Some(json!({"name": "doc", "data": {"x": 1}})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/resources/{id}");
    assert_eq!(s.with_key("GET", &path, &ka).await.0, 200);
    assert_eq!(s.with_key("GET", &path, &kb).await.0, 404);
    assert_eq!(s.with_key("DELETE", &path, &kb).await.0, 404);
    let (st, _, _) = s
        .call(
            "PUT",
            &path,
            &[("x-api-key", &kb)],
            Some(json!({"name": "pwned"})),
        )
        .await;
    assert_eq!(st, 404);
    let (_, list_b) = s.with_key("GET", "/api/v1/resources", &kb).await;
    assert_eq!(list_b.as_array().unwrap().len(), 0);
    // Spoofing the tenant header does not help either.
    let (st, _, _) = s
        .call(
            "GET",
            &path,
            &[("x-api-key", &kb), ("x-tenant-id", "acme")],
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (_, still) = s.with_key("GET", &path, &ka).await;
    assert_eq!(still["name"], "doc");

    // read_only reads but cannot write.
    assert_eq!(s.with_key("GET", &path, &kro).await.0, 200);
    let (st, _, v) = s
        .call(
            "POST",
            "/api/v1/resources",
            &[("x-api-key", &kro)],
            Some(json!({"name": "no"})),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(v["error"]["code"], "forbidden");
    assert!(v["error"]["request_id"].is_string());
    assert_eq!(s.with_key("DELETE", &path, &kro).await.0, 403);
    assert_eq!(s.with_key("DELETE", &path, &ka).await.0, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_follow_the_contract() {
    let s = stack().start().await;
    let t = s.tenant("errs", "free").await;
    let (k, _) = s.key(&t, "developer").await;

    let (st, h, v) = s.call("GET", "/api/v1/whoami", &[], None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    // a well-formed but unknown key, a malformed key, a revoked prefix
    let fake = tenantgate_core::secrets::generate_api_key().key;
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &fake).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (st, v) = s.with_key("GET", "/api/v1/whoami", "tg_nope").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    // One character of the secret changed (to one it is not already).
    let last = if k.ends_with('X') { 'Y' } else { 'X' };
    let tampered = format!("{}{last}", &k[..k.len() - 1]);
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &tampered).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (st, _, v) = s
        .call(
            "GET",
            "/api/v1/whoami",
            &[("authorization", "Bearer not.a.jwt")],
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    // two different credentials
    let (st, _, _) = s
        .call(
            "GET",
            "/api/v1/whoami",
            &[("authorization", "Bearer a.b.c"), ("x-api-key", &k)],
            None,
        )
        .await;
    assert_eq!(st, 401);
    // no route
    let (st, _, v) = s
        .call("GET", "/nothing/here", &[("x-api-key", &k)], None)
        .await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("no_route")));

    // The connection survives a 401 (keep-alive): many rejections on one client.
    for _ in 0..20 {
        assert_eq!(s.call("GET", "/api/v1/whoami", &[], None).await.0, 401);
    }

    // Suspended tenant, then active again.
    let (st, _) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{t}"),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(st, 200);
    let took = eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.1["error"]["code"] == "tenant_suspended"
    })
    .await;
    assert!(took.is_some(), "suspension not effective within 1 s");
    s.admin(
        "PATCH",
        &format!("/v1/tenants/{t}"),
        Some(json!({"status": "active"})),
    )
    .await;
    assert!(eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.0 == 200
    })
    .await
    .is_some());

    // Deleted tenant: its keys stop working.
    assert_eq!(
        s.admin("DELETE", &format!("/v1/tenants/{t}"), None).await.0,
        204
    );
    assert!(eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.0 == 401
    })
    .await
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_rotation_and_policy_changes_apply_within_a_second() {
    let s = stack().start().await;
    let t = s.tenant("rev", "pro").await;
    let (k, kid) = s.key(&t, "developer").await;
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &k).await.0, 200);

    // Policy: developer loses read on everything.
    let (st, v) = s
        .admin(
            "PUT",
            &format!("/v1/tenants/{t}/policies/developer"),
            Some(json!({"permissions": [{"action": "create", "resource": "resources"}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let took = eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.0 == 403
    })
    .await;
    assert!(took.is_some(), "policy change not effective within 1 s");
    s.admin(
        "PUT",
        &format!("/v1/tenants/{t}/policies/developer"),
        Some(json!({"permissions": [{"action": "*", "resource": "*"}]})),
    )
    .await;
    assert!(eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.0 == 200
    })
    .await
    .is_some());

    // Rotation with grace: both work, then revoke the new one.
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys/{kid}/rotate"),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let k2 = v["key"].as_str().unwrap().to_owned();
    let k2_id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &k).await.0, 200);
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &k2).await.0, 200);

    let (st, _) = s
        .admin("DELETE", &format!("/v1/tenants/{t}/api-keys/{k2_id}"), None)
        .await;
    assert_eq!(st, 204);
    let took = eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k2).await.1["error"]["code"] == "invalid_api_key"
    })
    .await;
    assert!(took.is_some(), "revocation not effective within 1 s");

    // Rotation without grace: the old key dies at once.
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys/{kid}/rotate"),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert!(eventually(Duration::from_secs(1), || async {
        s.with_key("GET", "/api/v1/whoami", &k).await.0 == 401
    })
    .await
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_then_other_tenant_unaffected() {
    let s = stack().start().await;
    let a = s.tenant("busy", "free").await;
    let b = s.tenant("calm", "free").await;
    let (ka, _) = s.key(&a, "developer").await;
    let (kb, _) = s.key(&b, "developer").await;
    let (st, v) = s
        .admin(
            "PUT",
            &format!("/v1/tenants/{a}/rate-limit"),
            Some(json!({"max_requests": 5, "window_seconds": 60})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // wait for the change to reach the proxy's cache
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            s.call("GET", "/api/v1/whoami", &[("x-api-key", &ka)], None)
                .await,
        );
    }
    let statuses: Vec<u16> = codes.iter().map(|c| c.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "{statuses:?}");
    let (_, h, v) = &codes[5];
    assert_eq!(v["error"]["code"], "rate_limited");
    let retry: u64 = h
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(h.get("ratelimit-remaining").unwrap(), "0");
    assert_eq!(codes[4].1.get("ratelimit-remaining").unwrap(), "0");
    assert_eq!(codes[0].1.get("ratelimit-limit").unwrap(), "5");
    // the other tenant is unaffected
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &kb).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_usage_is_metered() {
    let mut s = stack().start().await;
    let t = s.tenant("meter", "pro").await;
    let (k, _) = s.key(&t, "developer").await;
    let (kro, _) = s.key(&t, "read_only").await;
    for _ in 0..7 {
        assert_eq!(s.with_key("GET", "/api/v1/whoami", &k).await.0, 200);
    }
    for _ in 0..3 {
        let (st, _, _) = s
            .call(
                "POST",
                "/api/v1/resources",
                &[("x-api-key", &kro)],
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(st, 403);
    }
    let status = s.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );

    // Restart on the same data: the usage is there, exactly.
    let dir = s.dir.clone();
    drop(s);
    let s2 = stack().dir(dir).start().await;
    let (st, v) = s2
        .admin(
            "GET",
            &format!("/v1/tenants/{t}/usage?granularity=day"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["totals"]["requests"], 10, "{v}");
    assert_eq!(v["totals"]["denied"], 3, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peppered_keys_verify_through_the_proxy() {
    // With a pepper the stored digest is HMAC-SHA-256: the admin API writes it, the
    // proxy (keyed once at startup) must compute the same one per request.
    let s = stack()
        .extra("[security]\napi_key_pepper = \"e2e-pepper-0123456789abcdef\"")
        .start()
        .await;
    let t = s.tenant("peppered", "free").await;
    let (key, key_id) = s.key(&t, "developer").await;
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &key).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], t.as_str());
    assert_eq!(v["api_key_id"], key_id.as_str());
    // Same prefix, one character of the secret changed: refused.
    let last = key.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &forged).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");
}

/// Identity headers spelled with `_` (read as `-` by nginx, CGI, WSGI, Rack) and
/// method-override headers are scrubbed like the plain spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_and_method_overrides_never_reach_the_upstream() {
    let s = stack().start().await;
    let a = s.tenant("under", "pro").await;
    s.tenant("victim", "pro").await;
    let (key, _) = s.key(&a, "developer").await;
    let (st, _, v) = s
        .call(
            "GET",
            "/api/v1/whoami",
            &[
                ("x-api-key", &key),
                ("x_tenant_id", "victim"),
                ("X_Tenant-Id", "victim"),
                ("x-tenant_role", "admin"),
                ("x_user_id", "root"),
                ("x_auth_method", "magic"),
                ("x_api_key_id", "forged"),
                ("x_tenant_assertion", "forged"),
                ("x-http-method-override", "DELETE"),
                ("x_http_method_override", "DELETE"),
                ("x-http-method", "DELETE"),
                ("x-method-override", "DELETE"),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], "under");
    let seen = v["headers"].as_object().unwrap();
    for name in seen.keys() {
        let canon = name.replace('_', "-");
        assert!(
            !canon.contains("override") && canon != "x-http-method",
            "a method override reached the upstream: {v}"
        );
        assert_eq!(
            name, &canon,
            "an underscore spelling reached the upstream: {v}"
        );
    }
    assert_eq!(seen["x-tenant-id"], "under");
    assert_eq!(seen["x-tenant-role"], "developer");

    // RBAC decides on the real method: a read-only key may not POST by claiming GET.
    let (kro, _) = s.key(&a, "read_only").await;
    let (st, _, v) = s
        .call(
            "POST",
            "/api/v1/resources",
            &[("x-api-key", &kro), ("x-http-method-override", "GET")],
            Some(serde_json::json!({"name": "x"})),
        )
        .await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
}

/// Forwarding headers are the proxy's own unless the peer is a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_the_proxys_unless_the_peer_is_trusted() {
    let spoofed: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=6.6.6.6;host=evil.example"),
    ];
    let s = stack().start().await;
    let t = s.tenant("fwd", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    let mut hs = vec![("x-api-key", key.as_str())];
    hs.extend_from_slice(spoofed);
    let (st, _, v) = s.call("GET", "/api/v1/whoami", &hs, None).await;
    assert_eq!(st, 200, "{v}");
    let seen = &v["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{v}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{v}");
    let host = seen["x-forwarded-host"].as_str().unwrap();
    assert!(host.starts_with("127.0.0.1:"), "{v}");

    // Behind a trusted proxy (here: loopback) its headers stay and it is appended.
    let s = stack()
        .proxy_extra("trusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let t = s.tenant("fwd", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    let mut hs = vec![("x-api-key", key.as_str())];
    hs.extend_from_slice(spoofed);
    let (st, _, v) = s.call("GET", "/api/v1/whoami", &hs, None).await;
    assert_eq!(st, 200, "{v}");
    let seen = &v["headers"];
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{v}");
    assert_eq!(seen["x-forwarded-host"], "evil.example", "{v}");
    assert_eq!(seen["x-forwarded-proto"], "https", "{v}");
}

/// The path is normalised before it is matched, and the upstream gets the path
/// that was matched: `//api/…` and `/%61pi/…` cannot slip past a protected prefix
/// through a public catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarded_as_routed() {
    let s = stack()
        .routes(
            "[[routes]]\nprefix = \"/\"\nupstream = \"DEMO\"\npublic = true\n\
             [[routes]]\nprefix = \"/api/\"\nupstream = \"DEMO\"",
        )
        .start()
        .await;
    let t = s.tenant("norm", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    for sneaky in [
        "//api/v1/whoami",
        "/%61pi/v1/whoami",
        "/api//v1/whoami",
        "/%61%70%69/v1/whoami",
    ] {
        let (st, _, v) = s.call("GET", sneaky, &[], None).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{sneaky} must reach the protected route: {v}"
        );
        let (st, _, v) = s.call("GET", sneaky, &[("x-api-key", &key)], None).await;
        assert_eq!(st, 200, "{sneaky}: {v}");
        assert_eq!(
            v["path"], "/api/v1/whoami",
            "{sneaky}: the upstream got {v}"
        );
        assert_eq!(v["tenant_id"], "norm");
    }
    // The query string survives, escapes other than unreserved ones stay encoded.
    let (st, _, v) = s
        .call(
            "GET",
            "//api/v1/whoami?a=%2F&b=1",
            &[("x-api-key", &key)],
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "/api/v1/whoami");
    assert_eq!(v["query"], "a=%2F&b=1");
    // A broken escape is refused, never guessed at (decoded dot segments are
    // refused too: e2e_framing sends them raw, as an HTTP client would not).
    for bad in ["/api/v1/%zz", "/%zz/api/v1/whoami"] {
        let (st, _, v) = s.call("GET", bad, &[("x-api-key", &key)], None).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {v}"
        );
    }
}
