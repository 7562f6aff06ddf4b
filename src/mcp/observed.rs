//! One MCP request as Switchboard serves it, observed by the OpenTelemetry
//! MCP convention: its server span (`{mcp.method.name} {target}`, kind
//! server, a child of the caller's `params._meta.traceparent`), made only
//! while an exporter runs and its sampler keeps the request, and its duration in the
//! `mcp.server.operation.duration` histogram, always. A request that is
//! dispatched (`tools/call`, `prompts/get`, `resources/read`) continues the
//! trace from the server span with its `execute_tool` span.

use crate::dispatch::ToolDispatcher;
use crate::telemetry::{self, TARGET};
use crate::transport::TraceContext;
use rmcp::model::CallToolResponse;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use std::time::Instant;
use tracing::field::Empty;

/// The request whose duration and span are being taken.
pub(super) struct Observed {
    method: &'static str,
    target: String,
    started: Instant,
    span: Option<tracing::Span>,
    /// The trace context the dispatch continues: the server span's, or,
    /// when no span is made, the caller's as it came (or, when the sampler
    /// dropped a request that came with none, a new one flagged not sampled).
    trace: Option<TraceContext>,
}

impl Observed {
    /// Starts observing a request of `method` about `target` (the tool or
    /// prompt; `None` for a listing), or about `resource` (a URI, on the
    /// span only: it is no low-cardinality name).
    pub(super) fn start(
        method: &'static str,
        target: Option<&str>,
        resource: Option<&str>,
        context: &RequestContext<RoleServer>,
    ) -> Observed {
        let received = trace_of(context);
        let span = if telemetry::spans_on() {
            telemetry::start_edge_span(received.as_ref(), || {
                server_span(method, target, resource, context)
            })
        } else {
            None
        };
        let trace = match &span {
            Some(span) => telemetry::passed_on(span, received.as_ref()).or(received),
            // Dropped by the sampler: what the request dispatches follows
            // the decision rather than making its own.
            None if telemetry::spans_on() => {
                received.or_else(|| Some(telemetry::unsampled_trace()))
            }
            None => received,
        };
        Observed {
            method,
            target: target.unwrap_or_default().to_string(),
            started: Instant::now(),
            span,
            trace,
        }
    }

    /// The trace context the request's dispatch continues.
    pub(super) fn trace(&self) -> Option<TraceContext> {
        self.trace.clone()
    }

    /// Ends observing a `tools/call`: `error.type` is `tool_error` for a
    /// result with `isError`, the JSON-RPC error code for an error.
    pub(super) fn answered_call(
        self,
        dispatcher: &ToolDispatcher,
        answer: &Result<CallToolResponse, McpError>,
    ) {
        let tool_error = matches!(
            answer,
            Ok(CallToolResponse::Complete(result)) if result.is_error == Some(true)
        );
        self.answered(dispatcher, answer.as_ref().err(), tool_error);
    }

    /// Ends observing a request answered with `error` (`None`: a result,
    /// which is a tool error if `tool_error`).
    pub(super) fn answered(
        self,
        dispatcher: &ToolDispatcher,
        error: Option<&McpError>,
        tool_error: bool,
    ) {
        let error_type = match error {
            Some(e) => Some(json_rpc_code(e.code.0)),
            None => tool_error.then_some("tool_error"),
        };
        // A JSON-RPC error is answered before any tool is found (an unknown
        // name among them): its series has no target, so names a client
        // makes up cannot grow the histogram without bound.
        let target = match error {
            Some(_) => "",
            None => self.target.as_str(),
        };
        dispatcher.counters().mcp_server.record(
            self.method,
            target,
            error_type,
            self.started.elapsed(),
        );
        let Some(span) = self.span else {
            return;
        };
        match (error_type, error) {
            (None, _) => {
                span.record("otel.status_code", "ok");
            }
            (Some(error_type), Some(e)) => {
                span.record("error.type", error_type);
                span.record("rpc.response.status_code", e.code.0.to_string());
                span.record("otel.status_description", e.message.as_ref());
            }
            (Some(error_type), None) => {
                span.record("error.type", error_type);
                span.record("otel.status_code", "error");
            }
        }
    }
}

/// The server span of a request of `method` about `target` or `resource`.
fn server_span(
    method: &'static str,
    target: Option<&str>,
    resource: Option<&str>,
    context: &RequestContext<RoleServer>,
) -> tracing::Span {
    let http = context.extensions.get::<axum::http::request::Parts>();
    let session = http
        .and_then(|parts| parts.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok());
    let protocol = context
        .peer
        .peer_info()
        .map(|info| info.protocol_version.to_string());
    let name = match target {
        Some(target) => format!("{method} {target}"),
        None => method.to_string(),
    };
    let (tool, prompt) = match method {
        "tools/call" => (target, None),
        "prompts/get" => (None, target),
        _ => (None, None),
    };
    // A root unless the request's `_meta` names a parent (`continue_trace`):
    // never a child of whatever span the transport's task is in.
    tracing::info_span!(
        target: TARGET,
        parent: None,
        "mcp",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        mcp.method.name = method,
        mcp.protocol.version = protocol.as_deref(),
        mcp.session.id = session,
        mcp.resource.uri = resource,
        jsonrpc.request.id = %context.id,
        gen_ai.tool.name = tool,
        gen_ai.prompt.name = prompt,
        gen_ai.operation.name = tool.map(|_| "execute_tool"),
        // Over HTTP (`/mcp`) the session runs on TCP; over stdio on a pipe.
        network.transport = if http.is_some() { "tcp" } else { "pipe" },
        network.protocol.name = http.map(|_| "http"),
        rpc.response.status_code = Empty,
        "error.type" = Empty,
    )
}

/// The W3C trace context a request came with in its `_meta`.
fn trace_of(context: &RequestContext<RoleServer>) -> Option<TraceContext> {
    let meta = &context.meta.0;
    Some(TraceContext {
        traceparent: meta.get_traceparent()?.to_string(),
        tracestate: meta.get_tracestate().map(str::to_string),
        baggage: meta.get_baggage().map(str::to_string),
    })
}

/// `error.type` of a JSON-RPC error: its code, as the convention says
/// (codes Switchboard answers with; `_OTHER` for the rest).
fn json_rpc_code(code: i32) -> &'static str {
    match code {
        -32700 => "-32700",
        -32600 => "-32600",
        -32601 => "-32601",
        -32602 => "-32602",
        -32603 => "-32603",
        -32002 => "-32002",
        _ => "_OTHER",
    }
}
