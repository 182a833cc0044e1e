use super::*;
use std::time::Duration;

/// Views over a real (SQLite) store: one lookup when fresh, rebuilt after each
/// change event that touches the tenant, its policies or its limit.
#[tokio::test]
async fn tenant_views_follow_change_events() {
    use tenantgate_core::domain::{Permission, Tier};
    use tenantgate_core::store::{NewTenant, TenantPatch};
    use tenantgate_core::testing::TestDb;
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let mut events = store.subscribe();
    store
        .create_tenant(&NewTenant {
            id: "acme".into(),
            name: "Acme".into(),
            tier: Tier::Pro,
            admin_user: None,
        })
        .await
        .unwrap();
    while events.try_recv().is_ok() {}
    let cp = ControlPlane::new(
        store.clone(),
        CacheSettings::for_tests(60_000, 1_000, 600_000),
        Arc::new(Breaker::new(1, Duration::from_millis(500))),
    );
    async fn view(cp: &ControlPlane) -> Arc<TenantView> {
        cp.tenant_view("acme", "developer", Instant::now())
            .await
            .unwrap()
            .unwrap()
    }
    // Applies every change the store announced.
    async fn apply_all(
        cp: &ControlPlane,
        events: &mut tokio::sync::broadcast::Receiver<Change>,
    ) -> usize {
        let mut n = 0;
        while let Ok(c) = events.try_recv() {
            cp.apply(&c).await;
            n += 1;
        }
        n
    }

    let v1 = view(&cp).await;
    assert_eq!(v1.status, TenantStatus::Active);
    let v1b = view(&cp).await;
    assert!(Arc::ptr_eq(&v1, &v1b), "a fresh view is served as is");
    assert_eq!(cp.view_stats.hits.load(Ordering::SeqCst), 1);
    assert!(cp
        .tenant_view("nobody", "developer", Instant::now())
        .await
        .unwrap()
        .is_none());

    assert_ne!(v1.limit.max_requests, 7);
    assert_eq!(v1.tenant_id.as_str(), "acme");
    let rl = RateLimit {
        max_requests: 7,
        window_seconds: 60,
        burst: None,
    };
    store.put_rate_limit("acme", &rl).await.unwrap();
    assert!(apply_all(&cp, &mut events).await > 0);
    let v2 = view(&cp).await;
    assert_eq!(v2.limit, rl);

    store
        .update_tenant(
            "acme",
            &TenantPatch {
                name: None,
                tier: None,
                status: Some(TenantStatus::Suspended),
                ..TenantPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(apply_all(&cp, &mut events).await > 0);
    assert_eq!(view(&cp).await.status, TenantStatus::Suspended);

    let only_delete = Policy {
        role: "developer".into(),
        permissions: vec![Permission::new("delete", "*")],
    };
    store.put_policy("acme", &only_delete).await.unwrap();
    assert!(apply_all(&cp, &mut events).await > 0);
    let v4 = view(&cp).await;
    let p = v4.grants.as_ref().unwrap();
    assert!(p.allows(tenantgate_core::domain::Action::Delete, "orders"));
    assert!(!p.allows(tenantgate_core::domain::Action::Read, "orders"));

    // An unrelated tenant's change also retires views (one shared counter):
    // they are rebuilt from the caches, with the same content.
    cp.apply(&Change {
        id: 0,
        kind: ChangeKind::Tenant,
        tenant_id: "other".into(),
        subject: String::new(),
        created_at_ms: 0,
    })
    .await;
    let v5 = view(&cp).await;
    assert!(!Arc::ptr_eq(&v4, &v5));
    assert_eq!(v5.grants, v4.grants);

    store.close().await;
    db.cleanup().await;
}
