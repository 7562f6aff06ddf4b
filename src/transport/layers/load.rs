//! The load layer: counts the finished call and teaches the agent's
//! peak-EWMA latency estimate (what `Fastest` reads).

use crate::routing::agent::Agent;
use crate::transport::Failure;
use std::time::Duration;

pub(super) fn record(
    agent: &Agent,
    outcome: &Result<serde_json::Value, Failure>,
    latency: Duration,
) {
    // Back-pressure pauses the agent; it says nothing about how fast it is.
    let agent_failed = matches!(outcome, Err(Failure::Agent(_) | Failure::Timeout));
    // A failure teaches the latency estimate as much as a timeout would, so
    // an agent that fails fast does not look fast.
    let cost = if agent_failed {
        latency.max(agent.timeout)
    } else {
        latency
    };
    agent.stats.record(outcome.is_ok(), latency, cost);
}
