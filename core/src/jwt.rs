//! RS256 signing keys for login tokens: generation, JWKS, signing. Their private
//! keys are stored sealed ([`crate::sealing`]).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The audience the admin API puts in its login tokens and the proxy expects.
pub const LOGIN_AUDIENCE: &str = "tenantgate";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("key generation failed")]
    KeyGen,
    #[error("key rejected: {0}")]
    KeyRejected(String),
    #[error("signing failed")]
    Sign,
    #[error("sealed key could not be opened (wrong server secret?)")]
    Unseal,
}

/// Claims of a login token issued by the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginClaims {
    pub sub: String,
    pub tenant_id: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// The user's token version when the token was issued (absent in tokens of
    /// older releases: 0). A token whose `tv` is not the user's current one is refused.
    #[serde(default)]
    pub tv: i64,
}

/// An RSA signing key with its key id.
pub struct SigningKey {
    pub kid: String,
    pair: KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new 2048-bit key; the kid is derived from the public key (RFC 7638 style).
    pub fn generate() -> Result<Self, JwtError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| JwtError::KeyGen)?;
        let mut key = SigningKey {
            kid: String::new(),
            pair,
        };
        key.kid = key.thumbprint();
        Ok(key)
    }

    pub fn from_pkcs8(kid: &str, der: &[u8]) -> Result<Self, JwtError> {
        let pair = KeyPair::from_pkcs8(der).map_err(|e| JwtError::KeyRejected(e.to_string()))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair,
        })
    }

    pub fn pkcs8_der(&self) -> Result<Vec<u8>, JwtError> {
        self.pair
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| JwtError::KeyGen)
    }

    fn components(&self) -> (Vec<u8>, Vec<u8>) {
        let public = self.pair.public_key();
        (
            public.modulus().big_endian_without_leading_zero().to_vec(),
            public.exponent().big_endian_without_leading_zero().to_vec(),
        )
    }

    /// base64url(SHA-256) of the canonical JWK members, as RFC 7638.
    fn thumbprint(&self) -> String {
        let (n, e) = self.components();
        let canonical = format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(e),
            URL_SAFE_NO_PAD.encode(n)
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> PublicJwk {
        let (n, e) = self.components();
        PublicJwk {
            kty: "RSA".into(),
            use_: "sig".into(),
            alg: "RS256".into(),
            kid: self.kid.clone(),
            n: URL_SAFE_NO_PAD.encode(n),
            e: URL_SAFE_NO_PAD.encode(e),
        }
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> Result<String, JwtError> {
        let der = self
            .pair
            .public_key()
            .as_der()
            .map_err(|_| JwtError::KeyGen)?;
        Ok(pem_encode("PUBLIC KEY", der.as_ref()))
    }

    /// Signs `claims` as an RS256 JWT with this key's kid.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, JwtError> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-chosen header (the signature is always RS256); tests use it
    /// to build tokens whose header lies about itself.
    pub fn sign_with_header<C: Serialize>(
        &self,
        header: &serde_json::Value,
        claims: &C,
    ) -> Result<String, JwtError> {
        let h = serde_json::to_vec(header).map_err(|_| JwtError::Sign)?;
        let c = serde_json::to_vec(claims).map_err(|_| JwtError::Sign)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(c)
        );
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| JwtError::Sign)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// `{"keys": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Jwks {
    pub keys: Vec<PublicJwk>,
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_with_jsonwebtoken() {
        let key = SigningKey::generate().unwrap();
        let claims = LoginClaims {
            sub: "u1".into(),
            tenant_id: "acme".into(),
            role: "admin".into(),
            iat: 1,
            exp: 4_000_000_000,
            iss: "tenantgate".into(),
            aud: LOGIN_AUDIENCE.into(),
            tv: 0,
        };
        let token = key.sign(&claims).unwrap();
        let jwk = key.public_jwk();
        let dk = jsonwebtoken::DecodingKey::from_rsa_components(&jwk.n, &jwk.e).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[LOGIN_AUDIENCE]);
        let data = jsonwebtoken::decode::<LoginClaims>(&token, &dk, &v).unwrap();
        assert_eq!(data.claims, claims);
        assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
        let pem = key.public_key_pem().unwrap();
        let dk2 = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::decode::<LoginClaims>(&token, &dk2, &v).unwrap();
    }

    #[test]
    fn pkcs8_round_trip_and_sealing() {
        let key = SigningKey::generate().unwrap();
        let der = key.pkcs8_der().unwrap();
        let kek = crate::sealing::derive_kek(b"secret");
        let sealed = crate::sealing::seal(&kek, &der).unwrap();
        assert!(!sealed.contains("PRIVATE"));
        let opened = crate::sealing::open(&kek, &sealed).unwrap();
        assert_eq!(opened, der);
        assert!(crate::sealing::open(&crate::sealing::derive_kek(b"other"), &sealed).is_err());
        let again = SigningKey::from_pkcs8(&key.kid, &opened).unwrap();
        assert_eq!(again.public_jwk(), key.public_jwk());
    }
}
