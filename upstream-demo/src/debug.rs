//! Debugging and load-test endpoints: `whoami` (what identity arrived), `echo`
//! (cheap request/response) and `bytes/{n}` (a response of a chosen size).

use crate::error::ApiError;
use crate::identity::{self, TenantCtx};
use crate::DemoState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// Largest response of `GET /api/v1/bytes/{n}`.
pub const MAX_BYTES: usize = 10 * 1024 * 1024;
/// Largest body `POST /api/v1/echo` reads.
pub const MAX_ECHO_BODY: usize = 16 * 1024 * 1024;

pub fn routes() -> Router<DemoState> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/echo",
            get(echo)
                .post(echo)
                .layer(DefaultBodyLimit::max(MAX_ECHO_BODY)),
        )
        .route("/api/v1/bytes/{n}", get(bytes))
}

/// Every value of a header joined with ", " (so a duplicated header shows).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The identity headers as received; never rejects, absent headers are null.
async fn whoami(method: Method, uri: Uri, headers: HeaderMap) -> Json<Value> {
    let mut all = Map::new();
    for name in headers.keys() {
        let name = name.as_str();
        if name.starts_with("x-") {
            if let Some(v) = joined(&headers, name) {
                all.insert(name.to_owned(), Value::String(v));
            }
        }
    }
    Json(json!({
        "tenant_id": joined(&headers, identity::TENANT_ID),
        "user_id": joined(&headers, identity::USER_ID),
        "role": joined(&headers, identity::TENANT_ROLE),
        "auth_method": joined(&headers, identity::AUTH_METHOD),
        "api_key_id": joined(&headers, identity::API_KEY_ID),
        "request_id": joined(&headers, identity::REQUEST_ID),
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": all,
    }))
}

async fn echo(
    ctx: TenantCtx,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(&ctx.request_id)
        } else {
            ApiError::bad_request(&ctx.request_id, "cannot read the request body")
        }
    })?;
    Ok(Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "body_len": body.len(),
        "tenant_id": ctx.tenant_id,
        "request_id": ctx.request_id,
    })))
}

/// `n` bytes of `x`, sliced from one shared buffer so large responses stay cheap.
async fn bytes(
    ctx: TenantCtx,
    n: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let invalid = || {
        ApiError::validation(
            &ctx.request_id,
            "n",
            format!("n must be a whole number of bytes from 0 to {MAX_BYTES}"),
        )
    };
    let n: usize = match n {
        Ok(Path(raw)) => raw.parse().map_err(|_| invalid())?,
        Err(_) => return Err(invalid()),
    };
    if n > MAX_BYTES {
        return Err(invalid());
    }
    static BUF: OnceLock<Bytes> = OnceLock::new();
    let body = BUF
        .get_or_init(|| Bytes::from(vec![b'x'; MAX_BYTES]))
        .slice(..n);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
