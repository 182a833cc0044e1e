//! Signed tenant assertions: the key material (ES256 or EdDSA), their public JWKs,
//! the claims, signing, and the verification an upstream does.
//!
//! An assertion is a compact JWS with `typ` [`ASSERTION_TYP`]. The proxy signs it;
//! upstreams verify it against the fleet's JWKS. Private keys are stored sealed
//! ([`crate::sealing`]), exactly like the login-token keys.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The JOSE `typ` of every assertion.
pub const ASSERTION_TYP: &str = "tenant-assertion+jwt";
/// Lifetime of an assertion (`exp` - `iat`), seconds.
pub const ASSERTION_LIFETIME_SECONDS: i64 = 60;
/// An amortised assertion is reused while it has more than this to live, seconds.
pub const ASSERTION_REUSE_MARGIN_SECONDS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("key generation failed")]
    KeyGen,
    #[error("key rejected: {0}")]
    KeyRejected(String),
    #[error("signing failed")]
    Sign,
    #[error("unknown algorithm {0:?} (expected ES256 or EdDSA)")]
    UnknownAlgorithm(String),
}

/// The algorithms an assertion may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssertionAlg {
    Es256,
    EdDsa,
}

impl AssertionAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlg::Es256 => "ES256",
            AssertionAlg::EdDsa => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AssertionError> {
        match s {
            "ES256" => Ok(AssertionAlg::Es256),
            "EdDSA" => Ok(AssertionAlg::EdDsa),
            other => Err(AssertionError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

impl fmt::Display for AssertionAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key as a JWK (`EC` P-256 or `OKP` Ed25519).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// `{"keys": [...]}` of assertion keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AssertionJwks {
    pub keys: Vec<AssertionJwk>,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A private assertion key with its kid. Signing needs no allocation beyond the
/// returned token.
pub struct AssertionKey {
    pub kid: String,
    pub alg: AssertionAlg,
    pair: Pair,
    /// base64url of the protected header, computed once.
    header_b64: String,
    rng: SystemRandom,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// A new key; returns it with its PKCS#8 DER (to seal and store).
    pub fn generate(alg: AssertionAlg) -> Result<(Self, Vec<u8>), AssertionError> {
        let rng = SystemRandom::new();
        let der = match alg {
            AssertionAlg::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| AssertionError::KeyGen)?
                    .as_ref()
                    .to_vec()
            }
            AssertionAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| AssertionError::KeyGen)?
                .as_ref()
                .to_vec(),
        };
        let key = Self::from_pkcs8(alg, None, &der)?;
        Ok((key, der))
    }

    /// Opens a stored key. `kid` defaults to the RFC 7638 thumbprint.
    pub fn from_pkcs8(
        alg: AssertionAlg,
        kid: Option<&str>,
        der: &[u8],
    ) -> Result<Self, AssertionError> {
        let pair = match alg {
            AssertionAlg::Es256 => Pair::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| AssertionError::KeyRejected(e.to_string()))?,
            ),
            AssertionAlg::EdDsa => Pair::EdDsa(
                Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|e| AssertionError::KeyRejected(e.to_string()))?,
            ),
        };
        let mut key = AssertionKey {
            kid: String::new(),
            alg,
            pair,
            header_b64: String::new(),
            rng: SystemRandom::new(),
        };
        key.kid = match kid {
            Some(k) => k.to_owned(),
            None => key.thumbprint(),
        };
        let header = serde_json::json!({"alg": alg.as_str(), "typ": ASSERTION_TYP, "kid": key.kid});
        key.header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(key)
    }

    fn public_bytes(&self) -> &[u8] {
        match &self.pair {
            Pair::Es256(p) => p.public_key().as_ref(),
            Pair::EdDsa(p) => p.public_key().as_ref(),
        }
    }

    /// `(x, y)` base64url; `y` only for P-256 (the uncompressed point is 04 || x || y).
    fn coordinates(&self) -> (String, Option<String>) {
        let public = self.public_bytes();
        match self.alg {
            AssertionAlg::Es256 => {
                let xy = public.get(1..).unwrap_or_default();
                let (x, y) = xy.split_at(xy.len() / 2);
                (URL_SAFE_NO_PAD.encode(x), Some(URL_SAFE_NO_PAD.encode(y)))
            }
            AssertionAlg::EdDsa => (URL_SAFE_NO_PAD.encode(public), None),
        }
    }

    /// RFC 7638 thumbprint: base64url(SHA-256) of the required members, sorted.
    fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        let canonical = match y {
            Some(y) => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            None => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn public_jwk(&self) -> AssertionJwk {
        let (x, y) = self.coordinates();
        let (kty, crv) = match self.alg {
            AssertionAlg::Es256 => ("EC", "P-256"),
            AssertionAlg::EdDsa => ("OKP", "Ed25519"),
        };
        AssertionJwk {
            kty: kty.into(),
            crv: crv.into(),
            x,
            y,
            kid: self.kid.clone(),
            alg: self.alg.as_str().into(),
            use_: "sig".into(),
        }
    }

    /// A compact JWS of `claims` (JSON bytes) under this key's header.
    pub fn sign_json(&self, claims: &[u8]) -> Result<String, AssertionError> {
        let payload_len = claims.len().div_ceil(3) * 4;
        let mut out = String::with_capacity(self.header_b64.len() + payload_len + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = match &self.pair {
            Pair::Es256(p) => p
                .sign(&self.rng, out.as_bytes())
                .map_err(|_| AssertionError::Sign)?,
            Pair::EdDsa(p) => p.sign(out.as_bytes()),
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut out);
        Ok(out)
    }

    pub fn sign(&self, claims: &AssertionClaims<'_>) -> Result<String, AssertionError> {
        let json = serde_json::to_vec(claims).map_err(|_| AssertionError::Sign)?;
        self.sign_json(&json)
    }
}

/// The claims of an assertion, borrowed from the request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims<'a> {
    pub iss: &'a str,
    pub aud: &'a str,
    pub tenant_id: &'a str,
    pub sub: &'a str,
    pub role: &'a str,
    pub auth_method: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<&'a str>,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htm: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htu: Option<&'a str>,
}

/// The same claims, owned: what a verifier reads back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub iss: String,
    pub aud: String,
    pub tenant_id: String,
    pub sub: String,
    pub role: String,
    pub auth_method: String,
    #[serde(default)]
    pub api_key_id: Option<String>,
    pub iat: i64,
    pub exp: i64,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub htm: Option<String>,
    #[serde(default)]
    pub htu: Option<String>,
}

/// A verification key built from a JWK of the fleet's JWKS.
pub fn decoding_key(jwk: &AssertionJwk) -> Option<(AssertionAlg, jsonwebtoken::DecodingKey)> {
    match (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()) {
        ("EC", "P-256", "ES256") => {
            let y = jwk.y.as_deref()?;
            let key = jsonwebtoken::DecodingKey::from_ec_components(&jwk.x, y).ok()?;
            Some((AssertionAlg::Es256, key))
        }
        ("OKP", "Ed25519", "EdDSA") => {
            let key = jsonwebtoken::DecodingKey::from_ed_components(&jwk.x).ok()?;
            Some((AssertionAlg::EdDsa, key))
        }
        _ => None,
    }
}

/// Why an assertion was refused by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed assertion")]
    Malformed,
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("invalid assertion: {0}")]
    Invalid(String),
}

/// Verification keys by kid.
pub type VerifyKeys = std::collections::HashMap<String, (AssertionAlg, jsonwebtoken::DecodingKey)>;

/// Verifies `token` with the key its `kid` names in `keys` (its `alg` must be the
/// key's own), checking `typ`, `iss`, `aud` (when given) and `exp`/`iat` with
/// `leeway` seconds.
pub fn verify(
    token: &str,
    keys: &VerifyKeys,
    issuer: &str,
    audience: Option<&str>,
    leeway: u64,
) -> Result<VerifiedAssertion, VerifyError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
    if header.typ.as_deref() != Some(ASSERTION_TYP) {
        return Err(VerifyError::Invalid("typ".into()));
    }
    let kid = header.kid.ok_or(VerifyError::Malformed)?;
    let (alg, key) = keys.get(&kid).ok_or(VerifyError::UnknownKey(kid))?;
    let jwt_alg = match alg {
        AssertionAlg::Es256 => jsonwebtoken::Algorithm::ES256,
        AssertionAlg::EdDsa => jsonwebtoken::Algorithm::EdDSA,
    };
    if header.alg != jwt_alg {
        return Err(VerifyError::Invalid("alg".into()));
    }
    let mut v = jsonwebtoken::Validation::new(jwt_alg);
    v.leeway = leeway;
    v.set_issuer(&[issuer]);
    match audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let data = jsonwebtoken::decode::<VerifiedAssertion>(token, key, &v)
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    Ok(data.claims)
}

/// Generates a key, seals its private half with `kek` and stores it: published
/// from now on, signing from `active_from_ms`.
pub async fn create_key(
    store: &crate::Store,
    kek: &[u8; 32],
    alg: AssertionAlg,
    active_from_ms: i64,
) -> Result<crate::store::StoredAssertionKey, crate::StoreError> {
    use crate::StoreError;
    let (key, der) = tokio::task::spawn_blocking(move || AssertionKey::generate(alg))
        .await
        .map_err(|e| StoreError::Unavailable(format!("key generation task failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let private_sealed =
        crate::sealing::seal(kek, &der).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let public_jwk = serde_json::to_string(&key.public_jwk())
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let row = crate::store::StoredAssertionKey {
        kid: key.kid.clone(),
        algorithm: alg.as_str().into(),
        public_jwk,
        private_sealed,
        created_at_ms: crate::time::now_ms(),
        active_from_ms,
        retired_at_ms: None,
    };
    store.insert_assertion_key(&row).await?;
    tracing::info!(kid = %row.kid, active_from_ms, "created a tenant-assertion signing key");
    Ok(row)
}

/// The JWKS of `stored` (rows whose public JWK does not parse are skipped).
pub fn jwks_of(stored: &[crate::store::StoredAssertionKey]) -> AssertionJwks {
    AssertionJwks {
        keys: stored
            .iter()
            .filter_map(|k| match serde_json::from_str::<AssertionJwk>(&k.public_jwk) {
                Ok(jwk) => Some(jwk),
                Err(e) => {
                    tracing::warn!(kid = %k.kid, error = %e, "stored assertion key has a bad public JWK");
                    None
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn claims(now: i64) -> AssertionClaims<'static> {
        AssertionClaims {
            iss: "tenantgate",
            aud: "/api/",
            tenant_id: "acme",
            sub: "k1",
            role: "member",
            auth_method: "api_key",
            api_key_id: Some("k1"),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECONDS,
            request_id: None,
            htm: None,
            htu: None,
        }
    }

    #[test]
    fn both_algorithms_sign_what_a_standard_library_verifies() {
        let now = crate::time::now_ms() / 1000;
        for alg in [AssertionAlg::Es256, AssertionAlg::EdDsa] {
            let (key, der) = AssertionKey::generate(alg).unwrap();
            let reopened = AssertionKey::from_pkcs8(alg, Some(&key.kid), &der).unwrap();
            assert_eq!(reopened.public_jwk(), key.public_jwk());
            let token = reopened.sign(&claims(now)).unwrap();
            let mut keys = HashMap::new();
            keys.insert(key.kid.clone(), decoding_key(&key.public_jwk()).unwrap());
            let v = verify(&token, &keys, "tenantgate", Some("/api/"), 5).unwrap();
            assert_eq!(v.tenant_id, "acme");
            assert_eq!(v.api_key_id.as_deref(), Some("k1"));
            assert!(verify(&token, &keys, "tenantgate", Some("/other/"), 5).is_err());
            assert!(verify(&token, &keys, "someone", Some("/api/"), 5).is_err());
            // A flipped signature byte fails.
            let mut bad = token.clone().into_bytes();
            let last = bad.len() - 3;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(verify(&bad, &keys, "tenantgate", Some("/api/"), 5).is_err());
        }
    }

    #[test]
    fn expired_assertions_and_foreign_keys_fail() {
        let (key, _) = AssertionKey::generate(AssertionAlg::Es256).unwrap();
        let (other, _) = AssertionKey::generate(AssertionAlg::Es256).unwrap();
        let mut keys = HashMap::new();
        keys.insert(key.kid.clone(), decoding_key(&key.public_jwk()).unwrap());
        let old = crate::time::now_ms() / 1000 - 3600;
        let token = key.sign(&claims(old)).unwrap();
        assert!(matches!(
            verify(&token, &keys, "tenantgate", Some("/api/"), 5),
            Err(VerifyError::Invalid(_))
        ));
        let now = crate::time::now_ms() / 1000;
        let foreign = other.sign(&claims(now)).unwrap();
        assert!(matches!(
            verify(&foreign, &keys, "tenantgate", Some("/api/"), 5),
            Err(VerifyError::UnknownKey(_))
        ));
        assert_eq!(
            verify("not.a.jws", &keys, "tenantgate", Some("/api/"), 5),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn jwk_members_have_the_expected_shape() {
        let (es, _) = AssertionKey::generate(AssertionAlg::Es256).unwrap();
        let jwk = es.public_jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("EC", "P-256"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk.y.unwrap()).unwrap().len(), 32);
        let (ed, _) = AssertionKey::generate(AssertionAlg::EdDsa).unwrap();
        let jwk = ed.public_jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
        assert!(jwk.y.is_none());
        assert!(AssertionAlg::parse("RS256").is_err());
        assert!(AssertionAlg::parse("none").is_err());
    }
}
