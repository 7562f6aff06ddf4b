//! The tokio runtime the bindings run on, and the bridge from a Rust future
//! to an asyncio awaitable.
//!
//! `awaitable(fut)` creates an asyncio future on the running event loop and
//! spawns `fut` on the runtime (without the GIL). When `fut` finishes, its
//! result is handed to the loop with `call_soon_threadsafe`. When the asyncio
//! future is cancelled (the awaiting task was cancelled), `fut` is dropped
//! where it stands. While `fut` runs, [`current_loop`] names the event loop
//! that awaits it (Python handlers registered outside any loop run there).
//!
//! Written here rather than taken from a bridge crate so that the extension
//! adds no features to the dependencies it shares with the core's build.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use pyo3::IntoPyObjectExt;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use tokio::sync::oneshot;

tokio::task_local! {
    static CURRENT_LOOP: Py<PyAny>;
}

/// The runtime every binding call runs on (threads: one per core).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("switchboard")
            .build()
            .expect("cannot start the tokio runtime")
    })
}

/// The event loop awaiting the current task's future, if any.
pub fn current_loop(py: Python<'_>) -> Option<Py<PyAny>> {
    CURRENT_LOOP.try_with(|l| l.clone_ref(py)).ok()
}

/// Helpers only Python can write: `_deliver(fut, ok, value)` sets an
/// outcome unless the future was cancelled meanwhile (it runs on the loop's
/// thread); `_await(aw)` wraps an awaitable in a coroutine, which
/// `asyncio.create_task` and `run_coroutine_threadsafe` insist on;
/// `_ready(value)` and `_raise(error)` are coroutines of an outcome known
/// before anything was awaited.
static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

pub fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = HELPERS.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            PyModule::from_code(
                py,
                c"def _deliver(fut, ok, value):
    if not fut.done():
        (fut.set_result if ok else fut.set_exception)(value)

async def _await(aw):
    return await aw

async def _ready(value):
    return value

async def _raise(error):
    raise error
",
                c"switchboard/_bridge.py",
                c"switchboard._bridge",
            )?
            .unbind(),
        )
    })?;
    module.bind(py).getattr(name)
}

/// [`awaitable`], except that `fut` is first polled here, on the event
/// loop's thread, when `inline`: a call that finishes without waiting (an
/// in-process Rust agent, buffered records, no hook that may block:
/// `ToolDispatcher::invoke_may_block`) then costs no hand-off to the runtime
/// and back. One that has to wait goes on on the runtime, which polls it
/// again with its own waker.
pub fn awaitable_now<'py, T, F>(
    py: Python<'py>,
    inline: bool,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    if !inline {
        return awaitable(py, fut);
    }
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let mut fut = Box::pin(CURRENT_LOOP.scope(event_loop.unbind(), fut));
    let first = {
        let _runtime = runtime().enter();
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    };
    match first {
        std::task::Poll::Ready(Ok(value)) => helper(py, "_ready")?.call1((value.into_py_any(py)?,)),
        std::task::Poll::Ready(Err(e)) => helper(py, "_raise")?.call1((e.into_value(py),)),
        std::task::Poll::Pending => awaitable(py, fut),
    }
}

/// Runs `fut` on the runtime and returns a coroutine awaiting its result.
/// Must be called on the thread of a running event loop.
pub fn awaitable<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_fut = event_loop.call_method0("create_future")?;

    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let cancel_tx = Mutex::new(Some(cancel_tx));
    let on_done = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
            if args
                .get_item(0)?
                .call_method0("cancelled")?
                .extract::<bool>()?
            {
                if let Some(tx) = cancel_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(());
                }
            }
            Ok(())
        },
    )?;
    py_fut.call_method1("add_done_callback", (on_done,))?;

    let loop_ref = event_loop.clone().unbind();
    let fut_ref = py_fut.clone().unbind();
    let task_loop = event_loop.unbind();
    runtime().spawn(async move {
        let outcome = tokio::select! {
            outcome = CURRENT_LOOP.scope(task_loop, fut) => outcome,
            // Cancelled: the select drops `fut`, which stops the call.
            _ = cancel_rx => return,
        };
        Python::attach(|py| {
            let (ok, value) = match outcome.and_then(|v| v.into_py_any(py)) {
                Ok(value) => (true, value),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            let sent = helper(py, "_deliver").and_then(|deliver| {
                loop_ref.call_method1(py, "call_soon_threadsafe", (deliver, fut_ref, ok, value))
            });
            // A loop closed before the call finished has nobody left to tell.
            drop(sent);
        });
    });
    helper(py, "_await")?.call1((py_fut,))
}
