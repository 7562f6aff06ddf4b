//! The API's one error shape, `{"error": {"code": "...", "message": "..."}}`,
//! and how each [`Error`] and each request rejection maps to a status: 4xx for
//! the client's mistakes (malformed JSON, unknown fields, invalid ids, missing
//! token, oversized bodies), 5xx only for the server's or an agent's failures.

use crate::error::Error;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

/// Every `code` an error body can carry; docs/openapi.json lists exactly
/// these (a test compares them), so a client can match on them.
pub const ERROR_CODES: &[&str] = &[
    "invalid_input",
    "invalid_json",
    "invalid_query",
    "unsupported_media_type",
    "body_too_large",
    "unauthorized",
    "insufficient_scope",
    "csrf_refused",
    "host_not_allowed",
    "not_found",
    "method_not_allowed",
    "unknown_agent",
    "unknown_token",
    "policy_denied",
    "policy_invalid",
    "conflict",
    "no_agent_available",
    "tool_failed",
    "agent_failed",
    "agent_timeout",
    "request_timeout",
    "overloaded",
    "storage",
    "internal",
    "rate_limited",
    "cluster_unavailable",
];

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    retry_after: Option<Duration>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 with `Retry-After`: the server is at a configured capacity.
    pub(crate) fn overloaded(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// The status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What it says.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::PolicyDenied { .. } => (StatusCode::FORBIDDEN, "policy_denied"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Error::PolicyLoad { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"),
            Error::NoAgentAvailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_agent_available")
            }
            Error::ToolFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "tool_failed"),
            Error::AgentFailed { .. } => (StatusCode::BAD_GATEWAY, "agent_failed"),
            Error::AgentTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
            Error::UnknownAgent(_) => (StatusCode::NOT_FOUND, "unknown_agent"),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
            Error::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match &e {
            // The library's message points at its Rust API; say it in HTTP.
            Error::UnknownAgent(id) => format!(
                "unknown agent {id}: register it with PUT /v1/agents/{id}, or see GET /v1/agents"
            ),
            _ => e.to_string(),
        };
        let retry_after = match &e {
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        ApiError {
            retry_after,
            ..ApiError::new(status, code, message)
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Gives the error shape to the bare error responses that layers and the
/// method router produce (a request timeout, a method not allowed).
pub(crate) async fn give_bare_errors_a_body(response: Response) -> Response {
    use axum::body::HttpBody;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.body().size_hint().exact() != Some(0)
    {
        return response;
    }
    let (code, message) = match status {
        StatusCode::GATEWAY_TIMEOUT => (
            "request_timeout",
            "the request took longer than the server's request timeout (limits.request_timeout_ms); an invoke still finishes and is recorded",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method; see docs/openapi.json",
        ),
        _ => return response,
    };
    let mut shaped = ApiError::new(status, code, message).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        shaped.headers_mut().insert(header::ALLOW, allow.clone());
    }
    shaped
}
