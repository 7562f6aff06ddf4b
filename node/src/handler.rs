//! JavaScript functions as in-process agents.
//!
//! A call is handed to the JS thread through a threadsafe function: the
//! bridge `index.js` wraps around the user's handler is called as
//! `bridge("call", id, tool, input)`, runs the handler (awaiting its
//! Promise), and reports the outcome with `settleCall(id, ...)`, which
//! completes the Rust future waiting under `id`. The bridge never throws, so
//! nothing thrown in JavaScript can reach napi-rs (where it would be fatal).
//!
//! If the dispatch stops waiting (the caller's AbortSignal, or the agent's
//! timeout), the bridge is called as `bridge("cancel", id)`, which aborts
//! the `AbortSignal` the handler was given.

use napi::bindgen_prelude::{FnArgs, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use switchboard::routing::ToolError;
use tokio::sync::oneshot;

type Output = Result<Value, ToolError>;
type BoxFuture = Pin<Box<dyn Future<Output = Output> + Send>>;
// `FnArgs`: the tuple is spread into four arguments (a bare tuple would
// arrive as one array).
type BridgeArgs = FnArgs<(String, u32, String, Value)>;

/// The JS bridge of one local agent: `(op, id, tool, input) => void`. Weak:
/// a registered agent does not keep Node running (an `invoke` in flight does).
pub type Bridge = ThreadsafeFunction<BridgeArgs, Unknown<'static>, BridgeArgs, Status, false, true>;

fn pending() -> &'static Mutex<HashMap<u32, oneshot::Sender<Output>>> {
    static PENDING: OnceLock<Mutex<HashMap<u32, oneshot::Sender<Output>>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<u32, oneshot::Sender<Output>>> {
    pending().lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh id with a waiting receiver.
fn register() -> (u32, oneshot::Receiver<Output>) {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let (tx, rx) = oneshot::channel();
    let mut map = lock();
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        // Ids wrap after 2^32 calls; skip one still waiting.
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
            slot.insert(tx);
            return (id, rx);
        }
    }
}

/// Reports the outcome of handler call `id`: its output, or its error
/// (`retryable`: the agent failed and the call fails over; else the tool's
/// own error, final). A call no longer waited for is ignored.
#[napi]
pub fn settle_call(
    id: u32,
    ok: bool,
    output: Option<Value>,
    message: Option<String>,
    retryable: bool,
) {
    let Some(tx) = lock().remove(&id) else {
        return;
    };
    let outcome = if ok {
        Ok(output.unwrap_or(Value::Null))
    } else {
        let message = message.unwrap_or_else(|| "the handler failed".into());
        Err(if retryable {
            ToolError::retryable(message)
        } else {
            ToolError::new(message)
        })
    };
    // The receiver is gone when the call was dropped meanwhile: fine.
    let _ = tx.send(outcome);
}

/// Tells the JS side to abort call `id` unless it has settled.
struct CancelOnDrop {
    id: u32,
    bridge: Arc<Bridge>,
    settled: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if lock().remove(&self.id).is_some() {
            self.bridge.call(
                ("cancel".to_string(), self.id, String::new(), Value::Null).into(),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
    }
}

async fn call(bridge: Arc<Bridge>, tool: String, input: Value) -> Output {
    let (id, rx) = register();
    let mut guard = CancelOnDrop {
        id,
        bridge: bridge.clone(),
        settled: false,
    };
    let status = bridge.call(
        ("call".to_string(), id, tool, input).into(),
        ThreadsafeFunctionCallMode::NonBlocking,
    );
    if status != Status::Ok {
        guard.settled = true;
        lock().remove(&id);
        return Err(ToolError::retryable(format!(
            "the JavaScript handler cannot be called ({status}): is Node shutting down?"
        )));
    }
    let outcome = rx.await;
    guard.settled = true;
    outcome.unwrap_or_else(|_| {
        Err(ToolError::retryable(
            "the JavaScript handler's result was lost",
        ))
    })
}

/// The Rust handler that runs a JS agent through its bridge.
pub fn js_handler(bridge: Bridge) -> impl Fn(String, Value) -> BoxFuture + Send + Sync + 'static {
    let bridge = Arc::new(bridge);
    move |tool: String, input: Value| -> BoxFuture { Box::pin(call(bridge.clone(), tool, input)) }
}
