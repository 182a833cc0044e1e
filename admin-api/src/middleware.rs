//! The one middleware around every route: request id, error rendering (ours and
//! axum's own rejections), `WWW-Authenticate` on 401, metrics, a tracing span, and
//! the audit entry of every successful admin change.

use crate::audit;
use crate::error::{info_for_status, render_body, ErrorInfo};
use crate::AdminState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;
/// How much of a rejection's plain-text body becomes the error message.
const MAX_REJECTION_MESSAGE: usize = 4 * 1024;

/// The client's request id when it is a sane token, else a new uuid.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub fn valid_request_id(v: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

pub async fn around(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let rid = request_id(req.headers());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let audited = audit::is_change(&method, &route).then(|| {
        let slot = audit::AuditSlot::default();
        req.extensions_mut().insert(slot.clone());
        (slot, req.uri().path().to_owned())
    });
    let span =
        tracing::info_span!("admin_request", request_id = %rid, method = %method, route = %route);
    let mut res = next.run(req).instrument(span.clone()).await;
    if let Some((slot, path)) = audited {
        let created = res.extensions_mut().remove::<audit::AuditTenant>();
        if res.status().is_success() {
            audit::record(
                &state,
                &slot,
                &method,
                &route,
                &path,
                created.map(|t| t.0),
                &rid,
            )
            .instrument(span.clone())
            .await;
        }
    }
    let mut res = if res.status().is_client_error() || res.status().is_server_error() {
        render_error(res, &rid).await
    } else {
        res
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = res.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    state.metrics().observe(&method, &route, status, elapsed);
    span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed * 1000.0, "request done"));
    res
}

/// Rewrites any error response into the contract's JSON shape.
async fn render_error(res: Response, rid: &str) -> Response {
    let (mut parts, body) = res.into_parts();
    let is_json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let info = match parts.extensions.remove::<ErrorInfo>() {
        Some(info) => info,
        // A deliberate JSON answer with an error status (e.g. /health when the
        // store is down) is already what it should be.
        None if is_json => return Response::from_parts(parts, body),
        None => {
            // An axum rejection or fallback: its plain-text body is the message.
            let is_text = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain"));
            let message = if is_text {
                axum::body::to_bytes(body, MAX_REJECTION_MESSAGE)
                    .await
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            } else {
                None
            };
            info_for_status(parts.status, message)
        }
    };
    // Never a bare 500: whatever failed inside is reported as retryable.
    if parts.status.is_server_error() {
        parts.status = StatusCode::SERVICE_UNAVAILABLE;
    }
    if parts.status == StatusCode::UNAUTHORIZED && !parts.headers.contains_key(WWW_AUTHENTICATE) {
        parts
            .headers
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    let rendered = render_body(&info, rid).into_response();
    let (rparts, rbody) = rendered.into_parts();
    for (k, v) in rparts.headers.iter() {
        parts.headers.insert(k.clone(), v.clone());
    }
    Response::from_parts(parts, rbody)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abc-123_X.y"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(valid_request_id(&"a".repeat(128)));
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, "bad id!".parse().unwrap());
        let generated = request_id(&h);
        assert!(uuid::Uuid::parse_str(&generated).is_ok());
        h.insert(REQUEST_ID_HEADER, "good-id".parse().unwrap());
        assert_eq!(request_id(&h), "good-id");
    }
}
