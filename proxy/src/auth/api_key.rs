//! API keys: `tg_<prefix>_<secret>`. Looked up by the public prefix (cached), the
//! digest of the whole key compared in constant time.

use super::principal::{AuthMethod, Principal};
use crate::cache::{Breaker, CacheSettings, Cached, IdKey, Shared};
use crate::reject::Reject;
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::domain::ApiKeyRecord;
use tenantgate_core::secrets::{self, ApiKeyDigester};
use tenantgate_core::store::{Change, ChangeKind, Store};

/// A presented key, parsed and digested while its header was at hand: only the
/// lookup prefix (inline) and the digest are kept across the lookup's await.
#[derive(Debug)]
pub struct ApiKeyCredential {
    prefix: IdKey,
    digest: [u8; 32],
}

/// What the hot path keeps of an API key: the digest as bytes, the expiry and the
/// identity to inject, rendered once. No name, prefix or creation time.
#[derive(Debug)]
pub struct CachedKey {
    /// SHA-256 (or HMAC-SHA-256 with the pepper) of the full key.
    pub digest: [u8; 32],
    pub revoked: bool,
    /// Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    pub principal: Principal,
}

impl CachedKey {
    /// `None` for a record whose stored digest is not 64 hex digits or whose
    /// identity cannot be sent as headers (never usable).
    pub fn from_record(rec: &ApiKeyRecord) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&rec.digest, &mut digest).ok()?;
        Some(CachedKey {
            digest,
            revoked: rec.revoked_at.is_some(),
            expires_at_ms: rec.expires_at.map(|t| t.timestamp_millis()),
            principal: Principal::new(
                &rec.tenant_id,
                &rec.id,
                &rec.role,
                AuthMethod::ApiKey,
                Some(&rec.id),
            )
            .ok()?,
        })
    }

    /// Usable at `now_ms` (unix milliseconds): not revoked and not expired.
    pub fn is_usable_at(&self, now_ms: i64) -> bool {
        !self.revoked && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// The API-key authenticator: the keys cache and the digest function.
pub struct ApiKeys {
    pub cache: Cached<IdKey, CachedKey>,
    digester: ApiKeyDigester,
}

impl ApiKeys {
    pub fn new(
        store: Store,
        settings: CacheSettings,
        breaker: Arc<Breaker>,
        digester: ApiKeyDigester,
    ) -> Self {
        let cache = Cached::new("api_keys", settings, breaker, move |prefix: IdKey| {
            let s = store.clone();
            Box::pin(async move {
                let rec = s.find_api_key_by_prefix(&prefix.to_text()).await?;
                Ok(rec.and_then(|r| {
                    let k = CachedKey::from_record(&r);
                    if k.is_none() {
                        tracing::warn!(key_id = %r.id, "API key with a malformed stored digest; refused");
                    }
                    k
                }))
            })
        });
        ApiKeys { cache, digester }
    }

    /// Parses and digests a presented key.
    pub fn credential(&self, key: &str) -> Result<ApiKeyCredential, Reject> {
        let (prefix, _) = secrets::parse_api_key(key).ok_or(Reject::InvalidApiKey)?;
        Ok(ApiKeyCredential {
            prefix: IdKey::new(prefix),
            digest: self.digester.digest(key),
        })
    }

    pub async fn authenticate(
        &self,
        cred: ApiKeyCredential,
        now: Instant,
        now_ms: i64,
    ) -> Result<Shared<CachedKey>, Reject> {
        let rec = self
            .cache
            .get_id(cred.prefix.as_str(), now)
            .await
            .map_err(|_| Reject::Unavailable)?
            .0
            .ok_or(Reject::InvalidApiKey)?;
        if !secrets::ct_eq(&cred.digest, &rec.digest) || !rec.is_usable_at(now_ms) {
            return Err(Reject::InvalidApiKey);
        }
        Ok(rec)
    }

    /// Drops a changed key (the change's subject is its prefix).
    pub async fn apply(&self, c: &Change) {
        if c.kind == ChangeKind::ApiKey {
            self.cache.invalidate(&IdKey::new(&c.subject)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_keys_keep_the_digest_as_bytes_and_refuse_bad_ones() {
        let now = chrono::Utc::now();
        let mut rec = ApiKeyRecord {
            id: "k1".into(),
            tenant_id: "acme".into(),
            prefix: "abcd".into(),
            digest: "ab".repeat(32),
            name: "n".into(),
            role: "developer".into(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(60)),
            revoked_at: None,
        };
        let k = CachedKey::from_record(&rec).unwrap();
        assert_eq!(k.digest, [0xab; 32]);
        let now_ms = now.timestamp_millis();
        assert!(k.is_usable_at(now_ms));
        assert!(k.is_usable_at(now_ms + 59_999));
        assert!(!k.is_usable_at(now_ms + 60_000));
        assert_eq!(k.principal.tenant_id(), "acme");
        assert_eq!(k.principal.api_key_id(), Some("k1"));
        rec.revoked_at = Some(now);
        assert!(!CachedKey::from_record(&rec).unwrap().is_usable_at(now_ms));
        rec.revoked_at = None;
        rec.role = "dev\nx-tenant-id: evil".into();
        assert!(CachedKey::from_record(&rec).is_none());
        rec.role = "developer".into();
        rec.digest = "zz".repeat(32);
        assert!(CachedKey::from_record(&rec).is_none());
        rec.digest = "ab".repeat(31);
        assert!(CachedKey::from_record(&rec).is_none());
    }
}
