//! Authentication and tenant scoping, as extractors.
//!
//! Every authentication failure looks the same to the client (401 `unauthorized`
//! with `WWW-Authenticate: Bearer`); a tenant admin reaching for another tenant
//! sees 404, as if that tenant did not exist. A login token counts only while its
//! user exists, is active and still has the token's `tv` (checked on every
//! request: the admin API is no hot path).

use crate::error::ApiError;
use crate::AdminState;
use axum::extract::{FromRequestParts, Path};
use http::request::Parts;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;
use tenantgate_core::domain::{Tenant, TenantStatus};

/// Longest bearer token considered at all.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew allowed between the admin process that created a tenant and the one
/// that issued a token (the user check is what really ends a deleted tenant's tokens).
const IAT_SKEW_SECONDS: i64 = 30;
/// The only role whose login tokens may use the admin API.
pub const ADMIN_ROLE: &str = "admin";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bootstrap token: every tenant and the platform-wide routes.
    Platform,
    /// A login token with role `admin`: its own tenant only.
    TenantAdmin { tenant_id: String, user_id: String },
}

impl Caller {
    /// Platform-wide routes (create/list/delete tenants, tier and status changes).
    pub fn require_platform(&self) -> Result<(), ApiError> {
        match self {
            Caller::Platform => Ok(()),
            Caller::TenantAdmin { .. } => Err(ApiError::Forbidden(
                "this operation requires the platform admin token",
            )),
        }
    }

    pub fn may_see(&self, tenant_id: &str) -> bool {
        match self {
            Caller::Platform => true,
            Caller::TenantAdmin { tenant_id: own, .. } => own == tenant_id,
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if well-formed.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && !token.contains(char::is_whitespace))
    .then_some(token)
}

fn is_bootstrap(state: &AdminState, token: &str) -> bool {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    bool::from(digest.ct_eq(&state.options().bootstrap_token_sha256))
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let caller = if is_bootstrap(state, token) {
            Caller::Platform
        } else {
            let claims = state
                .keys()
                .verify(state.store(), token)
                .await
                .ok_or(ApiError::Unauthorized)?;
            // A token of a deleted tenant is no credential at all, nor one issued
            // before its tenant was (re-)created under that id.
            let tenant = state
                .store()
                .get_tenant(&claims.tenant_id)
                .await?
                .filter(|t| claims.iat.saturating_add(IAT_SKEW_SECONDS) >= t.created_at.timestamp())
                .ok_or(ApiError::Unauthorized)?;
            // Its user must still exist, be active and have the token's version
            // (a disable, role or password change bumps it).
            state
                .store()
                .get_user(&claims.tenant_id, &claims.sub)
                .await?
                .filter(|u| u.accepts_token(&claims.role, claims.tv))
                .ok_or(ApiError::Unauthorized)?;
            if claims.role != ADMIN_ROLE {
                return Err(ApiError::Forbidden(
                    "only tenant users with the admin role may use the admin API",
                ));
            }
            if tenant.status == TenantStatus::Suspended {
                return Err(ApiError::TenantSuspended);
            }
            Caller::TenantAdmin {
                tenant_id: claims.tenant_id,
                user_id: claims.sub,
            }
        };
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.set(&caller);
        }
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// A caller allowed to act on the existing tenant named by the `{id}` path segment.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub caller: Caller,
    pub tenant: Tenant,
}

impl FromRequestParts<AdminState> for TenantScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("tenant not found"))?;
        let id = params
            .get("id")
            .ok_or(ApiError::NotFound("tenant not found"))?;
        if !caller.may_see(id) {
            return Err(ApiError::NotFound("tenant not found"));
        }
        let tenant = state
            .store()
            .get_tenant(id)
            .await?
            .ok_or(ApiError::NotFound("tenant not found"))?;
        Ok(TenantScope { caller, tenant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Bearer a b")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
