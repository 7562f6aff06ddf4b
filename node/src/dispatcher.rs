//! `NativeDispatcher`: registration, metrics and health checks, and
//! `invoke`, which runs the core's dispatch on the runtime and settles a
//! Promise. A call given a cancellation token stops when the token is
//! cancelled: its future is dropped, which the core records `cancelled`.

use crate::database::NativeDatabase;
use crate::errors::{coded, invalid, to_js, IntoJs};
use crate::handler::{js_handler, Bridge};
use crate::policy::on_js_thread;
use crate::runtime::{blocking, cancelled};
use napi::bindgen_prelude::{Either, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use serde_json::{json, Value};
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;
use switchboard::{AgentConfig, HealthCheckConfig, RoutingOptions, RoutingStrategy, ToolCategory};

/// How an agent is registered.
#[napi(object)]
pub struct AgentOptions {
    /// The categories it serves (`code`, `search`, ... or custom names).
    pub tools: Vec<String>,
    /// An HTTP agent's URL (unused for a local agent).
    pub endpoint: Option<String>,
    /// Higher first under the priority strategy (default 0).
    pub priority: Option<i32>,
    /// Where health checks probe (default: the endpoint's `/health`).
    pub health_url: Option<String>,
    /// Per-call timeout in seconds.
    pub timeout_seconds: Option<f64>,
    /// Calls in flight at most.
    pub max_concurrency: Option<u32>,
}

/// How one call is routed.
#[napi(object)]
pub struct InvokeOptions {
    pub strategy: Option<String>,
    pub session_id: Option<String>,
    pub max_attempts: Option<u32>,
}

/// Health-check settings; omitted fields take the core's defaults.
#[napi(object)]
pub struct HealthCheckOptions {
    pub interval_seconds: Option<f64>,
    pub timeout_seconds: Option<f64>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
    pub panic_threshold: Option<f64>,
}

/// What a successful `invoke` returns.
#[napi(object)]
pub struct InvocationResult {
    /// Its record lives under `tools/{category}/{tool}/{invocationId}`.
    pub invocation_id: String,
    pub agent_id: String,
    pub output: Value,
    /// Agent calls made (1 unless it failed over).
    pub attempts: u32,
    pub latency_ms: f64,
}

impl From<switchboard::InvocationResult> for InvocationResult {
    fn from(r: switchboard::InvocationResult) -> Self {
        InvocationResult {
            invocation_id: r.invocation_id,
            agent_id: r.agent_id,
            output: r.output,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
        }
    }
}

fn category(name: &str) -> napi::Result<ToolCategory> {
    name.parse().js()
}

/// An invoke's category, arguments (`{}` when none) and routing options.
fn call(
    category: &str,
    input: Option<Value>,
    options: Option<InvokeOptions>,
) -> napi::Result<(ToolCategory, Value, RoutingOptions)> {
    let input = match input {
        Some(Value::Null) | None => json!({}),
        Some(v) => v,
    };
    Ok((self::category(category)?, input, routing(options)?))
}

fn seconds(what: &str, s: f64) -> napi::Result<Duration> {
    if s.is_finite() && s > 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(invalid(format!(
            "{what} must be a positive number of seconds, not {s}"
        )))
    }
}

fn config(options: &AgentOptions) -> napi::Result<AgentConfig> {
    let tools = options
        .tools
        .iter()
        .map(|t| category(t))
        .collect::<napi::Result<Vec<_>>>()?;
    let mut config = AgentConfig::new()
        .with_tools(tools)
        .with_priority(options.priority.unwrap_or(0));
    if let Some(t) = options.timeout_seconds {
        config = config.with_timeout(seconds("timeoutSeconds", t)?);
    }
    if let Some(m) = options.max_concurrency {
        config = config.with_max_concurrency(m);
    }
    Ok(config)
}

fn routing(options: Option<InvokeOptions>) -> napi::Result<RoutingOptions> {
    let mut out = RoutingOptions::new();
    let Some(options) = options else {
        return Ok(out);
    };
    if let Some(s) = options.strategy {
        out = out.with_strategy(s.parse::<RoutingStrategy>().js()?);
    }
    if let Some(s) = options.session_id {
        out = out.with_session_id(s);
    }
    if let Some(n) = options.max_attempts {
        out = out.with_max_attempts(n);
    }
    Ok(out)
}

/// Routes tool invocations to agents.
#[napi]
pub struct NativeDispatcher {
    d: switchboard::ToolDispatcher,
}

#[napi]
impl NativeDispatcher {
    /// A dispatcher over `db`: loads persisted registrations and marks
    /// dispatches a dead process left in flight as interrupted (through
    /// the hooks, which run here on the JS thread).
    #[napi(constructor)]
    pub fn new(env: Env, db: &NativeDatabase) -> napi::Result<Self> {
        let db = db.handle()?;
        let d = on_js_thread(&env, || switchboard::ToolDispatcher::try_new(db)).js()?;
        Ok(NativeDispatcher { d })
    }

    /// Registers an HTTP agent (an existing id is replaced).
    #[napi]
    pub async fn register_agent(
        &self,
        agent_id: String,
        options: AgentOptions,
    ) -> napi::Result<()> {
        let mut config = config(&options)?;
        if let Some(endpoint) = options.endpoint {
            config = config.with_endpoint(endpoint);
        }
        if let Some(url) = options.health_url {
            config = config.with_health_url(url);
        }
        let d = self.d.clone();
        blocking(move || d.register_agent(&agent_id, config)).await
    }

    /// Registers an in-process agent run by the JS bridge `bridge`.
    #[napi]
    pub async fn register_local_agent(
        &self,
        agent_id: String,
        #[napi(
            ts_arg_type = "(op: 'call' | 'cancel', id: number, tool: string, input: any) => void"
        )]
        bridge: Bridge,
        options: AgentOptions,
    ) -> napi::Result<()> {
        let config = config(&options)?;
        let handler = js_handler(bridge);
        let d = self.d.clone();
        blocking(move || d.register_local_agent_with(&agent_id, config, handler)).await
    }

    /// Removes an agent.
    #[napi]
    pub async fn unregister_agent(&self, agent_id: String) -> napi::Result<()> {
        let d = self.d.clone();
        blocking(move || d.unregister_agent(&agent_id)).await
    }

    /// Every registered agent id, sorted.
    #[napi]
    pub async fn list_agents(&self) -> napi::Result<Vec<String>> {
        let d = self.d.clone();
        blocking(move || Ok(d.list_agents())).await
    }

    /// `{ agentId: { total, successes, ... } }` with the core's snake_case
    /// field names (`index.js` renames them).
    #[napi]
    pub async fn get_metrics(&self) -> napi::Result<Value> {
        let d = self.d.clone();
        let metrics = blocking(move || Ok(d.get_metrics())).await?;
        serde_json::to_value(metrics).map_err(|e| to_js(switchboard::Error::storage(e)))
    }

    /// Starts (or reconfigures) health checks on the runtime.
    #[napi]
    pub fn enable_health_checks(&self, options: Option<HealthCheckOptions>) -> napi::Result<()> {
        let o = options.unwrap_or(HealthCheckOptions {
            interval_seconds: None,
            timeout_seconds: None,
            unhealthy_threshold: None,
            healthy_threshold: None,
            panic_threshold: None,
        });
        let config = HealthCheckConfig::new()
            .interval(seconds(
                "intervalSeconds",
                o.interval_seconds.unwrap_or(30.0),
            )?)
            .timeout(seconds("timeoutSeconds", o.timeout_seconds.unwrap_or(5.0))?)
            .unhealthy_threshold(o.unhealthy_threshold.unwrap_or(3))
            .healthy_threshold(o.healthy_threshold.unwrap_or(2))
            .panic_threshold(o.panic_threshold.unwrap_or(0.5));
        let d = self.d.clone();
        // On the shared runtime, not a thread of its own.
        napi::bindgen_prelude::within_runtime_if_available(move || d.enable_health_checks(config));
        Ok(())
    }

    /// Stops health checks; agents keep their current health.
    #[napi]
    pub fn disable_health_checks(&self) {
        self.d.disable_health_checks();
    }

    /// Routes one call. `cancel` is a token from `cancelToken()`: cancelling
    /// it drops the call where it stands.
    #[napi]
    pub async fn invoke(
        &self,
        tool: String,
        category: String,
        input: Option<Value>,
        options: Option<InvokeOptions>,
        cancel: Option<u32>,
    ) -> napi::Result<InvocationResult> {
        let (category, input, options) = call(&category, input, options)?;
        let d = self.d.clone();
        tokio::select! {
            r = d.invoke(&tool, category, input, options) => r.map(InvocationResult::from).js(),
            _ = cancelled(cancel) => Err(coded(
                "Cancelled",
                format!("the call of {tool} was cancelled by its AbortSignal"),
                json!({}),
            )),
        }
    }

    /// Routes one call without a cancellation token, starting it on the
    /// calling (JavaScript) thread: a call that finishes without waiting (an
    /// in-process Rust agent, buffered records, no hook that may block) is
    /// answered at once, with no hand-off to the runtime and back; one that
    /// has to wait (an HTTP or JavaScript agent) returns a Promise and goes
    /// on on the runtime. A call whose records may block (an fsync, a Rego
    /// or JavaScript hook in scope) starts on the runtime, never on the
    /// event loop.
    #[napi(ts_return_type = "InvocationResult | Promise<InvocationResult>")]
    pub fn invoke_now<'env>(
        &self,
        env: &'env Env,
        tool: String,
        category: String,
        input: Option<Value>,
        options: Option<InvokeOptions>,
    ) -> napi::Result<Either<InvocationResult, PromiseRaw<'env, InvocationResult>>> {
        let (category, input, options) = call(&category, input, options)?;
        let d = self.d.clone();
        let inline = !d.invoke_may_block(&tool, &category, &options);
        let mut call = Box::pin(async move {
            d.invoke(&tool, category, input, options)
                .await
                .map(InvocationResult::from)
                .js()
        });
        if inline {
            // A future may be polled first here and then by the runtime's
            // task, which polls it again with its own waker.
            let first = napi::bindgen_prelude::within_runtime_if_available(|| {
                call.as_mut()
                    .poll(&mut Context::from_waker(std::task::Waker::noop()))
            });
            if let Poll::Ready(result) = first {
                return result.map(Either::A);
            }
        }
        env.spawn_future(call).map(Either::B)
    }

    /// The agent a call would go to now, without calling it (null if none).
    #[napi]
    pub async fn select_agent(
        &self,
        category: String,
        options: Option<InvokeOptions>,
    ) -> napi::Result<Option<String>> {
        let category = self::category(&category)?;
        let options = routing(options)?;
        let d = self.d.clone();
        blocking(move || d.select_agent(&category, &options)).await
    }

    /// For the bench: a Rust in-process agent that echoes its input.
    #[napi]
    pub async fn register_rust_echo_agent(
        &self,
        agent_id: String,
        tools: Vec<String>,
    ) -> napi::Result<()> {
        let tools = tools
            .iter()
            .map(|t| category(t))
            .collect::<napi::Result<Vec<_>>>()?;
        let d = self.d.clone();
        blocking(move || {
            d.register_local_agent(&agent_id, tools, |_tool, input| async move {
                Ok::<_, switchboard::routing::ToolError>(input)
            })
        })
        .await
    }

    /// For the bench: `n` invokes made from Rust one after another, on the
    /// runtime JS calls use. Returns the seconds taken.
    #[napi]
    pub async fn bench_rust_invokes(
        &self,
        tool: String,
        category: String,
        n: u32,
    ) -> napi::Result<f64> {
        let category = self::category(&category)?;
        let d = self.d.clone();
        let started = std::time::Instant::now();
        for i in 0..n {
            d.invoke(
                &tool,
                category.clone(),
                json!({ "i": i }),
                RoutingOptions::new(),
            )
            .await
            .js()?;
        }
        Ok(started.elapsed().as_secs_f64())
    }
}
