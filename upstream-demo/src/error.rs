//! The one error type of the demo API and the one place that turns it into a
//! response: `{"error": {"code", "message", "request_id", "field"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tenantgate_core::StoreError;

/// Error codes, as sent in `error.code`.
pub mod code {
    pub const MISSING_TENANT: &str = "missing_tenant";
    pub const NOT_FOUND: &str = "not_found";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const VALIDATION: &str = "validation_error";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INVALID_ASSERTION: &str = "invalid_assertion";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
    request_id: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    request_id: &'a str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            request_id: request_id.to_owned(),
        }
    }

    pub fn missing_tenant(request_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::MISSING_TENANT,
            "the x-tenant-id header is missing or invalid",
            request_id,
        )
    }

    /// A tenant id the store cannot keep rows for (on PostgreSQL it must name a
    /// schema: `[a-z0-9][a-z0-9-]{1,62}`, the admin API's tenant id rule).
    pub fn bad_tenant(request_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::MISSING_TENANT,
            "the x-tenant-id header is not a valid tenant id",
            request_id,
        )
    }

    pub fn invalid_assertion(request_id: &str, message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_ASSERTION,
            message,
            request_id,
        )
    }

    pub fn not_found(request_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            "not found",
            request_id,
        )
    }

    pub fn bad_request(request_id: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            message,
            request_id,
        )
    }

    pub fn validation(request_id: &str, field: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::VALIDATION,
            message,
            request_id,
        );
        e.field = Some(field);
        e
    }

    pub fn payload_too_large(request_id: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            "request body is too large",
            request_id,
        )
    }

    pub fn method_not_allowed(request_id: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            code::METHOD_NOT_ALLOWED,
            "method not allowed",
            request_id,
        )
    }

    pub fn unavailable(request_id: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::UNAVAILABLE,
            "the resource store is unavailable, retry later",
            request_id,
        )
    }

    /// A store failure: logged with its detail, sent without it.
    pub fn store(request_id: &str, err: StoreError) -> Self {
        tracing::warn!(request_id, error = %err, "demo upstream store error");
        Self::unavailable(request_id)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope {
            error: Body {
                code: self.code,
                message: &self.message,
                field: self.field,
                request_id: &self.request_id,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
