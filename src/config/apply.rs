//! What the config builds at start: the policy chain's rate limits and
//! decision-log retention, the file's agents, the network and command
//! policies, the TLS trust, the database options and the health checks.

use super::Config;
use crate::dispatch::ToolDispatcher;
use crate::error::Result;
use crate::namespace::McpSpec;
use crate::policy::{CommandPolicy, DecisionLogRetention, NetworkPolicy, PolicyEngine};
use crate::routing::HealthCheckConfig;
use crate::storage::DatabaseOptions;
use crate::transport::TlsTrust;
use std::time::Duration;

impl Config {
    /// Adds `[[rate_limits]]` and sets `[decision_log]` retention on the
    /// database's policy chain (before anything is dispatched).
    pub fn apply_policy(&self, policy: &PolicyEngine) -> Result<()> {
        for limit in &self.rate_limits {
            let (op, scope) = limit.parsed()?;
            policy.add_rate_limit_per(
                op,
                limit.max,
                Duration::from_secs(limit.window_secs),
                scope,
            )?;
        }
        policy.set_decision_log_retention(DecisionLogRetention {
            max_entries: self.decision_log.max_entries,
            max_age: self.decision_log.max_age_secs.map(Duration::from_secs),
        });
        Ok(())
    }

    /// Registers (or replaces) the `[[agents]]` of the file, and sets what
    /// dispatch records keep (`[records]`).
    pub fn register_agents(&self, dispatcher: &ToolDispatcher) -> Result<()> {
        dispatcher.set_config(self.records.dispatcher_config())?;
        for agent in &self.agents {
            dispatcher.register_agent(&agent.id, agent.agent_config())?;
        }
        Ok(())
    }

    /// The programs this node may start (`[mcp] allow_commands`), and the
    /// exact commands of this file's own `[[agents]]`: the operator wrote
    /// those, so each may run exactly as written (not with other arguments,
    /// environment or directory, which only `allow_commands` permits).
    pub fn command_policy(&self) -> Result<CommandPolicy> {
        let mut policy = CommandPolicy::new(&self.mcp.allow_commands)?;
        for agent in &self.agents {
            if let Some(McpSpec::Server(server)) = &agent.mcp {
                if let Some(command) = &server.command {
                    // As registration will store it: relative paths made
                    // absolute against this process's directory.
                    let mut command = command.clone();
                    if let Ok(here) = std::env::current_dir() {
                        command.resolve_relative_paths(&here);
                    }
                    policy = policy.with_exact(command);
                }
            }
        }
        Ok(policy)
    }

    /// The `[network]` address policy.
    pub fn network_policy(&self) -> Result<NetworkPolicy> {
        NetworkPolicy::new(&self.network.allow, &self.network.deny)
    }

    /// The certificates trusted for `https://` agents (`[tls] ca_file`).
    pub fn tls_trust(&self) -> Result<TlsTrust> {
        match &self.tls.ca_file {
            Some(path) => TlsTrust::new().with_ca_file(path),
            None => Ok(TlsTrust::new()),
        }
    }

    /// The options the database is opened with (`[storage]`).
    pub fn database_options(&self) -> DatabaseOptions {
        DatabaseOptions::default()
            .durability(self.storage.durability)
            .max_value_bytes(self.storage.max_value_bytes)
            .block_cache_bytes(self.storage.block_cache_bytes)
    }

    /// The health-check settings (`[health]`), or `None` when disabled.
    pub fn health_checks(&self) -> Option<HealthCheckConfig> {
        let h = &self.health;
        h.enabled.then(|| {
            HealthCheckConfig::new()
                .interval(Duration::from_millis(h.interval_ms))
                .timeout(Duration::from_millis(h.timeout_ms))
                .unhealthy_threshold(h.unhealthy_threshold)
                .healthy_threshold(h.healthy_threshold)
                .panic_threshold(h.panic_threshold)
        })
    }
}
