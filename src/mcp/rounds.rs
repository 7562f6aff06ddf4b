//! Input an agent asks for during a call, from a 2026-07-28 client.
//!
//! That revision is stateless: a server cannot send the client a request
//! mid-call; it answers `input_required` (the requests, by key, and an
//! opaque `requestState`) and the client calls again with its answers
//! (`inputResponses`) and the state. So when an agent asks for input during
//! a 2026-07-28 client's call (a 2026-07-28 agent's own `input_required`, or
//! a 2025 agent's `elicitation/create`, `sampling/createMessage` or
//! `roots/list`), the dispatch is *parked*: it keeps running (and waiting
//! for the answer), the client is answered `input_required` with the
//! request and a `requestState` naming the parked call, and the retried
//! `tools/call` hands the client's answer to the waiting dispatch and
//! carries on with it. A parked call lives in this node's memory, for
//! [`PARKED_FOR`] at most; the state is a random token, valid for the
//! caller that made the call only.

use crate::dispatch::InvocationResult;
use crate::transport::InputRelay;
use parking_lot::Mutex;
use rmcp::model::{CallToolResponse, ClientCapabilities, InputResponses};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a parked call waits for the client to call again before it is
/// cancelled (and recorded so).
pub const PARKED_FOR: Duration = Duration::from_secs(300);

/// One dispatch on its own task.
pub(super) type Task = tokio::task::JoinHandle<crate::Result<InvocationResult>>;

/// One request an agent made of the client, waiting for its answer.
pub(super) struct Ask {
    key: String,
    request: serde_json::Value,
    answer: oneshot::Sender<Result<serde_json::Value, String>>,
}

/// A dispatch waiting for the client's answers.
struct Parked {
    /// Taken when the call resumes.
    running: Option<Running>,
    /// What the client was asked and has not answered.
    pending: Vec<Ask>,
    /// The tool called, and by whom: only the same call resumes it.
    tool: String,
    caller: Option<String>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        // A parked call nobody resumed (expired, or the server shut down)
        // is cancelled, and its dispatch record says so.
        if let Some(running) = &self.running {
            running.task.abort();
        }
    }
}

/// The calls parked on this node, by their `requestState`.
#[derive(Clone, Default)]
pub(super) struct Rounds {
    parked: Arc<Mutex<HashMap<String, Parked>>>,
}

/// A dispatch in progress, and the requests its agent makes of the client.
pub(super) struct Running {
    pub(super) task: Task,
    pub(super) asks: mpsc::Receiver<Ask>,
}

/// What a dispatch came to for the client's request.
pub(super) enum Step {
    /// It ended.
    Done(crate::Result<InvocationResult>),
    /// It waits for the client's input: the `input_required` answer.
    Asking(CallToolResponse),
}

/// The relay that parks what an agent asks a 2026-07-28 client with
/// `capabilities`, and where the dispatch's requests arrive.
pub(super) fn relay(capabilities: ClientCapabilities) -> (InputRelay, mpsc::Receiver<Ask>) {
    let (sender, asks) = mpsc::channel(1);
    let asked = Arc::new(AtomicUsize::new(0));
    let relay = InputRelay::new(move |request| {
        let sender = sender.clone();
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let declared = match method.as_str() {
            "sampling/createMessage" => capabilities.sampling.is_some(),
            "elicitation/create" => capabilities.elicitation.is_some(),
            "roots/list" => capabilities.roots.is_some(),
            _ => false,
        };
        let key = format!("switchboard-{}", asked.fetch_add(1, Ordering::Relaxed) + 1);
        Box::pin(async move {
            if !declared {
                return Err(format!(
                    "the calling client does not declare the capability {method} needs"
                ));
            }
            let (answer, answered) = oneshot::channel();
            sender
                .send(Ask {
                    key,
                    request,
                    answer,
                })
                .await
                .map_err(|_| "the call is over".to_string())?;
            answered
                .await
                .map_err(|_| "the client did not call again in time".to_string())?
        })
    });
    (relay, asks)
}

impl Rounds {
    /// Waits for `running` to end or to ask the client something; then
    /// parks it, for `tool` called by `caller`, and gives the
    /// `input_required` answer. Cancelled (with the dispatch) when the
    /// client cancels the request of `context` first.
    pub(super) async fn next(
        &self,
        mut running: Running,
        tool: &str,
        caller: Option<String>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Step, McpError> {
        let ask = tokio::select! {
            joined = &mut running.task => {
                return joined.map(Step::Done).map_err(|e| {
                    McpError::internal_error(format!("dispatch task failed: {e}"), None)
                });
            }
            Some(ask) = running.asks.recv() => ask,
            _ = context.ct.cancelled() => {
                running.task.abort();
                return Err(McpError::internal_error("the call was cancelled by the client", None));
            }
        };
        let token = new_token()?;
        let answer = serde_json::json!({
            "resultType": "input_required",
            "inputRequests": {ask.key.clone(): ask.request},
            "requestState": token,
        });
        let answer = serde_json::from_value(answer).map_err(|e| {
            McpError::internal_error(
                format!("the agent's request does not make an input_required answer: {e}"),
                None,
            )
        })?;
        self.parked.lock().insert(
            token.clone(),
            Parked {
                running: Some(running),
                pending: vec![ask],
                tool: tool.to_string(),
                caller,
            },
        );
        let parked = self.parked.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PARKED_FOR).await;
            parked.lock().remove(&token);
        });
        Ok(Step::Asking(CallToolResponse::InputRequired(answer)))
    }

    /// The call parked under `state` for `tool` by `caller`, given the
    /// client's `answers`, running again.
    pub(super) fn resume(
        &self,
        state: &str,
        tool: &str,
        caller: Option<&str>,
        answers: InputResponses,
    ) -> Result<Running, McpError> {
        let mut parked = {
            let mut all = self.parked.lock();
            // Another caller's state is as unknown as a made-up one.
            match all.get(state) {
                Some(p) if p.tool == tool && p.caller.as_deref() == caller => all.remove(state),
                _ => None,
            }
        }
        .ok_or_else(|| {
            McpError::invalid_params(
                format!(
                    "requestState does not name a call of {tool:?} waiting for input on this \
                     server (it was answered already, waited longer than {} s, or is another \
                     caller's): call the tool again without requestState",
                    PARKED_FOR.as_secs()
                ),
                None,
            )
        })?;
        for ask in parked.pending.drain(..) {
            let answer = answers.get(&ask.key).cloned().ok_or_else(|| {
                format!(
                    "the client called again without an answer to {:?} ({})",
                    ask.key,
                    ask.request["method"].as_str().unwrap_or("a request")
                )
            });
            let _ = ask.answer.send(answer);
        }
        parked
            .running
            .take()
            .ok_or_else(|| McpError::internal_error("the parked call has no dispatch", None))
    }
}

/// A fresh `requestState`: 128 random bits, in hex.
fn new_token() -> Result<String, McpError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        McpError::internal_error(format!("no randomness for a requestState: {e}"), None)
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
