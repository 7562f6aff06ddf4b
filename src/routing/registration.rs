//! What a registration must be, apart from any registry: a new record
//! built and checked from an [`AgentConfig`] (id, categories, timeout,
//! concurrency), the same checks on a record read from the cluster, and the
//! tools an MCP agent declares under the names callers use. Pure functions;
//! the registry (`registry.rs`) calls them and owns the live agents and the
//! store (written through `registry_store.rs`).

use super::agent::{
    AgentConfig, ServedKind, ServedTool, ServedTools, DEFAULT_AGENT_TIMEOUT, MAX_AGENT_TIMEOUT,
};
use super::endpoint::{check_endpoint_text, parse_endpoint, parse_endpoint_under};
use crate::error::{Error, Result};
use crate::namespace::{
    now_ms, validate_id, AgentRecord, AgentStatus, AgentTransport, McpServer, PrefixMode,
};
use crate::policy::{CommandPolicy, NetworkPolicy};

/// A new record for `agent_id` from `config`, checked; its registration
/// time is that of the record it replaces, if any, else now.
pub(super) fn new_record(
    agent_id: &str,
    config: &AgentConfig,
    transport: AgentTransport,
    replaced_registered_at_ms: impl FnOnce() -> Option<u64>,
) -> Result<AgentRecord> {
    validate_id("agent id", agent_id)?;
    if config.tools.is_empty() {
        return Err(Error::invalid(format!(
            "agent {agent_id} serves no tool categories; give it at least one"
        )));
    }
    for category in &config.tools {
        category.validate()?;
    }
    let timeout = config.timeout.unwrap_or(DEFAULT_AGENT_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_AGENT_TIMEOUT {
        return Err(Error::invalid(format!(
            "agent timeout must be between 1 ms and {} ms",
            MAX_AGENT_TIMEOUT.as_millis()
        )));
    }
    if config.max_concurrency == Some(0) {
        return Err(Error::invalid("max_concurrency must be at least 1"));
    }
    let mut tools = config.tools.clone();
    tools.dedup();
    let now = now_ms();
    let registered_at_ms = replaced_registered_at_ms().unwrap_or(now);
    Ok(AgentRecord {
        agent_id: agent_id.to_string(),
        tools,
        transport,
        priority: config.priority,
        timeout_ms: timeout.as_millis().max(1) as u64,
        max_concurrency: config.max_concurrency,
        status: AgentStatus::Healthy,
        status_reason: None,
        registered_at_ms,
        updated_at_ms: now,
        registered_by: config.caller.as_ref().map(|c| c.id.clone()),
    })
}

/// How `config` says `agent_id` is reached, checked as a registration is,
/// under `network` and `commands`: an HTTP endpoint and its health URL (by
/// default the endpoint's `/health`), or an MCP server by URL or by a
/// command the node allows.
pub(crate) fn transport(
    agent_id: &str,
    config: &AgentConfig,
    network: &NetworkPolicy,
    commands: &CommandPolicy,
) -> Result<AgentTransport> {
    if let Some(agent) = &config.a2a {
        if config.endpoint.is_some() || config.mcp.is_some() {
            return Err(Error::invalid(format!(
                "agent {agent_id} has an A2A card and also an endpoint or MCP server; give one of them"
            )));
        }
        if config.health_url.is_some() {
            return Err(Error::invalid(format!(
                "agent {agent_id} is an A2A agent, probed by fetching its Agent Card: leave out \
                 health_url (it is for HTTP agents)"
            )));
        }
        let mut agent = agent.clone();
        agent.validate(&config.tools)?;
        check_endpoint_text("A2A card_url", &agent.card_url)?;
        agent.card_url = parse_endpoint_under(&agent.card_url, network)?
            .0
            .to_string();
        if let Some(url) = agent
            .verify_signature
            .as_ref()
            .and_then(|keys| keys.jwks_url.as_ref())
        {
            check_endpoint_text("verify_signature.jwks_url", url)?;
            parse_endpoint_under(url, network)?;
        }
        return Ok(AgentTransport::A2a(agent));
    }
    if let Some(server) = &config.mcp {
        if config.endpoint.is_some() {
            return Err(Error::invalid(format!(
                "agent {agent_id} has both an endpoint and an MCP server; give one of them"
            )));
        }
        let mut server = server.clone();
        server.validate(&config.tools)?;
        if let Some(url) = &server.url {
            check_endpoint_text("MCP url", url)?;
            server.url = Some(parse_endpoint_under(url, network)?.0.to_string());
        }
        if let Some(token_url) = server.oauth.as_mut().and_then(|o| o.token_url.as_mut()) {
            check_endpoint_text("oauth.token_url", token_url)?;
            *token_url = parse_endpoint_under(token_url, network)?.0.to_string();
        }
        if let Some(command) = &server.command {
            commands.check(agent_id, command)?;
        }
        return Ok(AgentTransport::Mcp(server));
    }
    let Some(endpoint) = config.endpoint.as_deref() else {
        return Err(Error::invalid(format!(
            "agent {agent_id} has no endpoint; call with_endpoint, or register_local_agent for an in-process handler"
        )));
    };
    check_endpoint_text("endpoint", endpoint)?;
    let (endpoint, default_health) = parse_endpoint_under(endpoint, network)?;
    let health_url = match config.health_url.as_deref() {
        Some(url) => {
            check_endpoint_text("health_url", url)?;
            parse_endpoint_under(url, network)?.0
        }
        None => default_health,
    };
    Ok(AgentTransport::Http {
        endpoint: endpoint.to_string(),
        health_url: health_url.to_string(),
    })
}

/// Whether `config` would register as `agent_id` under `network` and
/// `commands`, without a registry: for checking a config file's agents
/// before anything is opened.
pub fn check_agent_config(
    agent_id: &str,
    config: &AgentConfig,
    network: &NetworkPolicy,
    commands: &CommandPolicy,
) -> Result<()> {
    let transport = transport(agent_id, config, network, commands)?;
    new_record(agent_id, config, transport, || None).map(drop)
}

/// The checks a local registration passes, on a record from the
/// cluster: a valid id, categories, timeout and concurrency; an HTTP
/// agent's endpoint and health URL (shape and address policy); an MCP
/// agent's server (url or command, names, rules) and, for a command, this
/// node's allow-list. A record never grants itself permission to run.
pub(super) fn check_shared(record: &AgentRecord) -> Result<()> {
    validate_id("agent id", &record.agent_id)?;
    if record.tools.is_empty() {
        return Err(Error::invalid(format!(
            "agent {} serves no tool categories",
            record.agent_id
        )));
    }
    for category in &record.tools {
        category.validate()?;
    }
    if record.timeout_ms == 0 || record.timeout_ms > MAX_AGENT_TIMEOUT.as_millis() as u64 {
        return Err(Error::invalid(format!(
            "agent timeout must be between 1 ms and {} ms",
            MAX_AGENT_TIMEOUT.as_millis()
        )));
    }
    if record.max_concurrency == Some(0) {
        return Err(Error::invalid("max_concurrency must be at least 1"));
    }
    match &record.transport {
        AgentTransport::Local => {}
        AgentTransport::Http {
            endpoint,
            health_url,
        } => {
            check_endpoint_text("endpoint", endpoint)?;
            parse_endpoint(endpoint)?;
            check_endpoint_text("health_url", health_url)?;
            parse_endpoint(health_url)?;
        }
        AgentTransport::Mcp(server) => {
            server.validate(&record.tools)?;
            if let Some(url) = &server.url {
                check_endpoint_text("MCP url", url)?;
                parse_endpoint(url)?;
            }
            if let Some(token_url) = server.oauth.as_ref().and_then(|o| o.token_url.as_ref()) {
                check_endpoint_text("oauth.token_url", token_url)?;
                parse_endpoint(token_url)?;
            }
            if let Some(command) = &server.command {
                CommandPolicy::current().check(&record.agent_id, command)?;
            }
        }
        AgentTransport::A2a(agent) => {
            agent.validate(&record.tools)?;
            check_endpoint_text("A2A card_url", &agent.card_url)?;
            parse_endpoint(&agent.card_url)?;
            if let Some(url) = agent
                .verify_signature
                .as_ref()
                .and_then(|keys| keys.jwks_url.as_ref())
            {
                check_endpoint_text("verify_signature.jwks_url", url)?;
                parse_endpoint(url)?;
            }
        }
    }
    Ok(())
}

/// The name callers use for tool `name` of `agent_id` under `prefix`
/// (collisions aside, which discovery resolves): the bare name, or
/// `{agent}_{tool}` cut to the 64 characters every MCP client accepts.
pub(crate) fn exposed_name(agent_id: &str, name: &str, prefixed: bool) -> String {
    if !prefixed {
        return name.to_string();
    }
    let mut exposed: String = format!("{agent_id}_{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    exposed.truncate(64);
    exposed
}

/// What an MCP (or A2A) agent serves before (or without) discovery: its declared
/// tool names (skills), each in the category its rules give it; nothing if it
/// declares none (discovery fills it in).
pub(crate) fn declared_tools(record: &AgentRecord, server: &McpServer) -> ServedTools {
    let Some(default) = record.tools.first() else {
        return ServedTools::new();
    };
    server
        .tool_names
        .iter()
        .map(|name| {
            (
                exposed_name(&record.agent_id, name, server.prefix == PrefixMode::Always),
                ServedTool {
                    upstream: name.clone(),
                    category: server.category_of(name, default),
                    kind: ServedKind::Tool,
                },
            )
        })
        .collect()
}
