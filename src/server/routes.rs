//! The route table and the layers every request passes through, outermost
//! first: a tracing span (at debug level only), a body for bare errors, the
//! request timeout, the body limit, and admission (the Host check, the
//! bearer token and the route's scope). The admin UI's routes (`ui`) pass
//! through the same layers.

use super::errors::{self, ApiError};
use super::hosts::AllowedHosts;
use super::limits::ServerLimits;
use super::{
    agents, auth, calls, cluster, invoke, metrics, oauth, policies, scan_route, tokens, tools, ui,
    AppState,
};
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// The API's routes over `state`, with auth and the body limit applied (and
/// the other [`ServerLimits`] at their defaults; no Host check).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let limits = ServerLimits {
        max_body_bytes,
        ..ServerLimits::default()
    };
    routes(state, &limits)
}

/// [`router`] with every limit of `limits`, answering only to the names of a
/// server listening on `listen` (and `state`'s allowed hosts).
pub(crate) fn router_for(mut state: AppState, limits: &ServerLimits, listen: SocketAddr) -> Router {
    state.fields().host_check = Some(AllowedHosts::new(listen, &state.allowed_hosts));
    let app = routes(state, limits);
    // The access log's span and events are all at debug: with debug off
    // (the log filter is fixed at start-up) the layer would only cost.
    if !tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        return app;
    }
    // An agent's 502 is not the server failing: failures are logged at debug.
    app.layer(
        TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    )
}

/// The routes of `metrics_listen`: `GET /metrics` only, without a token.
pub(crate) fn metrics_only(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics_prometheus))
        .fallback(|| async { ApiError::not_found("this listener serves only GET /metrics") })
        .with_state(state)
}

fn routes(mut state: AppState, limits: &ServerLimits) -> Router {
    state.fields().invoke_slots = limits.invoke_slots();
    Router::new()
        .route("/healthz", get(cluster::healthz))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/agents", get(agents::list_agents))
        .route(
            "/v1/agents/{id}",
            get(agents::get_agent)
                .put(agents::register_agent)
                .delete(agents::remove_agent),
        )
        .route("/v1/tools", get(tools::list_tools))
        .route("/v1/invoke", post(invoke::invoke))
        .route("/v1/metrics", get(metrics::metrics_json))
        .route("/metrics", get(metrics::metrics_prometheus))
        .route("/v1/scan", get(scan_route::scan))
        .route("/v1/calls/stream", get(calls::stream))
        .route(
            "/v1/policies",
            get(policies::list_policies).post(policies::add_policy),
        )
        .route(
            "/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(tokens::revoke_token),
        )
        .route(
            "/v1/policies/{name}",
            get(policies::get_policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/v1/policies/{name}/check", post(policies::check_policy))
        .route(oauth::METADATA_PATH, get(oauth::metadata))
        .route(
            &format!("{}/mcp", oauth::METADATA_PATH),
            get(oauth::metadata),
        )
        // MCP over streamable HTTP, behind the same token and limits.
        .nest_service(
            "/mcp",
            Router::new()
                .fallback_service(crate::mcp::server::service(
                    crate::mcp::server::SwitchboardMcp::new(state.dispatcher.clone())
                        // One cap for both ways in: a `tools/call` is an invoke.
                        .with_invoke_slots(state.invoke_slots.clone())
                        .with_category_tools(state.mcp_category_tools),
                    limits.max_body_bytes,
                ))
                .layer(axum::middleware::map_request(any_accept_means_mcp_types)),
        )
        // A2A: Switchboard's Agent Card and JSON-RPC, behind the same token.
        .merge(
            crate::a2a::server::A2aServer::new(state.dispatcher.clone(), state.https)
                .with_invoke_slots(state.invoke_slots.clone())
                .routes(),
        )
        // The admin UI: pages that call the routes above.
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such route; see docs/openapi.json") })
        // The layers as one stack (a tuple's first layer is outermost), so
        // the routes are boxed once below it: each `Router::layer` call
        // boxes them again, and a middleware clones everything below it,
        // box by box, on every request.
        .layer((
            axum::middleware::map_response(errors::give_bare_errors_a_body),
            TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, limits.request_timeout),
            DefaultBodyLimit::max(limits.max_body_bytes),
            axum::middleware::from_fn_with_state(state.clone(), auth::admit),
        ))
        .with_state(state)
}

/// A request without `Accept`, or with `*/*`, accepts any media type (RFC
/// 9110 12.5.1): it is given the two the MCP transport insists on naming.
async fn any_accept_means_mcp_types(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let accepts_anything = headers
        .get(header::ACCEPT)
        .is_none_or(|v| v.as_bytes().trim_ascii() == b"*/*");
    if accepts_anything {
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    request
}
