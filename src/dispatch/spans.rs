//! The spans of one dispatch, made only while an exporter runs
//! (`telemetry`): the call's span by the GenAI convention for tool
//! execution (`execute_tool {tool}`), with Switchboard's own attributes
//! under `switchboard.`, and one child span per attempt: each candidate
//! chosen, whether its policy denied it or it was called. docs/observability.md
//! lists every attribute.

use super::RoutingOptions;
use crate::error::Error;
use crate::namespace::AttemptOutcome;
use crate::routing::agent::Agent;
use crate::routing::endpoint::Endpoint;
use crate::telemetry::{self, TARGET};
use crate::transport::TraceContext;
use tracing::field::Empty;

/// The span of one `invoke`. Clones are the same span; it ends when the
/// last one is dropped.
#[derive(Clone)]
pub(super) struct DispatchSpan(tracing::Span);

impl DispatchSpan {
    /// The call's span, continuing the caller's trace if it came with one;
    /// `None` (at the cost of one atomic load) while no exporter runs.
    pub(super) fn start(
        tool: &str,
        category: &str,
        invocation_id: &str,
        options: &RoutingOptions,
    ) -> Option<DispatchSpan> {
        if !telemetry::spans_on() {
            return None;
        }
        let span = tracing::info_span!(
            target: TARGET,
            "execute_tool",
            otel.name = format!("execute_tool {tool}"),
            otel.kind = "internal",
            otel.status_code = Empty,
            otel.status_description = Empty,
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = tool,
            gen_ai.tool.call.id = invocation_id,
            "gen_ai.tool.type" = "extension",
            switchboard.category = category,
            switchboard.strategy = options.strategy.as_str(),
            switchboard.session.id = options.session_id.as_deref(),
            switchboard.caller.id = options.caller.as_ref().map(|c| c.id.as_str()),
            switchboard.agent.id = Empty,
            switchboard.attempts = Empty,
            switchboard.policy.denials = Empty,
            "error.type" = Empty,
        );
        if let Some(trace) = &options.trace {
            telemetry::continue_trace(&span, trace);
        }
        Some(DispatchSpan(span))
    }

    /// The trace id the dispatch record keeps.
    pub(super) fn trace_id(&self) -> Option<String> {
        telemetry::trace_id(&self.0)
    }

    /// A span for the attempt on `agent`, the `number`th candidate.
    pub(super) fn attempt(&self, agent: &Agent, number: usize) -> AttemptSpan {
        let (address, port) = match &agent.endpoint {
            Endpoint::Http(url) => (
                url.host_str().map(str::to_string),
                url.port_or_known_default(),
            ),
            Endpoint::Mcp(server) => {
                let url = server
                    .url
                    .as_deref()
                    .and_then(|u| reqwest::Url::parse(u).ok());
                (
                    url.as_ref().and_then(|u| u.host_str().map(str::to_string)),
                    url.as_ref().and_then(|u| u.port_or_known_default()),
                )
            }
            Endpoint::A2a(a2a) => {
                let url = reqwest::Url::parse(&a2a.card_url).ok();
                (
                    url.as_ref().and_then(|u| u.host_str().map(str::to_string)),
                    url.as_ref().and_then(|u| u.port_or_known_default()),
                )
            }
            Endpoint::Local => (None, None),
        };
        AttemptSpan(tracing::info_span!(
            target: TARGET,
            parent: &self.0,
            "attempt",
            otel.name = format!("attempt {}", agent.id),
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            switchboard.agent.id = agent.id.as_str(),
            switchboard.attempt.number = number,
            server.address = address.as_deref(),
            server.port = port,
            switchboard.attempt.outcome = Empty,
            switchboard.failover.reason = Empty,
            "error.type" = Empty,
        ))
    }

    /// Records, as the call ends, the agent last called, how many were
    /// called and how many candidates a policy denied. Each attribute is
    /// recorded once: a second record of a key would be exported as a
    /// second attribute.
    pub(super) fn tally(&self, agent_id: Option<&str>, calls: u32, denials: usize) {
        if let Some(agent_id) = agent_id {
            self.0.record("switchboard.agent.id", agent_id);
        }
        self.0.record("switchboard.attempts", calls);
        if denials > 0 {
            self.0.record("switchboard.policy.denials", denials);
        }
    }

    /// Records how the call ended.
    pub(super) fn finish(&self, error: Option<&Error>) {
        match error {
            None => {
                self.0.record("otel.status_code", "ok");
            }
            Some(e) => {
                // The description alone sets an error status; a code
                // recorded as well would be a second, competing update.
                self.0.record("otel.status_description", e.to_string());
                self.0.record("error.type", error_type(e));
            }
        }
    }
}

/// The span of one attempt; it ends when dropped.
pub(super) struct AttemptSpan(tracing::Span);

impl AttemptSpan {
    /// The trace context the agent is called with: this span as its parent.
    pub(super) fn passed_on(&self, received: Option<&TraceContext>) -> Option<TraceContext> {
        telemetry::passed_on(&self.0, received)
    }

    /// Records how the attempt ended; `failover` when another agent is
    /// tried next, `reason` the failure's text.
    pub(super) fn ended(&self, outcome: AttemptOutcome, reason: Option<&str>, failover: bool) {
        self.0
            .record("switchboard.attempt.outcome", outcome.as_str());
        if outcome == AttemptOutcome::Succeeded {
            self.0.record("otel.status_code", "ok");
            return;
        }
        self.0.record("error.type", outcome.as_str());
        match reason {
            Some(reason) => {
                self.0.record("otel.status_description", reason);
                if failover {
                    self.0.record("switchboard.failover.reason", reason);
                }
            }
            None => {
                self.0.record("otel.status_code", "error");
            }
        }
    }
}

/// `error.type` of a call that failed: the code the HTTP API answers it with.
fn error_type(e: &Error) -> &'static str {
    match e {
        Error::InvalidInput(_) => "invalid_input",
        Error::PolicyDenied { .. } => "policy_denied",
        Error::RateLimited { .. } => "rate_limited",
        Error::PolicyLoad { .. } => "policy_invalid",
        Error::NoAgentAvailable { .. } => "no_agent_available",
        Error::ToolFailed { .. } => "tool_failed",
        Error::AgentFailed { .. } => "agent_failed",
        Error::AgentTimeout { .. } => "agent_timeout",
        Error::UnknownAgent(_) => "unknown_agent",
        Error::Conflict { .. } => "conflict",
        Error::Storage(_) => "storage",
        Error::Unavailable(_) => "cluster_unavailable",
        Error::Internal { .. } => "internal",
    }
}
