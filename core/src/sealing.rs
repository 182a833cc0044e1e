//! Secrets at rest: private signing keys are stored sealed with AES-256-GCM under
//! a key-encryption key (KEK) derived from the server secret, which is
//! `admin.secret_key` or a generated file in the data directory.

use crate::config::Settings;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Name of the generated server secret under `store.data_dir`.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// Sealing or opening failed (a wrong KEK, or a corrupt sealed value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot seal or open: wrong key or corrupt data")]
pub struct SealError;

/// The server secret file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct KekError {
    pub path: PathBuf,
    pub message: String,
}

/// A 32-byte key-encryption key derived from the server secret.
pub fn derive_kek(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tenantgate/kek/v1\0");
    h.update(secret);
    h.finalize().into()
}

/// AES-256-GCM: base64(nonce || ciphertext || tag).
pub fn seal(kek: &[u8; 32], plaintext: &[u8]) -> Result<String, SealError> {
    let key = UnboundKey::new(&AES_256_GCM, kek).map_err(|_| SealError)?;
    let key = LessSafeKey::new(key);
    let nonce_bytes: [u8; NONCE_LEN] = crate::secrets::random_bytes();
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(b"tenantgate-signing-key"),
        &mut buf,
    )
    .map_err(|_| SealError)?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buf);
    Ok(STANDARD.encode(out))
}

pub fn open(kek: &[u8; 32], sealed: &str) -> Result<Vec<u8>, SealError> {
    let raw = STANDARD.decode(sealed).map_err(|_| SealError)?;
    if raw.len() < NONCE_LEN + 16 {
        return Err(SealError);
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).map_err(|_| SealError)?);
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(b"tenantgate-signing-key"), &mut buf)
        .map_err(|_| SealError)?;
    Ok(plain.to_vec())
}

/// The key-encryption key: derived from `admin.secret_key` when set, else from
/// `<store.data_dir>/secret.key` (32 random bytes, hex; created with mode 0600).
pub async fn load_kek(settings: &Settings) -> Result<[u8; 32], KekError> {
    if let Some(secret) = &settings.admin.secret_key {
        return Ok(derive_kek(secret.as_bytes()));
    }
    let path = settings.store.data_dir.join(SECRET_KEY_FILE);
    let secret = tokio::task::spawn_blocking(move || read_or_create_secret(&path))
        .await
        .map_err(|e| KekError {
            path: PathBuf::from(SECRET_KEY_FILE),
            message: format!("secret file task failed: {e}"),
        })??;
    Ok(derive_kek(&secret))
}

fn read_or_create_secret(path: &Path) -> Result<[u8; 32], KekError> {
    let err = |message: String| KekError {
        path: path.to_owned(),
        message,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("cannot create directory: {e}")))?;
        }
    }
    let fresh: [u8; 32] = crate::secrets::random_bytes();
    match create_private_file(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(format!("{}\n", hex::encode(fresh)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| err(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "created a new server secret");
            return Ok(fresh);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(format!("cannot create: {e}"))),
    }
    // Another process may be writing it right now: retry briefly on a short read.
    let mut last = String::new();
    for _ in 0..20 {
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        match hex::decode(text.trim()) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut out = [0u8; 32];
                out.copy_from_slice(&bytes);
                return Ok(out);
            }
            _ => last = "must hold 32 bytes as 64 hex characters".into(),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(err(last))
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}
