//! Login-token signing keys: loaded (or created) at start, sealed at rest with the
//! KEK, published as a JWKS, and used to verify the tokens this API issued.

use crate::AdminInitError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tenantgate_core::jwt::{self, LoginClaims, PublicJwk, SigningKey, LOGIN_AUDIENCE};
use tenantgate_core::sealing;
use tenantgate_core::store::StoredSigningKey;
use tenantgate_core::time::now_ms;
use tenantgate_core::{Store, StoreError};

/// Clock skew accepted on `exp` of our own tokens.
const LEEWAY_SECONDS: u64 = 30;
/// An unknown `kid` reloads the stored keys at most this often (another admin
/// process may have created a key); bounds what garbage tokens can cost.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(1);
/// The JWKS is re-read from the store at most this often.
const JWKS_REFRESH: Duration = Duration::from_secs(10);
/// Attempts to settle on a key when concurrent starts race.
const LOAD_ATTEMPTS: usize = 5;

/// Loads the newest stored key that opens with `kek`, retiring those that do not
/// open; creates, seals and stores a new key when none is usable.
pub async fn load_or_create(store: &Store, kek: &[u8; 32]) -> Result<SigningKey, AdminInitError> {
    for _ in 0..LOAD_ATTEMPTS {
        if let Some(key) = newest_usable(store, kek).await? {
            return Ok(key);
        }
        let key = tokio::task::spawn_blocking(SigningKey::generate)
            .await
            .map_err(|e| AdminInitError::Key(format!("key generation task failed: {e}")))?
            .map_err(|e| AdminInitError::Key(e.to_string()))?;
        let der = key
            .pkcs8_der()
            .map_err(|e| AdminInitError::Key(e.to_string()))?;
        let private_sealed =
            sealing::seal(kek, &der).map_err(|e| AdminInitError::Key(e.to_string()))?;
        let public_jwk = serde_json::to_string(&key.public_jwk())
            .map_err(|e| AdminInitError::Key(e.to_string()))?;
        let stored = StoredSigningKey {
            kid: key.kid.clone(),
            public_jwk,
            private_sealed,
            created_at_ms: now_ms(),
            retired_at_ms: None,
        };
        match store.insert_signing_key(&stored).await {
            Ok(()) => {
                tracing::info!(kid = %key.kid, "created a new login-token signing key");
                return Ok(key);
            }
            // Another process won a race on the same kid: take what is stored now.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(AdminInitError::Store(e)),
        }
    }
    Err(AdminInitError::Key(
        "could not settle on a signing key (concurrent starts kept conflicting)".into(),
    ))
}

async fn newest_usable(
    store: &Store,
    kek: &[u8; 32],
) -> Result<Option<SigningKey>, AdminInitError> {
    let stored = store.list_signing_keys().await?;
    let mut chosen = None;
    // Newest first, as the store lists them.
    for k in stored.iter().filter(|k| k.retired_at_ms.is_none()) {
        let opened = sealing::open(kek, &k.private_sealed)
            .map_err(|_| jwt::JwtError::Unseal)
            .and_then(|der| SigningKey::from_pkcs8(&k.kid, &der));
        match opened {
            Ok(key) => {
                if chosen.is_none() {
                    chosen = Some(key);
                }
            }
            Err(e) => {
                tracing::warn!(kid = %k.kid, error = %e, "stored signing key does not open with this server secret; retiring it");
                store.retire_signing_key(&k.kid).await?;
            }
        }
    }
    Ok(chosen)
}

struct VerifyKey {
    jwk: PublicJwk,
    key: DecodingKey,
}

struct Ring {
    keys: HashMap<String, Arc<VerifyKey>>,
    refreshed_at: Instant,
}

/// The signing key of this process plus the public keys of every key that may
/// still have valid tokens out there (this process's or another admin's).
pub struct Keys {
    signer: SigningKey,
    issuer: String,
    token_ttl_ms: i64,
    ring: RwLock<Ring>,
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.signer.kid)
            .finish_non_exhaustive()
    }
}

fn verify_key(jwk: PublicJwk) -> Option<VerifyKey> {
    if jwk.kty != "RSA" {
        return None;
    }
    let key = DecodingKey::from_rsa_components(&jwk.n, &jwk.e).ok()?;
    Some(VerifyKey { jwk, key })
}

impl Keys {
    pub async fn new(
        store: &Store,
        signer: SigningKey,
        issuer: String,
        token_ttl_seconds: u64,
    ) -> Result<Keys, AdminInitError> {
        let keys = Keys {
            signer,
            issuer,
            token_ttl_ms: i64::try_from(token_ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
            ring: RwLock::new(Ring {
                keys: HashMap::new(),
                refreshed_at: Instant::now(),
            }),
            refresh: tokio::sync::Mutex::new(()),
        };
        keys.reload(store).await?;
        Ok(keys)
    }

    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Re-reads the stored keys: non-retired ones, and retired ones whose tokens
    /// may not have expired yet. Our own key is always present.
    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let stored = store.list_signing_keys().await?;
        let now = now_ms();
        let mut keys = HashMap::new();
        for k in stored {
            let live = k
                .retired_at_ms
                .is_none_or(|r| now.saturating_sub(r) < self.token_ttl_ms);
            if !live {
                continue;
            }
            match serde_json::from_str::<PublicJwk>(&k.public_jwk)
                .ok()
                .and_then(verify_key)
            {
                Some(v) => {
                    keys.insert(k.kid.clone(), Arc::new(v));
                }
                None => {
                    tracing::warn!(kid = %k.kid, "stored signing key has an unusable public JWK")
                }
            }
        }
        if let Some(own) = verify_key(self.signer.public_jwk()) {
            keys.insert(self.signer.kid.clone(), Arc::new(own));
        }
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        ring.keys = keys;
        ring.refreshed_at = Instant::now();
        Ok(())
    }

    /// Reloads when the last reload is older than `min_age` (one reload at a time).
    async fn refresh_if_older(&self, store: &Store, min_age: Duration) {
        let _guard = self.refresh.lock().await;
        let stale = {
            let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
            ring.refreshed_at.elapsed() >= min_age
        };
        if stale {
            if let Err(e) = self.reload(store).await {
                tracing::warn!(error = %e, "could not reload signing keys; using the cached ones");
            }
        }
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.keys.get(kid).cloned()
    }

    /// The public keys of the login tokens, sorted by kid with our key first.
    pub async fn jwks(&self, store: &Store) -> Vec<PublicJwk> {
        self.refresh_if_older(store, JWKS_REFRESH).await;
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<PublicJwk> = ring.keys.values().map(|v| v.jwk.clone()).collect();
        keys.sort_by(|a, b| {
            (a.kid != self.signer.kid, &a.kid).cmp(&(b.kid != self.signer.kid, &b.kid))
        });
        keys
    }

    /// Signs a login token for `sub` at the user's `token_version` (claim `tv`).
    pub fn issue(
        &self,
        sub: &str,
        tenant_id: &str,
        role: &str,
        token_version: i64,
        ttl_seconds: u64,
    ) -> Result<String, jwt::JwtError> {
        let iat = chrono::Utc::now().timestamp();
        let claims = LoginClaims {
            sub: sub.to_owned(),
            tenant_id: tenant_id.to_owned(),
            role: role.to_owned(),
            iat,
            exp: iat.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: LOGIN_AUDIENCE.to_owned(),
            tv: token_version,
        };
        self.signer.sign(&claims)
    }

    /// Verifies one of our login tokens: RS256 only (whatever the header claims),
    /// a known kid, our issuer and audience, an unexpired `exp`.
    pub async fn verify(&self, store: &Store, token: &str) -> Option<LoginClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::RS256 {
            return None;
        }
        let kid = header.kid?;
        let key = match self.lookup(&kid) {
            Some(k) => k,
            None => {
                self.refresh_if_older(store, UNKNOWN_KID_REFRESH).await;
                self.lookup(&kid)?
            }
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.algorithms = vec![Algorithm::RS256];
        v.leeway = LEEWAY_SECONDS;
        v.validate_exp = true;
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[LOGIN_AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<LoginClaims>(token, &key.key, &v)
            .ok()
            .map(|d| d.claims)
    }
}
