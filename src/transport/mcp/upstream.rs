//! One MCP agent's connections: a shared connection for calls without a
//! session (and for every call on a stateless 2026-07-28 server), and on a
//! session-based (2025-06-18 / 2025-11-25) server one upstream session per
//! Switchboard session, so state a server keeps per session follows the
//! Switchboard session. A connection is made on first use (`server/discover`
//! first, `initialize` when the server is of the older revisions), remade
//! when it closes; an expired upstream session (HTTP 404) is initialised
//! again by the SDK's transport.
//!
//! A stdio server is a child process (one per agent, serving every call):
//! spawned on first use, its stderr logged line by line, and when it exits
//! it is started again on the next use, after a back-off that doubles with
//! each start that fails or dies young (up to [`MAX_RESTART_BACKOFF`]). Its
//! program must be in this node's command allow-list (`CommandPolicy`),
//! checked before every start.

use super::answer::{classify_error, output_of};
use super::call_stream::progress_of;
use super::calls::{AskRoutes, CallRoute, Unroutable};
use super::oauth::{OAuthHttp, Tokens};
use super::session_id::SessionId;
use super::tap::Tap;
use super::MAX_UPSTREAM_SESSIONS;
use crate::namespace::{EnvValue, HeaderPart, HeaderSource, McpCommand, McpServer, REDACTED_ENV};
use crate::policy::{CallerCredential, CommandPolicy, NetworkPolicy};
use crate::transport::{
    Failure, InputRelay, LogSink, Progress, ProgressSink, WireRequest, MAX_RESPONSE_BYTES,
};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult,
    CancelledNotificationParam, ClientCapabilities, ClientConfig, ClientRequest,
    ElicitRequestParams, ElicitResult, ErrorCode, Implementation, InputRequests, InputResponses,
    PaginatedRequestParams, PingRequest, ProgressNotificationParam, ProgressToken, ProtocolVersion,
    RequestId, RequestMetaObject, RequestParamsMeta, ResourceUpdatedNotificationParam,
    ServerNotification, ServerResult, SubscriptionFilter,
};
use rmcp::service::{
    ClientCacheConfig, ClientLifecycleMode, ClientServiceExt, InboundStreamOrigin,
    NotificationContext, PeerRequestOptions, RequestContext, RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, ServiceError};
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest wait before a stdio server is started again.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// The first wait before a stdio server that failed is started again.
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// A stdio server that ran at least this long before exiting restarts at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

type Running = RunningService<RoleClient, Handler>;

/// The longest stderr line logged as one; a longer one is logged in pieces.
const MAX_STDERR_LINE: u64 = 8 * 1024;

/// How many of a stdio server's last stderr lines a failed start reports.
const STDERR_TAIL_LINES: usize = 5;

/// How long a failed start waits for the server's stderr to end (a server
/// that died has closed it) before reporting the lines read so far.
const STDERR_TAIL_WAIT: Duration = Duration::from_millis(500);

/// The last lines a stdio server wrote to stderr, and whether it closed it.
#[derive(Default)]
struct StderrTail {
    lines: parking_lot::Mutex<std::collections::VecDeque<String>>,
    closed: tokio::sync::Notify,
    is_closed: std::sync::atomic::AtomicBool,
}

impl StderrTail {
    fn push(&self, line: &str) {
        let mut lines = self.lines.lock();
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    fn close(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }

    /// The last lines, once the server has closed its stderr or after
    /// [`STDERR_TAIL_WAIT`]; empty if it wrote none.
    async fn settled(&self) -> Vec<String> {
        let closed = self.closed.notified();
        if !self.is_closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(STDERR_TAIL_WAIT, closed).await;
        }
        self.lines.lock().iter().cloned().collect()
    }
}

/// Logs a stdio server's stderr line by line until the server closes it,
/// keeping the last lines in `tail` for an error about a failed start.
/// Read as bytes, whatever they are: a reader that stopped at a byte it
/// could not decode would close the pipe, and the server's next write to
/// stderr would fail (killing many servers, which would then be restarted
/// over and over).
async fn log_stderr(agent_id: String, stderr: tokio::process::ChildStderr, tail: Arc<StderrTail>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut stderr = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut stderr)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!(agent_id = %agent_id, "mcp server stderr: {text}");
                tail.push(text);
            }
            Err(e) => {
                tracing::warn!(agent_id = %agent_id, error = %e, "cannot read the stdio MCP server's stderr");
                break;
            }
        }
    }
    tail.close();
}

/// One connection: the SDK's service, the child process of a stdio server,
/// and the `subscriptions/listen` stream that carries a 2026-07-28
/// server's list changes.
struct Connection {
    running: Running,
    _child: Option<tokio::process::Child>,
    _list_changes: Option<Listening>,
}

/// A `subscriptions/listen` stream's task, ended when this is dropped.
struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// When a stdio server may be started again.
#[derive(Default)]
struct Restarts {
    /// Starts that failed or died young, in a row.
    failures: u32,
    not_before: Option<tokio::time::Instant>,
    last_start: Option<tokio::time::Instant>,
    /// Why the last start failed, for calls refused while it backs off.
    last_failure: Option<String>,
}

/// Receives the server's notifications on one connection.
#[derive(Clone)]
pub(crate) struct Handler {
    list_changed: Arc<dyn Fn() + Send + Sync>,
    updates: ResourceUpdates,
    progress: ProgressRoutes,
    /// This connection's calls in flight, for the requests the server
    /// makes back to the client during one of them.
    asks: Arc<AskRoutes>,
    /// The upstream session this connection is in (streamable HTTP).
    session: SessionId,
}

/// A live connection's peer, with what a call on it needs of the
/// connection: its calls in flight and its session.
pub(super) struct Link {
    pub(super) peer: Peer<RoleClient>,
    asks: Arc<AskRoutes>,
    session: SessionId,
}

impl Link {
    fn of(running: &Running) -> Link {
        let handler = running.service();
        Link {
            peer: running.peer().clone(),
            asks: handler.asks.clone(),
            session: handler.session.clone(),
        }
    }

    /// Notes request `id`, sent on this connection, on the current span (a
    /// dispatch's MCP client span while spans are made; else a no-op),
    /// with the connection's session.
    fn trace_request(&self, id: &RequestId) {
        let span = tracing::Span::current();
        span.record("jsonrpc.request.id", tracing::field::display(id));
        if let Some(session) = self.session.get() {
            span.record("mcp.session.id", &*session);
        }
    }
}

impl Handler {
    /// Relays `method` (with `params`), which the server asks during a
    /// call, to the client that made the call, and gives back its answer.
    async fn ask_caller<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Option<serde_json::Value>,
        context: &RequestContext<RoleClient>,
    ) -> Result<T, McpError> {
        let refused = |why: String| McpError::new(ErrorCode::METHOD_NOT_FOUND, why, None);
        let relay = match self
            .asks
            .relay_for(context.extensions.get::<InboundStreamOrigin>())
            .await
        {
            Ok(Some(relay)) => relay,
            Ok(None) => {
                return Err(refused(format!(
                    "Switchboard cannot relay {method}: the call it belongs to was not made \
                     through /mcp by a client that can be asked (a call through POST /v1/invoke \
                     or the library, or a category tool's call)"
                )))
            }
            Err(Unroutable::NoCall) => {
                return Err(refused(format!(
                    "Switchboard relays {method} only during a tools/call (to the client that \
                     made it); this request came while no call was in flight"
                )))
            }
            Err(Unroutable::Several(calls)) => {
                return Err(refused(format!(
                    "Switchboard cannot tell whose {method} this is: it came outside a call's \
                     response stream while {calls} calls were in flight on this connection; \
                     send it on the response stream of the tools/call it belongs to"
                )))
            }
        };
        let mut request = serde_json::json!({ "method": method });
        if let Some(params) = params {
            request["params"] = params;
        }
        let answer = relay
            .ask(request)
            .await
            .map_err(|why| refused(format!("the calling client did not answer {method}: {why}")))?;
        serde_json::from_value(answer).map_err(|e| {
            McpError::internal_error(
                format!(
                    "the calling client's answer to {method} is not what the method returns: {e}"
                ),
                None,
            )
        })
    }
}

/// The calls in flight that asked for progress, by the progress token
/// their request carries (the SDK gives each request its own, unique per
/// connection), so a report reaches the call that asked and no other.
/// These routes serve the reports the SDK's handler gets: those of a stdio
/// server, or sent on a stream other than the call's own. Those on a call's
/// response stream are routed in order before the answer (`call_stream`).
pub(super) type ProgressRoutes = Arc<parking_lot::Mutex<Routes>>;

/// Reports kept for a token no call has claimed yet.
const EARLY_REPORTS: usize = 64;

#[derive(Default)]
pub(super) struct Routes {
    sinks: HashMap<ProgressToken, ProgressSink>,
    /// Calls that have ended, still routed for [`LATE_REPORTS`]: the SDK
    /// can hand a report sent before the answer to the handler after it.
    ended: VecDeque<(ProgressToken, ProgressSink, tokio::time::Instant)>,
    /// The tokens whose call has had a report.
    reported: std::collections::HashSet<ProgressToken>,
    /// The token is the SDK's, known only once the request is on its way,
    /// so a quick server's first reports can come before the call claims
    /// them: they wait here (the latest few).
    early: VecDeque<(ProgressToken, Progress)>,
}

impl Routes {
    fn report(&mut self, token: ProgressToken, progress: Progress) {
        let now = tokio::time::Instant::now();
        while self.ended.front().is_some_and(|e| now - e.2 > LATE_REPORTS) {
            self.ended.pop_front();
        }
        if let Some((_, sink, _)) = self.ended.iter().find(|e| e.0 == token) {
            sink.report(progress);
            return;
        }
        match self.sinks.get(&token) {
            Some(sink) => {
                sink.report(progress);
                self.reported.insert(token);
            }
            None => {
                if self.early.len() == EARLY_REPORTS {
                    self.early.pop_front();
                }
                self.early.push_back((token, progress));
            }
        }
    }

    /// Routes `token`'s reports to `sink`, those that came already first.
    fn claim(&mut self, token: ProgressToken, sink: ProgressSink) {
        let mut reported = false;
        self.early.retain(|(early, progress)| {
            let mine = *early == token;
            if mine {
                sink.report(progress.clone());
                reported = true;
            }
            !mine
        });
        if reported {
            self.reported.insert(token.clone());
        }
        self.sinks.insert(token, sink);
    }

    /// Whether `token`'s call has had a report.
    fn has_reported(&self, token: &ProgressToken) -> bool {
        self.reported.contains(token)
    }
}

/// How long a call that reported progress through the SDK's handler keeps
/// its route after its answer: the SDK hands each notification to a task of
/// its own, so the last reports, sent before the answer, can be handled
/// just after it.
const PROGRESS_STRAGGLERS: Duration = Duration::from_millis(20);

/// How long an ended call's reports still reach its sink (without holding
/// up its answer), for reports the SDK handles later still.
const LATE_REPORTS: Duration = Duration::from_secs(1);

/// Ended calls kept routed at most (the oldest go first).
const ENDED_ROUTES: usize = 256;

/// Keeps a call's progress token routed while the call runs.
struct ProgressRoute {
    routes: ProgressRoutes,
    token: ProgressToken,
}

/// Tells the server a call was abandoned (`notifications/cancelled`) when
/// the call is dropped before its answer, as the SDK's own calls do.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

/// Sends `request` on `link` and awaits its answer, cancelling it upstream
/// if the caller goes away first; noted on the current span
/// ([`Link::trace_request`]).
pub(super) async fn send_traced(
    link: &Link,
    request: ClientRequest,
) -> Result<ServerResult, ServiceError> {
    let handle = link
        .peer
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await?;
    link.trace_request(&handle.id);
    let mut abandoned = CancelOnDrop {
        peer: link.peer.clone(),
        id: Some(handle.id.clone()),
    };
    let answer = handle.await_response().await;
    abandoned.id = None;
    answer
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let (Some(id), Ok(runtime)) = (self.id.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let peer = self.peer.clone();
        runtime.spawn(async move {
            let reason = Some("request abandoned by the caller".to_string());
            let _ = peer
                .notify_cancelled(CancelledNotificationParam::new(Some(id), reason))
                .await;
        });
    }
}

impl Drop for ProgressRoute {
    fn drop(&mut self) {
        let mut routes = self.routes.lock();
        routes.reported.remove(&self.token);
        if let Some(sink) = routes.sinks.remove(&self.token) {
            if routes.ended.len() == ENDED_ROUTES {
                routes.ended.pop_front();
            }
            let now = tokio::time::Instant::now();
            routes.ended.push_back((self.token.clone(), sink, now));
        }
    }
}

/// Where the URIs of `notifications/resources/updated` go: every MCP
/// agent's, to whoever subscribed (the `/mcp` sessions that asked).
pub(crate) type ResourceUpdates = tokio::sync::broadcast::Sender<String>;

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        (self.list_changed)();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        (self.list_changed)();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        (self.list_changed)();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let token = params.progress_token.clone();
        self.progress.lock().report(token, progress_of(params));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // Nobody subscribed is no error.
        let _ = self.updates.send(params.uri);
    }

    #[allow(deprecated)] // sampling of the 2025 revisions, which those servers send
    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, McpError> {
        let params = serde_json::to_value(params).ok();
        self.ask_caller("sampling/createMessage", params, &context)
            .await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let params = serde_json::to_value(params).ok();
        self.ask_caller("elicitation/create", params, &context)
            .await
    }

    #[allow(deprecated)] // roots of the 2025 revisions, which those servers ask for
    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, McpError> {
        self.ask_caller("roots/list", None, &context).await
    }

    fn get_info(&self) -> ClientConfig {
        // The version an `initialize` offers: only the 2025 revisions have
        // the handshake (2026-07-28 servers are reached by `server/discover`).
        // Sampling, elicitation and roots are declared because a call's
        // client may answer them: each request is relayed to the client of
        // the call it belongs to, and refused (saying why) when that client
        // cannot answer.
        ClientConfig::new(
            relayed_capabilities(),
            Implementation::new("switchboard", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }
}

/// What Switchboard's connections to MCP servers declare: what a calling
/// client may be asked for (form elicitation, the one mode every client of
/// elicitation supports).
fn relayed_capabilities() -> ClientCapabilities {
    serde_json::from_value(serde_json::json!({
        "sampling": {}, "elicitation": {"form": {}}, "roots": {}
    }))
    .unwrap_or_default()
}

/// One tool as a server's `tools/list` described it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ListedTool {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) input_schema: serde_json::Value,
}

const UNKNOWN: u8 = 0;
const STATELESS: u8 = 1;
const SESSIONS: u8 = 2;

/// One Switchboard session's upstream session, or one caller's connection.
struct Session {
    slot: Slot,
    /// Calls using it now (counted from the moment it is handed out).
    in_flight: Arc<AtomicUsize>,
    /// A caller's connection's own tokens (exchanged for the caller's).
    tokens: Option<Arc<Tokens>>,
}

/// Counts one call on a session for as long as it lives.
pub(super) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The upstream sessions of a session-based server, by Switchboard session.
#[derive(Default)]
struct Sessions {
    slots: HashMap<String, Session>,
    /// Least recently used first.
    order: VecDeque<String>,
}

/// One MCP agent's connections.
pub(crate) struct Upstream {
    agent_id: String,
    server: McpServer,
    http: reqwest::Client,
    list_changed: Arc<dyn Fn() + Send + Sync>,
    updates: ResourceUpdates,
    progress: ProgressRoutes,
    shared: Slot,
    sessions: parking_lot::Mutex<Sessions>,
    /// With `oauth.token_exchange`, each caller's connections (one, or one
    /// per Switchboard session on a session-based server), by the hash of
    /// the caller's JWT: a call only ever uses its own caller's token.
    callers: parking_lot::Mutex<Sessions>,
    /// Upstream sessions kept idle ([`MAX_UPSTREAM_SESSIONS`]; smaller in tests).
    max_sessions: usize,
    /// Whether the server keeps sessions (learnt from the first connection).
    kind: AtomicU8,
    restarts: parking_lot::Mutex<Restarts>,
    /// The OAuth token of a url server with `oauth`: one per registration,
    /// shared by its shared connection and every upstream session.
    tokens: Option<Arc<Tokens>>,
    /// On a 2026-07-28 server, the `subscriptions/listen` streams that
    /// carry each subscribed resource's updates (ended when dropped).
    pub(super) listens: parking_lot::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for (_, listen) in self.listens.get_mut().drain() {
            listen.abort();
        }
    }
}

impl Upstream {
    pub(crate) fn new(
        agent_id: String,
        server: McpServer,
        http: reqwest::Client,
        list_changed: Arc<dyn Fn() + Send + Sync>,
        updates: ResourceUpdates,
    ) -> Self {
        let tokens = match (&server.url, &server.oauth) {
            (Some(url), Some(oauth)) => Some(Arc::new(Tokens::new(
                agent_id.clone(),
                url.clone(),
                (**oauth).clone(),
                http.clone(),
            ))),
            _ => None,
        };
        Upstream {
            tokens,
            agent_id,
            server,
            http,
            list_changed,
            updates,
            progress: Arc::default(),
            shared: Arc::default(),
            sessions: parking_lot::Mutex::default(),
            callers: parking_lot::Mutex::default(),
            max_sessions: MAX_UPSTREAM_SESSIONS,
            kind: AtomicU8::new(UNKNOWN),
            restarts: parking_lot::Mutex::default(),
            listens: parking_lot::Mutex::default(),
        }
    }

    /// Where this server's resource updates are announced.
    pub(super) fn resource_updates(&self) -> &ResourceUpdates {
        &self.updates
    }

    /// The agent this upstream belongs to.
    pub(crate) fn agent_id(&self) -> &str {
        &self.agent_id
    }

    fn handler(&self) -> Handler {
        Handler {
            list_changed: self.list_changed.clone(),
            updates: self.updates.clone(),
            progress: self.progress.clone(),
            asks: Arc::default(),
            session: SessionId::default(),
        }
    }

    /// Connects, with `tokens` for a url server with OAuth.
    async fn connect(&self, tokens: Option<&Arc<Tokens>>) -> Result<Connection, Failure> {
        if self.server.command.is_some() {
            return self.start_stdio().await;
        }
        let auto = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let running = match self.connect_with(auto, tokens).await {
            Ok(running) => running,
            // A server that answers `server/discover` with only the 2025
            // revisions is a session-based server: `initialize` it.
            Err(first) => match self
                .connect_with(ClientLifecycleMode::Initialize, tokens)
                .await
            {
                Ok(running) => running,
                Err(_) => return Err(first),
            },
        };
        let modern = running
            .peer()
            .peer_info()
            .is_some_and(|info| info.protocol_version == ProtocolVersion::V_2026_07_28);
        self.kind
            .store(if modern { STATELESS } else { SESSIONS }, Ordering::Release);
        tracing::debug!(agent_id = %self.agent_id, modern, "connected to an MCP agent");
        Ok(Connection {
            _list_changes: self.listen_for_list_changes(&running),
            running,
            _child: None,
        })
    }

    /// Starts the stdio server (unless its back-off has not passed) and
    /// connects to it.
    async fn start_stdio(&self) -> Result<Connection, Failure> {
        let now = tokio::time::Instant::now();
        {
            let mut restarts = self.restarts.lock();
            if let Some(not_before) = restarts.not_before {
                if now < not_before {
                    let why = restarts
                        .last_failure
                        .as_deref()
                        .map(|e| format!(" (its last start failed: {e})"))
                        .unwrap_or_default();
                    return Err(Failure::Agent(format!(
                        "the stdio MCP server is restarting{why}; next start in {} ms",
                        (not_before - now).as_millis()
                    )));
                }
            }
            // A server that died young counts as a failed start.
            if let Some(last) = restarts.last_start {
                if now.duration_since(last) < HEALTHY_RUN {
                    restarts.failures += 1;
                } else {
                    restarts.failures = 0;
                }
            }
            restarts.last_start = Some(now);
            restarts.not_before = (restarts.failures > 0).then(|| {
                let backoff = FIRST_RESTART_BACKOFF
                    .saturating_mul(1 << restarts.failures.min(16))
                    .min(MAX_RESTART_BACKOFF);
                now + backoff
            });
        }
        // Every start of a stdio server serves all calls: no upstream sessions.
        self.kind.store(STATELESS, Ordering::Release);
        let auto = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let connection = match self.spawn_stdio(auto).await {
            Ok(connection) => Ok(connection),
            // Not every server of the 2025 revisions answers
            // `server/discover` in a way the SDK falls back from.
            Err(first) => self
                .spawn_stdio(ClientLifecycleMode::Initialize)
                .await
                .map_err(|_| first),
        };
        if let Err(failure) = &connection {
            let mut restarts = self.restarts.lock();
            restarts.last_failure = Some(failure.message(Duration::ZERO));
            restarts.failures = restarts.failures.max(1);
            let backoff = FIRST_RESTART_BACKOFF
                .saturating_mul(1 << restarts.failures.min(16))
                .min(MAX_RESTART_BACKOFF);
            restarts.not_before = Some(tokio::time::Instant::now() + backoff);
        }
        connection
    }

    async fn spawn_stdio(&self, lifecycle: ClientLifecycleMode) -> Result<Connection, Failure> {
        let Some(command) = &self.server.command else {
            return Err(Failure::Agent("this MCP agent has no command".into()));
        };
        // Checked again at every start, whatever let the registration in (a
        // record loaded from the store, one from the cluster, a list changed
        // since): only this node's allow-list decides what runs here.
        if let Err(refused) = CommandPolicy::current().check(&self.agent_id, command) {
            tracing::warn!(agent_id = %self.agent_id, program = %command.program, "refused to start a stdio MCP server: its program is not in this node's allow-list ([mcp] allow_commands)");
            return Err(Failure::Agent(refused.to_string()));
        }
        let env = resolve_env(command).map_err(Failure::Agent)?;
        let mut child = tokio::process::Command::new(&command.program);
        child
            .args(&command.args)
            .envs(env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &command.cwd {
            child.current_dir(cwd);
        }
        let mut child = child.spawn().map_err(|e| {
            Failure::Agent(format!(
                "cannot start the stdio MCP server {:?}: {e}",
                command.program
            ))
        })?;
        tracing::info!(agent_id = %self.agent_id, program = %command.program, pid = child.id(), "started a stdio MCP server");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Failure::Agent("the stdio MCP server has no pipes".into()));
        };
        let tail = Arc::new(StderrTail::default());
        tokio::spawn(log_stderr(self.agent_id.clone(), stderr, tail.clone()));
        let handler = self.handler();
        let running = match handler
            .serve_with_lifecycle((stdout, stdin), lifecycle)
            .await
        {
            Ok(running) => running,
            Err(e) => {
                // What the server said before it failed is usually why (a
                // missing key, a bad argument): the error carries it.
                let said = match tail.settled().await.as_slice() {
                    [] => String::from("; it wrote nothing to stderr"),
                    lines => format!("; the last lines of its stderr: {}", lines.join(" | ")),
                };
                return Err(Failure::Agent(format!(
                    "cannot initialise the stdio MCP server {:?}: {e}{said}",
                    command.program
                )));
            }
        };
        Ok(Connection {
            _list_changes: self.listen_for_list_changes(&running),
            running,
            _child: Some(child),
        })
    }

    /// On a 2026-07-28 server, which sends list changes only on
    /// `subscriptions/listen` streams, a stream of its own for the lists the
    /// server says change (tools, prompts, resources), for as long as the
    /// connection lives: each change has the agent listed again.
    fn listen_for_list_changes(&self, running: &Running) -> Option<Listening> {
        let peer = running.peer().clone();
        let server = peer.peer_info()?;
        if server.protocol_version != ProtocolVersion::V_2026_07_28 {
            return None;
        }
        let capabilities = &server.capabilities;
        let changes = |declared: Option<Option<bool>>| declared.flatten() == Some(true);
        let (tools, prompts, resources) = (
            changes(capabilities.tools.as_ref().map(|c| c.list_changed)),
            changes(capabilities.prompts.as_ref().map(|c| c.list_changed)),
            changes(capabilities.resources.as_ref().map(|c| c.list_changed)),
        );
        if !(tools || prompts || resources) {
            return None;
        }
        let mut filter = SubscriptionFilter::builder();
        if tools {
            filter = filter.tools_list_changed();
        }
        if prompts {
            filter = filter.prompts_list_changed();
        }
        if resources {
            filter = filter.resources_list_changed();
        }
        let filter = filter.build();
        let (agent_id, list_changed) = (self.agent_id.clone(), self.list_changed.clone());
        Some(Listening(tokio::spawn(async move {
            let mut subscription = match peer.listen(filter).await {
                Ok(subscription) => subscription,
                Err(e) => {
                    tracing::debug!(%agent_id, error = %e, "the MCP agent refused subscriptions/listen for its list changes; its lists are read again by TTL");
                    return;
                }
            };
            loop {
                match subscription.next().await {
                    Ok(Some(
                        ServerNotification::ToolListChangedNotification(_)
                        | ServerNotification::PromptListChangedNotification(_)
                        | ServerNotification::ResourceListChangedNotification(_),
                    )) => list_changed(),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%agent_id, error = %e, "an MCP agent's list-change subscription ended");
                        break;
                    }
                }
            }
        })))
    }

    async fn connect_with(
        &self,
        lifecycle: ClientLifecycleMode,
        tokens: Option<&Arc<Tokens>>,
    ) -> Result<Running, Failure> {
        let handler = self.handler();
        let Some(url) = &self.server.url else {
            return Err(Failure::Agent(
                "this MCP agent has no url; stdio servers are not supported by this build".into(),
            ));
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Failure::Agent(format!("MCP url {url:?}: {e}")))?;
        NetworkPolicy::current()
            .check_url(&parsed)
            .map_err(|e| Failure::Agent(e.to_string()))?;
        let headers = resolve_headers(&self.server).map_err(Failure::Agent)?;
        let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
            .custom_headers(headers)
            .reinit_on_expired_session(true)
            .max_json_response_size(MAX_RESPONSE_BYTES)
            .max_sse_event_size(MAX_RESPONSE_BYTES);
        let (session, calls) = (handler.session.clone(), handler.asks.clone());
        let connected = match tokens {
            Some(tokens) => {
                // Asked for here first so that a token that cannot be had
                // fails the connection with its own reason, not the
                // transport's account of it.
                tokens.token().await.map_err(Failure::Agent)?;
                let inner = OAuthHttp {
                    http: self.http.clone(),
                    tokens: tokens.clone(),
                };
                let http = Tap {
                    inner,
                    calls,
                    session,
                };
                let transport = StreamableHttpClientTransport::with_client(http, config);
                handler.serve_with_lifecycle(transport, lifecycle).await
            }
            None => {
                let inner = self.http.clone();
                let http = Tap {
                    inner,
                    calls,
                    session,
                };
                let transport = StreamableHttpClientTransport::with_client(http, config);
                handler.serve_with_lifecycle(transport, lifecycle).await
            }
        };
        connected.map_err(|e| Failure::Agent(format!("cannot connect to the MCP server: {e}")))
    }

    /// A live connection on `slot`, connecting with `tokens` if it has
    /// none (or a closed one).
    async fn peer_on(&self, slot: &Slot, tokens: Option<&Arc<Tokens>>) -> Result<Link, Failure> {
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref() {
            let running = &connection.running;
            if !running.is_closed() && !running.peer().is_transport_closed() {
                return Ok(Link::of(running));
            }
        }
        // Closed: drop it (a stdio server's process is killed) and start over.
        guard.take();
        let connection = self.connect(tokens).await?;
        let running = &connection.running;
        // Discovery keeps the lists (by the server's ttlMs) and reads them
        // again when they expire or the server says they changed: a read
        // must reach the server, not the SDK's own cache of its answers.
        running
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        let link = Link::of(running);
        *guard = Some(connection);
        Ok(link)
    }

    /// The peer for a call of `session`: its own upstream session on a
    /// session-based server, else the shared connection; and, for an own
    /// session, the count that keeps it from being ended while the call runs.
    pub(super) async fn peer_for(
        &self,
        session: Option<&str>,
    ) -> Result<(Peer<RoleClient>, Option<InFlight>), Failure> {
        let (link, in_flight) = self.link_for(session).await?;
        Ok((link.peer, in_flight))
    }

    /// [`Self::peer_for`], the whole connection.
    pub(super) async fn link_for(
        &self,
        session: Option<&str>,
    ) -> Result<(Link, Option<InFlight>), Failure> {
        let shared = self.peer_on(&self.shared, self.tokens.as_ref()).await?;
        let Some(session) = session else {
            return Ok((shared, None));
        };
        if self.kind.load(Ordering::Acquire) != SESSIONS {
            return Ok((shared, None));
        }
        let (slot, in_flight, _) = self.slot_in(&self.sessions, session, || None);
        let link = self.peer_on(&slot, self.tokens.as_ref()).await?;
        Ok((link, Some(in_flight)))
    }

    /// The link for a tool call: with `oauth.token_exchange`, a connection
    /// of the caller's own, whose tokens are exchanged for the caller's
    /// JWT (a call without one is refused, not run as the agent's client);
    /// otherwise [`Self::link_for`].
    async fn call_link_for(
        &self,
        session: Option<&str>,
        caller: Option<&CallerCredential>,
    ) -> Result<(Link, Option<InFlight>), Failure> {
        let Some(tokens) = self.tokens.as_ref().filter(|tokens| tokens.exchanges()) else {
            return self.link_for(session).await;
        };
        let Some(caller) = caller else {
            return Err(Failure::Tool(format!(
                "MCP agent {} is called with each caller's own token, exchanged for the JWT the \
                 caller authenticated with (oauth.token_exchange); this call has no such JWT \
                 (an API token, the server's static token, or no credential): call it with a \
                 JWT Switchboard accepts",
                self.agent_id
            )));
        };
        // Connected first: the shared connection tells whether the server
        // keeps sessions (and lists the tools as the agent's client).
        self.peer_on(&self.shared, Some(tokens)).await?;
        let digest = sha2::Sha256::digest(caller.expose().as_bytes());
        let mut key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(session) = session.filter(|_| self.kind.load(Ordering::Acquire) == SESSIONS) {
            key.push('/');
            key.push_str(session);
        }
        let (slot, in_flight, own) = self.slot_in(&self.callers, &key, || {
            Some(Arc::new(tokens.for_caller(caller.clone())))
        });
        let link = self.peer_on(&slot, own.as_ref()).await?;
        Ok((link, Some(in_flight)))
    }

    /// The slot under `key` in `slots` (with its own tokens, made by
    /// `tokens` when the slot is new), counted in flight until the guard
    /// drops. Making room ends the least recently used slots that have no
    /// call in flight: ending one with a call running would fail that call
    /// (another caller's, and no fault of the agent's) to make room for a
    /// new session id, which any caller can make up.
    fn slot_in(
        &self,
        slots: &parking_lot::Mutex<Sessions>,
        key: &str,
        tokens: impl FnOnce() -> Option<Arc<Tokens>>,
    ) -> (Slot, InFlight, Option<Arc<Tokens>>) {
        let mut sessions = slots.lock();
        let sessions = &mut *sessions;
        if let Some(entry) = sessions.slots.get(key) {
            entry.in_flight.fetch_add(1, Ordering::AcqRel);
            let taken = (
                entry.slot.clone(),
                InFlight(entry.in_flight.clone()),
                entry.tokens.clone(),
            );
            if let Some(at) = sessions.order.iter().position(|s| s == key) {
                let s = sessions.order.remove(at).expect("position is in range");
                sessions.order.push_back(s);
            }
            return taken;
        }
        while sessions.slots.len() >= self.max_sessions {
            let idle = sessions
                .order
                .iter()
                .position(|s| sessions.slots[s].in_flight.load(Ordering::Acquire) == 0);
            let Some(at) = idle else {
                // Every slot has a call in flight: this one goes past the
                // cap until some of them finish.
                break;
            };
            let oldest = sessions.order.remove(at).expect("position is in range");
            // Dropping the connection ends the upstream session.
            sessions.slots.remove(&oldest);
        }
        let entry = Session {
            slot: Slot::default(),
            in_flight: Arc::new(AtomicUsize::new(1)),
            tokens: tokens(),
        };
        let taken = (
            entry.slot.clone(),
            InFlight(entry.in_flight.clone()),
            entry.tokens.clone(),
        );
        sessions.slots.insert(key.to_string(), entry);
        sessions.order.push_back(key.to_string());
        taken
    }

    /// Calls tool `name` with `input` as its arguments. `Ok(true)` in the
    /// second place when the server did not know the tool.
    pub(crate) async fn call(
        &self,
        name: &str,
        request: &WireRequest<'_>,
    ) -> Result<serde_json::Value, (Failure, bool)> {
        let (session, progress, relay, log) = (
            request.session_id,
            request.progress,
            request.input_relay,
            request.log,
        );
        let arguments = match request.input {
            serde_json::Value::Object(map) => Some(map.clone()),
            serde_json::Value::Null => None,
            other => {
                return Err((
                    Failure::Tool(format!(
                        "an MCP tool takes a JSON object as its input, not {}",
                        kind_of(other)
                    )),
                    false,
                ))
            }
        };
        let (link, _in_flight) = self
            .call_link_for(session, request.caller_credential)
            .await
            .map_err(|f| (f, false))?;
        let mut params = CallToolRequestParams::new(name.to_string());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        // A 2026-07-28 server sends log messages only at the level a
        // request asks for in its `_meta`; the servers of the 2025
        // revisions have one level per connection, shared by every caller,
        // so theirs are filtered here (by the sink).
        if let Some(log) = log {
            let modern = link
                .peer
                .peer_info()
                .is_some_and(|info| info.protocol_version == ProtocolVersion::V_2026_07_28);
            if modern {
                params
                    .meta
                    .get_or_insert_with(RequestMetaObject::default)
                    .insert(LOG_LEVEL_META.to_string(), serde_json::json!(log.level()));
            }
        }
        if let Some(trace) = request.trace {
            params.set_traceparent(&trace.traceparent);
            if let Some(state) = &trace.tracestate {
                params.set_tracestate(state);
            }
            if let Some(baggage) = &trace.baggage {
                params.set_baggage(baggage);
            }
        }
        // A 2026-07-28 server asks the client for input by answering
        // `input_required`; the call is asked again with the client's
        // answers, on this connection, until it completes.
        for _ in 0..MAX_INPUT_ROUNDS {
            let answer = self
                .call_once(&link, params.clone(), progress, relay, log)
                .await;
            let required = match answer {
                Ok(CallToolResponse::Complete(result)) => {
                    return output_of(result).map_err(|f| (f, false))
                }
                Ok(CallToolResponse::InputRequired(required)) => required,
                Ok(_) => {
                    return Err((
                        Failure::Agent(format!(
                            "the MCP server answered tools/call of {name} with a task, which \
                             Switchboard does not follow"
                        )),
                        false,
                    ))
                }
                Err(e) => {
                    let (failure, unknown_tool) = classify_error(e, name);
                    if unknown_tool {
                        (self.list_changed)();
                    }
                    return Err((failure, unknown_tool));
                }
            };
            let answers = answer_input(relay, required.input_requests.unwrap_or_default())
                .await
                .map_err(|f| (f, false))?;
            params.input_responses = (!answers.is_empty()).then_some(answers);
            params.request_state = required.request_state;
        }
        Err((
            Failure::Agent(format!(
                "the MCP server still asked for input after {MAX_INPUT_ROUNDS} rounds of tools/call of {name}"
            )),
            false,
        ))
    }

    /// One `tools/call`: its progress reports go to `sink` while it runs,
    /// what the server asks the client meanwhile (a 2025 server's sampling,
    /// elicitation and roots requests) goes to `relay`, and its log
    /// messages to `log`.
    async fn call_once(
        &self,
        link: &Link,
        params: CallToolRequestParams,
        sink: Option<&ProgressSink>,
        relay: Option<&InputRelay>,
        log: Option<&LogSink>,
    ) -> Result<CallToolResponse, ServiceError> {
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = link
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await?;
        link.trace_request(&handle.id);
        let _asking = link.asks.add(
            handle.id.clone(),
            CallRoute {
                relay: relay.cloned(),
                log: log.cloned(),
                progress_token: handle.progress_token.clone(),
                progress: sink.cloned(),
            },
        );
        let route = sink.map(|sink| {
            let token = handle.progress_token.clone();
            self.progress.lock().claim(token.clone(), sink.clone());
            ProgressRoute {
                routes: self.progress.clone(),
                token,
            }
        });
        let mut abandoned = CancelOnDrop {
            peer: link.peer.clone(),
            id: Some(handle.id.clone()),
        };
        let answer = handle.await_response().await;
        abandoned.id = None;
        // Only calls that report progress wait for stragglers; the rest
        // (most: clients ask for progress on every call) answer at once.
        if let Some(route) = &route {
            if self.progress.lock().has_reported(&route.token) {
                tokio::time::sleep(PROGRESS_STRAGGLERS).await;
            }
        }
        match answer? {
            ServerResult::CallToolResult(result) => Ok(CallToolResponse::Complete(result)),
            ServerResult::InputRequiredResult(required) => {
                Ok(CallToolResponse::InputRequired(required))
            }
            // `{}`: a result with no content, as the SDK's own call reads it.
            ServerResult::EmptyResult(_) => {
                Ok(CallToolResponse::Complete(CallToolResult::default()))
            }
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    /// A cheap protocol probe: `ping` (any JSON-RPC answer, an error
    /// included, shows the server is up and speaking MCP).
    pub(crate) async fn ping(&self, timeout: Duration) -> bool {
        let probe = async {
            let (peer, _) = self.peer_for(None).await.ok()?;
            match peer
                .send_request(ClientRequest::PingRequest(PingRequest::default()))
                .await
            {
                Ok(_) | Err(ServiceError::McpError(_)) => Some(()),
                Err(_) => None,
            }
        };
        matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(())))
    }

    /// Every tool the server lists (following `nextCursor`, at most
    /// `max_pages` pages and `max_tools` tools), and the list's TTL if the
    /// server gave one. Connecting and each page get at most `timeout`: a
    /// server that accepts a request and never answers must not hold the
    /// agent's discovery (and the connection it waits on) forever.
    pub(crate) async fn list_tools(
        &self,
        max_pages: usize,
        max_tools: usize,
        timeout: Duration,
    ) -> Result<(Vec<ListedTool>, Option<Duration>), Failure> {
        let (peer, _) = tokio::time::timeout(timeout, self.peer_for(None))
            .await
            .map_err(|_| Failure::Timeout)??;
        let bounds = ListBounds {
            max_pages,
            max_items: max_tools,
            timeout,
        };
        // The shortest TTL of the pages read (u64::MAX: none given).
        let ttl = std::sync::atomic::AtomicU64::new(u64::MAX);
        let tools = every_page("tools/list", &self.agent_id, bounds, |cursor| {
            let (peer, ttl) = (peer.clone(), &ttl);
            async move {
                let page = peer.list_tools(with_cursor(cursor)).await?;
                if let Some(page_ttl) = page.ttl_ms {
                    ttl.fetch_min(page_ttl, Ordering::Relaxed);
                }
                let tools = page.tools.into_iter().map(|tool| ListedTool {
                    name: tool.name.to_string(),
                    description: tool.description.map(|d| d.to_string()),
                    input_schema: serde_json::Value::Object((*tool.input_schema).clone()),
                });
                Ok((tools.collect(), page.next_cursor))
            }
        })
        .await?;
        let ttl = ttl.into_inner();
        Ok((tools, (ttl != u64::MAX).then(|| Duration::from_millis(ttl))))
    }
}

/// How much of one list a server is read for: pages, items, and the time
/// each page may take.
#[derive(Clone, Copy)]
pub(super) struct ListBounds {
    pub(super) max_pages: usize,
    pub(super) max_items: usize,
    pub(super) timeout: Duration,
}

/// Reads every page of one list (`what`, e.g. `tools/list`) within
/// `bounds`, logging what it leaves out: `page` asks for the page after a
/// cursor and gives its items and the next cursor.
pub(super) async fn every_page<T, F, Fut>(
    what: &str,
    agent_id: &str,
    bounds: ListBounds,
    mut page: F,
) -> Result<Vec<T>, Failure>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), ServiceError>>,
{
    let mut items = Vec::new();
    let mut cursor = None;
    for _ in 0..bounds.max_pages {
        let (listed, next) = tokio::time::timeout(bounds.timeout, page(cursor.take()))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| classify_error(e, what).0)?;
        for item in listed {
            if items.len() >= bounds.max_items {
                tracing::warn!(
                    agent_id,
                    what,
                    max_items = bounds.max_items,
                    "the MCP agent lists more than Switchboard keeps; the rest are ignored"
                );
                return Ok(items);
            }
            items.push(item);
        }
        match next {
            Some(next) if !next.is_empty() => cursor = Some(next),
            _ => return Ok(items),
        }
    }
    tracing::warn!(
        agent_id,
        what,
        max_pages = bounds.max_pages,
        "the MCP agent's list has more pages than Switchboard reads; the rest are ignored"
    );
    Ok(items)
}

/// The request for the page after `cursor` (the first page without one).
pub(super) fn with_cursor(cursor: Option<String>) -> Option<PaginatedRequestParams> {
    Some(PaginatedRequestParams::default().with_cursor(cursor))
}

/// The `_meta` key of a 2026-07-28 request asking for its log messages
/// from this level up.
const LOG_LEVEL_META: &str = "io.modelcontextprotocol/logLevel";

/// The most `input_required` rounds one call goes through.
const MAX_INPUT_ROUNDS: usize = 10;

/// The client's answers to what a server asked for, by the server's keys,
/// through `relay`; without one (a call not made by an MCP client), the
/// call fails saying what was asked.
async fn answer_input(
    relay: Option<&InputRelay>,
    requests: InputRequests,
) -> Result<InputResponses, Failure> {
    let mut answers = InputResponses::new();
    for (key, request) in requests {
        let request = serde_json::to_value(&request)
            .map_err(|e| Failure::Agent(format!("an input request does not encode: {e}")))?;
        let method = request["method"]
            .as_str()
            .unwrap_or("an input request")
            .to_string();
        let Some(relay) = relay else {
            return Err(Failure::Tool(format!(
                "the MCP server asks the client for {method} during the call, which only a call \
                 made through /mcp by a client that supports it can answer"
            )));
        };
        let answer = relay
            .ask(request)
            .await
            .map_err(|why| Failure::Tool(format!("the client did not answer {method}: {why}")))?;
        answers.insert(key, answer);
    }
    Ok(answers)
}

/// A stdio command's `env` as this node starts it: `${VAR}` is this
/// process's variable `VAR`, `file:PATH` the contents of the file (without
/// a trailing newline), anything else the value as written. A redacted
/// value means a literal secret written on another node, which the cluster
/// does not share.
fn resolve_env(command: &McpCommand) -> Result<Vec<(String, String)>, String> {
    command
        .env
        .iter()
        .map(|(name, value)| {
            let resolved = match EnvValue::of(value) {
                EnvValue::Literal(REDACTED_ENV) => return Err(arrived_redacted(name)),
                EnvValue::Literal(literal) => literal.to_string(),
                EnvValue::File(path) => super::read_secret_file(path).map_err(|e| {
                    format!("env {name} of the stdio MCP server: cannot read {value:?}: {e}")
                })?,
                EnvValue::Variable(var) => std::env::var(var).map_err(|_| {
                    format!(
                        "env {name} of the stdio MCP server is {value}, but {var} is not set (or \
                         not UTF-8) in this node's environment; set it where Switchboard starts"
                    )
                })?,
            };
            Ok((name.clone(), resolved))
        })
        .collect()
}

/// A url server's `headers` as this node sends them: each `${VAR}` is this
/// process's variable, `file:PATH` the file's contents (without a trailing
/// newline). Read at each connection, so a rotated secret is picked up by
/// the next one.
pub(crate) fn resolve_headers(
    server: &McpServer,
) -> Result<HashMap<HeaderName, HeaderValue>, String> {
    server
        .headers
        .iter()
        .map(|(name, value)| {
            let source = HeaderSource::of(name, value).map_err(|e| e.to_string())?;
            let text = match source {
                HeaderSource::File(path) => super::read_secret_file(path).map_err(|e| {
                    format!("header {name} of the MCP server: cannot read {value:?}: {e}")
                })?,
                HeaderSource::Template(parts) => {
                    let mut text = String::new();
                    for part in parts {
                        match part {
                            HeaderPart::Text(t) => text.push_str(t),
                            HeaderPart::Variable(var) => {
                                text.push_str(&std::env::var(var).map_err(|_| {
                                    format!(
                                        "header {name} of the MCP server is {value:?}, but {var} \
                                         is not set (or not UTF-8) in this node's environment; \
                                         set it where Switchboard starts"
                                    )
                                })?)
                            }
                        }
                    }
                    text
                }
            };
            let header = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            let mut resolved = HeaderValue::try_from(text).map_err(|_| {
                format!(
                    "header {name} of the MCP server: what {value:?} resolves to is not a valid \
                     header value (a newline or control character?)"
                )
            })?;
            resolved.set_sensitive(true);
            Ok((header, resolved))
        })
        .collect()
}

/// Why a command whose `env` value arrived redacted is not started.
fn arrived_redacted(name: &str) -> String {
    format!(
        "env {name} of the stdio MCP server reached this node redacted: literal env values are \
         secrets and are not shared between nodes; write it as \"${{VAR}}\" or \"file:PATH\" \
         so each node resolves it"
    )
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolResponse, CallToolResult, ServerCapabilities, ServerConfig};
    use rmcp::service::RequestContext;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
    use std::borrow::Cow;

    /// A call of no caller's in particular, in `session`.
    fn wire<'a>(input: &'a serde_json::Value, session: Option<&'a str>) -> WireRequest<'a> {
        WireRequest {
            invocation_id: "test",
            tool: "test",
            category: "test",
            input,
            session_id: session,
            progress: None,
            input_relay: None,
            events: None,
            log: None,
            trace: None,
            caller_credential: None,
        }
    }

    /// A session-based MCP server whose `wait` tool answers once the gate opens.
    #[derive(Clone)]
    struct Gated {
        open: Arc<tokio::sync::watch::Sender<bool>>,
        waiting: Arc<AtomicUsize>,
    }

    impl ServerHandler for Gated {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }

        fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
            Cow::Owned(vec![ProtocolVersion::V_2025_11_25])
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _context: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, McpError> {
            if request.name == "wait" {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let _ = self.open.subscribe().wait_for(|open| *open).await;
            }
            Ok(CallToolResult::structured(serde_json::json!({"tool": request.name})).into())
        }
    }

    #[test]
    fn env_references_are_resolved_on_this_node_and_redacted_values_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api_key");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let mut command = McpCommand {
            program: "/bin/true".into(),
            ..McpCommand::default()
        };
        command.env.insert("LITERAL".into(), "as-written".into());
        // Cargo sets this variable for every test it runs.
        command
            .env
            .insert("FROM_VAR".into(), "${CARGO_PKG_NAME}".into());
        command
            .env
            .insert("FROM_FILE".into(), format!("file:{}", file.display()));
        let env: std::collections::BTreeMap<String, String> =
            resolve_env(&command).unwrap().into_iter().collect();
        assert_eq!(env["LITERAL"], "as-written");
        assert_eq!(env["FROM_VAR"], env!("CARGO_PKG_NAME"));
        assert_eq!(env["FROM_FILE"], "from-a-file");

        let mut unset = command.clone();
        unset.env.insert(
            "MISSING".into(),
            "${SWITCHBOARD_TEST_VARIABLE_NOBODY_SETS}".into(),
        );
        let err = resolve_env(&unset).unwrap_err();
        assert!(
            err.contains("SWITCHBOARD_TEST_VARIABLE_NOBODY_SETS") && err.contains("not set"),
            "{err}"
        );
        let mut shared = command.clone();
        shared.env.insert("API_KEY".into(), REDACTED_ENV.into());
        let err = resolve_env(&shared).unwrap_err();
        assert!(err.contains("API_KEY") && err.contains("${VAR}"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_with_a_call_in_flight_is_not_ended_to_make_room() {
        let gated = Gated {
            open: Arc::new(tokio::sync::watch::channel(false).0),
            waiting: Arc::default(),
        };
        let handler = gated.clone();
        let service = StreamableHttpService::new(
            move || Ok(handler.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let app = axum::Router::new().nest_service("/mcp", service);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let server = McpServer {
            url: Some(url),
            ..McpServer::default()
        };
        let http = crate::transport::http::build_client().unwrap();
        let mut upstream = Upstream::new(
            "a".into(),
            server,
            http,
            Arc::new(|| {}),
            tokio::sync::broadcast::channel(1).0,
        );
        upstream.max_sessions = 2;
        let upstream = Arc::new(upstream);

        let held = tokio::spawn({
            let upstream = upstream.clone();
            async move {
                upstream
                    .call("wait", &wire(&serde_json::json!({}), Some("held")))
                    .await
            }
        });
        for _ in 0..500 {
            if gated.waiting.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            gated.waiting.load(Ordering::SeqCst),
            1,
            "the held call never reached the server"
        );
        // New session ids, each past the cap of 2: the held session is the
        // least recently used, but it has a call in flight.
        for session in ["b", "c", "d"] {
            upstream
                .call("quick", &wire(&serde_json::json!({}), Some(session)))
                .await
                .unwrap_or_else(|(e, _)| {
                    panic!("session {session}: {}", e.message(Duration::ZERO))
                });
        }
        gated.open.send_replace(true);
        let answer = tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("the held call should finish once the server answers")
            .unwrap();
        let output = answer.unwrap_or_else(|(e, _)| {
            panic!(
                "the held call failed when other sessions needed room: {}",
                e.message(Duration::ZERO)
            )
        });
        assert_eq!(output["structuredContent"]["tool"], "wait", "{output}");
        {
            let sessions = upstream.sessions.lock();
            let mut kept: Vec<&str> = sessions.slots.keys().map(String::as_str).collect();
            kept.sort_unstable();
            assert_eq!(
                kept,
                ["d", "held"],
                "idle sessions make room, the busy one stays"
            );
        }
    }
}
