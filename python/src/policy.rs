//! The native half of `switchboard.PolicyEngine`: Python callables as policy
//! hooks, Rego modules, rate limits. (The decorators live in the Python half.)
//!
//! Hooks run on whichever thread commits the write (a tokio worker during
//! `invoke`, the caller's thread for `Database.put`), so each call takes the
//! GIL itself. That cannot deadlock against the thread that wrote: every
//! binding call that can commit releases the GIL before entering Rust.

use crate::errors::{IntoPyResult, InvalidInputError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::time::Duration;
use switchboard::{PolicyAction, PolicyContext, RateLimitOp, RateLimitScope};

/// What a Python hook's return value means. Anything but a `PolicyAction`
/// denies: a policy that cannot be understood fails closed.
fn action_of(ret: &Bound<'_, PyAny>, hook: &str) -> PolicyAction {
    let parsed = (|| -> PyResult<Option<PolicyAction>> {
        let Ok(kind) = ret.getattr("kind") else {
            return Ok(None);
        };
        let kind: String = kind.extract()?;
        let payload = ret.getattr("payload")?;
        Ok(Some(match kind.as_str() {
            "allow" => PolicyAction::Allow,
            "deny" => PolicyAction::Deny(if payload.is_none() {
                "denied by policy".to_string()
            } else {
                payload.str()?.to_string()
            }),
            "modify" => PolicyAction::Modify(crate::database::value_bytes(&payload)?),
            "log" => PolicyAction::Log(payload.str()?.to_string()),
            _ => return Ok(None),
        }))
    })();
    match parsed {
        Ok(Some(action)) => action,
        Ok(None) => PolicyAction::Deny(format!(
            "policy hook {hook} returned {}, not a PolicyAction; denying (fail closed)",
            ret.repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into())
        )),
        Err(e) => PolicyAction::Deny(format!(
            "policy hook {hook} returned an unreadable action ({e}); denying (fail closed)"
        )),
    }
}

/// A Rust hook that calls the Python callable `f(key, value, context)`.
fn python_hook(
    f: Py<PyAny>,
) -> impl Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static {
    let name = Python::attach(|py| {
        f.bind(py)
            .getattr("__qualname__")
            .and_then(|n| n.extract::<String>())
            .unwrap_or_else(|_| "<callable>".into())
    });
    move |key: &str, value: &[u8], ctx: &PolicyContext| {
        Python::attach(|py| {
            let context = PyDict::new(py);
            for (k, v) in ctx.iter() {
                if let Err(e) = context.set_item(k, v) {
                    return PolicyAction::Deny(format!("cannot build the hook context: {e}"));
                }
            }
            match f.call1(py, (key, PyBytes::new(py, value), context)) {
                Ok(ret) => action_of(ret.bind(py), &name),
                Err(e) => PolicyAction::Deny(format!(
                    "policy hook {name} raised {}; denying (fail closed)",
                    describe(py, &e)
                )),
            }
        })
    }
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "exception".into());
    format!("{ty}: {}", e.value(py))
}

/// A handle on one database's hook chain.
#[pyclass(module = "switchboard._native", name = "PolicyEngine", frozen)]
pub struct NativePolicyEngine {
    engine: switchboard::PolicyEngine,
}

#[pymethods]
impl NativePolicyEngine {
    #[new]
    fn new(db: PyRef<'_, crate::database::Database>) -> Self {
        NativePolicyEngine {
            // A Python hook waits for the GIL: its commits run off the workers.
            engine: switchboard::PolicyEngine::new(&db.db).with_blocking_hooks(),
        }
    }

    /// Adds `hook(key, value, context)` at `point` (`before_write`,
    /// `after_write`, `before_delete`, `after_delete`, `before_read`,
    /// `after_read`) for keys matching the glob `scope`.
    fn add_hook(&self, point: &str, scope: &str, hook: Py<PyAny>) -> PyResult<()> {
        let f = python_hook(hook);
        match point {
            "before_write" => self.engine.before_write(scope, f),
            "after_write" => self.engine.after_write(scope, f),
            "before_delete" => self.engine.before_delete(scope, f),
            "after_delete" => self.engine.after_delete(scope, f),
            "before_read" => self.engine.before_read(scope, f),
            "after_read" => self.engine.after_read(scope, f),
            other => {
                return Err(InvalidInputError::new_err(format!(
                    "unknown hook point {other:?}"
                )))
            }
        }
        .py()
    }

    /// Compiles a Rego module judging puts and deletes under `scope`.
    fn add_rego(&self, py: Python<'_>, scope: &str, source: &str) -> PyResult<()> {
        py.detach(|| self.engine.add_rego(scope, source)).py()
    }

    /// Loads every `*.rego` file of `path` (scopes from `# scope:` comments);
    /// returns the module names.
    fn load_dir(&self, py: Python<'_>, path: PathBuf) -> PyResult<Vec<String>> {
        py.detach(|| self.engine.load_dir(&path)).py()
    }

    /// `(module name, scope)` of each loaded Rego module scope.
    fn rego_modules(&self) -> Vec<(String, String)> {
        self.engine.rego_modules()
    }

    /// At most `max` operations of kind `op` (`put`, `delete`, `get`,
    /// `dispatch`) per `window_seconds`, counted per `per` (`global`,
    /// `agent`, `session`, `tool`).
    #[pyo3(signature = (op, max, window_seconds=60.0, per="global"))]
    fn add_rate_limit(&self, op: &str, max: u32, window_seconds: f64, per: &str) -> PyResult<()> {
        let op = match op {
            "put" => RateLimitOp::Put,
            "delete" => RateLimitOp::Delete,
            "get" => RateLimitOp::Get,
            "dispatch" => RateLimitOp::Dispatch,
            other => {
                return Err(InvalidInputError::new_err(format!(
                    "unknown operation {other:?}: put, delete, get or dispatch"
                )))
            }
        };
        let scope = match per {
            "global" => RateLimitScope::Global,
            "agent" => RateLimitScope::PerAgent,
            "session" => RateLimitScope::PerSession,
            "tool" => RateLimitScope::PerTool,
            other => {
                return Err(InvalidInputError::new_err(format!(
                    "unknown scope {other:?}: global, agent, session or tool"
                )))
            }
        };
        if !(window_seconds.is_finite() && window_seconds > 0.0) {
            return Err(InvalidInputError::new_err(
                "window_seconds must be a positive number",
            ));
        }
        self.engine
            .add_rate_limit_per(op, max, Duration::from_secs_f64(window_seconds), scope)
            .py()
    }
}
