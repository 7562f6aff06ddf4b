//! `/metrics` in the OpenMetrics text format, encoded by `prometheus-client`
//! from the counters the dispatcher already keeps (nothing is recorded twice):
//! per-agent invocations by outcome, tasks in flight, health, a latency
//! histogram (`_bucket`, aggregatable across replicas), the dispatcher's
//! denials, rate-limit refusals and failovers, the MCP operation-duration
//! histograms of the OpenTelemetry MCP convention (`mcp.server.operation.duration`
//! as `mcp_server_operation_duration_seconds`, and the client's), and
//! RocksDB write stalls.

use crate::dispatch::ToolDispatcher;
use crate::routing::metrics::{OperationLabels, OperationSeries};
use crate::routing::AgentMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Histogram bounds in seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct AgentRow {
    id: String,
    metrics: AgentMetrics,
    buckets: Vec<(f64, u64)>,
    sum_secs: f64,
    count: u64,
}

/// One scrape's worth of values.
#[derive(Debug)]
struct Scrape {
    agents: Vec<AgentRow>,
    /// `rocksdb.is-write-stopped`, `rocksdb.actual-delayed-write-rate`.
    write_stopped: Option<u64>,
    delayed_write_rate: Option<u64>,
    /// Policy denials, rate-limit refusals and failovers of the dispatcher.
    dispatch: [u64; 3],
    /// MCP operations served, and sent to MCP agents.
    mcp_server: Vec<OperationSeries>,
    mcp_client: Vec<OperationSeries>,
}

/// The labels of an MCP operation series: the convention's attribute names
/// with `.` as `_`.
fn operation_labels(labels: &OperationLabels) -> Vec<(String, String)> {
    let mut out = vec![("mcp_method_name".to_string(), labels.method.to_string())];
    if !labels.target.is_empty() {
        let key = match labels.method {
            "prompts/get" => "gen_ai_prompt_name",
            _ => "gen_ai_tool_name",
        };
        out.push((key.into(), labels.target.clone()));
    }
    if labels.method == "tools/call" {
        out.push(("gen_ai_operation_name".into(), "execute_tool".into()));
    }
    if let Some(error) = labels.error_type {
        out.push(("error_type".into(), error.into()));
    }
    out
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agent = |id: &str| vec![("agent".to_string(), id.to_string())];
        {
            let mut family = encoder.encode_descriptor(
                "switchboard_agent_invocations",
                "Finished invocations per agent, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for a in &self.agents {
                for (outcome, n) in [
                    ("success", a.metrics.successes),
                    ("failure", a.metrics.failures),
                ] {
                    let mut labels = agent(&a.id);
                    labels.push(("outcome".into(), outcome.into()));
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut gauge = |name: &str, help: &str, value: &dyn Fn(&AgentMetrics) -> i64| {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for a in &self.agents {
                ConstGauge::new(value(&a.metrics)).encode(family.encode_family(&agent(&a.id))?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge(
            "switchboard_agent_active_tasks",
            "Invocations in flight.",
            &|m| m.active_tasks as i64,
        )?;
        gauge(
            "switchboard_agent_healthy",
            "1 if the agent is routed to, 0 if excluded as unhealthy.",
            &|m| i64::from(m.healthy),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "switchboard_agent_latency_seconds",
                "Invocation latency per agent.",
                None,
                MetricType::Histogram,
            )?;
            for a in &self.agents {
                family
                    .encode_family(&agent(&a.id))?
                    .encode_histogram::<Vec<(String, String)>>(
                        a.sum_secs, a.count, &a.buckets, None,
                    )?;
            }
        }
        for (name, help, value) in [
            (
                "switchboard_dispatch_policy_denials",
                "Candidate agents a policy refused during dispatch.",
                self.dispatch[0],
            ),
            (
                "switchboard_dispatch_rate_limited",
                "Candidate agents a rate limit refused during dispatch.",
                self.dispatch[1],
            ),
            (
                "switchboard_dispatch_failovers",
                "Retryable agent failures after which another agent could be tried.",
                self.dispatch[2],
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        for (name, help, rows) in [
            (
                "mcp_server_operation_duration",
                "MCP request duration as observed on the receiver (/mcp and stdio), from the time it was received until the result is sent.",
                &self.mcp_server,
            ),
            (
                "mcp_client_operation_duration",
                "MCP request duration to an MCP agent as observed by Switchboard, from the time it was sent until the response is received.",
                &self.mcp_client,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                Some(&prometheus_client::registry::Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (labels, buckets, sum, count) in rows {
                family
                    .encode_family(&operation_labels(labels))?
                    .encode_histogram::<Vec<(String, String)>>(*sum, *count, buckets, None)?;
            }
        }
        for (name, help, value) in [
            (
                "switchboard_rocksdb_write_stopped",
                "1 while RocksDB has stopped writes (rocksdb.is-write-stopped).",
                self.write_stopped,
            ),
            (
                "switchboard_rocksdb_delayed_write_rate_bytes",
                "The write rate RocksDB is throttling to, 0 when not stalled (rocksdb.actual-delayed-write-rate).",
                self.delayed_write_rate,
            ),
        ] {
            if let Some(v) = value {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v as i64).encode(family)?;
            }
        }
        Ok(())
    }
}

/// Renders the dispatcher's metrics.
pub(crate) fn render(dispatcher: &ToolDispatcher) -> String {
    let metrics = dispatcher.get_metrics();
    let mut agents: Vec<AgentRow> = dispatcher
        .registry()
        .stats()
        .into_iter()
        .filter_map(|(id, _, stats)| {
            let m = metrics.get(&id)?.clone();
            let (buckets, sum_secs, count) = stats.latency_histogram(LATENCY_BOUNDS);
            Some(AgentRow {
                id,
                metrics: m,
                buckets,
                sum_secs,
                count,
            })
        })
        .collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let db = dispatcher.database();
    let property = |name| db.rocksdb_property(name).ok().flatten();
    let c = dispatcher.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let scrape = Scrape {
        dispatch: [
            load(&c.policy_denials),
            load(&c.rate_limited),
            load(&c.failovers),
        ],
        mcp_server: c.mcp_server.snapshot(),
        mcp_client: c.mcp_client.snapshot(),
        agents,
        write_stopped: property("rocksdb.is-write-stopped"),
        delayed_write_rate: property("rocksdb.actual-delayed-write-rate"),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    out
}
