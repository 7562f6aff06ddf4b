//! Python functions as in-process agents.
//!
//! A handler is called on the tokio thread running the dispatch (under the
//! GIL, which only creates the coroutine object for an `async def`); the
//! coroutine is then handed to an asyncio event loop with
//! `run_coroutine_threadsafe`: the loop that was running when the agent was
//! registered, or else the loop of the `invoke` that routed the call here.
//! Its result comes back through a channel. If the dispatch stops waiting
//! (the caller cancelled `invoke`, or the agent's timeout elapsed), the
//! coroutine is cancelled too.

use crate::errors::RetryableToolError;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use switchboard::ToolError;
use tokio::sync::oneshot;

type Output = Result<serde_json::Value, ToolError>;
type BoxFuture = Pin<Box<dyn Future<Output = Output> + Send>>;

/// The tool error a Python exception stands for: its message, retryable if
/// it is a `RetryableToolError`.
fn tool_error(py: Python<'_>, e: &PyErr) -> ToolError {
    let value = e.value(py);
    let message = match value.str() {
        Ok(s) if !s.to_string().is_empty() => s.to_string(),
        _ => e
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "the handler raised".into()),
    };
    if e.is_instance_of::<RetryableToolError>(py) {
        ToolError::retryable(message)
    } else {
        ToolError::new(message)
    }
}

fn json_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> Output {
    pythonize::depythonize::<serde_json::Value>(obj).map_err(|e| {
        let _ = py;
        ToolError::new(format!(
            "the handler returned something that is not JSON: {e}"
        ))
    })
}

/// Cancels the Python side of a call whose Rust side was dropped.
struct CancelOnDrop(Option<Py<PyAny>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(fut) = self.0.take() {
            Python::attach(|py| {
                // A finished future ignores cancel(); nothing to report either way.
                let _ = fut.call_method0(py, "cancel");
            });
        }
    }
}

/// The loop a handler's coroutine runs on: the registering one while it is
/// open, else the one driving the current `invoke`.
fn event_loop<'py>(py: Python<'py>, home: &Option<Py<PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    if let Some(home) = home {
        let home = home.bind(py);
        if !home.call_method0("is_closed")?.extract::<bool>()? {
            return Ok(home.clone());
        }
    }
    match crate::runtime::current_loop(py) {
        Some(l) => Ok(l.into_bound(py)),
        None => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "no event loop to run the handler on: register the agent inside a running \
             event loop, or call invoke from one",
        )),
    }
}

enum Started {
    Done(Output),
    Pending(oneshot::Receiver<Output>, CancelOnDrop),
}

fn start(
    py: Python<'_>,
    handler: &Py<PyAny>,
    home: &Option<Py<PyAny>>,
    tool: String,
    input: serde_json::Value,
) -> PyResult<Started> {
    let input = pythonize::pythonize(py, &input)?;
    let ret = match handler.bind(py).call1((tool, input)) {
        Ok(ret) => ret,
        Err(e) => return Ok(Started::Done(Err(tool_error(py, &e)))),
    };
    let asyncio = py.import("asyncio")?;
    let coroutine = if asyncio
        .call_method1("iscoroutine", (&ret,))?
        .extract::<bool>()?
    {
        ret
    } else if ret.hasattr("__await__")? {
        crate::runtime::helper(py, "_await")?.call1((ret,))?
    } else {
        // A plain function: its return value is the output.
        return Ok(Started::Done(json_of(py, &ret)));
    };
    let event_loop = match event_loop(py, home) {
        Ok(l) => l,
        Err(e) => {
            // Close the coroutine we will never run, so Python does not warn.
            let _ = coroutine.call_method0("close");
            return Err(e);
        }
    };
    let fut = asyncio.call_method1("run_coroutine_threadsafe", (coroutine, event_loop))?;
    let (tx, rx) = oneshot::channel::<Output>();
    let tx = Mutex::new(Some(tx));
    let on_done = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
            let py = args.py();
            let fut = args.get_item(0)?;
            let outcome = if fut.call_method0("cancelled")?.extract::<bool>()? {
                Err(ToolError::new("the handler was cancelled"))
            } else {
                match fut.call_method0("result") {
                    Ok(value) => json_of(py, &value),
                    Err(e) => Err(tool_error(py, &e)),
                }
            };
            if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                // The receiver is gone when the call was dropped: fine.
                let _ = tx.send(outcome);
            }
            Ok(())
        },
    )?;
    fut.call_method1("add_done_callback", (on_done,))?;
    Ok(Started::Pending(rx, CancelOnDrop(Some(fut.unbind()))))
}

async fn call(
    handler: Arc<Py<PyAny>>,
    home: Arc<Option<Py<PyAny>>>,
    tool: String,
    input: serde_json::Value,
) -> Output {
    let started = Python::attach(|py| {
        start(py, &handler, &home, tool, input).map_err(|e| {
            ToolError::new(format!(
                "the Python handler could not be started: {}",
                e.value(py)
            ))
        })
    })?;
    match started {
        Started::Done(outcome) => outcome,
        Started::Pending(rx, mut guard) => {
            let outcome = rx.await;
            // Finished: nothing left to cancel (dropping a reference needs no GIL).
            guard.0 = None;
            outcome.unwrap_or_else(|_| Err(ToolError::new("the handler's event loop went away")))
        }
    }
}

/// The Rust handler that runs the Python callable `handler`.
pub fn python_handler(
    py: Python<'_>,
    handler: Py<PyAny>,
) -> PyResult<impl Fn(String, serde_json::Value) -> BoxFuture + Send + Sync + 'static> {
    let home = py
        .import("asyncio")?
        .call_method0("get_running_loop")
        .ok()
        .map(|l| l.unbind());
    let handler = Arc::new(handler);
    let home = Arc::new(home);
    Ok(move |tool: String, input: serde_json::Value| -> BoxFuture {
        Box::pin(call(handler.clone(), home.clone(), tool, input))
    })
}
