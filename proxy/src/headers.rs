//! Stage 2 (scrub) and stage 7 (inject): identity headers.
//!
//! A client can never send an identity header to the upstream: every header in the
//! identity namespaces is removed on every route, whatever its case or count, and
//! only then are the trusted values written.

use crate::small::SmallStr;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

// Names as `HeaderName`s built at compile time: looking one up or inserting it
// costs no parsing and no allocation (a `&str` name is parsed, and a custom one
// copied into a new buffer, on every use).
pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_TENANT_ROLE: HeaderName = HeaderName::from_static("x-tenant-role");
pub static X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub static X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_TENANT_ASSERTION: HeaderName = HeaderName::from_static("x-tenant-assertion");
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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
/// Built once per cached API key or verified token and stored inline in its
/// cache entry: the four values back to back in one small buffer (inline up to
/// [`PRINCIPAL_INLINE`] bytes), checked once here. Injecting copies each value
/// into the request's own header value: a few small allocations on lines that are
/// hot anyway, where sharing one buffer cost a reference count on a line of its
/// own (a cache miss per request when many keys are in use).
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Removes `remove` from and inserts `add` into the request going upstream.
///
/// Pingora's own `insert_header` parses the name, copies a custom one into a new
/// buffer, keeps a second map of the names' original case beside the `HeaderMap`
/// and grows both one entry at a time: about a third of the proxy's own cost on
/// the authenticated path. So when the request target round-trips through the URI
/// (every origin-form target: the hot path), the `HeaderMap` is edited directly,
/// with prebuilt names and one reservation, and the request is rebuilt around it.
/// It then carries no case map, and its header names go upstream lowercase (the
/// standard ones title-cased), as HTTP/1.1 allows and as Envoy and HAProxy send
/// them. Any other target keeps Pingora's path, which preserves it verbatim.
pub fn edit_request<I>(req: &mut RequestHeader, remove: &[&HeaderName], add: I) -> Result<()>
where
    I: IntoIterator<Item = (HeaderName, HeaderValue)>,
{
    let target_from_uri = req.raw_path_is_utf8()
        && req.send_end_stream() != Some(false)
        && req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path());
    if !target_from_uri {
        for name in remove {
            req.remove_header(*name);
        }
        for (name, value) in add {
            req.insert_header(name, value)?;
        }
        return Ok(());
    }
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    for name in remove {
        parts.headers.remove(*name);
    }
    insert_all(&mut parts.headers, add);
    *req = RequestHeader::from(parts);
    Ok(())
}

/// Inserts `add` into the response going downstream, the way [`edit_request`]
/// does (names lowercase, no case map); a non-standard reason phrase is kept.
pub fn edit_response<I>(resp: &mut ResponseHeader, add: I) -> Result<()>
where
    I: IntoIterator<Item = (HeaderName, HeaderValue)>,
{
    let reason = resp.get_reason_phrase();
    let custom_reason = (reason != resp.status.canonical_reason())
        .then(|| reason.map(str::to_owned))
        .flatten();
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    insert_all(&mut parts.headers, add);
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = custom_reason {
        resp.set_reason_phrase(Some(&reason))?;
    }
    Ok(())
}

/// A response built from scratch: `status` and `headers`, no case map.
pub fn new_response<I>(status: u16, headers: I) -> Result<ResponseHeader>
where
    I: IntoIterator<Item = (HeaderName, HeaderValue)>,
{
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(status)
        .map_err(|_| Error::explain(ErrorType::InternalError, "invalid status code"))?;
    insert_all(&mut parts.headers, headers);
    Ok(ResponseHeader::from(parts))
}

fn insert_all<I>(headers: &mut HeaderMap, add: I)
where
    I: IntoIterator<Item = (HeaderName, HeaderValue)>,
{
    let add = add.into_iter();
    headers.reserve(add.size_hint().0);
    for (name, value) in add {
        headers.insert(name, value);
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

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    fn request(target: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        req.append_header("Host", "up.local").unwrap();
        req.append_header("X-Custom-Thing", "a").unwrap();
        req.append_header("X-Custom-Thing", "b").unwrap();
        req.append_header("X-API-Key", "tg_secret").unwrap();
        req.append_header("Authorization", "Bearer t").unwrap();
        req.extensions_mut().insert(7u32);
        req
    }

    fn inject() -> Vec<(HeaderName, HeaderValue)> {
        let p = Principal::new("acme", "u1", "admin", AuthMethod::ApiKey, Some("k1")).unwrap();
        p.headers()
            .chain([(X_REQUEST_ID.clone(), HeaderValue::from_static("rid"))])
            .collect()
    }

    #[test]
    fn edit_request_on_the_fast_path_keeps_everything_but_the_edit() {
        let mut req = request(b"/api/v1/echo?a=1&b=%20");
        edit_request(
            &mut req,
            &[&X_API_KEY, &http::header::AUTHORIZATION],
            inject(),
        )
        .unwrap();
        assert!(!req.has_case(), "the HeaderMap was edited directly");
        assert_eq!(req.method, http::Method::GET);
        assert_eq!(req.raw_path(), b"/api/v1/echo?a=1&b=%20");
        assert_eq!(req.extensions.get::<u32>(), Some(&7));
        let h = &req.headers;
        assert!(h.get(&X_API_KEY).is_none() && h.get("authorization").is_none());
        let custom: Vec<_> = h.get_all("x-custom-thing").iter().collect();
        assert_eq!(
            custom,
            ["a", "b"],
            "repeated headers keep every value in order"
        );
        assert_eq!(h.get("host").unwrap(), "up.local");
        assert_eq!(h.get(&X_TENANT_ID).unwrap(), "acme");
        assert_eq!(h.get(&X_API_KEY_ID).unwrap(), "k1");
        assert_eq!(h.get(&X_REQUEST_ID).unwrap(), "rid");
        assert_eq!(h.len(), 9);
        let w = wire(&req);
        assert!(w.contains("Host: up.local\r\n"), "{w}");
        assert!(
            w.contains("x-custom-thing: a\r\nx-custom-thing: b\r\n"),
            "{w}"
        );
        assert!(w.contains("x-tenant-id: acme\r\n"), "{w}");
        assert!(!w.contains("tg_secret") && !w.contains("Bearer"), "{w}");
    }

    #[test]
    fn edit_request_keeps_a_target_the_uri_cannot_reproduce() {
        // An absolute-form target is kept verbatim only by Pingora's own path.
        let target: &[u8] = b"http://up.local/api/v1/echo?x=1";
        let mut req = request(target);
        edit_request(
            &mut req,
            &[&X_API_KEY, &http::header::AUTHORIZATION],
            inject(),
        )
        .unwrap();
        assert_eq!(req.raw_path(), target);
        assert!(
            req.has_case(),
            "the original names' case is kept on this path"
        );
        assert!(req.headers.get(&X_API_KEY).is_none());
        assert_eq!(req.headers.get(&X_TENANT_ID).unwrap(), "acme");
        assert!(wire(&req).contains("X-Custom-Thing: a\r\n"));
    }

    #[test]
    fn edit_response_adds_and_keeps_a_custom_reason() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("Content-Type", "text/plain").unwrap();
        resp.append_header("X-Upstream", "1").unwrap();
        resp.append_header("x-request-id", "from-upstream").unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        edit_response(&mut resp, inject()).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers.get("x-upstream").unwrap(), "1");
        assert_eq!(resp.headers.get("content-type").unwrap(), "text/plain");
        // Inserting replaces: the upstream's request id is not sent twice.
        let rid: Vec<_> = resp.headers.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(rid, ["rid"]);

        let mut plain = ResponseHeader::build(404, None).unwrap();
        edit_response(&mut plain, []).unwrap();
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn new_response_has_the_status_and_headers() {
        let r = new_response(429, inject()).unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers.len(), 6);
        assert!(new_response(1000, []).is_err());
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
