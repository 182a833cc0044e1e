//! PEM files and certificates: what the TLS listener, https upstreams and the
//! client-certificate credential read. Every error names the file (or says what
//! is wrong with a submitted certificate) in one line.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Every certificate of a PEM file, in order (a chain: leaf first). At least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// CA certificates of a PEM file (trust anchors): each must parse as X.509.
pub fn read_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certs(path)?;
    for (i, c) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(c).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: holds no PEM private key: {e}", path.display()))
}

/// A certificate chain file and its key file: both readable, and the key the
/// one of the chain's leaf. The error names the file at fault and is `Err((true,
/// _))` when it is the key file.
pub fn check_cert_and_key(cert: &Path, key: &Path) -> Result<(), (bool, String)> {
    let certs = read_certs(cert).map_err(|e| (false, e))?;
    let der = read_key(key).map_err(|e| (true, e))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, der, &provider)
        .map(drop)
        .map_err(|e| {
            (
                true,
                format!("{}: does not fit {}: {e}", key.display(), cert.display()),
            )
        })
}

/// SHA-256 of a certificate's DER bytes, lower-case hex (how client certificates
/// are registered and looked up).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A submitted client certificate (PEM): its DER bytes, or why it is refused.
/// Exactly one certificate, and it must parse as X.509.
pub fn parse_client_cert(pem: &str) -> Result<CertificateDer<'static>, &'static str> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let cert = match certs.next() {
        Some(Ok(c)) => c,
        _ => return Err("must be one PEM certificate"),
    };
    if certs.next().is_some() {
        return Err("must be one PEM certificate, not a chain");
    }
    webpki::EndEntityCert::try_from(&cert).map_err(|_| "is not a valid X.509 certificate")?;
    Ok(cert)
}
