//! The dispatcher: the public face of routing. One `invoke` follows the brief's
//! flow as writes:
//!
//! 1. the router picks a candidate (the session's bound agent first);
//! 2. the dispatch record (plus the in-flight index entry and any session
//!    binding) commits with the candidate's `agent_id` in the policy context;
//!    a Deny moves on to the next candidate;
//! 3. the agent is called; a retryable failure fails over to another
//!    candidate, never one already tried, up to `max_attempts` calls;
//! 4. the outcome is written to the same record and the in-flight entry is
//!    removed in one transaction; after-hooks run.

use crate::error::{Error, Result};
use crate::namespace::{
    dispatch_key, inflight_key, new_invocation_id, now_ms, session_key, validate_id, Attempt,
    DispatchRecord, DispatchStatus, SessionRecord, ToolCategory, INFLIGHT,
};
use crate::policy::PolicyContext;
use crate::routing::agent::Agent;
use crate::routing::health::{self, HealthCheckConfig};
use crate::routing::metrics::DispatchCounters;
use crate::routing::router::Lease;
use crate::routing::{AgentConfig, AgentMetrics, AgentRegistry, RoutingStrategy, ToolRouter};
use crate::storage::Database;
use crate::transport::{local_handler, Failure, ToolError, WireRequest};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Agent calls one `invoke` makes at most, unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const SESSION_STRIPES: usize = 64;

/// How to route one call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingOptions {
    pub strategy: RoutingStrategy,
    pub session_id: Option<String>,
    /// Agent calls to make at most (failovers included); at least 1.
    pub max_attempts: u32,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            strategy: RoutingStrategy::default(),
            session_id: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl RoutingOptions {
    /// Round robin, no session, 3 attempts.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_strategy(mut self, strategy: RoutingStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Binds the call to a session: its agent serves every call of the session
    /// while healthy.
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
}

/// What a successful `invoke` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    pub invocation_id: String,
    pub agent_id: String,
    pub output: serde_json::Value,
    /// Agent calls made (1 unless it failed over).
    pub attempts: u32,
    pub latency_ms: f64,
}

struct Inner {
    db: Database,
    registry: Arc<AgentRegistry>,
    router: Arc<ToolRouter>,
    client: reqwest::Client,
    health: RwLock<Option<HealthCheckConfig>>,
    health_generation: Arc<AtomicU64>,
    session_locks: Vec<Mutex<()>>,
    counters: crate::routing::metrics::DispatchCounters,
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
        let client = crate::transport::http_client()?;
        Ok(ToolDispatcher {
            inner: Arc::new(Inner {
                db,
                registry,
                router,
                client,
                health: RwLock::new(None),
                health_generation: Arc::new(AtomicU64::new(0)),
                session_locks: (0..SESSION_STRIPES).map(|_| Mutex::new(())).collect(),
                counters: Default::default(),
            }),
        })
    }

    /// Denials, rate-limit refusals and failovers so far (for `/metrics`).
    pub(crate) fn counters(&self) -> &crate::routing::metrics::DispatchCounters {
        &self.inner.counters
    }

    /// The database it writes to.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The registry (registrations and their records).
    pub fn registry(&self) -> &AgentRegistry {
        &self.inner.registry
    }

    /// Registers an HTTP agent; an existing id is replaced.
    pub fn register_agent(&self, agent_id: &str, config: AgentConfig) -> Result<()> {
        self.inner.registry.register(agent_id, config)
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
        self.inner
            .registry
            .register_local(agent_id, config, local_handler(handler))
    }

    /// Removes an agent.
    pub fn unregister_agent(&self, agent_id: &str) -> Result<()> {
        self.inner.registry.unregister(agent_id)
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
        let generation = self.inner.health_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let registry = Arc::downgrade(&self.inner.registry);
        let client = self.inner.client.clone();
        let current = self.inner.health_generation.clone();
        let task = async move {
            let stop_when_replaced = async {
                while current.load(Ordering::Acquire) == generation {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                _ = health::run(registry, client, config) => {}
                _ = stop_when_replaced => {}
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("switchboard-health".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                            Ok(rt) => rt.block_on(task),
                            Err(e) => tracing::error!(error = %e, "health checks could not start a runtime"),
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "health checks could not start a thread");
                }
            }
        }
    }

    /// Stops health checking; agents keep their current health.
    pub fn disable_health_checks(&self) {
        *self.inner.health.write() = None;
        self.inner.health_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs one round of health probes now (what the background task does
    /// every interval). Does nothing unless health checks are enabled.
    pub async fn check_health_now(&self) {
        let config = self.inner.health.read().clone();
        if let Some(config) = config {
            health::check_round(&self.inner.registry, &self.inner.client, &config).await;
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
        Call::new(self, tool, category, input, options).run().await
    }

    /// The next agent to try: the session's bound agent if it can serve,
    /// else one chosen by the strategy, never one in `tried`. `None` when
    /// every candidate is used up. Also says whether the session binding must
    /// be (re)written.
    fn choose(
        &self,
        category: &ToolCategory,
        options: &RoutingOptions,
        tried: &[u64],
    ) -> Result<Option<Candidate>> {
        let inner = &self.inner;
        let select = || {
            let strategy = match options.strategy {
                RoutingStrategy::Sticky => RoutingStrategy::LeastLoaded,
                other => other,
            };
            inner.router.select(category, strategy, tried)
        };
        let unbound = |lease| Candidate {
            lease,
            binding: None,
        };
        let Some(session_id) = options.session_id.as_deref() else {
            return Ok(select().map(unbound));
        };
        let existing: Option<SessionRecord> = match inner
            .db
            .get_unjudged(&session_key(session_id))?
        {
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(binding) => Some(binding),
                Err(e) => {
                    tracing::warn!(session_id, error = %e, "session binding does not decode; rebinding");
                    None
                }
            },
            None => None,
        };
        let now = now_ms();
        let bind = |lease: Lease, created_at_ms: u64| {
            let binding = SessionRecord {
                agent_id: lease.agent.id.clone(),
                category: category.clone(),
                created_at_ms,
                last_used_ms: now,
            };
            Candidate {
                lease,
                binding: Some(binding),
            }
        };
        let Some(existing) = existing else {
            return Ok(select().map(|lease| bind(lease, now)));
        };
        Ok(match inner.registry.live(&existing.agent_id) {
            // The session's agent does not do this kind of work: route this
            // call freely and leave the binding for the calls it serves.
            Some(agent) if !agent.serves(category) => select().map(unbound),
            Some(agent) if agent.is_healthy() => {
                if tried.contains(&agent.uid) {
                    // Failing over from the bound agent within one call: the
                    // binding stays unless health checks decide otherwise.
                    select().map(unbound)
                } else {
                    match inner.router.lease(&agent) {
                        Some(lease) => {
                            let binding = SessionRecord {
                                last_used_ms: now,
                                ..existing
                            };
                            Some(Candidate {
                                lease,
                                binding: Some(binding),
                            })
                        }
                        // At capacity: serve this call elsewhere, keep the binding.
                        None => select().map(unbound),
                    }
                }
            }
            // Removed, not bound in this process, or unhealthy: replace the
            // agent and rewrite the binding.
            _ => select().map(|lease| bind(lease, existing.created_at_ms)),
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
            .choose(category, options, &[])?
            .map(|c| c.lease.agent.id.clone()))
    }

    fn session_lock(&self, session_id: &str) -> &Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        session_id.hash(&mut hasher);
        &self.inner.session_locks[hasher.finish() as usize % SESSION_STRIPES]
    }
}

/// One `invoke` in progress.
struct Call<'a> {
    dispatcher: &'a ToolDispatcher,
    category: ToolCategory,
    input: serde_json::Value,
    options: RoutingOptions,
    record_key: String,
    record: DispatchRecord,
    /// Whether some version of the record has committed (and so must be finished).
    record_written: bool,
    /// Agents (by registration uid) already chosen in this call.
    tried: Vec<u64>,
    denials: Vec<String>,
    /// The last retryable failure and the agent it came from.
    last_failure: Option<(Failure, Arc<Agent>)>,
    /// The last rate limit that refused a candidate.
    rate_limited: Option<Error>,
    calls_made: u32,
    started: Instant,
}

/// A chosen agent and, when the session binding must be (re)written, the new binding.
struct Candidate {
    lease: Lease,
    binding: Option<SessionRecord>,
}

impl<'a> Call<'a> {
    fn new(
        dispatcher: &'a ToolDispatcher,
        tool: &str,
        category: ToolCategory,
        input: serde_json::Value,
        options: RoutingOptions,
    ) -> Self {
        let invocation_id = new_invocation_id();
        let record = DispatchRecord {
            invocation_id: invocation_id.clone(),
            tool: tool.to_string(),
            category: category.clone(),
            agent_id: None,
            session_id: options.session_id.clone(),
            strategy: options.strategy.as_str().to_string(),
            status: DispatchStatus::InFlight,
            attempts: Vec::new(),
            started_at_ms: now_ms(),
            finished_at_ms: None,
            latency_ms: None,
            error: None,
        };
        Call {
            dispatcher,
            record_key: dispatch_key(&category, tool, &invocation_id),
            category,
            input,
            options,
            record,
            record_written: false,
            tried: Vec::new(),
            denials: Vec::new(),
            last_failure: None,
            rate_limited: None,
            calls_made: 0,
            started: Instant::now(),
        }
    }

    fn inner(&self) -> &Inner {
        &self.dispatcher.inner
    }

    /// The policy context of this call's writes; `action` is `dispatch` for
    /// the record written before an agent is called, `outcome` after.
    fn context(&self, agent_id: Option<&str>, action: &str) -> PolicyContext {
        let mut ctx = PolicyContext::with_capacity(7);
        if let Some(agent_id) = agent_id {
            ctx.insert_static("agent_id", agent_id);
        }
        ctx.insert_static("action", action);
        ctx.insert_static("tool", self.record.tool.as_str());
        ctx.insert_static("category", self.category.as_str());
        if let Some(session) = &self.options.session_id {
            ctx.insert_static("session_id", session.as_str());
        }
        ctx.insert_static("invocation_id", self.record.invocation_id.as_str());
        ctx.insert_static("strategy", self.options.strategy.as_str());
        ctx
    }

    async fn run(mut self) -> Result<InvocationResult> {
        while self.calls_made < self.options.max_attempts {
            let session_lock = self
                .options
                .session_id
                .as_deref()
                .map(|s| self.dispatcher.session_lock(s).lock());
            let choice = self
                .dispatcher
                .choose(&self.category, &self.options, &self.tried)?;
            let Some(Candidate { lease, binding }) = choice else {
                break;
            };
            let agent = lease.agent.clone();
            self.tried.push(agent.uid);
            let ctx = self.context(Some(&agent.id), "dispatch");
            self.record.agent_id = Some(agent.id.clone());
            self.record.attempts.push(Attempt {
                agent_id: agent.id.clone(),
                outcome: "in_flight".into(),
                latency_ms: 0.0,
                error: None,
            });
            let intent = self.write_intent(&ctx, binding.as_ref());
            // The binding (if any) is committed; other calls of this session may
            // now read it.
            drop(session_lock);
            match intent {
                Ok(()) => self.record_written = true,
                Err(Error::PolicyDenied { reason, .. }) => {
                    tracing::debug!(agent_id = %agent.id, %reason, "candidate denied by policy");
                    DispatchCounters::count(&self.inner().counters.policy_denials);
                    self.finish_attempt("denied", Duration::ZERO, Some(reason.clone()));
                    self.denials.push(format!("{}: {reason}", agent.id));
                    continue;
                }
                Err(limited @ Error::RateLimited { .. }) => {
                    tracing::debug!(agent_id = %agent.id, error = %limited, "candidate rate limited");
                    DispatchCounters::count(&self.inner().counters.rate_limited);
                    self.finish_attempt("rate_limited", Duration::ZERO, Some(limited.to_string()));
                    self.rate_limited = Some(limited);
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.calls_made += 1;
            let (outcome, latency) = self.call_agent(&agent).await;
            drop(lease);
            let ctx = self.context(Some(&agent.id), "outcome");
            match outcome {
                Ok(output) => {
                    self.finish_attempt("succeeded", latency, None);
                    self.finish(DispatchStatus::Succeeded, None, &ctx);
                    return Ok(InvocationResult {
                        invocation_id: self.record.invocation_id.clone(),
                        agent_id: agent.id.clone(),
                        output,
                        attempts: self.calls_made,
                        latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                    });
                }
                Err(failure) => {
                    let message = failure.message(agent.timeout);
                    self.finish_attempt(failure.outcome(), latency, Some(message.clone()));
                    if !failure.is_retryable() {
                        self.finish(DispatchStatus::Failed, Some(message), &ctx);
                        return Err(failure.into_error(&agent.id, agent.timeout));
                    }
                    tracing::debug!(agent_id = %agent.id, error = %message, "retryable failure; failing over");
                    if self.calls_made < self.options.max_attempts {
                        DispatchCounters::count(&self.inner().counters.failovers);
                    }
                    self.last_failure = Some((failure, agent));
                }
            }
        }
        Err(self.give_up())
    }

    fn record_bytes(&self) -> Result<Vec<u8>> {
        // A record is a few hundred bytes: one allocation instead of growing.
        let mut bytes = Vec::with_capacity(512);
        serde_json::to_writer(&mut bytes, &self.record).map_err(Error::storage)?;
        Ok(bytes)
    }

    fn write_intent(&self, ctx: &PolicyContext, binding: Option<&SessionRecord>) -> Result<()> {
        let db = &self.inner().db;
        let mut tx = db.transaction();
        tx.put_with(&self.record_key, &self.record_bytes()?, ctx)?;
        if !self.record_written {
            tx.put_with(
                &inflight_key(&self.record.invocation_id),
                self.record_key.as_bytes(),
                ctx,
            )?;
        }
        if let (Some(binding), Some(session_id)) = (binding, &self.options.session_id) {
            let value = serde_json::to_vec(binding).map_err(Error::storage)?;
            tx.put_with(&session_key(session_id), &value, ctx)?;
        }
        tx.commit()
    }

    async fn call_agent(
        &self,
        agent: &Arc<Agent>,
    ) -> (std::result::Result<serde_json::Value, Failure>, Duration) {
        let request = WireRequest {
            invocation_id: &self.record.invocation_id,
            tool: &self.record.tool,
            category: self.category.as_str(),
            input: &self.input,
            session_id: self.options.session_id.as_deref(),
        };
        let started = Instant::now();
        let outcome = agent
            .transport
            .call(&self.inner().client, request, agent.timeout)
            .await;
        let latency = started.elapsed();
        if let Err(Failure::Overloaded { retry_after, .. }) = &outcome {
            agent.pause_for(*retry_after);
        }
        let agent_failed = matches!(&outcome, Err(f) if f.is_retryable());
        // A failure teaches the latency estimate as much as a timeout would, so
        // an agent that fails fast does not look fast.
        let cost = if agent_failed {
            latency.max(agent.timeout)
        } else {
            latency
        };
        agent.stats.record(outcome.is_ok(), latency, cost);
        let health = self.inner().health.read().clone();
        if let Some(config) = health {
            health::observe_invocation(&self.inner().registry, &config, agent, agent_failed);
        }
        (outcome, latency)
    }

    fn finish_attempt(&mut self, outcome: &str, latency: Duration, error: Option<String>) {
        if let Some(attempt) = self.record.attempts.last_mut() {
            attempt.outcome = outcome.to_string();
            attempt.latency_ms = latency.as_secs_f64() * 1000.0;
            attempt.error = error;
        }
    }

    /// Writes the outcome and clears the in-flight entry, in one transaction.
    /// A failure here cannot undo the call: it is logged, and the entry left
    /// in flight is marked interrupted on the next open.
    fn finish(&mut self, status: DispatchStatus, error: Option<String>, ctx: &PolicyContext) {
        if !self.record_written {
            return;
        }
        self.record.status = status;
        self.record.error = error;
        self.record.finished_at_ms = Some(now_ms());
        self.record.latency_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        let db = &self.inner().db;
        let result = self.record_bytes().and_then(|bytes| {
            let mut tx = db.transaction();
            tx.put_with(&self.record_key, &bytes, ctx)?;
            tx.delete_with(&inflight_key(&self.record.invocation_id), ctx)?;
            tx.commit()
        });
        if let Err(e) = result {
            tracing::warn!(key = %self.record_key, error = %e, "could not write the dispatch outcome");
        }
    }

    /// Ends a call that found no agent to succeed on, recording why.
    fn give_up(mut self) -> Error {
        let category = self.category.to_string();
        let error = if let Some((failure, agent)) = self.last_failure.take() {
            failure.into_error(&agent.id, agent.timeout)
        } else if !self.denials.is_empty() {
            Error::PolicyDenied {
                key: self.record_key.clone(),
                reason: format!("every candidate was denied: {}", self.denials.join("; ")),
            }
        } else if let Some(limited) = self.rate_limited.take() {
            limited
        } else if !self.inner().registry.any_serves(&self.category) {
            Error::NoAgentAvailable {
                category,
                reason: "no agent is registered for it".into(),
            }
        } else {
            Error::NoAgentAvailable {
                category,
                reason: "every agent serving it is unhealthy, busy, or not bound in this process"
                    .into(),
            }
        };
        let ctx = self.context(self.record.agent_id.clone().as_deref(), "outcome");
        // Only a call that reached some agent has a record to finish.
        self.finish(DispatchStatus::Failed, Some(error.to_string()), &ctx);
        error
    }
}

/// Marks every dispatch a previous process left in flight as interrupted.
/// Reads only the `inflight/` index, never the history. Returns how many.
pub fn recover_interrupted(db: &Database) -> Result<usize> {
    let mut recovered = 0;
    let entries: Vec<(String, Vec<u8>)> =
        db.scan_unjudged(INFLIGHT, None).collect::<Result<_>>()?;
    for (inflight, record_key) in entries {
        let record_key = String::from_utf8_lossy(&record_key).into_owned();
        let mut ctx = PolicyContext::new().with("action", "recover");
        let mut tx = db.transaction();
        if let Some(bytes) = db.get_unjudged(&record_key).ok().flatten() {
            match serde_json::from_slice::<DispatchRecord>(&bytes) {
                Ok(mut record) if record.status == DispatchStatus::InFlight => {
                    if let Some(agent) = &record.agent_id {
                        ctx.insert("agent_id", agent.as_str());
                    }
                    record.status = DispatchStatus::Interrupted;
                    record.error = Some("the process stopped while the call was in flight".into());
                    record.finished_at_ms = Some(now_ms());
                    if let Some(last) = record.attempts.last_mut() {
                        if last.outcome == "in_flight" {
                            last.outcome = "interrupted".into();
                        }
                    }
                    let value = serde_json::to_vec(&record).map_err(Error::storage)?;
                    tx.put_with(&record_key, &value, &ctx)?;
                    recovered += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %record_key, error = %e, "in-flight record does not decode")
                }
            }
        }
        tx.delete_with(&inflight, &ctx)?;
        if let Err(e) = tx.commit() {
            tracing::warn!(key = %record_key, error = %e, "could not mark an interrupted dispatch");
        }
    }
    Ok(recovered)
}
