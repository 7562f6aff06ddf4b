//! The `/mcp` endpoint: an `rmcp` streamable-HTTP service over one
//! [`ToolDispatcher`].
//!
//! It is mounted inside the HTTP API's router, so the bearer token, the body
//! limit and the access log apply as to every route; `rmcp` adds the `Host`
//! check (loopback by default: DNS-rebinding protection) and `Origin`
//! validation. The caller's token stays here: upstream agents are called by
//! the dispatcher with their own settings, never with the caller's headers.
//!
//! `tools/call` runs on its own task, holding one of the server's in-flight
//! invoke slots (`limits.max_inflight_invokes`, shared with `POST
//! /v1/invoke`) when the server has a cap; with none free the call is
//! answered as a tool error saying so. If the client cancels
//! (`notifications/cancelled`, or closing the response stream in
//! 2026-07-28), the call is cancelled: an MCP agent is sent the cancellation
//! too, and the dispatch record says `cancelled`.
//!
//! When the routed tools change (registrations, or tools MCP agents
//! discover), connected clients are told with
//! `notifications/tools/list_changed` (debounced), and with the prompts' and
//! resources' `list_changed` when what they may see of those changed: on
//! their session's stream in the 2025 revisions, on `subscriptions/listen`
//! in 2026-07-28. A 2025 session's announcing task ends with the session
//! (DELETE, or the idle expiry of `rmcp`'s session manager), not at the
//! next change.
//!
//! An agent's log messages about a call reach the client that made it,
//! from the level it asked for (`logging/setLevel` per 2025 session, `_meta`
//! per 2026-07-28 request). What an agent asks a 2026-07-28 client during a
//! call goes to it in `input_required` rounds (`rounds`).

use super::observed::Observed;
use super::rounds::{self, Rounds, Running, Step};
use super::{catalog, offers};
use crate::dispatch::{DiscoveredOffer, InvocationResult, RoutingOptions, ToolDispatcher};
use crate::error::Error;
use crate::namespace::{McpOfferKind, ToolCategory};
use crate::policy::{keys, PolicyContext, Principal};
use crate::transport::{
    InputRelay, LogLevel, LogMessage, LogSink, Progress, ProgressSink, TraceContext,
};
use parking_lot::Mutex;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, DiscoverResult, GetPromptRequestParams, GetPromptResponse, Implementation,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Changes of the tool list that come together are announced once, this
/// long after the first.
pub const LIST_CHANGED_DEBOUNCE: Duration = Duration::from_millis(100);

/// Waits for the next change of the routed tools, then for the debounce
/// window; `false` once the dispatcher is gone.
async fn next_change(changes: &mut tokio::sync::watch::Receiver<u64>) -> bool {
    if changes.changed().await.is_err() {
        return false;
    }
    tokio::time::sleep(LIST_CHANGED_DEBOUNCE).await;
    changes.borrow_and_update();
    true
}

/// The MCP server side of Switchboard: one per MCP session (or stateless
/// request); all share the dispatcher.
#[derive(Clone)]
pub struct SwitchboardMcp {
    dispatcher: ToolDispatcher,
    catalog: catalog::Catalog,
    /// The server's in-flight invoke slots, if it caps them.
    invoke_slots: Option<Arc<Semaphore>>,
    /// Dropped when the session this handler serves ends: `rmcp` drops a
    /// session's handler then, and its receivers see the sender gone.
    session: Arc<tokio::sync::watch::Sender<()>>,
    /// Sessions' list-change announcers still running, across all sessions.
    announcers: Arc<AtomicUsize>,
    /// The resource URIs this session subscribed to.
    subscribed: Arc<Mutex<HashSet<String>>>,
    /// How many sessions subscribe to each URI, across all sessions: the
    /// agents are told to stop only when the last one unsubscribes.
    subscribers: Arc<Mutex<HashMap<String, usize>>>,
    /// The calls of 2026-07-28 clients waiting for their input, across
    /// all requests.
    rounds: Rounds,
    /// The least severe log level this session asked for
    /// (`logging/setLevel`); `None`: it has not asked.
    log_level: Arc<Mutex<Option<LogLevel>>>,
}

/// Counts one running announcer for as long as it lives.
struct Announcing(Arc<AtomicUsize>);

impl Announcing {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Announcing(count.clone())
    }
}

impl Drop for Announcing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SwitchboardMcp {
    /// An MCP server whose tool calls go through `dispatcher`.
    pub fn new(dispatcher: ToolDispatcher) -> Self {
        SwitchboardMcp {
            catalog: catalog::Catalog::new(dispatcher.clone()),
            dispatcher,
            invoke_slots: None,
            session: Arc::new(tokio::sync::watch::channel(()).0),
            announcers: Arc::default(),
            subscribed: Arc::default(),
            subscribers: Arc::default(),
            rounds: Rounds::default(),
            log_level: Arc::default(),
        }
    }

    /// The handler of one new session: shares everything but the session's
    /// end, so each session's announcer stops when its own session ends.
    fn for_session(&self) -> Self {
        SwitchboardMcp {
            session: Arc::new(tokio::sync::watch::channel(()).0),
            subscribed: Arc::default(),
            log_level: Arc::default(),
            ..self.clone()
        }
    }

    /// Whether categories served by HTTP or local agents are listed as
    /// category tools (the default); `false` lists only the tools MCP agents
    /// serve by name, and refuses calls of category tools.
    pub fn with_category_tools(mut self, on: bool) -> Self {
        self.catalog = self.catalog.with_category_tools(on);
        self
    }

    /// Each `tools/call` takes a permit of `slots` for as long as its
    /// dispatch runs, and is refused when none is free.
    pub fn with_invoke_slots(mut self, slots: Arc<Semaphore>) -> Self {
        self.invoke_slots = Some(slots);
        self
    }

    /// A permit for one dispatch (none needed without a cap); `Err` when
    /// every slot is taken.
    fn invoke_slot(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        let Some(slots) = &self.invoke_slots else {
            return Ok(None);
        };
        slots.clone().try_acquire_owned().map(Some).map_err(|_| ())
    }

    /// Runs one dispatch for `principal` on its own task, holding an invoke
    /// slot while it runs (`Ok(None)`: every slot is taken, nothing ran),
    /// cancelled if the client cancels. The agent's progress (if the client
    /// asked for it) and log messages (see `log_to`) reach the client before
    /// this returns. `options` carry the trace context the dispatch continues.
    async fn dispatch(
        &self,
        tool: String,
        category: ToolCategory,
        input: serde_json::Value,
        options: RoutingOptions,
        principal: Option<Principal>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<crate::Result<InvocationResult>>, McpError> {
        let Some((task, relayed)) = self.start(tool, category, input, options, principal, context)
        else {
            return Ok(None);
        };
        let outcome = cancellable(task, context).await?;
        relayed.sent().await;
        Ok(Some(outcome))
    }

    /// Starts one dispatch for `principal` on its own task, holding an
    /// invoke slot while it runs (`None`: every slot is taken), with the
    /// agent's progress and log messages on their way to the client.
    fn start(
        &self,
        tool: String,
        category: ToolCategory,
        input: serde_json::Value,
        mut options: RoutingOptions,
        principal: Option<Principal>,
        context: &RequestContext<RoleServer>,
    ) -> Option<(rounds::Task, Relayed)> {
        if let Some(principal) = principal {
            options = options.with_caller(principal);
        }
        let (sink, progress) = progress_to(context).unzip();
        if let Some(sink) = sink {
            options = options.with_progress(sink);
        }
        let (log, logs) = log_to(context, &self.log_level).unzip();
        if let Some(log) = log {
            options = options.with_log(log);
        }
        let slot = self.invoke_slot().ok()?;
        let dispatcher = self.dispatcher.clone();
        let task = tokio::spawn(async move {
            let result = dispatcher.invoke(&tool, category, input, options).await;
            drop(slot);
            result
        });
        Some((task, Relayed { progress, logs }))
    }

    /// A named tool's call from a 2026-07-28 client whose agent may ask it
    /// for input (`capabilities` say what it answers): started, or resumed
    /// with the client's answers when it carries the `requestState` of a
    /// parked call, until it ends or asks again (see `rounds`). `Ok(None)`:
    /// every invoke slot is taken.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch_in_rounds(
        &self,
        tool: catalog::CatalogTool,
        request: &mut CallToolRequestParams,
        options: RoutingOptions,
        capabilities: rmcp::model::ClientCapabilities,
        principal: Option<Principal>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<Result<crate::Result<InvocationResult>, CallToolResponse>>, McpError> {
        let caller = principal.as_ref().map(|p| p.id.clone());
        let (running, relayed) = match request.request_state.take() {
            Some(state) => {
                let answers = request.input_responses.take().unwrap_or_default();
                let running = self
                    .rounds
                    .resume(&state, &tool.name, caller.as_deref(), answers)?;
                (running, None)
            }
            None => {
                let (relay, asks) = rounds::relay(capabilities);
                let arguments =
                    serde_json::Value::Object(request.arguments.take().unwrap_or_default());
                let options = options.with_input_relay(relay);
                let Some((task, relayed)) = self.start(
                    tool.name.clone(),
                    tool.category,
                    arguments,
                    options,
                    principal,
                    context,
                ) else {
                    return Ok(None);
                };
                (Running { task, asks }, Some(relayed))
            }
        };
        let step = self
            .rounds
            .next(running, &tool.name, caller, context)
            .await?;
        if let Some(relayed) = relayed {
            relayed.sent().await;
        }
        Ok(Some(match step {
            Step::Done(outcome) => Ok(outcome),
            Step::Asking(answer) => Err(answer),
        }))
    }

    /// Answers one `tools/call` (its duration and span are the caller's):
    /// finds the tool the caller may see and dispatches it, continuing `trace`.
    async fn answer_tool_call(
        &self,
        request: CallToolRequestParams,
        trace: Option<TraceContext>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let principal = caller(&context);
        let reader = principal.as_ref().map(|p| reader_context(p, "call_tool"));
        // A tool the caller may not see answers exactly as one that does not exist.
        let tool = match self.catalog.find_for(&request.name, reader.as_ref()) {
            catalog::Lookup::Tool(tool) => tool,
            catalog::Lookup::Unlisted(why) => {
                return Err(McpError::invalid_params(unlisted(&request.name, why), None))
            }
            catalog::Lookup::Unknown => {
                return Err(McpError::invalid_params(
                    format!("unknown tool {:?}; see tools/list", request.name),
                    None,
                ))
            }
        };
        if tool.is_named() {
            // A tool an MCP agent serves: the arguments are its input, and
            // its result goes back as the agent gave it.
            let mut options = with_trace(RoutingOptions::new(), trace);
            let outcome = if let Some(capabilities) = askable_capabilities(&context) {
                let mut request = request;
                match self
                    .dispatch_in_rounds(
                        tool,
                        &mut request,
                        options,
                        capabilities,
                        principal,
                        &context,
                    )
                    .await?
                {
                    Some(Err(input_required)) => return Ok(input_required),
                    Some(Ok(outcome)) => Some(outcome),
                    None => None,
                }
            } else {
                if let Some(relay) = input_relay_to(&context) {
                    options = options.with_input_relay(relay);
                }
                let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
                self.dispatch(
                    tool.name,
                    tool.category,
                    arguments,
                    options,
                    principal,
                    &context,
                )
                .await?
            };
            return match outcome {
                None => Ok(slots_full()),
                Some(Err(e)) => error_result(e),
                Some(Ok(r)) => Ok(serde_json::from_value::<CallToolResult>(r.output.clone())
                    .unwrap_or_else(|_| CallToolResult::structured(r.output))
                    .into()),
            };
        }
        let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let call: CategoryCall = match serde_json::from_value(arguments) {
            Ok(call) => call,
            Err(e) => {
                // Bad input is the tool's own failure, so the model can correct it.
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments: {e}; expected {{\"tool\": string, \"input\": object, \"session_id\"?: string}}"
                ))])
                .into());
            }
        };
        let mut options = with_trace(RoutingOptions::new(), trace);
        if let Some(session) = call.session_id {
            options = options.with_session_id(session);
        }
        let outcome = self
            .dispatch(
                call.tool,
                tool.category,
                call.input,
                options,
                principal,
                &context,
            )
            .await?;
        match outcome {
            None => Ok(slots_full()),
            Some(Err(e)) => error_result(e),
            Some(Ok(r)) => Ok(CallToolResult::structured(serde_json::json!({
                "agent_id": r.agent_id,
                "invocation_id": r.invocation_id,
                "attempts": r.attempts,
                "output": r.output,
            }))
            .into()),
        }
    }

    /// Answers one `prompts/get` (its duration and span are the caller's),
    /// continuing `trace`.
    async fn answer_get_prompt(
        &self,
        request: GetPromptRequestParams,
        trace: Option<TraceContext>,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let principal = caller(&context);
        let reader = principal.as_ref().map(|p| reader_context(p, "get_prompt"));
        let offer = offers::visible(
            &self.catalog,
            &self.dispatcher,
            reader.as_ref(),
            McpOfferKind::Prompt,
        )
        .into_iter()
        .find(|o| o.exposed_name == request.name)
        .ok_or_else(|| {
            McpError::invalid_params(
                format!("unknown prompt {:?}; see prompts/list", request.name),
                None,
            )
        })?;
        let input = request
            .arguments
            .map_or(serde_json::Value::Null, serde_json::Value::Object);
        let output = self
            .dispatch_offer(offer, input, principal, trace, &context)
            .await?;
        Ok(GetPromptResponse::Complete(offers::answer(
            output,
            "prompts/get",
        )?))
    }

    /// Answers one `resources/read` (its duration and span are the
    /// caller's), continuing `trace`.
    async fn answer_read_resource(
        &self,
        request: ReadResourceRequestParams,
        trace: Option<TraceContext>,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let principal = caller(&context);
        let reader = principal
            .as_ref()
            .map(|p| reader_context(p, "read_resource"));
        let offer = offers::offering_uri(
            &self.catalog,
            &self.dispatcher,
            reader.as_ref(),
            &request.uri,
        )
        .into_iter()
        .next()
        .ok_or_else(|| {
            McpError::resource_not_found(
                format!(
                    "unknown resource {:?}; see resources/list and resources/templates/list",
                    request.uri
                ),
                None,
            )
        })?;
        let input = serde_json::json!({"uri": request.uri});
        let output = self
            .dispatch_offer(offer, input, principal, trace, &context)
            .await?;
        Ok(ReadResourceResponse::Complete(offers::answer(
            output,
            "resources/read",
        )?))
    }

    /// The page of tools `request` asks for, of those the caller may see.
    fn tool_page(
        &self,
        request: Option<PaginatedRequestParams>,
        context: &RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let cursor = request.and_then(|r| r.cursor);
        let reader = caller(context).map(|p| reader_context(&p, "list_tools"));
        let (tools, next) =
            catalog::page(self.catalog.tools_for(reader.as_ref()), cursor.as_deref())
                .map_err(|m| McpError::invalid_params(m, None))?;
        let schema = Arc::new(catalog::category_input_schema());
        let tools = tools
            .into_iter()
            .map(|t| {
                let input = t.input_schema.map_or_else(|| schema.clone(), Arc::new);
                Tool::new(t.name, t.description, input)
            })
            .collect();
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next;
        if let Some((ttl_ms, _)) = self.cache_hints(context) {
            result.ttl_ms = Some(ttl_ms);
            result.cache_scope = Some(rmcp::model::CacheScope::Private);
        }
        Ok(result)
    }
}

/// `options` continuing `trace`, if there is one.
fn with_trace(options: RoutingOptions, trace: Option<TraceContext>) -> RoutingOptions {
    match trace {
        Some(trace) => options.with_trace(trace),
        None => options,
    }
}

/// Why a call was not dispatched.
const SLOTS_FULL: &str = "too many invokes in flight (limits.max_inflight_invokes); retry shortly";

/// The answer to a `tools/call` refused because every slot is taken.
fn slots_full() -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(SLOTS_FULL)]).into()
}

impl SwitchboardMcp {
    /// One page of the items of `kind` the caller may see (read as
    /// `action`), as the answer to its list request.
    fn offer_page<T: serde::de::DeserializeOwned>(
        &self,
        kind: McpOfferKind,
        action: &str,
        request: Option<PaginatedRequestParams>,
        context: &RequestContext<RoleServer>,
    ) -> Result<T, McpError> {
        let reader = caller(context).map(|p| reader_context(&p, action));
        let items = offers::visible(&self.catalog, &self.dispatcher, reader.as_ref(), kind);
        let (page, next) = offers::listing(items, request.and_then(|r| r.cursor).as_deref())?;
        let (field, method) = match kind {
            McpOfferKind::Prompt => ("prompts", "prompts/list"),
            McpOfferKind::Resource => ("resources", "resources/list"),
            McpOfferKind::ResourceTemplate => ("resourceTemplates", "resources/templates/list"),
        };
        let mut answer = serde_json::json!({field: page, "nextCursor": next});
        if let Some((ttl_ms, scope)) = self.cache_hints(context) {
            answer["ttlMs"] = ttl_ms.into();
            answer["cacheScope"] = scope.into();
        }
        offers::answer(answer, method)
    }

    /// What a 2026-07-28 client is told about caching a list (`ttlMs`,
    /// `cacheScope`); `None` for the older revisions, which do not have
    /// them. A list is of what its caller may see, so it is `private`; it
    /// stays fresh as long as Switchboard keeps the MCP agents' lists
    /// before reading them again (their changes, and registrations, are
    /// announced with `list_changed` meanwhile).
    fn cache_hints(&self, context: &RequestContext<RoleServer>) -> Option<(u64, &'static str)> {
        let client = context.peer.peer_info()?;
        if client.protocol_version != ProtocolVersion::V_2026_07_28 {
            return None;
        }
        let ttl = self
            .dispatcher
            .mcp_list_ttl()
            .unwrap_or(crate::dispatch::DEFAULT_DISCOVERY_TTL);
        Some((
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            "private",
        ))
    }

    /// Reads `offer` (a prompt or resource) for `principal`: one dispatch of
    /// its routed name with `input`, continuing `trace`, cancelled if the
    /// client cancels.
    async fn dispatch_offer(
        &self,
        offer: DiscoveredOffer,
        input: serde_json::Value,
        principal: Option<Principal>,
        trace: Option<TraceContext>,
        context: &RequestContext<RoleServer>,
    ) -> Result<serde_json::Value, McpError> {
        let outcome = self
            .dispatch(
                offer.routed_name,
                offer.category,
                input,
                with_trace(RoutingOptions::new(), trace),
                principal,
                context,
            )
            .await?
            .ok_or_else(|| McpError::internal_error(SLOTS_FULL, None))?;
        outcome
            .map(|result| result.output)
            .map_err(offers::request_error)
    }

    /// Forwards the resource updates this session subscribed to, until it
    /// ends; then gives up its subscriptions.
    fn forward_updates(&self, peer: rmcp::Peer<RoleServer>) {
        let mut updates = self.dispatcher.mcp_resource_updates();
        let mut ended = self.session.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = ended.changed() => break,
                    update = updates.recv() => match update {
                        Ok(uri) => {
                            if this.subscribed.lock().contains(&uri)
                                && peer
                                    .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                                    .await
                                    .is_err()
                            {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "an MCP session fell behind on resource updates; some were not delivered");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            let uris: Vec<String> = this.subscribed.lock().drain().collect();
            for uri in uris {
                this.release(&uri).await;
            }
        });
    }

    /// One subscriber more of `uri`: the agents `offering` it are asked for
    /// its updates. Refused (and not counted) when none of them accepts.
    async fn hold(&self, uri: &str, offering: &[DiscoveredOffer]) -> Result<(), String> {
        *self.subscribers.lock().entry(uri.to_string()).or_default() += 1;
        let mut failures = Vec::new();
        for offer in offering {
            if let Err(e) = self
                .dispatcher
                .mcp_subscribe(&offer.agent_id, uri, true)
                .await
            {
                failures.push(format!("{}: {e}", offer.agent_id));
            }
        }
        if failures.len() == offering.len() {
            self.release(uri).await;
            return Err(format!(
                "no agent offering {uri:?} accepted the subscription: {}",
                failures.join("; ")
            ));
        }
        Ok(())
    }

    /// One session fewer subscribes to `uri`; the last one tells the agents.
    async fn release(&self, uri: &str) {
        let last = {
            let mut subscribers = self.subscribers.lock();
            match subscribers.get_mut(uri) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    subscribers.remove(uri);
                    true
                }
                None => false,
            }
        };
        if last {
            for offer in offers::offering_uri(&self.catalog, &self.dispatcher, None, uri) {
                if let Err(e) = self
                    .dispatcher
                    .mcp_subscribe(&offer.agent_id, uri, false)
                    .await
                {
                    tracing::debug!(agent_id = %offer.agent_id, uri, error = %e, "resources/unsubscribe failed");
                }
            }
        }
    }
}

/// Where the progress of a call goes when its client asked for progress
/// (`_meta.progressToken`): to that client, as `notifications/progress`
/// under its own token. The first report starts a task that sends them in
/// order (queued, the newest dropped when the client reads too slowly), so
/// a call whose agent reports nothing costs no task: clients ask for
/// progress on every call.
fn progress_to(
    context: &RequestContext<RoleServer>,
) -> Option<(ProgressSink, Arc<Forwarding<Progress>>)> {
    let token = context.meta.get_progress_token()?;
    let peer = context.peer.clone();
    let forwarding = Arc::new(Forwarding::default());
    let shared = forwarding.clone();
    let sink = ProgressSink::new(move |report| {
        shared.send(report, |reports| {
            forward_progress(reports, peer.clone(), token.clone())
        })
    });
    Some((sink, forwarding))
}

/// Where the log messages an agent sends about a call go: to the client
/// that made the call, as `notifications/message` (on its session's
/// stream), from the level it asked for up. A client of the 2025 revisions
/// asks with `logging/setLevel`, for the rest of its session (until then it
/// gets every message the agent sends); a 2026-07-28 client asks per
/// request (`_meta` `io.modelcontextprotocol/logLevel`) and gets none
/// without. Like progress, the first message starts the task that sends
/// them in order.
fn log_to(
    context: &RequestContext<RoleServer>,
    session_level: &Arc<Mutex<Option<LogLevel>>>,
) -> Option<(LogSink, Arc<Forwarding<LogMessage>>)> {
    let stateless = context
        .peer
        .peer_info()
        .is_none_or(|client| client.protocol_version == ProtocolVersion::V_2026_07_28);
    let level = if stateless {
        requested_log_level(context)?
    } else {
        session_level.lock().unwrap_or(LogLevel::Debug)
    };
    let peer = context.peer.clone();
    let session_level = (!stateless).then(|| session_level.clone());
    let forwarding = Arc::new(Forwarding::default());
    let shared = forwarding.clone();
    let sink = LogSink::new(level, move |message| {
        // A session may change its level while the call runs.
        let wanted = session_level
            .as_ref()
            .and_then(|level| *level.lock())
            .unwrap_or(level);
        if message.level >= wanted {
            shared.send(message, |messages| forward_logs(messages, peer.clone()));
        }
    });
    Some((sink, forwarding))
}

/// The log level a 2026-07-28 request asks for in its `_meta`.
fn requested_log_level(context: &RequestContext<RoleServer>) -> Option<LogLevel> {
    serde_json::from_value(context.meta.get(LOG_LEVEL_META)?.clone()).ok()
}

/// The `_meta` key of a 2026-07-28 request asking for log messages from
/// this level up.
const LOG_LEVEL_META: &str = "io.modelcontextprotocol/logLevel";

/// Sends `messages` to `peer` until they end.
#[allow(deprecated)] // logging: deprecated in 2026-07-28, served to the clients that use it
async fn forward_logs(
    mut messages: tokio::sync::mpsc::Receiver<LogMessage>,
    peer: rmcp::Peer<RoleServer>,
) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    while let Some(message) = messages.recv().await {
        let level = match message.level {
            LogLevel::Debug => LoggingLevel::Debug,
            LogLevel::Info => LoggingLevel::Info,
            LogLevel::Notice => LoggingLevel::Notice,
            LogLevel::Warning => LoggingLevel::Warning,
            LogLevel::Error => LoggingLevel::Error,
            LogLevel::Critical => LoggingLevel::Critical,
            LogLevel::Alert => LoggingLevel::Alert,
            LogLevel::Emergency => LoggingLevel::Emergency,
        };
        let mut param = LoggingMessageNotificationParam::new(level, message.data);
        param.logger = message.logger;
        if peer.notify_logging_message(param).await.is_err() {
            return;
        }
    }
}

/// What an agent sends about one call (its progress, its log messages) on
/// its way to the client: the first item starts the task that sends them
/// in order.
struct Forwarding<T> {
    state: Mutex<ForwardState<T>>,
}

impl<T> Default for Forwarding<T> {
    fn default() -> Self {
        Forwarding {
            state: Mutex::new(ForwardState {
                sender: None,
                task: None,
                closed: false,
            }),
        }
    }
}

struct ForwardState<T> {
    sender: Option<tokio::sync::mpsc::Sender<T>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The call has answered: later items are dropped.
    closed: bool,
}

impl<T: Send + 'static> Forwarding<T> {
    /// Queues `item` (dropped when the client reads too slowly), starting
    /// `forward` on the queue with the first.
    fn send<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        item: T,
        forward: impl FnOnce(tokio::sync::mpsc::Receiver<T>) -> F,
    ) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        if state.sender.is_none() {
            let (sender, items) = tokio::sync::mpsc::channel(FORWARD_BACKLOG);
            state.task = Some(tokio::spawn(forward(items)));
            state.sender = Some(sender);
        }
        if let Some(sender) = &state.sender {
            let _ = sender.try_send(item);
        }
    }
}

/// Sends `reports` to `peer` under `token` until they end.
async fn forward_progress(
    mut reports: tokio::sync::mpsc::Receiver<Progress>,
    peer: rmcp::Peer<RoleServer>,
    token: rmcp::model::ProgressToken,
) {
    let mut last: Option<f64> = None;
    while let Some(first) = reports.recv().await {
        // The SDK hands each notification from the agent to a task of its
        // own, so reports sent together can arrive out of order: those that
        // come within a short window are put back in order, and one older
        // than what the client was told is dropped (the values a client
        // sees must increase).
        let mut batch = vec![first];
        let window = tokio::time::sleep(PROGRESS_REORDER_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => break,
                next = reports.recv() => match next {
                    Some(report) => batch.push(report),
                    None => break,
                },
            }
        }
        batch.sort_by(|a, b| a.progress.total_cmp(&b.progress));
        for report in batch {
            if last.is_some_and(|l| report.progress <= l) {
                continue;
            }
            last = Some(report.progress);
            let mut param = ProgressNotificationParam::new(token.clone(), report.progress);
            param.total = report.total;
            param.message = report.message;
            if peer.notify_progress(param).await.is_err() {
                return;
            }
        }
    }
}

/// What an agent sends about one call on its way to the client.
struct Relayed {
    progress: Option<Arc<Forwarding<Progress>>>,
    logs: Option<Arc<Forwarding<LogMessage>>>,
}

impl Relayed {
    /// Waits (briefly) until all of it is sent (see `all_sent`).
    async fn sent(self) {
        all_sent(self.progress).await;
        all_sent(self.logs).await;
    }
}

/// Waits (briefly) until what an agent sent about a call that has ended is
/// sent on: it must reach the client before the call's answer, which ends
/// the stream progress travels on.
async fn all_sent<T>(forwarding: Option<Arc<Forwarding<T>>>) {
    let Some(forwarding) = forwarding else {
        return;
    };
    let task = {
        let mut state = forwarding.state.lock();
        state.closed = true;
        state.sender = None;
        state.task.take()
    };
    if let Some(task) = task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
}

/// The capabilities of a 2026-07-28 client that can be asked for input
/// (it declares sampling, elicitation or roots in the request's `_meta`);
/// `None` for any other client: a client of a session of the 2025
/// revisions is asked on its session, and one that declares none of them
/// has its call dispatched without rounds.
fn askable_capabilities(
    context: &RequestContext<RoleServer>,
) -> Option<rmcp::model::ClientCapabilities> {
    let client = context.peer.peer_info()?;
    if client.protocol_version != ProtocolVersion::V_2026_07_28 {
        return None;
    }
    context
        .meta
        .client_capabilities()
        .filter(|c| c.sampling.is_some() || c.elicitation.is_some() || c.roots.is_some())
}

/// Who answers what an agent asks the calling client during its call
/// (sampling, elicitation, roots): the client itself, through requests on
/// its session, for each capability it declared. A 2026-07-28 client has no
/// session to ask on: `None` (its calls are asked in rounds, see `rounds`).
fn input_relay_to(context: &RequestContext<RoleServer>) -> Option<InputRelay> {
    let peer = context.peer.clone();
    let client = peer.peer_info()?;
    if client.protocol_version == ProtocolVersion::V_2026_07_28 {
        return None;
    }
    let capabilities = client.capabilities.clone();
    Some(InputRelay::new(move |request| {
        let peer = peer.clone();
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let declared = match method.as_str() {
            "sampling/createMessage" => capabilities.sampling.is_some(),
            "elicitation/create" => capabilities.elicitation.is_some(),
            "roots/list" => capabilities.roots.is_some(),
            _ => false,
        };
        Box::pin(async move {
            if !declared {
                return Err(format!(
                    "the calling client does not declare the capability {method} needs"
                ));
            }
            let request: rmcp::model::ServerRequest = serde_json::from_value(request)
                .map_err(|e| format!("{method} is not a request Switchboard relays: {e}"))?;
            let answer = peer
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(answer).map_err(|e| e.to_string())
        })
    }))
}

/// How long a progress report waits for reports sent with it (see
/// `progress_to`).
const PROGRESS_REORDER_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// Progress reports (or log messages) of one call waiting to be sent to a
/// slow client.
const FORWARD_BACKLOG: usize = 64;

/// The authenticated caller of an MCP request over HTTP (the API's auth
/// layer puts it in the request's extensions); `None` over stdio or on a
/// server that requires no credential.
fn caller(context: &RequestContext<RoleServer>) -> Option<Principal> {
    caller_in(&context.extensions)
}

/// The authenticated caller of the HTTP request a message came with.
fn caller_in(extensions: &rmcp::model::Extensions) -> Option<Principal> {
    extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

/// What one caller may see of the prompts, and of the resources and
/// resource templates, each as a fingerprint: a change is announced when
/// its fingerprint changes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct OffersSeen {
    prompts: u64,
    resources: u64,
}

/// What `caller` may see of the prompts and resources now.
fn offers_seen(
    catalog: &catalog::Catalog,
    dispatcher: &ToolDispatcher,
    caller: Option<&Principal>,
) -> OffersSeen {
    use std::hash::{Hash, Hasher};
    let print = |action: &str, kinds: &[McpOfferKind]| {
        let reader = caller.map(|p| reader_context(p, action));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for kind in kinds {
            for offer in offers::visible(catalog, dispatcher, reader.as_ref(), *kind) {
                format!("{offer:?}").hash(&mut hasher);
            }
        }
        hasher.finish()
    };
    OffersSeen {
        prompts: print("list_prompts", &[McpOfferKind::Prompt]),
        resources: print(
            "list_resources",
            &[McpOfferKind::Resource, McpOfferKind::ResourceTemplate],
        ),
    }
}

/// The policy context of a caller's reads through `/mcp`.
fn reader_context(caller: &Principal, action: &str) -> PolicyContext {
    let mut ctx = PolicyContext::new()
        .with("source", "mcp")
        .with(keys::ACTION, action);
    caller.apply_to(&mut ctx);
    ctx
}

/// The arguments of a category tool.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryCall {
    tool: String,
    #[serde(default)]
    input: serde_json::Value,
    session_id: Option<String>,
}

/// Why calling category `name` as a tool is refused, and what to call instead.
fn unlisted(name: &str, why: catalog::Unlisted) -> String {
    match why {
        catalog::Unlisted::TurnedOff => format!(
            "{name:?} is a category, and this server lists no category tools \
             ([mcp] category_tools = false, or --no-category-tools): call the tools \
             tools/list shows, by name"
        ),
        catalog::Unlisted::NamedToolsOnly => format!(
            "{name:?} is a category served only by MCP agents: call their tools by name, \
             with each tool's own arguments (see tools/list)"
        ),
    }
}

/// A dispatch error as an MCP answer: storage faults are the server's
/// (JSON-RPC internal error); everything else is the call's outcome, told to
/// the caller as an `isError` result with the reason.
pub fn error_result(e: Error) -> Result<CallToolResponse, McpError> {
    match e {
        Error::Storage(_) => Err(McpError::internal_error(e.to_string(), None)),
        other => Ok(CallToolResult::error(vec![ContentBlock::text(other.to_string())]).into()),
    }
}

impl SwitchboardMcp {
    /// `resources/subscribe`: held toward every agent offering the URI
    /// once, however many sessions subscribe.
    async fn answer_subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let reader = caller(&context).map(|p| reader_context(&p, "read_resource"));
        let uri = request.uri;
        let offering = offers::offering_uri(&self.catalog, &self.dispatcher, reader.as_ref(), &uri);
        if offering.is_empty() {
            return Err(McpError::resource_not_found(
                format!(
                    "unknown resource {uri:?}; see resources/list and resources/templates/list"
                ),
                None,
            ));
        }
        let new_here = {
            let mut subscribed = self.subscribed.lock();
            let first_of_session = subscribed.is_empty();
            let added = subscribed.insert(uri.clone());
            if first_of_session && added {
                self.forward_updates(context.peer.clone());
            }
            added
        };
        if new_here {
            if let Err(why) = self.hold(&uri, &offering).await {
                self.subscribed.lock().remove(&uri);
                return Err(McpError::internal_error(why, None));
            }
        }
        Ok(())
    }

    /// `completion/complete`, asked of one agent that offers the prompt or
    /// template, in that agent's own names.
    async fn answer_complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let reader = caller(&context).map(|p| reader_context(&p, "complete"));
        let mut params = serde_json::to_value(&request)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let target = match params["ref"]["type"].as_str() {
            Some("ref/prompt") => {
                let name = params["ref"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let offer = offers::visible(
                    &self.catalog,
                    &self.dispatcher,
                    reader.as_ref(),
                    McpOfferKind::Prompt,
                )
                .into_iter()
                .find(|o| o.exposed_name == name);
                if let Some(offer) = &offer {
                    params["ref"]["name"] = serde_json::Value::String(offer.name.clone());
                }
                offer
            }
            Some("ref/resource") => {
                let uri = params["ref"]["uri"].as_str().unwrap_or_default();
                offers::visible(
                    &self.catalog,
                    &self.dispatcher,
                    reader.as_ref(),
                    McpOfferKind::ResourceTemplate,
                )
                .into_iter()
                .find(|o| o.name == uri)
            }
            _ => None,
        };
        let Some(offer) = target else {
            return Err(McpError::invalid_params(
                "completion/complete: no prompt or resource template by that reference; see prompts/list and resources/templates/list",
                None,
            ));
        };
        let output = self
            .dispatcher
            .mcp_complete(&offer.agent_id, params)
            .await
            .map_err(offers::request_error)?;
        offers::answer(output, "completion/complete")
    }
}

impl ServerHandler for SwitchboardMcp {
    #[allow(deprecated)] // logging: deprecated in 2026-07-28, offered to the clients that use it
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_completions()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts_list_changed()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new(
            "switchboard",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "A tool whose input schema asks for `tool` and `input` is a Switchboard category: \
             pass the name of the tool to run and its input. Every other tool is called with its \
             own arguments. Switchboard routes each call to an agent serving it.",
        )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let observed = Observed::start("tools/list", None, None, &context);
        let answer = self.tool_page(request, &context);
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let observed = Observed::start("tools/call", Some(&request.name), None, &context);
        let trace = observed.trace();
        let answer = self.answer_tool_call(request, trace, context).await;
        observed.answered_call(&self.dispatcher, &answer);
        answer
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let observed = Observed::start("prompts/list", None, None, &context);
        let answer = self.offer_page(McpOfferKind::Prompt, "list_prompts", request, &context);
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let observed = Observed::start("prompts/get", Some(&request.name), None, &context);
        let trace = observed.trace();
        let answer = self.answer_get_prompt(request, trace, context).await;
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let observed = Observed::start("resources/list", None, None, &context);
        let answer = self.offer_page(McpOfferKind::Resource, "list_resources", request, &context);
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let observed = Observed::start("resources/templates/list", None, None, &context);
        let answer = self.offer_page(
            McpOfferKind::ResourceTemplate,
            "list_resources",
            request,
            &context,
        );
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let observed = Observed::start("resources/read", None, Some(&request.uri), &context);
        let trace = observed.trace();
        let answer = self.answer_read_resource(request, trace, context).await;
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    #[allow(deprecated)] // resources/subscribe of the 2025 revisions, which their clients speak
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let observed = Observed::start("resources/subscribe", None, Some(&request.uri), &context);
        let answer = self.answer_subscribe(request, context).await;
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    #[allow(deprecated)] // resources/unsubscribe of the 2025 revisions
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let observed = Observed::start("resources/unsubscribe", None, Some(&request.uri), &context);
        if self.subscribed.lock().remove(&request.uri) {
            self.release(&request.uri).await;
        }
        observed.answered(&self.dispatcher, None, false);
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let observed = Observed::start("completion/complete", None, None, &context);
        let answer = self.answer_complete(request, context).await;
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        // The peer's revision first, so the span names the one negotiated.
        context.peer.set_peer_info(request.clone());
        let observed = Observed::start("initialize", None, None, &context);
        let answer = self.negotiate_initialize(&request);
        observed.answered(&self.dispatcher, answer.as_ref().err(), false);
        answer
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        let observed = Observed::start("server/discover", None, None, &context);
        let answer = DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        );
        observed.answered(&self.dispatcher, None, false);
        Ok(answer)
    }

    #[allow(deprecated)] // logging/setLevel of the 2025 revisions, which their clients send
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let observed = Observed::start("logging/setLevel", None, None, &context);
        use rmcp::model::LoggingLevel;
        let level = match request.level {
            LoggingLevel::Debug => LogLevel::Debug,
            LoggingLevel::Info => LogLevel::Info,
            LoggingLevel::Notice => LogLevel::Notice,
            LoggingLevel::Warning => LogLevel::Warning,
            LoggingLevel::Error => LogLevel::Error,
            LoggingLevel::Critical => LogLevel::Critical,
            LoggingLevel::Alert => LogLevel::Alert,
            LoggingLevel::Emergency => LogLevel::Emergency,
        };
        // This session's calls are told from this level up; the agents are
        // not told (their connections are shared with other callers).
        *self.log_level.lock() = Some(level);
        observed.answered(&self.dispatcher, None, false);
        Ok(())
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        Observed::start("ping", None, None, &context).answered(&self.dispatcher, None, false);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A session of the 2025 revisions: tell it when the tools change,
        // and when the prompts or resources it may see change, until it
        // ends. Waiting for the next change alone would keep this task and
        // its peer alive after the session, for as long as the tools stay
        // the same.
        let mut changes = self.dispatcher.tools_changed();
        changes.borrow_and_update();
        let mut ended = self.session.subscribe();
        let live = Announcing::start(&self.announcers);
        let peer = context.peer;
        let caller = caller_in(&context.extensions);
        // Not the handler itself: it holds the session's end, which must
        // drop with the session.
        let (catalog, dispatcher) = (self.catalog.clone(), self.dispatcher.clone());
        tokio::spawn(async move {
            let _live = live;
            let mut seen = offers_seen(&catalog, &dispatcher, caller.as_ref());
            loop {
                tokio::select! {
                    _ = ended.changed() => return,
                    more = next_change(&mut changes) => {
                        if !more
                            || peer.is_transport_closed()
                            || peer.notify_tool_list_changed().await.is_err()
                        {
                            return;
                        }
                        let now = offers_seen(&catalog, &dispatcher, caller.as_ref());
                        if now.prompts != seen.prompts
                            && peer.notify_prompt_list_changed().await.is_err()
                        {
                            return;
                        }
                        if now.resources != seen.resources
                            && peer.notify_resource_list_changed().await.is_err()
                        {
                            return;
                        }
                        seen = now;
                    }
                }
            }
        });
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::builder();
        if requested.tools_list_changed == Some(true) {
            accepted = accepted.tools_list_changed();
        }
        if requested.prompts_list_changed == Some(true) {
            accepted = accepted.prompts_list_changed();
        }
        if requested.resources_list_changed == Some(true) {
            accepted = accepted.resources_list_changed();
        }
        for uri in requested.resource_subscriptions.iter().flatten() {
            accepted = accepted.resource_subscription(uri.clone());
        }
        Some(accepted.build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        // 2026-07-28: list changes and resource updates go on the client's
        // `subscriptions/listen` stream, for as long as it is open; its
        // span and duration are the stream's.
        let observed = Observed::start(
            "subscriptions/listen",
            None,
            None,
            context.request_context(),
        );
        let accepted = context.accepted().clone();
        let reader = caller(context.request_context()).map(|p| reader_context(&p, "read_resource"));
        // Listening before the agents are asked: an update right after
        // they accept must not be missed.
        let mut updates = self.dispatcher.mcp_resource_updates();
        let mut held = HashSet::new();
        for uri in accepted.resource_subscriptions.iter().flatten() {
            let offering =
                offers::offering_uri(&self.catalog, &self.dispatcher, reader.as_ref(), uri);
            // A URI the caller may not see (or nobody offers) gets no updates.
            if !offering.is_empty() && self.hold(uri, &offering).await.is_ok() {
                held.insert(uri.clone());
            }
        }
        let tools = accepted.tools_list_changed == Some(true);
        let prompts = accepted.prompts_list_changed == Some(true);
        let resources = accepted.resources_list_changed == Some(true);
        let caller = caller(context.request_context());
        let mut changes = self.dispatcher.tools_changed();
        changes.borrow_and_update();
        let mut seen = offers_seen(&self.catalog, &self.dispatcher, caller.as_ref());
        loop {
            tokio::select! {
                _ = context.cancelled() => break,
                more = next_change(&mut changes), if tools || prompts || resources => {
                    if !more {
                        break;
                    }
                    let sink = context.sink();
                    if tools && sink.notify_tool_list_changed().await.is_err() {
                        break;
                    }
                    let now = offers_seen(&self.catalog, &self.dispatcher, caller.as_ref());
                    if prompts
                        && now.prompts != seen.prompts
                        && sink.notify_prompt_list_changed().await.is_err()
                    {
                        break;
                    }
                    if resources
                        && now.resources != seen.resources
                        && sink.notify_resource_list_changed().await.is_err()
                    {
                        break;
                    }
                    seen = now;
                }
                update = updates.recv(), if !held.is_empty() => match update {
                    Ok(uri) if held.contains(&uri) => {
                        if context.sink().notify_resource_updated(uri).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an MCP subscription fell behind on resource updates; some were not delivered");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        for uri in held {
            self.release(&uri).await;
        }
        observed.answered(&self.dispatcher, None, false);
        Ok(())
    }
}

/// Awaits a dispatch task; if the client cancels first, the task is
/// aborted, which cancels the agent call and records the dispatch cancelled.
async fn cancellable(
    mut task: tokio::task::JoinHandle<crate::Result<crate::dispatch::InvocationResult>>,
    context: &RequestContext<RoleServer>,
) -> Result<crate::Result<crate::dispatch::InvocationResult>, McpError> {
    tokio::select! {
        joined = &mut task => joined.map_err(|e| McpError::internal_error(format!("dispatch task failed: {e}"), None)),
        _ = context.ct.cancelled() => {
            task.abort();
            Err(McpError::internal_error("the call was cancelled by the client", None))
        }
    }
}

/// The `/mcp` service of `handler` (built with [`SwitchboardMcp::new`] and
/// its settings): nest it with `Router::nest_service("/mcp", ..)`.
/// `max_body_bytes` caps a request body, like the API's body limit.
pub fn service(
    handler: SwitchboardMcp,
    max_body_bytes: usize,
) -> StreamableHttpService<SwitchboardMcp, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(max_body_bytes)
        // Browsers send `Origin`: only pages served from this machine may
        // call; DNS rebinding (a foreign name resolving to 127.0.0.1) is refused.
        .with_allowed_origins(["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"])
        .enforce_origin_validation();
    serve(handler, config)
}

fn serve(
    handler: SwitchboardMcp,
    config: StreamableHttpServerConfig,
) -> StreamableHttpService<SwitchboardMcp, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(handler.for_session()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_faults_are_internal_errors_and_the_rest_tool_errors() {
        let e = error_result(Error::storage("disk gone")).unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
        let denied = Error::PolicyDenied {
            key: "tools/code/x/1".into(),
            reason: "not this agent".into(),
        };
        let CallToolResponse::Complete(result) = error_result(denied).unwrap() else {
            panic!("expected a complete result");
        };
        assert_eq!(result.is_error, Some(true));
        let text = serde_json::to_string(&result.content).unwrap();
        assert!(text.contains("not this agent"), "{text}");
    }

    /// Opens a 2025-revision session at `url` and returns its id.
    async fn open_session(http: &reqwest::Client, url: &str) -> String {
        let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "test", "version": "0"}}});
        let answer = http
            .post(url)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .body(init.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "initialize: {}",
            answer.status()
        );
        let session = answer.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        answer.bytes().await.unwrap();
        let initialized =
            serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let answer = http
            .post(url)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .header("Mcp-Session-Id", &session)
            .header("MCP-Protocol-Version", "2025-11-25")
            .body(initialized.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "initialized: {}",
            answer.status()
        );
        session
    }

    /// Polls `done` every 20 ms for at most 10 s.
    async fn within_10s(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_sessions_release_their_announcers() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Database::open(dir.path().join("db")).unwrap();
        let handler = SwitchboardMcp::new(ToolDispatcher::new(db));
        let announcers = handler.announcers.clone();
        let app = axum::Router::new().nest_service(
            "/mcp",
            serve(handler, StreamableHttpServerConfig::default()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        crate::transport::TlsTrust::install_crypto_provider();
        let http = reqwest::Client::new();

        const SESSIONS: usize = 40;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            sessions.push(open_session(&http, &url).await);
        }
        assert!(
            within_10s(|| announcers.load(Ordering::SeqCst) == SESSIONS).await,
            "each initialised session should run one announcer; {} run",
            announcers.load(Ordering::SeqCst)
        );
        for session in &sessions {
            let answer = http
                .delete(&url)
                .header("Mcp-Session-Id", session)
                .header("MCP-Protocol-Version", "2025-11-25")
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "DELETE: {}", answer.status());
        }
        assert!(
            within_10s(|| announcers.load(Ordering::SeqCst) == 0).await,
            "every ended session's announcer (a task and a peer) should be gone; {} of {SESSIONS} still run",
            announcers.load(Ordering::SeqCst)
        );
    }
}
