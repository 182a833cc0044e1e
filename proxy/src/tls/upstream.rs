//! TLS towards `https://` upstreams, without Pingora's TLS feature.
//!
//! Enabling Pingora's `rustls` feature puts its TLS accept future inside every
//! accepted connection's task, TLS or not, which doubled the memory of an idle
//! plaintext connection (measured 9.6 → 20 KiB, debug build). So Pingora stays
//! TLS-free and the TLS to an upstream is made here, as Pingora's custom L4
//! connector: TCP connect, TLS handshake (SNI = the backend's host, verified
//! against the route's `ca_file` or the system roots), then the TLS stream is
//! relayed to Pingora through a socket pair. A failed verification fails the
//! connect, which the gate answers 502 `upstream_unavailable`. The relay costs
//! one copy per byte; upstream connections are pooled, so the handshake is not
//! paid per request.

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::{Error, ErrorType};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;
use std::time::Duration;

/// Where system CA bundles live (the first readable one is used; `SSL_CERT_FILE` first).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS towards one route's upstreams.
pub struct UpstreamTls {
    /// The host name (SNI, and the name verified) of each backend address.
    sni: Vec<(SocketAddr, ServerName<'static>)>,
    connector: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// Pingora pools upstream connections by address and SNI, not by how they
    /// were verified: this key (a hash of the CAs) keeps one route's connections
    /// from serving another's.
    pub pool_key: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("backends", &self.sni.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// For `host:port` strings (as configured) and the route's CA file.
    pub fn new(
        addrs: &[String],
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let mut sni = Vec::new();
        for a in addrs {
            let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{a}: not a host name for TLS: {e}"))?;
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(a.as_str())
                .map_err(|e| format!("{a}: {e}"))?;
            for r in resolved {
                sni.push((SocketAddr::Inet(r), name.clone()));
            }
        }
        let (certs, source) = match ca_file {
            Some(path) => (
                tenantgate_core::pem::read_ca_certs(path)?,
                path.display().to_string(),
            ),
            None => system_roots(),
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            tracing::warn!(source = %source, "no CA certificates for an https:// upstream: every handshake will fail");
        }
        let pool_key = pool_key(&certs);
        let mut config = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            sni,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout,
            pool_key,
        })
    }

    /// The name for a backend address (the first configured host when unknown).
    fn name_for(&self, addr: &SocketAddr) -> Option<&ServerName<'static>> {
        self.sni
            .iter()
            .find(|(a, _)| a == addr)
            .or_else(|| self.sni.first())
            .map(|(_, n)| n)
    }

    async fn tls_connect(
        &self,
        addr: std::net::SocketAddr,
        name: ServerName<'static>,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {addr}: {e}"))
    }
}

#[async_trait]
impl L4Connect for UpstreamTls {
    async fn connect(&self, addr: &SocketAddr) -> pingora::Result<L4Stream> {
        let inet = addr
            .as_inet()
            .copied()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "https upstream is not IP"))?;
        let name = self
            .name_for(addr)
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream host name"))?;
        let tls =
            match tokio::time::timeout(self.connect_timeout, self.tls_connect(inet, name)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "https upstream refused");
                    return Err(Error::explain(ErrorType::ConnectError, e));
                }
                Err(_) => {
                    return Err(Error::explain(
                        ErrorType::ConnectTimedout,
                        format!("TLS to {inet}: timed out"),
                    ))
                }
            };
        let (ours, theirs) = tokio::net::UnixStream::pair()
            .map_err(|e| Error::because(ErrorType::SocketError, "socket pair", e))?;
        tokio::spawn(relay(theirs, tls));
        Ok(L4Stream::from(ours))
    }
}

async fn relay(
    mut local: tokio::net::UnixStream,
    mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
}

/// The system's CA bundle (`SSL_CERT_FILE`, else the usual paths).
fn system_roots() -> (Vec<rustls::pki_types::CertificateDer<'static>>, String) {
    let env = std::env::var("SSL_CERT_FILE").ok();
    for path in env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_BUNDLES.iter().copied())
    {
        if let Ok(certs) = tenantgate_core::pem::read_certs(std::path::Path::new(path)) {
            return (certs, path.to_owned());
        }
    }
    (Vec::new(), "the system CA bundle".to_owned())
}

/// A non-zero key for a set of CA certificates.
fn pool_key(certs: &[rustls::pki_types::CertificateDer<'_>]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tenantgate https upstream");
    for c in certs {
        h.update(c.as_ref());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first).max(1)
}
