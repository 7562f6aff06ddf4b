//! Bearer-token authentication for the HTTP API.

use super::errors::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a request through if no token is configured, the route is
/// `/healthz`, or it carries `Authorization: Bearer <token>`.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = state.token.as_deref() else {
        return Ok(next.run(request).await);
    };
    if request.uri().path() == "/healthz" {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::unauthorized("the bearer token is wrong")),
        None => Err(ApiError::unauthorized(
            "this server requires `Authorization: Bearer <token>` (see the server's token setting)",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_exactly() {
        use super::constant_time_eq as eq;
        assert!(eq(b"secret", b"secret"));
        assert!(!eq(b"secret", b"secreT"));
        assert!(!eq(b"secret", b"secret1"));
        assert!(!eq(b"", b"x"));
    }
}
