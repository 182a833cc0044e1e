//! The certificate for a handshake, chosen by SNI: an exact name, else a
//! wildcard for the name's parent (`*.acme.example` covers `api.acme.example`,
//! not `acme.example` nor `a.b.acme.example`), else the listener's certificate.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent domain of the wildcard (`acme.example` for `*.acme.example`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        SniResolver {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    /// Adds a lower-case server name (the first entry for a name wins).
    pub fn add(&mut self, name: &str, key: Arc<CertifiedKey>) {
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_owned()).or_insert(key),
            None => self.exact.entry(name.to_owned()).or_insert(key),
        };
    }

    /// The certificate for `sni` (`None`: no SNI sent).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    fn key(name: &str) -> Arc<CertifiedKey> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let provider = crate::tls::provider();
        Arc::new(
            CertifiedKey::from_der(
                vec![CertificateDer::from(cert.der().to_vec())],
                der,
                &provider,
            )
            .unwrap(),
        )
    }

    #[test]
    fn exact_names_then_one_label_wildcards_then_the_default() {
        let (default, acme, api) = (key("d"), key("*.acme.example"), key("api.acme.example"));
        let mut r = SniResolver::new(default.clone());
        r.add("*.acme.example", acme.clone());
        r.add("api.acme.example", api.clone());
        let is = |sni: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(r.choose(sni), want), "{sni:?}");
        };
        is(Some("api.acme.example"), &api);
        is(Some("API.Acme.Example."), &api);
        is(Some("www.acme.example"), &acme);
        is(Some("acme.example"), &default);
        is(Some("a.b.acme.example"), &default);
        is(Some("other.example"), &default);
        is(None, &default);
    }
}
