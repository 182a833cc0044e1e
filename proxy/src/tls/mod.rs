//! The TLS listener: rustls terminates TLS inside the gate's own listener app
//! ([`crate::listener::GateListener`]), so HTTP/1.1 over TLS keeps the lean
//! keep-alive loop of the plaintext listener and HTTP/2 (ALPN `h2`) goes to
//! Pingora's HTTP/2 server, both on the same proxy.
//!
//! The server config sits behind a lock that is read once per handshake: SIGHUP
//! ([`TlsAcceptor::reload`]) builds a new one from the files and swaps it in;
//! open connections keep the config they were made with. A file that does not
//! load keeps the last good config and logs one error line naming it.

mod resolver;
mod stream;
pub mod upstream;

pub use resolver::SniResolver;
pub use stream::{client_fingerprint, TlsConn};
pub use upstream::UpstreamTls;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::{Arc, RwLock};
use tenantgate_core::config::TlsSettings;
use tenantgate_core::pem;

type Stream = pingora::protocols::Stream;

/// The crypto provider of every TLS config of the proxy.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts TLS connections with the current server config.
pub struct TlsAcceptor {
    settings: TlsSettings,
    config: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("listen", &self.settings.listen)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads every file of `settings`; the error names the file and what is wrong.
    pub fn new(settings: TlsSettings) -> Result<Self, String> {
        let config = server_config(&settings)?;
        Ok(TlsAcceptor {
            settings,
            config: RwLock::new(config),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Reads the files again and uses them for new handshakes. A file that does
    /// not load keeps the last good config (one error line names it).
    pub fn reload(&self) -> bool {
        match server_config(&self.settings) {
            Ok(config) => {
                if let Ok(mut current) = self.config.write() {
                    *current = config;
                }
                tracing::info!(listen = %self.settings.listen, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
                false
            }
        }
    }

    fn current(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().ok().map(|c| c.clone())
    }

    /// The TLS handshake on an accepted connection.
    pub async fn accept(&self, stream: Stream) -> std::io::Result<TlsConn> {
        let config = self
            .current()
            .ok_or_else(|| std::io::Error::other("TLS config lock poisoned"))?;
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await?;
        Ok(TlsConn::new(tls))
    }
}

/// Builds the server config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the
/// certificates by SNI, client certificates asked for (never required) when a
/// client CA is configured.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let default = certified_key(&s.cert_file, &s.key_file, &provider)?;
    let mut resolver = SniResolver::new(default);
    for sni in &s.sni {
        let key = certified_key(&sni.cert_file, &sni.key_file, &provider)?;
        for name in &sni.server_names {
            resolver.add(name, key.clone());
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &s.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in pem::read_ca_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            // Anonymous clients are let through: they may carry another credential.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let certs = pem::read_certs(cert_file)?;
    let key = pem::read_key(key_file)?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{}: does not fit {}: {e}",
                key_file.display(),
                cert_file.display()
            )
        })
}
