//! The identity the proxy injects, read from request headers. The demo upstream
//! trusts these headers as they are: the proxy scrubs client-supplied copies.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

pub const TENANT_ID: &str = "x-tenant-id";
pub const USER_ID: &str = "x-user-id";
pub const TENANT_ROLE: &str = "x-tenant-role";
pub const AUTH_METHOD: &str = "x-auth-method";
pub const API_KEY_ID: &str = "x-api-key-id";
pub const REQUEST_ID: &str = "x-request-id";

/// Longest tenant id or request id taken from a header.
const MAX_ID_LEN: usize = 128;

/// The single value of a header as text; `None` when absent, repeated or not UTF-8.
pub fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// An id we are willing to use as a key or echo back: 1..=128 visible ASCII
/// characters. Deliberately looser than the admin API's tenant id rule, since the
/// demo trusts whatever tenant the proxy vouches for.
fn valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The request's id: a valid `x-request-id` header, else a fresh uuid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        match single_header(headers, REQUEST_ID).map(str::trim) {
            Some(id) if valid_id(id) => RequestId(id.to_owned()),
            _ => RequestId(uuid::Uuid::new_v4().to_string()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

/// A tenant-scoped request: the tenant (required), the user (optional) and the
/// request id. Rejects with 400 `missing_tenant` when the tenant header is absent,
/// empty, repeated or not a plausible id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCtx {
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub request_id: String,
}

impl TenantCtx {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let RequestId(request_id) = RequestId::from_headers(headers);
        let tenant_id = match single_header(headers, TENANT_ID).map(str::trim) {
            Some(t) if valid_id(t) => t.to_owned(),
            _ => return Err(ApiError::missing_tenant(&request_id)),
        };
        let user_id = single_header(headers, USER_ID)
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        Ok(TenantCtx {
            tenant_id,
            user_id,
            request_id,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn tenant_header_is_required_and_checked() {
        assert!(TenantCtx::from_headers(&headers(&[])).is_err());
        assert!(TenantCtx::from_headers(&headers(&[(TENANT_ID, "")])).is_err());
        assert!(TenantCtx::from_headers(&headers(&[(TENANT_ID, "  ")])).is_err());
        assert!(TenantCtx::from_headers(&headers(&[(TENANT_ID, "a b")])).is_err());
        assert!(TenantCtx::from_headers(&headers(&[(TENANT_ID, "a"), (TENANT_ID, "b")])).is_err());
        let ctx =
            TenantCtx::from_headers(&headers(&[(TENANT_ID, "acme"), (USER_ID, "u1")])).unwrap();
        assert_eq!(ctx.tenant_id, "acme");
        assert_eq!(ctx.user_id.as_deref(), Some("u1"));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        assert_eq!(
            RequestId::from_headers(&headers(&[(REQUEST_ID, "req-1")])).0,
            "req-1"
        );
        let generated = RequestId::from_headers(&headers(&[])).0;
        assert!(uuid::Uuid::parse_str(&generated).is_ok());
        let err = TenantCtx::from_headers(&headers(&[(REQUEST_ID, "req-2")])).unwrap_err();
        assert_eq!(err.code(), crate::error::code::MISSING_TENANT);
    }
}
