//! Which credential the request presents. `Authorization: Bearer <jwt>` or
//! `X-API-Key: <key>`; a bearer value starting with `tg_` is an API key. Two
//! different credentials, or a header sent twice, is refused rather than guessed at.

use crate::headers::X_API_KEY;
use crate::reject::Reject;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a http::HeaderValue>, Reject> {
    let mut it = headers.get_all(name).iter();
    let first = it.next();
    if it.next().is_some() {
        return Err(Reject::AmbiguousCredential);
    }
    Ok(first)
}

/// The request's one credential, `None` when it has none.
pub fn presented(headers: &HeaderMap) -> Result<Option<Presented<'_>>, Reject> {
    let auth = match single(headers, &AUTHORIZATION)? {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| Reject::InvalidToken)?.trim();
            match v.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let token = token.trim();
                    if token.is_empty() {
                        return Err(Reject::InvalidToken);
                    }
                    if token.starts_with("tg_") {
                        Some(Presented::ApiKey(token))
                    } else {
                        Some(Presented::Jwt(token))
                    }
                }
                _ if v.eq_ignore_ascii_case("bearer") => return Err(Reject::InvalidToken),
                // Another scheme (Basic, …) is not a credential we accept.
                _ => None,
            }
        }
    };
    let key = match single(headers, &X_API_KEY)? {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| Reject::InvalidApiKey)?.trim();
            if v.is_empty() {
                return Err(Reject::InvalidApiKey);
            }
            Some(Presented::ApiKey(v))
        }
    };
    match (auth, key) {
        (Some(a), Some(k)) if a == k => Ok(Some(a)),
        (Some(_), Some(_)) => Err(Reject::AmbiguousCredential),
        (a, k) => Ok(a.or(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn bearer_jwt_and_keys() {
        assert_eq!(presented(&h(&[])).unwrap(), None);
        assert_eq!(
            presented(&h(&[("authorization", "Bearer abc.def.ghi")])).unwrap(),
            Some(Presented::Jwt("abc.def.ghi"))
        );
        assert_eq!(
            presented(&h(&[("authorization", "bearer tg_x_y")])).unwrap(),
            Some(Presented::ApiKey("tg_x_y"))
        );
        assert_eq!(
            presented(&h(&[("X-API-Key", "tg_x_y")])).unwrap(),
            Some(Presented::ApiKey("tg_x_y"))
        );
        assert_eq!(
            presented(&h(&[("authorization", "Basic dTpw")])).unwrap(),
            None
        );
    }

    #[test]
    fn two_credentials_are_refused() {
        assert_eq!(
            presented(&h(&[
                ("authorization", "Bearer a.b.c"),
                ("x-api-key", "tg_x_y")
            ])),
            Err(Reject::AmbiguousCredential)
        );
        assert_eq!(
            presented(&h(&[("x-api-key", "tg_a_b"), ("x-api-key", "tg_c_d")])),
            Err(Reject::AmbiguousCredential)
        );
        assert_eq!(
            presented(&h(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer a.b.c")
            ])),
            Err(Reject::AmbiguousCredential)
        );
        // The same key in both places is one credential.
        assert_eq!(
            presented(&h(&[
                ("authorization", "Bearer tg_x_y"),
                ("x-api-key", "tg_x_y")
            ]))
            .unwrap(),
            Some(Presented::ApiKey("tg_x_y"))
        );
    }

    #[test]
    fn empty_values_are_invalid() {
        assert_eq!(
            presented(&h(&[("authorization", "Bearer ")])),
            Err(Reject::InvalidToken)
        );
        assert_eq!(
            presented(&h(&[("authorization", "Bearer")])),
            Err(Reject::InvalidToken)
        );
        assert_eq!(
            presented(&h(&[("x-api-key", " ")])),
            Err(Reject::InvalidApiKey)
        );
    }
}
