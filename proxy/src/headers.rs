//! Stage 2 (scrub) and stage 7 (inject): identity headers.
//!
//! A client can never send an identity header to the upstream: every header in the
//! identity namespaces is removed on every route, whatever its case or count, and
//! only then are the trusted values written.

use http::HeaderName;

pub const X_TENANT_ID: &str = "x-tenant-id";
pub const X_USER_ID: &str = "x-user-id";
pub const X_TENANT_ROLE: &str = "x-tenant-role";
pub const X_AUTH_METHOD: &str = "x-auth-method";
pub const X_API_KEY_ID: &str = "x-api-key-id";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_TENANT_ASSERTION: &str = "x-tenant-assertion";
pub const X_API_KEY: &str = "x-api-key";

/// Header-name prefixes that belong to tenantgate's identity namespace.
const IDENTITY_PREFIXES: &[&str] = &[
    "x-tenant-",
    "x-user-",
    "x-auth-",
    "x-api-key-",
    "x-tenantgate-",
];
/// Exact identity header names outside those prefixes.
const IDENTITY_EXACT: &[&str] = &[
    "x-tenant",
    "x-user",
    "x-role",
    "x-roles",
    "x-forwarded-user",
];

/// Whether a (lowercase) header name is an identity header a client may not set.
pub fn is_identity_header(name: &str) -> bool {
    IDENTITY_PREFIXES.iter().any(|p| name.starts_with(p)) || IDENTITY_EXACT.contains(&name)
}

/// Names of the identity headers present in `headers` (each once).
pub fn identity_headers_in(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_identity_header(name.as_str()) && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// A client request id is kept when it is a sane token: 1..=128 of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':'))
}

/// How the request authenticated; the `x-auth-method` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// The trusted identity of an authenticated request, as injected upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub user_id: String,
    pub role: String,
    pub method: AuthMethod,
    pub api_key_id: Option<String>,
}

impl Principal {
    /// `(name, value)` pairs to inject, in a fixed order.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            (X_TENANT_ID, self.tenant_id.as_str()),
            (X_USER_ID, self.user_id.as_str()),
            (X_TENANT_ROLE, self.role.as_str()),
            (X_AUTH_METHOD, self.method.as_str()),
        ];
        if let Some(id) = &self.api_key_id {
            v.push((X_API_KEY_ID, id.as_str()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn identity_names() {
        for n in [
            "x-tenant-id",
            "x-tenant-role",
            "x-tenant-anything",
            "x-user-id",
            "x-auth-method",
            "x-api-key-id",
            "x-tenant-assertion",
            "x-tenantgate-debug",
            "x-forwarded-user",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in [
            "x-request-id",
            "x-api-key",
            "content-type",
            "x-tenantish",
            "authorization",
        ] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn finds_each_identity_header_once_whatever_case() {
        let mut h = HeaderMap::new();
        h.append("X-Tenant-Id", HeaderValue::from_static("evil"));
        h.append("x-tenant-id", HeaderValue::from_static("evil2"));
        h.append("X-USER-ID", HeaderValue::from_static("root"));
        h.append("accept", HeaderValue::from_static("*/*"));
        let names = identity_headers_in(&h);
        assert_eq!(names.len(), 2);
        for n in names {
            h.remove(&n);
        }
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_X.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(!valid_request_id(b"new\nline"));
    }

    #[test]
    fn principal_headers() {
        let p = Principal {
            tenant_id: "acme".into(),
            user_id: "u1".into(),
            role: "admin".into(),
            method: AuthMethod::ApiKey,
            api_key_id: Some("k1".into()),
        };
        let h = p.headers();
        assert_eq!(h[0], (X_TENANT_ID, "acme"));
        assert_eq!(h.len(), 5);
        let jwt = Principal {
            method: AuthMethod::Jwt,
            api_key_id: None,
            ..p
        };
        assert_eq!(jwt.headers().len(), 4);
    }
}
