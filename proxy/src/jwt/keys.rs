//! An issuer's usable verification keys, built once per fetch from its JWKs.

use std::collections::HashMap;
use std::time::Instant;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The key types we verify with. HMAC (`oct`) keys are never usable: a public
/// key source has no business publishing shared secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be verified with a key of this type.
    /// This, not the token's header, decides the algorithm family.
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::EcP384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The `alg` the JWK declares for itself, if any: the token's must then equal it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|own| own == alg)
    }

    /// A JWK as a verification key, or why it cannot be one.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => return Err("use is not sig"),
        }
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.contains(&KeyOperations::Verify) {
                return Err("key_ops lacks verify");
            }
        }
        let (kind, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let key =
                    DecodingKey::from_rsa_components(&p.n, &p.e).map_err(|_| "bad RSA n/e")?;
                (KeyKind::Rsa, key)
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (kind, len) = match p.curve {
                    EllipticCurve::P256 => (KeyKind::EcP256, 32),
                    EllipticCurve::P384 => (KeyKind::EcP384, 48),
                    _ => return Err("unsupported curve"),
                };
                if b64_len(&p.x) != Some(len) || b64_len(&p.y) != Some(len) {
                    return Err("bad EC coordinates");
                }
                let key = DecodingKey::from_ec_components(&p.x, &p.y)
                    .map_err(|_| "bad EC coordinates")?;
                (kind, key)
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 || b64_len(&p.x) != Some(32) {
                    return Err("unsupported OKP key");
                }
                let key = DecodingKey::from_ed_components(&p.x).map_err(|_| "bad OKP key")?;
                (KeyKind::Ed25519, key)
            }
            AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never used"),
            _ => return Err("unsupported key type"),
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(declared) => {
                let alg =
                    signing_alg(declared).ok_or("alg is not a signature algorithm we support")?;
                if !kind.accepts(alg) {
                    return Err("alg does not match the key type");
                }
                Some(alg)
            }
        };
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            key,
        })
    }
}

fn b64_len(s: &str) -> Option<usize> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD.decode(s).ok().map(|v| v.len())
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One loaded key set.
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    by_kid: HashMap<String, Vec<usize>>,
    pub fetched_at: Instant,
}

impl KeySet {
    /// Keeps the usable keys; `skipped` gets a reason for each one left out.
    pub(crate) fn build(jwks: &[Jwk], mut skipped: impl FnMut(Option<&str>, &'static str)) -> Self {
        let mut keys = Vec::with_capacity(jwks.len());
        let mut by_kid: HashMap<String, Vec<usize>> = HashMap::new();
        for jwk in jwks {
            match VerifyKey::from_jwk(jwk) {
                Ok(k) => {
                    if let Some(kid) = &k.kid {
                        by_kid.entry(kid.clone()).or_default().push(keys.len());
                    }
                    keys.push(k);
                }
                Err(why) => skipped(jwk.common.key_id.as_deref(), why),
            }
        }
        KeySet {
            keys,
            by_kid,
            fetched_at: Instant::now(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys a token's `kid` names (usually one), or `None` when it names none.
    /// A token without a kid — or whose kid is unknown while the set is a single
    /// kid-less key (a PEM file) — may use the set's only key.
    pub(crate) fn candidates(&self, kid: Option<&str>) -> Option<impl Iterator<Item = &VerifyKey>> {
        let idx: &[usize] = match kid.and_then(|k| self.by_kid.get(k)) {
            Some(idx) => idx,
            None => match self.keys.as_slice() {
                [only] if kid.is_none() || only.kid.is_none() => &[0],
                _ => return None,
            },
        };
        Some(idx.iter().filter_map(|&i| self.keys.get(i)))
    }
}
