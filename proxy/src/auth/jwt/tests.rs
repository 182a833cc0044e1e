use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures::FutureExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tenantgate_core::config::{IssuerKeys, IssuerSettings};
use tenantgate_core::jwt::SigningKey;

use super::source::{parse_jwks, pem_to_jwk, usable_stored_keys};
use super::*;

const ISS: &str = "https://idp.example.com";
const AUD: &str = "tenantgate";

// ---- helpers ----------------------------------------------------------------------

/// An in-memory key source that counts its fetches.
struct FakeSource {
    keys: Mutex<Result<Vec<Jwk>, String>>,
    fetches: AtomicUsize,
    delay: Duration,
}

impl FakeSource {
    fn new(keys: Vec<Jwk>) -> Arc<Self> {
        Self::with(Ok(keys), Duration::ZERO)
    }
    fn failing() -> Arc<Self> {
        Self::with(Err("down".into()), Duration::ZERO)
    }
    fn with(keys: Result<Vec<Jwk>, String>, delay: Duration) -> Arc<Self> {
        Arc::new(FakeSource {
            keys: Mutex::new(keys),
            fetches: AtomicUsize::new(0),
            delay,
        })
    }
    fn set(&self, keys: Result<Vec<Jwk>, String>) {
        *self.keys.lock().unwrap() = keys;
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeySource for FakeSource {
    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.keys.lock().unwrap().clone()
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

fn jwk_of(key: &SigningKey) -> Jwk {
    serde_json::from_value(serde_json::to_value(key.public_jwk()).unwrap()).unwrap()
}

fn spec(source: Arc<dyn KeySource>) -> IssuerSpec {
    IssuerSpec {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms: vec![Algorithm::RS256],
        tenant_claim: "tenant_id".into(),
        role_claim: "role".into(),
        source,
        min_refetch: Duration::from_secs(10),
        refresh: Duration::from_secs(300),
        max_lifetime: None,
    }
}

fn verifier(specs: Vec<IssuerSpec>) -> JwtVerifier {
    JwtVerifier::new(specs, 30, 8192)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "user-1", "tenant_id": "acme", "role": "admin",
        "iat": now(), "exp": now() + 600,
    })
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// One RSA key, served by a fake source, behind a verifier.
struct Setup {
    key: SigningKey,
    source: Arc<FakeSource>,
    v: JwtVerifier,
}

fn setup() -> Setup {
    let key = SigningKey::generate().unwrap();
    let source = FakeSource::new(vec![jwk_of(&key)]);
    let v = verifier(vec![spec(source.clone())]);
    Setup { key, source, v }
}

async fn err(v: &JwtVerifier, token: &str) -> JwtError {
    v.verify(token).await.unwrap_err()
}

#[test]
fn verifier_and_its_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let v = verifier(vec![]);
    send_sync(&v);
    send(&v.verify("a.b.c"));
    send(&v.warm_up());
}

// ---- the happy path and the cache ---------------------------------------------------

#[tokio::test]
async fn accepts_valid_rs256_token() {
    let s = setup();
    let token = s.key.sign(&claims()).unwrap();
    let id = s.v.verify(&token).await.unwrap();
    assert_eq!(id.tenant_id, "acme");
    assert_eq!(id.user_id, "user-1");
    assert_eq!(id.role, "admin");
    assert_eq!(id.issuer, ISS);
    assert_eq!(id.exp, claims()["exp"].as_i64().unwrap());
}

#[tokio::test]
async fn second_verify_is_served_from_cache_without_awaiting() {
    let s = setup();
    s.v.warm_up().await;
    assert_eq!(s.source.fetches(), 1);
    let token = s.key.sign(&claims()).unwrap();
    let first = s.v.verify(&token).await.unwrap();
    assert_eq!(s.v.signature_checks(), 1);
    // A hit completes on the first poll: no I/O, no signature check.
    let second =
        s.v.verify(&token)
            .now_or_never()
            .expect("cache hit must not await")
            .unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(s.v.signature_checks(), 1);
    assert_eq!(s.source.fetches(), 1);
    assert_eq!(s.v.cached_tokens(), 1);
}

#[tokio::test]
async fn cache_entry_ends_at_token_exp() {
    let key = SigningKey::generate().unwrap();
    let v = JwtVerifier::new(vec![spec(FakeSource::new(vec![jwk_of(&key)]))], 0, 8192);
    let token = key.sign(&with(claims(), "exp", json!(now() + 2))).unwrap();
    v.verify(&token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(err(&v, &token).await, JwtError::Expired);
}

#[test]
fn cache_ttl_is_until_exp_capped_at_five_minutes() {
    assert_eq!(cache_ttl(100, 40_000), Duration::from_secs(60));
    assert_eq!(cache_ttl(10_000, 0), MAX_CACHE_TTL);
    assert_eq!(cache_ttl(10, 20_000), Duration::ZERO);
    assert_eq!(cache_ttl(i64::MAX, 0), MAX_CACHE_TTL);
}

#[tokio::test]
async fn repeated_bad_token_is_refused_from_cache() {
    let s = setup();
    let other = SigningKey::generate().unwrap();
    let mut header = json!({"alg": "RS256", "kid": s.key.kid});
    let forged = other.sign_with_header(&header, &claims()).unwrap();
    assert_eq!(err(&s.v, &forged).await, JwtError::BadSignature);
    assert_eq!(err(&s.v, &forged).await, JwtError::BadSignature);
    assert_eq!(s.v.signature_checks(), 1);
    // Not confused with a good token.
    header["typ"] = json!("JWT");
    let good = s.key.sign_with_header(&header, &claims()).unwrap();
    s.v.verify(&good).await.unwrap();
}

#[tokio::test]
async fn invalidate_issuer_keys_drops_cached_tokens_of_that_issuer() {
    let s = setup();
    let token = s.key.sign(&claims()).unwrap();
    s.v.verify(&token).await.unwrap();
    s.v.invalidate_issuer_keys("https://other.example.com");
    s.v.verify(&token).await.unwrap();
    assert_eq!(s.v.signature_checks(), 1);
    s.v.invalidate_issuer_keys(ISS);
    s.v.verify(&token).await.unwrap();
    assert_eq!(s.v.signature_checks(), 2);
}

// ---- time claims ------------------------------------------------------------------------

#[tokio::test]
async fn rejects_expired_token() {
    let s = setup();
    let token = s
        .key
        .sign(&with(claims(), "exp", json!(now() - 120)))
        .unwrap();
    assert_eq!(err(&s.v, &token).await, JwtError::Expired);
}

#[tokio::test]
async fn accepts_expired_token_within_leeway_without_caching_it() {
    let s = setup();
    let token = s
        .key
        .sign(&with(claims(), "exp", json!(now() - 10)))
        .unwrap();
    s.v.verify(&token).await.unwrap();
    s.v.verify(&token).await.unwrap();
    assert_eq!(s.v.signature_checks(), 2);
}

#[tokio::test]
async fn rejects_token_not_yet_valid() {
    let s = setup();
    let token = s
        .key
        .sign(&with(claims(), "nbf", json!(now() + 120)))
        .unwrap();
    assert_eq!(err(&s.v, &token).await, JwtError::NotYetValid);
    let soon = s
        .key
        .sign(&with(claims(), "nbf", json!(now() + 10)))
        .unwrap();
    s.v.verify(&soon).await.unwrap();
}

#[tokio::test]
async fn leeway_is_capped_at_sixty_seconds() {
    let key = SigningKey::generate().unwrap();
    let v = JwtVerifier::new(vec![spec(FakeSource::new(vec![jwk_of(&key)]))], 3600, 8192);
    let token = key.sign(&with(claims(), "exp", json!(now() - 90))).unwrap();
    assert_eq!(err(&v, &token).await, JwtError::Expired);
}

#[tokio::test]
async fn fractional_numeric_dates_are_accepted() {
    let s = setup();
    let token = s
        .key
        .sign(&with(claims(), "exp", json!(now() as f64 + 600.5)))
        .unwrap();
    s.v.verify(&token).await.unwrap();
    let text = s
        .key
        .sign(&with(claims(), "exp", json!("9999999999")))
        .unwrap();
    assert_eq!(err(&s.v, &text).await, JwtError::Malformed);
}

// ---- issuer and audience ----------------------------------------------------------------

#[tokio::test]
async fn rejects_wrong_audience() {
    let s = setup();
    let token = s
        .key
        .sign(&with(claims(), "aud", json!("someone-else")))
        .unwrap();
    assert_eq!(err(&s.v, &token).await, JwtError::WrongAudience);
    let none = s.key.sign(&without(claims(), "aud")).unwrap();
    assert_eq!(err(&s.v, &none).await, JwtError::WrongAudience);
    let list = s
        .key
        .sign(&with(claims(), "aud", json!(["x", AUD])))
        .unwrap();
    s.v.verify(&list).await.unwrap();
    let bad_list = s
        .key
        .sign(&with(claims(), "aud", json!(["x", "y"])))
        .unwrap();
    assert_eq!(err(&s.v, &bad_list).await, JwtError::WrongAudience);
}

#[tokio::test]
async fn rejects_unknown_issuer() {
    let s = setup();
    for iss in [
        "https://evil.example.com",
        "https://idp.example.com/",
        "HTTPS://IDP.EXAMPLE.COM",
    ] {
        let token = s.key.sign(&with(claims(), "iss", json!(iss))).unwrap();
        assert_eq!(err(&s.v, &token).await, JwtError::UnknownIssuer, "{iss}");
    }
    let none = s.key.sign(&without(claims(), "iss")).unwrap();
    assert_eq!(err(&s.v, &none).await, JwtError::MissingClaim("iss"));
}

#[tokio::test]
async fn token_signed_by_one_issuer_cannot_claim_another() {
    let key_a = SigningKey::generate().unwrap();
    let key_b = SigningKey::generate().unwrap();
    let src_b = FakeSource::new(vec![jwk_of(&key_b)]);
    let mut spec_b = spec(src_b.clone());
    spec_b.issuer = "https://b.example.com".into();
    let v = verifier(vec![spec(FakeSource::new(vec![jwk_of(&key_a)])), spec_b]);
    // Issuer A's key, issuer B's name: B's keys do not include A's kid.
    let token = key_a
        .sign(&with(claims(), "iss", json!("https://b.example.com")))
        .unwrap();
    assert_eq!(err(&v, &token).await, JwtError::UnknownKey);
    assert_eq!(src_b.fetches(), 1);
}

// ---- required claims ----------------------------------------------------------------------

#[tokio::test]
async fn rejects_missing_claims() {
    let s = setup();
    for (claim, name) in [
        ("exp", "exp"),
        ("sub", "sub"),
        ("tenant_id", "tenant_id"),
        ("role", "role"),
    ] {
        let token = s.key.sign(&without(claims(), claim)).unwrap();
        assert_eq!(
            err(&s.v, &token).await,
            JwtError::MissingClaim(name),
            "{claim}"
        );
    }
    for (claim, value) in [
        ("tenant_id", json!("")),
        ("tenant_id", json!(42)),
        ("role", json!(["admin"])),
        ("sub", json!("")),
    ] {
        let token = s.key.sign(&with(claims(), claim, value)).unwrap();
        assert!(
            matches!(
                err(&s.v, &token).await,
                JwtError::MissingClaim(_) | JwtError::Malformed
            ),
            "{claim}"
        );
    }
}

#[tokio::test]
async fn uses_the_issuers_configured_claim_names() {
    let key = SigningKey::generate().unwrap();
    let mut sp = spec(FakeSource::new(vec![jwk_of(&key)]));
    sp.tenant_claim = "org".into();
    sp.role_claim = "https://example.com/role".into();
    let v = verifier(vec![sp]);
    let c = json!({"iss": ISS, "aud": AUD, "sub": "u", "org": "globex", "https://example.com/role": "viewer",
        "tenant_id": "acme", "role": "admin", "exp": now() + 60});
    let id = v.verify(&key.sign(&c).unwrap()).await.unwrap();
    assert_eq!(
        (id.tenant_id.as_str(), id.role.as_str()),
        ("globex", "viewer")
    );
    let missing = key.sign(&without(c, "org")).unwrap();
    assert_eq!(err(&v, &missing).await, JwtError::MissingClaim("org"));
}

#[tokio::test]
async fn rejects_control_characters_in_identity_claims() {
    let s = setup();
    let token = s
        .key
        .sign(&with(
            claims(),
            "tenant_id",
            json!("acme\r\nx-tenant-id: evil"),
        ))
        .unwrap();
    assert_eq!(err(&s.v, &token).await, JwtError::Malformed);
}

#[tokio::test]
async fn rejects_duplicate_claims() {
    let s = setup();
    let good = s.key.sign(&claims()).unwrap();
    let sig = good.rsplit('.').next().unwrap();
    let header = good.split('.').next().unwrap();
    let payload = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"u","tenant_id":"acme","tenant_id":"evil","role":"admin","exp":{}}}"#,
        now() + 60
    );
    let token = format!("{header}.{}.{sig}", URL_SAFE_NO_PAD.encode(payload));
    assert_eq!(err(&s.v, &token).await, JwtError::Malformed);
}

// ---- algorithm confusion ------------------------------------------------------------------

#[tokio::test]
async fn rejects_alg_none() {
    let s = setup();
    for alg in ["none", "None", "NONE", ""] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": s.key.kid})),
            b64(&claims())
        );
        assert_eq!(
            err(&s.v, &token).await,
            JwtError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
    let no_alg = format!("{}.{}.", b64(&json!({"kid": s.key.kid})), b64(&claims()));
    assert_eq!(err(&s.v, &no_alg).await, JwtError::Malformed);
}

#[tokio::test]
async fn rejects_hs256_signed_with_the_rsa_public_key() {
    let s = setup();
    let pem = s.key.public_key_pem().unwrap();
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(der_b64).unwrap();
    let jwk_json = serde_json::to_vec(&s.key.public_jwk()).unwrap();
    let secrets: [&[u8]; 4] = [pem.as_bytes(), pem.trim_end().as_bytes(), &der, &jwk_json];
    // Even an issuer that (wrongly) lists HS256 never gets it.
    let mut sp = spec(s.source.clone());
    sp.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
    let lenient = verifier(vec![sp]);
    for secret in secrets {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(s.key.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        assert_eq!(err(&s.v, &token).await, JwtError::AlgorithmNotAllowed);
        assert_eq!(err(&lenient, &token).await, JwtError::AlgorithmNotAllowed);
    }
    assert_eq!(s.v.signature_checks() + lenient.signature_checks(), 0);
}

#[tokio::test]
async fn header_alg_must_fit_the_issuer_and_the_key() {
    let s = setup();
    let lie = |alg: &str| {
        s.key
            .sign_with_header(&json!({"alg": alg, "kid": s.key.kid}), &claims())
            .unwrap()
    };
    // Not on the issuer's list.
    assert_eq!(
        err(&s.v, &lie("RS384")).await,
        JwtError::AlgorithmNotAllowed
    );
    assert_eq!(
        err(&s.v, &lie("ES256")).await,
        JwtError::AlgorithmNotAllowed
    );
    // On the list, but the key is RSA and declares RS256.
    let mut sp = spec(s.source.clone());
    sp.algorithms = vec![
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::ES256,
        Algorithm::PS256,
    ];
    let wide = verifier(vec![sp]);
    assert_eq!(
        err(&wide, &lie("ES256")).await,
        JwtError::AlgorithmNotAllowed
    );
    assert_eq!(
        err(&wide, &lie("RS384")).await,
        JwtError::AlgorithmNotAllowed
    );
    assert_eq!(
        err(&wide, &lie("PS256")).await,
        JwtError::AlgorithmNotAllowed
    );
    // A JWK without its own alg accepts the RSA family; the signature still decides.
    let mut jwk = jwk_of(&s.key);
    jwk.common.key_algorithm = None;
    let mut sp = spec(FakeSource::new(vec![jwk]));
    sp.algorithms = vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];
    let undeclared = verifier(vec![sp]);
    assert_eq!(
        err(&undeclared, &lie("PS256")).await,
        JwtError::BadSignature
    );
    assert_eq!(
        err(&undeclared, &lie("ES256")).await,
        JwtError::AlgorithmNotAllowed
    );
    undeclared.verify(&lie("RS256")).await.unwrap();
}

#[tokio::test]
async fn hmac_keys_in_a_key_set_are_never_used() {
    let secret = b"shared-secret-shared-secret-shared";
    let oct: Jwk = serde_json::from_value(json!({
        "kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(secret)
    }))
    .unwrap();
    let mut sp = spec(FakeSource::new(vec![oct]));
    sp.algorithms = vec![Algorithm::HS256, Algorithm::RS256];
    let v = verifier(vec![sp]);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hmac".into());
    let token =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
    assert_eq!(err(&v, &token).await, JwtError::AlgorithmNotAllowed);
    let mut header = json!({"alg": "RS256", "kid": "hmac"});
    header["typ"] = json!("JWT");
    let rsa = SigningKey::generate()
        .unwrap()
        .sign_with_header(&header, &claims())
        .unwrap();
    // The oct key was never loaded: no usable key at all.
    assert_eq!(err(&v, &rsa).await, JwtError::KeysUnavailable);
}

// ---- signatures -----------------------------------------------------------------------------

#[tokio::test]
async fn rejects_tampered_payload() {
    let s = setup();
    let token = s.key.sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let evil = b64(&with(claims(), "tenant_id", json!("globex")));
    let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
    assert_eq!(err(&s.v, &tampered).await, JwtError::BadSignature);
    // Flip one signature byte.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(err(&s.v, &flipped).await, JwtError::BadSignature);
    let empty = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(err(&s.v, &empty).await, JwtError::BadSignature);
}

#[tokio::test]
async fn rejects_signature_from_another_key_with_the_same_kid() {
    let s = setup();
    let mut other = SigningKey::generate().unwrap();
    other.kid = s.key.kid.clone();
    let token = other.sign(&claims()).unwrap();
    assert_eq!(err(&s.v, &token).await, JwtError::BadSignature);
}

#[tokio::test]
async fn rejects_critical_header_extensions() {
    let s = setup();
    let crit = |v: Value| {
        s.key
            .sign_with_header(
                &json!({"alg": "RS256", "kid": s.key.kid, "crit": v, "b64": false}),
                &claims(),
            )
            .unwrap()
    };
    assert_eq!(
        err(&s.v, &crit(json!(["b64"]))).await,
        JwtError::UnsupportedCritical
    );
    assert_eq!(
        err(&s.v, &crit(json!("b64"))).await,
        JwtError::UnsupportedCritical
    );
    assert_eq!(
        err(&s.v, &crit(Value::Null)).await,
        JwtError::UnsupportedCritical
    );
    s.v.verify(&crit(json!([]))).await.unwrap();
}

/// A TCP listener that counts connections and never answers.
async fn trap() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, hits)
}

#[tokio::test]
async fn ignores_embedded_jwk_jku_x5u_x5c() {
    let s = setup();
    let attacker = SigningKey::generate().unwrap();
    let (url, hits) = trap().await;
    let header = |kid: &str| {
        json!({"alg": "RS256", "kid": kid, "jku": url, "x5u": url, "jwk": attacker.public_jwk(),
               "x5c": [STANDARD.encode(b"not a cert")]})
    };
    let own_kid = attacker
        .sign_with_header(&header(&attacker.kid), &claims())
        .unwrap();
    assert_eq!(err(&s.v, &own_kid).await, JwtError::UnknownKey);
    let our_kid = attacker
        .sign_with_header(&header(&s.key.kid), &claims())
        .unwrap();
    assert_eq!(err(&s.v, &our_kid).await, JwtError::BadSignature);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // The only fetch was our own source's, for the unknown kid.
    assert_eq!(s.source.fetches(), 1);
}

// ---- shape --------------------------------------------------------------------------------

#[tokio::test]
async fn rejects_oversized_token_before_parsing() {
    let key = SigningKey::generate().unwrap();
    let source = FakeSource::new(vec![jwk_of(&key)]);
    let token = key.sign(&claims()).unwrap();
    let exact = JwtVerifier::new(vec![spec(source.clone())], 30, token.len());
    exact.verify(&token).await.unwrap();
    let small = JwtVerifier::new(vec![spec(source.clone())], 30, token.len() - 1);
    assert_eq!(err(&small, &token).await, JwtError::TooLarge);
    assert_eq!(err(&small, &"x".repeat(1 << 20)).await, JwtError::TooLarge);
    assert_eq!(small.signature_checks(), 0);
}

#[tokio::test]
async fn rejects_malformed_tokens() {
    let s = setup();
    let good = s.key.sign(&claims()).unwrap();
    let p: Vec<&str> = good.split('.').collect();
    let (h, c, sig) = (p[0], p[1], p[2]);
    let enc = |raw: &str| URL_SAFE_NO_PAD.encode(raw);
    let cases = vec![
        String::new(),
        "abc".into(),
        format!("{h}.{c}"),
        format!("{h}.{c}.{sig}.{sig}"),
        format!("{h}.{c}.{sig}."),
        "..".into(),
        format!(".{c}.{sig}"),
        format!("{h}..{sig}"),
        format!("{h}=.{c}.{sig}"),
        format!("{h}.{c}.{sig}="),
        format!("{h}.{c}.{}", sig.replace('-', "+").replace('_', "/") + "+"),
        format!("{}.{c}.{sig}", STANDARD.encode(r#"{"alg":"RS256"} "#)),
        format!("{}.{c}.{sig}", enc("not json")),
        format!("{}.{c}.{sig}", enc(r#"["RS256"]"#)),
        format!("{}.{c}.{sig}", enc(r#"{"alg":"RS256"} x"#)),
        format!("{}.{c}.{sig}", enc(r#"{"alg":"RS256","alg":"RS256"}"#)),
        format!("{}.{c}.{sig}", enc(r#"{"alg":7}"#)),
        format!("{h}.{}.{sig}", enc("[1,2,3]")),
        format!("{h}.{}.{sig}", enc("\"claims\"")),
        format!("{h}.{}.{sig}", enc(r#"{"exp":1} {}"#)),
        format!("{h}.{}.{sig}", enc(r#"{"iss":["a"]}"#)),
        format!("{h}.{c}!.{sig}"),
        format!("{h}.{c}.{}", &sig[..sig.len() - 1]),
        "a.b.c".into(),
    ];
    for t in cases {
        assert_eq!(err(&s.v, &t).await, JwtError::Malformed, "{t:?}");
    }
    assert_eq!(s.v.signature_checks(), 0);
}

// ---- key sources, kids, refetching ------------------------------------------------------------

#[tokio::test]
async fn kidless_token_with_pem_file_issuer() {
    let key = SigningKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.pem");
    std::fs::write(&path, key.public_key_pem().unwrap()).unwrap();
    let source = Arc::new(PemFileSource::new(&path).unwrap());
    assert!(source.describe().contains("idp.pem"));
    let v = verifier(vec![spec(source)]);
    let kidless = key
        .sign_with_header(&json!({"alg": "RS256", "typ": "JWT"}), &claims())
        .unwrap();
    v.verify(&kidless).await.unwrap();
    // A kid the token names is irrelevant for a single kid-less key.
    v.verify(&key.sign(&claims()).unwrap()).await.unwrap();
    let other = SigningKey::generate().unwrap();
    let forged = other
        .sign_with_header(&json!({"alg": "RS256"}), &claims())
        .unwrap();
    assert_eq!(err(&v, &forged).await, JwtError::BadSignature);
}

#[tokio::test]
async fn kidless_token_needs_exactly_one_key() {
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let v = verifier(vec![spec(FakeSource::new(vec![jwk_of(&a), jwk_of(&b)]))]);
    let kidless = a
        .sign_with_header(&json!({"alg": "RS256"}), &claims())
        .unwrap();
    assert_eq!(err(&v, &kidless).await, JwtError::UnknownKey);
    let one = verifier(vec![spec(FakeSource::new(vec![jwk_of(&a)]))]);
    one.verify(&kidless).await.unwrap();
}

#[test]
fn pem_file_source_rejects_garbage_and_private_keys() {
    assert!(pem_to_jwk(b"hello").is_err());
    let key = SigningKey::generate().unwrap();
    let private = tenantgate_core::jwt::pem_encode("PRIVATE KEY", &key.pkcs8_der().unwrap());
    assert!(pem_to_jwk(private.as_bytes()).is_err());
    assert!(PemFileSource::new(std::path::Path::new("/nonexistent/idp.pem")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_coalesced_and_paced() {
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let source = FakeSource::with(Ok(vec![jwk_of(&a)]), Duration::from_millis(100));
    let mut sp = spec(source.clone());
    sp.min_refetch = Duration::from_secs(1);
    let v = verifier(vec![sp]);
    v.warm_up().await;
    assert_eq!(source.fetches(), 1);
    // Any fetch, the warm-up's included, starts a min_refetch window.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // The issuer publishes key b; 50 requests with distinct tokens signed by b arrive.
    source.set(Ok(vec![jwk_of(&a), jwk_of(&b)]));
    let tokens: Vec<String> = (0..50)
        .map(|i| {
            b.sign(&with(claims(), "sub", json!(format!("user-{i}"))))
                .unwrap()
        })
        .collect();
    let results = futures::future::join_all(tokens.iter().map(|t| {
        let v = v.clone();
        let t = t.clone();
        tokio::spawn(async move { v.verify(&t).await })
    }))
    .await;
    for r in results {
        r.unwrap().unwrap();
    }
    assert_eq!(source.fetches(), 2, "50 unknown-kid requests, one fetch");
    let fetched = Instant::now();
    // Another unknown kid within min_refetch: no new fetch. (Decided by the
    // window itself: a host that stalled past it may fetch once more.)
    let c = SigningKey::generate().unwrap();
    assert_eq!(
        err(&v, &c.sign(&claims()).unwrap()).await,
        JwtError::UnknownKey
    );
    let allowed = if fetched.elapsed() < Duration::from_millis(900) {
        2
    } else {
        3
    };
    assert!(source.fetches() <= allowed, "{} fetches", source.fetches());
}

#[tokio::test]
async fn unknown_kid_refetches_again_after_min_refetch() {
    let a = SigningKey::generate().unwrap();
    let c = SigningKey::generate().unwrap();
    let source = FakeSource::new(vec![jwk_of(&a)]);
    let mut sp = spec(source.clone());
    sp.min_refetch = Duration::from_millis(200);
    let v = verifier(vec![sp]);
    v.warm_up().await;
    let token = c.sign(&claims()).unwrap();
    assert_eq!(err(&v, &token).await, JwtError::UnknownKey);
    assert_eq!(source.fetches(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    source.set(Ok(vec![jwk_of(&a), jwk_of(&c)]));
    v.verify(&token).await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test]
async fn invalidation_refetches_immediately_and_handles_rotation() {
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let source = FakeSource::new(vec![jwk_of(&a)]);
    let v = verifier(vec![spec(source.clone())]);
    let token_a = a.sign(&claims()).unwrap();
    v.verify(&token_a).await.unwrap();
    // Rotation: a is withdrawn, b published; min_refetch (10 s) does not delay it.
    source.set(Ok(vec![jwk_of(&b)]));
    v.invalidate_issuer_keys(ISS);
    assert_eq!(err(&v, &token_a).await, JwtError::UnknownKey);
    v.verify(&b.sign(&claims()).unwrap()).await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test]
async fn fetch_failure_keeps_the_last_good_key_set() {
    let s = setup();
    s.v.warm_up().await;
    s.source.set(Err("503 from the IdP".into()));
    s.v.invalidate_issuer_keys(ISS);
    s.v.verify(&s.key.sign(&claims()).unwrap()).await.unwrap();
    assert_eq!(s.source.fetches(), 2);
    // An empty key set is treated as a failed fetch too.
    s.source.set(Ok(vec![]));
    s.v.invalidate_issuer_keys(ISS);
    s.v.verify(&s.key.sign(&claims()).unwrap()).await.unwrap();
    assert_eq!(s.source.fetches(), 3);
}

#[tokio::test]
async fn keys_unavailable_only_when_never_loaded() {
    let key = SigningKey::generate().unwrap();
    let source = FakeSource::failing();
    let mut sp = spec(source.clone());
    sp.min_refetch = Duration::from_millis(200);
    let v = verifier(vec![sp]);
    v.warm_up().await;
    let warmed = Instant::now();
    let token = key.sign(&claims()).unwrap();
    let e = err(&v, &token).await;
    assert_eq!(e, JwtError::KeysUnavailable);
    assert!(e.is_unavailable());
    assert!(!JwtError::UnknownKey.is_unavailable() && !JwtError::BadSignature.is_unavailable());
    // Paced: within min_refetch no second fetch, still unavailable (and not cached
    // as a rejection). Only checkable while the window lasts on this host.
    source.set(Ok(vec![jwk_of(&key)]));
    let r = v.verify(&token).await;
    if warmed.elapsed() < Duration::from_millis(150) {
        assert_eq!(r.err(), Some(JwtError::KeysUnavailable));
        assert_eq!(source.fetches(), 1);
    }
    // After the window the keys load and the same token verifies.
    let deadline = Instant::now() + Duration::from_secs(5);
    while v.verify(&token).await.is_err() {
        assert!(Instant::now() < deadline, "keys never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        source.fetches(),
        2,
        "one fetch per window, not one per request"
    );
}

#[tokio::test]
async fn stale_key_set_is_refreshed_in_the_background() {
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    let source = FakeSource::new(vec![jwk_of(&a)]);
    let mut sp = spec(source.clone());
    sp.min_refetch = Duration::from_millis(10);
    sp.refresh = Duration::from_millis(100);
    let v = verifier(vec![sp]);
    v.warm_up().await;
    source.set(Ok(vec![jwk_of(&b)]));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Served from the old set, and triggers the refresh.
    v.verify(&a.sign(&claims()).unwrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while source.fetches() < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(source.fetches(), 2);
    let fresh_a = a.sign(&with(claims(), "sub", json!("another"))).unwrap();
    assert_eq!(err(&v, &fresh_a).await, JwtError::UnknownKey);
}

#[tokio::test]
async fn es256_issuer_works_and_curve_must_match() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let enc = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("ec-1".into());
    let mut sp = spec(FakeSource::new(vec![jwk.clone()]));
    sp.algorithms = vec![Algorithm::ES256, Algorithm::ES384, Algorithm::RS256];
    let v = verifier(vec![sp]);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let token = jsonwebtoken::encode(&header, &claims(), &enc).unwrap();
    assert_eq!(v.verify(&token).await.unwrap().tenant_id, "acme");
    // Same signature, header claims ES384 / RS256: the P-256 key takes only ES256.
    let rest = token.split_once('.').unwrap().1;
    for alg in ["ES384", "RS256"] {
        let lie = format!("{}.{rest}", b64(&json!({"alg": alg, "kid": "ec-1"})));
        assert_eq!(err(&v, &lie).await, JwtError::AlgorithmNotAllowed, "{alg}");
    }
    // A public EC PEM works as a key file too.
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
        aws_lc_rs::signature::KeyPair::public_key(&pair),
    )
    .unwrap();
    let pem = tenantgate_core::jwt::pem_encode("PUBLIC KEY", spki.as_ref());
    let from_pem = pem_to_jwk(pem.as_bytes()).unwrap();
    let mut sp = spec(FakeSource::new(vec![from_pem]));
    sp.algorithms = vec![Algorithm::ES256];
    let v = verifier(vec![sp]);
    let kidless = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
    v.verify(&kidless).await.unwrap();
}

// ---- JWKS over HTTP -------------------------------------------------------------------------

/// Serves `body` with `status` to every request; counts requests.
async fn jwks_server(status: u16, body: String) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, hits)
}

fn issuer_settings(keys: IssuerKeys, algorithms: &[&str]) -> IssuerSettings {
    IssuerSettings {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
        keys,
        tenant_claim: "tenant_id".into(),
        role_claim: "role".into(),
        jwks_min_refetch: Duration::from_secs(10),
        jwks_refresh: Duration::from_secs(300),
        max_lifetime: None,
    }
}

#[tokio::test]
async fn jwks_url_source_end_to_end() {
    let key = SigningKey::generate().unwrap();
    let body = json!({"keys": [
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
        {"kty": "RSA", "use": "enc", "kid": "enc", "n": key.public_jwk().n, "e": "AQAB"},
        {"kty": "weird", "kid": "w"},
        {"kid": "no-kty"},
        "not a key",
        key.public_jwk(),
    ]})
    .to_string();
    let (url, hits) = jwks_server(200, body.clone()).await;
    let spec = IssuerSpec::from_settings(&issuer_settings(
        IssuerKeys::JwksUrl(url.clone()),
        &["RS256"],
    ))
    .unwrap();
    assert!(format!("{spec:?}").contains(&url));
    let v = verifier(vec![spec]);
    v.warm_up().await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    v.verify(&key.sign(&claims()).unwrap()).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let parsed = parse_jwks(body.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 5);
}

#[tokio::test]
async fn jwks_url_source_reports_http_failures() {
    let (url, _) = jwks_server(500, "{}".into()).await;
    assert!(JwksUrlSource::new(&url)
        .unwrap()
        .fetch()
        .await
        .unwrap_err()
        .contains("500"));
    let (url, _) = jwks_server(200, "<html>".into()).await;
    assert!(JwksUrlSource::new(&url).unwrap().fetch().await.is_err());
    let (url, _) = jwks_server(
        200,
        format!("{{\"keys\":[\"{}\"]}}", "x".repeat(JWKS_MAX_BYTES)),
    )
    .await;
    assert!(JwksUrlSource::new(&url)
        .unwrap()
        .fetch()
        .await
        .unwrap_err()
        .contains("larger"));
    // Nothing listens there (the listener is dropped at once).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src = JwksUrlSource::new(&format!("http://127.0.0.1:{port}/jwks")).unwrap();
    assert!(src.fetch().await.is_err());
    assert!(JwksUrlSource::new("ftp://x/jwks").is_err());
    assert!(JwksUrlSource::new("not a url").is_err());
}

#[tokio::test]
async fn jwks_fetch_times_out() {
    let (url, hits) = trap().await;
    let started = std::time::Instant::now();
    assert!(JwksUrlSource::new(&url).unwrap().fetch().await.is_err());
    assert!(started.elapsed() < JWKS_TIMEOUT + Duration::from_secs(1));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn issuer_spec_from_settings() {
    let key = SigningKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, key.public_key_pem().unwrap()).unwrap();
    let pem = || IssuerKeys::PublicKeyFile(path.clone());
    let mut settings = issuer_settings(pem(), &["RS256", "PS256"]);
    settings.tenant_claim = "org".into();
    settings.jwks_min_refetch = Duration::from_secs(3);
    settings.jwks_refresh = Duration::from_secs(60);
    let spec = IssuerSpec::from_settings(&settings).unwrap();
    assert_eq!(spec.algorithms, vec![Algorithm::RS256, Algorithm::PS256]);
    assert_eq!(spec.tenant_claim, "org");
    assert_eq!(spec.role_claim, "role");
    assert_eq!(spec.min_refetch, Duration::from_secs(3));
    assert_eq!(spec.refresh, Duration::from_secs(60));
    let hs = issuer_settings(pem(), &["HS256"]);
    assert!(IssuerSpec::from_settings(&hs)
        .unwrap_err()
        .contains("HS256"));
    let none = issuer_settings(pem(), &["none"]);
    assert!(IssuerSpec::from_settings(&none).is_err());
}

// ---- login keys from the store ----------------------------------------------------------------

#[test]
fn store_keys_include_active_and_recently_retired() {
    use tenantgate_core::store::StoredSigningKey;
    let now = 10 * super::source::RETIRED_KEY_GRACE_MS;
    let row = |key: &SigningKey, retired: Option<i64>| StoredSigningKey {
        kid: key.kid.clone(),
        public_jwk: serde_json::to_string(&key.public_jwk()).unwrap(),
        private_sealed: String::new(),
        created_at_ms: 0,
        retired_at_ms: retired,
    };
    let (a, b, c) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let mut broken = row(&a, None);
    broken.kid = "broken".into();
    broken.public_jwk = "{".into();
    let rows = vec![
        row(&a, None),
        row(&b, Some(now - 1000)),
        row(&c, Some(now - super::source::RETIRED_KEY_GRACE_MS - 1)),
        broken,
    ];
    let kids: Vec<String> = usable_stored_keys(&rows, now)
        .into_iter()
        .filter_map(|j| j.common.key_id)
        .collect();
    assert_eq!(kids, vec![a.kid.clone(), b.kid.clone()]);
}

#[tokio::test]
async fn login_issuer_verifies_admin_api_tokens() {
    use tenantgate_core::store::StoredSigningKey;
    let db = tenantgate_core::testing::TestDb::sqlite();
    let store = tenantgate_core::Store::open(&db.url, 1).await.unwrap();
    let login = "tenantgate-login";
    let v = verifier(vec![IssuerSpec::login(login, store.clone())]);
    let key = SigningKey::generate().unwrap();
    let login_claims = tenantgate_core::jwt::LoginClaims {
        sub: "u1".into(),
        tenant_id: "acme".into(),
        role: "developer".into(),
        iat: now(),
        exp: now() + 300,
        iss: login.into(),
        aud: tenantgate_core::jwt::LOGIN_AUDIENCE.into(),
        tv: 0,
    };
    let token = key.sign(&login_claims).unwrap();
    // No key yet: nothing could be loaded.
    assert_eq!(err(&v, &token).await, JwtError::KeysUnavailable);
    store
        .insert_signing_key(&StoredSigningKey {
            kid: key.kid.clone(),
            public_jwk: serde_json::to_string(&key.public_jwk()).unwrap(),
            private_sealed: "sealed".into(),
            created_at_ms: tenantgate_core::time::now_ms(),
            retired_at_ms: None,
        })
        .await
        .unwrap();
    v.invalidate_issuer_keys(login);
    let id = v.verify(&token).await.unwrap();
    assert_eq!(
        (id.tenant_id.as_str(), id.role.as_str(), id.issuer.as_str()),
        ("acme", "developer", login)
    );
    // Only RS256 and audience "tenantgate".
    let mut other_aud = login_claims.clone();
    other_aud.aud = "other".into();
    assert_eq!(
        err(&v, &key.sign(&other_aud).unwrap()).await,
        JwtError::WrongAudience
    );
    store.close().await;
    db.cleanup().await;
}

/// Rough timings (`cargo test -p tenantgate-proxy --release jwt::tests::timing -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "timing report, not a check"]
async fn timing() {
    let s = setup();
    s.v.warm_up().await;
    let token = s.key.sign(&claims()).unwrap();
    s.v.verify(&token).await.unwrap();
    let n = 200_000u32;
    let started = std::time::Instant::now();
    for _ in 0..n {
        s.v.verify(&token).now_or_never().unwrap().unwrap();
    }
    println!(
        "cached verify: {:?}/op ({} byte token)",
        started.elapsed() / n,
        token.len()
    );
    let started = std::time::Instant::now();
    let mut x = 0u8;
    for _ in 0..n {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        x ^= h[0];
    }
    println!("sha256: {:?}/op ({x})", started.elapsed() / n);
    let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let started = std::time::Instant::now();
    for _ in 0..n {
        assert!(s.v.inner.verified.get(&h).is_some());
    }
    println!("cache get: {:?}/op", started.elapsed() / n);
    let tokens: Vec<String> = (0..2000)
        .map(|i| {
            s.key
                .sign(&with(claims(), "sub", json!(format!("u{i}"))))
                .unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    for t in &tokens {
        s.v.verify(t).await.unwrap();
    }
    println!(
        "uncached verify: {:?}/op",
        started.elapsed() / tokens.len() as u32
    );
}

#[tokio::test]
async fn result_computed_across_an_invalidation_is_not_cached() {
    let key = SigningKey::generate().unwrap();
    let source = FakeSource::with(Ok(vec![jwk_of(&key)]), Duration::from_millis(200));
    let v = verifier(vec![spec(source.clone())]);
    let token = key.sign(&claims()).unwrap();
    let pending = tokio::spawn({
        let (v, token) = (v.clone(), token.clone());
        async move { v.verify(&token).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The key is revoked while the first verification waits for the keys.
    v.invalidate_issuer_keys(ISS);
    pending.await.unwrap().unwrap();
    source.set(Ok(vec![jwk_of(&SigningKey::generate().unwrap())]));
    assert_eq!(err(&v, &token).await, JwtError::UnknownKey);
}

// ---- lifetimes and issuers bound to a tenant ----------------------------------------------

#[tokio::test]
async fn tokens_living_longer_than_max_lifetime_are_refused() {
    let key = SigningKey::generate().unwrap();
    let mut sp = spec(FakeSource::new(vec![jwk_of(&key)]));
    sp.max_lifetime = Some(Duration::from_secs(600));
    let v = verifier(vec![sp]);
    let ok = |c: Value| key.sign(&c).unwrap();
    v.verify(&ok(claims())).await.unwrap();
    // From now (31 million years is the classic), from iat, with the leeway for a
    // clock running ahead.
    for c in [
        with(claims(), "exp", json!(now() + 31_000_000 * 365 * 86_400)),
        with(claims(), "exp", json!(now() + 900)),
        with(
            with(claims(), "iat", json!(now() - 500)),
            "exp",
            json!(now() + 300),
        ),
    ] {
        assert_eq!(
            err(&v, &ok(c.clone())).await,
            JwtError::LifetimeTooLong,
            "{c}"
        );
    }
    let ahead = with(
        with(claims(), "iat", json!(now() + 20)),
        "exp",
        json!(now() + 620),
    );
    v.verify(&ok(ahead)).await.unwrap();
    // A non-numeric iat is ignored, as before; the lifetime from now still counts.
    v.verify(&ok(with(claims(), "iat", json!("yesterday"))))
        .await
        .unwrap();
    let no_iat = without(claims(), "iat");
    v.verify(&ok(no_iat.clone())).await.unwrap();
    assert_eq!(
        err(&v, &ok(with(no_iat, "exp", json!(now() + 700)))).await,
        JwtError::LifetimeTooLong
    );
}

fn bound_record(iss: &str, tenant: &str, jwks_url: &str) -> tenantgate_core::issuers::TenantIssuer {
    tenantgate_core::issuers::TenantIssuer {
        id: format!("id-{tenant}-{iss}"),
        tenant_id: tenant.into(),
        issuer: iss.into(),
        jwks_url: jwks_url.into(),
        audiences: vec![AUD.into()],
        algorithms: vec!["RS256".into()],
        tenant_claim: "tenant_id".into(),
        role_claim: "role".into(),
        default_role: Some("read_only".into()),
        max_lifetime_seconds: Some(3600),
        created_at_ms: 0,
    }
}

fn set_bound(v: &JwtVerifier, recs: &[tenantgate_core::issuers::TenantIssuer], insecure: bool) {
    let diff = v.inner.bound.replace(
        recs,
        BoundOptions {
            allow_insecure_jwks: insecure,
        },
    );
    v.bound_changed(&diff.removed);
}

#[tokio::test]
async fn bound_issuers_speak_for_their_tenant_only_and_leave_with_their_tokens() {
    const BOUND: &str = "https://idp.acme.example";
    let key = SigningKey::generate().unwrap();
    let (url, _) = jwks_server(200, json!({"keys": [key.public_jwk()]}).to_string()).await;
    let v = verifier(vec![]);
    let token = |c: Value| key.sign(&with(c, "iss", json!(BOUND))).unwrap();
    let plain = token(claims());
    assert_eq!(err(&v, &plain).await, JwtError::UnknownIssuer);

    // Plain http is refused unless allowed (the refusal is logged, the issuer unused).
    set_bound(&v, &[bound_record(BOUND, "acme", &url)], false);
    assert_eq!(v.bound_issuers(), 0);
    assert_eq!(err(&v, &plain).await, JwtError::UnknownIssuer);
    set_bound(&v, &[bound_record(BOUND, "acme", &url)], true);
    assert_eq!(v.bound_issuers(), 1);
    // The refusal above was cached; a binding forgets cached refusals.
    let id = v.verify(&plain).await.unwrap();
    assert_eq!((id.tenant_id.as_str(), id.role.as_str()), ("acme", "admin"));
    assert_eq!(id.issuer, BOUND);
    // No tenant claim: the bound tenant. No role claim: the default role.
    let id = v
        .verify(&token(without(without(claims(), "tenant_id"), "role")))
        .await
        .unwrap();
    assert_eq!(
        (id.tenant_id.as_str(), id.role.as_str()),
        ("acme", "read_only")
    );
    assert_eq!(
        err(&v, &token(with(claims(), "tenant_id", json!("other")))).await,
        JwtError::WrongTenant
    );
    assert_eq!(
        err(&v, &token(with(claims(), "exp", json!(now() + 7200)))).await,
        JwtError::LifetimeTooLong
    );
    assert_eq!(
        err(&v, &token(with(claims(), "aud", json!("elsewhere")))).await,
        JwtError::WrongAudience
    );
    let stranger = SigningKey::generate().unwrap();
    assert_eq!(
        err(
            &v,
            &stranger.sign(&with(claims(), "iss", json!(BOUND))).unwrap()
        )
        .await,
        JwtError::UnknownKey
    );

    // Unbound: the cached token goes too.
    assert!(v.verify(&plain).await.is_ok());
    set_bound(&v, &[], true);
    assert_eq!(err(&v, &plain).await, JwtError::UnknownIssuer);
    // Bound again to another tenant (a new id): only that tenant's tokens pass.
    let mut rec = bound_record(BOUND, "other", &url);
    rec.default_role = None;
    set_bound(&v, &[rec], true);
    assert_eq!(err(&v, &plain).await, JwtError::WrongTenant);
    let id = v
        .verify(&token(without(claims(), "tenant_id")))
        .await
        .unwrap();
    assert_eq!(id.tenant_id, "other");
    assert_eq!(
        err(&v, &token(without(without(claims(), "tenant_id"), "role"))).await,
        JwtError::MissingClaim("role")
    );
}

#[tokio::test]
async fn configured_issuers_win_over_bound_ones_and_unloaded_bound_issuers_are_503() {
    let s = setup();
    // A binding of a configured issuer (the admin API refuses it) changes nothing.
    set_bound(
        &s.v,
        &[bound_record(ISS, "evil", "https://x.example/jwks")],
        true,
    );
    let id = s.v.verify(&s.key.sign(&claims()).unwrap()).await.unwrap();
    assert_eq!(id.tenant_id, "acme");

    // Following a store whose issuers cannot be read yet: unknown issuers are 503.
    let store = tenantgate_core::Store::connect("sqlite::memory:", 1)
        .await
        .unwrap();
    let v = verifier(vec![]);
    v.follow_bound_issuers(store, BoundOptions::default());
    assert!(v.reload_bound().await.is_err(), "no tables: not migrated");
    let other = s
        .key
        .sign(&with(claims(), "iss", json!("https://someone.example")))
        .unwrap();
    assert_eq!(err(&v, &other).await, JwtError::KeysUnavailable);
}
