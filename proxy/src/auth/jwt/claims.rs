//! The payload: one pass over the JSON object that keeps only the claims we check,
//! then the checks themselves (a pure function of the claims, the issuer and "now").

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::JwtError;

/// `aud`: a string or an array of strings.
#[derive(Debug)]
pub(crate) enum Audience<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            Audience::One(a) => wanted.iter().any(|w| w == a),
            Audience::Many(list) => list.iter().any(|a| wanted.iter().any(|w| w == a)),
        }
    }
}

/// The claims we read. `extra` holds the configurable claims (tenant, role), by the
/// index of their name in the seed; `None` when absent or not a string.
#[derive(Debug, Default)]
pub(crate) struct RawClaims<'a> {
    pub iss: Option<Cow<'a, str>>,
    pub sub: Option<Cow<'a, str>>,
    pub aud: Option<Audience<'a>>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    /// `tv`: the user's token version in login tokens (see `auth::users`).
    pub tv: Option<i64>,
    /// `iat` when it is a number (only the lifetime check reads it).
    pub iat: Option<i64>,
    pub extra: Vec<Option<Cow<'a, str>>>,
}

/// Parses a decoded payload, which must be one JSON object. `extra_names` are the
/// configured tenant/role claim names of every issuer (or of one bound issuer).
pub(crate) fn parse<'a>(json: &'a [u8], extra_names: &[&str]) -> Result<RawClaims<'a>, JwtError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let claims = ClaimsSeed { extra_names }
        .deserialize(&mut de)
        .map_err(|_| JwtError::Malformed)?;
    de.end().map_err(|_| JwtError::Malformed)?;
    Ok(claims)
}

struct ClaimsSeed<'s> {
    extra_names: &'s [&'s str],
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = RawClaims<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), E> {
    if slot.is_some() {
        // Two values for one claim: refuse rather than pick one.
        return Err(E::custom(format_args!("duplicate claim {name}")));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = RawClaims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut c = RawClaims {
            extra: vec![None; self.extra_names.len()],
            ..RawClaims::default()
        };
        let mut extra_seen = vec![false; self.extra_names.len()];
        while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
            match key.as_ref() {
                "iss" => set_once(&mut c.iss, map.next_value::<CowStr<'de>>()?.0, "iss")?,
                "sub" => set_once(&mut c.sub, map.next_value::<CowStr<'de>>()?.0, "sub")?,
                "aud" => set_once(&mut c.aud, map.next_value::<Audience<'de>>()?, "aud")?,
                "exp" => set_once(&mut c.exp, map.next_value::<NumericDate>()?.0, "exp")?,
                "nbf" => set_once(&mut c.nbf, map.next_value::<NumericDate>()?.0, "nbf")?,
                "tv" => set_once(&mut c.tv, map.next_value::<NumericDate>()?.0, "tv")?,
                "iat" => {
                    let iat = map.next_value::<MaybeDate>()?.0;
                    if let Some(iat) = iat {
                        set_once(&mut c.iat, iat, "iat")?;
                    }
                }
                other => match self.extra_names.iter().position(|n| *n == other) {
                    Some(i) => {
                        if std::mem::replace(&mut extra_seen[i], true) {
                            return Err(de::Error::custom(format_args!("duplicate claim {other}")));
                        }
                        c.extra[i] = map.next_value::<MaybeStr<'de>>()?.0;
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
            }
        }
        // A configured claim name may coincide with a registered one (say, `sub`).
        for (i, name) in self.extra_names.iter().enumerate() {
            match *name {
                "iss" => c.extra[i].clone_from(&c.iss),
                "sub" => c.extra[i].clone_from(&c.sub),
                _ => {}
            }
        }
        Ok(c)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value; `Some` only for a string.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Audience<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
                while let Some(CowStr(a)) = seq.next_element::<CowStr<'de>>()? {
                    list.push(a);
                }
                Ok(Audience::Many(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// A NumericDate: seconds since the epoch, integer or not (fractions are dropped).
struct NumericDate(i64);

impl<'de> de::Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds since the epoch")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumericDate(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumericDate(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // `as` saturates for out-of-range floats.
                Ok(NumericDate(v.floor() as i64))
            }
        }
        d.deserialize_any(V)
    }
}

/// `iat`, leniently: a number is a date, anything else is ignored (it was never
/// checked, and only the lifetime check reads it now).
struct MaybeDate(Option<i64>);

impl<'de> de::Deserialize<'de> for MaybeDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(MaybeDate(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(MaybeDate(Some(i64::try_from(v).unwrap_or(i64::MAX))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(MaybeDate(Some(v.floor() as i64)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeDate(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MaybeDate(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeDate(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeDate(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeDate(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a verified token says, before it becomes an `Identity`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    pub user_id: String,
    pub tenant_id: String,
    pub role: String,
    pub exp: i64,
}

/// What the claims are checked against.
pub(crate) struct Expectations<'e> {
    pub issuer: &'e str,
    pub audiences: &'e [String],
    pub tenant_claim: &'static str,
    pub tenant_idx: usize,
    pub role_claim: &'static str,
    pub role_idx: usize,
    pub now: i64,
    pub leeway: i64,
    /// Refuse tokens whose `exp` lies further than this (seconds) from now, or
    /// from their `iat`.
    pub max_lifetime: Option<i64>,
    /// A bound issuer's tenant: the tenant claim may be absent (it is this
    /// tenant) but must not name another one.
    pub bound_tenant: Option<&'e str>,
    /// The role of a token without a role claim (bound issuers).
    pub default_role: Option<&'e str>,
}

/// The claim checks, in a fixed order. Runs after the signature check, so the
/// reason reported is about a token the issuer really signed.
pub(crate) fn check(c: &RawClaims<'_>, e: &Expectations<'_>) -> Result<Checked, JwtError> {
    let exp = c.exp.ok_or(JwtError::MissingClaim("exp"))?;
    if e.now >= exp.saturating_add(e.leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = c.nbf {
        if e.now.saturating_add(e.leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(max) = e.max_lifetime {
        // From now (with the leeway, for an issuer whose clock runs ahead) and,
        // when the token says when it was issued, from then.
        let from_now = exp.saturating_sub(e.now);
        let from_iat = c.iat.map(|iat| exp.saturating_sub(iat));
        if from_now > max.saturating_add(e.leeway) || from_iat.is_some_and(|l| l > max) {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    if c.iss.as_deref() != Some(e.issuer) {
        return Err(JwtError::WrongIssuer);
    }
    // An issuer with no audience configured accepts nothing (fail closed).
    match &c.aud {
        Some(aud) if aud.contains_any(e.audiences) => {}
        _ => return Err(JwtError::WrongAudience),
    }
    let user_id = required(c.sub.as_ref(), "sub")?;
    let tenant_claim = c.extra.get(e.tenant_idx).and_then(Option::as_ref);
    let tenant_id = match (e.bound_tenant, tenant_claim) {
        (Some(bound), None) => bound.to_owned(),
        (Some(bound), Some(claimed)) if claimed.as_ref() != bound => {
            return Err(JwtError::WrongTenant)
        }
        _ => required(tenant_claim, e.tenant_claim)?,
    };
    let role_claim = c.extra.get(e.role_idx).and_then(Option::as_ref);
    let role = match (role_claim, e.default_role) {
        (None, Some(default)) => default.to_owned(),
        _ => required(role_claim, e.role_claim)?,
    };
    Ok(Checked {
        user_id,
        tenant_id,
        role,
        exp,
    })
}

/// A non-empty string that can travel in an HTTP header (these values are injected
/// upstream as `x-user-id`, `x-tenant-id`, `x-tenant-role`).
fn required(v: Option<&Cow<'_, str>>, name: &'static str) -> Result<String, JwtError> {
    let v = v
        .filter(|s| !s.is_empty())
        .ok_or(JwtError::MissingClaim(name))?;
    if v.chars().any(char::is_control) {
        return Err(JwtError::Malformed);
    }
    Ok(v.as_ref().to_owned())
}
