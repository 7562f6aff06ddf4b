//! The admin UI under `/ui`: one HTML page, its script and style sheet
//! (the files of `ui/` at the repository's root, compiled into the binary),
//! and sign-in (`/ui/session`). The page's script draws every view from the
//! JSON API (`/v1/...`) with the caller's own credential, so the UI can do
//! and see exactly what the API lets that caller do and see: it has no
//! handler of its own that reads or writes the store.
//!
//! The pages themselves are the same for everyone and hold nothing secret,
//! so they are served without a credential (the sign-in form is one of
//! them); each answer carries a Content-Security-Policy that allows
//! scripts, styles, images and connections from this server only.

use super::auth::{bearer, Caller};
use super::errors::ApiError;
use super::{session, AppState};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

/// Where the UI starts; `switchboard serve` prints it with the listen address.
pub(crate) const HOME: &str = "/ui/";

/// The policy every UI answer carries: nothing from elsewhere, no inline
/// script or style, no framing, forms and connections to this server only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The files of `ui/`, by the name the page asks for, with their type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/dom.js"),
    ),
    (
        "overview.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/overview.js"),
    ),
    (
        "tools.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/tools.js"),
    ),
    (
        "calls.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/calls.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/audit.js"),
    ),
    (
        "policies.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/policies.js"),
    ),
    (
        "tokens.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/tokens.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../ui/icon.svg"),
    ),
];

const PAGE: &str = include_str!("../../ui/index.html");

/// The UI's routes (the API's layers, auth included, are added around them
/// with the API's own).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(HOME) }))
        .route("/ui", get(|| async { Redirect::to(HOME) }))
        .route("/ui/", get(page))
        .route("/ui/assets/{file}", get(asset))
        .route(
            "/ui/session",
            get(session_info).post(sign_in).delete(sign_out),
        )
        // Every view's address loads the same page, which draws the view.
        .route("/ui/{*view}", get(page))
        .layer(axum::middleware::map_response(security_headers))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found(format!("the UI has no file {file}")).into_response(),
    }
}

/// Who the request's credential signs in, and the CSRF token of that
/// credential (for the script's writes).
fn signed_in(state: &AppState, caller: &Caller, credential: &str) -> Value {
    let principal = caller.principal();
    json!({
        "caller": principal.map(|p| p.id.clone()),
        "scopes": principal.map_or_else(
            || vec!["admin", "invoke", "audit"],
            |p| p.scopes.iter().map(|s| s.as_str()).collect()
        ),
        "roles": principal.map(|p| p.roles.clone()).unwrap_or_default(),
        "credential_required": state.auth.is_required(),
        "csrf_token": state.csrf.token(credential),
    })
}

/// `GET /ui/session`: the signed-in caller (as the auth layer found it, by
/// the cookie or a bearer header) and its CSRF token.
async fn session_info(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Json<Value> {
    let credential = bearer(&request)
        .or_else(|| session::credential(request.headers()))
        .unwrap_or_default();
    Json(signed_in(&state, &caller, credential))
}

/// `POST /ui/session` with `Authorization: Bearer <credential>`, which the
/// auth layer has accepted: the credential becomes the session cookie.
async fn sign_in(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Result<Response, ApiError> {
    session::same_origin(request.headers())?;
    let Some(credential) = bearer(&request) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "sign in by sending the token or JWT as `Authorization: Bearer <credential>`",
        ));
    };
    let cookie = session::set_cookie(credential, state.https)?;
    let mut response = Json(signed_in(&state, &caller, credential)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `DELETE /ui/session`: forgets the cookie.
async fn sign_out(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    session::same_origin(request.headers())?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::clear_cookie(state.https))],
    )
        .into_response())
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}
