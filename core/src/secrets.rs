//! Secrets: API key format and digests, bearer-token comparison, password hashing.
//!
//! API keys look like `tg_<prefix>_<secret>`: the prefix (12 lowercase hex chars) is
//! public and indexed, the secret is 44 alphanumeric characters (> 256 bits). Only a
//! digest of the whole key is stored: SHA-256, or HMAC-SHA-256 when a pepper is set.

use hmac::{Hmac, Mac};
use rand::distributions::{Alphanumeric, DistString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const API_KEY_PREFIX_LEN: usize = 12;
pub const API_KEY_SECRET_LEN: usize = 44;
/// `tg_` + prefix + `_` + secret.
pub const API_KEY_LEN: usize = 3 + API_KEY_PREFIX_LEN + 1 + API_KEY_SECRET_LEN;

/// A freshly generated key: the full key is shown to the caller once.
pub struct GeneratedApiKey {
    pub key: String,
    pub prefix: String,
}

/// Generates a new API key.
pub fn generate_api_key() -> GeneratedApiKey {
    let mut rng = rand::thread_rng();
    let mut p = [0u8; API_KEY_PREFIX_LEN / 2];
    rng.fill_bytes(&mut p);
    let prefix = hex::encode(p);
    let secret = Alphanumeric.sample_string(&mut rng, API_KEY_SECRET_LEN);
    GeneratedApiKey {
        key: format!("tg_{prefix}_{secret}"),
        prefix,
    }
}

/// A new key for `tenant_id` as a stored record (digest only, with the `pepper`
/// when set) and the full key, to be shown once.
pub fn mint_api_key(
    tenant_id: &str,
    name: String,
    role: String,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pepper: Option<&[u8]>,
) -> (crate::domain::ApiKeyRecord, String) {
    let generated = generate_api_key();
    let record = crate::domain::ApiKeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant_id.to_owned(),
        prefix: generated.prefix,
        digest: api_key_digest(&generated.key, pepper),
        name,
        role,
        created_at: chrono::Utc::now(),
        expires_at,
        revoked_at: None,
        extras: Default::default(),
    };
    (record, generated.key)
}

/// The parts of a well-formed key; `None` for anything else, without any lookup.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    // Fixed positions, checked byte by byte (this runs on every API-key request).
    const SEP: usize = 3 + API_KEY_PREFIX_LEN;
    let b = key.as_bytes();
    if b.len() != API_KEY_LEN || !b.starts_with(b"tg_") || b[SEP] != b'_' {
        return None;
    }
    // Folded without early exit, so the compiler checks many bytes at a time
    // (a well-formed key, the common case, is read to the end either way).
    let prefix_ok = b[3..SEP].iter().fold(true, |ok, c| {
        ok & (c.is_ascii_digit() | (b'a'..=b'f').contains(c))
    });
    let secret_ok = b[SEP + 1..]
        .iter()
        .fold(true, |ok, c| ok & c.is_ascii_alphanumeric());
    if !(prefix_ok && secret_ok) {
        return None;
    }
    // All ASCII by now, so both cuts are char boundaries.
    key.get(3..SEP).zip(key.get(SEP + 1..))
}

/// Hex digest of a full key: HMAC-SHA-256 keyed by the pepper, or SHA-256 without one.
pub fn api_key_digest(key: &str, pepper: Option<&[u8]>) -> String {
    hex::encode(api_key_digest_bytes(key, pepper))
}

/// [`api_key_digest`] as the 32 raw bytes (what the proxy compares per request).
pub fn api_key_digest_bytes(key: &str, pepper: Option<&[u8]>) -> [u8; 32] {
    ApiKeyDigester::new(pepper).digest(key)
}

/// API-key digests for one pepper, keyed once: HMAC's key schedule (two of its four
/// SHA-256 blocks for a key) is done here instead of per request. No pepper (or an
/// empty one): plain SHA-256. (HMAC accepts keys of any length; should keying ever
/// fail, the digests would be plain SHA-256 and match no peppered key.)
#[derive(Clone)]
pub struct ApiKeyDigester {
    keyed: Option<Hmac<Sha256>>,
}

impl ApiKeyDigester {
    pub fn new(pepper: Option<&[u8]>) -> Self {
        let keyed = pepper
            .filter(|p| !p.is_empty())
            .and_then(|p| Hmac::<Sha256>::new_from_slice(p).ok());
        ApiKeyDigester { keyed }
    }

    pub fn digest(&self, key: &str) -> [u8; 32] {
        match &self.keyed {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(key.as_bytes()).into(),
        }
    }
}

impl std::fmt::Debug for ApiKeyDigester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the pepper.
        f.debug_struct("ApiKeyDigester")
            .field("peppered", &self.keyed.is_some())
            .finish()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Constant-time equality of two byte strings (length may leak, content does not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Compares a presented bearer token with the expected one in constant time by
/// comparing their SHA-256 digests (so even the length does not leak).
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// A random URL-safe token of `len` alphanumeric characters.
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// argon2id hash in PHC string form. Slow by design: call it from `spawn_blocking`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::thread_rng());
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies a password against a PHC hash. Slow by design: call it from `spawn_blocking`.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(phc) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A PHC hash of a random password, for spending the same time on unknown users.
pub fn dummy_password_hash() -> &'static str {
    use std::sync::OnceLock;
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_token(24)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse() {
        for _ in 0..100 {
            let k = generate_api_key();
            let (prefix, secret) = parse_api_key(&k.key).unwrap();
            assert_eq!(prefix, k.prefix);
            assert_eq!(secret.len(), API_KEY_SECRET_LEN);
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let k = generate_api_key().key;
        assert!(parse_api_key("").is_none());
        assert!(parse_api_key("tg_abc_def").is_none());
        assert!(parse_api_key(&k.replace("tg_", "tx_")).is_none());
        assert!(parse_api_key(&format!("{k}x")).is_none());
        assert!(parse_api_key(&k[..k.len() - 1]).is_none());
        let mut bad = k.clone();
        bad.replace_range(API_KEY_LEN - 1.., "!");
        assert!(parse_api_key(&bad).is_none());
        let upper = format!("tg_{}{}", k[3..15].to_uppercase(), &k[15..]);
        assert!(parse_api_key(&upper).is_none() || k[3..15] == k[3..15].to_uppercase());
        // The separator moved, a non-ASCII character of the right byte length, a
        // separator inside the secret: all refused without a panic.
        let moved = format!("tg_{}_{}", &k[3..14], &k[14..API_KEY_LEN - 1]);
        assert_eq!(moved.len(), API_KEY_LEN);
        assert!(parse_api_key(&moved).is_none());
        let accented = format!("tg_{}_é{}", &k[3..15], &k[18..]);
        assert_eq!(accented.len(), API_KEY_LEN);
        assert!(parse_api_key(&accented).is_none());
        let mut underscore = k.clone();
        underscore.replace_range(30..31, "_");
        assert!(parse_api_key(&underscore).is_none());
        // One foreign byte anywhere, first or last of its part included, is refused.
        for i in 0..API_KEY_LEN {
            for c in ["!", "G", " ", "\x7f"] {
                let mut one = k.clone();
                one.replace_range(i..=i, c);
                let allowed = match i {
                    0..=2 => k[i..=i] == *c,
                    15 => c == "_",
                    3..=14 => false, // "G" is not hex, the rest not alphanumeric
                    _ => c == "G",
                };
                assert_eq!(parse_api_key(&one).is_some(), allowed, "{i} {c:?}");
            }
        }
    }

    #[test]
    fn keyed_digester_matches_the_per_call_digest() {
        let k = generate_api_key().key;
        for pepper in [
            None,
            Some(&b""[..]),
            Some(&b"pepper"[..]),
            Some(&[7u8; 100][..]),
        ] {
            let d = ApiKeyDigester::new(pepper);
            assert_eq!(d.digest(&k), api_key_digest_bytes(&k, pepper), "{pepper:?}");
            // Reusable: the keyed state is cloned, not consumed.
            assert_eq!(d.digest(&k), api_key_digest_bytes(&k, pepper));
        }
        assert_eq!(
            format!("{:?}", ApiKeyDigester::new(Some(b"pepper"))),
            "ApiKeyDigester { peppered: true }"
        );
    }

    #[test]
    fn digests_depend_on_pepper() {
        let a = api_key_digest("tg_x", None);
        let b = api_key_digest("tg_x", Some(b"pepper"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(b, api_key_digest("tg_x", Some(b"pepper")));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn passwords_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
