//! A2A agents: an agent that speaks the Agent2Agent protocol (A2A v1.0) is
//! found by its Agent Card, called (`SendMessage`, `GetTask`, `CancelTask`,
//! and the streamed `SendStreamingMessage` and `SubscribeToTask`) at the
//! interface the card prefers among those Switchboard speaks (JSON-RPC,
//! HTTP+JSON), and probed by fetching its card again.
//!
//! - `mod.rs`: [`A2aClients`], each agent's chosen interface by
//!   registration uid, and one call: the request, the `A2A-Version`
//!   header, the answer or [`Failure`];
//! - `card`: the Agent Card: fetched (bounded), parsed, its interface
//!   chosen, its skills as named tools;
//! - `rest`: the HTTP+JSON binding: each method's route, its answers and
//!   errors;
//! - `signature`: signed cards: a card's JWS signatures checked against
//!   the keys its registration names;
//! - `stream`: a streamed answer (`SendStreamingMessage`,
//!   `SubscribeToTask`): its SSE events read (each bounded) and relayed as
//!   they arrive.
//!
//! A call's input is `{"method": ..., "params": ...}`; anything else is the
//! params of a `SendMessage`. An agent's A2A error (a JSON-RPC error
//! answer, or over HTTP+JSON an error status naming its reason) is the
//! tool's own error (final, no failover), written as [`rpc_error_message`]
//! with its JSON-RPC code so the A2A server above can give the caller the
//! agent's error code.

pub(crate) mod card;
mod rest;
mod signature;
mod stream;

use super::{error_chain, read_bounded, EventSink, Failure, MAX_RESPONSE_BYTES};
use crate::namespace::A2aAgent;
use crate::routing::agent::Agent;
use crate::routing::endpoint::Endpoint;
use card::{AgentCard, Binding, Interface, A2A_VERSION};
use parking_lot::RwLock;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The A2A methods an agent is called with through Switchboard.
pub const A2A_METHODS: &[&str] = &[
    "SendMessage",
    "GetTask",
    "CancelTask",
    "SendStreamingMessage",
    "SubscribeToTask",
];
/// The methods an agent answers with a stream of events (SSE).
pub const STREAMING_METHODS: &[&str] = &["SendStreamingMessage", "SubscribeToTask"];

/// How a JSON-RPC error of an A2A agent reads as a tool error.
pub(crate) fn rpc_error_message(code: i64, message: &str) -> String {
    format!("A2A error {code}: {message}")
}

/// The code and message of a tool error written by [`rpc_error_message`].
pub fn parse_rpc_error(text: &str) -> Option<(i64, &str)> {
    let rest = text.strip_prefix("A2A error ")?;
    let (code, message) = rest.split_once(": ")?;
    Some((code.parse().ok()?, message))
}

/// Every A2A agent's chosen interface, by registration uid.
pub(crate) struct A2aClients {
    http: reqwest::Client,
    upstreams: RwLock<HashMap<u64, Arc<A2aUpstream>>>,
}

impl A2aClients {
    pub(crate) fn new(http: reqwest::Client) -> Self {
        A2aClients {
            http,
            upstreams: RwLock::new(HashMap::new()),
        }
    }

    /// The client of `agent`, created on first use; `None` if it is not an
    /// A2A agent.
    pub(crate) fn upstream(&self, agent: &Agent) -> Option<Arc<A2aUpstream>> {
        let Endpoint::A2a(spec) = &agent.endpoint else {
            return None;
        };
        if let Some(upstream) = self.upstreams.read().get(&agent.uid) {
            return Some(upstream.clone());
        }
        Some(
            self.upstreams
                .write()
                .entry(agent.uid)
                .or_insert_with(|| {
                    Arc::new(A2aUpstream {
                        spec: spec.clone(),
                        http: self.http.clone(),
                        interface: RwLock::new(None),
                    })
                })
                .clone(),
        )
    }

    /// Fetches the card `spec` names and checks it as a call would (its
    /// signatures, when asked for, and an interface Switchboard speaks):
    /// why it is refused, if it is.
    pub(crate) async fn check_card(
        &self,
        spec: &A2aAgent,
        timeout: Duration,
    ) -> Result<(), String> {
        let upstream = A2aUpstream {
            spec: spec.clone(),
            http: self.http.clone(),
            interface: RwLock::new(None),
        };
        upstream
            .fetch_card(timeout)
            .await
            .map(drop)
            .map_err(|failure| failure.message(timeout))
    }

    /// Forgets the registrations that are no longer current.
    pub(crate) fn retain(&self, current: impl Fn(u64) -> bool) {
        self.upstreams.write().retain(|uid, _| current(*uid));
    }
}

/// One A2A agent: its registration and the interface its card chose.
pub(crate) struct A2aUpstream {
    spec: A2aAgent,
    http: reqwest::Client,
    interface: RwLock<Option<Interface>>,
}

impl A2aUpstream {
    /// The headers the registration gives (credentials, resolved on this
    /// node now), with the A2A version.
    fn headers(&self) -> Result<HeaderMap, Failure> {
        let mut headers: HeaderMap = super::mcp::resolve_headers(&self.spec.naming())
            .map_err(Failure::Agent)?
            .into_iter()
            .collect();
        headers.insert("A2A-Version", HeaderValue::from_static(A2A_VERSION));
        Ok(headers)
    }

    /// Fetches the card now (checking its signatures when the
    /// registration asks for a signed card), and keeps the interface it
    /// names for calls.
    pub(crate) async fn fetch_card(&self, timeout: Duration) -> Result<AgentCard, Failure> {
        let (card, served) =
            card::fetch(&self.http, &self.spec.card_url, self.headers()?, timeout).await?;
        if let Some(keys) = &self.spec.verify_signature {
            signature::verify(&self.http, &served, keys, timeout)
                .await
                .map_err(|e| {
                    Failure::Agent(format!(
                        "the Agent Card {} is refused: {e}",
                        self.spec.card_url
                    ))
                })?;
        }
        let interface = card.interface().map_err(Failure::Agent)?;
        *self.interface.write() = Some(interface);
        Ok(card)
    }

    /// Whether the card can be fetched and names an interface.
    pub(crate) async fn ping(&self, timeout: Duration) -> bool {
        self.fetch_card(timeout).await.is_ok()
    }

    /// One call, for the agent's skill `skill`: `input` is
    /// `{"method", "params"}` or a `SendMessage`'s params; a message's
    /// `metadata.skill` is set to it, so the agent knows which of its
    /// skills was asked for. A streaming method relays each event of the
    /// agent's stream to `events` (with the agent's id) and answers with
    /// the last one.
    pub(crate) async fn call(
        &self,
        skill: &str,
        input: &serde_json::Value,
        invocation_id: &str,
        events: Option<(&EventSink, &str)>,
    ) -> Result<serde_json::Value, Failure> {
        let (method, mut params) = match (input.get("method"), input.get("params")) {
            (Some(serde_json::Value::String(m)), params) => (
                m.as_str(),
                params.cloned().unwrap_or_else(|| serde_json::json!({})),
            ),
            _ => ("SendMessage", input.clone()),
        };
        if !A2A_METHODS.contains(&method) {
            return Err(Failure::Tool(format!(
                "an A2A agent is called with one of {A2A_METHODS:?} through Switchboard, not {method:?}"
            )));
        }
        if matches!(method, "SendMessage" | "SendStreamingMessage") {
            let Some(params) = params.as_object_mut() else {
                return Err(Failure::Tool(format!(
                    "{method} takes an object: {{\"message\": {{...}}}}"
                )));
            };
            let metadata = params
                .entry("metadata")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(metadata) = metadata.as_object_mut() {
                // The agent's own id of the skill, whatever name the caller
                // routed it by (`{agent}_{skill}` when prefixed).
                metadata.insert("skill".into(), serde_json::Value::String(skill.to_string()));
            }
        }
        let interface = self.interface().await?;
        if !STREAMING_METHODS.contains(&method) {
            return self.post(&interface, method, &params, invocation_id).await;
        }
        let Some((sink, agent_id)) = events else {
            return Err(Failure::Tool(format!(
                "{method} answers with a stream of events: call it through serve's /a2a, \
                 not as one call"
            )));
        };
        if !interface.streaming {
            if method == "SubscribeToTask" {
                return Err(Failure::Tool(rpc_error_message(
                    -32004,
                    "the agent does not stream (its card does not say capabilities.streaming): \
                     read the task with GetTask",
                )));
            }
            // An agent that does not stream answers the message in one
            // piece: that answer is the stream's one event.
            let answer = self
                .post(&interface, "SendMessage", &params, invocation_id)
                .await?;
            return stream::relay_one(sink, agent_id, answer).await;
        }
        let response = self
            .send(
                &interface,
                method,
                &params,
                invocation_id,
                "text/event-stream",
            )
            .await?;
        let is_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if is_stream && response.status().is_success() {
            return stream::relay(interface.binding, response, sink, agent_id).await;
        }
        // An answer in one piece: usually the error that refused the stream.
        let answer = read_answer(interface.binding, response).await?;
        stream::relay_one(sink, agent_id, answer).await
    }

    /// The interface calls go to, from the card (fetched now if it was not
    /// since this registration, or the process, began).
    async fn interface(&self) -> Result<Interface, Failure> {
        if let Some(interface) = self.interface.read().clone() {
            return Ok(interface);
        }
        self.fetch_card(Duration::from_secs(10)).await?;
        self.interface
            .read()
            .clone()
            .ok_or_else(|| Failure::Agent("the Agent Card names no interface".into()))
    }

    /// One request answered in one piece: its result, or failure.
    async fn post(
        &self,
        interface: &Interface,
        method: &str,
        params: &serde_json::Value,
        invocation_id: &str,
    ) -> Result<serde_json::Value, Failure> {
        let response = self
            .send(interface, method, params, invocation_id, "application/json")
            .await?;
        read_answer(interface.binding, response).await
    }

    /// Sends one request in the interface's binding; an answer asking to
    /// be called later (429 or 503 with `Retry-After`) is the agent's
    /// overload.
    async fn send(
        &self,
        interface: &Interface,
        method: &str,
        params: &serde_json::Value,
        invocation_id: &str,
        accept: &'static str,
    ) -> Result<reqwest::Response, Failure> {
        let request = match interface.binding {
            Binding::JsonRpc => {
                let body = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": invocation_id,
                    "method": method,
                    "params": params,
                });
                self.http
                    .post(interface.url.clone())
                    .body(serde_json::to_vec(&body).map_err(|e| Failure::Agent(e.to_string()))?)
            }
            Binding::HttpJson => {
                let (verb, url) = rest::route(&interface.url, method, params)?;
                let request = self.http.request(verb.clone(), url);
                if verb == reqwest::Method::GET {
                    request
                } else {
                    request.body(
                        serde_json::to_vec(params).map_err(|e| Failure::Agent(e.to_string()))?,
                    )
                }
            }
        };
        let response = request
            .headers(self.headers()?)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(|e| Failure::Agent(error_chain(&e)))?;
        let status = response.status();
        if let Some(pause) = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::http::parse_retry_after)
            .filter(|_| status.as_u16() == 429 || status.as_u16() == 503)
        {
            return Err(Failure::Overloaded {
                message: format!("the A2A agent answered HTTP {status}"),
                retry_after: pause,
            });
        }
        Ok(response)
    }
}

/// An answer read whole (bounded): its result, or why not.
async fn read_answer(
    binding: Binding,
    response: reqwest::Response,
) -> Result<serde_json::Value, Failure> {
    let status = response.status();
    let bytes = read_bounded(response, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| Failure::Agent(e.to_string()))?;
    if status.is_server_error() {
        return Err(Failure::Agent(format!(
            "the A2A agent answered HTTP {status}"
        )));
    }
    if !status.is_success() {
        // Over HTTP+JSON an A2A error is an HTTP status with the error.
        let error = (binding == Binding::HttpJson)
            .then(|| serde_json::from_slice(&bytes).ok())
            .flatten()
            .and_then(|value| rest::error_of(&value));
        return Err(error.unwrap_or_else(|| {
            Failure::Tool(format!(
                "the A2A agent answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ))
        }));
    }
    decode(binding, &bytes)
}

/// One answer (or event of a stream) in `binding`'s form: its result, or
/// the A2A error it carries.
fn decode(binding: Binding, bytes: &[u8]) -> Result<serde_json::Value, Failure> {
    match binding {
        Binding::JsonRpc => answer(bytes),
        Binding::HttpJson => rest::decode(bytes),
    }
}

/// A JSON-RPC answer as output (its `result`) or failure (its `error`, the
/// tool's own).
fn answer(bytes: &[u8]) -> Result<serde_json::Value, Failure> {
    let mut reply: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Failure::Agent(format!("the A2A agent's answer is not JSON: {e}")))?;
    if let Some(error) = reply.get("error") {
        let code = error.get("code").and_then(|c| c.as_i64()).unwrap_or(-32603);
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("(no message)");
        return Err(Failure::Tool(rpc_error_message(code, message)));
    }
    match reply.get_mut("result") {
        Some(result) => Ok(result.take()),
        None => Err(Failure::Agent(
            "the A2A agent's answer has neither result nor error".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_is_the_tools_error_and_keeps_its_code() {
        let failure = answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"Task not found"}}"#,
        )
        .unwrap_err();
        let Failure::Tool(message) = failure else {
            panic!("{failure:?}")
        };
        assert_eq!(parse_rpc_error(&message), Some((-32001, "Task not found")));
        assert_eq!(
            answer(br#"{"jsonrpc":"2.0","id":1,"result":{"task":{"id":"t"}}}"#).unwrap(),
            serde_json::json!({"task": {"id": "t"}})
        );
        assert!(matches!(answer(b"{}"), Err(Failure::Agent(_))));
        assert!(matches!(answer(b"<html>"), Err(Failure::Agent(_))));
        assert_eq!(parse_rpc_error("something else"), None);
    }
}
