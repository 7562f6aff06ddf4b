//! Who is calling, and whether the route is theirs to use. Every request but
//! `/healthz` and the admin UI's static pages presents a bearer credential
//! (the static token, an issued API token or a JWT: see
//! [`Authenticator`](crate::identity::Authenticator)), in the
//! `Authorization` header or in the UI's session cookie (see `session`,
//! which also holds the CSRF check cookie-authenticated writes pass); its
//! [`Principal`] travels with the request as a [`Caller`] extension, and
//! each route requires one scope: admin (agents' changes, policies,
//! tokens), invoke (`/v1/invoke`, `/mcp`, `/a2a`) or audit (`/v1/scan`,
//! `/v1/calls/stream`, metrics).

use super::errors::ApiError;
use super::{session, AppState};
use crate::policy::{PolicyContext, Principal, Scope};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The caller of one request, as the auth layer established it. `None` only
/// on a server that requires no credential and was sent none: the local
/// operator, with every scope and no caller entries in policy contexts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub Option<Principal>);

impl Caller {
    /// The principal, if the request presented a credential.
    pub fn principal(&self) -> Option<&Principal> {
        self.0.as_ref()
    }

    /// Whether it holds `scope` (the local operator holds every scope).
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.0.as_ref().is_none_or(|p| p.has_scope(scope))
    }

    /// `ctx` with the caller's entries added.
    pub fn context(&self, mut ctx: PolicyContext) -> PolicyContext {
        if let Some(p) = &self.0 {
            p.apply_to(&mut ctx);
        }
        ctx
    }
}

/// The scope a route needs; `None` for routes any caller may use.
fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let path = path.trim_end_matches('/');
    if path == "/v1/invoke" || path == "/mcp" || path.starts_with("/mcp/") || path == "/a2a" {
        return Some(Scope::Invoke);
    }
    if path == "/v1/scan"
        || path == "/v1/calls/stream"
        || path == "/v1/metrics"
        || path == "/metrics"
    {
        return Some(Scope::Audit);
    }
    let under = |root: &str| path == root || path.starts_with(&format!("{root}/"));
    if under("/v1/policies") || under("/v1/tokens") {
        return Some(Scope::Admin);
    }
    if path.starts_with("/v1/agents/") && method != Method::GET && method != Method::HEAD {
        return Some(Scope::Admin);
    }
    // Listing and reading agents: any caller, through the read policies.
    None
}

/// Whether a request to the admin UI (`ui.rs`) may go without a
/// credential: the pages and their assets, which hold no data (they read it
/// through the API with the signed-in credential), and signing out, which
/// only clears a cookie.
fn ui_is_public(method: &Method, path: &str) -> bool {
    if path == "/ui/session" {
        return method == Method::DELETE;
    }
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path == "/ui" || path.starts_with("/ui/"))
}

/// The one middleware of every request: refuses a `Host` naming another
/// server (421, when the server checks hosts: see `hosts`), establishes the
/// caller (refusing a missing or bad credential with 401) and checks the
/// route's scope (403 `insufficient_scope`). A refusal on `/mcp` carries
/// the OAuth challenge that tells an MCP client where to get a token (see
/// `oauth`). One middleware rather than one per check: each costs a clone
/// of the routes below it and a boxed future per request.
pub(crate) async fn admit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = state
        .host_check
        .as_ref()
        .and_then(|hosts| hosts.check(&request).err())
    {
        return refusal.into_response();
    }
    let path = request.uri().path();
    if path == "/healthz"
        || super::oauth::is_metadata_path(path)
        || ui_is_public(request.method(), path)
    {
        return next.run(request).await;
    }
    match authenticate(&state, &mut request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let status = refusal.status();
            let mut response = refusal.into_response();
            if status == StatusCode::UNAUTHORIZED && signed_in_by_cookie(&request) {
                // A revoked or expired sign-in: the browser forgets it.
                response.headers_mut().append(
                    axum::http::header::SET_COOKIE,
                    session::clear_cookie(state.https),
                );
            }
            // The body of a refused request is never read, so the
            // connection cannot carry another request: say so, or a client
            // reusing it (an OAuth client fetching the metadata the
            // challenge names) would meet a closed socket.
            if has_body(&request) {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            let path = request.uri().path().trim_end_matches('/');
            let on_mcp = path == "/mcp" || path.starts_with("/mcp/");
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if on_mcp => {
                    super::oauth::challenge(
                        &state,
                        &request,
                        status == StatusCode::FORBIDDEN,
                        response,
                    )
                }
                _ => response,
            }
        }
    }
}

/// Whether `request` comes with a body (one that is not known to be empty).
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0")
}

/// The bearer credential of `request`'s `Authorization` header, if any.
pub(crate) fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `request`'s credential is its session cookie (it has no
/// `Authorization` header, which would take precedence).
fn signed_in_by_cookie(request: &Request) -> bool {
    bearer(request).is_none() && session::credential(request.headers()).is_some()
}

/// The caller of `request`, checked against the route's scope and put in
/// its extensions.
fn authenticate(state: &AppState, request: &mut Request) -> Result<(), ApiError> {
    #[cfg(feature = "cluster")]
    if request
        .headers()
        .contains_key(crate::cluster::CREDENTIAL_HEADER)
    {
        let caller = node_to_node_caller(state, request)?;
        if !caller.has_scope(Scope::Audit) {
            return Err(insufficient_scope(Scope::Audit, &caller));
        }
        if let Some(p) = caller.principal() {
            request.extensions_mut().insert(p.clone());
        }
        request.extensions_mut().insert(caller);
        return Ok(());
    }
    let from_cookie = bearer(request)
        .is_none()
        .then(|| session::credential(request.headers()))
        .flatten();
    let presented = bearer(request).or(from_cookie);
    // On this thread: a compare, a cached token lookup and a hash, or a
    // JWT signature check: microseconds of CPU, nothing that waits.
    let caller = match presented {
        Some(p) => match state.auth.authenticate(p)? {
            Ok(principal) => Caller(principal),
            Err(refused) => return Err(ApiError::unauthorized(&refused.0)),
        },
        None if state.auth.is_required() => {
            return Err(ApiError::unauthorized(
                "this server requires `Authorization: Bearer <token>`: the server's token, \
                 an API token from `switchboard tokens create`, or a JWT",
            ))
        }
        None => Caller(None),
    };
    if let Some(credential) = from_cookie {
        session::check_write(&state.csrf, request.method(), request.headers(), credential)?;
    }
    if let Some(scope) = required_scope(request.method(), request.uri().path()) {
        if !caller.has_scope(scope) {
            return Err(insufficient_scope(scope, &caller));
        }
    }
    if let Some(p) = caller.principal() {
        tracing::debug!(caller = %p.id, path = %request.uri().path(), "authenticated");
    }
    if let Some(p) = caller.principal() {
        // For handlers below the API's layer (the `/mcp` service).
        request.extensions_mut().insert(p.clone());
    }
    request.extensions_mut().insert(caller);
    Ok(())
}

fn insufficient_scope(scope: Scope, caller: &Caller) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        format!(
            "this route needs the {scope} scope; the caller has {}",
            caller
                .principal()
                .map(|p| p
                    .scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into())
        ),
    )
}

/// The caller of a node-to-node request: another node of the cluster, proven
/// by the cluster secret, asking for its part of a cluster scan on behalf of
/// the principal it names (whom this node's read policies then judge). The
/// secret opens `GET /v1/scan` and nothing else, so a leaked secret reads
/// audit records but cannot change anything.
#[cfg(feature = "cluster")]
fn node_to_node_caller(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let presented = request
        .headers()
        .get(crate::cluster::CREDENTIAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let accepted = state
        .cluster
        .as_ref()
        .is_some_and(|c| c.accepts_secret(presented));
    if !accepted {
        return Err(ApiError::unauthorized(
            "the cluster credential was refused: this node is not in a cluster, has no cluster \
             secret, or has another one; give every node the same secret (secret_env or \
             secret_file under [cluster], or SWITCHBOARD_CLUSTER_SECRET)",
        ));
    }
    let path = request.uri().path().trim_end_matches('/');
    if request.method() != Method::GET || path != "/v1/scan" {
        return Err(ApiError::unauthorized(
            "the cluster credential is accepted only on GET /v1/scan (a node asking another for \
             its part of a cluster scan); call other routes with a token",
        ));
    }
    let principal = match request.headers().get(crate::cluster::ON_BEHALF_OF_HEADER) {
        None => None,
        Some(value) => {
            let principal = B64
                .decode(value.as_bytes())
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Principal>(&bytes).ok());
            match principal {
                Some(principal) => Some(principal),
                None => {
                    return Err(ApiError::unauthorized(&format!(
                        "{} does not hold a principal (base64url of its JSON)",
                        crate::cluster::ON_BEHALF_OF_HEADER
                    )))
                }
            }
        }
    };
    if principal.is_none() && state.auth.is_required() {
        return Err(ApiError::unauthorized(
            "a node-to-node scan must name the caller it is made for on a node that requires \
             credentials; the asking node's caller presented none",
        ));
    }
    Ok(Caller(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_scope() {
        assert_eq!(
            required_scope(&Method::POST, "/v1/invoke"),
            Some(Scope::Invoke)
        );
        assert_eq!(required_scope(&Method::POST, "/mcp"), Some(Scope::Invoke));
        assert_eq!(required_scope(&Method::GET, "/v1/scan"), Some(Scope::Audit));
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            assert_eq!(
                required_scope(&method, "/v1/policies/payments"),
                Some(Scope::Admin)
            );
        }
        assert_eq!(
            required_scope(&Method::DELETE, "/v1/agents/a"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope(&Method::GET, "/v1/agents/a"), None);
        assert_eq!(
            required_scope(&Method::POST, "/v1/tokens"),
            Some(Scope::Admin)
        );
        assert_eq!(
            required_scope(&Method::GET, "/v1/calls/stream"),
            Some(Scope::Audit)
        );
        assert_eq!(required_scope(&Method::GET, "/ui/session"), None);
        assert!(Caller(None).has_scope(Scope::Admin));
    }
}
