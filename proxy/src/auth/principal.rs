//! The trusted identity of an authenticated request, whatever its credential.

use crate::headers::{X_API_KEY_ID, X_AUTH_METHOD, X_TENANT_ID, X_TENANT_ROLE, X_USER_ID};
use crate::small::SmallStr;
use http::{HeaderName, HeaderValue};

/// How the request authenticated; the `x-auth-method` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    /// A registered client certificate.
    Mtls,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// The trusted identity of an authenticated request, as injected upstream.
///
/// Built once per cached API key or verified token and stored inline in its
/// cache entry: the four values back to back in one small buffer (inline up to
/// [`PRINCIPAL_INLINE`] bytes), checked once here. Injecting copies each value
/// into the request's own header value: a few small allocations on lines that are
/// hot anyway, where sharing one buffer cost a reference count on a line of its
/// own (a cache miss per request when many keys are in use).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// tenant id, user id, role, API key id (empty for a JWT), back to back.
    text: SmallStr<PRINCIPAL_INLINE>,
    ends: [u16; 4],
    pub method: AuthMethod,
}

/// Identity text kept inline in a principal: a tenant id, two UUIDs and a role fit.
pub const PRINCIPAL_INLINE: usize = 110;

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
            // Exactly what `HeaderValue` accepts, so `headers()` cannot fail.
            HeaderValue::from_str(part).map_err(|_| InvalidIdentity)?;
            text.push_str(part);
            *end = u16::try_from(text.len()).map_err(|_| InvalidIdentity)?;
        }
        Ok(Principal {
            text: SmallStr::new(&text),
            ends,
            method,
        })
    }

    fn part_bytes(&self, i: usize) -> &[u8] {
        self.text
            .as_bytes()
            .get(range(&self.ends, i))
            .unwrap_or_default()
    }

    fn part(&self, i: usize) -> &str {
        // The ends fall between the `&str`s it was built from, so the part is UTF-8
        // on its own; only its own bytes are checked (not the whole text).
        std::str::from_utf8(self.part_bytes(i)).unwrap_or_default()
    }

    fn value(&self, i: usize) -> HeaderValue {
        // From the bytes: `HeaderValue` checks them itself, so no UTF-8 check first.
        // Checked in `new`; the fallback is never taken.
        HeaderValue::from_bytes(self.part_bytes(i)).unwrap_or_else(|_| HeaderValue::from_static(""))
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
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let fixed = [
            (X_TENANT_ID.clone(), self.value(0)),
            (X_USER_ID.clone(), self.value(1)),
            (X_TENANT_ROLE.clone(), self.value(2)),
            (
                X_AUTH_METHOD.clone(),
                HeaderValue::from_static(self.method.as_str()),
            ),
        ];
        let key =
            (self.method == AuthMethod::ApiKey).then(|| (X_API_KEY_ID.clone(), self.value(3)));
        fixed.into_iter().chain(key)
    }
}

/// Byte range of the `i`-th of the values ending at `ends`.
fn range(ends: &[u16; 4], i: usize) -> std::ops::Range<usize> {
    let start = i.checked_sub(1).map_or(0, |j| usize::from(ends[j]));
    start..usize::from(ends[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_longer_than_the_inline_buffer_read_back_whole() {
        let user = "u".repeat(PRINCIPAL_INLINE);
        let key = "k".repeat(40);
        let p = Principal::new("acme", &user, "admin", AuthMethod::ApiKey, Some(&key)).unwrap();
        assert_eq!(
            (p.tenant_id(), p.user_id(), p.role(), p.api_key_id()),
            ("acme", user.as_str(), "admin", Some(key.as_str()))
        );
        let h: Vec<_> = p.headers().collect();
        assert_eq!(h[1].1.as_bytes(), user.as_bytes());
        assert_eq!(h[4].1.as_bytes(), key.as_bytes());
        // Equal whatever the storage.
        let q = Principal::new("acme", &user, "admin", AuthMethod::ApiKey, Some(&key)).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn principal_headers() {
        let p = Principal::new("acme", "u1", "admin", AuthMethod::ApiKey, Some("k1")).unwrap();
        let h: Vec<_> = p.headers().collect();
        assert_eq!(
            h[0],
            (X_TENANT_ID.clone(), HeaderValue::from_static("acme"))
        );
        assert_eq!(h[1], (X_USER_ID.clone(), HeaderValue::from_static("u1")));
        assert_eq!(
            h[2],
            (X_TENANT_ROLE.clone(), HeaderValue::from_static("admin"))
        );
        assert_eq!(
            h[3],
            (X_AUTH_METHOD.clone(), HeaderValue::from_static("api_key"))
        );
        assert_eq!(h[4], (X_API_KEY_ID.clone(), HeaderValue::from_static("k1")));
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
