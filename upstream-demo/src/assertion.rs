//! `require_assertion`: the demo verifies `x-tenant-assertion` the way any upstream
//! should — a standard JWT library, the fleet's JWKS, and a check that the signed
//! claims agree with the plain headers (and, for bound assertions, with this
//! request's method and path).

use crate::error::ApiError;
use crate::identity::{
    single_header, RequestId, API_KEY_ID, AUTH_METHOD, TENANT_ID, TENANT_ROLE, USER_ID,
};
use crate::DemoState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tenantgate_core::assertion::{decoding_key, verify, AssertionJwks, VerifyError, VerifyKeys};

pub const ASSERTION: &str = "x-tenant-assertion";
/// An unknown `kid` refetches the JWKS at most this often.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// The JWKS is refetched at least this often.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Clock skew accepted on `exp`.
const LEEWAY_SECONDS: u64 = 5;

/// Verifies assertions against a JWKS fetched over HTTP (cached; refetched on an
/// unknown kid, at most once a second).
pub struct AssertionVerifier {
    jwks_url: String,
    issuer: String,
    client: reqwest::Client,
    keys: RwLock<Arc<VerifyKeys>>,
    fetched_at: Mutex<Option<Instant>>,
    fetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier")
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl AssertionVerifier {
    pub fn new(jwks_url: &str, issuer: &str) -> Self {
        AssertionVerifier {
            jwks_url: jwks_url.to_owned(),
            issuer: issuer.to_owned(),
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(Arc::new(VerifyKeys::new())),
            fetched_at: Mutex::new(None),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn keys(&self) -> Arc<VerifyKeys> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn fetched_within(&self, d: Duration) -> bool {
        let at = match self.fetched_at.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        at.is_some_and(|t| t.elapsed() < d)
    }

    /// Refetches the JWKS unless it was fetched within `fresh`.
    async fn refetch(&self, fresh: Duration) {
        let _one = self.fetch.lock().await;
        if self.fetched_within(fresh) {
            return;
        }
        if let Ok(mut g) = self.fetched_at.lock() {
            *g = Some(Instant::now());
        }
        match self.fetch_jwks().await {
            Ok(keys) => {
                if let Ok(mut g) = self.keys.write() {
                    *g = Arc::new(keys);
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.jwks_url, error = %e, "fetching the assertion JWKS failed")
            }
        }
    }

    async fn fetch_jwks(&self) -> Result<VerifyKeys, String> {
        let mut resp = self
            .client
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: AssertionJwks = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(jwks
            .keys
            .iter()
            .filter_map(|k| decoding_key(k).map(|d| (k.kid.clone(), d)))
            .collect())
    }

    /// Verifies the request's assertion; the message says why not.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
    ) -> Result<(), &'static str> {
        let token = single_header(headers, ASSERTION).ok_or("the tenant assertion is missing")?;
        if !self.fetched_within(REFRESH_EVERY) {
            self.refetch(REFRESH_EVERY).await;
        }
        let mut result = verify(token, &self.keys(), &self.issuer, None, LEEWAY_SECONDS);
        if matches!(result, Err(VerifyError::UnknownKey(_))) {
            // A key published since the last fetch.
            self.refetch(REFETCH_AT_MOST_EVERY).await;
            result = verify(token, &self.keys(), &self.issuer, None, LEEWAY_SECONDS);
        }
        let claims = result.map_err(|e| match e {
            VerifyError::Malformed => "the tenant assertion is malformed",
            VerifyError::UnknownKey(_) => "the tenant assertion's key is unknown",
            VerifyError::Invalid(_) => "the tenant assertion is invalid or expired",
        })?;
        let agrees = |name: &str, claim: Option<&str>| single_header(headers, name) == claim;
        if !(agrees(TENANT_ID, Some(&claims.tenant_id))
            && agrees(USER_ID, Some(&claims.sub))
            && agrees(TENANT_ROLE, Some(&claims.role))
            && agrees(AUTH_METHOD, Some(&claims.auth_method))
            && agrees(API_KEY_ID, claims.api_key_id.as_deref()))
        {
            return Err("the tenant assertion disagrees with the identity headers");
        }
        if let Some(htm) = &claims.htm {
            if htm != method.as_str() {
                return Err("the tenant assertion was made for another method");
            }
        }
        if let Some(htu) = &claims.htu {
            let here = uri.path_and_query().map_or("/", |pq| pq.as_str());
            if htu != here {
                return Err("the tenant assertion was made for another path");
            }
        }
        Ok(())
    }
}

/// The middleware: 401 `invalid_assertion` unless the assertion verifies.
pub async fn require(State(state): State<DemoState>, req: Request, next: Next) -> Response {
    if let Some(verifier) = state.assertions() {
        let checked = verifier.check(req.headers(), req.method(), req.uri()).await;
        if let Err(why) = checked {
            let RequestId(rid) = RequestId::from_headers(req.headers());
            tracing::info!(request_id = %rid, reason = why, "request refused: invalid tenant assertion");
            return ApiError::invalid_assertion(&rid, why).into_response();
        }
    }
    next.run(req).await
}
