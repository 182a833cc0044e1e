//! The one error type of the admin API and the one place that renders errors.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` only records *what* went wrong
//! (an [`ErrorInfo`] response extension). The request middleware renders every
//! error body — ours and axum's own rejections alike — so each carries the
//! request id and has the same shape:
//! `{"error": {"code", "message", "request_id", "field"?}}`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tenantgate_core::StoreError;

/// Error codes of the contract.
pub mod codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const TENANT_SUSPENDED: &str = "tenant_suspended";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const CONFLICT: &str = "conflict";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const VALIDATION_ERROR: &str = "validation_error";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const UNAVAILABLE: &str = "unavailable";
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("tenant is suspended")]
    TenantSuspended,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// The store failed; the detail was logged where it happened and is never sent.
    #[error("service temporarily unavailable")]
    Unavailable,
    /// Too many attempts: retry after this many seconds (`Retry-After`).
    #[error("too many attempts; retry later")]
    RateLimited { retry_after_seconds: u64 },
    /// Busy with other work (every password-hashing slot taken); `Retry-After: 1`.
    #[error("server busy; retry shortly")]
    Busy,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::TenantSuspended => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => codes::BAD_REQUEST,
            ApiError::Unauthorized => codes::UNAUTHORIZED,
            ApiError::Forbidden(_) => codes::FORBIDDEN,
            ApiError::TenantSuspended => codes::TENANT_SUSPENDED,
            ApiError::NotFound(_) => codes::NOT_FOUND,
            ApiError::Conflict(_) => codes::CONFLICT,
            ApiError::Validation { .. } => codes::VALIDATION_ERROR,
            ApiError::Unavailable | ApiError::Busy => codes::UNAVAILABLE,
            ApiError::RateLimited { .. } => codes::RATE_LIMITED,
        }
    }

    /// `Retry-After` seconds, for the errors that carry one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_seconds,
            } => Some((*retry_after_seconds).max(1)),
            ApiError::Busy => Some(1),
            _ => None,
        }
    }

    /// Logs a store failure (never sent to the client) and returns `Unavailable`.
    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Conflict(field) => ApiError::Conflict(format!("{field} already exists")),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "store unavailable");
                ApiError::Unavailable
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(error = %detail, "corrupt data in the store");
                ApiError::Unavailable
            }
        }
    }

    /// An unexpected internal failure (a panicked blocking task, a crypto error):
    /// logged, and reported like a store failure so the client may retry.
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{what}");
        ApiError::Unavailable
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store(e)
    }
}

/// What the middleware needs to render an error body.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let field = match &self {
            ApiError::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let message = match &self {
            ApiError::Validation { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let info = ErrorInfo {
            code: self.code(),
            message,
            field,
        };
        // The body is rendered by the middleware, which knows the request id; this
        // fallback body only shows if the router is used without it.
        let retry_after = self.retry_after();
        let mut res = (status, render_body(&info, "")).into_response();
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        res.extensions_mut().insert(info);
        res
    }
}

/// `{"error": {...}}` as JSON bytes.
pub fn render_body(info: &ErrorInfo, request_id: &str) -> axum::Json<serde_json::Value> {
    let mut err = serde_json::json!({
        "code": info.code,
        "message": info.message,
        "request_id": request_id,
    });
    if let (Some(field), Some(obj)) = (&info.field, err.as_object_mut()) {
        obj.insert("field".into(), serde_json::Value::String(field.clone()));
    }
    axum::Json(serde_json::json!({ "error": err }))
}

/// Maps a status produced outside our handlers (axum rejections, 405) to a code.
pub fn info_for_status(status: StatusCode, message: Option<String>) -> ErrorInfo {
    let (code, default) = match status {
        StatusCode::BAD_REQUEST => (codes::BAD_REQUEST, "bad request"),
        StatusCode::UNAUTHORIZED => (codes::UNAUTHORIZED, "missing or invalid credentials"),
        StatusCode::FORBIDDEN => (codes::FORBIDDEN, "forbidden"),
        StatusCode::NOT_FOUND => (codes::NOT_FOUND, "not found"),
        StatusCode::METHOD_NOT_ALLOWED => (codes::METHOD_NOT_ALLOWED, "method not allowed"),
        StatusCode::CONFLICT => (codes::CONFLICT, "conflict"),
        StatusCode::PAYLOAD_TOO_LARGE => (codes::PAYLOAD_TOO_LARGE, "request body too large"),
        StatusCode::UNPROCESSABLE_ENTITY => (codes::VALIDATION_ERROR, "validation error"),
        StatusCode::TOO_MANY_REQUESTS => (codes::RATE_LIMITED, "too many requests"),
        s if s.is_server_error() => (codes::UNAVAILABLE, "service temporarily unavailable"),
        _ => (codes::BAD_REQUEST, "bad request"),
    };
    // Server-side messages may carry internal detail: never forward them.
    let message = match message {
        Some(m) if !m.trim().is_empty() && !status.is_server_error() => m,
        _ => default.to_owned(),
    };
    ErrorInfo {
        code,
        message,
        field: None,
    }
}
