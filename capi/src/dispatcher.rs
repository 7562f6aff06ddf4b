//! `SbDispatcher`: registration, metrics, health checks, and invoke.
//!
//! `sb_dispatcher_invoke` polls the dispatch once on the calling thread
//! (inside the runtime's context). A call that finishes there — an
//! in-process Rust agent, buffered commits — returns its result at once,
//! with no thread hop. Otherwise the same future, pinned on the heap, is
//! spawned onto the runtime and completes through the caller's `done`
//! callback, so no thread of the caller waits while an agent works.
//! `sb_call_cancel` drops a pending dispatch where it stands, which the
//! core records `cancelled`.
//!
//! Unlike the Node and Python packages, this does not ask
//! `ToolDispatcher::invoke_may_block` first: the calling thread is not an
//! event loop other work waits on but the caller's own (a goroutine's, in
//! Go), which waits for the call anyway. A hook the caller wrote runs there
//! as a plain nested call, cheaper than a callback from a runtime thread;
//! only waiting on an agent is moved off it.

use crate::errors::{Failure, Result, SB_CANCELLED, SB_INTERNAL, SB_OK, SB_PENDING};
use crate::ffi::{bytes, guard, object, panic_message, put, quietly, run, text, SbBytes};
use crate::handler::{foreign_handler, Foreign, SbHandlerCancelFn, SbHandlerFn, SbReleaseFn};
use crate::policy::json_bytes;
use crate::runtime::runtime;
use crate::SbDatabase;
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use switchboard::{
    AgentConfig, HealthCheckConfig, InvocationResult, RoutingOptions, RoutingStrategy, ToolCategory,
};
use tokio::sync::oneshot;

/// Routes tool invocations to agents (opaque).
pub struct SbDispatcher {
    d: switchboard::ToolDispatcher,
}

/// What a successful invoke returns. Its buffers belong to whoever was
/// handed the struct: see `sb_dispatcher_invoke` and `SbInvokeDone`.
#[repr(C)]
pub struct SbInvocation {
    /// Its record lives under `tools/{category}/{tool}/{invocation_id}`.
    pub invocation_id: SbBytes,
    pub agent_id: SbBytes,
    /// The agent's output, JSON.
    pub output: SbBytes,
    /// Agent calls made (1 unless it failed over).
    pub attempts: u32,
    pub latency_ms: f64,
}

/// Completes a pending invoke, exactly once, on a runtime thread:
/// `status` is `SB_OK` with `result` set, or an error code with `error`
/// (the JSON payload). Both are borrowed for the callback only.
pub type SbInvokeDone = Option<
    unsafe extern "C" fn(user_data: usize, status: i32, result: *mut SbInvocation, error: SbBytes),
>;

/// A pending invoke (opaque): cancel it with `sb_call_cancel`, free it with
/// `sb_call_free`.
pub struct SbCall {
    cancel: Mutex<Option<oneshot::Sender<()>>>,
}

/// A dispatcher over `db`: loads persisted registrations and marks
/// dispatches a dead process left in flight as interrupted. `*out` is owned
/// by the caller and freed with `sb_dispatcher_free`.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_new(
    db: *const SbDatabase,
    out: *mut *mut SbDispatcher,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = object("database", db)?.db.clone();
        let _rt = runtime().enter();
        let d = switchboard::ToolDispatcher::try_new(db)?;
        put("out", out, Box::into_raw(Box::new(SbDispatcher { d })))
    })
}

/// Frees a dispatcher (NULL is a no-op): stops its health checks and drops
/// its local agents' handlers (their `release` runs once no call of theirs
/// is in flight). Calls still pending finish first.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_free(d: *mut SbDispatcher) {
    if !d.is_null() {
        // SAFETY: a handle from `sb_dispatcher_new`, freed once.
        quietly(|| {
            let d = unsafe { Box::from_raw(d) };
            // Health checks hold the registry weakly; stop them now rather
            // than at their next tick.
            d.d.disable_health_checks();
        });
    }
}

/// How an agent is registered: the JSON `options` of the register calls.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentOptions {
    tools: Vec<String>,
    endpoint: Option<String>,
    #[serde(default)]
    priority: i32,
    health_url: Option<String>,
    timeout_seconds: Option<f64>,
    max_concurrency: Option<u32>,
}

fn category(name: &str) -> Result<ToolCategory> {
    Ok(name.parse::<ToolCategory>()?)
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(Failure::invalid(format!(
            "{what} must be a positive number of seconds, not {s}"
        )))
    }
}

fn agent_options(json: &[u8]) -> Result<(AgentConfig, AgentOptions)> {
    let options: AgentOptions = serde_json::from_slice(json)
        .map_err(|e| Failure::invalid(format!("bad agent options: {e}")))?;
    let tools = options
        .tools
        .iter()
        .map(|t| category(t))
        .collect::<Result<Vec<_>>>()?;
    let mut config = AgentConfig::new()
        .with_tools(tools)
        .with_priority(options.priority);
    if let Some(t) = options.timeout_seconds {
        config = config.with_timeout(seconds("timeout_seconds", t)?);
    }
    if let Some(m) = options.max_concurrency {
        config = config.with_max_concurrency(m);
    }
    Ok((config, options))
}

/// Registers an HTTP agent (an existing id is replaced). `options_json`:
/// `{"tools": [categories], "endpoint": url, "priority": int, "health_url":
/// url, "timeout_seconds": number, "max_concurrency": int}` (only `tools`
/// is required).
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_register_agent(
    d: *const SbDispatcher,
    agent_id: *const u8,
    agent_id_len: usize,
    options_json: *const u8,
    options_len: usize,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        // SAFETY: the header's contract for borrowed arguments.
        let (id, json) = unsafe {
            (
                text("agent id", agent_id, agent_id_len)?,
                bytes(options_json, options_len)?,
            )
        };
        let (mut config, options) = agent_options(json)?;
        if let Some(endpoint) = options.endpoint {
            config = config.with_endpoint(endpoint);
        }
        if let Some(url) = options.health_url {
            config = config.with_health_url(url);
        }
        let _rt = runtime().enter();
        Ok(d.register_agent(id, config)?)
    })
}

/// Registers an in-process agent run by `handler` (see `SbHandlerFn`); an
/// existing id is replaced. `options_json` as for
/// `sb_dispatcher_register_agent` (its endpoint is ignored). From this call
/// on, `user_data` belongs to the library: `release(user_data)` runs once
/// the agent is unregistered or replaced, or its dispatcher freed, and no
/// call of it is in flight; or before this returns if it fails.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_register_local_agent(
    d: *const SbDispatcher,
    agent_id: *const u8,
    agent_id_len: usize,
    options_json: *const u8,
    options_len: usize,
    handler: SbHandlerFn,
    cancel: SbHandlerCancelFn,
    user_data: usize,
    release: SbReleaseFn,
    err: *mut SbBytes,
) -> i32 {
    let foreign = Foreign { user_data, release };
    run(err, move || {
        let d = &object("dispatcher", d)?.d;
        // SAFETY: the header's contract for borrowed arguments.
        let (id, json) = unsafe {
            (
                text("agent id", agent_id, agent_id_len)?,
                bytes(options_json, options_len)?,
            )
        };
        let (config, _) = agent_options(json)?;
        let handler = foreign_handler(handler, cancel, foreign)
            .ok_or_else(|| Failure::invalid("the handler function is NULL"))?;
        let _rt = runtime().enter();
        Ok(d.register_local_agent_with(id, config, handler)?)
    })
}

/// Removes an agent (`SB_UNKNOWN_AGENT` if there is none with this id).
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_unregister_agent(
    d: *const SbDispatcher,
    agent_id: *const u8,
    agent_id_len: usize,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        // SAFETY: the header's contract for borrowed text.
        let id = unsafe { text("agent id", agent_id, agent_id_len) }?;
        let _rt = runtime().enter();
        Ok(d.unregister_agent(id)?)
    })
}

/// Every registered agent id, sorted: `*ids` receives a JSON array of
/// strings, freed by the caller with `sb_bytes_free`.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_list_agents(
    d: *const SbDispatcher,
    ids: *mut SbBytes,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        put("ids", ids, SbBytes::from_vec(json_bytes(&d.list_agents())?))
    })
}

/// Per-agent metrics: `*metrics` receives `{"agent_id": {"total",
/// "successes", "failures", "success_rate", "avg_latency_ms",
/// "p50_latency_ms", "p99_latency_ms", "active_tasks", "healthy",
/// "cancelled", ...}}`, freed by the caller with `sb_bytes_free`.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_metrics(
    d: *const SbDispatcher,
    metrics: *mut SbBytes,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        put(
            "metrics",
            metrics,
            SbBytes::from_vec(json_bytes(&d.get_metrics())?),
        )
    })
}

/// Starts (or reconfigures) health checks on the library's runtime.
/// Durations in seconds; `panic_threshold` is a share from 0 to 1.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_enable_health_checks(
    d: *const SbDispatcher,
    interval_seconds: f64,
    timeout_seconds: f64,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    panic_threshold: f64,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        if !(0.0..=1.0).contains(&panic_threshold) {
            return Err(Failure::invalid(format!(
                "the panic threshold is a share from 0 to 1, not {panic_threshold}"
            )));
        }
        if unhealthy_threshold == 0 || healthy_threshold == 0 {
            return Err(Failure::invalid("health thresholds must be at least 1"));
        }
        let config = HealthCheckConfig::new()
            .interval(seconds("interval", interval_seconds)?)
            .timeout(seconds("timeout", timeout_seconds)?)
            .unhealthy_threshold(unhealthy_threshold)
            .healthy_threshold(healthy_threshold)
            .panic_threshold(panic_threshold);
        // On the library's runtime, not a thread of its own.
        let _rt = runtime().enter();
        d.enable_health_checks(config);
        Ok(())
    })
}

/// Stops health checks; agents keep their current health.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_disable_health_checks(d: *const SbDispatcher) -> i32 {
    run(std::ptr::null_mut(), || {
        object("dispatcher", d)?.d.disable_health_checks();
        Ok(())
    })
}

type Dispatch = Pin<Box<dyn Future<Output = switchboard::Result<InvocationResult>> + Send>>;

/// Routes one call of `tool` in `category` with `input` (JSON; empty: `{}`).
/// `strategy` (empty: round robin) and `session_id` (empty: none) route it;
/// `max_attempts` 0 keeps the default.
///
/// Returns `SB_OK` when the call finished on this thread: `*result` then
/// holds it, and the caller frees it with `sb_invocation_free`; `done` is
/// not called. Returns `SB_PENDING` when it goes on on the runtime: `*call`
/// is a handle the caller owns (cancel with `sb_call_cancel`, free with
/// `sb_call_free` once `done` has run), and `done(user_data, ...)` will run
/// exactly once, possibly before this returns. Any other status is the
/// call's failure, with `*err` set; `done` is not called.
#[no_mangle]
pub unsafe extern "C" fn sb_dispatcher_invoke(
    d: *const SbDispatcher,
    tool: *const u8,
    tool_len: usize,
    category: *const u8,
    category_len: usize,
    input: *const u8,
    input_len: usize,
    strategy: *const u8,
    strategy_len: usize,
    session_id: *const u8,
    session_id_len: usize,
    max_attempts: u32,
    done: SbInvokeDone,
    user_data: usize,
    result: *mut SbInvocation,
    call: *mut *mut SbCall,
    err: *mut SbBytes,
) -> i32 {
    guard(err, || {
        let d = object("dispatcher", d)?.d.clone();
        // SAFETY: the header's contract for borrowed arguments.
        let (tool, category, input, strategy, session) = unsafe {
            (
                text("tool", tool, tool_len)?.to_string(),
                self::category(text("category", category, category_len)?)?,
                bytes(input, input_len)?,
                text("strategy", strategy, strategy_len)?,
                text("session id", session_id, session_id_len)?,
            )
        };
        let done = done.ok_or_else(|| Failure::invalid("the done callback is NULL"))?;
        if result.is_null() || call.is_null() {
            return Err(Failure::invalid("result and call must not be NULL"));
        }
        let input: Value = if input.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(input)
                .map_err(|e| Failure::invalid(format!("the input is not JSON: {e}")))?
        };
        let mut options = RoutingOptions::new();
        if !strategy.is_empty() {
            options = options.with_strategy(strategy.parse::<RoutingStrategy>()?);
        }
        if !session.is_empty() {
            options = options.with_session_id(session);
        }
        if max_attempts > 0 {
            options = options.with_max_attempts(max_attempts);
        }

        let rt = runtime();
        let _rt = rt.enter();
        let mut dispatch: Dispatch =
            Box::pin(async move { d.invoke(&tool, category, input, options).await });
        // The first poll, here: nothing will wake this waker, as the
        // future is either done or handed to the runtime, whose task polls
        // it again (re-registering its own waker) before waiting.
        match dispatch
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(r) => {
                put("result", result, invocation(r?))?;
                Ok(SB_OK)
            }
            Poll::Pending => {
                let (cancel_tx, cancel_rx) = oneshot::channel();
                // The handle is the caller's before `done` can run.
                put(
                    "call",
                    call,
                    Box::into_raw(Box::new(SbCall {
                        cancel: Mutex::new(Some(cancel_tx)),
                    })),
                )?;
                let completion = Completion {
                    done,
                    user_data,
                    called: false,
                };
                rt.spawn(finish(dispatch, cancel_rx, completion));
                Ok(SB_PENDING)
            }
        }
    })
}

/// Runs a pending dispatch to its end (or its cancellation) and reports.
async fn finish(dispatch: Dispatch, cancel: oneshot::Receiver<()>, mut completion: Completion) {
    let cancelled = async {
        // The handle freed without a cancel is no cancel.
        if cancel.await.is_err() {
            std::future::pending::<()>().await
        }
    };
    let outcome = tokio::select! {
        r = CatchUnwind(dispatch) => r,
        // The select drops the dispatch here, which records it `cancelled`.
        _ = cancelled => Ok(Err(Failure::new(SB_CANCELLED, "the call was cancelled by its caller"))),
    };
    match outcome {
        Ok(Ok(r)) => {
            let mut r = invocation(r);
            completion.call(SB_OK, &mut r, SbBytes::EMPTY);
            // SAFETY: the buffers made just above, freed once.
            unsafe { sb_invocation_free(&mut r) };
        }
        Ok(Err(failure)) => completion.fail(failure),
        Err(panic) => completion.fail(Failure::new(
            SB_INTERNAL,
            format!("the dispatch panicked: {panic}"),
        )),
    }
}

fn invocation(r: InvocationResult) -> SbInvocation {
    SbInvocation {
        invocation_id: SbBytes::from_vec(r.invocation_id.into_bytes()),
        agent_id: SbBytes::from_vec(r.agent_id.into_bytes()),
        output: SbBytes::from_vec(r.output.to_string().into_bytes()),
        attempts: r.attempts,
        latency_ms: r.latency_ms,
    }
}

/// The caller's `done` callback, called exactly once: if the task running
/// the dispatch is dropped before it reports (the runtime shutting down),
/// dropping this reports that.
struct Completion {
    done: unsafe extern "C" fn(usize, i32, *mut SbInvocation, SbBytes),
    user_data: usize,
    called: bool,
}

impl Completion {
    fn call(&mut self, status: i32, result: *mut SbInvocation, error: SbBytes) {
        self.called = true;
        // SAFETY: the caller's function; the buffers are borrowed for it.
        quietly(|| unsafe { (self.done)(self.user_data, status, result, error) });
    }

    fn fail(&mut self, failure: Failure) {
        let payload = SbBytes::from_vec(failure.payload());
        let error = SbBytes {
            ptr: payload.ptr,
            len: payload.len,
        };
        self.call(failure.code, std::ptr::null_mut(), error);
        // SAFETY: bytes made just above, freed once.
        unsafe { crate::ffi::sb_bytes_free(payload) };
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.called {
            self.fail(Failure::new(
                SB_INTERNAL,
                "the call was dropped before it finished (is the process exiting?)",
            ));
        }
    }
}

/// Polls a future, turning a panic inside it into an error.
struct CatchUnwind(Dispatch);

impl Future for CatchUnwind {
    type Output = std::result::Result<Result<InvocationResult>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r.map_err(Failure::from))),
            Err(panic) => Poll::Ready(Err(panic_message(&*panic))),
        }
    }
}

/// Frees the buffers of a result `sb_dispatcher_invoke` returned (the
/// struct itself is the caller's); they are zeroed after.
#[no_mangle]
pub unsafe extern "C" fn sb_invocation_free(result: *mut SbInvocation) {
    // SAFETY: NULL, or a result this library filled and nobody freed.
    if let Some(r) = unsafe { result.as_mut() } {
        for b in [&mut r.invocation_id, &mut r.agent_id, &mut r.output] {
            let owned = std::mem::replace(b, SbBytes::EMPTY);
            // SAFETY: bytes this library made, freed once (then zeroed).
            unsafe { crate::ffi::sb_bytes_free(owned) };
        }
    }
}

/// Cancels a pending invoke: the dispatch is dropped where it stands and
/// recorded `cancelled`, then `done` runs with `SB_CANCELLED` (unless it
/// had already finished: then nothing changes). Returns `SB_OK`.
#[no_mangle]
pub unsafe extern "C" fn sb_call_cancel(call: *const SbCall) -> i32 {
    run(std::ptr::null_mut(), || {
        let call = object("call", call)?;
        if let Some(tx) = call.cancel.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // The task has finished when its receiver is gone: fine.
            let _ = tx.send(());
        }
        Ok(())
    })
}

/// Frees a call handle (NULL is a no-op). Freeing it does not cancel.
#[no_mangle]
pub unsafe extern "C" fn sb_call_free(call: *mut SbCall) {
    if !call.is_null() {
        // SAFETY: a handle from `sb_dispatcher_invoke`, freed once.
        quietly(|| drop(unsafe { Box::from_raw(call) }));
    }
}

/// For benchmarks: registers `agent_id`, an in-process Rust agent serving
/// `category` that echoes its input; with `yield_first` it yields to the
/// runtime once first, so every call to it takes the pending path.
#[no_mangle]
pub unsafe extern "C" fn sb_bench_register_rust_echo(
    d: *const SbDispatcher,
    agent_id: *const u8,
    agent_id_len: usize,
    category: *const u8,
    category_len: usize,
    yield_first: bool,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = &object("dispatcher", d)?.d;
        // SAFETY: the header's contract for borrowed text.
        let (id, category) = unsafe {
            (
                text("agent id", agent_id, agent_id_len)?,
                self::category(text("category", category, category_len)?)?,
            )
        };
        let _rt = runtime().enter();
        Ok(
            d.register_local_agent(id, vec![category], move |_tool, input| async move {
                if yield_first {
                    tokio::task::yield_now().await;
                }
                Ok::<_, switchboard::ToolError>(input)
            })?,
        )
    })
}

/// For benchmarks: `n` invokes of `tool` in `category` made from Rust one
/// after another on the library's runtime (`{"i": i}` as input); `*seconds`
/// receives the time they took.
#[no_mangle]
pub unsafe extern "C" fn sb_bench_rust_invokes(
    d: *const SbDispatcher,
    tool: *const u8,
    tool_len: usize,
    category: *const u8,
    category_len: usize,
    n: u32,
    seconds: *mut f64,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let d = object("dispatcher", d)?.d.clone();
        // SAFETY: the header's contract for borrowed text.
        let (tool, category) = unsafe {
            (
                text("tool", tool, tool_len)?,
                self::category(text("category", category, category_len)?)?,
            )
        };
        let took = runtime().block_on(async move {
            let started = std::time::Instant::now();
            for i in 0..n {
                d.invoke(
                    tool,
                    category.clone(),
                    serde_json::json!({ "i": i }),
                    RoutingOptions::new(),
                )
                .await?;
            }
            Ok::<_, switchboard::Error>(started.elapsed().as_secs_f64())
        })?;
        put("seconds", seconds, took)
    })
}
