//! Dispatch: the public face of Switchboard. This file owns the
//! [`ToolDispatcher`] façade (registration, metrics, health-check lifecycle,
//! `invoke`'s validation) and the call options and result types.
//!
//! - `call`: one `invoke` in progress, the explicit failover loop;
//! - `decide`: the one function that says what happens after an attempt;
//! - `record`: the dispatch record's writes (intent, outcome);
//! - `recover`: marking dispatches a previous process left in flight;
//! - `completed`: announcing each call whose outcome was written, to listeners;
//! - `spans`: the call's OpenTelemetry spans, while an exporter runs;
//! - `discovery`: the named tools of MCP agents (`tools/list`, judged by
//!   the policies under `mcp_tools/`, collisions prefixed).
//!
//! One `invoke`, as writes:
//!
//! 1. routing picks a candidate (the session's bound agent first);
//! 2. the dispatch record (plus the in-flight index entry and any session
//!    binding) commits with the candidate's `agent_id` in the policy context;
//!    a Deny moves on to the next candidate;
//! 3. the agent is called; a retryable failure fails over to another
//!    candidate, never one already tried, up to `max_attempts` calls;
//! 4. the outcome is written to the same record and the in-flight entry is
//!    removed in one transaction; after-hooks run.

mod audit;
mod call;
mod completed;
mod decide;
mod discovery;
mod offers;
mod record;
mod recover;
mod spans;

pub use audit::{DispatcherConfig, DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_OUTPUT_BYTES, REDACTED};
pub use completed::CompletedCall;
pub use discovery::{DiscoveredTool, DEFAULT_DISCOVERY_TTL};
pub use offers::DiscoveredOffer;
pub use recover::recover_interrupted;

use crate::error::{Error, Result};
use crate::namespace::{validate_id, ToolCategory};
use crate::policy::Principal;
use crate::routing::affinity::{Affinity, Route};
use crate::routing::health::{self, HealthTask, Probe};
use crate::routing::metrics::DispatchCounters;
use crate::routing::HealthCheckConfig;
use crate::routing::{AgentConfig, AgentMetrics, AgentRegistry, RoutingStrategy, ToolRouter};
use crate::storage::Database;
use crate::transport::http::build_client;
use crate::transport::{local_handler, Callers, ToolError};
use crate::transport::{EventSink, InputRelay, LogSink, ProgressSink, TraceContext};
use call::Call;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Agent calls one `invoke` makes at most, unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// How to route one call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingOptions {
    /// How the agent is chosen.
    pub strategy: RoutingStrategy,
    /// Calls with the same session id go to the same agent while it stays available.
    pub session_id: Option<String>,
    /// Agent calls to make at most (failovers included); at least 1.
    pub max_attempts: u32,
    /// Who is calling: written into every policy context and the dispatch
    /// record. `None` is the local application itself (no caller entries).
    #[serde(skip)]
    pub caller: Option<Principal>,
    /// Where progress the agent reports during the call goes (MCP agents
    /// report it when asked: a sink asks them).
    #[serde(skip)]
    pub progress: Option<ProgressSink>,
    /// Who answers what the agent asks the client during the call
    /// (sampling, elicitation, roots); without one such a call fails.
    #[serde(skip)]
    pub input_relay: Option<InputRelay>,
    /// Where the log messages the agent sends about the call go (MCP agents
    /// send them on the call's response stream).
    #[serde(skip)]
    pub log: Option<LogSink>,
    /// The caller's W3C trace context, passed on to the agent.
    #[serde(skip)]
    pub trace: Option<TraceContext>,
    /// Where the events of a streamed call go (an A2A agent's stream); the
    /// call's output is then its last event.
    #[serde(skip)]
    pub events: Option<EventSink>,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            strategy: RoutingStrategy::default(),
            session_id: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            caller: None,
            progress: None,
            input_relay: None,
            log: None,
            trace: None,
            events: None,
        }
    }
}

impl RoutingOptions {
    /// Round robin, no session, 3 attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the agent with `strategy`.
    pub fn with_strategy(mut self, strategy: RoutingStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sends the progress the agent reports during the call to `sink`.
    pub fn with_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Lets `relay` answer what the agent asks the client during the call.
    pub fn with_input_relay(mut self, relay: InputRelay) -> Self {
        self.input_relay = Some(relay);
        self
    }

    /// Relays a streamed call's events to `sink` as they arrive.
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Sends the log messages the agent sends about the call to `sink`.
    pub fn with_log(mut self, sink: LogSink) -> Self {
        self.log = Some(sink);
        self
    }

    /// Passes the caller's trace context on to the agent.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Binds the call to a session: its agent serves every call of the session
    /// while healthy.
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Calls as `caller`: policies see it (`caller`, `roles`, `claim.*`)
    /// and the dispatch record keeps its id.
    pub fn with_caller(mut self, caller: Principal) -> Self {
        self.caller = Some(caller);
        self
    }

    /// Tries at most `attempts` agents (at least one).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
}

/// What a successful `invoke` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    /// The id of this invocation; its record lives under `tools/<category>/<tool>/<id>`.
    pub invocation_id: String,
    /// The agent that answered.
    pub agent_id: String,
    /// The agent's answer.
    pub output: serde_json::Value,
    /// Agent calls made (1 unless it failed over).
    pub attempts: u32,
    /// Milliseconds the successful attempt took.
    pub latency_ms: f64,
}

struct Inner {
    db: Database,
    registry: Arc<AgentRegistry>,
    router: Arc<ToolRouter>,
    affinity: Affinity,
    callers: Callers,
    probe: Arc<dyn Probe>,
    health: RwLock<Option<HealthCheckConfig>>,
    /// The running background health task; replacing or dropping it stops it.
    health_task: Mutex<Option<HealthTask>>,
    /// Denials, rate-limit refusals and failovers, for `/metrics`.
    counters: DispatchCounters,
    /// What dispatch records keep of each call.
    config: RwLock<Arc<DispatcherConfig>>,
    /// The tools MCP agents serve by name.
    discovery: discovery::Discovery,
    /// Calls whose outcome was written, for listeners.
    completions: completed::Completions,
    /// Where A2A task affinity is shared with other nodes (cluster mode).
    shared_tasks: RwLock<Option<Arc<dyn crate::routing::shared::SharedTasks>>>,
}

/// Routes tool invocations to agents. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ToolDispatcher {
    inner: Arc<Inner>,
}

impl ToolDispatcher {
    /// A dispatcher over `db`: loads persisted registrations and marks
    /// dispatches left in flight by a previous process as interrupted.
    /// Problems are logged; use [`try_new`](Self::try_new) to get them as errors.
    pub fn new(db: Database) -> Self {
        match Self::try_new(db.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "could not load persisted state; starting with no agents");
                Self::build(db, |db, router| Ok(AgentRegistry::empty(db, router)))
                    .expect("building an empty registry cannot fail")
            }
        }
    }

    /// Like [`new`](Self::new), but fails if stored state cannot be read.
    pub fn try_new(db: Database) -> Result<Self> {
        let recovered = recover_interrupted(&db)?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "marked dispatches left in flight by the last process as interrupted"
            );
        }
        Self::build(db, AgentRegistry::load)
    }

    fn build(
        db: Database,
        load: impl FnOnce(Database, Arc<ToolRouter>) -> Result<AgentRegistry>,
    ) -> Result<Self> {
        let router = Arc::new(ToolRouter::new());
        let registry = Arc::new(load(db.clone(), router.clone())?);
        let callers = Callers::new(build_client()?);
        let dispatcher = ToolDispatcher {
            inner: Arc::new(Inner {
                affinity: Affinity::new(db.clone(), registry.clone(), router.clone()),
                router,
                db,
                registry,
                probe: Arc::new(callers.probe()),
                callers,
                health: RwLock::new(None),
                health_task: Mutex::new(None),
                counters: DispatchCounters::default(),
                config: RwLock::new(Arc::new(DispatcherConfig::default())),
                discovery: discovery::Discovery::default(),
                completions: completed::Completions::default(),
                shared_tasks: RwLock::new(None),
            }),
        };
        let weak = Arc::downgrade(&dispatcher.inner);
        dispatcher
            .inner
            .callers
            .mcp()
            .set_events(Arc::new(move |agent_id: &str, uid: u64| {
                discovery::Discovery::on_event(&weak, agent_id, uid)
            }));
        if let Err(e) = dispatcher.inner.discovery.restore(&dispatcher.inner) {
            tracing::warn!(error = %e, "could not restore discovered MCP tools");
        }
        Ok(dispatcher)
    }

    /// Lists the tools of every registered MCP agent again, in the
    /// background (on the current tokio runtime). `serve` and `switchboard
    /// mcp` call it at start; until then, the tools stored by the last run
    /// route.
    pub fn start_discovery(&self) {
        for agent in self.inner.registry.live_agents() {
            if matches!(
                agent.endpoint,
                crate::routing::endpoint::Endpoint::Mcp(_)
                    | crate::routing::endpoint::Endpoint::A2a(_)
            ) {
                self.spawn_discovery(&agent.id);
            }
        }
    }

    /// Lists an MCP agent's tools in the background, if a tokio runtime runs.
    fn spawn_discovery(&self, agent_id: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (dispatcher, id) = (self.clone(), agent_id.to_string());
        handle.spawn(async move {
            if let Err(e) = dispatcher.discover_tools(&id).await {
                tracing::warn!(agent_id = %id, error = %e, "tool discovery failed (an MCP tools/list, an A2A Agent Card); retried when its TTL expires");
            }
        });
    }

    /// Lists an MCP agent's tools now (`tools/list`, every page), writes new
    /// and changed ones under `mcp_tools/{agent}/{tool}` through the policy
    /// chain, and routes those the policies allow. Returns the agent's
    /// routed tools. Registration starts this in the background; await it
    /// to know the tools are routed.
    pub async fn discover_tools(&self, agent_id: &str) -> Result<Vec<DiscoveredTool>> {
        validate_id("agent id", agent_id)?;
        self.inner.discovery.discover(self, agent_id).await
    }

    /// Fetches the Agent Card `a2a` names and checks it as discovery will
    /// (its signatures, when the registration asks for a signed card; an
    /// interface Switchboard speaks), within `timeout`.
    pub async fn check_a2a_card(
        &self,
        a2a: &crate::namespace::A2aAgent,
        timeout: std::time::Duration,
    ) -> Result<()> {
        // Only addresses the network policy allows are fetched.
        crate::routing::endpoint::parse_endpoint(&a2a.card_url)?;
        if let Some(url) = a2a
            .verify_signature
            .as_ref()
            .and_then(|keys| keys.jwks_url.as_ref())
        {
            crate::routing::endpoint::parse_endpoint(url)?;
        }
        self.inner
            .callers
            .a2a()
            .check_card(a2a, timeout)
            .await
            .map_err(Error::invalid)
    }

    /// Every tool MCP agents serve by name, by agent then name.
    pub fn discovered_tools(&self) -> Vec<DiscoveredTool> {
        self.inner.discovery.list()
    }

    /// The shortest time Switchboard keeps an MCP agent's lists before it
    /// reads them again (the agent's `ttlMs`, `discovery_ttl_ms`, else
    /// [`DEFAULT_DISCOVERY_TTL`]); `None` while no MCP agent was listed.
    pub(crate) fn mcp_list_ttl(&self) -> Option<std::time::Duration> {
        self.inner.discovery.shortest_ttl()
    }

    /// Every prompt, resource and resource template MCP agents offer, by
    /// agent, then kind and name.
    pub fn discovered_offers(&self) -> Vec<DiscoveredOffer> {
        self.inner.discovery.list_offers()
    }

    /// Changes whenever the routed tools may have changed: a registration,
    /// a removal, or a change of the tools, prompts or resources MCP agents
    /// serve.
    pub fn tools_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.discovery.subscribe()
    }

    /// Each call whose outcome is written from now on, as it is written
    /// (a receiver that falls more than a thousand calls behind is told how
    /// many it missed). Costs the calls nothing while no receiver exists.
    pub fn completed_calls(&self) -> tokio::sync::broadcast::Receiver<CompletedCall> {
        self.inner.completions.subscribe()
    }

    /// Denials, rate-limit refusals and failovers so far (for `/metrics`).
    pub(crate) fn counters(&self) -> &DispatchCounters {
        &self.inner.counters
    }

    /// Sets what dispatch records keep of each call from now on: the
    /// arguments (size-capped), optionally the output, and which fields are
    /// masked before they are stored. Refuses an invalid redaction rule.
    pub fn set_config(&self, config: DispatcherConfig) -> Result<()> {
        config.validate()?;
        *self.inner.config.write() = Arc::new(config);
        Ok(())
    }

    /// What dispatch records keep of each call.
    pub fn config(&self) -> DispatcherConfig {
        (**self.inner.config.read()).clone()
    }

    /// The database it writes to.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// Shares registrations and session bindings with other nodes through
    /// these hooks (cluster mode); `None` keeps them on this node.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_shared(
        &self,
        sink: Option<Arc<dyn crate::routing::shared::RegistrationSink>>,
        bindings: Option<Arc<dyn crate::routing::shared::SessionBindings>>,
    ) {
        self.inner.registry.set_sink(sink);
        self.inner.affinity.set_shared(bindings);
    }

    /// Shares A2A task affinity with other nodes through `tasks` (cluster
    /// mode); `None` keeps it on this node.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_shared_tasks(
        &self,
        tasks: Option<Arc<dyn crate::routing::shared::SharedTasks>>,
    ) {
        *self.inner.shared_tasks.write() = tasks;
    }

    /// Where A2A task affinity is shared with other nodes, in cluster mode.
    pub(crate) fn shared_tasks(&self) -> Option<Arc<dyn crate::routing::shared::SharedTasks>> {
        self.inner.shared_tasks.read().clone()
    }

    /// The registry (registrations and their records).
    pub fn registry(&self) -> &AgentRegistry {
        &self.inner.registry
    }

    /// Registers an HTTP or MCP agent; an existing id is replaced. An MCP
    /// agent's tools are then discovered in the background (see
    /// [`discover_tools`](Self::discover_tools)). A stdio command's relative
    /// program path and `cwd` are made absolute against this process's
    /// working directory and stored so.
    pub fn register_agent(&self, agent_id: &str, mut config: AgentConfig) -> Result<()> {
        if let Some(command) = config.mcp.as_mut().and_then(|m| m.command.as_mut()) {
            let here = std::env::current_dir().map_err(|e| {
                Error::invalid(format!(
                    "cannot resolve the stdio command's relative paths: no working directory ({e})"
                ))
            })?;
            command.resolve_relative_paths(&here);
        }
        let mcp = config.mcp.is_some() || config.a2a.is_some();
        self.inner.registry.register(agent_id, config)?;
        self.forget_replaced_handlers();
        self.inner.discovery.bump();
        if mcp {
            self.spawn_discovery(agent_id);
        }
        Ok(())
    }

    /// Registers an in-process agent serving `tools`; an existing id is replaced.
    pub fn register_local_agent<F, Fut>(
        &self,
        agent_id: &str,
        tools: Vec<ToolCategory>,
        handler: F,
    ) -> Result<()>
    where
        F: Fn(String, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<serde_json::Value, ToolError>> + Send + 'static,
    {
        self.register_local_agent_with(agent_id, AgentConfig::new().with_tools(tools), handler)
    }

    /// Registers an in-process agent with a full configuration (its endpoint,
    /// if any, is ignored).
    pub fn register_local_agent_with<F, Fut>(
        &self,
        agent_id: &str,
        config: AgentConfig,
        handler: F,
    ) -> Result<()>
    where
        F: Fn(String, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<serde_json::Value, ToolError>> + Send + 'static,
    {
        let inner = &self.inner;
        // Bound before the agent is routable, so no call finds it unbound.
        let uid = inner.registry.reserve_uid();
        inner.callers.bind_local(uid, local_handler(handler));
        let result = inner.registry.register_local(agent_id, config, uid);
        self.forget_replaced_handlers();
        if result.is_ok() {
            inner.discovery.bump();
        }
        result
    }

    /// Removes an agent.
    pub fn unregister_agent(&self, agent_id: &str) -> Result<()> {
        self.unregister_agent_as(agent_id, None)
    }

    /// Removes an agent on behalf of `caller` (in the policy context of the
    /// delete; `None` is the local application).
    pub fn unregister_agent_as(&self, agent_id: &str, caller: Option<&Principal>) -> Result<()> {
        let result = self.inner.registry.unregister_as(agent_id, caller);
        self.forget_replaced_handlers();
        if result.is_ok() {
            self.inner.discovery.forget(&self.inner, agent_id);
            self.inner.discovery.bump();
        }
        result
    }

    /// Applies a registration read from the cluster (another node's, or
    /// anything written into etcd): it must pass this node's checks, command
    /// allow-list and policy chain as a local one does, else it is refused
    /// (an error) and nothing changes. An MCP agent's tools are then
    /// discovered here too, in the background on the current runtime.
    #[cfg(feature = "cluster")]
    pub(crate) fn apply_shared_registration(
        &self,
        record: crate::namespace::AgentRecord,
    ) -> Result<()> {
        let mcp = matches!(
            record.transport,
            crate::namespace::AgentTransport::Mcp(_) | crate::namespace::AgentTransport::A2a(_)
        );
        let id = record.agent_id.clone();
        if self.inner.registry.apply_shared(record)? {
            self.forget_replaced_handlers();
            self.inner.discovery.bump();
            if mcp {
                self.spawn_discovery(&id);
            }
        }
        Ok(())
    }

    /// Adopts the binding of `session_id` the cluster holds (`held`) in
    /// place of the one this node made on its own (to `local_agent`) while
    /// the cluster could not be reached; nothing if the session is bound
    /// otherwise here by now. Returns whether the binding was replaced.
    #[cfg(feature = "cluster")]
    pub(crate) fn apply_shared_binding(
        &self,
        session_id: &str,
        local_agent: &str,
        held: &crate::namespace::SessionRecord,
    ) -> Result<bool> {
        self.inner.affinity.adopt(session_id, local_agent, held)
    }

    /// Follows a session binding another cluster node made, if this node
    /// holds a different binding of that session.
    #[cfg(feature = "cluster")]
    pub(crate) fn follow_shared_binding(
        &self,
        session_id: &str,
        held: &crate::namespace::SessionRecord,
    ) -> Result<bool> {
        self.inner.affinity.follow(session_id, held)
    }

    /// Applies a removal another cluster node made.
    #[cfg(feature = "cluster")]
    pub(crate) fn apply_shared_removal(&self, agent_id: &str) -> Result<()> {
        if self.inner.registry.remove_shared(agent_id)? {
            self.forget_replaced_handlers();
            self.inner.discovery.forget(&self.inner, agent_id);
            self.inner.discovery.bump();
        }
        Ok(())
    }

    fn forget_replaced_handlers(&self) {
        let registry = &self.inner.registry;
        self.inner
            .callers
            .retain_local(|uid| registry.is_current(uid));
    }

    /// Every registered agent id, sorted.
    pub fn list_agents(&self) -> Vec<String> {
        self.inner.registry.list()
    }

    /// Per-agent metrics.
    pub fn get_metrics(&self) -> HashMap<String, AgentMetrics> {
        self.inner.registry.metrics()
    }

    /// Starts (or reconfigures) health checking: HTTP agents are probed every
    /// interval, and consecutive invocation failures mark agents unhealthy.
    /// Runs on the current tokio runtime, or on its own thread outside one.
    pub fn enable_health_checks(&self, config: HealthCheckConfig) {
        *self.inner.health.write() = Some(config.clone());
        self.inner
            .router
            .set_panic_threshold(config.panic_threshold);
        let task = HealthTask::start(
            Arc::downgrade(&self.inner.registry),
            self.inner.probe.clone(),
            config,
        );
        // The previous task (if any) stops when its guard is dropped here.
        *self.inner.health_task.lock() = Some(task);
    }

    /// Stops health checking; agents keep their current health.
    pub fn disable_health_checks(&self) {
        *self.inner.health.write() = None;
        self.inner.health_task.lock().take();
    }

    /// Runs one round of health probes now (what the background task does
    /// every interval). Does nothing unless health checks are enabled.
    pub async fn check_health_now(&self) {
        let config = self.inner.health.read().clone();
        if let Some(config) = config {
            health::check_round(&self.inner.registry, &self.inner.probe, &config).await;
        }
    }

    /// Routes one tool call to an agent and returns its output.
    ///
    /// Runs on a tokio runtime with time and I/O enabled (`enable_all()`):
    /// every call runs under its agent's timeout, and HTTP agents need the
    /// I/O driver.
    pub async fn invoke(
        &self,
        tool: &str,
        category: ToolCategory,
        input: serde_json::Value,
        options: RoutingOptions,
    ) -> Result<InvocationResult> {
        validate_id("tool name", tool)?;
        category.validate()?;
        if let Some(session) = &options.session_id {
            validate_id("session id", session)?;
        }
        if options.strategy == RoutingStrategy::Sticky && options.session_id.is_none() {
            return Err(Error::invalid(
                "the sticky strategy needs a session id; add with_session_id(..)",
            ));
        }
        if options.max_attempts == 0 {
            return Err(Error::invalid("max_attempts must be at least 1"));
        }
        let call = Call::new(self, tool, category, input, options);
        let span = call.span();
        let result = call.run().await;
        if let Some(span) = span {
            span.finish(result.as_ref().err());
        }
        result
    }

    /// Whether an [`invoke`](Self::invoke) of `tool` may block the thread
    /// that polls it: its records are fsynced (`Durability::Sync`), or a hook
    /// that may block (Rego, or closures added through
    /// [`PolicyEngine::with_blocking_hooks`](crate::PolicyEngine::with_blocking_hooks))
    /// covers them. A call that may not only computes and writes buffered
    /// records until it waits on something (an agent's answer): a language
    /// binding can start it on its own event-loop thread and move it to the
    /// runtime only if it has to wait.
    pub fn invoke_may_block(
        &self,
        tool: &str,
        category: &ToolCategory,
        options: &RoutingOptions,
    ) -> bool {
        self.inner.db.commit_may_block(|| {
            let id = crate::namespace::new_invocation_id();
            let mut keys = vec![
                crate::namespace::dispatch_key(category, tool, &id),
                crate::namespace::inflight_key(&id),
            ];
            keys.extend(
                options
                    .session_id
                    .as_deref()
                    .map(crate::namespace::session_key),
            );
            keys
        })
    }

    /// The agent a call with these options would be routed to now, without
    /// calling it or writing anything (the session binding is read, not
    /// written). `None` if no agent is available.
    pub fn select_agent(
        &self,
        category: &ToolCategory,
        options: &RoutingOptions,
    ) -> Result<Option<String>> {
        category.validate()?;
        if let Some(session) = &options.session_id {
            validate_id("session id", session)?;
        }
        Ok(self
            .inner
            .affinity
            .choose(
                &Route {
                    dry_run: true,
                    ..route(category, None, options)
                },
                &[],
            )?
            .map(|c| c.lease.agent.id.clone()))
    }
}

/// What routing needs to know of a call with these options.
fn route<'a>(
    category: &'a ToolCategory,
    tool: Option<&'a str>,
    options: &'a RoutingOptions,
) -> Route<'a> {
    Route {
        category,
        tool,
        strategy: options.strategy,
        session_id: options.session_id.as_deref(),
        dry_run: false,
    }
}
