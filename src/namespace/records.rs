//! The typed records stored under `agents/*`, `sessions/*` and `tools/*`, and
//! the enums they hold (statuses, attempt outcomes, the routing strategy).

use super::ToolCategory;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where an agent is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum AgentTransport {
    /// An in-process handler; bound again by registering it in each process.
    Local,
    /// An HTTP agent speaking the JSON `POST` protocol (docs/routing.md).
    Http {
        /// `POST` target for invocations.
        endpoint: String,
        /// `GET` target for health probes.
        health_url: String,
    },
    /// An MCP server (streamable HTTP or stdio): calls are `tools/call`.
    Mcp(super::McpServer),
    /// An A2A agent found by its Agent Card: calls are A2A JSON-RPC
    /// requests (`SendMessage`, `GetTask`, `CancelTask`).
    A2a(super::A2aAgent),
}

impl AgentTransport {
    /// Where the agent is, in one line: `(local handler)`, its endpoint, or
    /// `mcp <url>` / `mcp stdio: <program>`.
    pub fn describe(&self) -> String {
        match self {
            AgentTransport::Local => "(local handler)".to_string(),
            AgentTransport::Http { endpoint, .. } => endpoint.clone(),
            AgentTransport::Mcp(server) => match (&server.url, &server.command) {
                (Some(url), _) => format!("mcp {url}"),
                (None, Some(command)) => format!("mcp stdio: {}", command.program),
                (None, None) => "mcp".to_string(),
            },
            AgentTransport::A2a(agent) => format!("a2a {}", agent.card_url),
        }
    }
}

/// Health as last decided by checks or passive failure counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Passing health checks (or never checked): eligible for routing.
    Healthy,
    /// Failed enough health checks to be taken out of routing.
    Unhealthy,
}

/// The value under `agents/{agent_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    /// The agent's id.
    pub agent_id: String,
    /// The categories it serves.
    pub tools: Vec<ToolCategory>,
    /// How it is called.
    pub transport: AgentTransport,
    /// Higher priority agents are preferred by the `priority` strategy.
    pub priority: i32,
    /// Milliseconds a call may take.
    pub timeout_ms: u64,
    /// Calls it may run at once (`None`: unbounded).
    pub max_concurrency: Option<u32>,
    /// Its health.
    pub status: AgentStatus,
    /// What last changed its health (`3 probes in a row failed`, `3
    /// invocations in a row failed`, …); absent until it first changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When it was first registered (ms since the Unix epoch).
    pub registered_at_ms: u64,
    /// When its record last changed (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// The authenticated caller that last registered it; absent for the
    /// local application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
}

impl AgentRecord {
    /// The record as a reader sees it and the cluster shares it: a stdio
    /// MCP command's literal `env` values redacted (see
    /// [`McpCommand::redacted`](super::McpCommand::redacted)).
    pub fn redacted(&self) -> AgentRecord {
        let mut record = self.clone();
        if let AgentTransport::Mcp(server) = &mut record.transport {
            if let Some(command) = &mut server.command {
                *command = command.redacted();
            }
        }
        record
    }
}

/// The value under `sessions/{session_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    /// The agent the session is bound to.
    pub agent_id: String,
    /// The category the binding is for.
    pub category: ToolCategory,
    /// When the binding was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the binding was last used (ms since the Unix epoch).
    pub last_used_ms: u64,
}

/// Where a dispatch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStatus {
    /// Written before the agent is called; replaced by the outcome.
    InFlight,
    /// The agent answered.
    Succeeded,
    /// The last attempt failed (tool error, or every retryable attempt
    /// failed), or an error ended the call (`error` says which).
    Failed,
    /// The process stopped while the agent was being called.
    Interrupted,
    /// The caller dropped the call (its future) before it finished.
    Cancelled,
}

impl DispatchStatus {
    /// Every status, in the order a dispatch can reach them.
    pub const ALL: [DispatchStatus; 5] = [
        DispatchStatus::InFlight,
        DispatchStatus::Succeeded,
        DispatchStatus::Failed,
        DispatchStatus::Interrupted,
        DispatchStatus::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchStatus::InFlight => "in_flight",
            DispatchStatus::Succeeded => "succeeded",
            DispatchStatus::Failed => "failed",
            DispatchStatus::Interrupted => "interrupted",
            DispatchStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for DispatchStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        DispatchStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown status {s:?}; use one of in_flight, succeeded, failed, interrupted, cancelled"
                ))
            })
    }
}

/// How one attempt at one agent ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// The agent tried.
    pub agent_id: String,
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
    /// Milliseconds it took.
    pub latency_ms: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// How one attempt at one agent ended; stored in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Recorded before the agent is called; replaced when the attempt ends.
    InFlight,
    /// The agent answered.
    Succeeded,
    /// The tool's own error (final).
    ToolError,
    /// The agent failed (5xx, bad answer, connection, panic).
    Failed,
    /// No answer within the agent's timeout.
    Timeout,
    /// 429/503 with `Retry-After`.
    Overloaded,
    /// A policy refused the candidate; it was not called.
    Denied,
    /// A rate limit refused the candidate; it was not called.
    RateLimited,
    /// The process stopped during the call.
    Interrupted,
    /// The caller dropped the call during this attempt.
    Cancelled,
}

impl AttemptOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::InFlight => "in_flight",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::ToolError => "tool_error",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Overloaded => "overloaded",
            AttemptOutcome::Denied => "denied",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AttemptOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How to choose among the healthy agents serving a category. Stored in
/// dispatch records by its snake_case name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    /// Each agent in turn: exactly even over a stable set of agents.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The agent with the fewest invocations in flight (ties rotate).
    LeastLoaded,
    /// The highest priority; agents of equal priority take turns.
    Priority,
    /// Session affinity: the session's bound agent while it is healthy; new
    /// bindings go to the least loaded agent. Needs a session id.
    Sticky,
    /// The lowest latency estimate (peak-EWMA × load); unmeasured agents first.
    Fastest,
}

impl RoutingStrategy {
    /// Every strategy, in declaration order.
    pub const ALL: [RoutingStrategy; 6] = [
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Random,
        RoutingStrategy::LeastLoaded,
        RoutingStrategy::Priority,
        RoutingStrategy::Sticky,
        RoutingStrategy::Fastest,
    ];

    /// The snake_case name used in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::Random => "random",
            RoutingStrategy::LeastLoaded => "least_loaded",
            RoutingStrategy::Priority => "priority",
            RoutingStrategy::Sticky => "sticky",
            RoutingStrategy::Fastest => "fastest",
        }
    }
}

impl std::fmt::Display for RoutingStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RoutingStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RoutingStrategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown strategy {s:?}; use one of round_robin, random, least_loaded, priority, sticky, fastest"
                ))
            })
    }
}

/// The value under `tools/{category}/{tool}/{invocation_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRecord {
    /// The invocation's id (also the last key segment).
    pub invocation_id: String,
    /// The tool called.
    pub tool: String,
    /// Its category.
    pub category: ToolCategory,
    /// The agent of the last attempt (the one that answered, on success).
    pub agent_id: Option<String>,
    /// The session, if the call named one.
    pub session_id: Option<String>,
    /// The strategy used to choose agents.
    pub strategy: RoutingStrategy,
    /// Where the dispatch stands.
    pub status: DispatchStatus,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// When the dispatch started (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// When it finished, once it has.
    pub finished_at_ms: Option<u64>,
    /// Milliseconds from start to finish, once it has.
    pub latency_ms: Option<f64>,
    /// The final error, if it failed.
    pub error: Option<String>,
    /// The authenticated caller that asked for the call (its id, never a
    /// secret); absent for the local application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The call's arguments, as stored: redacted and size-capped (a string
    /// holding the start of their JSON when cut; see `input_truncated`).
    /// Absent when arguments are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Whether `input` was cut to the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub input_truncated: bool,
    /// A successful call's output, when output is recorded (redacted and
    /// size-capped like `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Whether `output` was cut to the size cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub output_truncated: bool,
    /// The W3C trace id of the call: the one its caller's `traceparent`
    /// named, or, while traces are exported, the one its span started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
