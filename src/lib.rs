//! Switchboard routes tool invocations across AI agents, and keeps everything it
//! knows in one policy-checked, transactional RocksDB key space.
//!
//! An application opens a [`Database`], hands it to a [`ToolDispatcher`],
//! registers agents (HTTP endpoints or local closures) for tool categories, and
//! invokes tools: the dispatcher picks an agent, calls it with failover, and
//! records every dispatch in the database. Every write (and, if asked, every
//! read) passes the database's policy hooks first.
//!
//! # Layers
//!
//! Each layer imports only from the layers before it (ARCHITECTURE.md has the
//! picture):
//!
//! - keys and records ([`namespace`]): what every key means, the JSON stored under it;
//! - [`policy`]: pure decisions (hook chain, globs, Rego, rate limits, decision log);
//! - storage ([`Database`], [`Transaction`], scans): commits through the policy chain;
//! - [`routing`]: which agent serves a call (registry, strategies, sessions, health);
//! - transport: how an agent is called (HTTP or a local closure);
//! - [`telemetry`]: OpenTelemetry traces of calls, exported over OTLP/HTTP (opt-in);
//! - dispatch ([`ToolDispatcher`]): the façade, the failover loop, dispatch records;
//! - [`identity`]: who is calling (issued API tokens, JWTs) as a [`Principal`];
//! - [`server`] and [`config`]: the HTTP API and its configuration file, the
//!   building blocks of the `switchboard` binary.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo() -> switchboard::Result<()> {
//! use switchboard::{Database, ToolDispatcher, ToolCategory, RoutingOptions, ToolError};
//! let db = Database::open("./agent_data")?;
//! let dispatcher = ToolDispatcher::new(db.clone());
//! dispatcher.register_local_agent("local_code", vec![ToolCategory::Code],
//!     |tool: String, input: serde_json::Value| async move {
//!         Ok::<_, ToolError>(serde_json::json!({ "tool": tool, "echo": input }))
//!     })?;
//! let r = dispatcher.invoke("code_exec", ToolCategory::Code,
//!     serde_json::json!({ "code": "print('hello')" }), RoutingOptions::new()).await?;
//! assert_eq!(r.agent_id, "local_code");
//! # Ok(()) }
//! ```
//!
//! # Where to look
//!
//! - Policies: [`PolicyEngine`] (closure hooks, Rego modules, rate limits) and
//!   `docs/policy.md`; [`PolicyContext`] says who is acting.
//! - Routing: [`ToolDispatcher`], [`AgentConfig`], [`RoutingStrategy`],
//!   [`RoutingOptions`], [`HealthCheckConfig`]; `docs/routing.md`.
//! - Reading what happened: [`Database::scan`] and [`Database::scan_from`] over
//!   the records in [`namespace`] ([`DispatchRecord`], [`AgentRecord`], ...);
//!   `docs/namespace.md` lists every key prefix.
//! - The server: [`server::run`] and `docs/server.md`.

#![warn(missing_docs)]

#[cfg(feature = "cluster")]
pub mod a2a;
pub mod cluster;
mod dispatch;
mod error;
pub mod identity;
pub mod namespace;
pub mod policy;
mod storage;
pub mod telemetry;
#[cfg(test)]
mod test_support;
mod transport;

/// The routing layer itself (registry, strategies, sessions, health). Its
/// public names are re-exported by the [`routing`] module below, which also
/// gathers the dispatcher a user of routing needs.
#[path = "routing/mod.rs"]
mod routing_layer;

/// Routing: everything needed to register agents and route tool calls to them.
///
/// ```
/// use switchboard::routing::{ToolDispatcher, ToolCategory, RoutingStrategy, AgentConfig};
/// ```
pub mod routing {
    pub use crate::dispatch::{InvocationResult, RoutingOptions, ToolDispatcher};
    pub use crate::namespace::ToolCategory;
    pub use crate::routing_layer::*;
    pub use crate::transport::{ToolError, MAX_RESPONSE_BYTES};
}

/// The server's configuration file: a building block of the `switchboard`
/// binary, public so the binary and its tests can use it.
pub mod config;
// MCP: every routed category as an MCP tool (its own header says more).
pub mod mcp;
/// The HTTP API: a building block of the `switchboard` binary, public so the
/// binary and its tests can serve it (see [`server::run`]).
pub mod server;

// Database and transactions: open a store, write atomically, scan prefixes.
pub use storage::{
    Connection, Database, DatabaseOptions, Durability, Page, ReservedWrites, Scan, ScanBuilder,
    Transaction, PAGE_HIDDEN_BUDGET,
};
// Policies stored in the database (`policies/{name}`), loaded by every open;
// and where the decisions of policies are logged (`policy_log/`).
pub use storage::{PolicyChange, StoredPolicy, DECISION_LOG, POLICIES};

// Policy: hooks, Rego, rate limits, the decision log, and who is acting.
pub use policy::{
    keys, Clock, CommandPolicy, Decision, DecisionKind, DecisionLogRetention, ManualClock,
    NetworkPolicy, Op, OperationKind, Phase, PolicyAction, PolicyContext, PolicyEngine,
    RateLimitOp, RateLimitScope, RegoEvaluator,
};
// Who is calling: the authenticated principal policies and records see.
pub use policy::{Principal, Scope};

// Routing and dispatch: register agents, invoke tools, recover after a crash.
pub use dispatch::{recover_interrupted, InvocationResult, RoutingOptions, ToolDispatcher};
// Calls as they complete (`ToolDispatcher::completed_calls`).
pub use dispatch::CompletedCall;
// What dispatch records keep of a call's arguments and output.
pub use dispatch::{DispatcherConfig, DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_OUTPUT_BYTES, REDACTED};
// MCP agents: the tools, prompts and resources discovered on them and how they are named.
pub use dispatch::{DiscoveredTool, DEFAULT_DISCOVERY_TTL};
pub use namespace::{
    mcp_prompt_key, mcp_resource_key, mcp_tool_key, schema_hash, CategoryRule, IdentityProvider,
    McpCommand, McpOfferKind, McpOfferRecord, McpServer, McpSpec, McpToolRecord, PrefixMode,
    TokenExchange, UpstreamOAuth,
};
pub use routing::{AgentConfig, AgentMetrics, AgentRegistry, HealthCheckConfig, RoutingStrategy};
pub use transport::{
    EventSink, InputAnswer, InputRelay, LogLevel, LogMessage, LogSink, Progress, ProgressSink,
    StreamEvent, TlsTrust, ToolError, TraceContext,
};

// Records a user reads back from scans, and the keys they live under.
pub use namespace::{
    agent_key, dispatch_key, session_key, AgentRecord, AgentStatus, AgentTransport, Attempt,
    AttemptOutcome, AuditFilter, DispatchRecord, DispatchStatus, SessionRecord, ToolCategory,
};

// Errors: one enum for every failure.
pub use error::{Error, Result};
