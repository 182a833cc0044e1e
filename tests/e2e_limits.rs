#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Keys, limits, quotas through the real binary: a key's own rate limit beside its
//! tenant's (local and Redis limiters), the structured RateLimit fields, quotas per
//! UTC day (exact, surviving a restart), key scopes, key expiry, and IP allow-lists
//! on keys and tenants (behind a trusted proxy too).

mod common;

use common::{eventually, stack, Stack};
use serde_json::json;
use std::time::Duration;

fn redis_config(url: &str) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\nkey_prefix = \"tg-test-{}\"\n[ratelimit]\nbackend = \"redis\"\nfail_mode = \"closed\"\n",
        tenantgate_core::secrets::random_token(6).to_ascii_lowercase()
    )
}

/// Sends `n` GETs with `key`; returns the statuses and the last response.
async fn burst(
    s: &Stack,
    key: &str,
    n: usize,
) -> (Vec<u16>, reqwest::header::HeaderMap, serde_json::Value) {
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..n {
        let (st, h, v) = s
            .call("GET", "/api/v1/whoami", &[("x-api-key", key)], None)
            .await;
        statuses.push(st);
        last = Some((h, v));
    }
    let (h, v) = last.unwrap();
    (statuses, h, v)
}

async fn key_limit_applies_beside_the_tenants(s: Stack) {
    let t = s.tenant("keylim", "pro").await;
    let (limited, limited_id) = s.key(&t, "developer").await;
    let (free, _) = s.key(&t, "developer").await;
    let path = format!("/v1/tenants/{t}/api-keys/{limited_id}/rate-limit");
    // No limit of its own yet.
    let (st, v) = s.admin("GET", &path, None).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s
        .admin(
            "PUT",
            &path,
            Some(json!({"max_requests": 3, "window_seconds": 60})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"max_requests": 3, "window_seconds": 60}));
    let (st, v) = s.admin("GET", &path, None).await;
    assert_eq!((st, v["max_requests"].as_u64()), (200, Some(3)));

    // The key's bucket (3) binds before the tenant's (1000).
    let (_, h, _) = burst(&s, &limited, 1).await;
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "2");
    assert_eq!(
        h["ratelimit-policy"],
        "\"tenant\";q=1000;w=60, \"key\";q=3;w=60"
    );
    let rl = h["ratelimit"].to_str().unwrap();
    assert!(rl.starts_with("\"tenant\";r=999;t="), "{rl}");
    assert!(rl.contains(", \"key\";r=2;t="), "{rl}");
    let (statuses, h, v) = burst(&s, &limited, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["ratelimit-remaining"], "0");
    // The other key of the tenant is not limited by it, and shows only the tenant.
    let (statuses, h, _) = burst(&s, &free, 5).await;
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    assert_eq!(h["ratelimit-policy"], "\"tenant\";q=1000;w=60");
    assert_eq!(h["ratelimit-limit"], "1000");
    // The list shows the key's limit; the tenant's limit still applies to it:
    // a tenant limit of 2 refuses the limited key's neighbour too.
    let (_, list) = s
        .admin("GET", &format!("/v1/tenants/{t}/api-keys"), None)
        .await;
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == limited_id.as_str())
        .unwrap();
    assert_eq!(entry["rate_limit"]["max_requests"], 3);

    // DELETE: the key has no limit of its own any more (within 1 s).
    let (st, _) = s.admin("DELETE", &path, None).await;
    assert_eq!(st, 204);
    let (st, _) = s.admin("GET", &path, None).await;
    assert_eq!(st, 404);
    let freed = eventually(Duration::from_secs(2), || async {
        burst(&s, &limited, 1).await.0 == [200]
    })
    .await;
    assert!(freed.is_some(), "the key's limit was not lifted");

    // Bad input and unknown ids.
    for (body, field) in [
        (
            json!({"max_requests": 0, "window_seconds": 60}),
            "max_requests",
        ),
        (
            json!({"max_requests": 5, "window_seconds": 0}),
            "window_seconds",
        ),
        (
            json!({"max_requests": 5, "window_seconds": 60, "burst": 0}),
            "burst",
        ),
        (json!({"window_seconds": 60}), "max_requests"),
    ] {
        let (st, v) = s.admin("PUT", &path, Some(body)).await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let nokey = format!("/v1/tenants/{t}/api-keys/nope/rate-limit");
    let body = json!({"max_requests": 5, "window_seconds": 60});
    assert_eq!(s.admin("PUT", &nokey, Some(body.clone())).await.0, 404);
    assert_eq!(s.admin("GET", &nokey, None).await.0, 404);
    assert_eq!(s.admin("DELETE", &nokey, None).await.0, 404);
    let notenant = format!("/v1/tenants/nope/api-keys/{limited_id}/rate-limit");
    assert_eq!(s.admin("PUT", &notenant, Some(body)).await.0, 404);
}

#[tokio::test]
async fn key_limit_applies_beside_the_tenants_local() {
    key_limit_applies_beside_the_tenants(stack().start().await).await;
}

#[tokio::test]
async fn key_limit_applies_beside_the_tenants_postgres() {
    let Some(db) = tenantgate_core::testing::TestDb::postgres().await else {
        return;
    };
    key_limit_applies_beside_the_tenants(stack().store_url(&db.url).start().await).await;
    db.cleanup().await;
}

#[tokio::test]
async fn key_limit_applies_beside_the_tenants_redis() {
    let Some(redis) = tenantgate_core::testing::test_redis() else {
        return;
    };
    key_limit_applies_beside_the_tenants(stack().extra(&redis_config(&redis)).start().await).await;
}

#[tokio::test]
async fn tenant_bucket_empty_refuses_a_key_with_room() {
    let s = stack().start().await;
    let t = s.tenant("tenlim", "pro").await;
    let (key, key_id) = s.key(&t, "developer").await;
    s.admin(
        "PUT",
        &format!("/v1/tenants/{t}/api-keys/{key_id}/rate-limit"),
        Some(json!({"max_requests": 100, "window_seconds": 60})),
    )
    .await;
    let (st, _) = s
        .admin(
            "PUT",
            &format!("/v1/tenants/{t}/rate-limit"),
            Some(json!({"max_requests": 2, "window_seconds": 60})),
        )
        .await;
    assert_eq!(st, 200);
    let ok = eventually(Duration::from_secs(2), || async {
        let (_, h, _) = burst(&s, &key, 1).await;
        h.get("ratelimit-policy")
            .is_some_and(|p| p.to_str().unwrap().contains("\"key\";q=100"))
            && h["ratelimit-limit"] == "2"
    })
    .await;
    assert!(ok.is_some());
    let (statuses, h, v) = burst(&s, &key, 3).await;
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(h["ratelimit-limit"], "2", "the tenant's is the tighter");
}

#[tokio::test]
async fn quota_per_day_is_exact_and_survives_a_restart() {
    let mut s = stack().start().await;
    let t = s.tenant("quota", "pro").await;
    let (key, _) = s.key(&t, "developer").await;
    let qpath = format!("/v1/tenants/{t}/quota");
    let (st, v) = s.admin("GET", &qpath, None).await;
    assert_eq!(st, 404, "no quota yet: {v}");
    let (st, v) = s
        .admin(
            "PUT",
            &qpath,
            Some(json!({"period": "day", "max_requests": 3})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["period"], "day");
    assert_eq!(v["max_requests"], 3);
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert_eq!(
        v["resets_at"],
        tenantgate_core::time::rfc3339(midnight),
        "{v}"
    );
    // Within 1 s the proxy counts it.
    let counted = eventually(Duration::from_secs(2), || async {
        let (_, h, _) = burst(&s, &key, 1).await;
        h.get("ratelimit-policy")
            .is_some_and(|p| p.to_str().unwrap().contains("\"quota\";q=3;w=86400"))
    })
    .await;
    assert!(counted.is_some(), "the quota did not reach the proxy");
    let (statuses, h, v) = burst(&s, &key, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let to_midnight = (midnight - chrono::Utc::now()).num_seconds();
    assert!(
        retry >= 1 && (retry - to_midnight).abs() <= 2,
        "Retry-After {retry}, midnight in {to_midnight}"
    );
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .contains("\"quota\";r=0;t="));
    // GET adds used / remaining once the proxy has reported.
    let reported = eventually(Duration::from_secs(3), || async {
        let (_, v) = s.admin("GET", &qpath, None).await;
        v["used"] == 3 && v["remaining"] == 0 && v["source"] == "tenant"
    })
    .await;
    assert!(reported.is_some());

    // A restart keeps the count.
    let dir = s.dir.clone();
    let status = s.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
    drop(s);
    let s = stack().dir(dir).start().await;
    let (statuses, _, v) = burst(&s, &key, 1).await;
    assert_eq!(statuses, [429], "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");

    // DELETE: no quota any more.
    assert_eq!(s.admin("DELETE", &qpath, None).await.0, 204);
    let lifted = eventually(Duration::from_secs(2), || async {
        burst(&s, &key, 1).await.0 == [200]
    })
    .await;
    assert!(lifted.is_some());
    // Bad input names the field; unknown tenants are 404.
    for (body, field) in [
        (json!({"period": "week", "max_requests": 3}), "period"),
        (json!({"period": "day", "max_requests": 0}), "max_requests"),
        (json!({"max_requests": 3}), "period"),
    ] {
        let (st, v) = s.admin("PUT", &qpath, Some(body)).await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    assert_eq!(s.admin("GET", "/v1/tenants/nope/quota", None).await.0, 404);
}

#[tokio::test]
async fn scopes_narrow_the_role_and_expired_keys_are_refused() {
    let s = stack().start().await;
    let t = s.tenant("scoped", "pro").await;
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys"),
            Some(json!({"name": "ro", "role": "developer",
                "scopes": [{"action": "read", "resource": "*"}]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["scopes"], json!([{"action": "read", "resource": "*"}]));
    let key = v["key"].as_str().unwrap().to_owned();
    assert_eq!(s.with_key("GET", "/api/v1/resources", &key).await.0, 200);
    let (st, v) = s.with_key("POST", "/api/v1/resources", &key).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    // Scopes never widen the role: read_only with a create scope still can't.
    let (_, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys"),
            Some(json!({"name": "ro2", "role": "read_only",
                "scopes": [{"action": "*", "resource": "*"}]})),
        )
        .await;
    let ro = v["key"].as_str().unwrap().to_owned();
    assert_eq!(s.with_key("POST", "/api/v1/resources", &ro).await.0, 403);
    assert_eq!(s.with_key("GET", "/api/v1/resources", &ro).await.0, 200);
    for (scopes, field) in [
        (
            json!([{"action": "write", "resource": "*"}]),
            "scopes[0].action",
        ),
        (
            json!([{"action": "read", "resource": "*"}, {"action": "read", "resource": "Bad Name"}]),
            "scopes[1].resource",
        ),
    ] {
        let (st, v) = s
            .admin(
                "POST",
                &format!("/v1/tenants/{t}/api-keys"),
                Some(json!({"name": "x", "role": "developer", "scopes": scopes})),
            )
            .await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["field"], field);
    }

    // Expiry.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys"),
            Some(json!({"name": "brief", "role": "developer",
                "expires_at": soon.to_rfc3339()})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let brief = v["key"].as_str().unwrap().to_owned();
    assert_eq!(s.with_key("GET", "/api/v1/whoami", &brief).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (st, v) = s.with_key("GET", "/api/v1/whoami", &brief).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
}

#[tokio::test]
async fn allow_lists_on_keys_and_tenants() {
    // Behind a trusted proxy at 127.0.0.1 the client is the x-forwarded-for address.
    let s = stack()
        .proxy_extra("trusted_proxies = [\"127.0.0.1/32\"]")
        .start()
        .await;
    let t = s.tenant("allow", "pro").await;
    let (st, v) = s
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/api-keys"),
            Some(json!({"name": "office", "role": "developer",
                "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["allowed_cidrs"], json!(["10.0.0.0/8", "2001:db8::/32"]));
    let key = v["key"].as_str().unwrap().to_owned();
    let key_id = v["id"].as_str().unwrap().to_owned();
    let from = |ip: &'static str| {
        let (s, key) = (&s, key.clone());
        async move {
            let (st, _, v) = s
                .call(
                    "GET",
                    "/api/v1/whoami",
                    &[("x-api-key", &key), ("x-forwarded-for", ip)],
                    None,
                )
                .await;
            (st, v["error"]["code"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(from("10.1.2.3").await.0, 200);
    assert_eq!(from("2001:db8::7").await.0, 200);
    assert_eq!(
        from("192.0.2.1").await,
        (403, Some("ip_not_allowed".to_owned()))
    );
    assert_eq!(from("2001:db9::1").await.0, 403);

    // PATCH replaces the key's list; null removes it.
    let kpath = format!("/v1/tenants/{t}/api-keys/{key_id}");
    let (st, v) = s
        .admin(
            "PATCH",
            &kpath,
            Some(json!({"allowed_cidrs": ["192.0.2.0/24"]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let moved = eventually(Duration::from_secs(2), || async {
        from("192.0.2.1").await.0 == 200 && from("10.1.2.3").await.0 == 403
    })
    .await;
    assert!(moved.is_some());
    let (st, v) = s
        .admin(
            "PATCH",
            &kpath,
            Some(json!({"allowed_cidrs": ["10.0.0.0/33"]})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("allowed_cidrs[0]"))
    );
    let (st, _) = s
        .admin("PATCH", &kpath, Some(json!({"allowed_cidrs": null})))
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.admin(
            "PATCH",
            &format!("/v1/tenants/{t}/api-keys/nope"),
            Some(json!({"allowed_cidrs": null}))
        )
        .await
        .0,
        404
    );

    // The tenant's list applies to every credential of the tenant.
    let (st, v) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{t}"),
            Some(json!({"allowed_cidrs": ["198.51.100.0/24"]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["allowed_cidrs"], json!(["198.51.100.0/24"]));
    let applied = eventually(Duration::from_secs(2), || async {
        from("10.1.2.3").await == (403, Some("ip_not_allowed".to_owned()))
    })
    .await;
    assert!(applied.is_some());
    assert_eq!(from("198.51.100.9").await.0, 200);
    let (st, v) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{t}"),
            Some(json!({"allowed_cidrs": ["nonsense"]})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("allowed_cidrs[0]"))
    );
}
