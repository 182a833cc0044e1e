//! The one error type of the hot path and the one function that turns it into the
//! contract's JSON response.

use crate::limiter::Limits;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};

/// Why a request is not proxied (or failed upstream).
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    BadRequest(&'static str),
    /// The request's header section is larger than the proxy accepts.
    HeadersTooLarge,
    NoCredential,
    InvalidToken,
    InvalidApiKey,
    /// Two different credentials in one request.
    AmbiguousCredential,
    Forbidden,
    TenantSuspended,
    UnknownTenant,
    NoRoute,
    /// A rate limit in force (the tenant's or the key's) is exhausted.
    /// (Boxed: the limits are large and a rejection is rare next to the `Ok` path.)
    RateLimited(Box<Limits>),
    /// The tenant's quota for the current period is spent.
    QuotaExceeded(Box<Limits>),
    /// The client address is not in the key's or the tenant's allow-list.
    IpNotAllowed,
    UpstreamUnavailable,
    UpstreamTimeout,
    Unavailable,
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::HeadersTooLarge => 431,
            Reject::NoCredential
            | Reject::InvalidToken
            | Reject::InvalidApiKey
            | Reject::AmbiguousCredential => 401,
            Reject::Forbidden
            | Reject::TenantSuspended
            | Reject::UnknownTenant
            | Reject::IpNotAllowed => 403,
            Reject::NoRoute => 404,
            Reject::RateLimited(_) | Reject::QuotaExceeded(_) => 429,
            Reject::UpstreamUnavailable => 502,
            Reject::UpstreamTimeout => 504,
            Reject::Unavailable => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad_request",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::NoCredential => "unauthorized",
            Reject::InvalidToken | Reject::AmbiguousCredential => "invalid_token",
            Reject::InvalidApiKey => "invalid_api_key",
            Reject::Forbidden => "forbidden",
            Reject::TenantSuspended => "tenant_suspended",
            Reject::UnknownTenant => "unknown_tenant",
            Reject::NoRoute => "no_route",
            Reject::RateLimited(_) => "rate_limited",
            Reject::QuotaExceeded(_) => "quota_exceeded",
            Reject::IpNotAllowed => "ip_not_allowed",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::Unavailable => "unavailable",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Reject::BadRequest(m) => m,
            Reject::HeadersTooLarge => "the request headers are too large",
            Reject::NoCredential => {
                "a credential is required: Authorization: Bearer <token> or X-API-Key"
            }
            Reject::InvalidToken => "the bearer token is invalid, expired or not accepted here",
            Reject::AmbiguousCredential => "more than one credential was sent",
            Reject::InvalidApiKey => "the API key is invalid, expired or revoked",
            Reject::Forbidden => "this role may not do that on this resource",
            Reject::TenantSuspended => "the tenant is suspended",
            Reject::UnknownTenant => "the tenant does not exist",
            Reject::NoRoute => "no route matches this path",
            Reject::RateLimited(_) => "the rate limit is exhausted",
            Reject::QuotaExceeded(_) => "the tenant's quota for this period is spent",
            Reject::IpNotAllowed => "requests from this address are not allowed",
            Reject::UpstreamUnavailable => "the upstream is unavailable",
            Reject::UpstreamTimeout => "the upstream timed out",
            Reject::Unavailable => "a dependency is unavailable; try again",
        }
    }

    /// Counted as `denied` in usage (RBAC and tenant state).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            Reject::Forbidden | Reject::TenantSuspended | Reject::IpNotAllowed
        )
    }

    /// Extra headers besides content-type.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Reject::NoCredential => vec![(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            Reject::InvalidToken | Reject::AmbiguousCredential => {
                vec![(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                )]
            }
            Reject::RateLimited(l) | Reject::QuotaExceeded(l) => {
                let mut h = l.headers().to_vec();
                h.push((RETRY_AFTER, HeaderValue::from(l.retry_after_secs())));
                h
            }
            _ => Vec::new(),
        }
    }

    /// `{"error": {"code", "message", "request_id"}}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let v = serde_json::json!({
            "error": {"code": self.code(), "message": self.message(), "request_id": request_id}
        });
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Decision;

    #[test]
    fn body_shape() {
        let b = Reject::NoRoute.body("rid-1");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["request_id"], "rid-1");
        assert!(v["error"]["message"].is_string());
    }

    #[test]
    fn statuses_and_codes_follow_the_contract() {
        let d = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_secs: 6,
            retry_after_secs: 0,
            window_secs: 60,
        };
        let cases = [
            (Reject::NoCredential, 401, "unauthorized"),
            (Reject::InvalidToken, 401, "invalid_token"),
            (Reject::InvalidApiKey, 401, "invalid_api_key"),
            (Reject::Forbidden, 403, "forbidden"),
            (Reject::TenantSuspended, 403, "tenant_suspended"),
            (Reject::UnknownTenant, 403, "unknown_tenant"),
            (Reject::NoRoute, 404, "no_route"),
            (
                Reject::RateLimited(Box::new(Limits::tenant(d))),
                429,
                "rate_limited",
            ),
            (
                Reject::QuotaExceeded(Box::new(Limits::tenant(d))),
                429,
                "quota_exceeded",
            ),
            (Reject::IpNotAllowed, 403, "ip_not_allowed"),
            (Reject::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Reject::UpstreamTimeout, 504, "upstream_timeout"),
            (Reject::Unavailable, 503, "unavailable"),
        ];
        for (r, s, c) in cases {
            assert_eq!(r.status(), s);
            assert_eq!(r.code(), c);
        }
    }

    #[test]
    fn rate_limited_carries_retry_after_at_least_one() {
        let d = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_secs: 6,
            retry_after_secs: 0,
            window_secs: 60,
        };
        let h = Reject::RateLimited(Box::new(Limits::tenant(d))).headers();
        assert!(h.iter().any(|(n, v)| *n == "retry-after" && v == "1"));
        assert!(Reject::NoCredential
            .headers()
            .iter()
            .any(|(n, v)| *n == "www-authenticate" && v == "Bearer"));
    }
}
