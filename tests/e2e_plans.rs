#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Plans as data through the real binary: the built-in plans, tiers naming plans,
//! tenants following their plan until they set their own limit (and back), a plan
//! change reaching the proxy within a second, and a plan's quota.

mod common;

use common::{eventually, stack, Stack};
use serde_json::json;
use std::time::Duration;

async fn whoami(s: &Stack, key: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    s.call("GET", "/api/v1/whoami", &[("x-api-key", key)], None)
        .await
}

#[tokio::test]
async fn builtin_plans_and_tiers_naming_plans() {
    let s = stack().start().await;
    let (st, v) = s.admin("GET", "/v1/plans", None).await;
    assert_eq!(st, 200, "{v}");
    let mut plans: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["rate_limit"]["max_requests"].as_u64().unwrap(),
            )
        })
        .collect();
    plans.sort();
    assert_eq!(
        plans,
        [
            ("enterprise".to_owned(), 10_000),
            ("free".to_owned(), 60),
            ("pro".to_owned(), 1000)
        ]
    );
    let (st, v) = s.admin("GET", "/v1/plans/pro", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"name": "pro", "rate_limit": {"max_requests": 1000, "window_seconds": 60}})
    );
    assert_eq!(s.admin("GET", "/v1/plans/gold", None).await.0, 404);

    // A tier that is no plan is 422, on create and on PATCH.
    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "goldco", "name": "Gold", "tier": "gold"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("tier")),
        "{v}"
    );
    let t = s.tenant("planned", "free").await;
    let (st, v) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{t}"),
            Some(json!({"tier": "gold"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("tier")),
        "{v}"
    );

    // New plans are created by PUT; then tiers may name them.
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/plans/gold",
            Some(
                json!({"rate_limit": {"max_requests": 5, "window_seconds": 10, "burst": 2},
                "quota": {"period": "month", "max_requests": 100000}}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"name": "gold", "rate_limit": {"max_requests": 5, "window_seconds": 10, "burst": 2},
            "quota": {"period": "month", "max_requests": 100000}})
    );
    let (st, v) = s
        .admin(
            "PATCH",
            &format!("/v1/tenants/{t}"),
            Some(json!({"tier": "gold"})),
        )
        .await;
    assert_eq!((st, v["tier"].as_str()), (200, Some("gold")), "{v}");
    let (_, v) = s
        .admin("GET", &format!("/v1/tenants/{t}/rate-limit"), None)
        .await;
    assert_eq!(
        v,
        json!({"max_requests": 5, "window_seconds": 10, "burst": 2, "source": "plan"})
    );
    let (st, v) = s
        .admin("GET", &format!("/v1/tenants/{t}/quota"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["period"].as_str(),
            v["max_requests"].as_u64(),
            v["source"].as_str()
        ),
        (Some("month"), Some(100_000), Some("plan"))
    );

    // Bad plans.
    for (path, body, field) in [
        (
            "/v1/plans/gold",
            json!({"rate_limit": {"max_requests": 0, "window_seconds": 10}}),
            "rate_limit.max_requests",
        ),
        (
            "/v1/plans/gold",
            json!({"rate_limit": {"max_requests": 1, "window_seconds": 10},
                "quota": {"period": "year", "max_requests": 5}}),
            "quota.period",
        ),
        (
            "/v1/plans/Gold%20Plan",
            json!({"rate_limit": {"max_requests": 1, "window_seconds": 10}}),
            "name",
        ),
        ("/v1/plans/gold", json!({}), "rate_limit"),
    ] {
        let (st, v) = s.admin("PUT", path, Some(body)).await;
        assert_eq!(st, 422, "{path}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    // Tenant admins may read plans, not change them.
    let (st, login) = s
        .admin(
            "POST",
            "/v1/auth/login",
            Some(json!({"tenant_id": t, "email": format!("admin@{t}.test"),
                "password": format!("password-{t}")})),
        )
        .await;
    assert_eq!(st, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(s.admin_as(token, "GET", "/v1/plans", None).await.0, 200);
    let (st, _) = s
        .admin_as(
            token,
            "PUT",
            "/v1/plans/gold",
            Some(json!({"rate_limit": {"max_requests": 1000, "window_seconds": 1}})),
        )
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn tenants_follow_their_plan_until_they_set_their_own() {
    tenants_follow_their_plan(stack().start().await).await;
}

#[tokio::test]
async fn tenants_follow_their_plan_on_postgres() {
    let Some(db) = tenantgate_core::testing::TestDb::postgres().await else {
        return;
    };
    tenants_follow_their_plan(stack().store_url(&db.url).start().await).await;
    db.cleanup().await;
}

async fn tenants_follow_their_plan(s: Stack) {
    let a = s.tenant("follow-a", "free").await;
    let b = s.tenant("follow-b", "free").await;
    let (ka, _) = s.key(&a, "developer").await;
    let (kb, _) = s.key(&b, "developer").await;
    let (_, h, _) = whoami(&s, &ka).await;
    assert_eq!(h["ratelimit-limit"], "60");

    // b sets its own; a follows the plan.
    let (st, _) = s
        .admin(
            "PUT",
            &format!("/v1/tenants/{b}/rate-limit"),
            Some(json!({"max_requests": 500, "window_seconds": 60})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = s
        .admin("GET", &format!("/v1/tenants/{b}/rate-limit"), None)
        .await;
    assert_eq!(v["source"], "tenant");

    // A plan change reaches every following tenant within 1 s.
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/plans/free",
            Some(json!({"rate_limit": {"max_requests": 3, "window_seconds": 60}})),
        )
        .await;
    assert_eq!(st, 200);
    let took = eventually(Duration::from_secs(1), || async {
        whoami(&s, &ka).await.1["ratelimit-limit"] == "3"
    })
    .await;
    assert!(took.is_some(), "the plan change did not arrive within 1 s");
    let (_, v) = s
        .admin("GET", &format!("/v1/tenants/{a}/rate-limit"), None)
        .await;
    assert_eq!(
        v,
        json!({"max_requests": 3, "window_seconds": 60, "source": "plan"})
    );
    // b keeps its own.
    assert_eq!(whoami(&s, &kb).await.1["ratelimit-limit"], "500");
    let mut last = 0;
    for _ in 0..5 {
        last = whoami(&s, &ka).await.0;
    }
    assert_eq!(last, 429);

    // DELETE returns b to the plan.
    assert_eq!(
        s.admin("DELETE", &format!("/v1/tenants/{b}/rate-limit"), None)
            .await
            .0,
        204
    );
    let (_, v) = s
        .admin("GET", &format!("/v1/tenants/{b}/rate-limit"), None)
        .await;
    assert_eq!(v["source"], "plan");
    let back = eventually(Duration::from_secs(1), || async {
        whoami(&s, &kb).await.1["ratelimit-limit"] == "3"
    })
    .await;
    assert!(back.is_some());

    // A plan's quota applies to its tenants.
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/plans/free",
            Some(
                json!({"rate_limit": {"max_requests": 1000, "window_seconds": 60},
                "quota": {"period": "day", "max_requests": 2}}),
            ),
        )
        .await;
    assert_eq!(st, 200);
    let c = s.tenant("follow-c", "free").await;
    let (kc, _) = s.key(&c, "developer").await;
    let quota_on = eventually(Duration::from_secs(1), || async {
        let p = whoami(&s, &kc).await.1;
        p.get("ratelimit-policy")
            .is_some_and(|p| p.to_str().unwrap().contains("\"quota\";q=2"))
    })
    .await;
    assert!(quota_on.is_some());
    let (st, _, v) = whoami(&s, &kc).await;
    assert_eq!(st, 200, "{v}");
    let (st, h, v) = whoami(&s, &kc).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("quota_exceeded"))
    );
    assert!(h.get("retry-after").is_some());
}
