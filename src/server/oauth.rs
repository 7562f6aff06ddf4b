//! `/mcp` as an OAuth 2.1 protected resource, as the MCP authorization
//! specification asks: the Protected Resource Metadata of RFC 9728 (which
//! authorization servers issue its tokens, which scopes it knows), and the
//! `WWW-Authenticate` challenges of RFC 6750 that point a client there on a
//! 401 and name the missing scope on a 403.

use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// Where the metadata of the `/mcp` resource is served (the RFC 9728 form
/// with the resource's path appended), and the bare form.
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What the metadata says about this server.
#[derive(Clone, Debug, Default)]
pub struct ProtectedResource {
    /// The canonical URI of `/mcp` (RFC 8707), which a JWT's audience names;
    /// `None`: `{scheme}://{Host}/mcp` of each request.
    pub resource: Option<Arc<str>>,
    /// The issuers whose tokens are accepted (the `[auth.jwt]` issuer).
    pub authorization_servers: Arc<[String]>,
}

impl ProtectedResource {
    /// The canonical URI of `/mcp` as a request to this server sees it.
    fn resource_uri(&self, request: &Request, https: bool) -> String {
        match &self.resource {
            Some(uri) => uri.to_string(),
            None => format!("{}/mcp", origin(request, https)),
        }
    }

    /// The URL of this resource's metadata.
    fn metadata_url(&self, request: &Request, https: bool) -> String {
        let resource = self.resource_uri(request, https);
        match reqwest::Url::parse(&resource) {
            Ok(url) => format!(
                "{}{METADATA_PATH}{}",
                url.origin().ascii_serialization(),
                url.path().trim_end_matches('/')
            ),
            Err(_) => format!("{}{METADATA_PATH}/mcp", origin(request, https)),
        }
    }
}

fn origin(request: &Request, https: bool) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the metadata, to any
/// caller (it is how a client without a token learns where to get one).
pub(crate) async fn metadata(State(state): State<AppState>, request: Request) -> Response {
    let resource = &state.protected_resource;
    Json(json!({
        "resource": resource.resource_uri(&request, state.https),
        "authorization_servers": resource.authorization_servers,
        "scopes_supported": ["invoke", "audit", "admin"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Switchboard MCP gateway",
    }))
    .into_response()
}

/// Whether `path` is the metadata's (served without a credential).
pub(crate) fn is_metadata_path(path: &str) -> bool {
    path == METADATA_PATH || path.strip_prefix(METADATA_PATH) == Some("/mcp")
}

/// Adds the `WWW-Authenticate` challenge to a 401 or 403 answered on `/mcp`:
/// where the metadata is and, on a 403, the scope that was missing.
pub(crate) fn challenge(
    state: &AppState,
    request: &Request,
    insufficient_scope: bool,
    mut response: Response,
) -> Response {
    let url = state.protected_resource.metadata_url(request, state.https);
    let presented = request.headers().contains_key(header::AUTHORIZATION);
    let value = if insufficient_scope {
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"invoke\", resource_metadata=\"{url}\""
        )
    } else if presented {
        // RFC 6750 §3.1: a token was presented and is not good (expired,
        // another audience, a bad signature, unknown).
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{url}\", scope=\"invoke\"")
    } else {
        format!("Bearer resource_metadata=\"{url}\", scope=\"invoke\"")
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
