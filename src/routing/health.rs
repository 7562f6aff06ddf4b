//! Health: active probes of HTTP agents and passive marking from consecutive
//! failed invocations. Unhealthy agents leave the routing pools until they
//! recover; every change is persisted in the agent's record and logged.

use super::agent::Agent;
use super::registry::AgentRegistry;
use crate::namespace::now_ms;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How agents are checked. Builder style:
/// `HealthCheckConfig::new().interval(Duration::from_secs(30)).unhealthy_threshold(3)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

impl HealthCheckConfig {
    /// Defaults: probe every 30 s with a 5 s timeout; 3 failures in a row mark
    /// an agent unhealthy, 2 successful probes in a row healthy again.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time between probe rounds (at least 1 ms). Local agents marked unhealthy
    /// are let back in for a trial call after one interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one probe may take (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Consecutive failures (probes or retryable invocation failures) that
    /// mark an agent unhealthy (at least 1).
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n.max(1);
        self
    }

    /// Consecutive successful probes that mark an unhealthy agent healthy (at least 1).
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n.max(1);
        self
    }
}

/// Passive marking: called after every invocation that reached the agent.
pub(crate) fn observe_invocation(
    registry: &AgentRegistry,
    config: &HealthCheckConfig,
    agent: &Arc<Agent>,
    agent_failed: bool,
) {
    if !agent_failed {
        agent
            .health
            .consecutive_failures
            .store(0, Ordering::Release);
        if !agent.is_healthy() {
            registry.set_health(agent, true, "an invocation succeeded");
        }
        return;
    }
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

fn observe_probe(
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

/// One round: probe every HTTP agent (bounded concurrency), and give local
/// agents that have been unhealthy for an interval a trial.
pub(crate) async fn check_round(
    registry: &Arc<AgentRegistry>,
    client: &reqwest::Client,
    config: &HealthCheckConfig,
) {
    const PARALLEL_PROBES: usize = 64;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PROBES));
    let mut probes = tokio::task::JoinSet::new();
    for agent in registry.live_agents() {
        match agent.health_url.clone() {
            Some(url) => {
                let (registry, client, config, semaphore) = (
                    registry.clone(),
                    client.clone(),
                    config.clone(),
                    semaphore.clone(),
                );
                probes.spawn(async move {
                    let Ok(_permit) = semaphore.acquire().await else {
                        return;
                    };
                    let ok = crate::transport::probe(&client, &url, config.timeout).await;
                    observe_probe(&registry, &config, &agent, ok);
                });
            }
            None => {
                let since = agent.health.unhealthy_since_ms.load(Ordering::Acquire);
                if !agent.is_healthy()
                    && now_ms().saturating_sub(since) >= config.interval.as_millis() as u64
                {
                    // Half-open: one more failure marks it unhealthy again.
                    agent.health.consecutive_failures.store(
                        config.unhealthy_threshold.saturating_sub(1),
                        Ordering::Release,
                    );
                    registry.set_health(&agent, true, "trial after one health-check interval");
                }
            }
        }
    }
    while probes.join_next().await.is_some() {}
}

/// Runs rounds until the registry is dropped.
pub(crate) async fn run(
    registry: Weak<AgentRegistry>,
    client: reqwest::Client,
    config: HealthCheckConfig,
) {
    // The first round comes one interval after enabling, not at once: newly
    // registered agents start healthy and get that long before the first probe.
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + config.interval,
        config.interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        check_round(&registry, &client, &config).await;
    }
}
