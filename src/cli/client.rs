//! One admin API request: the bearer token, JSON in and out, and the contract's
//! error body (`{"error": {"code", "message"}}`) turned into an exit-1 message.

use super::resources::Method;
use crate::Fatal;
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

/// `path` with `{tenant}` and `{id}` replaced; each is one path segment.
pub fn fill(path: &str, tenant: Option<&str>, id: Option<&str>) -> Result<String, Fatal> {
    let mut out = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let value = match seg {
            "{tenant}" => tenant.ok_or_else(|| Fatal::usage("--tenant is required"))?,
            "{id}" => id.ok_or_else(|| Fatal::usage("name the object"))?,
            s => s,
        };
        if value.is_empty() {
            return Err(Fatal::usage("an id must not be empty"));
        }
        out.push('/');
        out.push_str(&encode_segment(value));
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client, Fatal> {
        let base = reqwest::Url::parse(base.trim_end_matches('/'))
            .map_err(|e| Fatal::usage(format!("--admin-url {base:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Fatal::usage(format!(
                "--admin-url {base}: must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| Fatal::runtime(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.to_owned(),
        })
    }

    /// Sends one request; a 2xx answer's JSON (`null` for an empty body), else the
    /// API's error message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, Fatal> {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let method = match method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Fatal::runtime(format!(
                "cannot reach the admin API at {}: {}",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Fatal::runtime(format!("reading the admin API's answer: {e}")))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return match parsed {
                Some(v) => Ok(v),
                None if bytes.is_empty() => Ok(Value::Null),
                None => Ok(json!(String::from_utf8_lossy(&bytes))),
            };
        }
        Err(Fatal::runtime(api_error(
            status,
            &method,
            path,
            parsed.as_ref(),
            &bytes,
        )))
    }
}

/// `code: field: message (HTTP status)`, from the contract's error body when there is one.
fn api_error(
    status: reqwest::StatusCode,
    method: &reqwest::Method,
    path: &str,
    body: Option<&Value>,
    raw: &[u8],
) -> String {
    let err = body.and_then(|b| b.get("error"));
    let field = err.and_then(|e| e.get("field")).and_then(Value::as_str);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| match field {
            Some(f) if !m.starts_with(f) => format!("{f}: {m}"),
            _ => m.to_owned(),
        });
    let code = err.and_then(|e| e.get("code")).and_then(Value::as_str);
    match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {m} (HTTP {})", status.as_u16()),
        (None, Some(m)) => format!("{m} (HTTP {})", status.as_u16()),
        _ => {
            let text = String::from_utf8_lossy(raw);
            let text = text.trim();
            if text.is_empty() {
                format!("{method} {path}: HTTP {status}")
            } else {
                format!("{method} {path}: HTTP {status}: {text}")
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_encodes_path_segments() {
        assert_eq!(
            fill(
                "/v1/tenants/{tenant}/users/{id}",
                Some("acme"),
                Some("a b/c")
            )
            .ok(),
            Some("/v1/tenants/acme/users/a%20b%2Fc".to_owned())
        );
        assert!(fill("/v1/tenants/{tenant}", None, None).is_err());
    }

    #[test]
    fn error_message_comes_from_the_contract_body() {
        let body = json!({"error": {"code": "not_found", "message": "tenant not found"}});
        assert_eq!(
            api_error(
                reqwest::StatusCode::NOT_FOUND,
                &reqwest::Method::GET,
                "/v1/tenants/x",
                Some(&body),
                b""
            ),
            "not_found: tenant not found (HTTP 404)"
        );
        let body = json!({"error": {"code": "validation_error", "field": "tier",
            "message": "unknown variant"}});
        assert_eq!(
            api_error(
                reqwest::StatusCode::UNPROCESSABLE_ENTITY,
                &reqwest::Method::PATCH,
                "/v1/tenants/x",
                Some(&body),
                b""
            ),
            "validation_error: tier: unknown variant (HTTP 422)"
        );
    }
}
