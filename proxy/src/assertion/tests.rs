use super::*;
use crate::auth::AuthMethod;
use crate::route::RouteTable;
use std::collections::HashMap;
use tenantgate_core::assertion::{decoding_key, verify, AssertionJwks, VerifiedAssertion};
use tenantgate_core::config::RouteSettings;
use tenantgate_core::testing::TestDb;

const KEK: [u8; 32] = [7u8; 32];

fn settings(rotate_after: Duration, publish_ahead: Duration) -> AssertionSettings {
    AssertionSettings {
        enabled: true,
        issuer: "tenantgate".into(),
        algorithm: AssertionAlg::Es256,
        bind_request: false,
        publish_ahead,
        rotate_after,
    }
}

/// Rotation after a day, publication a minute ahead: the usual shape.
fn daily() -> AssertionSettings {
    settings(Duration::from_secs(86_400), Duration::from_secs(60))
}

fn routes() -> RouteTable {
    let rc = |prefix: &str, audience: &str| RouteSettings {
        prefix: prefix.into(),
        upstreams: vec!["127.0.0.1:9".into()],
        resource: None,
        public: false,
        audience: audience.into(),
        bind_request: None,
        assertion: true,
        tls: false,
        ca_file: None,
        ..RouteSettings::default()
    };
    RouteTable::build(&[rc("/api/", "billing"), rc("/jobs/", "/jobs/")]).unwrap()
}

fn principal(key: &str) -> Principal {
    Principal::new("acme", key, "member", AuthMethod::ApiKey, Some(key)).unwrap()
}

fn now_s() -> i64 {
    now_ms() / 1000
}

fn check(a: &Assertions, token: &HeaderValue, aud: &str) -> VerifiedAssertion {
    let jwks: AssertionJwks = serde_json::from_slice(&a.jwks()).unwrap();
    let keys: HashMap<_, _> = jwks
        .keys
        .iter()
        .map(|k| (k.kid.clone(), decoding_key(k).unwrap()))
        .collect();
    verify(token.to_str().unwrap(), &keys, "tenantgate", Some(aud), 5).unwrap()
}

fn kid(token: &HeaderValue) -> String {
    jsonwebtoken::decode_header(token.to_str().unwrap())
        .unwrap()
        .kid
        .unwrap()
}

#[tokio::test]
async fn the_first_key_signs_at_once_and_assertions_are_reused_per_principal_and_audience() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let a = Assertions::new(daily());
    let table = routes();
    let api = table.find("/api/x").unwrap();
    let jobs = table.find("/jobs/x").unwrap();
    assert_eq!(
        a.header(api, &principal("k1"), now_s(), None),
        Err(NoSigningKey),
        "no key before the first load"
    );
    a.refresh(&store, &KEK).await.unwrap();
    let t1 = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    let again = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_eq!(t1, again, "amortised: the same assertion is reused");
    let other_key = a
        .header(api, &principal("k2"), now_s(), None)
        .unwrap()
        .unwrap();
    let other_aud = a
        .header(jobs, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_ne!(t1, other_key);
    assert_ne!(t1, other_aud);
    let c = check(&a, &t1, "billing");
    assert_eq!(
        (
            c.tenant_id.as_str(),
            c.sub.as_str(),
            c.role.as_str(),
            c.auth_method.as_str()
        ),
        ("acme", "k1", "member", "api_key")
    );
    assert_eq!(c.api_key_id.as_deref(), Some("k1"));
    assert_eq!(c.exp - c.iat, ASSERTION_LIFETIME_SECONDS);
    assert!(c.htm.is_none() && c.htu.is_none() && c.request_id.is_none());
    assert_eq!(check(&a, &other_aud, "/jobs/").sub, "k1");
    // Near its end (less than 30 s to live) it is signed anew.
    let later = a
        .header(api, &principal("k1"), now_s() + 31, None)
        .unwrap()
        .unwrap();
    assert_ne!(later, t1);
    assert_eq!(a.signed.load(Ordering::Relaxed), 4);
    assert_eq!(a.reused.load(Ordering::Relaxed), 1);
    // A second proxy of the fleet signs with the same key.
    let b = Assertions::new(daily());
    b.refresh(&store, &KEK).await.unwrap();
    let tb = b
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_eq!(kid(&tb), kid(&t1));
    assert_eq!(store.list_assertion_keys().await.unwrap().len(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn bound_assertions_are_per_request() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let a = Assertions::new(daily());
    a.refresh(&store, &KEK).await.unwrap();
    let table = routes();
    let api = table.find("/api/x").unwrap();
    let bind = |rid| Binding {
        request_id: rid,
        method: "DELETE",
        path_and_query: "/api/x/1?force=1",
    };
    let t1 = a
        .header(api, &principal("k1"), now_s(), Some(bind("r1")))
        .unwrap()
        .unwrap();
    let t2 = a
        .header(api, &principal("k1"), now_s(), Some(bind("r2")))
        .unwrap()
        .unwrap();
    assert_ne!(t1, t2);
    let c = check(&a, &t1, "billing");
    assert_eq!(c.request_id.as_deref(), Some("r1"));
    assert_eq!(c.htm.as_deref(), Some("DELETE"));
    assert_eq!(c.htu.as_deref(), Some("/api/x/1?force=1"));
    db.cleanup().await;
}

#[tokio::test]
async fn a_rotated_key_is_published_ahead_and_signs_only_from_its_activation() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    // Rotation due at once; the successor waits an hour in the JWKS.
    let a = Assertions::new(settings(Duration::ZERO, Duration::from_secs(3_600)));
    a.refresh(&store, &KEK).await.unwrap();
    let table = routes();
    let api = table.find("/api/x").unwrap();
    let first = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    a.refresh(&store, &KEK).await.unwrap();
    let stored = store.list_assertion_keys().await.unwrap();
    assert_eq!(stored.len(), 2, "the successor is stored");
    let jwks: AssertionJwks = serde_json::from_slice(&a.jwks()).unwrap();
    assert_eq!(jwks.keys.len(), 2, "and published");
    assert!(stored[0].active_from_ms >= now_ms() + 3_500_000);
    // One pending successor at a time.
    a.refresh(&store, &KEK).await.unwrap();
    assert_eq!(store.list_assertion_keys().await.unwrap().len(), 2);
    let still = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        still, first,
        "the old key signs until the new one is active"
    );

    // A key whose activation has come takes over, and cached assertions are re-signed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (key, der) = AssertionKey::generate(AssertionAlg::EdDsa).unwrap();
    store
        .insert_assertion_key(&StoredAssertionKey {
            kid: key.kid.clone(),
            algorithm: "EdDSA".into(),
            public_jwk: serde_json::to_string(&key.public_jwk()).unwrap(),
            private_sealed: sealing::seal(&KEK, &der).unwrap(),
            created_at_ms: now_ms(),
            active_from_ms: now_ms(),
            retired_at_ms: None,
        })
        .await
        .unwrap();
    a.refresh(&store, &KEK).await.unwrap();
    let next = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_eq!(kid(&next), key.kid);
    assert_eq!(check(&a, &next, "billing").sub, "k1");
    db.cleanup().await;
}

#[tokio::test]
async fn a_proxy_with_another_secret_signs_with_a_key_of_its_own_and_retires_none_of_the_others() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 2).await.unwrap();
    let a = Assertions::new(daily());
    a.refresh(&store, &KEK).await.unwrap();
    let b = Assertions::new(daily());
    b.refresh(&store, &[9u8; 32]).await.unwrap();
    let table = routes();
    let api = table.find("/api/x").unwrap();
    let ta = a
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    let tb = b
        .header(api, &principal("k1"), now_s(), None)
        .unwrap()
        .unwrap();
    assert_ne!(kid(&ta), kid(&tb), "each signs with a key it can open");
    // Both keys are published, so upstreams verify either proxy's assertions.
    a.refresh(&store, &KEK).await.unwrap();
    assert_eq!(check(&a, &tb, "billing").sub, "k1");
    assert_eq!(check(&b, &ta, "billing").sub, "k1");
    assert_eq!(store.list_assertion_keys().await.unwrap().len(), 2);
    db.cleanup().await;
}

#[test]
fn disabled_assertions_add_nothing() {
    let mut s = daily();
    s.enabled = false;
    let a = Assertions::new(s);
    let table = routes();
    let api = table.find("/api/x").unwrap();
    assert_eq!(a.header(api, &principal("k1"), now_s(), None), Ok(None));
}
