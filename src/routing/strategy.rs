//! The strategies: the public [`RoutingStrategy`] names and the pure
//! functions that pick one agent from a priority tier (round robin and
//! priority turns, random, fastest by peak-EWMA × load). Least-loaded picks
//! come from the load index (`load_index.rs`), which keeps its order as
//! claims and releases happen.

use super::agent::Agent;
use std::sync::Arc;

pub use crate::namespace::RoutingStrategy;

/// Pools at or below this size are searched exhaustively by `Fastest`;
/// larger ones compare two random members (power of two choices).
const FASTEST_EXACT_LIMIT: usize = 16;

/// The first usable agent at or after `start` (wrapping).
pub(crate) fn probe(
    agents: &[Arc<Agent>],
    start: usize,
    usable: impl Fn(&Arc<Agent>) -> bool,
) -> Option<Arc<Agent>> {
    let n = agents.len();
    (0..n)
        .map(|i| &agents[(start + i) % n])
        .find(|a| usable(a))
        .cloned()
}

/// Expected cost of sending one more call: latency estimate × (in flight + 1).
/// Unmeasured agents cost nothing, so they are tried first.
fn cost(agent: &Agent) -> f64 {
    agent
        .stats
        .latency_estimate()
        .map_or(0.0, |latency| latency * (agent.active() + 1) as f64)
}

pub(crate) fn fastest(
    agents: &[Arc<Agent>],
    usable: impl Fn(&Arc<Agent>) -> bool,
) -> Option<Arc<Agent>> {
    let cheaper = |a: Arc<Agent>, b: Arc<Agent>| if cost(&b) < cost(&a) { b } else { a };
    if agents.len() <= FASTEST_EXACT_LIMIT {
        return agents.iter().filter(|a| usable(a)).cloned().reduce(cheaper);
    }
    let n = agents.len();
    let first = probe(agents, fastrand::usize(..n), &usable)?;
    let second = probe(agents, fastrand::usize(..n), |a| {
        usable(a) && a.uid != first.uid
    });
    Some(match second {
        Some(second) => cheaper(first, second),
        None => first,
    })
}
