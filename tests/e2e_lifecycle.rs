#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Data lifecycle and the usage/audit surfaces through the real binary, on SQLite
//! and PostgreSQL: usage over any range served from the rollups (exact sums after
//! the elected pass rolled up and pruned the minutes), minute granularity only
//! inside its retention, the streamed export, the audit log, and a proxy that was
//! away longer than the change feed's retention reloading its caches.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::{eventually, stack, Stack};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tenantgate_core::domain::Tier;
use tenantgate_core::store::{NewTenant, Store};
use tenantgate_core::testing::TestDb;
use tenantgate_core::usage::{UsageCounts, UsageDelta};

const H: i64 = 3_600;
const D: i64 = 86_400;

/// The first sample of `name{labels}` in Prometheus text.
fn labelled(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn rfc(t: i64) -> String {
    tenantgate_core::time::rfc3339(tenantgate_core::time::from_ms(t * 1000))
}

/// Seeds three days of minute usage for `hist` (a row every 17 minutes) and
/// returns the requests per UTC day.
async fn seed(url: &str, now: i64) -> BTreeMap<i64, u64> {
    let store = Store::open(url, 2).await.unwrap();
    for id in ["hist", "other"] {
        store
            .create_tenant(&NewTenant {
                id: id.into(),
                name: id.into(),
                tier: Tier::Pro,
                admin_user: None,
            })
            .await
            .unwrap();
    }
    let mut per_day = BTreeMap::new();
    let mut deltas = Vec::new();
    let mut t = (now - 3 * D).div_euclid(60) * 60;
    while t < now - H {
        let n = (t / 60 % 13) as u64 + 1;
        *per_day.entry(t.div_euclid(D) * D).or_insert(0) += n;
        for (tenant, requests) in [("hist", n), ("other", 1)] {
            deltas.push(UsageDelta {
                tenant_id: tenant.into(),
                bucket_start: t,
                counts: UsageCounts {
                    requests,
                    bytes_out: requests * 10,
                    ..Default::default()
                },
            });
        }
        t += 17 * 60;
    }
    for (i, chunk) in deltas.chunks(100).enumerate() {
        assert!(store
            .apply_usage("seed", i as i64 + 1, chunk)
            .await
            .unwrap());
    }
    store.close().await;
    per_day
}

async fn admin_metrics(s: &Stack) -> String {
    s.text(&format!("{}/metrics", s.admin)).await
}

async fn usage(s: &Stack, query: &str) -> (u16, Value) {
    s.admin("GET", &format!("/v1/tenants/hist/usage?{query}"), None)
        .await
}

async fn usage_scenario(url: Option<String>) {
    let dir = std::env::temp_dir().join(format!(
        "tenantgate_e2e_life_{}_{}",
        std::process::id(),
        tenantgate_core::secrets::random_token(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = url.unwrap_or_else(|| format!("sqlite://{}/tg.db", dir.display()));
    let now = chrono::Utc::now().timestamp();
    let per_day = seed(&url, now).await;
    let total: u64 = per_day.values().sum();
    let s = stack()
        .dir(dir)
        .store_url(&url)
        .extra("[retention]\nusage_minute_days = 1\nrun_interval_seconds = 0.2")
        .start()
        .await;

    // The elected pass (this is the only process) rolls up and prunes.
    let ran = eventually(Duration::from_secs(20), || async {
        let m = admin_metrics(&s).await;
        labelled(&m, "tenantgate_lifecycle_rows_total{step=\"rollup_hour\"}").unwrap_or(0.0) > 0.0
            && labelled(
                &m,
                "tenantgate_lifecycle_rows_total{step=\"prune_usage_minute\"}",
            )
            .unwrap_or(0.0)
                > 0.0
    })
    .await;
    let m = admin_metrics(&s).await;
    assert!(ran.is_some(), "no rollup/prune pass:\n{m}\n{}", s.log());
    assert!(labelled(&m, "tenantgate_lifecycle_passes_total{outcome=\"ran\"}").unwrap() >= 1.0);
    assert!(labelled(
        &m,
        "tenantgate_lifecycle_rollup_lag_seconds{level=\"hour\"}"
    )
    .is_some());
    assert!(m.contains("tenantgate_lifecycle_step_duration_seconds{step=\"prune_changes\"}"));

    // All time by day: sparse (36 500 buckets), exact.
    let (st, v) = usage(
        &s,
        "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=day",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sparse"], true);
    assert_eq!(v["totals"]["requests"], total, "{v}");
    let series: BTreeMap<String, u64> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["bucket_start"].as_str().unwrap().to_owned(),
                p["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, u64> = per_day.iter().map(|(d, n)| (rfc(*d), *n)).collect();
    assert_eq!(series, want);
    // The same range by hour (default granularity): sparse, same totals.
    let (st, v) = usage(&s, "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z").await;
    assert_eq!((st, &v["sparse"]), (200, &json!(true)), "{v}");
    assert_eq!(v["totals"]["requests"], total);
    assert_eq!(v["totals"]["bytes_out"], total * 10);
    // A few days by hour: zero-filled, no `sparse`, same totals.
    let q = format!("from={}&to={}", rfc(now - 4 * D), rfc(now));
    let (st, v) = usage(&s, &q).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("sparse").is_none());
    assert_eq!(v["series"].as_array().unwrap().len(), 97);
    assert_eq!(v["totals"]["requests"], total);
    // Minutes: only inside their (1-day) retention.
    let (st, v) = usage(&s, &format!("from={}&granularity=minute", rfc(now - 2 * D))).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["field"], "granularity", "{v}");
    let (st, v) = usage(
        &s,
        &format!(
            "from={}&to={}&granularity=minute",
            rfc(now - 20 * H),
            rfc(now)
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let n = v["series"].as_array().unwrap().len();
    assert!((1200..=1201).contains(&n), "{n} minute buckets");

    // The export: every tenant per hour, CSV and NDJSON.
    let r = s
        .http
        .get(format!("{}/v1/usage/export?{q}&format=csv", s.admin))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("tenant_id,api_key_id,bucket_start,requests,rate_limited,denied,upstream_errors,bytes_in,bytes_out")
    );
    let mut csv_sum = 0;
    let mut tenants = std::collections::BTreeSet::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 9, "{l}");
        tenants.insert(f[0].to_owned());
        if f[0] == "hist" && f[1].is_empty() {
            csv_sum += f[3].parse::<u64>().unwrap();
        }
    }
    assert_eq!(csv_sum, total);
    assert!(tenants.contains("other"));
    let r = s
        .http
        .get(format!("{}/v1/usage/export?{q}&format=ndjson", s.admin))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let nd = r.text().await.unwrap();
    let nd_sum: u64 = nd
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["tenant_id"] == "hist" && v["api_key_id"].is_null())
        .map(|v| v["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(nd_sum, total);
    let (st, v) = s.admin("GET", "/v1/usage/export?format=xml", None).await;
    assert_eq!((st, &v["error"]["field"]), (422, &json!("format")), "{v}");
    // `from` not before `to`: an empty range, so no rows (the header line only).
    let r = s
        .http
        .get(format!(
            "{}/v1/usage/export?from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z",
            s.admin
        ))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body.lines().count(), 1, "{body}");
    let (st, v) = s.admin("GET", "/v1/usage/export?to=", None).await;
    assert_eq!((st, &v["error"]["field"]), (422, &json!("to")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_any_range_from_rollups_on_sqlite() {
    usage_scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_any_range_from_rollups_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    usage_scenario(Some(db.url.clone())).await;
    db.cleanup().await;
}

async fn login(s: &Stack, tenant: &str) -> (String, String) {
    let token = s.tenant_admin_token(tenant).await;
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    (token, claims["sub"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_audited_without_secrets_on_sqlite() {
    audit_scenario(stack().start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_audited_without_secrets_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    audit_scenario(stack().store_url(&db.url).start().await).await;
    db.cleanup().await;
}

async fn audit_scenario(s: Stack) {
    s.tenant("aud", "pro").await;
    s.tenant("else", "free").await;
    let (key, key_id) = s.key("aud", "developer").await;
    let (st, rotated) = s
        .admin(
            "POST",
            &format!("/v1/tenants/aud/api-keys/{key_id}/rotate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 201, "{rotated}");
    let r = s
        .http
        .put(format!("{}/v1/tenants/aud/rate-limit", s.admin))
        .bearer_auth(common::TOKEN)
        .header("x-request-id", "audit-req-1")
        .json(&json!({"max_requests": 50, "window_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = s
        .admin(
            "POST",
            "/v1/tenants/aud/users",
            Some(json!({"email": "dev@aud.test", "password": "secret-password-1", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201);
    // A refused change is not recorded.
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/tenants/aud/rate-limit",
            Some(json!({"max_requests": 0, "window_seconds": 60})),
        )
        .await;
    assert_eq!(st, 422);
    let (st, _) = s
        .admin("PATCH", "/v1/tenants/aud", Some(json!({"name": "Audited"})))
        .await;
    assert_eq!(st, 200);
    let new_id = rotated["id"].as_str().unwrap();
    let (st, _) = s
        .admin(
            "DELETE",
            &format!("/v1/tenants/aud/api-keys/{new_id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    // A tenant admin's own change.
    let (token, user_id) = login(&s, "aud").await;
    let (st, v) = s
        .admin_as(
            &token,
            "PUT",
            "/v1/tenants/aud/policies/read_only",
            Some(json!({"permissions": [{"action": "read", "resource": "*"}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    let (st, v) = s.admin("GET", "/v1/audit?tenant_id=aud", None).await;
    assert_eq!(st, 200, "{v}");
    let text = v.to_string();
    assert!(!text.contains(&key), "an API key secret in the audit log");
    assert!(!text.contains(rotated["key"].as_str().unwrap()));
    assert!(!text.contains("secret-password-1"));
    assert!(!text.contains("password-aud"));
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "api_key.create",
            "api_key.rotate",
            "rate_limit.set",
            "user.create",
            "tenant.update",
            "api_key.delete",
            "policy.set"
        ],
        "{v}"
    );
    let first = &entries[entries.len() - 1];
    assert_eq!(
        first["actor"],
        json!({"kind": "platform", "id": "platform"})
    );
    assert_eq!(first["tenant_id"], "aud");
    assert_eq!(first["target"], "/v1/tenants");
    assert!(first["at"].as_str().unwrap().ends_with('Z'));
    assert!(!first["request_id"].as_str().unwrap().is_empty());
    let limit = entries
        .iter()
        .find(|e| e["action"] == "rate_limit.set")
        .unwrap();
    assert_eq!(limit["request_id"], "audit-req-1");
    assert_eq!(limit["target"], "/v1/tenants/aud/rate-limit");
    assert_eq!(entries[0]["actor"], json!({"kind": "user", "id": user_id}));
    assert!(v["next_cursor"].is_null());

    // Pages of 3 (newest first) with the cursor cover everything once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?tenant_id=aud&limit=3&cursor={c}"),
            None => "/v1/audit?tenant_id=aud&limit=3".to_owned(),
        };
        let (st, page) = s.admin("GET", &path, None).await;
        assert_eq!(st, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = entries
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, want);
    // Everything (both tenants) without the filter; time filters.
    let (_, all) = s.admin("GET", "/v1/audit", None).await;
    assert!(all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["tenant_id"] == "else"));
    let (_, none) = s
        .admin(
            "GET",
            "/v1/audit?from=2000-01-01T00:00:00Z&to=2001-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(none["entries"], json!([]));

    // The tenant admin's view: its own tenant only; the platform view is refused.
    let (st, mine) = s
        .admin_as(&token, "GET", "/v1/tenants/aud/audit", None)
        .await;
    assert_eq!(st, 200, "{mine}");
    assert_eq!(mine["entries"].as_array().unwrap().len(), entries.len());
    let (st, _) = s
        .admin_as(&token, "GET", "/v1/tenants/else/audit", None)
        .await;
    assert_eq!(st, 404);
    let (st, v) = s.admin_as(&token, "GET", "/v1/audit", None).await;
    assert_eq!(st, 403, "{v}");
    // Bad filters are 422 naming the field.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("cursor=xyz", "cursor"),
        ("from=yesterday", "from"),
        ("tenant_id=Not_A_Tenant", "tenant_id"),
    ] {
        let (st, v) = s.admin("GET", &format!("/v1/audit?{q}"), None).await;
        assert_eq!((st, &v["error"]["field"]), (422, &json!(field)), "{q}: {v}");
        assert_eq!(v["error"]["code"], "validation_error");
    }
}

/// A proxy that was away (SIGSTOP) while its change feed was pruned past its
/// position reloads its caches when it comes back: a key revoked meanwhile is
/// refused, although the revocation is no longer in the feed.
async fn away_scenario(url: &str) {
    // The proxy's cache TTL (60 s) is longer than this test: only the reload can
    // make it forget the key.
    let extra = "[retention]\nchanges_hours = 0.0005\nrun_interval_seconds = 0.2";
    let f = fleet::Fleet::start(url, 1, extra).await;
    let (st, v) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "away", "name": "away", "tier": "pro"})),
        )
        .await;
    // (the admin process runs the lifecycle job; the proxy is procs[2])
    assert_eq!(st, 201, "{v}");
    let (st, k) = f
        .admin(
            "POST",
            "/v1/tenants/away/api-keys",
            Some(json!({"name": "k", "role": "developer"})),
        )
        .await;
    assert_eq!(st, 201, "{k}");
    let key = k["key"].as_str().unwrap();
    let ok = eventually(Duration::from_secs(5), || async {
        f.get(0, "/api/v1/whoami", key).await.0 == 200
    })
    .await;
    assert!(ok.is_some());
    let pid = f.procs[2].child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let (st, _) = f
        .admin(
            "DELETE",
            &format!("/v1/tenants/away/api-keys/{}", k["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let store = Store::connect(url, 1).await.unwrap();
    let revoked_at = store.latest_change_id().await.unwrap();
    // A newer change, so the revocation is not the feed's last row.
    let (st, _) = f
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "later", "name": "later", "tier": "free"})),
        )
        .await;
    assert_eq!(st, 201);
    let pruned = eventually(Duration::from_secs(30), || async {
        store.changes_pruned_through().await.unwrap_or(0) >= revoked_at
    })
    .await;
    store.close().await;
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success();
    assert!(resumed);
    assert!(pruned.is_some(), "the feed was not pruned");
    let refused = eventually(Duration::from_secs(10), || async {
        f.get(0, "/api/v1/whoami", key).await.0 == 401
    })
    .await;
    assert!(
        refused.is_some(),
        "the revoked key still passes; proxy log:\n{}",
        f.procs[2].log_text()
    );
    let reloaded = eventually(Duration::from_secs(10), || async {
        f.metric(0, "tenantgate_proxy_change_feed_reloads_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let reloads = f
        .metric(0, "tenantgate_proxy_change_feed_reloads_total")
        .await;
    assert!(
        reloaded.is_some(),
        "reloads {reloads:?}; proxy log:\n{}",
        f.procs[2].log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_back_after_the_feed_was_pruned_reloads_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    away_scenario(&db.url).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_back_after_the_feed_was_pruned_reloads_on_sqlite() {
    let db = TestDb::sqlite();
    away_scenario(&db.url).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_by_api_key_counts_each_keys_share_on_sqlite() {
    by_key_scenario(stack().start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_by_api_key_counts_each_keys_share_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    by_key_scenario(stack().store_url(&db.url).start().await).await;
    db.cleanup().await;
}

async fn by_key_scenario(s: Stack) {
    s.tenant("keyed", "pro").await;
    let (a, a_id) = s.key("keyed", "developer").await;
    let (b, b_id) = s.key("keyed", "developer").await;
    for _ in 0..5 {
        assert_eq!(s.with_key("GET", "/api/v1/whoami", &a).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(s.with_key("GET", "/api/v1/whoami", &b).await.0, 200);
    }
    // A key's refusals count too (read_only may not create).
    let (ro, ro_id) = s.key("keyed", "read_only").await;
    let (st, _, _) = s
        .call(
            "POST",
            "/api/v1/resources",
            &[("x-api-key", &ro)],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 403);
    common::flush_cycles(&s.http, &s.proxy_admin, 2).await;
    let now = chrono::Utc::now().timestamp();
    let q = format!(
        "/v1/tenants/keyed/usage?granularity=minute&from={}&group_by=api_key",
        rfc(now - 600)
    );
    let (st, v) = s.admin("GET", &q, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["totals"]["requests"], 9, "{v}");
    let mut by_key: Vec<(String, u64, u64)> = v["by_api_key"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["api_key_id"].as_str().unwrap().to_owned(),
                e["totals"]["requests"].as_u64().unwrap(),
                e["totals"]["denied"].as_u64().unwrap(),
            )
        })
        .collect();
    by_key.sort();
    let mut want = vec![(a_id, 5, 0), (b_id, 3, 0), (ro_id, 1, 1)];
    want.sort();
    assert_eq!(by_key, want);
    // The export has each key's hour beside the tenant's.
    let r = s
        .http
        .get(format!("{}/v1/usage/export?format=ndjson", s.admin))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keyed: u64 = lines
        .iter()
        .filter(|l| l["tenant_id"] == "keyed" && l["api_key_id"] == json!(want[0].0))
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(keyed, want[0].1);
    let tenant_rows: u64 = lines
        .iter()
        .filter(|l| l["tenant_id"] == "keyed" && l["api_key_id"].is_null())
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(tenant_rows, 9);
    // Without group_by there is no by_api_key; another value is 422.
    let (_, v) = s.admin("GET", "/v1/tenants/keyed/usage", None).await;
    assert!(v.get("by_api_key").is_none());
    let (st, v) = s
        .admin("GET", "/v1/tenants/keyed/usage?group_by=user", None)
        .await;
    assert_eq!((st, &v["error"]["field"]), (422, &json!("group_by")), "{v}");
}
