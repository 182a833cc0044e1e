//! Issuers bound to a tenant (a tenant's own IdP): the record the store keeps and
//! the rules their URLs follow, shared by the config (`[[jwt.issuers]]`), the admin
//! API and the proxy.

/// The most bound issuers one tenant may have.
pub const MAX_ISSUERS_PER_TENANT: usize = 20;
/// The most bound issuers a proxy loads (all tenants together).
pub const MAX_BOUND_ISSUERS: usize = 10_000;
/// Longest issuer or JWKS URL, bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Largest `max_lifetime_seconds` accepted (ten years).
pub const MAX_LIFETIME_SECONDS: u64 = 10 * 366 * 86_400;

/// An issuer bound to a tenant, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantIssuer {
    pub id: String,
    pub tenant_id: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    pub jwks_url: String,
    pub audiences: Vec<String>,
    /// Names from [`crate::config::ALLOWED_JWT_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// The claim that may name the tenant (it must then name this one).
    pub tenant_claim: String,
    pub role_claim: String,
    /// The role of a token without a role claim; `None`: such tokens are refused.
    pub default_role: Option<String>,
    pub max_lifetime_seconds: Option<u64>,
    pub created_at_ms: i64,
}

/// What a URL's host is, as far as the plain-http rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlScheme {
    Https,
    /// `http://` to a loopback host (127.0.0.0/8, ::1, `localhost`).
    HttpLoopback,
    /// `http://` to anything else.
    Http,
}

/// Checks an `http(s)://host[:port][/path]` URL without a URL library: the scheme,
/// a non-empty host (no user info), a numeric port, no whitespace or control
/// characters. Returns the kind of scheme it uses.
pub fn check_http_url(url: &str) -> Result<UrlScheme, String> {
    if url.chars().count() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &url[8..])
    } else if lower.starts_with("http://") {
        (false, &url[7..])
    } else {
        return Err("must be an http:// or https:// URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not contain user information".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "has an unterminated IPv6 address".to_owned())?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has an invalid IPv6 address".into());
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "has garbage after the IPv6 address".to_owned())?,
            ),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("must name a host".into());
    }
    // A name: letters, digits, `_`, `-`, `.`, starting and ending with a letter,
    // digit or `_` (an IPv6 address in brackets was checked above).
    if !authority.starts_with('[') && !is_host_name(host) {
        return Err("has an invalid host name".into());
    }
    if let Some(p) = port {
        if p.starts_with('0') || p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("has an invalid port".into());
        }
    }
    if https {
        return Ok(UrlScheme::Https);
    }
    Ok(if is_loopback_host(host) {
        UrlScheme::HttpLoopback
    } else {
        UrlScheme::Http
    })
}

/// Letters, digits, `_`, `-` and `.`, starting and ending with a letter, digit or `_`.
fn is_host_name(host: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
    host.starts_with(edge)
        && host.ends_with(edge)
        && host.chars().all(|c| edge(c) || c == '.' || c == '-')
}

/// `localhost`, or a loopback IP address (127.0.0.0/8, ::1).
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Two issuer strings that a token could be confused between: equal, or equal but
/// for a trailing `/`.
pub fn same_issuer(a: &str, b: &str) -> bool {
    a == b || a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified() {
        assert_eq!(
            check_http_url("https://idp.example.com/.well-known/jwks.json"),
            Ok(UrlScheme::Https)
        );
        assert_eq!(
            check_http_url("HTTPS://idp.example.com"),
            Ok(UrlScheme::Https)
        );
        assert_eq!(
            check_http_url("http://127.0.0.1:9999/jwks"),
            Ok(UrlScheme::HttpLoopback)
        );
        assert_eq!(
            check_http_url("http://127.8.0.1/jwks"),
            Ok(UrlScheme::HttpLoopback)
        );
        assert_eq!(
            check_http_url("http://[::1]:80/jwks"),
            Ok(UrlScheme::HttpLoopback)
        );
        assert_eq!(
            check_http_url("http://localhost:8080"),
            Ok(UrlScheme::HttpLoopback)
        );
        assert_eq!(
            check_http_url("http://idp.example.com/jwks"),
            Ok(UrlScheme::Http)
        );
        assert_eq!(check_http_url("http://10.0.0.1/jwks"), Ok(UrlScheme::Http));
        assert_eq!(
            check_http_url("http://127.0.0.1.evil.example/jwks"),
            Ok(UrlScheme::Http)
        );
        for bad in [
            "",
            "idp.example.com",
            "ftp://idp.example.com",
            "https://",
            "https:///path",
            "https://user@idp.example.com",
            "https://idp.example.com:notaport/",
            "https://idp.example.com:0/",
            "https://[::1/jwks",
            "https://[nope]/jwks",
            "https://idp.example.com/a b",
            "https://idp.example.com/\n",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn issuers_equal_but_for_a_trailing_slash_are_the_same() {
        assert!(same_issuer("https://a.example", "https://a.example/"));
        assert!(same_issuer("https://a.example", "https://a.example"));
        assert!(!same_issuer("https://a.example", "https://b.example"));
    }
}
