//! Where an issuer's public keys come from: a JWKS URL, a PEM file, or the store
//! (the admin API's login keys).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use tenantgate_core::store::StoredSigningKey;
use tenantgate_core::Store;

/// A source of an issuer's verification keys. `fetch` is called rarely (startup,
/// unknown `kid`, periodic refresh), never per request.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The current keys. Keys the verifier cannot use are skipped there, so a source
    /// may return them; an error keeps the issuer's last good key set.
    async fn fetch(&self) -> Result<Vec<Jwk>, String>;
    /// For logs: where the keys come from.
    fn describe(&self) -> String;
}

/// How long a JWKS request may take, connection included.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(2);
/// A JWKS document larger than this is refused (real ones are a few KiB).
pub const JWKS_MAX_BYTES: usize = 1 << 20;

/// `GET url` → `{"keys": [...]}`.
pub struct JwksUrlSource {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl JwksUrlSource {
    /// Fails on a URL that is not `http://` or `https://`. TLS is rustls with the
    /// webpki root certificates.
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("invalid JWKS URL {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("JWKS URL {url:?} must be http:// or https://"));
        }
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .connect_timeout(JWKS_TIMEOUT)
            .redirect(redirect_policy())
            .user_agent(concat!("tenantgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(JwksUrlSource {
            url: parsed,
            client,
        })
    }
}

/// At most three redirects, and never from https:// down to http://.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("redirect from https to http")
        } else if attempt.previous().len() > 3 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

#[async_trait]
impl KeySource for JwksUrlSource {
    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
        {
            return Err(format!(
                "GET {}: body larger than {JWKS_MAX_BYTES} bytes",
                self.url
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > JWKS_MAX_BYTES {
                return Err(format!(
                    "GET {}: body larger than {JWKS_MAX_BYTES} bytes",
                    self.url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body).map_err(|e| format!("GET {}: {e}", self.url))
    }

    fn describe(&self) -> String {
        format!("JWKS {}", self.url)
    }
}

/// `{"keys": [...]}`; members that are not valid JWKs are dropped one by one, so
/// one exotic key does not hide the others.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|v| match serde_json::from_value::<Jwk>(v) {
            Ok(jwk) => Some(jwk),
            Err(e) => {
                tracing::debug!(error = %e, "skipping an unparsable JWK");
                None
            }
        })
        .collect())
}

/// A public key file (RSA, EC P-256/P-384 or Ed25519, PEM), read once at
/// construction. Its key has no `kid`: tokens of that issuer use it whatever kid
/// they name.
pub struct PemFileSource {
    path: String,
    jwk: Jwk,
}

impl PemFileSource {
    pub fn new(path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let jwk = pem_to_jwk(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PemFileSource {
            path: path.display().to_string(),
            jwk,
        })
    }
}

/// A public key PEM as a kid-less JWK.
pub(crate) fn pem_to_jwk(pem: &[u8]) -> Result<Jwk, String> {
    let key = DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| "not an RSA, EC or Ed25519 public key in PEM form".to_owned())?;
    Jwk::from_decoding_key(&key, None).map_err(|e| format!("unusable public key: {e}"))
}

#[async_trait]
impl KeySource for PemFileSource {
    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        Ok(vec![self.jwk.clone()])
    }

    fn describe(&self) -> String {
        format!("public key file {}", self.path)
    }
}

/// How long a retired login key still verifies (tokens it signed may live that long).
pub const RETIRED_KEY_GRACE_MS: i64 = 24 * 60 * 60 * 1000;

/// The admin API's login keys: the active ones plus those retired in the last 24 h.
pub struct StoreKeySource {
    store: Store,
}

impl StoreKeySource {
    pub fn new(store: Store) -> Self {
        StoreKeySource { store }
    }
}

#[async_trait]
impl KeySource for StoreKeySource {
    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let stored = self
            .store
            .list_signing_keys()
            .await
            .map_err(|e| format!("listing signing keys: {e}"))?;
        Ok(usable_stored_keys(&stored, tenantgate_core::time::now_ms()))
    }

    fn describe(&self) -> String {
        "the store's login signing keys".to_owned()
    }
}

pub(crate) fn usable_stored_keys(stored: &[StoredSigningKey], now_ms: i64) -> Vec<Jwk> {
    let cutoff = now_ms.saturating_sub(RETIRED_KEY_GRACE_MS);
    stored
        .iter()
        .filter(|k| k.retired_at_ms.is_none_or(|t| t > cutoff))
        .filter_map(|k| match serde_json::from_str::<Jwk>(&k.public_jwk) {
            Ok(mut jwk) => {
                // The row's kid is authoritative.
                jwk.common.key_id = Some(k.kid.clone());
                Some(jwk)
            }
            Err(e) => {
                tracing::warn!(kid = %k.kid, error = %e, "stored signing key has an unreadable public JWK");
                None
            }
        })
        .collect()
}
