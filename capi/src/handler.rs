//! Foreign functions as in-process agents.
//!
//! A call hands the caller's `handler` an `SbHandlerCall` and returns at
//! once; the caller runs its function wherever it likes (the Go package, on
//! a goroutine) and reports the outcome with `sb_handler_call_finish`, which
//! completes the Rust future waiting for it. If the dispatch stops waiting
//! first (the caller of `invoke` cancelled, or the agent's timeout elapsed),
//! `cancel` is called with the same `SbHandlerCall`, which stays valid until
//! it is finished. So no runtime thread waits while a foreign agent works.

use crate::ffi::quietly;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use switchboard::ToolError;
use tokio::sync::oneshot;

type Output = std::result::Result<Value, ToolError>;
type BoxFuture = Pin<Box<dyn Future<Output = Output> + Send>>;

/// The agent answered: `data` is its output, JSON.
pub const SB_HANDLER_OK: i32 = 0;
/// The tool's own failure (`data`: the message): final, no other agent is tried.
pub const SB_HANDLER_TOOL_ERROR: i32 = 1;
/// The agent's failure (`data`: the message): the call fails over, as for an HTTP 5xx.
pub const SB_HANDLER_AGENT_ERROR: i32 = 2;

/// Runs one call of a local agent: `tool` and `input` (JSON) are borrowed
/// for this callback only. The callee must call `sb_handler_call_finish`
/// on `call` exactly once, from any thread, now or later. It must not block
/// for long: it runs on the thread driving the dispatch.
pub type SbHandlerFn = Option<
    unsafe extern "C" fn(
        user_data: usize,
        call: *mut SbHandlerCall,
        tool: *const u8,
        tool_len: usize,
        input: *const u8,
        input_len: usize,
    ),
>;

/// The dispatch stopped waiting for `call` (which has not been finished
/// yet): the callee may stop its work; it must still finish `call`, and
/// what it reports is then ignored.
pub type SbHandlerCancelFn =
    Option<unsafe extern "C" fn(user_data: usize, call: *mut SbHandlerCall)>;

/// Called exactly once, when the library will call none of the callbacks
/// registered with `user_data` again.
pub type SbReleaseFn = Option<unsafe extern "C" fn(user_data: usize)>;

/// One call of a local agent waiting for its outcome (opaque).
pub struct SbHandlerCall {
    tx: Mutex<Option<oneshot::Sender<Output>>>,
}

/// Reports the outcome of `call` and frees the caller's hold on it (the
/// pointer must not be used afterwards). `outcome` is one of the
/// `SB_HANDLER_*` codes; `data` (borrowed) is the JSON output or the error
/// message. Output that is not JSON is the tool's failure.
#[no_mangle]
pub unsafe extern "C" fn sb_handler_call_finish(
    call: *mut SbHandlerCall,
    outcome: i32,
    data: *const u8,
    data_len: usize,
) {
    if call.is_null() {
        return;
    }
    quietly(|| {
        // SAFETY: `call` came from `Arc::into_raw` in `call` below and is
        // finished once (the header's contract): this takes that hold back.
        let call = unsafe { Arc::from_raw(call as *const SbHandlerCall) };
        // SAFETY: the header's contract for borrowed bytes.
        let data = unsafe { crate::ffi::bytes(data, data_len) }.unwrap_or(&[]);
        let result = match outcome {
            SB_HANDLER_OK => serde_json::from_slice::<Value>(data).map_err(|e| {
                ToolError::new(format!(
                    "the handler returned something that is not JSON: {e}"
                ))
            }),
            SB_HANDLER_TOOL_ERROR => Err(ToolError::new(message(data))),
            SB_HANDLER_AGENT_ERROR => Err(ToolError::retryable(message(data))),
            other => Err(ToolError::retryable(format!(
                "the handler reported an unknown outcome {other}"
            ))),
        };
        let tx = call.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            // The receiver is gone when the dispatch stopped waiting: fine.
            let _ = tx.send(result);
        }
    });
}

fn message(data: &[u8]) -> String {
    match String::from_utf8_lossy(data) {
        m if m.is_empty() => "the handler failed".into(),
        m => m.into_owned(),
    }
}

/// The caller's callbacks and their `user_data`, released on drop.
pub(crate) struct Foreign {
    pub user_data: usize,
    pub release: SbReleaseFn,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the caller's function, called once as promised.
            quietly(|| unsafe { release(self.user_data) });
        }
    }
}

struct Agent {
    foreign: Foreign,
    handler: unsafe extern "C" fn(usize, *mut SbHandlerCall, *const u8, usize, *const u8, usize),
    cancel: SbHandlerCancelFn,
}

/// Tells the caller to stop `call` if the dispatch drops it unfinished.
struct CancelOnDrop {
    agent: Arc<Agent>,
    call: Arc<SbHandlerCall>,
    settled: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(cancel) = self.agent.cancel {
            let ptr = Arc::as_ptr(&self.call) as *mut SbHandlerCall;
            // SAFETY: the caller's function; `ptr` stays valid while this
            // guard holds its own reference.
            quietly(|| unsafe { cancel(self.agent.foreign.user_data, ptr) });
        }
    }
}

async fn call(agent: Arc<Agent>, tool: String, input: Value) -> Output {
    let (tx, rx) = oneshot::channel();
    let shared = Arc::new(SbHandlerCall {
        tx: Mutex::new(Some(tx)),
    });
    let input = input.to_string();
    let mut guard = CancelOnDrop {
        agent: agent.clone(),
        call: shared.clone(),
        settled: false,
    };
    let foreign_hold = Arc::into_raw(shared) as *mut SbHandlerCall;
    // SAFETY: the caller's function with borrowed arguments; it takes the
    // hold `foreign_hold` stands for and gives it back through finish.
    unsafe {
        (agent.handler)(
            agent.foreign.user_data,
            foreign_hold,
            tool.as_ptr(),
            tool.len(),
            input.as_ptr(),
            input.len(),
        )
    };
    let outcome = rx.await;
    guard.settled = true;
    outcome.unwrap_or_else(|_| {
        Err(ToolError::retryable(
            "the handler's call was dropped without an outcome",
        ))
    })
}

/// The Rust handler that runs a foreign agent, or `None` without a handler
/// function (its `release` runs then).
pub(crate) fn foreign_handler(
    handler: SbHandlerFn,
    cancel: SbHandlerCancelFn,
    foreign: Foreign,
) -> Option<impl Fn(String, Value) -> BoxFuture + Send + Sync + 'static> {
    let agent = Arc::new(Agent {
        handler: handler?,
        cancel,
        foreign,
    });
    Some(move |tool: String, input: Value| -> BoxFuture {
        Box::pin(call(agent.clone(), tool, input))
    })
}
