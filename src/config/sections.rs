//! One struct per `[section]` of the file (besides `[cluster]`, in
//! `cluster.rs`), with its defaults and what it converts into. Checks live
//! in `check.rs`, the parts built at start in `apply.rs`.

use crate::dispatch::DispatcherConfig;
use crate::error::{Error, Result};
use crate::namespace::{McpSpec, ToolCategory};
use crate::policy::{DecisionLogRetention, RateLimitOp, RateLimitScope};
use crate::routing::{AgentConfig, HealthCheckConfig};
use crate::storage::{Durability, DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_MAX_VALUE_BYTES};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[mcp]`: what this node lets MCP agents do on it, and what `/mcp` lists.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// Absolute paths of the programs this node may start as stdio MCP
    /// servers, with any arguments (empty: none, besides the exact commands
    /// of this file's own `[[agents]]`). Checked at registration, for
    /// registrations from the cluster, and before every start.
    pub allow_commands: Vec<String>,
    /// Whether `/mcp` lists a category tool for each category HTTP or local
    /// agents serve; `false` lists only the tools MCP agents serve by name.
    pub category_tools: bool,
}

impl Default for McpSection {
    fn default() -> Self {
        McpSection {
            allow_commands: Vec::new(),
            category_tools: true,
        }
    }
}

/// `[auth]`: callers' identities besides the static `token`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `[auth.jwt]`: accept JWTs verified against these keys.
    pub jwt: Option<crate::identity::JwtSettings>,
    /// The canonical URI of `/mcp` (e.g. `https://switchboard.example/mcp`):
    /// the `resource` of its OAuth metadata, which a JWT's audience names.
    /// Unset: `{scheme}://{Host}/mcp` of each request.
    pub resource: Option<String>,
}

/// `[records]`: what a dispatch record keeps of its call (see
/// [`DispatcherConfig`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSection {
    /// Store each call's arguments (`input`).
    pub input: bool,
    /// Longest stored arguments, in bytes of JSON (cut past it, `input_truncated`).
    pub max_input_bytes: usize,
    /// Store each successful call's output (`output`).
    pub output: bool,
    /// Longest stored output, in bytes of JSON.
    pub max_output_bytes: usize,
    /// Field names (any depth) or dotted paths (from the top) masked before storing.
    pub redact: Vec<String>,
}

impl Default for RecordsSection {
    fn default() -> Self {
        let d = DispatcherConfig::default();
        RecordsSection {
            input: d.record_input,
            max_input_bytes: d.max_input_bytes,
            output: d.record_output,
            max_output_bytes: d.max_output_bytes,
            redact: d.redact,
        }
    }
}

impl RecordsSection {
    /// The dispatcher settings this section describes.
    pub fn dispatcher_config(&self) -> DispatcherConfig {
        DispatcherConfig {
            record_input: self.input,
            max_input_bytes: self.max_input_bytes,
            record_output: self.output,
            max_output_bytes: self.max_output_bytes,
            redact: self.redact.clone(),
        }
    }
}

/// One `[[rate_limits]]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    /// `put`, `delete`, `get` or `dispatch`.
    pub op: String,
    /// Operations allowed per window.
    pub max: u32,
    /// The window, in seconds (default 60).
    #[serde(default = "one_minute")]
    pub window_secs: u64,
    /// `global` (default), `per_agent`, `per_session` or `per_tool`.
    #[serde(default = "global")]
    pub scope: String,
}

fn one_minute() -> u64 {
    60
}

fn global() -> String {
    "global".into()
}

impl RateLimitEntry {
    /// The operation and scope this entry names, checked.
    pub fn parsed(&self) -> Result<(RateLimitOp, RateLimitScope)> {
        let op = match self.op.as_str() {
            "put" => RateLimitOp::Put,
            "delete" => RateLimitOp::Delete,
            "get" => RateLimitOp::Get,
            "dispatch" => RateLimitOp::Dispatch,
            other => {
                return Err(Error::invalid(format!(
                    "op {other:?} is not put, delete, get or dispatch"
                )))
            }
        };
        let scope = match self.scope.as_str() {
            "global" => RateLimitScope::Global,
            "per_agent" => RateLimitScope::PerAgent,
            "per_session" => RateLimitScope::PerSession,
            "per_tool" => RateLimitScope::PerTool,
            other => {
                return Err(Error::invalid(format!(
                    "scope {other:?} is not global, per_agent, per_session or per_tool"
                )))
            }
        };
        if self.max == 0 || self.window_secs == 0 {
            return Err(Error::invalid("max and window_secs must be at least 1"));
        }
        Ok((op, scope))
    }
}

/// `[decision_log]`: how much of `policy_log/` to keep.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogSection {
    /// Decisions kept at most; older ones are pruned as new ones arrive.
    pub max_entries: u64,
    /// Decisions older than this many seconds are pruned (none: no age limit).
    pub max_age_secs: Option<u64>,
}

impl Default for DecisionLogSection {
    fn default() -> Self {
        let d = DecisionLogRetention::default();
        DecisionLogSection {
            max_entries: d.max_entries,
            max_age_secs: d.max_age.map(|a| a.as_secs()),
        }
    }
}

/// One `[[agents]]` table: an HTTP, MCP or A2A agent, as `PUT /v1/agents/{id}`
/// takes it (an MCP `command`, a stdio server, only here).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent's id.
    pub id: String,
    /// The categories it serves.
    pub tools: Vec<ToolCategory>,
    /// Its `http://` endpoint (an HTTP agent).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An MCP server instead: `mcp = "http://…/mcp"`, or a table with `url`
    /// or `command = { program, args, env, cwd }`, `tool_names`,
    /// `category_rules`, `prefix`, `discovery_ttl_ms`.
    #[serde(default)]
    pub mcp: Option<McpSpec>,
    /// An A2A agent instead: `a2a = "http://…/.well-known/agent-card.json"`
    /// (its Agent Card), or a table with `card_url`, `skills`,
    /// `category_rules`, `prefix`, `discovery_ttl_ms`, `headers`.
    #[serde(default)]
    pub a2a: Option<crate::namespace::A2aSpec>,
    /// Its health URL (default: `scheme://host:port/health` of the endpoint).
    pub health_url: Option<String>,
    /// Its priority tier: higher is preferred (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Its per-call timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Calls it may have in flight at once.
    pub max_concurrency: Option<u32>,
}

impl AgentEntry {
    /// The registration this entry describes.
    pub fn agent_config(&self) -> AgentConfig {
        let mut config = AgentConfig::new()
            .with_tools(self.tools.clone())
            .with_priority(self.priority);
        if let Some(endpoint) = &self.endpoint {
            config = config.with_endpoint(endpoint.clone());
        }
        if let Some(mcp) = &self.mcp {
            config = config.with_mcp_server(mcp.clone().into_server());
        }
        if let Some(a2a) = &self.a2a {
            config = config.with_a2a(a2a.clone().into_agent());
        }
        if let Some(url) = &self.health_url {
            config = config.with_health_url(url.clone());
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

/// `[limits]`: what one client, or all of them, may hold of the server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A connection must send a request's headers within this long.
    pub header_read_timeout_ms: u64,
    /// A request is answered 504 after this long (an invoke still finishes
    /// and is recorded).
    pub request_timeout_ms: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// `POST /v1/invoke` calls in flight at once; more are answered 503.
    pub max_inflight_invokes: usize,
}

/// `[network]`: the agent address policy (see `policy::NetworkPolicy`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// CIDR ranges agents may be reached at even if refused by default.
    pub allow: Vec<String>,
    /// CIDR ranges agents may never be reached at.
    pub deny: Vec<String>,
}

/// `[tls]`: certificates. Relative paths are resolved against the config
/// file's directory.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// A PEM file of CA certificates trusted for `https://` agents and health
    /// URLs, besides the built-in webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The PEM certificate chain to serve HTTPS with (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 120_000,
            max_connections: 1024,
            max_inflight_invokes: 512,
        }
    }
}

/// `[health]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Whether the background health checks run.
    pub enabled: bool,
    /// Milliseconds between probe rounds.
    pub interval_ms: u64,
    /// Milliseconds a probe may take before it counts as a failure.
    pub timeout_ms: u64,
    /// Consecutive failed probes that mark an agent unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed probes that mark an unhealthy agent healthy again.
    pub healthy_threshold: u32,
    /// Share of a priority tier that may be ejected before it panics.
    pub panic_threshold: f64,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// When a commit counts as durable.
    pub durability: Durability,
    /// The largest value a write may store, in bytes.
    pub max_value_bytes: usize,
    /// The RocksDB block cache size, in bytes.
    pub block_cache_bytes: usize,
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = HealthCheckConfig::default();
        HealthSection {
            enabled: true,
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            unhealthy_threshold: d.unhealthy_threshold,
            healthy_threshold: d.healthy_threshold,
            panic_threshold: d.panic_threshold,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            durability: Durability::Buffered,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}
