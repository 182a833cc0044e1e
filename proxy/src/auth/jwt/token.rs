//! Splitting a compact JWS and reading its protected header.
//!
//! Nothing here is trusted: the header only tells us which algorithm the token
//! *claims* and which key id it *names*; both are checked against the issuer's
//! configuration before any key is used.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use super::JwtError;

/// The three segments of a compact JWS, still encoded.
pub(crate) struct Segments<'t> {
    pub header: &'t str,
    pub payload: &'t str,
    pub signature: &'t str,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'t str,
}

/// Exactly three `.`-separated base64url segments; header and payload non-empty.
pub(crate) fn split(token: &str) -> Result<Segments<'_>, JwtError> {
    let mut parts = token.splitn(4, '.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed);
    }
    // The signature is decoded later by the crypto layer; reject what could never be
    // base64url (no padding) now so that it is reported as malformed, not as a bad
    // signature. An empty signature passes here and fails the algorithm or the
    // signature check.
    if !is_base64url(signature) {
        return Err(JwtError::Malformed);
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(Segments {
        header,
        payload,
        signature,
        signing_input,
    })
}

fn is_base64url(s: &str) -> bool {
    s.len() % 4 != 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// base64url without padding (padding and non-canonical trailing bits are rejected).
pub(crate) fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)
}

/// The members of the protected header we read. Everything else — notably `jwk`,
/// `jku`, `x5u` and `x5c` — is ignored on purpose: keys come only from the issuer's
/// configured source, never from the token.
#[derive(Debug, Deserialize)]
pub(crate) struct Header<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kid: Option<Cow<'a, str>>,
    /// `Some` whenever the member is present, even as `null`.
    #[serde(default, deserialize_with = "present")]
    pub crit: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl<'a> Header<'a> {
    /// Parses a decoded header, which must be a JSON object.
    pub(crate) fn parse(json: &'a [u8]) -> Result<Self, JwtError> {
        // A derived struct would also accept a JSON array; the header must be an object.
        if first_non_ws(json) != Some(b'{') {
            return Err(JwtError::Malformed);
        }
        let header: Header<'a> = serde_json::from_slice(json).map_err(|_| JwtError::Malformed)?;
        match &header.crit {
            None => {}
            Some(serde_json::Value::Array(items)) if items.is_empty() => {}
            // We implement no JWS extension, so any critical one must fail the token.
            Some(_) => return Err(JwtError::UnsupportedCritical),
        }
        Ok(header)
    }
}

pub(crate) fn first_non_ws(json: &[u8]) -> Option<u8> {
    json.iter().copied().find(|b| !b.is_ascii_whitespace())
}
