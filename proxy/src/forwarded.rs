//! Forwarding headers belong to the proxy. `x-forwarded-for`, `x-forwarded-proto`,
//! `x-forwarded-host`, `x-real-ip` and `forwarded` from a client are replaced by
//! the proxy's own values, unless the peer is a trusted proxy (`[proxy]
//! trusted_proxies`): then its headers are kept and the peer is appended to
//! `x-forwarded-for`. The client address this rule yields is the one used
//! wherever the proxy needs "the client's IP".

use http::header::{FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The trusted-proxy rule.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    trusted: Vec<IpNet>,
}

/// What the rule decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address: the peer, or (behind trusted proxies) the nearest
    /// untrusted address of `x-forwarded-for`.
    pub client: Option<IpAddr>,
    /// The headers to set upstream (each replaces what the request had).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Forwarding headers to drop without a replacement.
    pub remove: Vec<&'static HeaderName>,
}

impl Forwarding {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Forwarding { trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The forwarding headers for a request from `peer` (`None`: not an IP socket)
    /// with `headers`, over plain HTTP (`proto`).
    pub fn apply(&self, peer: Option<IpAddr>, headers: &HeaderMap, proto: &str) -> Forwarded {
        let peer = peer.map(canonical);
        match peer {
            Some(p) if self.is_trusted(p) => self.behind_trusted(p, headers),
            _ => own(peer, headers, proto),
        }
    }

    /// From a trusted proxy: its headers stay; the peer is appended to
    /// `x-forwarded-for`; the client is the nearest untrusted address in it.
    fn behind_trusted(&self, peer: IpAddr, headers: &HeaderMap) -> Forwarded {
        let chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let parsed: Vec<Option<IpAddr>> = chain.iter().map(|s| parse_ip(s)).collect();
        let client = parsed
            .iter()
            .rev()
            .flatten()
            .copied()
            .find(|ip| !self.is_trusted(*ip))
            .or_else(|| parsed.iter().flatten().copied().next())
            .or(Some(peer));
        let mut xff = chain.join(", ");
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(&peer.to_string());
        Forwarded {
            client,
            set: value(&xff)
                .map(|v| (X_FORWARDED_FOR.clone(), v))
                .into_iter()
                .collect(),
            remove: Vec::new(),
        }
    }
}

/// From anyone else: every forwarding header is the proxy's own.
fn own(peer: Option<IpAddr>, headers: &HeaderMap, proto: &str) -> Forwarded {
    let host = headers.get(HOST).filter(|h| !h.is_empty()).cloned();
    let mut set = Vec::with_capacity(5);
    let mut remove = Vec::new();
    match peer {
        Some(ip) => {
            let addr = ip.to_string();
            if let Some(v) = value(&addr) {
                set.push((X_FORWARDED_FOR.clone(), v.clone()));
                set.push((X_REAL_IP.clone(), v));
            }
            let node = match ip {
                IpAddr::V4(_) => addr,
                IpAddr::V6(_) => format!("\"[{addr}]\""),
            };
            let host_part = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(|h| format!(";host=\"{}\"", h.replace(['"', '\\'], "")))
                .unwrap_or_default();
            if let Some(v) = value(&format!("for={node};proto={proto}{host_part}")) {
                set.push((FORWARDED.clone(), v));
            }
        }
        None => remove.extend([&X_FORWARDED_FOR, &X_REAL_IP, &FORWARDED]),
    }
    set.push((
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(proto_value(proto)),
    ));
    match host {
        Some(h) => set.push((X_FORWARDED_HOST.clone(), h)),
        None => remove.push(&X_FORWARDED_HOST),
    }
    Forwarded {
        client: peer,
        set,
        remove,
    }
}

fn proto_value(proto: &str) -> &'static str {
    if proto == "https" {
        "https"
    } else {
        "http"
    }
}

fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// An address from `x-forwarded-for`: a bare IP, possibly `[v6]` or `ip:port`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(canonical(ip));
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn set(f: &Forwarded, name: &str) -> Option<String> {
        f.set
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_gets_the_proxys_own_headers() {
        let f = Forwarding::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let h = headers(&[
            ("host", "api.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let out = f.apply(ip("192.0.2.7"), &h, "http");
        assert_eq!(out.client, ip("192.0.2.7"));
        assert_eq!(set(&out, "x-forwarded-for").as_deref(), Some("192.0.2.7"));
        assert_eq!(set(&out, "x-real-ip").as_deref(), Some("192.0.2.7"));
        assert_eq!(set(&out, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            set(&out, "x-forwarded-host").as_deref(),
            Some("api.example")
        );
        assert_eq!(
            set(&out, "forwarded").as_deref(),
            Some("for=192.0.2.7;proto=http;host=\"api.example\"")
        );
        assert!(out.remove.is_empty());
        // IPv6 in `Forwarded` is quoted and bracketed.
        let out = f.apply(ip("2001:db8::1"), &headers(&[]), "http");
        assert_eq!(
            set(&out, "forwarded").as_deref(),
            Some("for=\"[2001:db8::1]\";proto=http")
        );
        assert_eq!(out.remove, vec![&X_FORWARDED_HOST]);
    }

    #[test]
    fn a_trusted_peer_keeps_its_headers_and_is_appended() {
        let f = Forwarding::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let out = f.apply(ip("10.2.2.2"), &h, "http");
        assert_eq!(out.client, ip("198.51.100.9"));
        assert_eq!(
            set(&out, "x-forwarded-for").as_deref(),
            Some("198.51.100.9, 10.1.1.1, 10.2.2.2")
        );
        assert_eq!(set(&out, "x-forwarded-proto"), None, "kept as sent");
        // A client that prepends a fake address does not become the client: the
        // nearest untrusted address wins.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.9")]);
        assert_eq!(
            f.apply(ip("10.2.2.2"), &h, "http").client,
            ip("198.51.100.9")
        );
        // Only trusted hops: the leftmost; none at all: the peer.
        let h = headers(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(f.apply(ip("10.2.2.2"), &h, "http").client, ip("10.9.9.9"));
        let out = f.apply(ip("::ffff:10.2.2.2"), &headers(&[]), "http");
        assert_eq!(out.client, ip("10.2.2.2"));
        assert_eq!(set(&out, "x-forwarded-for").as_deref(), Some("10.2.2.2"));
    }

    #[test]
    fn nothing_is_trusted_by_default() {
        let f = Forwarding::default();
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let out = f.apply(ip("127.0.0.1"), &h, "http");
        assert_eq!(out.client, ip("127.0.0.1"));
        assert_eq!(set(&out, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
        let none = f.apply(None, &h, "http");
        assert_eq!(none.client, None);
        assert!(none.remove.contains(&&X_FORWARDED_FOR));
    }
}
