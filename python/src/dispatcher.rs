//! `switchboard.ToolDispatcher`: registration, metrics and health are plain
//! calls; `invoke` returns an asyncio awaitable driven by the shared tokio
//! runtime. Cancelling the awaiting task drops the Rust future (the call
//! stops where it is). The GIL is released while Rust works.

use crate::database::Database;
use crate::errors::{to_py, IntoPyResult, InvalidInputError};
use crate::handler::python_handler;
use crate::runtime::{awaitable_now, runtime};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::time::Duration;
use switchboard::{AgentConfig, HealthCheckConfig, RoutingOptions, RoutingStrategy, ToolCategory};

fn category(name: &str) -> PyResult<ToolCategory> {
    name.parse().py()
}

fn categories(names: Vec<String>) -> PyResult<Vec<ToolCategory>> {
    names.iter().map(|n| category(n)).collect()
}

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(InvalidInputError::new_err(format!(
            "{what} must be a positive number of seconds, not {s}"
        )))
    }
}

fn config(
    tools: Vec<String>,
    priority: i32,
    timeout_seconds: Option<f64>,
    max_concurrency: Option<u32>,
) -> PyResult<AgentConfig> {
    let mut config = AgentConfig::new()
        .with_tools(categories(tools)?)
        .with_priority(priority);
    if let Some(t) = timeout_seconds {
        config = config.with_timeout(seconds("timeout_seconds", t)?);
    }
    if let Some(m) = max_concurrency {
        config = config.with_max_concurrency(m);
    }
    Ok(config)
}

/// What a successful `invoke` returns.
#[pyclass(module = "switchboard", frozen)]
pub struct InvocationResult {
    #[pyo3(get)]
    invocation_id: String,
    #[pyo3(get)]
    agent_id: String,
    /// Agent calls made (1 unless it failed over).
    #[pyo3(get)]
    attempts: u32,
    #[pyo3(get)]
    latency_ms: f64,
    output_json: serde_json::Value,
    /// The output as Python objects, built on first access (off the tokio
    /// thread that finished the call) and then always the same object.
    output: PyOnceLock<Py<PyAny>>,
}

#[pymethods]
impl InvocationResult {
    /// The agent's output (JSON as dicts, lists, str, int, float, bool, None).
    #[getter]
    fn output(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.output
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(pythonize::pythonize(py, &self.output_json)?.unbind())
            })
            .map(|o| o.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "InvocationResult(invocation_id={:?}, agent_id={:?}, attempts={}, latency_ms={:.3}, output={})",
            self.invocation_id, self.agent_id, self.attempts, self.latency_ms, self.output_json
        )
    }
}

impl From<switchboard::InvocationResult> for InvocationResult {
    fn from(r: switchboard::InvocationResult) -> Self {
        InvocationResult {
            invocation_id: r.invocation_id,
            agent_id: r.agent_id,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            output_json: r.output,
            output: PyOnceLock::new(),
        }
    }
}

/// Routes tool invocations to agents.
#[pyclass(module = "switchboard", frozen)]
pub struct ToolDispatcher {
    d: switchboard::ToolDispatcher,
}

#[pymethods]
impl ToolDispatcher {
    /// A dispatcher over `db`; loads persisted registrations.
    #[new]
    fn new(py: Python<'_>, db: PyRef<'_, Database>) -> Self {
        let db = db.db.clone();
        let d = py.detach(|| switchboard::ToolDispatcher::new(db));
        ToolDispatcher { d }
    }

    /// Registers an HTTP agent (an existing id is replaced).
    #[pyo3(signature = (agent_id, tools, endpoint=None, priority=0, health_url=None, timeout_seconds=None, max_concurrency=None))]
    #[allow(clippy::too_many_arguments)]
    fn register_agent(
        &self,
        py: Python<'_>,
        agent_id: &str,
        tools: Vec<String>,
        endpoint: Option<String>,
        priority: i32,
        health_url: Option<String>,
        timeout_seconds: Option<f64>,
        max_concurrency: Option<u32>,
    ) -> PyResult<()> {
        let mut config = config(tools, priority, timeout_seconds, max_concurrency)?;
        if let Some(endpoint) = endpoint {
            config = config.with_endpoint(endpoint);
        }
        if let Some(url) = health_url {
            config = config.with_health_url(url);
        }
        py.detach(|| self.d.register_agent(agent_id, config)).py()
    }

    /// Registers an in-process agent: `handler(tool, input)` (an async
    /// function, or a plain one) returns the output. Its coroutines run on
    /// the event loop running here, if any (else on the loop of each `invoke`).
    /// An exception is the tool's error; `RetryableToolError` fails over.
    #[pyo3(signature = (agent_id, handler, tools, priority=0, timeout_seconds=None, max_concurrency=None))]
    #[allow(clippy::too_many_arguments)]
    fn register_local_agent(
        &self,
        py: Python<'_>,
        agent_id: &str,
        handler: Py<PyAny>,
        tools: Vec<String>,
        priority: i32,
        timeout_seconds: Option<f64>,
        max_concurrency: Option<u32>,
    ) -> PyResult<()> {
        if !handler.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "handler must be callable: async def handler(tool: str, input: dict) -> dict",
            ));
        }
        let config = config(tools, priority, timeout_seconds, max_concurrency)?;
        let handler = python_handler(py, handler)?;
        py.detach(|| self.d.register_local_agent_with(agent_id, config, handler))
            .py()
    }

    /// Removes an agent.
    fn unregister_agent(&self, py: Python<'_>, agent_id: &str) -> PyResult<()> {
        py.detach(|| self.d.unregister_agent(agent_id)).py()
    }

    /// Every registered agent id, sorted.
    fn list_agents(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.d.list_agents())
    }

    /// `{agent_id: {"total", "successes", "failures", "success_rate",
    /// "avg_latency_ms", "p50_latency_ms", "p99_latency_ms", "active_tasks",
    /// "healthy"}}`.
    fn get_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let metrics = py.detach(|| self.d.get_metrics());
        Ok(pythonize::pythonize(py, &metrics)?)
    }

    /// Starts (or reconfigures) health checks in the background.
    #[pyo3(signature = (interval_seconds=30.0, timeout_seconds=5.0, unhealthy_threshold=3, healthy_threshold=2, panic_threshold=0.5))]
    fn enable_health_checks(
        &self,
        interval_seconds: f64,
        timeout_seconds: f64,
        unhealthy_threshold: u32,
        healthy_threshold: u32,
        panic_threshold: f64,
    ) -> PyResult<()> {
        let config = HealthCheckConfig::new()
            .interval(seconds("interval_seconds", interval_seconds)?)
            .timeout(seconds("timeout_seconds", timeout_seconds)?)
            .unhealthy_threshold(unhealthy_threshold)
            .healthy_threshold(healthy_threshold)
            .panic_threshold(panic_threshold);
        // On the shared runtime, not a thread of its own.
        let _runtime = runtime().enter();
        self.d.enable_health_checks(config);
        Ok(())
    }

    /// Stops health checks; agents keep their current health.
    fn disable_health_checks(&self) {
        self.d.disable_health_checks();
    }

    /// Routes one call: `await dispatcher.invoke(tool, category, input, ...)`.
    #[pyo3(signature = (tool, category, input=None, strategy=None, session_id=None, max_attempts=None))]
    #[allow(clippy::too_many_arguments)]
    fn invoke<'py>(
        &self,
        py: Python<'py>,
        tool: String,
        category: &str,
        input: Option<&Bound<'py, PyAny>>,
        strategy: Option<&str>,
        session_id: Option<String>,
        max_attempts: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let category = self::category(category)?;
        let input = match input {
            Some(obj) if !obj.is_none() => pythonize::depythonize::<serde_json::Value>(obj)
                .map_err(|e| InvalidInputError::new_err(format!("input is not JSON: {e}")))?,
            _ => serde_json::Value::Object(Default::default()),
        };
        let mut options = RoutingOptions::new();
        if let Some(s) = strategy {
            options = options.with_strategy(s.parse::<RoutingStrategy>().py()?);
        }
        if let Some(s) = session_id {
            options = options.with_session_id(s);
        }
        if let Some(n) = max_attempts {
            options = options.with_max_attempts(n);
        }
        let d = self.d.clone();
        let inline = !d.invoke_may_block(&tool, &category, &options);
        awaitable_now(py, inline, async move {
            d.invoke(&tool, category, input, options)
                .await
                .map(InvocationResult::from)
                .map_err(to_py)
        })
    }

    /// The agent a call would go to now, without calling it (None if none).
    #[pyo3(signature = (category, strategy=None, session_id=None))]
    fn select_agent(
        &self,
        py: Python<'_>,
        category: &str,
        strategy: Option<&str>,
        session_id: Option<String>,
    ) -> PyResult<Option<String>> {
        let category = self::category(category)?;
        let mut options = RoutingOptions::new();
        if let Some(s) = strategy {
            options = options.with_strategy(s.parse::<RoutingStrategy>().py()?);
        }
        if let Some(s) = session_id {
            options = options.with_session_id(s);
        }
        py.detach(|| self.d.select_agent(&category, &options)).py()
    }

    /// For the bench: registers a Rust in-process agent that echoes its input.
    fn _register_rust_echo_agent(
        &self,
        py: Python<'_>,
        agent_id: &str,
        tools: Vec<String>,
    ) -> PyResult<()> {
        let tools = categories(tools)?;
        py.detach(|| {
            self.d
                .register_local_agent(agent_id, tools, |_tool, input| async move {
                    Ok::<_, switchboard::ToolError>(input)
                })
        })
        .py()
    }

    /// For the bench: `n` invokes made from Rust, one after another, on the
    /// same runtime the Python awaitables use. Returns the seconds taken.
    fn _bench_rust_invokes(
        &self,
        py: Python<'_>,
        tool: String,
        category: &str,
        n: u32,
    ) -> PyResult<f64> {
        let category = self::category(category)?;
        let d = self.d.clone();
        py.detach(|| {
            runtime().block_on(async move {
                let started = std::time::Instant::now();
                for i in 0..n {
                    d.invoke(
                        &tool,
                        category.clone(),
                        serde_json::json!({ "i": i }),
                        RoutingOptions::new(),
                    )
                    .await?;
                }
                Ok(started.elapsed().as_secs_f64())
            })
        })
        .py()
    }
}
