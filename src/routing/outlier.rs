//! Outlier detection: what invocation results (passive) and probe results
//! (active) mean for one agent's counters, ejection (marked unhealthy, out of
//! the routing pools) and re-admission.
//!
//! The counters themselves are the agent's state (`Health` in
//! `agent.rs`); a verdict is applied through the registry's narrow
//! interface, [`AgentRegistry::set_health`], which updates the router and
//! the store. Nothing below this file imports it.

use super::agent::Agent;
use super::health_config::HealthCheckConfig;
use super::registry::AgentRegistry;
use crate::namespace::now_ms;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What one invocation that reached the agent says about its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observation {
    /// It answered (with output or with the tool's own error).
    Answered,
    /// It failed in a way that counts against it (5xx, timeout, bad answer).
    Failed,
    /// It asked to be left alone for a while (429/503 with `Retry-After`):
    /// back-pressure, neither a success nor a failure.
    BackPressure,
}

/// Passive marking: called after every invocation that reached the agent.
pub(crate) fn observe_invocation(
    registry: &AgentRegistry,
    config: &HealthCheckConfig,
    agent: &Arc<Agent>,
    seen: Observation,
) {
    match seen {
        Observation::BackPressure => {}
        Observation::Answered => {
            let health = &agent.health;
            health.consecutive_failures.store(0, Ordering::Release);
            // Hysteresis: an ejected agent (answering a call that was in
            // flight when it was ejected, or one panic routing sent it) needs
            // `healthy_threshold` answers in a row, like probes; one lucky
            // call is not enough.
            let successes = health.consecutive_successes.fetch_add(1, Ordering::AcqRel) + 1;
            if !agent.is_healthy() && successes >= config.healthy_threshold {
                registry.set_health(
                    agent,
                    true,
                    &format!("{successes} invocations in a row succeeded"),
                );
            }
        }
        Observation::Failed => {
            agent
                .health
                .consecutive_successes
                .store(0, Ordering::Release);
            let failures = agent
                .health
                .consecutive_failures
                .fetch_add(1, Ordering::AcqRel)
                + 1;
            if failures >= config.unhealthy_threshold && agent.is_healthy() {
                registry.set_health(
                    agent,
                    false,
                    &format!("{failures} invocations in a row failed"),
                );
            }
        }
    }
}

/// Active marking: called with each probe's result.
pub(crate) fn observe_probe(
    registry: &AgentRegistry,
    config: &HealthCheckConfig,
    agent: &Arc<Agent>,
    ok: bool,
) {
    let health = &agent.health;
    if ok {
        health.consecutive_failures.store(0, Ordering::Release);
        let successes = health.consecutive_successes.fetch_add(1, Ordering::AcqRel) + 1;
        if !agent.is_healthy() && successes >= config.healthy_threshold {
            registry.set_health(
                agent,
                true,
                &format!("{successes} probes in a row succeeded"),
            );
        }
    } else {
        health.consecutive_successes.store(0, Ordering::Release);
        let failures = health.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if agent.is_healthy() && failures >= config.unhealthy_threshold {
            registry.set_health(agent, false, &format!("{failures} probes in a row failed"));
        }
    }
}

/// A local agent has no probe: one ejected for an interval is let back for a
/// trial call (half-open), and one more failure ejects it again.
pub(crate) fn readmit_for_trial(
    registry: &AgentRegistry,
    config: &HealthCheckConfig,
    agent: &Arc<Agent>,
) {
    let since = agent.health.unhealthy_since_ms.load(Ordering::Acquire);
    if !agent.is_healthy() && now_ms().saturating_sub(since) >= config.interval.as_millis() as u64 {
        agent.health.consecutive_failures.store(
            config.unhealthy_threshold.saturating_sub(1),
            Ordering::Release,
        );
        registry.set_health(agent, true, "trial after one health-check interval");
    }
}
