//! What the router knows about one agent: its registration (`AgentConfig`),
//! where it lives (as data: the transport layer calls it), and its live
//! health state ([`Health`]: the counters outlier detection keeps, the
//! ejection flag, a `Retry-After` pause) and statistics.

use super::endpoint::Endpoint;
use super::metrics::AgentStats;
use crate::namespace::{now_ms, A2aAgent, McpServer, ToolCategory};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The default time an agent gets to answer one invocation.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest per-call timeout an agent may be registered with (one day):
/// a longer one is a mistake (seconds given as milliseconds twice over), and
/// a bounded one keeps deadline arithmetic far from overflow.
pub const MAX_AGENT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A registration, built fluently:
///
/// ```
/// # use switchboard::{AgentConfig, ToolCategory};
/// let config = AgentConfig::new()
///     .with_tools(vec![ToolCategory::Code, ToolCategory::Shell])
///     .with_endpoint("http://127.0.0.1:8001/invoke")
///     .with_priority(10);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentConfig {
    pub(crate) tools: Vec<ToolCategory>,
    pub(crate) endpoint: Option<String>,
    pub(crate) health_url: Option<String>,
    pub(crate) priority: i32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) caller: Option<crate::policy::Principal>,
    pub(crate) mcp: Option<McpServer>,
    pub(crate) a2a: Option<A2aAgent>,
}

impl AgentConfig {
    /// An empty registration: add tools and an endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// The categories this agent serves.
    pub fn with_tools(mut self, tools: Vec<ToolCategory>) -> Self {
        self.tools = tools;
        self
    }

    /// Registers on behalf of `caller`: policies see it, and the record
    /// keeps its id (`registered_by`).
    pub fn with_caller(mut self, caller: crate::policy::Principal) -> Self {
        self.caller = Some(caller);
        self
    }

    /// The URL invocations are POSTed to (`http://` or `https://`).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Makes this an MCP agent at a streamable-HTTP `url` (both the
    /// stateless 2026-07-28 revision and the session-based 2025 ones): its
    /// calls are `tools/call`, its tools are discovered with `tools/list`.
    /// The first category of [`with_tools`](Self::with_tools) is the default
    /// category of its tools.
    pub fn with_mcp(mut self, url: impl Into<String>) -> Self {
        self.mcp = Some(McpServer::http(url));
        self
    }

    /// Makes this an MCP agent as described by `server` (a URL or a stdio
    /// command, declared tool names, category rules).
    pub fn with_mcp_server(mut self, server: McpServer) -> Self {
        self.mcp = Some(server);
        self
    }

    /// Makes this an A2A agent described by `agent` (its Agent Card's URL,
    /// declared skills, category rules): its skills are discovered from the
    /// card and routed by name; the first category of
    /// [`with_tools`](Self::with_tools) is the default category of its skills.
    pub fn with_a2a(mut self, agent: A2aAgent) -> Self {
        self.a2a = Some(agent);
        self
    }

    /// The URL health probes GET; defaults to the endpoint's `/health`.
    pub fn with_health_url(mut self, url: impl Into<String>) -> Self {
        self.health_url = Some(url.into());
        self
    }

    /// Higher is preferred under every strategy: agents of one priority form a
    /// tier, and lower tiers serve only when the higher ones have no healthy,
    /// usable agent. Default 0.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// How long one invocation may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// At most this many invocations at once; a busy agent is skipped.
    pub fn with_max_concurrency(mut self, max: u32) -> Self {
        self.max_concurrency = Some(max);
        self
    }
}

/// Health as tracked in memory; the record in the store follows it.
#[derive(Default)]
pub(crate) struct Health {
    pub(crate) unhealthy: AtomicBool,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) consecutive_successes: AtomicU32,
    /// Milliseconds since the epoch when it was last marked unhealthy.
    pub(crate) unhealthy_since_ms: AtomicU64,
    /// No new calls before this time (ms since the epoch; 0 = none), set from `Retry-After`.
    pub(crate) paused_until_ms: AtomicU64,
}

impl Health {
    /// Whether a `Retry-After` pause is running now.
    pub(crate) fn is_paused(&self) -> bool {
        let until = self.paused_until_ms.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }

    /// Honours an agent's `Retry-After`: no new calls until it has passed.
    pub(crate) fn pause_for(&self, pause: Duration) {
        let until = now_ms() + pause.as_millis() as u64;
        self.paused_until_ms.fetch_max(until, Ordering::AcqRel);
    }
}

/// An invocable agent as the router holds it.
pub(crate) struct Agent {
    pub(crate) id: String,
    /// Unique per registration; distinguishes a replaced agent from its successor.
    pub(crate) uid: u64,
    pub(crate) categories: Vec<ToolCategory>,
    pub(crate) priority: i32,
    pub(crate) timeout: Duration,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) endpoint: Endpoint,
    pub(crate) health_url: Option<reqwest::Url>,
    pub(crate) stats: Arc<AgentStats>,
    pub(crate) health: Health,
    /// The tools it serves when it serves named tools only (MCP agents):
    /// `None` serves every tool of its categories.
    pub(crate) served: RwLock<Option<Arc<ServedTools>>>,
}

/// One tool an agent serves by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServedTool {
    /// Its name on the agent (the name callers use may carry a prefix); for
    /// a resource or template, its URI or URI template.
    pub(crate) upstream: String,
    /// The category its calls are routed in.
    pub(crate) category: ToolCategory,
    /// What a call of it asks the agent for.
    pub(crate) kind: ServedKind,
}

/// What an MCP agent is asked for when a served name is called: a tool
/// (`tools/call`), a prompt (`prompts/get`), a listed resource
/// (`resources/read` of its URI), or a resource template (`resources/read`
/// of a URI the call names, which must match the template).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServedKind {
    Tool,
    Prompt,
    Resource,
    Template,
}

/// The tools an agent serves by name, by the name callers use.
pub(crate) type ServedTools = BTreeMap<String, ServedTool>;

impl Agent {
    pub(crate) fn is_healthy(&self) -> bool {
        !self.health.unhealthy.load(Ordering::Acquire)
    }

    pub(crate) fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Acquire)
    }

    /// Whether it can take one more call now: under its max concurrency and
    /// not inside a pause it asked for with `Retry-After`.
    pub(crate) fn has_capacity(&self) -> bool {
        !self.health.is_paused()
            && self
                .max_concurrency
                .is_none_or(|max| self.active() < max as u64)
    }

    pub(crate) fn serves(&self, category: &ToolCategory) -> bool {
        self.categories.contains(category)
    }

    /// The named tools it serves, if it serves named tools only.
    pub(crate) fn served(&self) -> Option<Arc<ServedTools>> {
        self.served.read().clone()
    }

    /// Whether it serves `tool` in `category`.
    pub(crate) fn serves_tool(&self, category: &ToolCategory, tool: &str) -> bool {
        match &*self.served.read() {
            None => self.serves(category),
            Some(served) => served.get(tool).is_some_and(|t| &t.category == category),
        }
    }

    /// What a call of `tool` asks the agent for, and under which name:
    /// the name as given, as a tool, when the agent does not serve it by name.
    pub(crate) fn upstream_of(&self, tool: &str) -> (ServedKind, String) {
        match self.served.read().as_ref().and_then(|s| s.get(tool)) {
            Some(served) => (served.kind, served.upstream.clone()),
            None => (ServedKind::Tool, tool.to_string()),
        }
    }
}
