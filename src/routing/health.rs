//! Health checking: one probe round, and the background task that runs
//! rounds every interval (its configuration is `health_config.rs`). The task is owned by a
//! [`HealthTask`] guard: dropping the guard (or replacing it) stops it.
//!
//! Routing does not know how an agent is reached: the probe itself is
//! injected as a [`Probe`] (the transport layer implements it over HTTP).
//! What a result means for the agent is decided in `outlier.rs`.

use super::agent::Agent;
use super::health_config::HealthCheckConfig;
use super::outlier::{observe_probe, readmit_for_trial};
use super::registry::AgentRegistry;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What one probe of a health URL found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeResult {
    Healthy,
    Unhealthy,
    /// The agent has no health endpoint there (HTTP 404 or 405): its health
    /// is judged passively, from its calls, like a local agent's.
    NoEndpoint,
}

/// Checks one agent's health within `timeout` (its health URL, or a
/// protocol probe for agents that have one).
pub(crate) trait Probe: Send + Sync + 'static {
    /// Whether `agent` can be probed at all (else its health is passive).
    fn can_probe(&self, agent: &Agent) -> bool;

    fn probe<'a>(
        &'a self,
        agent: &'a Arc<Agent>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;
}

/// One round: probe every agent that has a health URL (bounded
/// concurrency), and give agents without a probe (local agents, and HTTP
/// agents whose health URL answers 404/405) that have been unhealthy for an
/// interval a trial.
pub(crate) async fn check_round(
    registry: &Arc<AgentRegistry>,
    probe: &Arc<dyn Probe>,
    config: &HealthCheckConfig,
) {
    const PARALLEL_PROBES: usize = 64;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PROBES));
    let mut probes = tokio::task::JoinSet::new();
    for agent in registry.live_agents() {
        match probe.can_probe(&agent) {
            true => {
                let (registry, probe, config, semaphore) = (
                    registry.clone(),
                    probe.clone(),
                    config.clone(),
                    semaphore.clone(),
                );
                probes.spawn(async move {
                    let Ok(_permit) = semaphore.acquire().await else {
                        return;
                    };
                    match probe.probe(&agent, config.timeout).await {
                        ProbeResult::Healthy => observe_probe(&registry, &config, &agent, true),
                        ProbeResult::Unhealthy => {
                            observe_probe(&registry, &config, &agent, false)
                        }
                        ProbeResult::NoEndpoint => {
                            tracing::debug!(agent_id = %agent.id, "no health endpoint; passive health only");
                            readmit_for_trial(&registry, &config, &agent)
                        }
                    }
                });
            }
            false => readmit_for_trial(registry, config, &agent),
        }
    }
    while probes.join_next().await.is_some() {}
}

/// Runs rounds until the registry is dropped or `stop` fires.
async fn run(
    registry: Weak<AgentRegistry>,
    probe: Arc<dyn Probe>,
    config: HealthCheckConfig,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    // The first round comes one interval after enabling, not at once: newly
    // registered agents start healthy and get that long before the first probe.
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + config.interval,
        config.interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // The guard was dropped (the sender closes the channel).
            _ = stop.changed() => return,
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        tokio::select! {
            _ = check_round(&registry, &probe, &config) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The background health task; dropping it stops the task.
pub(crate) struct HealthTask {
    _stop: tokio::sync::watch::Sender<()>,
}

impl HealthTask {
    /// Starts rounds every `config.interval` on the current tokio runtime,
    /// or on a thread of its own outside one.
    pub(crate) fn start(
        registry: Weak<AgentRegistry>,
        probe: Arc<dyn Probe>,
        config: HealthCheckConfig,
    ) -> HealthTask {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let task = run(registry, probe, config, stopped);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("switchboard-health".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                            Ok(rt) => rt.block_on(task),
                            Err(e) => tracing::error!(error = %e, "health checks could not start a runtime"),
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "health checks could not start a thread");
                }
            }
        }
        HealthTask { _stop: stop }
    }
}
