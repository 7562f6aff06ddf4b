//! `switchboard metrics`: per-agent metrics, from a server's `GET /v1/metrics`
//! or, on the local database, those of this process (every registered agent,
//! counts from zero: the counters live in the serving process).

use super::StoreArgs;
use clap::Args;
use std::collections::BTreeMap;
use switchboard::{AgentMetrics, Error};

#[derive(Args)]
pub struct MetricsArgs {
    /// One JSON object (agent id → metrics) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: MetricsArgs) -> switchboard::Result<()> {
    let metrics: BTreeMap<String, AgentMetrics> = match args.store.client()? {
        Some(client) => serde_json::from_value(client.get("v1/metrics").await?)
            .map_err(|e| Error::internal("the server's metrics are not readable", e))?,
        None => args.store.dispatcher()?.get_metrics().into_iter().collect(),
    };
    if args.json {
        return super::out(serde_json::to_string(&metrics).map_err(Error::storage)?);
    }
    super::out(format_args!(
        "{:<24} {:>8} {:>8} {:>8} {:>7} {:>10} {:>10} HEALTHY",
        "AGENT", "CALLS", "OK", "FAILED", "ACTIVE", "P50_MS", "P99_MS"
    ))?;
    for (id, m) in &metrics {
        super::out(format_args!(
            "{:<24} {:>8} {:>8} {:>8} {:>7} {:>10.1} {:>10.1} {}",
            id,
            m.total,
            m.successes,
            m.failures,
            m.active_tasks,
            m.p50_latency_ms,
            m.p99_latency_ms,
            if m.healthy { "yes" } else { "no" },
        ))?;
    }
    if metrics.is_empty() {
        super::out("(no agents registered)")?;
    }
    Ok(())
}
