//! Per-attempt layers around one agent call, applied in this order:
//!
//! 1. `timeout`: the call runs under the agent's timeout;
//! 2. `backpressure`: a `Retry-After` answer pauses the agent;
//! 3. `load`: latency and the peak-EWMA estimate `Fastest` reads;
//! 4. `passive_health`: the result feeds the agent's outlier state.
//!
//! Each layer is one small function over the call's outcome, so each can be
//! read (and changed) alone; [`attempt`] composes them.

mod backpressure;
mod load;
mod passive_health;
mod timeout;

use super::{Callers, Failure, WireRequest};
use crate::routing::agent::Agent;
use crate::routing::{AgentRegistry, HealthCheckConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one attempt ended, and how long it took.
pub(crate) type AttemptResult = (Result<serde_json::Value, Failure>, Duration);

/// Calls `agent` once through every layer.
pub(crate) async fn attempt(
    callers: &Callers,
    registry: &AgentRegistry,
    health: Option<&HealthCheckConfig>,
    agent: &Arc<Agent>,
    request: WireRequest<'_>,
) -> AttemptResult {
    let started = Instant::now();
    let outcome = timeout::within(agent.timeout, callers.call(agent, request)).await;
    let latency = started.elapsed();
    backpressure::observe(agent, &outcome);
    load::record(agent, &outcome, latency);
    if let Some(config) = health {
        passive_health::observe(registry, config, agent, &outcome);
    }
    (outcome, latency)
}
