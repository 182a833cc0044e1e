//! Criterion micro-benchmarks: each hot-path stage alone, through the crates' public
//! APIs. `cargo bench --bench stages` (about a minute); a filter runs a subset, e.g.
//! `cargo bench --bench stages -- jwt`.
//!
//! Async stages (control-plane caches, JWT verification) run under a current-thread
//! Tokio runtime's `block_on`; its cost (tens of ns) is included in those numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use pingora::http::RequestHeader;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde_json::json;

use tenantgate_core::config::RouteSettings;
use tenantgate_core::domain::{Action, ApiKeyRecord, Grants, Permission, Policy, RateLimit, Tier};
use tenantgate_core::jwt::SigningKey;
use tenantgate_core::secrets::{
    api_key_digest, api_key_digest_bytes, ct_eq, generate_api_key, parse_api_key, ApiKeyDigester,
};
use tenantgate_core::store::{NewTenant, Store};
use tenantgate_core::testing::TestDb;
use tenantgate_proxy::auth::jwt::{IssuerSpec, JwtVerifier, KeySource};
use tenantgate_proxy::auth::{presented, ApiKeys, AuthMethod, CachedKey, Principal};
use tenantgate_proxy::cache::{Breaker, CacheSettings, Shared, Unavailable};
use tenantgate_proxy::control::ControlPlane;
use tenantgate_proxy::headers::{edit_request, identity_headers_in, X_API_KEY, X_REQUEST_ID};
use tenantgate_proxy::limiter::{Limits, LocalLimiter, MonotonicClock};
use tenantgate_proxy::meter::{Meter, Sample};
use tenantgate_proxy::route::{check_path, RouteTable};

const ISSUER: &str = "https://idp.bench.local";
const AUDIENCE: &str = "tenantgate";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---- API keys --------------------------------------------------------------------

fn api_keys(c: &mut Criterion) {
    let generated = generate_api_key();
    let key = generated.key.clone();
    // As the proxy does it: 32 digest bytes, the pepper's HMAC keyed once.
    let stored = api_key_digest_bytes(&key, None);
    let pepper = b"bench-pepper-0123456789abcdef".to_vec();
    let stored_peppered = api_key_digest_bytes(&key, Some(&pepper));
    let plain = ApiKeyDigester::new(None);
    let peppered = ApiKeyDigester::new(Some(&pepper));
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    headers.insert("accept", HeaderValue::from_static("*/*"));

    let mut g = c.benchmark_group("api_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("extract_credential", |b| {
        b.iter(|| presented(black_box(&headers)).unwrap())
    });
    g.bench_function("parse", |b| b.iter(|| parse_api_key(black_box(&key))));
    g.bench_function("parse+sha256+ct_eq", |b| {
        b.iter(|| {
            let (prefix, _) = parse_api_key(black_box(&key)).unwrap();
            let d = plain.digest(black_box(&key));
            black_box(prefix);
            ct_eq(&d, &stored)
        })
    });
    g.bench_function("parse+hmac_sha256+ct_eq", |b| {
        b.iter(|| {
            let (prefix, _) = parse_api_key(black_box(&key)).unwrap();
            let d = peppered.digest(black_box(&key));
            black_box(prefix);
            ct_eq(&d, &stored_peppered)
        })
    });
    g.finish();
}

// ---- control plane ---------------------------------------------------------------

struct Plane {
    keys: ApiKeys,
    control: ControlPlane,
    prefix: String,
    tenant: String,
    db: TestDb,
}

async fn control_plane() -> Plane {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url, 4).await.expect("store");
    let tenant = "bench-tenant".to_owned();
    store
        .create_tenant(&NewTenant {
            id: tenant.clone(),
            name: "Bench".into(),
            tier: Tier::Enterprise,
            admin_user: None,
        })
        .await
        .expect("tenant");
    let g = generate_api_key();
    store
        .create_api_key(&ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.clone(),
            prefix: g.prefix.clone(),
            digest: api_key_digest(&g.key, None),
            name: "bench".into(),
            role: "developer".into(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
            extras: Default::default(),
        })
        .await
        .expect("key");
    let settings = CacheSettings {
        // Long enough that no refresh-ahead fires during the measurement.
        ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(3600),
        ..CacheSettings::default()
    };
    let breaker = Arc::new(Breaker::new(1, Duration::from_millis(500)));
    Plane {
        keys: ApiKeys::new(
            store.clone(),
            settings.clone(),
            breaker.clone(),
            ApiKeyDigester::new(None),
        ),
        control: ControlPlane::new(store, settings, breaker),
        prefix: g.prefix,
        tenant,
        db,
    }
}

/// A key lookup as the authenticator makes it (cache hit, or a load).
async fn api_key(
    keys: &ApiKeys,
    prefix: &str,
    now: Instant,
) -> Result<Option<Shared<CachedKey>>, Unavailable> {
    Ok(keys.cache.get_id(prefix, now).await?.0)
}

fn control(c: &mut Criterion) {
    let rt = runtime();
    let plane = rt.block_on(control_plane());
    let cp = &plane.control;
    // Warm every cache once.
    rt.block_on(async {
        assert!(api_key(&plane.keys, &plane.prefix, Instant::now())
            .await
            .unwrap()
            .is_some());
        assert!(cp
            .tenant(&plane.tenant, Instant::now())
            .await
            .unwrap()
            .is_some());
        assert!(cp
            .policy(&plane.tenant, "developer", Instant::now())
            .await
            .unwrap()
            .is_some());
        assert!(cp
            .own_limits(&plane.tenant, Instant::now())
            .await
            .unwrap()
            .is_some());
        assert!(api_key(&plane.keys, "ffffffffffff", Instant::now())
            .await
            .unwrap()
            .is_none());
    });

    let mut g = c.benchmark_group("control_plane");
    g.throughput(Throughput::Elements(1));
    g.bench_function("api_key_hit", |b| {
        b.iter(|| {
            rt.block_on(api_key(
                &plane.keys,
                black_box(&plane.prefix),
                Instant::now(),
            ))
            .unwrap()
        })
    });
    g.bench_function("request_hits(key+tenant+policy+limit)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let now = Instant::now();
                let k = api_key(&plane.keys, &plane.prefix, now)
                    .await
                    .unwrap()
                    .unwrap();
                let t = cp
                    .tenant(k.principal.tenant_id(), now)
                    .await
                    .unwrap()
                    .unwrap();
                let p = cp
                    .policy(&t.id, k.principal.role(), now)
                    .await
                    .unwrap()
                    .unwrap();
                let l = cp.own_limits(&t.id, now).await.unwrap().unwrap();
                black_box((p, l))
            })
        })
    });
    // What a request does now: the credential, then one view (tenant + policy + limit).
    g.bench_function("request_hits(key+tenant_view)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let now = Instant::now();
                let k = api_key(&plane.keys, &plane.prefix, now)
                    .await
                    .unwrap()
                    .unwrap();
                let v = cp
                    .tenant_view(k.principal.tenant_id(), k.principal.role(), now)
                    .await
                    .unwrap()
                    .unwrap();
                black_box(v)
            })
        })
    });
    g.bench_function("api_key_negative_hit", |b| {
        b.iter(|| {
            rt.block_on(api_key(
                &plane.keys,
                black_box("ffffffffffff"),
                Instant::now(),
            ))
            .unwrap()
        })
    });
    // A true miss: every prefix is new, so each iteration loads from SQLite (and
    // caches the "not found").
    let mut n: u64 = 0;
    g.bench_function("api_key_miss_store_load", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("{:012x}", 0x1000_0000_0000u64 + n)
            },
            |prefix| {
                rt.block_on(api_key(&plane.keys, &prefix, Instant::now()))
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let Plane { control, db, .. } = plane;
    rt.block_on(async {
        control.store().close().await;
        db.cleanup().await;
    });
}

// ---- JWT -------------------------------------------------------------------------

/// Keys held in memory: the verifier fetches them once.
struct MemoryKeys(Vec<Jwk>);

impl KeySource for MemoryKeys {
    // `KeySource` is an `#[async_trait]` trait; this is that macro's expansion.
    fn fetch<'life0, 'async_trait>(
        &'life0 self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Jwk>, String>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let keys = self.0.clone();
        Box::pin(async move { Ok(keys) })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

fn verifier(jwks: Vec<Jwk>, alg: Algorithm) -> JwtVerifier {
    let spec = IssuerSpec {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec![alg],
        tenant_claim: "tenant_id".into(),
        role_claim: "role".into(),
        source: Arc::new(MemoryKeys(jwks)),
        min_refetch: Duration::from_secs(3600),
        refresh: Duration::from_secs(3600),
        max_lifetime: None,
    };
    JwtVerifier::new(vec![spec], 60, 8192)
}

fn claims(sub: &str, exp: i64) -> serde_json::Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant_id": "bench-tenant",
        "role": "developer", "iat": now_s(), "exp": exp,
    })
}

struct Es256 {
    encoding: jsonwebtoken::EncodingKey,
    jwk: Jwk,
}

fn es256_key() -> Es256 {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec(); // 0x04 || x || y
    let jwk: Jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "es-bench",
        "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
    }))
    .unwrap();
    Es256 {
        encoding: jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref()),
        jwk,
    }
}

fn es256_token(k: &Es256, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("es-bench".into());
    jsonwebtoken::encode(&header, claims, &k.encoding).unwrap()
}

fn jwt(c: &mut Criterion) {
    let rt = runtime();
    let rsa = SigningKey::generate().unwrap();
    let rsa_jwk: Jwk =
        serde_json::from_value(serde_json::to_value(rsa.public_jwk()).unwrap()).expect("jwk");
    let rs_verifier = verifier(vec![rsa_jwk], Algorithm::RS256);
    let es = es256_key();
    let es_verifier = verifier(vec![es.jwk.clone()], Algorithm::ES256);

    let cached_rs = rsa.sign(&claims("u-cached", now_s() + 3600)).unwrap();
    let cached_es = es256_token(&es, &claims("u-cached", now_s() + 3600));
    // Uncached: the verifier never caches a token that is valid only thanks to the
    // leeway (here 60 s), so an `exp` one second ago makes every verification a full
    // one (hash, two cache misses, parse, signature, claims) with one token. Each
    // benchmark below takes about 4 s, well inside the leeway.
    let uncached_rs = rsa.sign(&claims("u-uncached", now_s() - 1)).unwrap();
    let uncached_es = es256_token(&es, &claims("u-uncached", now_s() - 1));

    rt.block_on(async {
        for (v, t) in [
            (&rs_verifier, &cached_rs),
            (&rs_verifier, &uncached_rs),
            (&es_verifier, &cached_es),
            (&es_verifier, &uncached_es),
        ] {
            let id = v.verify(t).await.expect("token verifies");
            assert_eq!(id.tenant_id, "bench-tenant");
        }
    });
    let checks = rs_verifier.signature_checks();
    rt.block_on(rs_verifier.verify(&uncached_rs)).unwrap();
    assert_eq!(
        rs_verifier.signature_checks(),
        checks + 1,
        "must not be cached"
    );

    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rs256_cached", |b| {
        b.iter(|| {
            rt.block_on(rs_verifier.verify(black_box(&cached_rs)))
                .unwrap()
        })
    });
    g.bench_function("rs256_uncached", |b| {
        b.iter(|| {
            rt.block_on(rs_verifier.verify(black_box(&uncached_rs)))
                .unwrap()
        })
    });
    g.bench_function("es256_cached", |b| {
        b.iter(|| {
            rt.block_on(es_verifier.verify(black_box(&cached_es)))
                .unwrap()
        })
    });
    g.bench_function("es256_uncached", |b| {
        b.iter(|| {
            rt.block_on(es_verifier.verify(black_box(&uncached_es)))
                .unwrap()
        })
    });
    g.finish();
}

// ---- RBAC ------------------------------------------------------------------------

fn rbac(c: &mut Criterion) {
    let developer = tenantgate_core::domain::default_policies()
        .into_iter()
        .find(|p| p.role == "developer")
        .unwrap();
    let admin = Policy {
        role: "admin".into(),
        permissions: vec![Permission::new("*", "*")],
    };
    // 20 specific grants; the matching one is the wildcard-action grant at the end.
    let mut permissions: Vec<Permission> = (0..19)
        .map(|i| Permission::new("read", &format!("resource_{i}")))
        .collect();
    permissions.push(Permission::new("*", "invoices"));
    let big = Policy {
        role: "billing".into(),
        permissions,
    };

    let cases = [
        ("admin_wildcard", &admin, Action::Delete, "resources"),
        ("developer_read_star", &developer, Action::Read, "resources"),
        (
            "developer_delete_denied",
            &developer,
            Action::Delete,
            "invoices",
        ),
        ("20_grants_last_matches", &big, Action::Update, "invoices"),
    ];
    let mut g = c.benchmark_group("rbac");
    g.throughput(Throughput::Elements(1));
    for (name, policy, action, resource) in cases {
        g.bench_function(name, |b| {
            b.iter(|| policy.allows(black_box(action), black_box(resource)))
        });
    }
    g.bench_function("action_from_method+allows", |b| {
        b.iter(|| {
            let a = Action::from_method(black_box("PATCH")).unwrap();
            developer.allows(a, black_box("resources"))
        })
    });
    // What the proxy runs: the policy compiled once per tenant view.
    for (name, policy, action, resource) in cases {
        let grants = Grants::new(policy);
        g.bench_function(format!("compiled/{name}"), |b| {
            b.iter(|| grants.allows(black_box(action), black_box(resource)))
        });
    }
    g.finish();
}

// ---- route -----------------------------------------------------------------------

fn route(c: &mut Criterion) {
    let rc = |prefix: &str, public: bool| RouteSettings {
        prefix: prefix.into(),
        upstreams: vec!["127.0.0.1:9".into()],
        resource: None,
        public,
        audience: prefix.into(),
        bind_request: None,
        assertion: true,
        tls: false,
        ca_file: None,
        ..RouteSettings::default()
    };
    let table = RouteTable::build(&[
        rc("/api/", false),
        rc("/api/v1/", false),
        rc("/api/v1/public/", true),
        rc("/jobs/", false),
        rc("/static/", true),
    ])
    .unwrap();
    let path = "/api/v1/resources/42?expand=owner";
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("check_path+find+resource", |b| {
        b.iter(|| {
            let p = black_box(path);
            check_path(p).unwrap();
            let r = table.find(p).unwrap();
            black_box(r.resource_for(p).len())
        })
    });
    g.finish();
}

// ---- tenant assertion --------------------------------------------------------------

fn assertion(c: &mut Criterion) {
    use tenantgate_core::assertion::AssertionAlg;
    use tenantgate_core::config::AssertionSettings;
    use tenantgate_proxy::assertion::{Assertions, Binding};
    let rt = runtime();
    let table = RouteTable::build(&[RouteSettings {
        prefix: "/api/v1/".into(),
        upstreams: vec!["127.0.0.1:9".into()],
        resource: None,
        public: false,
        audience: "/api/v1/".into(),
        bind_request: None,
        assertion: true,
        tls: false,
        ca_file: None,
        ..RouteSettings::default()
    }])
    .unwrap();
    let route = table.find("/api/v1/x").unwrap();
    let principals: Vec<Principal> = (0..1000)
        .map(|i| {
            let id = format!("0190c2f5-7d1e-7c3a-9f00-{i:012}");
            Principal::new("acme", &id, "developer", AuthMethod::ApiKey, Some(&id)).unwrap()
        })
        .collect();
    let mut g = c.benchmark_group("assertion");
    g.throughput(Throughput::Elements(1));
    for alg in [AssertionAlg::Es256, AssertionAlg::EdDsa] {
        // A fresh store per algorithm: the fleet's first key has the configured one.
        let db = TestDb::sqlite();
        let store = rt.block_on(Store::open(&db.url, 2)).unwrap();
        let a = Assertions::new(AssertionSettings {
            enabled: true,
            issuer: "tenantgate".into(),
            algorithm: alg,
            bind_request: false,
            publish_ahead: Duration::from_secs(60),
            rotate_after: Duration::from_secs(86_400),
        });
        rt.block_on(a.refresh(&store, &[7u8; 32])).unwrap();
        for p in &principals {
            a.header(route, p, now_s(), None).unwrap();
        }
        let mut i = 0;
        g.bench_function(format!("amortised hit, 1000 principals ({alg})"), |b| {
            b.iter(|| {
                i = (i + 7) % principals.len();
                black_box(a.header(route, &principals[i], now_s(), None).unwrap())
            })
        });
        g.bench_function(format!("bound: sign per request ({alg})"), |b| {
            b.iter(|| {
                let binding = Binding {
                    request_id: "0190c2f5-7d1e-7c3a-9f00-000000000001",
                    method: "GET",
                    path_and_query: "/api/v1/resources/42?expand=owner",
                };
                black_box(
                    a.header(route, &principals[0], now_s(), Some(binding))
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

// ---- rate limit ------------------------------------------------------------------

fn ratelimit(c: &mut Criterion) {
    let limiter = LocalLimiter::new(Arc::new(MonotonicClock::default()));
    let limit = RateLimit {
        max_requests: u64::MAX / 4,
        window_seconds: 1,
        burst: None,
    };
    let tenants: Vec<String> = (0..10_000).map(|i| format!("tenant-{i:05}")).collect();
    for t in &tenants {
        limiter.check(t, &limit);
    }
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("local_check_one_tenant", |b| {
        b.iter(|| limiter.check(black_box("tenant-00042"), &limit))
    });
    let mut i = 0usize;
    g.bench_function("local_check_10k_tenants", |b| {
        b.iter(|| {
            i = (i + 7919) % tenants.len();
            limiter.check(black_box(&tenants[i]), &limit)
        })
    });
    g.bench_function("decision_headers", |b| {
        let d = limiter.check("tenant-00042", &limit);
        b.iter(|| black_box(d).headers())
    });
    // A key with its own limit: two buckets and two items in each structured field.
    g.bench_function("tenant+key_check_and_headers", |b| {
        let key_limit = RateLimit {
            max_requests: u64::MAX / 8,
            window_seconds: 10,
            burst: None,
        };
        b.iter(|| {
            let l = Limits {
                tenant: limiter.check(black_box("tenant-00042"), &limit),
                key: Some(limiter.check(
                    black_box("k:0190f0e4-7d7b-7c4e-9a53-4c2c5d3b2a10"),
                    &key_limit,
                )),
                quota: None,
            };
            l.headers()
        })
    });
    g.finish();
}

// ---- headers ---------------------------------------------------------------------

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0 (criterion)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("content-type", "application/json"),
        (
            "x-api-key",
            "tg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR",
        ),
        ("x-request-id", "0b5c5d76-3f0e-4d4e-9d0f-2a7a4f1d9a11"),
        ("x-forwarded-for", "203.0.113.7"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        // Spoofed identity headers, in odd cases and twice.
        ("X-Tenant-Id", "victim"),
        ("x-tenant-id", "victim-2"),
        ("X-User-Id", "root"),
        ("x-auth-method", "api_key"),
        ("x-tenantgate-debug", "1"),
    ] {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn headers(c: &mut Criterion) {
    let base = request_headers();
    let key_id = "2f1c7a0e-6d55-4c1b-a1a4-0d1f4f1e9b77";
    let principal = Principal::new(
        "acme",
        key_id,
        "developer",
        AuthMethod::ApiKey,
        Some(key_id),
    )
    .unwrap();
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("clone_15_headers(baseline)", |b| {
        b.iter_batched(|| (), |()| black_box(base.clone()), BatchSize::SmallInput)
    });
    g.bench_function("scrub_15_headers", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                for name in identity_headers_in(&h) {
                    h.remove(&name);
                }
                h
            },
            BatchSize::SmallInput,
        )
    });
    // The upstream request as Pingora hands it over (parsed with a case map), and the
    // five identity headers plus the request id injected, X-API-Key and Authorization
    // removed: with Pingora's own methods, and as the proxy does it now.
    let mut parsed = RequestHeader::build("GET", b"/api/v1/resources/42", Some(16)).unwrap();
    for (name, value) in base.iter() {
        parsed
            .append_header(name.as_str().to_owned(), value.clone())
            .unwrap();
    }
    let rid = HeaderValue::from_static("0b6f3a52-3b4c-4a8e-9d57-5c0b8a2d7f11");
    g.bench_function("inject_upstream(pingora_insert_header)", |b| {
        b.iter_batched(
            || parsed.clone(),
            |mut r| {
                r.remove_header("x-api-key");
                r.remove_header("authorization");
                for (name, value) in principal.headers() {
                    r.insert_header(name.as_str().to_owned(), value).unwrap();
                }
                r.insert_header("x-request-id", rid.clone()).unwrap();
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("inject_upstream(edit_request)", |b| {
        b.iter_batched(
            || parsed.clone(),
            |mut r| {
                edit_request(
                    &mut r,
                    &[&X_API_KEY, &AUTHORIZATION],
                    principal
                        .headers()
                        .chain([(X_REQUEST_ID.clone(), rid.clone())]),
                )
                .unwrap();
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("scrub+inject", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                for name in identity_headers_in(&h) {
                    h.remove(&name);
                }
                h.remove("x-api-key");
                for (name, value) in principal.headers() {
                    h.insert(name, value);
                }
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---- metering --------------------------------------------------------------------

fn meter(c: &mut Criterion) {
    let meter = Meter::new("bench-node".into());
    let tenants: Vec<String> = (0..1_000).map(|i| format!("tenant-{i:04}")).collect();
    let sample = Sample {
        at_unix_s: now_s(),
        bytes_in: 120,
        bytes_out: 900,
        latency_us: 350,
        ..Sample::default()
    };
    for t in &tenants {
        meter.record(t, &sample);
    }
    let mut g = c.benchmark_group("meter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_one_tenant", |b| {
        b.iter(|| meter.record(black_box("tenant-0042"), black_box(&sample)))
    });
    let mut i = 0usize;
    g.bench_function("record_1k_tenants", |b| {
        b.iter(|| {
            i = (i + 7) % tenants.len();
            meter.record(black_box(&tenants[i]), black_box(&sample))
        })
    });
    g.finish();
}

// ---- autoscaling signals ----------------------------------------------------------

/// What the hot path adds per forwarded request for autoscaling: the route's
/// in-flight up, then down with the request count and latency bucket.
fn signals(c: &mut Criterion) {
    use tenantgate_proxy::signals::RouteSignals;
    let s = RouteSignals::default();
    let mut g = c.benchmark_group("signals");
    g.throughput(Throughput::Elements(1));
    let mut latency = 0u64;
    g.bench_function("started+finished", |b| {
        b.iter(|| {
            latency = (latency + 7_919) % 2_000_000;
            s.started();
            s.finished(black_box(latency));
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = stages;
    config = config();
    targets = api_keys, control, jwt, rbac, route, assertion, ratelimit, headers, meter, signals
}
criterion_main!(stages);
