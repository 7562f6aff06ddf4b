//! `switchboard scan`: every record under a key prefix, through the read
//! hooks of the local database, or page by page from a server's `GET /v1/scan`;
//! with `--agent`, `--status`, `--since` or `--until`, only the dispatch
//! records those select. With `--cluster` (and `--server`), every live
//! node's records, merged by the node asked (`GET /v1/scan?cluster=true`).

use super::{Client, StoreArgs};
use clap::Args;
use switchboard::namespace::redact_agent_json;
use switchboard::server::caused_by;
use switchboard::{AuditFilter, Error, PolicyContext};

#[derive(Args)]
pub struct ScanArgs {
    /// Key prefix, e.g. tools/ or tools/code/code_exec/.
    pub prefix: String,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only dispatch records of calls this agent served.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only dispatch records in this status (in_flight, succeeded, failed,
    /// interrupted, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only calls started since then: an age such as 90s, 30m, 1h or 7d, or
    /// a time in milliseconds since the Unix epoch.
    #[arg(long)]
    pub since: Option<String>,
    /// Only calls started until then (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only what this caller caused (`token:ID`, `jwt:SUB`, `static-admin`):
    /// its dispatch records, registrations and policy decisions.
    #[arg(long)]
    pub caller: Option<String>,
    /// Every live node's records of the cluster the --server node belongs
    /// to, merged in key order (each JSON line then names its node_id).
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The largest page the server hands out (`GET /v1/scan`'s `limit`).
const PAGE: usize = 1000;

pub async fn run(args: ScanArgs) -> switchboard::Result<()> {
    let limit = args.limit.unwrap_or(usize::MAX);
    let filter = AuditFilter {
        agent: args.agent.clone(),
        status: args.status.as_deref().map(str::parse).transpose()?,
        since_ms: args
            .since
            .as_deref()
            .map(|t| parse_time("--since", t))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|t| parse_time("--until", t))
            .transpose()?,
    };
    let mut printer = Printer::start(args.json)?;
    match args.store.client()? {
        Some(client) => {
            remote(
                &client,
                &args.prefix,
                &filter,
                args.caller.as_deref(),
                args.cluster,
                limit,
                &mut printer,
            )
            .await?
        }
        None if args.cluster => {
            return Err(Error::invalid(
                "--cluster asks a running node for the whole cluster's records: add --server URL \
                 (or set SWITCHBOARD_URL)",
            ))
        }
        None => {
            let db = args.store.open()?;
            let ctx = PolicyContext::new()
                .with("source", "cli")
                .with("action", "scan");
            let mut left = limit;
            for kv in db
                .scan_from(&args.prefix)
                .as_reader(&ctx)
                .audit(&filter)
                .iter()
            {
                if left == 0 {
                    break;
                }
                let (key, bytes) = kv?;
                let text = String::from_utf8_lossy(&bytes);
                let mut value: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
                if let Some(caller) = &args.caller {
                    if !caused_by(&value, caller) {
                        continue;
                    }
                }
                // Secrets are write-only here too: shown redacted, not as stored.
                let shown = value.clone();
                redact_agent_json(&key, &mut value);
                let raw = (value == shown).then_some(text.as_ref());
                printer.record(None, &key, &value, raw)?;
                left -= 1;
            }
        }
    }
    printer.finish()
}

/// Pages through `GET /v1/scan` until `limit` records or the last page.
async fn remote(
    client: &Client,
    prefix: &str,
    filter: &AuditFilter,
    caller: Option<&str>,
    cluster: bool,
    limit: usize,
    printer: &mut Printer,
) -> switchboard::Result<()> {
    let mut after: Option<String> = None;
    let mut left = limit;
    let mut missing = Vec::new();
    while left > 0 {
        let mut url = client.url("v1/scan");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("prefix", prefix)
                .append_pair("limit", &left.min(PAGE).to_string());
            if let Some(after) = &after {
                q.append_pair("after", after);
            }
            if let Some(agent) = &filter.agent {
                q.append_pair("agent", agent);
            }
            if let Some(status) = filter.status {
                q.append_pair("status", status.as_str());
            }
            if let Some(ms) = filter.since_ms {
                q.append_pair("since_ms", &ms.to_string());
            }
            if let Some(ms) = filter.until_ms {
                q.append_pair("until_ms", &ms.to_string());
            }
            if let Some(caller) = caller {
                q.append_pair("caller", caller);
            }
            if cluster {
                q.append_pair("cluster", "true");
            }
        }
        let page = client.send(reqwest::Method::GET, url, None).await?;
        let items = page["items"]
            .as_array()
            .ok_or_else(|| Error::invalid("the server's scan page has no items"))?;
        for item in items {
            let key = item["key"].as_str().unwrap_or_default();
            printer.record(item["node_id"].as_str(), key, &item["value"], None)?;
            left -= 1;
        }
        // A cluster page says which nodes it could not read; a later page
        // asks them again, so what counts is the last page's list.
        missing = page["missing_nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A page may come back short, even empty, with a cursor: the server
        // stops early after passing over many hidden or filtered records.
        match page["next_after"].as_str() {
            Some(next) if after.as_deref() != Some(next) => after = Some(next.to_string()),
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = missing
        .iter()
        .map(|m| {
            format!(
                "{} ({})",
                m["node_id"].as_str().unwrap_or("?"),
                m["error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Err(Error::Unavailable(format!(
        "the cluster scan is incomplete: these nodes did not answer: {}. Check that every node \
         is running, reachable at the url it published, and given the same cluster secret \
         (secret_env or secret_file under [cluster], or SWITCHBOARD_CLUSTER_SECRET)",
        missing.join("; ")
    )))
}

/// `--since`/`--until`: an age (`90s`, `30m`, `1h`, `7d`) before now, or
/// milliseconds since the Unix epoch.
fn parse_time(flag: &str, text: &str) -> switchboard::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let age_ms = [
        ('s', 1_000u64),
        ('m', 60_000),
        ('h', 3_600_000),
        ('d', 86_400_000),
    ]
    .into_iter()
    .find_map(|(unit, ms)| {
        let n = text.strip_suffix(unit)?.parse::<u64>().ok()?;
        Some(n.saturating_mul(ms))
    });
    match age_ms {
        Some(age) => Ok(switchboard::namespace::now_ms().saturating_sub(age)),
        _ => Err(Error::invalid(format!(
            "{flag} {text:?}: give an age such as 90s, 30m, 1h or 7d, or milliseconds since the Unix epoch"
        ))),
    }
}

/// A table (key, the value's first 100 characters, a count) or JSON lines.
struct Printer {
    json: bool,
    count: usize,
}

impl Printer {
    fn start(json: bool) -> switchboard::Result<Printer> {
        if !json {
            super::out(format_args!("{:<64} VALUE", "KEY"))?;
        }
        Ok(Printer { json, count: 0 })
    }

    /// One record; `raw` is the stored text when there is one (the table shows
    /// it as stored rather than re-encoded).
    fn record(
        &mut self,
        node_id: Option<&str>,
        key: &str,
        value: &serde_json::Value,
        raw: Option<&str>,
    ) -> switchboard::Result<()> {
        self.count += 1;
        if self.json {
            return super::out(match node_id {
                Some(node) => serde_json::json!({"node_id": node, "key": key, "value": value}),
                None => serde_json::json!({"key": key, "value": value}),
            });
        }
        let text = match (raw, value) {
            (Some(raw), _) => raw.to_string(),
            (None, serde_json::Value::String(s)) => s.clone(),
            (None, other) => other.to_string(),
        };
        let shown: String = text.chars().take(100).collect();
        let ellipsis = if text.chars().count() > 100 {
            "…"
        } else {
            ""
        };
        super::out(format_args!("{key:<64} {shown}{ellipsis}"))
    }

    fn finish(self) -> switchboard::Result<()> {
        if self.json {
            return Ok(());
        }
        super::out(format_args!("({})", super::count(self.count, "record")))
    }
}
