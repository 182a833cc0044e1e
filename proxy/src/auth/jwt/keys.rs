//! An issuer's usable verification keys, built once per fetch from its JWKs.

use std::collections::HashMap;
use std::time::Instant;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::Algorithm;

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
    /// The key parsed once per algorithm it may verify, so a verification does not
    /// rebuild it (for RSA that is most of the cost: the Montgomery setup of `n`).
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

/// The verification parameters of a JWS algorithm (never HMAC).
fn params(alg: Algorithm) -> Option<&'static dyn signature::VerificationAlgorithm> {
    if let Some(rsa) = rsa_params(alg) {
        return Some(rsa);
    }
    Some(match alg {
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &signature::ED25519,
        _ => return None,
    })
}

fn rsa_params(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

const ALL_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn b64(s: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| "bad base64url")
}

impl VerifyKey {
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|own| own == alg)
    }

    /// Whether `signature` (base64url, as in the token) signs `message` under `alg`.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match URL_SAFE_NO_PAD.decode(signature) {
            Ok(sig) => key.verify_sig(message, &sig).is_ok(),
            Err(_) => false,
        }
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
        enum Material {
            Rsa(Vec<u8>, Vec<u8>),
            Bytes(Vec<u8>),
        }
        let (kind, material) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64(&p.n).map_err(|_| "bad RSA n/e")?;
                let e = b64(&p.e).map_err(|_| "bad RSA n/e")?;
                // Big-endian integers: leading zero octets carry nothing.
                let strip = |v: Vec<u8>| -> Vec<u8> {
                    let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                    v[first..].to_vec()
                };
                let (n, e) = (strip(n), strip(e));
                if n.is_empty() || e.is_empty() {
                    return Err("bad RSA n/e");
                }
                (KeyKind::Rsa, Material::Rsa(n, e))
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (kind, len) = match p.curve {
                    EllipticCurve::P256 => (KeyKind::EcP256, 32),
                    EllipticCurve::P384 => (KeyKind::EcP384, 48),
                    _ => return Err("unsupported curve"),
                };
                let x = b64(&p.x).map_err(|_| "bad EC coordinates")?;
                let y = b64(&p.y).map_err(|_| "bad EC coordinates")?;
                if x.len() != len || y.len() != len {
                    return Err("bad EC coordinates");
                }
                // SEC 1 uncompressed point.
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, Material::Bytes(point))
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err("unsupported OKP key");
                }
                let x = b64(&p.x).map_err(|_| "unsupported OKP key")?;
                if x.len() != 32 {
                    return Err("unsupported OKP key");
                }
                (KeyKind::Ed25519, Material::Bytes(x))
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
        let mut parsed = Vec::new();
        for a in ALL_ALGORITHMS {
            if !kind.accepts(a) || alg.is_some_and(|own| own != a) {
                continue;
            }
            let key = match &material {
                Material::Rsa(n, e) => {
                    let params = rsa_params(a).ok_or("unsupported key type")?;
                    RsaPublicKeyComponents { n, e }
                        .to_parsed_public_key(params)
                        .map_err(|_| "bad RSA key (2048 to 8192 bits)")?
                }
                Material::Bytes(b) => {
                    let params = params(a).ok_or("unsupported key type")?;
                    ParsedPublicKey::new(params, b).map_err(|_| match kind {
                        KeyKind::Ed25519 => "bad OKP key",
                        _ => "bad EC coordinates",
                    })?
                }
            };
            parsed.push((a, key));
        }
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            parsed,
        })
    }
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
