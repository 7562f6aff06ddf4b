//! One `invoke` in progress: the explicit failover loop. Each turn chooses a
//! candidate (routing), writes the intent (record), calls the agent through
//! the per-attempt layers (transport), and asks `decide` what comes next.

use super::decide::{after_attempt, Step};
use super::record::{Outcome, Record};
use super::spans::{DispatchSpan, McpClientSpan, McpRequest};
use super::{route, Inner, InvocationResult, RoutingOptions, ToolDispatcher};
use crate::error::{Error, Result};
use crate::namespace::{
    new_invocation_id, now_ms, AttemptOutcome, DispatchRecord, DispatchStatus, ToolCategory,
};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::routing::affinity::Candidate;
use crate::routing::agent::Agent;
use crate::routing::metrics::DispatchCounters;
use crate::transport::layers::attempt;
use crate::transport::{Failure, WireRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One `invoke` in progress.
pub(super) struct Call<'a> {
    dispatcher: &'a ToolDispatcher,
    category: ToolCategory,
    /// The call's arguments, shared with every write's policy context.
    input: Arc<serde_json::Value>,
    options: RoutingOptions,
    record: Record,
    /// Agents (by registration uid) already chosen in this call.
    tried: Vec<u64>,
    denials: Vec<String>,
    /// The last retryable failure and the agent it came from.
    last_failure: Option<(Failure, Arc<Agent>)>,
    /// The last rate limit that refused a candidate.
    rate_limited: Option<Error>,
    calls_made: u32,
    /// The last agent actually called: the outcome belongs to it.
    called: Option<Arc<Agent>>,
    started: Instant,
    /// The call's span, while an exporter runs.
    span: Option<DispatchSpan>,
    /// What every write's policy context says of this call (see
    /// [`context`](Self::context)), with the arguments as the record
    /// stores them (redacted, capped) for the decision log.
    base: PolicyContext,
}

impl<'a> Call<'a> {
    pub(super) fn new(
        dispatcher: &'a ToolDispatcher,
        tool: &str,
        category: ToolCategory,
        input: serde_json::Value,
        options: RoutingOptions,
    ) -> Self {
        let config = dispatcher.inner.config.read().clone();
        let (stored_input, input_truncated) = config
            .stored_input(&input)
            .map_or((None, false), |(v, cut)| (Some(v), cut));
        let invocation_id = new_invocation_id();
        let (span, trace_id) =
            match DispatchSpan::start(tool, category.as_str(), &invocation_id, &options) {
                Some((span, trace_id)) => (Some(span), trace_id),
                None => (None, None),
            };
        // The span's trace is the caller's when it came with one, else a new one.
        let trace_id = trace_id.or_else(|| {
            options
                .trace
                .as_ref()
                .and_then(|t| t.trace_id())
                .map(str::to_string)
        });
        let record = DispatchRecord {
            invocation_id,
            tool: tool.to_string(),
            category: category.clone(),
            agent_id: None,
            session_id: options.session_id.clone(),
            strategy: options.strategy,
            status: DispatchStatus::InFlight,
            attempts: Vec::new(),
            started_at_ms: now_ms(),
            finished_at_ms: None,
            latency_ms: None,
            error: None,
            caller: options.caller.as_ref().map(|c| c.id.clone()),
            input: stored_input,
            input_truncated,
            output: None,
            output_truncated: false,
            trace_id,
        };
        let mut call = Call {
            dispatcher,
            record: Record::new(record),
            category,
            input: Arc::new(input),
            options,
            tried: Vec::new(),
            denials: Vec::new(),
            last_failure: None,
            rate_limited: None,
            calls_made: 0,
            called: None,
            started: Instant::now(),
            span,
            base: PolicyContext::new(),
        };
        call.base = call.base_context();
        call
    }

    /// The call's span, if it has one.
    pub(super) fn span(&self) -> Option<DispatchSpan> {
        self.span.clone()
    }

    fn inner(&self) -> &'a Inner {
        &self.dispatcher.inner
    }

    /// The entries every write of this call shares: the tool, its
    /// category, the session, the invocation, the strategy, the caller and
    /// the arguments. Built once per call.
    fn base_context(&self) -> PolicyContext {
        let record = &self.record.value;
        let mut ctx = PolicyContext::with_capacity(8);
        ctx.insert_static(keys::TOOL, record.tool.as_str());
        ctx.insert_static(keys::CATEGORY, self.category.as_str());
        if let Some(session) = &self.options.session_id {
            ctx.insert_static(keys::SESSION_ID, session.as_str());
        }
        ctx.insert_static(keys::INVOCATION_ID, record.invocation_id.as_str());
        ctx.insert_literal(keys::STRATEGY, self.options.strategy.as_str());
        if let Some(caller) = &self.options.caller {
            caller.apply_to(&mut ctx);
        }
        ctx.set_input(self.input.clone(), self.stored_input());
        ctx
    }

    /// The arguments as the record stores them now.
    fn stored_input(&self) -> Option<Arc<serde_json::Value>> {
        self.record.value.input.clone().map(Arc::new)
    }

    /// The policy context of this call's writes; `action` is `dispatch` for
    /// the record written before an agent is called, `outcome` after.
    fn context(&self, agent_id: Option<&str>, action: OperationKind) -> PolicyContext {
        let mut ctx = self.base.with_room(2);
        if let Some(agent_id) = agent_id {
            ctx.insert_static(keys::AGENT_ID, agent_id);
        }
        ctx.set_operation(action);
        ctx
    }

    pub(super) async fn run(mut self) -> Result<InvocationResult> {
        let inner = self.inner();
        loop {
            let session_lock = match self.options.session_id.as_deref() {
                Some(s) => Some(inner.affinity.session_lock(s).lock().await),
                None => None,
            };
            let choice = match inner.affinity.choose(
                &route(&self.category, Some(&self.record.value.tool), &self.options),
                &self.tried,
            ) {
                Ok(choice) => choice,
                Err(e) => {
                    drop(session_lock);
                    return Err(self.fail(e).await);
                }
            };
            let Some(Candidate { lease, binding }) = choice else {
                break;
            };
            let agent = lease.agent.clone();
            self.tried.push(agent.uid);
            let attempt_span = self
                .span
                .as_ref()
                .map(|span| span.attempt(&agent, self.tried.len()));
            if !agent.is_healthy() {
                // Panic routing (see `routing/tiers.rs`): too much of the
                // tier, or all of the category, is ejected.
                tracing::warn!(agent_id = %agent.id, category = %self.category, "panic routing: calling an ejected agent");
                agent
                    .stats
                    .panic_calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut ctx = self.context(Some(&agent.id), OperationKind::Dispatch);
            let commit = attempt_span.as_ref().map(|span| span.commit_intent());
            if let Some(commit) = &commit {
                commit.trace_policies(&mut ctx);
            }
            self.record.begin_attempt(&agent.id);
            let binding = self.options.session_id.as_deref().zip(binding.as_ref());
            let intent = self.record.write_intent(&inner.db, &ctx, binding).await;
            if let Some(commit) = commit {
                commit.ended(intent.as_ref().err());
            }
            // The binding (if any) is committed; other calls of this session may
            // now read it.
            drop(session_lock);
            let refused = match intent {
                Ok(rewritten) => {
                    if rewritten {
                        self.base.set_input(self.input.clone(), self.stored_input());
                    }
                    None
                }
                Err(Error::PolicyDenied { reason, .. }) => {
                    tracing::debug!(agent_id = %agent.id, %reason, "candidate denied by policy");
                    DispatchCounters::count(&inner.counters.policy_denials);
                    self.denials.push(format!("{}: {reason}", agent.id));
                    Some((AttemptOutcome::Denied, reason))
                }
                Err(limited @ Error::RateLimited { .. }) => {
                    tracing::debug!(agent_id = %agent.id, error = %limited, "candidate rate limited");
                    DispatchCounters::count(&inner.counters.rate_limited);
                    let message = limited.to_string();
                    self.rate_limited = Some(limited);
                    Some((AttemptOutcome::RateLimited, message))
                }
                Err(e) => {
                    // This attempt's intent never landed: its agent was not called.
                    drop(lease);
                    self.record.drop_attempt();
                    return Err(self.fail(e).await);
                }
            };
            if let Some((outcome, reason)) = refused {
                let step = after_attempt(outcome, self.calls_made, self.options.max_attempts);
                if let Some(span) = attempt_span {
                    span.ended(outcome, Some(&reason), step == Step::NextAgent);
                }
                self.record
                    .end_attempt(outcome, Duration::ZERO, Some(reason));
                match step {
                    Step::NextAgent => continue,
                    Step::Return | Step::GiveUp => break,
                }
            }
            self.calls_made += 1;
            self.called = Some(agent.clone());
            let mcp = McpRequest::of(&agent, &self.record.value.tool);
            let mcp_span = attempt_span
                .as_ref()
                .zip(mcp.as_ref())
                .and_then(|(span, request)| span.mcp_client(&agent, request));
            // A traced call's agent continues the trace from this attempt
            // (from its MCP client span, for an MCP agent); an untraced
            // one's gets the trace context the call came with, if any.
            let received = self.options.trace.as_ref();
            let passed_on = match (&mcp_span, &attempt_span) {
                (Some(span), _) => span.passed_on(received),
                (None, Some(span)) => span.passed_on(received),
                (None, None) => None,
            };
            let request = WireRequest {
                invocation_id: &self.record.value.invocation_id,
                tool: &self.record.value.tool,
                category: self.category.as_str(),
                input: &self.input,
                session_id: self.options.session_id.as_deref(),
                progress: self.options.progress.as_ref(),
                input_relay: self.options.input_relay.as_ref(),
                log: self.options.log.as_ref(),
                trace: passed_on.as_ref().or(self.options.trace.as_ref()),
                events: self.options.events.as_ref(),
                caller_credential: self
                    .options
                    .caller
                    .as_ref()
                    .and_then(|caller| caller.credential.as_ref()),
            };
            let health = inner.health.read().clone();
            let called = attempt(
                &inner.callers,
                &inner.registry,
                health.as_ref(),
                &agent,
                request,
            );
            let (outcome, latency) = McpClientSpan::around(mcp_span.as_ref(), called).await;
            drop(lease);
            let outcome = match (outcome, &self.options.events) {
                // The caller has seen this agent's stream begin: another
                // agent's answer cannot follow it.
                (Err(failure), Some(events)) if failure.is_retryable() && events.relayed() => {
                    Err(Failure::Tool(format!(
                        "the stream broke off after it began: {}",
                        failure.message(agent.timeout)
                    )))
                }
                (outcome, _) => outcome,
            };
            let (kind, error) = match &outcome {
                Ok(_) => (AttemptOutcome::Succeeded, None),
                Err(failure) => (failure.outcome(), Some(failure.message(agent.timeout))),
            };
            if let Some(span) = mcp_span {
                span.ended(kind, error.as_deref());
            }
            if let Some(request) = &mcp {
                inner.counters.mcp_client.record(
                    request.method,
                    &request.target,
                    McpRequest::error_type(kind),
                    latency,
                );
            }
            self.record.end_attempt(kind, latency, error.clone());
            let step = after_attempt(kind, self.calls_made, self.options.max_attempts);
            if let Some(span) = attempt_span {
                span.ended(kind, error.as_deref(), step == Step::NextAgent);
            }
            match step {
                Step::Return => {
                    return match outcome {
                        Ok(output) => {
                            let config = inner.config.read().clone();
                            if let Some((stored, cut)) = config.stored_output(&output) {
                                self.record.value.output = Some(stored);
                                self.record.value.output_truncated = cut;
                            }
                            if let Some(span) = self.span.as_ref().filter(|s| s.records_content()) {
                                match &self.record.value.output {
                                    Some(stored) => span.result(stored),
                                    None => span.result(&config.redacted_output(&output)),
                                }
                            }
                            self.finish(DispatchStatus::Succeeded, None).await?;
                            Ok(InvocationResult {
                                invocation_id: self.record.value.invocation_id.clone(),
                                agent_id: agent.id.clone(),
                                output,
                                attempts: self.calls_made,
                                latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                            })
                        }
                        Err(failure) => {
                            self.finish(DispatchStatus::Failed, error).await?;
                            Err(failure.into_error(&agent.id, agent.timeout))
                        }
                    };
                }
                Step::NextAgent | Step::GiveUp => {
                    if let Err(failure) = outcome {
                        tracing::debug!(agent_id = %agent.id, error = ?error, "retryable failure");
                        self.last_failure = Some((failure, agent));
                    }
                    if step == Step::GiveUp {
                        break;
                    }
                    DispatchCounters::count(&inner.counters.failovers);
                }
            }
        }
        Err(self.give_up().await)
    }

    /// Writes the outcome, for the agent actually called. A storage failure
    /// is retried; if it persists it is counted in that agent's metrics and
    /// returned (the call's own result cannot be vouched for in the store).
    async fn finish(&mut self, status: DispatchStatus, error: Option<String>) -> Result<()> {
        const TRIES: u32 = 3;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.write_outcome(status, error.clone()).await {
                Ok(()) => {
                    if self.record.finished {
                        self.inner().completions.announce(&self.record.key);
                    }
                    return Ok(());
                }
                Err(e) if tries < TRIES => {
                    tracing::warn!(key = %self.record.key, error = %e, "could not write the dispatch outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(10 << tries)).await;
                }
                Err(e) => {
                    tracing::error!(key = %self.record.key, error = %e, "could not write the dispatch outcome");
                    self.record.finished = true;
                    if let Some(agent) = &self.called {
                        agent
                            .stats
                            .outcome_write_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn write_outcome(&mut self, status: DispatchStatus, error: Option<String>) -> Result<()> {
        let mut ctx = self.outcome_context();
        // Only a record that was written has an outcome to commit.
        let commit = self
            .span
            .as_ref()
            .filter(|_| self.record.written && !self.record.finished)
            .map(DispatchSpan::commit_outcome);
        if let Some(commit) = &commit {
            commit.trace_policies(&mut ctx);
        }
        let db = &self.dispatcher.inner.db;
        let outcome = Outcome {
            status,
            error,
            elapsed: self.started.elapsed(),
        };
        let written = self.record.write_outcome(db, &ctx, outcome).await;
        if let Some(commit) = commit {
            commit.ended(written.as_ref().err());
        }
        written
    }

    /// The outcome's policy context; the record's agent becomes the agent
    /// actually called.
    fn outcome_context(&mut self) -> PolicyContext {
        let called = self.called.as_ref().map(|a| a.id.clone());
        if called.is_some() {
            self.record.value.agent_id = called.clone();
        }
        self.context(called.as_deref(), OperationKind::Outcome)
    }

    /// Ends a call that found no agent to succeed on, recording why.
    async fn give_up(mut self) -> Error {
        let category = self.category.to_string();
        let error = if let Some((failure, agent)) = self.last_failure.take() {
            failure.into_error(&agent.id, agent.timeout)
        } else if !self.denials.is_empty() {
            Error::PolicyDenied {
                key: self.record.key.clone(),
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
        self.fail(error).await
    }

    /// Ends a call with `error`, recording it `failed` with the error's text
    /// if an earlier attempt wrote its record (a call that returned early
    /// would otherwise be taken for one its caller dropped, and recorded
    /// `cancelled`). Only a call that reached some agent has a record to finish.
    async fn fail(mut self, error: Error) -> Error {
        match self
            .finish(DispatchStatus::Failed, Some(error.to_string()))
            .await
        {
            Ok(()) => error,
            Err(storage) => storage,
        }
    }
}

/// Every call ends here: its span (if any) gets its tally. A call dropped
/// by its caller (its future) before it finished: the record is marked
/// cancelled and the agent's metrics count it. The lease, dropped with the
/// future, frees the agent's load.
impl Drop for Call<'_> {
    fn drop(&mut self) {
        if let Some(span) = &self.span {
            let agent = self.called.as_ref().map(|a| a.id.as_str());
            span.tally(agent, self.calls_made, self.denials.len());
            if span.records_content() {
                // As the record keeps them (a before-hook may have masked
                // more), else as it would.
                match self.base.recorded_input() {
                    Some(stored) => span.arguments(stored),
                    None => {
                        let config = self.dispatcher.inner.config.read().clone();
                        span.arguments(&config.redacted_input(&self.input));
                    }
                }
            }
        }
        if !self.record.written || self.record.finished {
            return;
        }
        if self
            .record
            .value
            .attempts
            .last()
            .is_some_and(|a| a.outcome == AttemptOutcome::InFlight)
        {
            self.record.end_attempt(
                AttemptOutcome::Cancelled,
                self.started.elapsed(),
                Some("the caller dropped the call".into()),
            );
        }
        if let Some(agent) = &self.called {
            agent
                .stats
                .cancelled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let ctx = self.outcome_context();
        let db = &self.dispatcher.inner.db;
        let outcome = Outcome {
            status: DispatchStatus::Cancelled,
            error: Some("the caller dropped the call before it finished".into()),
            elapsed: self.started.elapsed(),
        };
        for _ in 0..3 {
            match self.record.write_outcome_on_drop(db, &ctx, outcome.clone()) {
                Ok(()) => {
                    if self.record.finished {
                        self.dispatcher.inner.completions.announce(&self.record.key);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %self.record.key, error = %e, "could not mark a dropped call cancelled")
                }
            }
        }
    }
}
