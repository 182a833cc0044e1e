//! Tenant domains: `POST/GET/DELETE /v1/tenants/{id}/domains`; a request whose
//! `Host` is a tenant's domain is that tenant's (another tenant's credential there
//! is 403 `forbidden`), within a second of each change, over the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, raw_connect, raw_request, stack, Stack};
use serde_json::json;
use std::time::Duration;

/// A proxied GET of the echo route with `host` and an API key: the status.
async fn on_host(s: &Stack, host: &str, key: &str) -> u16 {
    let mut c = raw_connect(s).await;
    raw_request(
        &mut c,
        &format!("GET /api/v1/echo HTTP/1.1\r\nhost: {host}\r\nx-api-key: {key}\r\n\r\n"),
    )
    .await
    .unwrap()
    .0
}

#[tokio::test]
async fn a_tenant_domain_admits_only_its_own_tenant() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    s.tenant("globex", "pro").await;
    let (acme, _) = s.key("acme", "developer").await;
    let (globex, _) = s.key("globex", "developer").await;

    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants/acme/domains",
            Some(json!({"domain": "API.Acme.Example."})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["domain"], "api.acme.example");
    assert_eq!(v["tenant_id"], "acme");
    assert!(v["created_at"].is_string());

    // Within a second: globex's key on acme's domain is 403, acme's is served.
    let applied = eventually(Duration::from_secs(1), || async {
        on_host(&s, "api.acme.example", &globex).await == 403
    })
    .await;
    assert!(applied.is_some(), "the domain reached the proxy within 1 s");
    let mut c = raw_connect(&s).await;
    let (status, head) = raw_request(
        &mut c,
        &format!("GET /api/v1/echo HTTP/1.1\r\nhost: API.acme.example:8080\r\nx-api-key: {globex}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "port and case do not matter");
    assert!(head.contains("application/json"));
    assert_eq!(on_host(&s, "api.acme.example", &acme).await, 200);
    // Other hosts are nobody's: both keys work there as before.
    assert_eq!(on_host(&s, "localhost", &globex).await, 200);
    assert_eq!(on_host(&s, "www.acme.example", &globex).await, 200);
    // No credential on the domain is still 401.
    let mut c = raw_connect(&s).await;
    let (status, _) = raw_request(
        &mut c,
        "GET /api/v1/echo HTTP/1.1\r\nhost: api.acme.example\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // Listing (platform and the tenant's own admin), conflicts, validation.
    let (st, v) = s.admin("GET", "/v1/tenants/acme/domains", None).await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["domain"], "api.acme.example");
    for (tenant, domain) in [("acme", "api.acme.example"), ("globex", "API.ACME.EXAMPLE")] {
        let (st, v) = s
            .admin(
                "POST",
                &format!("/v1/tenants/{tenant}/domains"),
                Some(json!({ "domain": domain })),
            )
            .await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(v["error"]["code"], "conflict", "{v}");
    }
    for bad in [
        json!({"domain": "*.acme.example"}),
        json!({"domain": "acme"}),
        json!({"domain": "10.0.0.1"}),
        json!({"domain": "acme.example:443"}),
        json!({"domain": "bücher.example"}),
        json!({"domain": ""}),
        json!({"domain": 7}),
        json!({}),
    ] {
        let (st, v) = s
            .admin("POST", "/v1/tenants/acme/domains", Some(bad.clone()))
            .await;
        assert_eq!(st, 422, "{bad}: {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let (st, _) = s
        .admin(
            "POST",
            "/v1/tenants/nobody/domains",
            Some(json!({"domain": "x.example"})),
        )
        .await;
    assert_eq!(st, 404);

    // Removal: within a second globex's key works there again.
    let (st, _) = s
        .admin(
            "DELETE",
            "/v1/tenants/globex/domains/api.acme.example",
            None,
        )
        .await;
    assert_eq!(st, 404, "not globex's domain");
    let (st, _) = s
        .admin("DELETE", "/v1/tenants/acme/domains/Api.Acme.Example", None)
        .await;
    assert_eq!(st, 204);
    let (st, _) = s
        .admin("DELETE", "/v1/tenants/acme/domains/api.acme.example", None)
        .await;
    assert_eq!(st, 404);
    let removed = eventually(Duration::from_secs(1), || async {
        on_host(&s, "api.acme.example", &globex).await == 200
    })
    .await;
    assert!(
        removed.is_some(),
        "the removal reached the proxy within 1 s"
    );
}

#[tokio::test]
async fn only_the_platform_gives_domains_and_a_deleted_tenant_loses_them() {
    let s = stack().start().await;
    s.tenant("acme", "pro").await;
    s.tenant("globex", "pro").await;
    let (globex, _) = s.key("globex", "developer").await;
    // The tenant's own admin may list but not claim a domain.
    let token = s.tenant_admin_token("acme").await;
    let (st, v) = s
        .admin_as(
            &token,
            "POST",
            "/v1/tenants/acme/domains",
            Some(json!({"domain": "acme.example"})),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = s
        .admin_as(&token, "GET", "/v1/tenants/acme/domains", None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .admin_as(&token, "GET", "/v1/tenants/globex/domains", None)
        .await;
    assert_eq!(st, 404, "another tenant's domains are not visible");

    let (st, _) = s
        .admin(
            "POST",
            "/v1/tenants/acme/domains",
            Some(json!({"domain": "acme.example"})),
        )
        .await;
    assert_eq!(st, 201);
    assert!(eventually(Duration::from_secs(1), || async {
        on_host(&s, "acme.example", &globex).await == 403
    })
    .await
    .is_some());
    // Deleting the tenant frees its domain (in the store and at the proxy).
    let (st, _) = s.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(st, 204);
    assert!(eventually(Duration::from_secs(1), || async {
        on_host(&s, "acme.example", &globex).await == 200
    })
    .await
    .is_some());
    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants/globex/domains",
            Some(json!({"domain": "acme.example"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
}
