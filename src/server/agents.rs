//! `/v1/agents` and `/v1/agents/{id}`: listing, reading, registering and
//! removing agents.

use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::dispatch::ToolDispatcher;
use crate::error::Error;
use crate::namespace::{agent_key, validate_id, AgentRecord, McpServer, McpSpec, ToolCategory};
use crate::policy::PolicyContext;
use crate::routing::AgentConfig;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use std::time::Duration;

/// The registered agents a reader may see: one scan of `agents/` through the
/// read hooks (one read against read rate limits), so a policy that denies
/// reading `agents/{id}` hides that agent. Literal `env` values of stdio
/// commands are redacted: secrets are write-only.
pub fn visible_agents(
    dispatcher: &ToolDispatcher,
    ctx: &PolicyContext,
) -> crate::Result<Vec<AgentRecord>> {
    let registry = dispatcher.registry();
    let mut records = Vec::new();
    for kv in dispatcher
        .database()
        .scan_from(&agent_key(""))
        .as_reader(ctx)
        .iter()
    {
        let (key, _) = kv?;
        let id = &key[agent_key("").len()..];
        if let Some(record) = registry.get(id) {
            records.push(record.redacted());
        }
    }
    Ok(records)
}

/// How long `PUT /v1/agents/{id}` waits for an MCP agent's tool list.
const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// The policy context of the API's reads.
pub(crate) fn api_context(action: &str) -> PolicyContext {
    PolicyContext::new()
        .with("source", "api")
        .with("action", action)
}

pub(crate) async fn list_agents(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<AgentRecord>>> {
    let dispatcher = s.dispatcher.clone();
    let records = tokio::task::spawn_blocking(move || {
        visible_agents(&dispatcher, &caller.context(api_context("list_agents")))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(records))
}

pub(crate) async fn get_agent(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentRecord>> {
    validate_id("agent id", &id)?;
    // The read hooks decide whether this reader may see the agent.
    s.dispatcher
        .database()
        .get_with(&agent_key(&id), &caller.context(api_context("get_agent")))?;
    s.dispatcher
        .registry()
        .get(&id)
        .map(|record| Json(record.redacted()))
        .ok_or_else(|| Error::UnknownAgent(id).into())
}

/// `endpoint` and `mcp` say which kind of agent this is: one of them is left
/// out, never sent as `null` (which would read as a third kind).
fn not_null<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(
                "`endpoint`, `mcp` and `a2a` may not be null: give one of them and leave the others out",
            )
        })
}

/// `PUT /v1/agents/{id}`: an HTTP, MCP or A2A agent's registration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// The categories the agent serves.
    pub tools: Vec<ToolCategory>,
    /// The URL its tool calls are posted to (an HTTP agent).
    #[serde(default, deserialize_with = "not_null")]
    pub endpoint: Option<String>,
    /// An MCP server instead of an endpoint.
    #[serde(default, deserialize_with = "not_null")]
    pub mcp: Option<McpSpec>,
    /// An A2A agent (its Agent Card's URL, or the full registration) instead.
    #[serde(default, deserialize_with = "not_null")]
    pub a2a: Option<crate::namespace::A2aSpec>,
    /// Its health-check URL, if not the default.
    pub health_url: Option<String>,
    #[serde(default)]
    /// Routing priority (higher first for the `priority` strategy).
    pub priority: i32,
    /// Milliseconds a call may take.
    pub timeout_ms: Option<u64>,
    /// Calls it may run at once.
    pub max_concurrency: Option<u32>,
}

impl RegisterBody {
    /// The agent configuration this body describes.
    pub fn into_config(self) -> AgentConfig {
        let mut config = AgentConfig::new()
            .with_tools(self.tools)
            .with_priority(self.priority);
        if let Some(endpoint) = self.endpoint {
            config = config.with_endpoint(endpoint);
        }
        if let Some(mcp) = self.mcp {
            config = config.with_mcp_server(mcp.into_server());
        }
        if let Some(a2a) = self.a2a {
            config = config.with_a2a(a2a.into_agent());
        }
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

pub(crate) async fn register_agent(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<RegisterBody>, JsonRejection>,
) -> ApiResult<Json<AgentRecord>> {
    let Json(body) = body?;
    if body.endpoint.is_none() && body.mcp.is_none() && body.a2a.is_none() {
        // A body shape error, as when any required field is missing.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            "missing field `endpoint` (or `mcp` for an MCP agent, `a2a` for an A2A agent)",
        ));
    }
    if let Some(McpSpec::Server(McpServer {
        command: Some(_), ..
    })) = &body.mcp
    {
        return Err(Error::invalid(
            "an MCP command (stdio) is not registered over HTTP: it would run a program on the server; \
             declare it in the config file ([[agents]] with mcp = { command = { program = ... } }) or \
             with `switchboard agents register ID --mcp-command ... --allow-command PATH` on the data \
             directory. Its program must also be in the server's allow-list (allow_commands under [mcp])",
        )
        .into());
    }
    // A card that must be signed is checked before anything is registered:
    // one that fails is refused with why.
    if let Some(a2a) = body
        .a2a
        .clone()
        .map(crate::namespace::A2aSpec::into_agent)
        .filter(|a2a| a2a.verify_signature.is_some())
    {
        // What needs no network is checked before the card is fetched.
        a2a.validate(&body.tools)?;
        let timeout = body
            .timeout_ms
            .map_or(DISCOVERY_WAIT, Duration::from_millis)
            .min(DISCOVERY_WAIT);
        s.dispatcher
            .check_a2a_card(&a2a, timeout)
            .await
            .map_err(|e| {
                Error::invalid(format!("the registration of agent {id} is refused: {e}"))
            })?;
    }
    let mcp = body.mcp.is_some() || body.a2a.is_some();
    let mut config = body.into_config();
    if let Some(principal) = caller.0 {
        config = config.with_caller(principal);
    }
    s.dispatcher.register_agent(&id, config)?;
    if mcp {
        // Answer once the agent's tools are known (or the listing failed:
        // it is retried when its TTL expires).
        match tokio::time::timeout(DISCOVERY_WAIT, s.dispatcher.discover_tools(&id)).await {
            Ok(Ok(tools)) => {
                tracing::info!(agent_id = %id, tools = tools.len(), "MCP agent registered")
            }
            Ok(Err(e)) => {
                tracing::warn!(agent_id = %id, error = %e, "MCP agent registered; its tools could not be listed yet")
            }
            Err(_) => {
                tracing::warn!(agent_id = %id, "MCP agent registered; listing its tools is taking long")
            }
        }
    }
    s.dispatcher
        .registry()
        .get(&id)
        .map(|record| Json(record.redacted()))
        .ok_or_else(|| Error::UnknownAgent(id).into())
}

pub(crate) async fn remove_agent(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.dispatcher.unregister_agent_as(&id, caller.principal())?;
    Ok(StatusCode::NO_CONTENT)
}
