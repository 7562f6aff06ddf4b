//! The HTTP API: a thin JSON layer over one [`ToolDispatcher`].
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a 4xx
//! status for the client's mistakes (malformed JSON, unknown fields, invalid
//! ids, missing token, oversized bodies) and 5xx only for the server's or an
//! agent's failures. `docs/openapi.json` describes every route.

mod auth;
mod prometheus;

use crate::config::Config;
use crate::dispatch::{RoutingOptions, ToolDispatcher};
use crate::error::Error;
use crate::namespace::{validate_id, ToolCategory};
use crate::policy::PolicyEngine;
use crate::routing::{AgentConfig, RoutingStrategy};
use crate::storage::Database;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub dispatcher: ToolDispatcher,
    pub policy: PolicyEngine,
    pub token: Option<Arc<str>>,
}

impl AppState {
    pub fn new(dispatcher: ToolDispatcher, token: Option<String>) -> Self {
        let policy = PolicyEngine::new(dispatcher.database());
        AppState {
            dispatcher,
            policy,
            token: token.map(Arc::from),
        }
    }
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
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
            Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        ApiError::new(status, code, e.to_string())
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
        (self.status, body).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes over `state`, with auth and the body limit applied.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{id}",
            get(get_agent).put(register_agent).delete(remove_agent),
        )
        .route("/v1/invoke", axum::routing::post(invoke))
        .route("/v1/metrics", get(metrics_json))
        .route("/metrics", get(metrics_prometheus))
        .route("/v1/scan", get(scan))
        .route("/v1/policies", get(list_policies).post(add_policy))
        // MCP integration point: the MCP endpoint, behind the same auth layer.
        .nest_service(
            "/mcp",
            crate::mcp::server::service(state.dispatcher.clone(), max_body_bytes),
        )
        .fallback(|| async { ApiError::not_found("no such route; see docs/openapi.json") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn list_agents(State(s): State<AppState>) -> Json<Vec<crate::namespace::AgentRecord>> {
    let registry = s.dispatcher.registry();
    Json(
        registry
            .list()
            .iter()
            .filter_map(|id| registry.get(id))
            .collect(),
    )
}

async fn get_agent(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::namespace::AgentRecord>> {
    validate_id("agent id", &id)?;
    s.dispatcher
        .registry()
        .get(&id)
        .map(Json)
        .ok_or_else(|| Error::UnknownAgent(id).into())
}

/// `PUT /v1/agents/{id}`: an HTTP agent's registration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    pub tools: Vec<ToolCategory>,
    pub endpoint: String,
    pub health_url: Option<String>,
    #[serde(default)]
    pub priority: i32,
    pub timeout_ms: Option<u64>,
    pub max_concurrency: Option<u32>,
}

impl RegisterBody {
    pub fn into_config(self) -> AgentConfig {
        let mut config = AgentConfig::new()
            .with_tools(self.tools)
            .with_endpoint(self.endpoint)
            .with_priority(self.priority);
        if let Some(url) = self.health_url {
            config = config.with_health_url(url);
        }
        if let Some(ms) = self.timeout_ms {
            config = config.with_timeout(Duration::from_millis(ms));
        }
        if let Some(max) = self.max_concurrency {
            config = config.with_max_concurrency(max);
        }
        config
    }
}

async fn register_agent(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<RegisterBody>, JsonRejection>,
) -> ApiResult<Json<crate::namespace::AgentRecord>> {
    let Json(body) = body?;
    s.dispatcher.register_agent(&id, body.into_config())?;
    s.dispatcher
        .registry()
        .get(&id)
        .map(Json)
        .ok_or_else(|| Error::UnknownAgent(id).into())
}

async fn remove_agent(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.dispatcher.unregister_agent(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/invoke`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeBody {
    pub tool: String,
    pub category: ToolCategory,
    #[serde(default)]
    pub input: serde_json::Value,
    pub strategy: Option<RoutingStrategy>,
    pub session_id: Option<String>,
    pub max_attempts: Option<u32>,
}

async fn invoke(
    State(s): State<AppState>,
    body: Result<Json<InvokeBody>, JsonRejection>,
) -> ApiResult<Json<crate::dispatch::InvocationResult>> {
    let Json(body) = body?;
    let mut options = RoutingOptions::new().with_strategy(body.strategy.unwrap_or_default());
    if let Some(session) = body.session_id {
        options = options.with_session_id(session);
    }
    if let Some(n) = body.max_attempts {
        options = options.with_max_attempts(n);
    }
    // Run the dispatch on its own task: if the client disconnects, the call
    // still finishes and its outcome is still recorded.
    let dispatcher = s.dispatcher.clone();
    let result = tokio::spawn(async move {
        dispatcher
            .invoke(&body.tool, body.category, body.input, options)
            .await
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("dispatch task failed: {e}"),
        )
    })?;
    Ok(Json(result?))
}

async fn metrics_json(
    State(s): State<AppState>,
) -> Json<std::collections::HashMap<String, crate::routing::AgentMetrics>> {
    Json(s.dispatcher.get_metrics())
}

async fn metrics_prometheus(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        prometheus::render(&s.dispatcher.get_metrics()),
    )
}

/// `GET /v1/scan` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// The most entries one scan page returns.
pub const MAX_SCAN_PAGE: usize = 1000;

/// One page of a scan.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPage {
    pub items: Vec<ScanItem>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// One key and its value (JSON if it parses, else a string).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanItem {
    pub key: String,
    pub value: serde_json::Value,
}

/// Reads one page of `prefix` from `db`.
pub fn scan_page(
    db: &Database,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> crate::Result<ScanPage> {
    if limit == 0 || limit > MAX_SCAN_PAGE {
        return Err(Error::invalid(format!(
            "limit must be between 1 and {MAX_SCAN_PAGE}"
        )));
    }
    let mut items = Vec::new();
    let mut more = false;
    for kv in db.scan_after(prefix, after) {
        let (key, value) = kv?;
        if items.len() == limit {
            more = true;
            break;
        }
        let value = serde_json::from_slice(&value).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
        });
        items.push(ScanItem { key, value });
    }
    let next_after = if more {
        items.last().map(|i| i.key.clone())
    } else {
        None
    };
    Ok(ScanPage { items, next_after })
}

async fn scan(
    State(s): State<AppState>,
    query: Result<Query<ScanQuery>, QueryRejection>,
) -> ApiResult<Json<ScanPage>> {
    let Query(q) = query?;
    let db = s.dispatcher.database().clone();
    let page = tokio::task::spawn_blocking(move || {
        scan_page(&db, &q.prefix, q.after.as_deref(), q.limit.unwrap_or(100))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(page))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub name: String,
    pub scope: String,
}

async fn list_policies(State(s): State<AppState>) -> Json<Vec<PolicyInfo>> {
    Json(
        s.policy
            .rego_modules()
            .into_iter()
            .map(|(name, scope)| PolicyInfo { name, scope })
            .collect(),
    )
}

/// `POST /v1/policies`: a Rego module and its scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPolicyBody {
    pub scope: String,
    pub source: String,
}

async fn add_policy(
    State(s): State<AppState>,
    body: Result<Json<AddPolicyBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PolicyInfo>)> {
    let Json(body) = body?;
    s.policy.add_rego(&body.scope, &body.source)?;
    let (name, scope) = s
        .policy
        .rego_modules()
        .pop()
        .expect("the module was just added");
    Ok((StatusCode::CREATED, Json(PolicyInfo { name, scope })))
}

/// Opens everything `config` names and serves until `shutdown` resolves, then
/// gives in-flight requests `shutdown_grace_secs` to finish.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let db = Database::open_with(&config.data_dir, config.database_options())?;
    let dispatcher = ToolDispatcher::try_new(db)?;
    if let Some(dir) = &config.policies_dir {
        let policy = PolicyEngine::new(dispatcher.database());
        policy.set_rego_evaluator(config.rego_evaluator);
        let names = policy.load_dir(dir)?;
        tracing::info!(policies = ?names, dir = %dir.display(), "loaded policies");
    }
    if let Some(health) = config.health_checks() {
        dispatcher.enable_health_checks(health);
    }
    let token = std::env::var("SWITCHBOARD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or(config.token.clone());
    if token.is_none() {
        tracing::warn!("no API token configured: anyone who can reach {} can use the API; set SWITCHBOARD_TOKEN or `token` in the config", config.listen);
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", config.listen)))?;
    tracing::info!(listen = %config.listen, data = %config.data_dir.display(), "switchboard serving");
    run(
        listener,
        AppState::new(dispatcher, token),
        config.max_body_bytes,
        Duration::from_secs(config.shutdown_grace_secs),
        shutdown,
    )
    .await
}

/// Serves `state` on `listener` until `shutdown`, then drains for at most `grace`.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_body_bytes: usize,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state, max_body_bytes);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; letting in-flight ones finish");
        let _ = stopping_tx.send(());
    });
    let drained = async {
        let _ = stopping_rx.await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result.map_err(|e| Error::storage(format!("server error: {e}"))),
        _ = drained => {
            tracing::warn!("in-flight requests did not finish within the grace period; they will be marked interrupted on the next open");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
