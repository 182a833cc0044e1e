//! Stage 3, authenticate: which credential the request carries and whose it is.
//!
//! Each credential kind has its own authenticator that yields a [`Principal`]
//! (held inline in that kind's cache entry). Adding a kind means: a module with its
//! authenticator, a variant of [`Credential`] and of [`Authenticated`], and the
//! match arms below.

pub mod api_key;
mod extract;
pub mod jwt;
pub mod key_index;
pub mod mtls;
mod principal;
pub mod users;

pub use api_key::{ip_allowed, parse_cidr, ApiKeyCredential, ApiKeys, CachedKey, KeyRules};
pub use extract::{presented, Presented};
pub use mtls::{CachedCert, ClientCerts};
pub use principal::{AuthMethod, InvalidIdentity, Principal, PRINCIPAL_INLINE};

use crate::cache::Shared;
use crate::reject::Reject;
use http::HeaderMap;
use jwt::{Identity, JwtVerifier};
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::store::{Change, ChangeKind};
use users::LoginUsers;

/// The request's credential, owned across the lookups' awaits (the session's
/// headers are not `Sync`, so the future cannot hold a borrow of them).
#[derive(Debug)]
pub enum Credential {
    ApiKey(ApiKeyCredential),
    Jwt(String),
    /// The SHA-256 of the TLS client certificate.
    ClientCert([u8; 32]),
}

/// An authenticated request's credential: the cached entry that holds its
/// principal (one reference count on an entry the lookup has just read).
pub enum Authenticated {
    ApiKey(Shared<CachedKey>),
    Jwt(Arc<Identity>),
    ClientCert(Shared<CachedCert>),
}

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        match self {
            Authenticated::ApiKey(k) => &k.principal,
            Authenticated::Jwt(id) => &id.principal,
            Authenticated::ClientCert(c) => &c.principal,
        }
    }

    /// An API key's own limit, scopes and allow-list, if it has any.
    pub fn key_rules(&self) -> Option<&KeyRules> {
        match self {
            Authenticated::ApiKey(k) => k.rules.as_deref(),
            Authenticated::Jwt(_) | Authenticated::ClientCert(_) => None,
        }
    }
}

/// Every authenticator of the proxy.
pub struct Authenticator {
    pub api_keys: ApiKeys,
    pub jwt: Arc<JwtVerifier>,
    /// The users of login tokens: each such token is checked against its user.
    pub users: LoginUsers,
    /// Registered client certificates (mTLS).
    pub client_certs: ClientCerts,
    /// The admin API's own issuer: its keys are reloaded when signing keys change,
    /// and its tokens count only while their user does.
    login_issuer: String,
}

impl Authenticator {
    pub fn new(
        api_keys: ApiKeys,
        jwt: Arc<JwtVerifier>,
        users: LoginUsers,
        client_certs: ClientCerts,
        login_issuer: String,
    ) -> Self {
        Authenticator {
            api_keys,
            jwt,
            users,
            client_certs,
            login_issuer,
        }
    }

    /// The request's one credential (`None`: it has none). An API key is parsed
    /// and digested here, while its header is at hand. A credential in the
    /// headers wins over the connection's client certificate (`client_cert`: its
    /// SHA-256, when the TLS client presented one that verified).
    pub fn credential(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&[u8]>,
    ) -> Result<Option<Credential>, Reject> {
        Ok(match extract::presented(headers)? {
            Some(Presented::ApiKey(k)) => Some(Credential::ApiKey(self.api_keys.credential(k)?)),
            Some(Presented::Jwt(t)) => Some(Credential::Jwt(t.to_owned())),
            None => client_cert
                .and_then(|fp| <[u8; 32]>::try_from(fp).ok())
                .map(Credential::ClientCert),
        })
    }

    pub async fn authenticate(
        &self,
        cred: Credential,
        now: Instant,
        now_ms: i64,
    ) -> Result<Authenticated, Reject> {
        match cred {
            // An unregistered certificate is no credential at all.
            Credential::ClientCert(fp) => self
                .client_certs
                .authenticate(&fp, now)
                .await?
                .map(Authenticated::ClientCert)
                .ok_or(Reject::NoCredential),
            Credential::ApiKey(c) => self
                .api_keys
                .authenticate(c, now, now_ms)
                .await
                .map(Authenticated::ApiKey),
            Credential::Jwt(token) => match self.jwt.verify(&token).await {
                // After the verified-token cache: a revoked user's token may still
                // be cached there, its user view says no at once.
                Ok(id) if id.issuer == self.login_issuer => {
                    self.users.check(&id, now).await?;
                    Ok(Authenticated::Jwt(id))
                }
                Ok(id) => Ok(Authenticated::Jwt(id)),
                Err(e) if e.is_unavailable() => Err(Reject::Unavailable),
                Err(e) => {
                    tracing::debug!(error = %e, "jwt rejected");
                    Err(Reject::InvalidToken)
                }
            },
        }
    }

    /// Applies a control-plane change to the credential caches.
    pub async fn apply(&self, c: &Change) {
        match c.kind {
            ChangeKind::ApiKey => self.api_keys.apply(c).await,
            ChangeKind::SigningKey => self.jwt.invalidate_issuer_keys(&self.login_issuer),
            ChangeKind::User => self.users.apply(c).await,
            ChangeKind::ClientCert | ChangeKind::Tenant => self.client_certs.apply(c).await,
            _ => {}
        }
    }

    /// After missed changes: forget every cached credential.
    pub fn invalidate_all(&self) {
        self.api_keys.cache.invalidate_all();
        self.users.cache.invalidate_all();
        self.client_certs.cache.invalidate_all();
    }

    /// Appends the credential caches' counters as Prometheus samples.
    pub fn render(&self, out: &mut String) {
        self.api_keys.render(out);
        self.users.cache.render(out);
        self.client_certs.cache.render(out);
    }
}
