//! Client certificates as credentials (`x-auth-method: mtls`). The TLS listener
//! verified the certificate's chain against `[proxy.tls] client_ca_file` during
//! the handshake and put the leaf's SHA-256 in the connection's digest; here that
//! fingerprint is looked up among the registered certificates (cached, one lookup
//! per request; `client_cert` changes drop the entry, so a deleted certificate is
//! refused within the change feed's delay).

use super::principal::{AuthMethod, Principal};
use crate::cache::{Breaker, CacheSettings, Cached, IdKey, Shared};
use crate::reject::Reject;
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::store::{Change, ChangeKind, Store};

/// A registered certificate: the principal it authenticates as (its id is the
/// user id, as an API key's is).
#[derive(Debug)]
pub struct CachedCert {
    pub principal: Principal,
}

/// The registered client certificates, cached by hex fingerprint.
pub struct ClientCerts {
    pub cache: Cached<IdKey, CachedCert>,
}

impl ClientCerts {
    pub fn new(store: Store, settings: CacheSettings, breaker: Arc<Breaker>) -> Self {
        let cache = Cached::new("client_certs", settings, breaker, move |fp: IdKey| {
            let s = store.clone();
            Box::pin(async move {
                let cert = s.client_cert_by_fingerprint(&fp.to_text()).await?;
                Ok(cert.and_then(|c| {
                    Principal::new(&c.tenant_id, &c.id, &c.role, AuthMethod::Mtls, None)
                        .ok()
                        .map(|principal| CachedCert { principal })
                }))
            })
        });
        ClientCerts { cache }
    }

    /// The registered certificate with this fingerprint (SHA-256 bytes); `None`
    /// when it is not registered (the request has no credential then).
    pub async fn authenticate(
        &self,
        fingerprint: &[u8],
        now: Instant,
    ) -> Result<Option<Shared<CachedCert>>, Reject> {
        let hex = hex::encode(fingerprint);
        let (cert, _) = self
            .cache
            .get_id(&hex, now)
            .await
            .map_err(|_| Reject::Unavailable)?;
        Ok(cert)
    }

    /// Drops a changed certificate (the subject is its fingerprint); a tenant
    /// change may have deleted the tenant's certificates, so it drops them all.
    pub async fn apply(&self, c: &Change) {
        match c.kind {
            ChangeKind::ClientCert => self.cache.invalidate(&IdKey::new(&c.subject)).await,
            ChangeKind::Tenant => self.cache.invalidate_all(),
            _ => {}
        }
    }
}
