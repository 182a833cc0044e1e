//! One module per resource; each owns its request and response types.

pub mod api_keys;
pub mod assertion_keys;
pub mod audit;
pub mod auth_login;
pub mod client_certs;
pub mod domains;
pub mod explain;
pub mod issuers;
pub mod meta;
pub mod plans;
pub mod policies;
pub mod quota;
pub mod rate_limit;
pub mod scaling;
pub mod tenants;
pub mod usage;
pub mod users;

use crate::error::ApiError;
use crate::AdminState;
use chrono::{DateTime, Utc};
use tenantgate_core::domain::{valid_email, valid_name_token};

/// A query parameter's value; an empty value is a value (and is refused by the
/// parameter's check), not an absent parameter.
pub fn query_param<'a>(
    params: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    params.get(name).map(|s| s.trim())
}

/// A `limit` query parameter: `default` when absent, else an integer from 1 to
/// `max` (422 naming `limit` otherwise).
pub fn query_limit(
    params: &std::collections::HashMap<String, String>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match query_param(params, "limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::validation("limit", format!("must be an integer from 1 to {max}"))
            }),
    }
}

/// An RFC 3339 query parameter as Unix milliseconds (422 naming it otherwise).
pub fn query_time_ms(
    params: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<i64>, ApiError> {
    query_param(params, name)
        .map(|raw| {
            tenantgate_core::time::parse_rfc3339(raw)
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| ApiError::validation(name, "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`).
pub fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Longest tenant, key or similar display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// RFC 3339, second precision, `Z`.
pub fn ts(t: DateTime<Utc>) -> String {
    tenantgate_core::time::rfc3339(t)
}

pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

/// A display name: trimmed, non-empty, at most [`MAX_NAME_CHARS`].
pub fn display_name(field: &str, raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    // The limit is on what was sent (as the document states it), blanks included.
    if raw.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// The stored form of an email (trimmed, lowercase), if it is one.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    valid_email(&email).then_some(email)
}

pub fn email(field: &str, raw: &str) -> Result<String, ApiError> {
    normalize_email(raw).ok_or_else(|| ApiError::validation(field, "must be a valid email address"))
}

pub fn password(field: &str, pw: &str) -> Result<(), ApiError> {
    let n = pw.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(ApiError::validation(
            field,
            format!("must be between {MIN_PASSWORD_CHARS} and {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

/// argon2id, off the async workers, in one of the bounded hashing slots (503
/// `unavailable` with `Retry-After` when none frees up in time).
pub async fn hash_password(state: &AdminState, pw: String) -> Result<String, ApiError> {
    let slot = state
        .login_guard()
        .hashing_slot()
        .await
        .map_err(|_| ApiError::Busy)?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        tenantgate_core::secrets::hash_password(&pw)
    })
    .await
    .map_err(|e| ApiError::internal("password hashing task failed", e))?
    .map_err(|e| ApiError::internal("password hashing failed", e))
}

/// A role that exists in the tenant (it has a policy).
pub async fn existing_role(
    state: &AdminState,
    tenant_id: &str,
    field: &str,
    role: &str,
) -> Result<(), ApiError> {
    if !valid_name_token(role) {
        return Err(ApiError::validation(
            field,
            "must be a role name ([a-z0-9_-], at most 64 characters)",
        ));
    }
    if state.store().get_policy(tenant_id, role).await?.is_none() {
        // Deleted meanwhile: the tenant is gone, not the role.
        if state.store().get_tenant(tenant_id).await?.is_none() {
            return Err(ApiError::NotFound("tenant not found"));
        }
        return Err(ApiError::validation(
            field,
            format!("the tenant has no policy for role {role:?}"),
        ));
    }
    Ok(())
}

/// Helpers of the query-parsing unit tests.
#[cfg(test)]
pub(crate) mod test_query {
    use crate::error::ApiError;
    use std::collections::HashMap;

    /// A parsed query string from `(name, value)` pairs.
    pub fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The field a validation error names (panics on anything else).
    pub fn field<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
        match r {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }
}
