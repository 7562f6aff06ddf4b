//! The back-pressure layer: a 429/503 with `Retry-After` pauses the agent,
//! so no call is routed to it until the pause has passed.

use crate::routing::agent::Agent;
use crate::transport::Failure;

pub(super) fn observe(agent: &Agent, outcome: &Result<serde_json::Value, Failure>) {
    if let Err(Failure::Overloaded { retry_after, .. }) = outcome {
        agent.health.pause_for(*retry_after);
    }
}
