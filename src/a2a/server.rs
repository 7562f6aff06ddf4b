//! The A2A routes of `serve`: `GET /.well-known/agent-card.json`
//! (Switchboard's own Agent Card, listing the skills the caller may see)
//! and `POST /a2a` (A2A v1.0 over JSON-RPC: `SendMessage`, `GetTask`,
//! `CancelTask`, `ListTasks`, and `SendStreamingMessage` and
//! `SubscribeToTask` answered with server-sent events). Each call is one
//! `ToolDispatcher::invoke` of the skill in its category, so strategies,
//! policies, rate limits, failover and the dispatch record apply as to any
//! tool call; the caller's credential is never passed on (an agent is
//! called with its registration's headers).

use super::skills::{self, Skill};
use super::tasks;
use crate::dispatch::{RoutingOptions, ToolDispatcher};
use crate::error::Error;
use crate::mcp::catalog::Catalog;
use crate::namespace::{new_invocation_id, AGENT_CARD_PATH};
use crate::policy::{keys, PolicyContext, Principal};
use crate::transport::a2a::{card::A2A_VERSION, parse_rpc_error};
use crate::transport::{EventSink, StreamEvent};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Where `serve` answers A2A JSON-RPC.
pub const A2A_PATH: &str = "/a2a";
/// Tasks in a `ListTasks` page when the request does not say.
const DEFAULT_LIST_PAGE: usize = 50;
/// The most tasks in a `ListTasks` page (each is one `GetTask` to its owner).
const MAX_LIST_PAGE: usize = 100;
/// Events of a stream held for a caller that reads slower than its agent
/// streams; past them the agent's stream waits for the caller.
const STREAM_BUFFER: usize = 16;

/// The A2A face of one dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct A2aServer {
    dispatcher: ToolDispatcher,
    catalog: Catalog,
    https: bool,
    /// The invoke slots shared with `/v1/invoke` and `/mcp`, if capped.
    invoke_slots: Option<Arc<Semaphore>>,
}

impl A2aServer {
    /// The A2A server of `dispatcher`; `https` says how the card's
    /// interface URL is written (`{scheme}://{Host}/a2a`).
    pub fn new(dispatcher: ToolDispatcher, https: bool) -> Self {
        A2aServer {
            catalog: Catalog::new(dispatcher.clone()),
            dispatcher,
            https,
            invoke_slots: None,
        }
    }

    /// Each dispatch (a message, a stream for as long as it runs, a
    /// `GetTask`, each task a `ListTasks` reads) takes a permit of `slots`,
    /// and is refused when none is free.
    pub fn with_invoke_slots(mut self, slots: Arc<Semaphore>) -> Self {
        self.invoke_slots = Some(slots);
        self
    }

    /// The two routes, for a router of any state.
    pub fn routes<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route(AGENT_CARD_PATH, get(card))
            .route(A2A_PATH, post(rpc))
            .with_state(self)
    }

    fn skills(&self, principal: Option<&Principal>, action: &str) -> BTreeMap<String, Skill> {
        let reader = principal.map(|p| {
            let mut ctx = PolicyContext::new()
                .with("source", "a2a")
                .with(keys::ACTION, action);
            p.apply_to(&mut ctx);
            ctx
        });
        skills::visible(&self.dispatcher, &self.catalog, reader.as_ref())
    }
}

/// `GET /.well-known/agent-card.json`
async fn card(
    State(server): State<A2aServer>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    let skills = server.skills(principal.as_ref(), "agent_card");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = if server.https { "https" } else { "http" };
    let skills: Vec<Value> = skills
        .values()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.id,
                "description": s.description,
                "tags": [s.category.as_str()],
            })
        })
        .collect();
    Json(json!({
        "name": "Switchboard",
        "description": "Routes each message to an A2A agent that serves its skill \
                        (name the skill in the message's metadata.skill).",
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": [{
            "url": format!("{scheme}://{host}{A2A_PATH}"),
            "protocolBinding": "JSONRPC",
            "protocolVersion": A2A_VERSION,
        }],
        "capabilities": {"streaming": true, "pushNotifications": false},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": skills,
    }))
    .into_response()
}

/// A JSON-RPC error answer: the A2A code, a message saying what to do, and
/// the reason as `google.rpc.ErrorInfo` (as A2A agents give it).
struct RpcError {
    code: i64,
    message: String,
    reason: &'static str,
}

impl RpcError {
    fn new(code: i64, reason: &'static str, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            reason,
        }
    }

    fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(-32602, "INVALID_PARAMS", message)
    }

    fn task_not_found(task_id: &str) -> Self {
        RpcError::new(
            -32001,
            "TASK_NOT_FOUND",
            format!("task {task_id:?} was not created through this Switchboard by this caller"),
        )
    }

    /// A dispatch's failure: an agent's own A2A error keeps its code.
    fn of_dispatch(error: Error) -> Self {
        match error {
            Error::ToolFailed { agent_id, message } => match parse_rpc_error(&message) {
                Some((code, text)) => RpcError::new(code, "AGENT_ERROR", text),
                None => RpcError::new(
                    -32603,
                    "AGENT_ERROR",
                    format!("agent {agent_id}: {message}"),
                ),
            },
            Error::PolicyDenied { .. } => {
                RpcError::new(-32600, "PERMISSION_DENIED", error.to_string())
            }
            Error::InvalidInput(message) => RpcError::invalid_params(message),
            other => RpcError::new(-32603, "UNAVAILABLE", other.to_string()),
        }
    }

    fn into_value(self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "data": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": self.reason,
                "domain": "switchboard",
                "metadata": {},
            }],
        })
    }
}

/// `POST /a2a`: one JSON-RPC request (batches are not A2A).
async fn rpc(
    State(server): State<A2aServer>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    // A body that is not a JSON object is no JSON-RPC request at all:
    // refused with 400, its JSON-RPC error in the body.
    let request: Value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => v,
        Ok(_) => {
            return refused(RpcError::new(
                -32600,
                "INVALID_REQUEST",
                "the body is one JSON-RPC request object (batches are not A2A)",
            ))
        }
        Err(e) => {
            return refused(RpcError::new(
                -32700,
                "PARSE_ERROR",
                format!("the body is not JSON: {e}"),
            ))
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let version = headers
        .get("a2a-version")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if !matches!(version, Some("1.0" | "1")) {
        return answer(
            id,
            Err(RpcError::new(
                -32009,
                "VERSION_NOT_SUPPORTED",
                format!(
                    "A2A version {} is not supported here: send the header A2A-Version: {A2A_VERSION}",
                    version.unwrap_or("0.3 (no A2A-Version header)")
                ),
            )),
        );
    }
    let (Some(method), params) = (
        request.get("method").and_then(|m| m.as_str()),
        request.get("params").cloned().unwrap_or_else(|| json!({})),
    ) else {
        return answer(
            id,
            Err(RpcError::new(
                -32600,
                "INVALID_REQUEST",
                "a JSON-RPC 2.0 request object with a method, e.g. {\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"SendMessage\", \"params\": {...}}",
            )),
        );
    };
    let result = match method {
        "SendMessage" => server.send_message(params, principal.as_ref()).await,
        "GetTask" | "CancelTask" => server.on_task(method, params, principal.as_ref()).await,
        "ListTasks" => server.list_tasks(params, principal.as_ref()).await,
        "SendStreamingMessage" | "SubscribeToTask" => {
            return server.stream(method, id, params, principal).await
        }
        other => Err(RpcError::new(
            -32601,
            "METHOD_NOT_FOUND",
            format!(
                "no A2A method {other:?}; this server answers SendMessage, SendStreamingMessage, \
                 SubscribeToTask, GetTask, CancelTask and ListTasks"
            ),
        )),
    };
    answer(id, result)
}

fn refused(error: RpcError) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": Value::Null, "error": error.into_value()});
    (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn answer(id: Value, result: Result<Value, RpcError>) -> Response {
    let body = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error.into_value()}),
    };
    Json(body).into_response()
}

/// Where a call goes: a skill in its category, bound by a session.
#[derive(Clone)]
struct Route {
    skill: String,
    category: crate::namespace::ToolCategory,
    context_id: String,
}

impl A2aServer {
    /// `SendMessage`: a message on a task goes where the task is; a new
    /// one to the skill its metadata names (or the only skill there is).
    async fn send_message(
        &self,
        mut params: Value,
        principal: Option<&Principal>,
    ) -> Result<Value, RpcError> {
        let route = self.message_route(&mut params, principal)?;
        let input = json!({"method": "SendMessage", "params": params});
        let (agent_id, output) = self.invoke(&route, input, principal, None).await?;
        self.note_event(&output, &agent_id, &route, principal);
        Ok(output)
    }

    /// Where a message goes: a message on a task where the task is, a new
    /// one to the skill its metadata names (or the only skill there is), in
    /// its context (a new context when it names none).
    fn message_route(
        &self,
        params: &mut Value,
        principal: Option<&Principal>,
    ) -> Result<Route, RpcError> {
        let request_skill = params
            .get("metadata")
            .and_then(|m| m.get("skill"))
            .and_then(|s| s.as_str())
            .map(str::to_string);
        let Some(message) = params.get_mut("message").and_then(|m| m.as_object_mut()) else {
            return Err(RpcError::invalid_params(
                "a message is sent as {\"message\": {\"messageId\", \"role\", \"parts\", ...}}",
            ));
        };
        if let Some(task_id) = message.get("taskId").and_then(|t| t.as_str()) {
            let record = self.owned_task(task_id, principal)?;
            message.insert("contextId".into(), Value::String(record.context_id.clone()));
            return Ok(Route {
                skill: record.skill,
                category: record.category,
                context_id: record.context_id,
            });
        }
        let named = message
            .get("metadata")
            .and_then(|m| m.get("skill"))
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .or(request_skill);
        // A new context unless the client continues one: the context's
        // session binds its calls to one agent.
        let context_id = match message.get("contextId").and_then(|c| c.as_str()) {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => {
                let id = new_invocation_id();
                message.insert("contextId".into(), Value::String(id.clone()));
                id
            }
        };
        let skill = self.skill(named.as_deref(), principal)?;
        Ok(Route {
            skill: skill.id,
            category: skill.category,
            context_id,
        })
    }

    /// `GetTask` and `CancelTask`: passed to the agent that owns the task.
    async fn on_task(
        &self,
        method: &str,
        params: Value,
        principal: Option<&Principal>,
    ) -> Result<Value, RpcError> {
        let route = self.task_route(method, &params, principal)?;
        let input = json!({"method": method, "params": params});
        let (agent_id, output) = self.invoke(&route, input, principal, None).await?;
        self.note_event(&output, &agent_id, &route, principal);
        Ok(output)
    }

    /// The route of the caller's task that `params.id` names.
    fn task_route(
        &self,
        method: &str,
        params: &Value,
        principal: Option<&Principal>,
    ) -> Result<Route, RpcError> {
        let Some(task_id) = params.get("id").and_then(|t| t.as_str()) else {
            return Err(RpcError::invalid_params(format!(
                "{method} takes {{\"id\": \"<task id>\"}}"
            )));
        };
        let record = self.owned_task(task_id, principal)?;
        Ok(Route {
            skill: record.skill,
            category: record.category,
            context_id: record.context_id,
        })
    }

    /// `SendStreamingMessage` and `SubscribeToTask`: the agent's stream
    /// relayed as server-sent events, each passed on (and its task state
    /// recorded) as it arrives. Refused before any event, the answer is
    /// the JSON-RPC error; failing after, the stream's last event is the
    /// error. The call ends with the agent's stream, or when the caller
    /// goes away (the body is dropped, and the call with it).
    async fn stream(
        &self,
        method: &str,
        id: Value,
        mut params: Value,
        principal: Option<Principal>,
    ) -> Response {
        let route = match method {
            "SendStreamingMessage" => self.message_route(&mut params, principal.as_ref()),
            _ => self.task_route(method, &params, principal.as_ref()),
        };
        let route = match route {
            Ok(route) => route,
            Err(error) => return answer(id, Err(error)),
        };
        let (sender, mut events) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let (finished, mut outcome) = tokio::sync::oneshot::channel();
        let call = {
            let (server, route, principal) = (self.clone(), route.clone(), principal.clone());
            let input = json!({"method": method, "params": params});
            let sink = EventSink::new(sender);
            AbortOnDrop(tokio::spawn(async move {
                let result = server
                    .invoke(&route, input, principal.as_ref(), Some(sink))
                    .await;
                // Nobody waits for it when the caller went away.
                let _ = finished.send(result);
            }))
        };
        // The first event decides the answer's form: a call refused before
        // it is answered with its JSON-RPC error, not a stream.
        let (first, ended) = tokio::select! {
            biased;
            Some(event) = events.recv() => (event, None),
            result = &mut outcome => {
                let result = result.unwrap_or_else(|_| {
                    Err(RpcError::new(-32603, "INTERNAL", "the call ended without an answer"))
                });
                // Events sent just before it ended are still in the channel.
                match events.try_recv() {
                    Ok(event) => (event, Some(result)),
                    Err(_) => return match result {
                        Err(error) => answer(id, Err(error)),
                        // A call that succeeds has relayed its events.
                        Ok((_, output)) => answer(id, Ok(output)),
                    },
                }
            }
        };
        let relay = Relay {
            server: self.clone(),
            id,
            route,
            principal,
            outcome: ended.is_none().then_some(outcome),
            events,
            ended,
            first: Some(first),
            _call: call,
        };
        let frames = futures::stream::unfold(relay, |mut relay| async move {
            let frame = relay.next().await?;
            Some((Ok::<_, std::convert::Infallible>(frame), relay))
        });
        Sse::new(frames)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    /// `ListTasks`: the caller's tasks, newest change first, each read from
    /// its owner (`GetTask`); filtered by `contextId`, and by `status` as
    /// last seen through Switchboard. `pageToken` is the offset of the page.
    async fn list_tasks(
        &self,
        params: Value,
        principal: Option<&Principal>,
    ) -> Result<Value, RpcError> {
        let text = |name: &str| {
            params
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let page_size = match params.get("pageSize").and_then(|v| v.as_u64()) {
            None | Some(0) => DEFAULT_LIST_PAGE,
            Some(n) if n <= MAX_LIST_PAGE as u64 => n as usize,
            Some(n) => {
                return Err(RpcError::invalid_params(format!(
                    "pageSize {n} is over {MAX_LIST_PAGE}; ask for fewer and follow nextPageToken"
                )))
            }
        };
        let offset = match text("pageToken") {
            None => 0,
            Some(token) => token.parse::<usize>().map_err(|_| {
                RpcError::invalid_params("pageToken is the nextPageToken of an earlier answer")
            })?,
        };
        let (context, status) = (text("contextId"), text("status"));
        let shared = self.dispatcher.shared_tasks();
        let records = tasks::of_caller(
            self.dispatcher.database(),
            shared.as_deref(),
            principal.map(|p| p.id.as_str()),
        )
        .map_err(|e| RpcError::new(-32603, "INTERNAL", e.to_string()))?;
        let matching: Vec<_> = records
            .into_iter()
            .filter(|(_, r)| context.is_none_or(|c| r.context_id == c))
            .filter(|(_, r)| status.is_none_or(|s| r.state == s))
            .collect();
        let total = matching.len();
        let mut tasks = Vec::new();
        for (task_id, record) in matching.iter().skip(offset).take(page_size) {
            let mut get = json!({"id": task_id});
            if let Some(length) = params.get("historyLength") {
                get["historyLength"] = length.clone();
            }
            // An owner that cannot answer leaves the task as last seen.
            let task = match self.on_task("GetTask", get, principal).await {
                Ok(task) => task,
                Err(e) => {
                    tracing::debug!(task_id, error = %e.message, "ListTasks: the owner did not answer GetTask");
                    json!({"id": task_id, "contextId": record.context_id,
                           "status": {"state": record.state}})
                }
            };
            tasks.push(task);
        }
        let next = offset + tasks.len();
        Ok(json!({
            "tasks": tasks,
            "nextPageToken": if next < total { next.to_string() } else { String::new() },
            "pageSize": page_size,
            "totalSize": total,
        }))
    }

    /// The record of a task this caller created through Switchboard.
    fn owned_task(
        &self,
        task_id: &str,
        principal: Option<&Principal>,
    ) -> Result<crate::namespace::A2aTaskRecord, RpcError> {
        let shared = self.dispatcher.shared_tasks();
        let record = tasks::get(self.dispatcher.database(), shared.as_deref(), task_id)
            .map_err(|e| RpcError::new(-32603, "INTERNAL", e.to_string()))?
            .ok_or_else(|| RpcError::task_not_found(task_id))?;
        // Another caller's task is not this one's to see or continue.
        if record.caller.as_deref() != principal.map(|p| p.id.as_str()) {
            return Err(RpcError::task_not_found(task_id));
        }
        Ok(record)
    }

    /// The skill a new message is for: the one named, else the only one.
    fn skill(&self, named: Option<&str>, principal: Option<&Principal>) -> Result<Skill, RpcError> {
        let mut skills = self.skills(principal, "send_message");
        let names = skills.keys().cloned().collect::<Vec<_>>().join(", ");
        match named {
            Some(name) => skills.remove(name).ok_or_else(|| {
                RpcError::invalid_params(format!(
                    "no skill {name:?} here; the skills on this Switchboard's card are: {names}"
                ))
            }),
            None if skills.len() == 1 => Ok(skills.into_values().next().expect("one skill")),
            None => Err(RpcError::invalid_params(format!(
                "name the skill in the message's metadata: {{\"skill\": \"<id>\"}}; this \
                 Switchboard routes: {}",
                if skills.is_empty() {
                    "no skills yet".to_string()
                } else {
                    names
                }
            ))),
        }
    }

    /// One dispatch of `input` to the route's skill, bound by its context's
    /// session (its events relayed to `events` when it streams); the
    /// answering agent and its result.
    async fn invoke(
        &self,
        route: &Route,
        input: Value,
        principal: Option<&Principal>,
        events: Option<EventSink>,
    ) -> Result<(String, Value), RpcError> {
        let mut options =
            RoutingOptions::new().with_session_id(tasks::session_of(&route.context_id));
        if let Some(p) = principal {
            options = options.with_caller(p.clone());
        }
        if let Some(events) = events {
            options = options.with_events(events);
        }
        let _slot = match &self.invoke_slots {
            Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| {
                RpcError::new(
                    -32603,
                    "RESOURCE_EXHAUSTED",
                    "too many invokes in flight (limits.max_inflight_invokes); retry shortly",
                )
            })?),
            None => None,
        };
        let result = self
            .dispatcher
            .invoke(&route.skill, route.category.clone(), input, options)
            .await
            .map_err(RpcError::of_dispatch)?;
        Ok((result.agent_id, result.output))
    }

    /// Records the task state an answer or stream event reports (a `Task`,
    /// `{"task": Task}` or `{"statusUpdate": ...}`) in the task's history,
    /// and who owns the task.
    fn note_event(
        &self,
        event: &Value,
        agent_id: &str,
        route: &Route,
        principal: Option<&Principal>,
    ) {
        let (task_id, status, context_id) = if let Some(update) = event.get("statusUpdate") {
            (
                update.get("taskId"),
                update.get("status"),
                update.get("contextId"),
            )
        } else {
            let task = event.get("task").unwrap_or(event);
            (task.get("id"), task.get("status"), task.get("contextId"))
        };
        let (Some(task_id), Some(status)) = (task_id.and_then(|t| t.as_str()), status) else {
            return;
        };
        let Some(state) = status.get("state").and_then(|s| s.as_str()) else {
            return;
        };
        let seen = tasks::Seen {
            task_id,
            state,
            status_timestamp: status.get("timestamp").and_then(|t| t.as_str()),
            message: status.get("message").and_then(tasks::message_text),
            agent_id,
            skill: &route.skill,
            category: &route.category,
            context_id: context_id
                .and_then(|c| c.as_str())
                .unwrap_or(&route.context_id),
            caller: principal.map(|p| p.id.as_str()),
        };
        let shared = self.dispatcher.shared_tasks();
        if let Err(e) = tasks::record(self.dispatcher.database(), shared.as_deref(), seen) {
            tracing::warn!(agent_id, task_id, error = %e, "could not record an A2A task's owner; its follow-ups may reach another agent");
        }
    }
}

/// Aborts the call relaying a stream when the stream's body is dropped:
/// the caller went away, and the agent's stream is closed with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream being relayed to the caller.
struct Relay {
    server: A2aServer,
    id: Value,
    route: Route,
    principal: Option<Principal>,
    events: tokio::sync::mpsc::Receiver<StreamEvent>,
    /// The call's result, until it is read.
    outcome: Option<tokio::sync::oneshot::Receiver<Result<(String, Value), RpcError>>>,
    /// The call's result, read before its last events were relayed.
    ended: Option<Result<(String, Value), RpcError>>,
    /// The event that began the stream, not relayed yet.
    first: Option<StreamEvent>,
    _call: AbortOnDrop,
}

impl Relay {
    /// The next frame: each event as a JSON-RPC answer, then the call's
    /// error if it failed after the stream began; `None` at the end.
    async fn next(&mut self) -> Option<Event> {
        let event = match self.first.take() {
            Some(event) => Some(event),
            None => self.events.recv().await,
        };
        if let Some(StreamEvent { agent_id, event }) = event {
            self.server
                .note_event(&event, &agent_id, &self.route, self.principal.as_ref());
            let answer = json!({"jsonrpc": "2.0", "id": self.id, "result": event});
            return Some(Event::default().data(answer.to_string()));
        }
        let result = match (self.ended.take(), self.outcome.take()) {
            (Some(result), _) => result,
            (None, Some(outcome)) => outcome.await.ok()?,
            (None, None) => return None,
        };
        let error = result.err()?;
        let answer = json!({"jsonrpc": "2.0", "id": self.id, "error": error.into_value()});
        Some(Event::default().event("error").data(answer.to_string()))
    }
}
