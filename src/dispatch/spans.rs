//! The spans of one dispatch, made only while an exporter runs
//! (`telemetry`): the call's span by the GenAI convention for tool
//! execution (`execute_tool {tool}`), with Switchboard's own attributes
//! under `switchboard.`, one child span per attempt (each candidate chosen,
//! whether its policy denied it or it was called), and one per commit of
//! the dispatch record, under which the hook chain traces each policy
//! evaluation. Commit and policy spans are made only when the sampler kept
//! the call's span. docs/observability.md lists every attribute.

use super::RoutingOptions;
use crate::error::Error;
use crate::namespace::AttemptOutcome;
use crate::policy::PolicyContext;
use crate::routing::agent::{Agent, ServedKind};
use crate::routing::endpoint::Endpoint;
use crate::telemetry::{self, TARGET};
use crate::transport::TraceContext;
use tracing::field::Empty;

/// The span of one `invoke` the sampler kept (a dropped call has none, and
/// makes no children). Clones are the same span; it ends when the last one
/// is dropped.
#[derive(Clone)]
pub(super) struct DispatchSpan {
    span: tracing::Span,
}

impl DispatchSpan {
    /// The call's span, continuing the caller's trace if it came with one,
    /// and its trace id (for the dispatch record); `None` (at the cost of
    /// one atomic load) while no exporter runs, and when the sampler drops
    /// the call.
    pub(super) fn start(
        tool: &str,
        category: &str,
        invocation_id: &str,
        options: &RoutingOptions,
    ) -> Option<(DispatchSpan, Option<String>)> {
        if !telemetry::spans_on() {
            return None;
        }
        let strategy = options.strategy.as_str();
        let session_id = options.session_id.as_deref();
        let caller_id = options.caller.as_ref().map(|c| c.id.as_str());
        let span = telemetry::start_edge_span(options.trace.as_ref(), || {
            tracing::info_span!(
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
                switchboard.strategy = strategy,
                switchboard.session.id = session_id,
                switchboard.caller.id = caller_id,
                switchboard.agent.id = Empty,
                switchboard.attempts = Empty,
                switchboard.policy.denials = Empty,
                gen_ai.tool.call.arguments = Empty,
                gen_ai.tool.call.result = Empty,
                "error.type" = Empty,
            )
        })?;
        let trace_id = telemetry::trace_id(&span);
        Some((DispatchSpan { span }, trace_id))
    }

    /// A span for the commit of the record's outcome.
    pub(super) fn commit_outcome(&self) -> CommitSpan {
        CommitSpan::start(&self.span, CommitSpan::OUTCOME)
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
        let span = tracing::info_span!(
            target: TARGET,
            parent: &self.span,
            "attempt",
            otel.name = format!("attempt {}", agent.id),
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            switchboard.agent.id = agent.id.as_str(),
            switchboard.attempt.number = number as i64,
            server.address = address.as_deref(),
            server.port = port.map(i64::from),
            switchboard.attempt.outcome = Empty,
            switchboard.failover.reason = Empty,
            "error.type" = Empty,
        );
        AttemptSpan(span)
    }

    /// Records, as the call ends, the agent last called, how many were
    /// called and how many candidates a policy denied. Each attribute is
    /// recorded once: a second record of a key would be exported as a
    /// second attribute. Numbers go in as `i64`: `tracing-opentelemetry`
    /// exports an unsigned one as its text.
    pub(super) fn tally(&self, agent_id: Option<&str>, calls: u32, denials: usize) {
        if let Some(agent_id) = agent_id {
            self.span.record("switchboard.agent.id", agent_id);
        }
        self.span.record("switchboard.attempts", i64::from(calls));
        if denials > 0 {
            self.span
                .record("switchboard.policy.denials", denials as i64);
        }
    }

    /// Whether the call's arguments and result go on its span: the
    /// operator opted in.
    pub(super) fn records_content(&self) -> bool {
        telemetry::content_on()
    }

    /// Records the call's arguments (as JSON text), redacted as the audit
    /// trail redacts them.
    pub(super) fn arguments(&self, arguments: &serde_json::Value) {
        self.span
            .record("gen_ai.tool.call.arguments", arguments.to_string());
    }

    /// Records the call's result (as JSON text), redacted likewise.
    pub(super) fn result(&self, result: &serde_json::Value) {
        self.span
            .record("gen_ai.tool.call.result", result.to_string());
    }

    /// Records how the call ended.
    pub(super) fn finish(&self, error: Option<&Error>) {
        match error {
            None => {
                self.span.record("otel.status_code", "ok");
            }
            Some(e) => {
                // The description alone sets an error status; a code
                // recorded as well would be a second, competing update.
                self.span.record("otel.status_description", e.to_string());
                self.span.record("error.type", error_type(e));
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

    /// The MCP client span of this attempt's `request` to `agent`, an MCP
    /// agent (`None` for another).
    pub(super) fn mcp_client(&self, agent: &Agent, request: &McpRequest) -> Option<McpClientSpan> {
        let Endpoint::Mcp(server) = &agent.endpoint else {
            return None;
        };
        let url = server
            .url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok());
        let name = match request.target.as_str() {
            "" => request.method.to_string(),
            target => format!("{} {target}", request.method),
        };
        let (tool, prompt) = match request.method {
            "tools/call" => (Some(request.target.as_str()), None),
            "prompts/get" => (None, Some(request.target.as_str())),
            _ => (None, None),
        };
        Some(McpClientSpan(tracing::info_span!(
            target: TARGET,
            parent: &self.0,
            "mcp",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            mcp.method.name = request.method,
            gen_ai.tool.name = tool,
            gen_ai.prompt.name = prompt,
            gen_ai.operation.name = tool.map(|_| "execute_tool"),
            server.address = url.as_ref().and_then(|u| u.host_str()),
            server.port = url
                .as_ref()
                .and_then(|u| u.port_or_known_default())
                .map(i64::from),
            // A streamable-HTTP server is reached over TCP, a command over its pipes.
            network.transport = if url.is_some() { "tcp" } else { "pipe" },
            // The id the MCP client gives the request, and the upstream
            // session it is sent in, recorded by the transport from within
            // this span (`instrument`).
            jsonrpc.request.id = Empty,
            mcp.session.id = Empty,
            "error.type" = Empty,
        )))
    }

    /// A span for the commit of the record's intent before this attempt's
    /// agent is called.
    pub(super) fn commit_intent(&self) -> CommitSpan {
        CommitSpan::start(&self.0, CommitSpan::INTENT)
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

/// What an attempt asks of an MCP agent: the MCP method and its target
/// (the upstream tool or prompt; empty for a resource, whose URI is not a
/// low-cardinality name).
pub(super) struct McpRequest {
    pub(super) method: &'static str,
    pub(super) target: String,
}

impl McpRequest {
    /// The request a call of `tool` makes of `agent`, if it is an MCP agent.
    pub(super) fn of(agent: &Agent, tool: &str) -> Option<McpRequest> {
        if !matches!(agent.endpoint, Endpoint::Mcp(_)) {
            return None;
        }
        let (kind, upstream) = agent.upstream_of(tool);
        Some(match kind {
            ServedKind::Tool => McpRequest {
                method: "tools/call",
                target: upstream,
            },
            ServedKind::Prompt => McpRequest {
                method: "prompts/get",
                target: upstream,
            },
            ServedKind::Resource | ServedKind::Template => McpRequest {
                method: "resources/read",
                target: String::new(),
            },
        })
    }

    /// `error.type` of an attempt that ended with `outcome`, by the MCP
    /// convention (`tool_error` for a result with `isError`).
    pub(super) fn error_type(outcome: AttemptOutcome) -> Option<&'static str> {
        match outcome {
            AttemptOutcome::Succeeded => None,
            other => Some(other.as_str()),
        }
    }
}

/// The MCP client span of one attempt on an MCP agent: the request sent
/// upstream, whose `_meta.traceparent` names this span. It ends when dropped.
pub(super) struct McpClientSpan(tracing::Span);

impl McpClientSpan {
    /// Runs the attempt's request inside `span`, if there is one, so the
    /// transport can record on it what only it knows (the JSON-RPC request
    /// id); inside a disabled span otherwise. One future type either way:
    /// the call's future then holds one request future, not two.
    pub(super) fn around<F: std::future::Future>(
        span: Option<&McpClientSpan>,
        request: F,
    ) -> tracing::instrument::Instrumented<F> {
        let span = span.map_or_else(tracing::Span::none, |s| s.0.clone());
        tracing::Instrument::instrument(request, span)
    }

    /// The trace context the agent is called with: this span as its parent.
    pub(super) fn passed_on(&self, received: Option<&TraceContext>) -> Option<TraceContext> {
        telemetry::passed_on(&self.0, received)
    }

    /// Records how the request ended.
    pub(super) fn ended(&self, outcome: AttemptOutcome, reason: Option<&str>) {
        let Some(error_type) = McpRequest::error_type(outcome) else {
            self.0.record("otel.status_code", "ok");
            return;
        };
        self.0.record("error.type", error_type);
        match reason {
            Some(reason) => self.0.record("otel.status_description", reason),
            None => self.0.record("otel.status_code", "error"),
        };
    }
}

/// The span of one commit of the dispatch record to the store; the hook
/// chain's policy spans are its children. It ends when dropped.
pub(super) struct CommitSpan(tracing::Span);

impl CommitSpan {
    const INTENT: &'static str = "intent";
    const OUTCOME: &'static str = "outcome";

    fn start(parent: &tracing::Span, record: &'static str) -> CommitSpan {
        CommitSpan(tracing::info_span!(
            target: TARGET,
            parent: parent,
            "commit",
            otel.name = format!("commit {record}"),
            otel.kind = "internal",
            otel.status_code = Empty,
            otel.status_description = Empty,
            db.system.name = "rocksdb",
            switchboard.commit.record = record,
            switchboard.commit.outcome = Empty,
            "error.type" = Empty,
        ))
    }

    /// Makes the commit's policy evaluations children of this span.
    pub(super) fn trace_policies(&self, ctx: &mut PolicyContext) {
        ctx.set_trace_parent(self.0.clone());
    }

    /// Records how the commit went: `committed`, or the error's code
    /// (`policy_denied`, `rate_limited`, `conflict`, `storage`).
    pub(super) fn ended(&self, error: Option<&Error>) {
        match error {
            None => {
                self.0.record("switchboard.commit.outcome", "committed");
                self.0.record("otel.status_code", "ok");
            }
            Some(e) => {
                self.0.record("switchboard.commit.outcome", error_type(e));
                self.0.record("error.type", error_type(e));
                self.0.record("otel.status_description", e.to_string());
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
