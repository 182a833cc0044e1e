//! Stage 2 (scrub) and stage 7 (inject): identity headers.
//!
//! A client can never send an identity header to the upstream: every header in the
//! identity namespaces is removed on every route, whatever its case or count, and
//! only then are the trusted values written.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

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

/// A fresh request id: a UUID v4 from the thread's CSPRNG (no system call per
/// request, unlike `Uuid::new_v4`).
pub fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
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
///
/// Built once per cached API key or verified token, not per request: the values
/// live back to back in one buffer and each header value is a slice of it (no
/// allocation or validation when injected).
#[derive(Debug, Clone)]
pub struct Principal {
    /// tenant id, user id, role, API key id (empty for a JWT), back to back.
    text: Arc<str>,
    /// The same bytes, shared (not copied) for the header values.
    buf: Bytes,
    ends: [u16; 4],
    pub method: AuthMethod,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.ends == other.ends && self.method == other.method
    }
}

impl Eq for Principal {}

/// Lets `Bytes` share a `Principal`'s text.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// An identity value that cannot be sent as a header (a control character), or
/// identity values longer than 64 KiB together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("identity not representable as headers")]
pub struct InvalidIdentity;

impl Principal {
    pub fn new(
        tenant_id: &str,
        user_id: &str,
        role: &str,
        method: AuthMethod,
        api_key_id: Option<&str>,
    ) -> Result<Self, InvalidIdentity> {
        let parts = [tenant_id, user_id, role, api_key_id.unwrap_or("")];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; 4];
        for (end, part) in ends.iter_mut().zip(parts) {
            if part.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(InvalidIdentity);
            }
            text.push_str(part);
            *end = u16::try_from(text.len()).map_err(|_| InvalidIdentity)?;
        }
        let text: Arc<str> = text.into();
        Ok(Principal {
            buf: Bytes::from_owner(SharedText(text.clone())),
            text,
            ends,
            method,
        })
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = i.checked_sub(1).map_or(0, |j| usize::from(self.ends[j]));
        start..usize::from(self.ends[i])
    }

    fn part(&self, i: usize) -> &str {
        // The ends fall between the `&str`s it was built from: always char boundaries.
        self.text.get(self.range(i)).unwrap_or_default()
    }

    fn value(&self, i: usize) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.buf.slice(self.range(i)))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn tenant_id(&self) -> &str {
        self.part(0)
    }

    pub fn user_id(&self) -> &str {
        self.part(1)
    }

    pub fn role(&self) -> &str {
        self.part(2)
    }

    pub fn api_key_id(&self) -> Option<&str> {
        (self.method == AuthMethod::ApiKey).then(|| self.part(3))
    }

    /// `(name, value)` pairs to inject, in a fixed order.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, HeaderValue)> + '_ {
        let fixed = [
            (X_TENANT_ID, self.value(0)),
            (X_USER_ID, self.value(1)),
            (X_TENANT_ROLE, self.value(2)),
            (
                X_AUTH_METHOD,
                HeaderValue::from_static(self.method.as_str()),
            ),
        ];
        let key = (self.method == AuthMethod::ApiKey).then(|| (X_API_KEY_ID, self.value(3)));
        fixed.into_iter().chain(key)
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
    fn new_request_ids_are_distinct_uuid_v4s() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert!(valid_request_id(a.as_bytes()));
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
        let p = Principal::new("acme", "u1", "admin", AuthMethod::ApiKey, Some("k1")).unwrap();
        let h: Vec<_> = p.headers().collect();
        assert_eq!(h[0], (X_TENANT_ID, HeaderValue::from_static("acme")));
        assert_eq!(h[1], (X_USER_ID, HeaderValue::from_static("u1")));
        assert_eq!(h[2], (X_TENANT_ROLE, HeaderValue::from_static("admin")));
        assert_eq!(h[3], (X_AUTH_METHOD, HeaderValue::from_static("api_key")));
        assert_eq!(h[4], (X_API_KEY_ID, HeaderValue::from_static("k1")));
        assert_eq!(h.len(), 5);
        assert_eq!(
            (p.tenant_id(), p.user_id(), p.role()),
            ("acme", "u1", "admin")
        );
        assert_eq!(p.api_key_id(), Some("k1"));
        let jwt = Principal::new("acme", "sub-ü", "admin", AuthMethod::Jwt, None).unwrap();
        assert_eq!(jwt.headers().count(), 4);
        assert_eq!(jwt.user_id(), "sub-ü");
        assert_eq!(jwt.api_key_id(), None);
        assert_eq!(
            jwt.headers().nth(1).unwrap().1.as_bytes(),
            "sub-ü".as_bytes()
        );
    }

    #[test]
    fn principal_refuses_values_that_are_not_header_safe() {
        for bad in ["a\nb", "a\rb", "a\0b", "a\u{7f}b"] {
            assert_eq!(
                Principal::new(bad, "u", "r", AuthMethod::Jwt, None),
                Err(InvalidIdentity)
            );
            assert_eq!(
                Principal::new("t", "u", bad, AuthMethod::Jwt, None),
                Err(InvalidIdentity)
            );
        }
        let long = "x".repeat(70_000);
        assert_eq!(
            Principal::new(&long, "u", "r", AuthMethod::Jwt, None),
            Err(InvalidIdentity)
        );
    }
}
