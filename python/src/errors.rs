//! The Python exception hierarchy: one class per kind of `switchboard::Error`,
//! all under `SwitchboardError`, carrying the variant's fields as attributes
//! (`PolicyDeniedError.key`, `.reason`, ...), so Python code branches on the
//! class, never on the message.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use switchboard::Error;

create_exception!(
    switchboard,
    SwitchboardError,
    PyException,
    "Base class of every error Switchboard raises."
);
create_exception!(
    switchboard,
    InvalidInputError,
    SwitchboardError,
    "Malformed input (id, key, value, URL or option); nothing was read or written."
);
create_exception!(
    switchboard,
    PolicyDeniedError,
    SwitchboardError,
    "A policy hook or Rego module refused the operation (`key`, `reason`)."
);
create_exception!(
    switchboard,
    RateLimitedError,
    SwitchboardError,
    "A rate limit is used up (`limit`, `retry_after_seconds`)."
);
create_exception!(
    switchboard,
    PolicyLoadError,
    SwitchboardError,
    "A Rego module could not be loaded (`name`, `reason`); loaded policies stay."
);
create_exception!(
    switchboard,
    NoAgentAvailableError,
    SwitchboardError,
    "No healthy agent serves the category, or every one was tried (`category`, `reason`)."
);
create_exception!(
    switchboard,
    ToolFailedError,
    SwitchboardError,
    "The tool reported its own failure (`agent_id`, `message`); not retried."
);
create_exception!(
    switchboard,
    AgentFailedError,
    SwitchboardError,
    "The agent could not answer: 5xx, bad response, connection failure (`agent_id`, `message`)."
);
create_exception!(
    switchboard,
    AgentTimeoutError,
    SwitchboardError,
    "The agent did not answer in time (`agent_id`, `timeout_seconds`)."
);
create_exception!(
    switchboard,
    UnknownAgentError,
    SwitchboardError,
    "No agent with this id is registered (`agent_id`)."
);
create_exception!(
    switchboard,
    StorageError,
    SwitchboardError,
    "RocksDB reported an error, or a stored value could not be decoded."
);
create_exception!(
    switchboard,
    RetryableToolError,
    PyException,
    "Raised by a local handler: the agent failed (not the request), so the \
     dispatcher fails over to another agent, as for an HTTP 5xx."
);

/// Converts a core error into its Python exception, fields as attributes.
pub fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    Python::attach(|py| {
        let (err, attrs): (PyErr, Vec<(&str, Py<PyAny>)>) = match e {
            Error::InvalidInput(_) => (InvalidInputError::new_err(message), vec![]),
            Error::PolicyDenied { key, reason } => (
                PolicyDeniedError::new_err(message),
                vec![("key", obj(py, key)), ("reason", obj(py, reason))],
            ),
            Error::RateLimited { limit, retry_after } => (
                RateLimitedError::new_err(message),
                vec![
                    ("limit", obj(py, limit)),
                    ("retry_after_seconds", obj(py, retry_after.as_secs_f64())),
                ],
            ),
            Error::PolicyLoad { name, reason } => (
                PolicyLoadError::new_err(message),
                vec![("name", obj(py, name)), ("reason", obj(py, reason))],
            ),
            Error::NoAgentAvailable { category, reason } => (
                NoAgentAvailableError::new_err(message),
                vec![("category", obj(py, category)), ("reason", obj(py, reason))],
            ),
            Error::ToolFailed {
                agent_id,
                message: tool_message,
            } => (
                ToolFailedError::new_err(message),
                vec![
                    ("agent_id", obj(py, agent_id)),
                    ("message", obj(py, tool_message)),
                ],
            ),
            Error::AgentFailed {
                agent_id,
                message: agent_message,
            } => (
                AgentFailedError::new_err(message),
                vec![
                    ("agent_id", obj(py, agent_id)),
                    ("message", obj(py, agent_message)),
                ],
            ),
            Error::AgentTimeout { agent_id, timeout } => (
                AgentTimeoutError::new_err(message),
                vec![
                    ("agent_id", obj(py, agent_id)),
                    ("timeout_seconds", obj(py, timeout.as_secs_f64())),
                ],
            ),
            Error::UnknownAgent(agent_id) => (
                UnknownAgentError::new_err(message),
                vec![("agent_id", obj(py, agent_id))],
            ),
            Error::Storage(_) | Error::Unavailable(_) => (StorageError::new_err(message), vec![]),
            // A kind added to the core later still arrives as a SwitchboardError.
            #[allow(unreachable_patterns)]
            _ => (SwitchboardError::new_err(message), vec![]),
        };
        let value = err.value(py);
        for (name, v) in attrs {
            // Setting an attribute on a fresh exception instance cannot fail
            // in practice; if it did, the message still says everything.
            let _ = value.setattr(name, v);
        }
        err
    })
}

fn obj<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> Py<PyAny> {
    v.into_py_any(py).unwrap_or_else(|_| py.None())
}

/// `Result<T, switchboard::Error>` → `PyResult<T>`.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for switchboard::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SwitchboardError", py.get_type::<SwitchboardError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("PolicyDeniedError", py.get_type::<PolicyDeniedError>())?;
    m.add("RateLimitedError", py.get_type::<RateLimitedError>())?;
    m.add("PolicyLoadError", py.get_type::<PolicyLoadError>())?;
    m.add(
        "NoAgentAvailableError",
        py.get_type::<NoAgentAvailableError>(),
    )?;
    m.add("ToolFailedError", py.get_type::<ToolFailedError>())?;
    m.add("AgentFailedError", py.get_type::<AgentFailedError>())?;
    m.add("AgentTimeoutError", py.get_type::<AgentTimeoutError>())?;
    m.add("UnknownAgentError", py.get_type::<UnknownAgentError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add("RetryableToolError", py.get_type::<RetryableToolError>())?;
    Ok(())
}
