//! `POST /explain` on the proxy's admin listener: the decision the proxy would make
//! for a described request, stage by stage, from [`Pipeline::run`] itself in
//! [`Mode::Peek`] (no token spent, no quota counted, nothing metered or signed,
//! no refusal counted). The admin API's `POST /v1/explain` calls it after checking
//! the caller; secrets in the described headers are never echoed (an API key is
//! shown by its public prefix).

use crate::admit::{Admission, Described, Mode, Pipeline, Trace};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most headers a described request may carry.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Deserialize)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The client address the allow-lists see (default: none known).
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainStep {
    pub stage: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: String,
    /// What the proxy would answer: 200 stands for "proxied to the upstream".
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub steps: Vec<ExplainStep>,
    /// The tenant the credential resolved to (the admin API scopes tenant admins
    /// by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// A described request that cannot be a request: the field and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The method, target and headers of `req`, checked as a client's would be.
pub fn parse(req: &ExplainRequest) -> Result<(Method, Uri, HeaderMap), Invalid> {
    let method = Method::from_bytes(req.method.trim().as_bytes())
        .ok()
        .filter(|m| !m.as_str().is_empty() && m.as_str().len() <= 32)
        .ok_or_else(|| invalid("method", "must be an HTTP method, e.g. GET"))?;
    if !req.path.starts_with('/') {
        return Err(invalid("path", "must start with /"));
    }
    let uri: Uri = req
        .path
        .parse()
        .ok()
        .filter(|u: &Uri| u.scheme().is_none() && u.authority().is_none())
        .ok_or_else(|| invalid("path", "must be a request target: /path?query"))?;
    if req.headers.len() > MAX_HEADERS {
        return Err(invalid("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 1);
    for (name, value) in &req.headers {
        let field = || format!("headers.{name}");
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid(field(), "is not a valid header name"))?;
        let v = HeaderValue::from_str(value.trim())
            .map_err(|_| invalid(field(), "is not a valid header value"))?;
        headers.append(n, v);
    }
    if let Some(host) = &req.host {
        let v = HeaderValue::from_str(host.trim())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid("host", "must be a host name (optionally with :port)"))?;
        headers.insert(http::header::HOST, v);
    }
    Ok((method, uri, headers))
}

/// The proxy's decision for `req`, without side effects.
pub async fn explain(pipeline: &Pipeline, req: &ExplainRequest) -> Result<Explanation, Invalid> {
    let (method, uri, headers) = parse(req)?;
    let described = Described {
        method: &method,
        uri: &uri,
        headers: &headers,
        peer: req.client_ip,
        proto: "http",
        client_cert: None,
        request_id: "explain",
        start: Instant::now(),
        start_unix_ms: tenantgate_core::time::now_ms(),
    };
    let mut adm = Admission::default();
    let mut trace = Trace::default();
    let result = pipeline
        .run(&described, &mut adm, Mode::Peek, &mut trace)
        .await;
    let tenant_id = adm
        .who
        .as_ref()
        .map(|w| w.principal().tenant_id().to_owned());
    let steps = trace
        .finish(&result)
        .into_iter()
        .map(|s| ExplainStep {
            stage: s.stage.as_str().to_owned(),
            outcome: s.outcome.as_str().to_owned(),
            detail: s.detail,
        })
        .collect();
    Ok(match result {
        Ok(()) => Explanation {
            decision: "allow".into(),
            status: 200,
            code: None,
            steps,
            tenant_id,
        },
        Err(reject) => Explanation {
            decision: "deny".into(),
            status: reject.status(),
            code: Some(reject.code().to_owned()),
            steps,
            tenant_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> ExplainRequest {
        ExplainRequest {
            method: method.into(),
            path: path.into(),
            host: None,
            headers: BTreeMap::new(),
            client_ip: None,
        }
    }

    #[test]
    fn parses_a_described_request() {
        let mut r = req("GET", "/api/v1/resources?x=1");
        r.headers.insert("X-API-Key".into(), "tg_abc_secret".into());
        r.host = Some("acme.example".into());
        let (m, u, h) = parse(&r).unwrap();
        assert_eq!(m, Method::GET);
        assert_eq!(u.path(), "/api/v1/resources");
        assert_eq!(h.get("x-api-key").unwrap(), "tg_abc_secret");
        assert_eq!(h.get("host").unwrap(), "acme.example");
    }

    #[test]
    fn refuses_what_no_client_could_send() {
        assert_eq!(parse(&req("G ET", "/")).unwrap_err().field, "method");
        assert_eq!(parse(&req("GET", "api")).unwrap_err().field, "path");
        let mut r = req("GET", "/");
        r.headers.insert("bad name".into(), "v".into());
        assert_eq!(parse(&r).unwrap_err().field, "headers.bad name");
        let mut r = req("GET", "/");
        r.host = Some("bad\nhost".into());
        assert_eq!(parse(&r).unwrap_err().field, "host");
    }

    #[test]
    fn keys_are_shown_by_their_prefix_only() {
        use crate::admit::redacted_key;
        assert_eq!(redacted_key("tg_ab12_s3cr3t"), "tg_ab12_…");
        assert!(!redacted_key("s3cr3t-value").contains("s3cr3t"));
    }
}
