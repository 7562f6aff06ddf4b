//! The passive-health layer: what a call's outcome says about the agent,
//! handed to its outlier state.

use crate::routing::agent::Agent;
use crate::routing::outlier::{observe_invocation, Observation};
use crate::routing::{AgentRegistry, HealthCheckConfig};
use crate::transport::Failure;
use std::sync::Arc;

/// What an outcome says about the agent's health.
pub(super) fn classify(outcome: &Result<serde_json::Value, Failure>) -> Observation {
    match outcome {
        Ok(_) | Err(Failure::Tool(_)) => Observation::Answered,
        // Back-pressure is not a failure: the agent is paused, not ejected.
        Err(Failure::Overloaded { .. }) => Observation::BackPressure,
        Err(Failure::Agent(_) | Failure::Timeout) => Observation::Failed,
    }
}

pub(super) fn observe(
    registry: &AgentRegistry,
    config: &HealthCheckConfig,
    agent: &Arc<Agent>,
    outcome: &Result<serde_json::Value, Failure>,
) {
    observe_invocation(registry, config, agent, classify(outcome));
}
