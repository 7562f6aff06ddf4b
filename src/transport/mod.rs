//! Transport: how one agent is called. Knows nothing of storage; reads
//! routing's agents (identity, endpoint, state) to call them.
//!
//! - `mod.rs`: [`ToolError`], [`Failure`] (how a call ended), the wire
//!   request, and [`Callers`] (the per-agent caller, keyed by registration uid);
//! - `local`: in-process handlers; `http`: the HTTP agent protocol, the
//!   client's construction and the health probe; `plain`: the pool of
//!   HTTP/1.1 connections `http://` agents are called over; `mcp`: agents that are MCP
//!   servers (`tools/call`, `ping`, `tools/list`); `a2a`: agents that speak
//!   A2A (their Agent Card, JSON-RPC calls); `tls`: the certificates
//!   the client trusts for `https://` agents;
//! - `layers`: per-attempt concerns wrapped around one call (timeout,
//!   `Retry-After` back-pressure, latency/load tracking, passive health).

pub(crate) mod a2a;
pub(crate) mod http;
pub(crate) mod layers;
pub(crate) mod local;
pub(crate) mod mcp;
mod plain;
pub(crate) use plain::mark_runtime_thread;
#[cfg(test)]
mod properties;
pub(crate) mod tls;

use crate::error::{Error, Result};
use crate::namespace::{uri_template_matches, AttemptOutcome};
use crate::routing::agent::{Agent, ServedKind};
use crate::routing::endpoint::Endpoint;
use crate::routing::health::{Probe, ProbeResult};
use a2a::A2aClients;
use mcp::McpClients;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use local::{local_handler, LocalHandler};
pub use tls::TlsTrust;

/// The largest agent response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// The deepest nesting of arrays and objects accepted in an agent's answer.
pub const MAX_ANSWER_DEPTH: usize = 64;
/// The most JSON values accepted in an agent's answer: a decoded value costs
/// far more than its text (`[0,0,…]` is 2 bytes a value, decoded about 32),
/// so the byte limit alone does not bound memory.
pub const MAX_ANSWER_VALUES: usize = 1 << 18;

/// A tool's own failure, returned by a local handler.
///
/// By default it is final: the caller gets it as [`Error::ToolFailed`] and no
/// other agent is tried. [`ToolError::retryable`] marks a failure of the agent
/// rather than of the request, which fails over like an HTTP 5xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolError {
    message: String,
    retryable: bool,
}

impl ToolError {
    /// A final tool error.
    pub fn new(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An agent failure worth retrying on another agent.
    pub fn retryable(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            retryable: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another agent should be tried.
    #[cfg_attr(not(test), allow(dead_code))] // the response-parser properties check it
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

impl From<&str> for ToolError {
    fn from(s: &str) -> Self {
        ToolError::new(s)
    }
}

impl From<String> for ToolError {
    fn from(s: String) -> Self {
        ToolError::new(s)
    }
}

/// How a call that did not succeed ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The tool's own error (local `ToolError`, HTTP 4xx): final.
    Tool(String),
    /// The agent could not answer properly (5xx, bad body, connection, panic).
    Agent(String),
    /// No answer within the timeout.
    Timeout,
    /// 429 or 503 with `Retry-After`: the agent asked not to be called for a while.
    Overloaded {
        message: String,
        retry_after: Duration,
    },
}

impl Failure {
    /// Whether another agent should be tried.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Tool(_))
    }

    pub(crate) fn outcome(&self) -> AttemptOutcome {
        match self {
            Failure::Tool(_) => AttemptOutcome::ToolError,
            Failure::Agent(_) => AttemptOutcome::Failed,
            Failure::Timeout => AttemptOutcome::Timeout,
            Failure::Overloaded { .. } => AttemptOutcome::Overloaded,
        }
    }

    pub(crate) fn into_error(self, agent_id: &str, timeout: Duration) -> Error {
        let agent_id = agent_id.to_string();
        match self {
            Failure::Tool(message) => Error::ToolFailed { agent_id, message },
            Failure::Agent(message) | Failure::Overloaded { message, .. } => {
                Error::AgentFailed { agent_id, message }
            }
            Failure::Timeout => Error::AgentTimeout { agent_id, timeout },
        }
    }

    pub(crate) fn message(&self, timeout: Duration) -> String {
        match self {
            Failure::Tool(m) | Failure::Agent(m) | Failure::Overloaded { message: m, .. } => {
                m.clone()
            }
            Failure::Timeout => format!("timed out after {timeout:?}"),
        }
    }
}

/// `e` and every error under it, `: `-separated: a transport error's own
/// text rarely says why (the refused connection is in its source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why a response body was not read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It is longer than the limit (the bytes given).
    TooLong(usize),
    /// The connection broke off while it was read (its error chain).
    Broken(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLong(limit) => write!(f, "the answer is longer than {limit} bytes"),
            BodyError::Broken(chain) => write!(f, "reading the answer: {chain}"),
        }
    }
}

/// Reads a response body, refusing one longer than `limit` bytes before
/// holding more than that: at once when its `Content-Length` says so, else
/// at the chunk that crosses the limit.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLong(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Broken(error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLong(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One invocation as the HTTP protocol carries it.
#[derive(serde::Serialize)]
pub(crate) struct WireRequest<'a> {
    pub invocation_id: &'a str,
    pub tool: &'a str,
    pub category: &'a str,
    pub input: &'a serde_json::Value,
    pub session_id: Option<&'a str>,
    /// Where progress the agent reports goes (MCP agents report it).
    #[serde(skip)]
    pub progress: Option<&'a ProgressSink>,
    /// Who answers what the agent asks the client (MCP agents ask).
    #[serde(skip)]
    pub input_relay: Option<&'a InputRelay>,
    /// Where the log messages the agent sends about the call go (MCP agents
    /// send them).
    #[serde(skip)]
    pub log: Option<&'a LogSink>,
    /// The trace context the agent continues: in headers to HTTP agents, in
    /// `_meta` to MCP agents.
    #[serde(skip)]
    pub trace: Option<&'a TraceContext>,
    /// Where a streamed call's events go (A2A agents stream them).
    #[serde(skip)]
    pub events: Option<&'a EventSink>,
    /// The caller's JWT, for an MCP agent that exchanges it for the
    /// caller's own upstream token (RFC 8693); never sent to an agent.
    #[serde(skip)]
    pub caller_credential: Option<&'a crate::policy::CallerCredential>,
}

/// The W3C trace context a call came with (`traceparent`, `tracestate`,
/// `baggage`), passed on to the agent so one trace spans the caller,
/// Switchboard and the agent: as headers to an HTTP agent, in `_meta` to
/// an MCP agent. While traces are exported the agent gets Switchboard's
/// span as its parent; otherwise the context as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`.
    pub traceparent: String,
    /// Vendor entries, as received.
    pub tracestate: Option<String>,
    /// Baggage, as received.
    pub baggage: Option<String>,
}

impl TraceContext {
    /// The trace id of a well-formed `traceparent` (its 32 hex digits, not
    /// all zero), which dispatch records keep; `None` for one that is not.
    pub fn trace_id(&self) -> Option<&str> {
        let mut fields = self.traceparent.split('-');
        let (version, trace_id, parent_id, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let well_formed = hex(version, 2)
            && version != "ff"
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0')
            && (version != "00" || fields.next().is_none());
        well_formed.then_some(trace_id)
    }

    /// The trace id of a well-formed `traceparent`, as a number, and
    /// whether its caller sampled it (flag `01`).
    pub(crate) fn decision(&self) -> Option<(u128, bool)> {
        let trace_id = u128::from_str_radix(self.trace_id()?, 16).ok()?;
        let flags = self.traceparent.get(53..55)?;
        let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
        Some((trace_id, sampled))
    }

    /// The HTTP headers that carry it (a value that is no valid header
    /// value is left out rather than failing the call).
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("traceparent", Some(self.traceparent.as_str())),
            ("tracestate", self.tracestate.as_deref()),
            ("baggage", self.baggage.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            value
                .filter(|v| hyper::header::HeaderValue::from_str(v).is_ok())
                .map(|v| (name, v))
        })
    }
}

/// Progress an agent reports during a call (an MCP agent's
/// `notifications/progress`).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// How far it is; increases with each report.
    pub progress: f64,
    /// Where `progress` ends, if the agent knows.
    pub total: Option<f64>,
    /// What it is doing.
    pub message: Option<String>,
}

/// Where a call's progress goes: called once per report, in order, on the
/// task that receives it, so it must not block (hand the report to a
/// channel). Two sinks are equal when they are the same sink.
#[derive(Clone)]
pub struct ProgressSink(Arc<dyn Fn(Progress) + Send + Sync>);

impl ProgressSink {
    /// A sink calling `report` with each report.
    pub fn new(report: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        ProgressSink(Arc::new(report))
    }

    pub(crate) fn report(&self, progress: Progress) {
        (self.0)(progress)
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressSink")
    }
}

impl PartialEq for ProgressSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ProgressSink {}

/// One event of a streamed call (an A2A agent's `SendStreamingMessage` or
/// `SubscribeToTask`), as it arrives: the agent that sent it, and the event
/// (`{"task": …}`, `{"message": …}`, `{"statusUpdate": …}` or
/// `{"artifactUpdate": …}`, whatever binding carried it).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    /// The agent that sent it.
    pub agent_id: String,
    /// The event.
    pub event: serde_json::Value,
}

/// Where a streamed call's events go, in order, as they arrive: a bounded
/// channel, so an agent streaming faster than the caller reads waits for
/// the caller. Once one event has gone through, the call no longer fails
/// over (the caller has seen an agent's answer begin). Two sinks are equal
/// when they feed the same channel.
#[derive(Clone, Debug)]
pub struct EventSink {
    sender: tokio::sync::mpsc::Sender<StreamEvent>,
    relayed: Arc<std::sync::atomic::AtomicBool>,
}

impl EventSink {
    /// A sink feeding `sender`.
    pub fn new(sender: tokio::sync::mpsc::Sender<StreamEvent>) -> Self {
        EventSink {
            sender,
            relayed: Arc::default(),
        }
    }

    /// Passes `event` on; `false` when nobody reads the events any more
    /// (the caller went away).
    pub(crate) async fn send(&self, agent_id: &str, event: serde_json::Value) -> bool {
        let event = StreamEvent {
            agent_id: agent_id.to_string(),
            event,
        };
        let sent = self.sender.send(event).await.is_ok();
        if sent {
            self.relayed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        sent
    }

    /// Whether an event went through.
    pub fn relayed(&self) -> bool {
        self.relayed.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl PartialEq for EventSink {
    fn eq(&self, other: &Self) -> bool {
        self.sender.same_channel(&other.sender)
    }
}

impl Eq for EventSink {}

/// The severity of a log message, least severe first (the syslog levels MCP
/// uses).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail for debugging.
    Debug,
    /// What it is doing.
    Info,
    /// Normal but significant.
    Notice,
    /// Something may be wrong.
    Warning,
    /// Something failed.
    Error,
    /// A part does not work.
    Critical,
    /// Someone must act now.
    Alert,
    /// Nothing works.
    Emergency,
}

/// A log message an agent sends during a call (an MCP agent's
/// `notifications/message` on the call's response stream).
#[derive(Clone, Debug, PartialEq)]
pub struct LogMessage {
    /// How severe it is.
    pub level: LogLevel,
    /// The logger that wrote it, if the agent names one.
    pub logger: Option<String>,
    /// What it says: any JSON.
    pub data: serde_json::Value,
}

/// Where the log messages an agent sends about one call go, and the least
/// severe level the caller wants (asked of agents that take a level per
/// request). Called once per message, in order, on the task that receives
/// it, so it must not block. Two sinks are equal when they are the same sink.
#[derive(Clone)]
pub struct LogSink {
    level: LogLevel,
    deliver: Arc<dyn Fn(LogMessage) + Send + Sync>,
}

impl LogSink {
    /// A sink wanting messages of `level` and above, calling `deliver`
    /// with each message.
    pub fn new(level: LogLevel, deliver: impl Fn(LogMessage) + Send + Sync + 'static) -> Self {
        LogSink {
            level,
            deliver: Arc::new(deliver),
        }
    }

    /// The least severe level the caller wants.
    pub fn level(&self) -> LogLevel {
        self.level
    }

    /// Hands `message` on, if it is of the level wanted or above.
    pub(crate) fn log(&self, message: LogMessage) {
        if message.level >= self.level {
            (self.deliver)(message)
        }
    }
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogSink({:?})", self.level)
    }
}

impl PartialEq for LogSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.deliver, &other.deliver)
    }
}

impl Eq for LogSink {}

/// The future an [`InputRelay`] answers with.
pub type InputAnswer =
    Pin<Box<dyn Future<Output = std::result::Result<serde_json::Value, String>> + Send>>;

/// Who answers what an MCP agent asks the client during a call (sampling,
/// elicitation, roots): given the request as JSON (`{"method", "params"}`),
/// the client's result, or why it cannot answer. Two relays are equal when
/// they are the same relay.
#[derive(Clone)]
pub struct InputRelay(Arc<dyn Fn(serde_json::Value) -> InputAnswer + Send + Sync>);

impl InputRelay {
    /// A relay answering each request with `answer`.
    pub fn new(answer: impl Fn(serde_json::Value) -> InputAnswer + Send + Sync + 'static) -> Self {
        InputRelay(Arc::new(answer))
    }

    pub(crate) fn ask(&self, request: serde_json::Value) -> InputAnswer {
        (self.0)(request)
    }
}

impl fmt::Debug for InputRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InputRelay")
    }
}

impl PartialEq for InputRelay {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for InputRelay {}

/// Calls agents: one HTTP client (and a pool of plain connections) for every HTTP agent, and the handlers of
/// local agents by registration uid (a replaced agent's handler is dropped
/// once it is no longer current).
pub(crate) struct Callers {
    client: reqwest::Client,
    plain: plain::PlainPool,
    local: RwLock<HashMap<u64, LocalHandler>>,
    mcp: Arc<McpClients>,
    a2a: Arc<A2aClients>,
}

impl Callers {
    pub(crate) fn new(client: reqwest::Client) -> Self {
        Callers {
            mcp: Arc::new(McpClients::new(client.clone())),
            a2a: Arc::new(A2aClients::new(client.clone())),
            client,
            plain: plain::PlainPool::default(),
            local: RwLock::new(HashMap::new()),
        }
    }

    /// The MCP agents' connections (shared with the health probe and discovery).
    pub(crate) fn mcp(&self) -> &Arc<McpClients> {
        &self.mcp
    }

    /// The A2A agents' clients (shared with the health probe and discovery).
    pub(crate) fn a2a(&self) -> &Arc<A2aClients> {
        &self.a2a
    }

    /// The health probe for these agents.
    pub(crate) fn probe(&self) -> AgentProbe {
        AgentProbe {
            client: self.client.clone(),
            mcp: self.mcp.clone(),
            a2a: self.a2a.clone(),
        }
    }

    /// Binds a local agent's handler to its registration uid.
    pub(crate) fn bind_local(&self, uid: u64, handler: LocalHandler) {
        self.local.write().insert(uid, handler);
    }

    /// Drops the handlers (and MCP connections) of registrations that are
    /// no longer current.
    pub(crate) fn retain_local(&self, current: impl Fn(u64) -> bool) {
        self.local.write().retain(|uid, _| current(*uid));
        self.mcp.retain(&current);
        self.a2a.retain(current);
    }

    /// Runs one call, without a time limit (see `layers::timeout`).
    pub(crate) async fn call(
        &self,
        agent: &Agent,
        request: WireRequest<'_>,
    ) -> Result<serde_json::Value, Failure> {
        // The A2A and MCP clients' futures are boxed: inline, the largest of
        // them would size this future (and every call's, which is moved
        // into the heap once per call) for all transports, plain HTTP too.
        match &agent.endpoint {
            Endpoint::Local => {
                let handler = self.local.read().get(&agent.uid).cloned();
                match handler {
                    Some(handler) => local::call(&handler, request).await,
                    None => Err(Failure::Agent(
                        "the agent was replaced or removed before it was called".into(),
                    )),
                }
            }
            Endpoint::Http(endpoint) => {
                http::call(&self.client, &self.plain, endpoint, request).await
            }
            Endpoint::A2a(_) => {
                let Some(upstream) = self.a2a.upstream(agent) else {
                    return Err(Failure::Agent("not an A2A agent".into()));
                };
                let (_, skill) = agent.upstream_of(request.tool);
                let events = request.events.map(|sink| (sink, agent.id.as_str()));
                Box::pin(upstream.call(&skill, request.input, request.invocation_id, events)).await
            }
            Endpoint::Mcp(_) => {
                let Some(upstream) = self.mcp.upstream(agent) else {
                    return Err(Failure::Agent("not an MCP agent".into()));
                };
                Box::pin(call_mcp(&upstream, agent, &request)).await
            }
        }
    }
}

/// One call to an MCP agent: its tool, prompt, resource or template.
async fn call_mcp(
    upstream: &mcp::Upstream,
    agent: &Agent,
    request: &WireRequest<'_>,
) -> Result<serde_json::Value, Failure> {
    let (kind, name) = agent.upstream_of(request.tool);
    match kind {
        ServedKind::Tool => upstream
            .call(&name, request)
            .await
            .map_err(|(failure, _)| failure),
        ServedKind::Prompt => {
            upstream
                .get_prompt(&name, request.input, request.session_id)
                .await
        }
        ServedKind::Resource => upstream.read_resource(&name, request.session_id).await,
        ServedKind::Template => {
            // A template is read at the URI the call names, which it must
            // match: the template is all the agent offers.
            let uri = request.input.get("uri").and_then(|u| u.as_str());
            match uri {
                Some(uri) if uri_template_matches(&name, uri) => {
                    upstream.read_resource(uri, request.session_id).await
                }
                _ => Err(Failure::Tool(format!(
                    "a resource template is read with {{\"uri\": ...}}, a URI that matches \
                     {name:?}"
                ))),
            }
        }
    }
}

/// Health probes: `GET {health_url}` for HTTP agents, `ping` for MCP
/// agents, the Agent Card fetched again for A2A agents.
pub(crate) struct AgentProbe {
    client: reqwest::Client,
    mcp: Arc<McpClients>,
    a2a: Arc<A2aClients>,
}

impl Probe for AgentProbe {
    fn can_probe(&self, agent: &Agent) -> bool {
        agent.health_url.is_some() || matches!(agent.endpoint, Endpoint::Mcp(_) | Endpoint::A2a(_))
    }

    fn probe<'a>(
        &'a self,
        agent: &'a Arc<Agent>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            if let Some(upstream) = self.a2a.upstream(agent) {
                return if upstream.ping(timeout).await {
                    ProbeResult::Healthy
                } else {
                    ProbeResult::Unhealthy
                };
            }
            if let Some(upstream) = self.mcp.upstream(agent) {
                return if upstream.ping(timeout).await {
                    ProbeResult::Healthy
                } else {
                    ProbeResult::Unhealthy
                };
            }
            match &agent.health_url {
                Some(url) => http::probe(&self.client, url, timeout).await,
                None => ProbeResult::NoEndpoint,
            }
        })
    }
}

#[cfg(test)]
mod trace_tests {
    use super::TraceContext;

    fn id(traceparent: &str) -> Option<String> {
        TraceContext {
            traceparent: traceparent.into(),
            ..TraceContext::default()
        }
        .trace_id()
        .map(str::to_string)
    }

    #[test]
    fn only_a_well_formed_traceparent_has_a_trace_id() {
        assert_eq!(
            id("00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-00f067aa0ba902b7-01",
            "ff-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01-extra",
            "00-0af7651916cd43dd-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }
}
