//! JSON request bodies: unparseable → 400; parseable but the wrong shape (missing
//! field, wrong type, unknown enum value) → 422 naming the field. Unknown fields are
//! ignored.

use crate::error::ApiError;
use serde::de::DeserializeOwned;

/// Parses a required JSON object body into `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    from_value(value)
}

/// Like [`parse`], but an empty (or whitespace) body, or `null`, is `T::default()`.
pub fn parse_optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    parse(body)
}

/// JSON has one number type: `60.0` is the integer 60 (as JSON Schema's `integer`
/// says), so integral floats are read as integers before the typed fields see them.
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::{Number, Value};
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                let as_int = if f >= 0.0 && f < u64::MAX as f64 {
                    Some(Number::from(f as u64))
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    Some(Number::from(f as i64))
                } else {
                    None
                };
                if let Some(i) = as_int {
                    *n = i;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn from_value<T: DeserializeOwned>(mut value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    integral_floats_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = field_name(&path, &message);
        ApiError::validation(field, message)
    })
}

/// The dotted field path of a deserialization error. serde reports a missing field
/// at its parent, so the name is taken from the message then.
fn field_name(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (parent, missing) {
        ("", Some(name)) => name.to_owned(),
        (p, Some(name)) => format!("{p}.{name}"),
        (p, None) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[allow(dead_code)]
    struct Inner {
        email: String,
    }

    #[derive(Debug, Deserialize, Default)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        count: Option<u64>,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    fn field_of(body: &str) -> String {
        match parse::<Outer>(body.as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_bad_request() {
        assert!(matches!(parse::<Outer>(b"{"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse::<Outer>(b""), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            parse::<Outer>(b"[1]"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(field_of("{}"), "name");
        assert_eq!(field_of(r#"{"name": 1}"#), "name");
        assert_eq!(field_of(r#"{"name": "a", "count": -1}"#), "count");
        assert_eq!(field_of(r#"{"name": "a", "inner": {}}"#), "inner.email");
        assert_eq!(
            field_of(r#"{"name": "a", "inner": {"email": 3}}"#),
            "inner.email"
        );
        assert_eq!(
            field_of(r#"{"name": "a", "list": [{"email": "x"}, {}]}"#),
            "list[1].email"
        );
    }

    #[test]
    fn integral_floats_are_integers() {
        let o: Outer = parse(br#"{"name": "a", "count": 60.0}"#).unwrap();
        assert_eq!(o.count, Some(60));
        assert_eq!(field_of(r#"{"name": "a", "count": 1.5}"#), "count");
    }

    #[test]
    fn unknown_fields_are_ignored_and_empty_optional_bodies_default() {
        let o: Outer = parse(br#"{"name": "a", "extra": true}"#).unwrap();
        assert_eq!(o.name, "a");
        let d: Outer = parse_optional(b"  ").unwrap();
        assert_eq!(d.name, "");
    }
}
