//! Stage 2 (scrub) and stage 7 (inject): identity headers.
//!
//! A client can never send an identity header to the upstream: every header in the
//! identity namespaces is removed on every route, whatever its case or count, and
//! only then are the trusted values written.

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
/// Exact identity header names outside those prefixes, and the method-override
/// headers (RBAC decides on the request's real method, so a client must not be
/// able to make the upstream run another one).
const IDENTITY_EXACT: &[&str] = &[
    "x-tenant",
    "x-user",
    "x-role",
    "x-roles",
    "x-forwarded-user",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// `name` with every `_` read as `-`: many upstreams (nginx with
/// `underscores_in_headers`, CGI, WSGI, Rack) map both to the same variable.
fn canonical(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b
    }
}

fn canonical_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(a, b)| canonical(*a) == *b)
}

fn canonical_eq(name: &[u8], other: &[u8]) -> bool {
    name.len() == other.len() && canonical_starts_with(name, other)
}

/// Whether a (lowercase) header name is one a client may not send: an identity
/// header or a method override, compared with `_` read as `-`.
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    IDENTITY_PREFIXES
        .iter()
        .any(|p| canonical_starts_with(n, p.as_bytes()))
        || IDENTITY_EXACT.iter().any(|e| canonical_eq(n, e.as_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Principal};
    use http::{HeaderMap, HeaderValue};

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
            "x-http-methods",
            "x_request_id",
        ] {
            assert!(!is_identity_header(n), "{n}");
        }
        // Underscore spellings are the same header to many upstreams.
        for n in [
            "x_tenant_id",
            "x_tenant-id",
            "x-tenant_role",
            "x_user_id",
            "x_auth_method",
            "x_api_key_id",
            "x_forwarded_user",
            "x_tenant",
            "x-http-method-override",
            "x_http_method_override",
            "x-http-method",
            "x-method-override",
        ] {
            assert!(is_identity_header(n), "{n}");
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
}
