//! The one error type every handler returns; the JSON error shape lives here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to the client: `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra structured detail.
    pub details: serde_json::Value,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: serde_json::Value::Null,
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 503 with Retry-After.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
    /// Adds details.
    pub fn with_details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "Request failed.");
        }
        let body =
            json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vigil\""),
            );
        }
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<vigil_tsdb::Error> for ApiError {
    fn from(e: vigil_tsdb::Error) -> Self {
        match e.kind() {
            vigil_tsdb::ErrorKind::InvalidInput => {
                ApiError::bad_request("invalid_input", e.to_string())
            }
            vigil_tsdb::ErrorKind::Corrupt => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_data",
                e.to_string(),
            ),
            vigil_tsdb::ErrorKind::Unavailable => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<vigil_ingest::DecodeError> for ApiError {
    fn from(e: vigil_ingest::DecodeError) -> Self {
        match e {
            vigil_ingest::DecodeError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            vigil_ingest::DecodeError::Unsupported(_) => {
                ApiError::bad_request("unsupported", e.to_string())
            }
            _ => ApiError::bad_request("bad_payload", e.to_string()),
        }
    }
}
