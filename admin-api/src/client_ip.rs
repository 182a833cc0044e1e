//! The client's IP address, by the same trusted-proxy rule as the proxy's: the TCP
//! peer, unless the peer is in `[admin] trusted_proxies`; then the right-most
//! address of `x-forwarded-for` that is not itself a trusted proxy.
//!
//! Without connection info (the router driven in-process, as tests do) the client
//! is unknown: logins are then throttled by email only.

use crate::AdminState;
use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use http::HeaderMap;
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The request's client address (`None`: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AdminState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.options().trusted_proxies,
        )))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// An address of `x-forwarded-for`: a bare IP, `[v6]`, `[v6]:port` or `v4:port`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

/// The client address for a request from `peer` with `headers`.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !is_trusted(trusted, peer) {
        return Some(peer);
    }
    let chain: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_ip)
        .collect();
    chain
        .iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(trusted, *ip))
        // Every hop trusted: the farthest one is the best guess.
        .or_else(|| chain.first().copied())
        .or(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, v.parse().unwrap());
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff("203.0.113.5");
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &[]), ip("192.0.2.1"));
        assert_eq!(
            client_ip(ip("192.0.2.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_counts() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff("198.51.100.1, 203.0.113.5, 10.0.0.3");
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.5"));
        // Garbage and ports are handled.
        let h = xff("nonsense, [2001:db8::1]:443");
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("2001:db8::1"));
        // All trusted: the farthest; no header: the peer.
        let h = xff("10.1.1.1, 10.2.2.2");
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn no_peer_is_unknown() {
        assert_eq!(client_ip(None, &xff("203.0.113.5"), &[]), None);
    }

    #[test]
    fn mapped_v4_peers_match_v4_cidrs() {
        let trusted = nets(&["127.0.0.0/8"]);
        let h = xff("203.0.113.5");
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("203.0.113.5")
        );
    }
}
