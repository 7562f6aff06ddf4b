//! `/metrics` in the Prometheus text exposition format.

use crate::routing::AgentMetrics;
use std::collections::HashMap;
use std::fmt::Write;

/// Renders per-agent metrics. Agent ids are `[A-Za-z0-9._:-]`, so labels need
/// no escaping.
pub(crate) fn render(metrics: &HashMap<String, AgentMetrics>) -> String {
    let mut agents: Vec<(&String, &AgentMetrics)> = metrics.iter().collect();
    agents.sort_by_key(|(id, _)| *id);
    let mut out = String::new();
    let mut family = |name: &str,
                      kind: &str,
                      help: &str,
                      value: &dyn Fn(&AgentMetrics) -> Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, m) in &agents {
            for (extra, v) in value(m) {
                let _ = writeln!(out, "{name}{{agent=\"{id}\"{extra}}} {v}");
            }
        }
    };
    family(
        "switchboard_agent_invocations_total",
        "counter",
        "Finished invocations per agent, by outcome.",
        &|m| {
            vec![
                (",outcome=\"success\"".into(), m.successes as f64),
                (",outcome=\"failure\"".into(), m.failures as f64),
            ]
        },
    );
    family(
        "switchboard_agent_active_tasks",
        "gauge",
        "Invocations in flight.",
        &|m| vec![(String::new(), m.active_tasks as f64)],
    );
    family(
        "switchboard_agent_healthy",
        "gauge",
        "1 if the agent is routed to, 0 if excluded as unhealthy.",
        &|m| vec![(String::new(), if m.healthy { 1.0 } else { 0.0 })],
    );
    family(
        "switchboard_agent_latency_ms",
        "gauge",
        "Invocation latency in milliseconds: quantiles over the agent's lifetime.",
        &|m| {
            vec![
                (",quantile=\"0.5\"".into(), m.p50_latency_ms),
                (",quantile=\"0.99\"".into(), m.p99_latency_ms),
            ]
        },
    );
    family(
        "switchboard_agent_latency_avg_ms",
        "gauge",
        "Mean invocation latency in milliseconds.",
        &|m| vec![(String::new(), m.avg_latency_ms)],
    );
    out
}
