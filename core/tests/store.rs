#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The store's behaviour, run against SQLite and PostgreSQL alike.

use chrono::{Duration, Utc};
use tenantgate_core::domain::{ApiKeyRecord, Permission, Policy, RateLimit, TenantStatus, Tier};
use tenantgate_core::secrets;
use tenantgate_core::store::{ChangeKind, NewTenant, NewUser, Store, StoreError, TenantPatch};
use tenantgate_core::testing::TestDb;
use tenantgate_core::usage::{UsageCounts, UsageDelta};

fn key(tenant: &str, role: &str) -> (String, ApiKeyRecord) {
    let g = secrets::generate_api_key();
    let rec = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        prefix: g.prefix.clone(),
        digest: secrets::api_key_digest(&g.key, None),
        name: "k".into(),
        role: role.into(),
        created_at: Utc::now(),
        expires_at: None,
        revoked_at: None,
        extras: Default::default(),
    };
    (g.key, rec)
}

async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for db in TestDb::all().await {
        let store = Store::open(&db.url, 4).await.unwrap();
        // Migrating twice is a no-op.
        store.migrate().await.unwrap();
        f(store.clone()).await;
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn onboarding_creates_policies_limit_and_admin() {
    each_backend(|s| async move {
        let t = s
            .create_tenant(&NewTenant {
                id: "acme".into(),
                name: "Acme".into(),
                tier: Tier::Free,
                admin_user: Some(NewUser {
                    id: "u1".into(),
                    email: "a@acme.io".into(),
                    password_hash: "$argon2id$x".into(),
                    role: "admin".into(),
                }),
            })
            .await
            .unwrap();
        assert_eq!(t.status, TenantStatus::Active);
        let pols = s.list_policies("acme").await.unwrap();
        let roles: Vec<_> = pols.iter().map(|p| p.role.as_str()).collect();
        assert_eq!(roles, ["admin", "developer", "read_only"]);
        // The tenant follows its plan: no limit of its own.
        assert_eq!(s.get_rate_limit("acme").await.unwrap(), None);
        assert_eq!(
            s.get_plan("free").await.unwrap().unwrap().rate_limit,
            Tier::Free.default_rate_limit()
        );
        assert!(s
            .find_user_by_email("acme", "a@acme.io")
            .await
            .unwrap()
            .is_some());
        // duplicates
        let dup = s
            .create_tenant(&NewTenant {
                id: "acme".into(),
                name: "x".into(),
                tier: Tier::Pro,
                admin_user: None,
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict("id"))));
        let dup_user = s
            .create_user(
                "acme",
                &NewUser {
                    id: "u2".into(),
                    email: "a@acme.io".into(),
                    password_hash: "h".into(),
                    role: "developer".into(),
                },
            )
            .await;
        assert!(matches!(dup_user, Err(StoreError::Conflict("email"))));
        // a tier change moves the plan, not a custom limit
        s.update_tenant(
            "acme",
            &TenantPatch {
                tier: Some(Tier::Pro),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(s.get_rate_limit("acme").await.unwrap(), None);
        let custom = RateLimit {
            max_requests: 7,
            window_seconds: 1,
            burst: Some(3),
        };
        s.put_rate_limit("acme", &custom).await.unwrap();
        s.update_tenant(
            "acme",
            &TenantPatch {
                tier: Some(Tier::Enterprise),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(s.get_rate_limit("acme").await.unwrap(), Some(custom));
        let t = s
            .update_tenant(
                "acme",
                &TenantPatch {
                    status: Some(TenantStatus::Suspended),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(t.status, TenantStatus::Suspended);
        assert!(matches!(
            s.update_tenant("nope", &TenantPatch::default()).await,
            Err(StoreError::NotFound)
        ));
        s.delete_tenant("acme").await.unwrap();
        assert!(s.get_tenant("acme").await.unwrap().is_none());
        assert!(s.list_policies("acme").await.unwrap().is_empty());
        assert!(matches!(
            s.delete_tenant("acme").await,
            Err(StoreError::NotFound)
        ));
    })
    .await;
}

#[tokio::test]
async fn api_keys_revoke_and_rotate_with_change_feed() {
    each_backend(|s| async move {
        s.create_tenant(&NewTenant {
            id: "t1".into(),
            name: "T".into(),
            tier: Tier::Pro,
            admin_user: None,
        })
        .await
        .unwrap();
        let mut bus = s.subscribe();
        let start = s.latest_change_id().await.unwrap();
        let (_k, rec) = key("t1", "developer");
        s.create_api_key(&rec).await.unwrap();
        let found = s
            .find_api_key_by_prefix(&rec.prefix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.digest, rec.digest);
        assert!(found.is_usable_at(Utc::now()));
        let ev = bus.recv().await.unwrap();
        assert_eq!(
            (ev.kind, ev.subject.as_str()),
            (ChangeKind::ApiKey, rec.prefix.as_str())
        );

        // rotate with grace: old key expires later, new key usable
        let (_k2, rec2) = key("t1", "developer");
        s.rotate_api_key("t1", &rec.id, &rec2, 60).await.unwrap();
        let old = s.get_api_key("t1", &rec.id).await.unwrap().unwrap();
        let exp = old.expires_at.unwrap();
        assert!(
            exp > Utc::now() + Duration::seconds(50) && exp <= Utc::now() + Duration::seconds(61)
        );
        assert!(old.is_usable_at(Utc::now()));
        // rotate without grace: revoked now
        let (_k3, rec3) = key("t1", "developer");
        s.rotate_api_key("t1", &rec2.id, &rec3, 0).await.unwrap();
        assert!(!s
            .get_api_key("t1", &rec2.id)
            .await
            .unwrap()
            .unwrap()
            .is_usable_at(Utc::now()));
        // revoke (twice is fine), unknown is NotFound
        let r = s.revoke_api_key("t1", &rec3.id).await.unwrap();
        assert!(r.revoked_at.is_some());
        s.revoke_api_key("t1", &rec3.id).await.unwrap();
        assert!(matches!(
            s.revoke_api_key("t1", "nope").await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.revoke_api_key("other", &rec.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.list_api_keys("t1").await.unwrap().len(), 3);

        let feed = s.changes_since(start, i64::MAX, 100).await.unwrap();
        assert!(feed.len() >= 6, "{feed:?}");
        assert!(feed.windows(2).all(|w| w[0].id < w[1].id));
        assert!(feed.iter().all(|c| c.kind == ChangeKind::ApiKey));
    })
    .await;
}

#[tokio::test]
async fn policies_round_trip() {
    each_backend(|s| async move {
        s.create_tenant(&NewTenant {
            id: "t2".into(),
            name: "T".into(),
            tier: Tier::Free,
            admin_user: None,
        })
        .await
        .unwrap();
        let p = Policy {
            role: "auditor".into(),
            permissions: vec![Permission::new("read", "billing")],
        };
        s.put_policy("t2", &p).await.unwrap();
        assert_eq!(
            s.get_policy("t2", "auditor").await.unwrap(),
            Some(p.clone())
        );
        let p2 = Policy {
            permissions: vec![Permission::new("*", "*")],
            ..p
        };
        s.put_policy("t2", &p2).await.unwrap();
        assert_eq!(s.get_policy("t2", "auditor").await.unwrap(), Some(p2));
        assert_eq!(s.get_policy("t2", "nobody").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn usage_flushes_apply_once() {
    each_backend(|s| async move {
        let mut d = UsageDelta {
            tenant_id: "t3".into(),
            bucket_start: 600,
            counts: UsageCounts {
                requests: 5,
                denied: 1,
                bytes_out: 100,
                ..Default::default()
            },
        };
        d.counts.latency_buckets[2] = 5;
        assert!(s
            .apply_usage("node", 1, std::slice::from_ref(&d))
            .await
            .unwrap());
        assert!(!s
            .apply_usage("node", 1, std::slice::from_ref(&d))
            .await
            .unwrap());
        assert!(s
            .apply_usage("node", 2, std::slice::from_ref(&d))
            .await
            .unwrap());
        assert!(s
            .apply_usage("other-node", 1, std::slice::from_ref(&d))
            .await
            .unwrap());
        let rows = s.usage_minutes("t3", 0, 3600).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].counts.requests, 15);
        assert_eq!(rows[0].counts.denied, 3);
        assert_eq!(rows[0].counts.bytes_out, 300);
        assert_eq!(rows[0].counts.latency_buckets[2], 15);
        assert!(s.usage_minutes("t3", 660, 3600).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn large_flushes_with_repeated_rows_add_up_exactly() {
    each_backend(|s| async move {
        // 450 tenant-minutes (several multi-row statements, the last one partial),
        // each listed twice in the same flush, on top of existing rows.
        let mut deltas = Vec::new();
        for round in 0..2u64 {
            for i in 0..450u64 {
                let mut d = UsageDelta {
                    tenant_id: format!("big{}", i % 150),
                    bucket_start: 60 * (i / 150) as i64,
                    counts: UsageCounts {
                        requests: 1 + round,
                        rate_limited: round,
                        bytes_in: i,
                        latency_sum_us: 10,
                        ..Default::default()
                    },
                };
                d.counts.latency_buckets[(i % 5) as usize] = 1 + round;
                deltas.push(d);
            }
        }
        assert!(s.apply_usage("bulk", 1, &deltas[..450]).await.unwrap());
        assert!(s.apply_usage("bulk", 2, &deltas).await.unwrap());
        assert!(!s.apply_usage("bulk", 2, &deltas).await.unwrap());
        for t in [0u64, 77, 149] {
            let rows = s.usage_minutes(&format!("big{t}"), 0, 3600).await.unwrap();
            assert_eq!(rows.len(), 3, "tenant big{t}: {rows:?}");
            for (m, r) in rows.iter().enumerate() {
                let i = t + 150 * m as u64;
                assert_eq!(r.bucket_start, 60 * m as i64);
                assert_eq!(r.counts.requests, 1 + (1 + 2), "{r:?}");
                assert_eq!(r.counts.rate_limited, 1);
                assert_eq!(r.counts.bytes_in, 3 * i);
                assert_eq!(r.counts.latency_sum_us, 30);
                assert_eq!(r.counts.latency_buckets[(i % 5) as usize], 1 + (1 + 2));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn settings_are_set_once() {
    each_backend(|s| async move {
        assert!(s.put_setting_if_absent("k", "v1").await.unwrap());
        assert!(!s.put_setting_if_absent("k", "v2").await.unwrap());
        assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("v1"));
    })
    .await;
}

/// Timing report, not a check: one flush of 10 000 tenant-minutes on each backend.
/// `cargo test --release -p tenantgate-core --test store -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn report_flush_of_ten_thousand_rows() {
    each_backend(|s| async move {
        let deltas: Vec<UsageDelta> = (0..10_000)
            .map(|i| UsageDelta {
                tenant_id: format!("scale-{i:05}"),
                bucket_start: 600,
                counts: UsageCounts {
                    requests: 3,
                    ..Default::default()
                },
            })
            .collect();
        for seq in 1..=3 {
            let t = std::time::Instant::now();
            assert!(s.apply_usage("timing", seq, &deltas).await.unwrap());
            eprintln!(
                "{:?}: flush of 10k rows took {:?}",
                s.backend(),
                t.elapsed()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn plans_quotas_and_key_extras() {
    use tenantgate_core::domain::{KeyExtras, Plan, Quota, QuotaPeriod};
    each_backend(|s| async move {
        let names: Vec<String> = s
            .list_plans()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["enterprise", "free", "pro"]);
        for t in Tier::ALL {
            let p = s.get_plan(t.as_str()).await.unwrap().unwrap();
            assert_eq!(p.rate_limit, t.default_rate_limit());
            assert_eq!(p.quota, None);
        }
        let gold = Plan {
            name: "gold".into(),
            rate_limit: RateLimit {
                max_requests: 5,
                window_seconds: 1,
                burst: Some(9),
            },
            quota: Some(Quota {
                period: QuotaPeriod::Month,
                max_requests: 1000,
            }),
        };
        let mut events = s.subscribe();
        assert!(s.put_plan(&gold).await.unwrap(), "created");
        assert!(!s.put_plan(&gold).await.unwrap(), "replaced");
        assert_eq!(s.get_plan("gold").await.unwrap(), Some(gold));
        let c = events.try_recv().unwrap();
        assert_eq!((c.kind, c.subject.as_str()), (ChangeKind::Plan, "gold"));

        s.create_tenant(&NewTenant {
            id: "quo".into(),
            name: "Q".into(),
            tier: Tier::new("gold"),
            admin_user: None,
        })
        .await
        .unwrap();
        assert_eq!(
            s.get_tenant("quo").await.unwrap().unwrap().tier.as_str(),
            "gold"
        );
        assert_eq!(s.get_quota("quo").await.unwrap(), None);
        let q = Quota {
            period: QuotaPeriod::Day,
            max_requests: 10,
        };
        s.put_quota("quo", &q).await.unwrap();
        assert_eq!(s.own_limits("quo").await.unwrap().quota, Some(q));
        assert!(s.delete_quota("quo").await.unwrap());
        assert!(!s.delete_quota("quo").await.unwrap());
        assert_eq!(s.add_quota_used("quo", 1000, 3).await.unwrap(), 3);
        assert_eq!(s.add_quota_used("quo", 1000, 4).await.unwrap(), 7);
        assert_eq!(s.quota_used("quo", 1000).await.unwrap(), 7);
        assert_eq!(s.quota_used("quo", 2000).await.unwrap(), 0);

        let (_, mut rec) = key("quo", "developer");
        rec.extras.scopes = Some(vec![Permission::new("read", "*")]);
        s.create_api_key(&rec).await.unwrap();
        let rl = RateLimit {
            max_requests: 3,
            window_seconds: 60,
            burst: None,
        };
        let k = s
            .update_api_key_extras("quo", &rec.id, |e| {
                e.rate_limit = Some(rl);
                e.allowed_cidrs = Some(vec!["10.0.0.0/8".into()]);
            })
            .await
            .unwrap();
        let want = KeyExtras {
            rate_limit: Some(rl),
            scopes: Some(vec![Permission::new("read", "*")]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
        };
        assert_eq!(k.extras, want);
        let found = s
            .find_api_key_by_prefix(&rec.prefix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.extras, want);
        assert!(matches!(
            s.update_api_key_extras("quo", "nope", |_| {}).await,
            Err(StoreError::NotFound)
        ));
        let t = s
            .update_tenant(
                "quo",
                &TenantPatch {
                    allowed_cidrs: Some(Some(vec!["192.0.2.0/24".into()])),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(t.allowed_cidrs, Some(vec!["192.0.2.0/24".into()]));
        assert_eq!(
            s.get_tenant("quo").await.unwrap().unwrap().allowed_cidrs,
            Some(vec!["192.0.2.0/24".into()])
        );
        s.delete_tenant("quo").await.unwrap();
        assert_eq!(s.quota_used("quo", 1000).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn client_certs_are_unique_by_fingerprint_and_reported() {
    use tenantgate_core::store::ClientCert;
    each_backend(|s| async move {
        for id in ["acme", "globex"] {
            s.create_tenant(&NewTenant {
                id: id.into(),
                name: id.into(),
                tier: Tier::Free,
                admin_user: None,
            })
            .await
            .unwrap();
        }
        let cert = |id: &str, tenant: &str, fp: &str| ClientCert {
            id: id.into(),
            tenant_id: tenant.into(),
            fingerprint: fp.into(),
            name: "robot".into(),
            role: "developer".into(),
            created_at_ms: 1,
        };
        let mut bus = s.subscribe();
        s.create_client_cert(&cert("c1", "acme", "aa"))
            .await
            .unwrap();
        let c = bus.recv().await.unwrap();
        assert_eq!((c.kind, c.subject.as_str()), (ChangeKind::ClientCert, "aa"));
        assert!(matches!(
            s.create_client_cert(&cert("c2", "globex", "aa")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.list_client_certs("acme").await.unwrap().len(), 1);
        assert_eq!(
            s.client_cert_by_fingerprint("aa")
                .await
                .unwrap()
                .unwrap()
                .id,
            "c1"
        );
        assert!(s.get_client_cert("globex", "c1").await.unwrap().is_none());
        assert!(matches!(
            s.delete_client_cert("globex", "c1").await,
            Err(StoreError::NotFound)
        ));
        s.delete_client_cert("acme", "c1").await.unwrap();
        let c = bus.recv().await.unwrap();
        assert_eq!((c.kind, c.subject.as_str()), (ChangeKind::ClientCert, "aa"));
        assert!(s.client_cert_by_fingerprint("aa").await.unwrap().is_none());
    })
    .await;
}
