//! `switchboard scan`: every record under a key prefix, through the read
//! hooks of the local database, or page by page from a server's `GET /v1/scan`;
//! with `--agent`, `--status`, `--since` or `--until`, only the dispatch
//! records those select. With `--cluster` (and `--server`), every live
//! node's records, merged by the node asked (`GET /v1/scan?cluster=true`).

use super::{Client, StoreArgs};
use clap::Args;
use switchboard::namespace::{redact_agent_json, DispatchRecord};
use switchboard::server::caused_by;
use switchboard::{AuditFilter, Error, PolicyContext, DECISION_LOG};

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
    /// A TRACE column in the table of calls: each call's W3C trace id, to
    /// find the call in a tracing backend (see docs/observability.md).
    #[arg(long)]
    pub trace_ids: bool,
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
    let calls = args.prefix.starts_with("tools/");
    // A call every candidate refused leaves no dispatch record, only
    // decisions: the table of calls shows them so that a prefix scan audits
    // refusals too. `--status` selects by a dispatch record's status, which
    // a refusal does not have; `--json` stays the records under the prefix.
    let denials = calls && !args.json && filter.status.is_none();
    let mut printer = Printer::new(args.json, calls, args.trace_ids);
    let mut left = limit;
    match args.store.client()? {
        Some(client) => {
            let mut print = |node: Option<&str>, key: &str, value: &serde_json::Value| {
                printer.record(node, key, value, None)
            };
            let query = Query {
                prefix: &args.prefix,
                filter: &filter,
                caller: args.caller.as_deref(),
                cluster: args.cluster,
            };
            remote(&client, &query, &mut left, &mut print).await?;
            if denials {
                let log = Query {
                    prefix: DECISION_LOG,
                    filter: &AuditFilter::default(),
                    ..query
                };
                let mut print = |node: Option<&str>, _key: &str, value: &serde_json::Value| {
                    if !refusal_under(value, &args.prefix, &filter) {
                        return Ok(false);
                    }
                    printer.denial(node, value).map(|()| true)
                };
                remote(&client, &log, &mut left, &mut print).await?;
            }
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
            let read = |kv: switchboard::Result<(String, Vec<u8>)>| {
                let (key, bytes) = kv?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
                let wanted = args.caller.as_deref().is_none_or(|c| caused_by(&value, c));
                Ok::<_, Error>((key, text, value, wanted))
            };
            let records = db.scan_from(&args.prefix).as_reader(&ctx).audit(&filter);
            for kv in records.iter() {
                if left == 0 {
                    break;
                }
                let (key, text, mut value, wanted) = read(kv)?;
                if !wanted {
                    continue;
                }
                // Secrets are write-only here too: shown redacted, not as stored.
                let stored = value.clone();
                redact_agent_json(&key, &mut value);
                let raw = (value == stored).then_some(text.as_str());
                if printer.record(None, &key, &value, raw)? {
                    left -= 1;
                }
            }
            if denials {
                for kv in db.scan_from(DECISION_LOG).as_reader(&ctx).iter() {
                    if left == 0 {
                        break;
                    }
                    let (_, _, value, wanted) = read(kv)?;
                    if wanted && refusal_under(&value, &args.prefix, &filter) {
                        printer.denial(None, &value)?;
                        left -= 1;
                    }
                }
            }
        }
    }
    printer.finish()
}

/// Whether a decision-log entry is a refusal of a write under `prefix`
/// that `filter`'s agent and time bounds select.
fn refusal_under(decision: &serde_json::Value, prefix: &str, filter: &AuditFilter) -> bool {
    let key = decision["key"].as_str().unwrap_or_default();
    let at = decision["at_ms"].as_u64().unwrap_or_default();
    decision["decision"] == "deny"
        && decision["op"] == "put"
        && key.starts_with(prefix)
        && filter
            .agent
            .as_deref()
            .is_none_or(|a| decision["context"]["agent_id"] == a)
        && filter.since_ms.is_none_or(|t| at >= t)
        && filter.until_ms.is_none_or(|t| at <= t)
}

/// What one paged `GET /v1/scan` asks for.
#[derive(Clone, Copy)]
struct Query<'a> {
    prefix: &'a str,
    filter: &'a AuditFilter,
    caller: Option<&'a str>,
    cluster: bool,
}

/// Offered one record of a page (the node it came from, if a cluster
/// scan, its key and value); says whether it took it.
type Take<'t> = dyn FnMut(Option<&str>, &str, &serde_json::Value) -> switchboard::Result<bool> + 't;

/// Pages through `GET /v1/scan` until `left` records were taken or the last
/// page.
async fn remote(
    client: &Client,
    query: &Query<'_>,
    left: &mut usize,
    take: &mut Take<'_>,
) -> switchboard::Result<()> {
    let Query {
        prefix,
        filter,
        caller,
        cluster,
    } = *query;
    let mut after: Option<String> = None;
    let mut missing = Vec::new();
    while *left > 0 {
        let mut url = client.url("v1/scan");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("prefix", prefix)
                .append_pair("limit", &(*left).min(PAGE).to_string());
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
            if *left == 0 {
                break;
            }
            let key = item["key"].as_str().unwrap_or_default();
            if take(item["node_id"].as_str(), key, &item["value"])? {
                *left -= 1;
            }
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

/// JSON lines, or a table: of calls (one row per dispatch record or
/// refusal) for `tools/` prefixes, else of keys and the start of each value.
/// The header comes with the first row, so an error is not printed under one.
struct Printer {
    json: bool,
    calls: bool,
    /// Whether the table of calls has a TRACE column.
    trace_ids: bool,
    header: bool,
    count: usize,
    denied: usize,
}

/// One row of the table of calls: a dispatch record or a refusal.
struct Row<'a> {
    at_ms: u64,
    status: &'a str,
    /// `category/tool`.
    tool: &'a str,
    agent: Option<&'a str>,
    caller: Option<&'a str>,
    latency_ms: Option<&'a str>,
    error: Option<&'a str>,
    trace_id: Option<&'a str>,
    /// The node that holds it, in a cluster-wide scan.
    node_id: Option<&'a str>,
}

/// Characters of a value the key table shows.
const SHOWN: usize = 100;

impl Printer {
    fn new(json: bool, calls: bool, trace_ids: bool) -> Printer {
        Printer {
            json,
            calls,
            trace_ids,
            header: false,
            count: 0,
            denied: 0,
        }
    }

    fn line(&mut self, line: std::fmt::Arguments) -> switchboard::Result<()> {
        if !self.json && !self.header {
            self.header = true;
            if self.calls {
                let trace = if self.trace_ids {
                    format!("{:<32}  ", "TRACE")
                } else {
                    String::new()
                };
                super::out(format_args!(
                    "{:<19}  {:<11} {:<28} {:<16} {:<16} {:>8}  {trace}ERROR",
                    "STARTED (UTC)", "STATUS", "TOOL", "AGENT", "CALLER", "ms"
                ))?;
            } else {
                super::out(format_args!("{:<64} VALUE", "KEY"))?;
            }
        }
        super::out(line)
    }

    /// One record; `raw` is the stored text when there is one (the key
    /// table shows it as stored rather than re-encoded). Always taken.
    fn record(
        &mut self,
        node_id: Option<&str>,
        key: &str,
        value: &serde_json::Value,
        raw: Option<&str>,
    ) -> switchboard::Result<bool> {
        self.count += 1;
        if self.json {
            self.line(format_args!(
                "{}",
                match node_id {
                    Some(node) => serde_json::json!({"node_id": node, "key": key, "value": value}),
                    None => serde_json::json!({"key": key, "value": value}),
                }
            ))?;
            return Ok(true);
        }
        if self.calls {
            if let Ok(r) = serde_json::from_value::<DispatchRecord>(value.clone()) {
                let status = serde_json::to_value(r.status).map_err(Error::storage)?;
                let latency = r.latency_ms.map(|ms| format!("{ms:.1}"));
                self.call_row(&Row {
                    at_ms: r.started_at_ms,
                    status: status.as_str().unwrap_or_default(),
                    tool: &format!("{}/{}", r.category.as_str(), r.tool),
                    agent: r.agent_id.as_deref(),
                    caller: r.caller.as_deref(),
                    latency_ms: latency.as_deref(),
                    error: r.error.as_deref(),
                    trace_id: r.trace_id.as_deref(),
                    node_id,
                })?;
                return Ok(true);
            }
        }
        let text = match (raw, value) {
            (Some(raw), _) => raw.to_string(),
            (None, serde_json::Value::String(s)) => s.clone(),
            (None, other) => other.to_string(),
        };
        let shown: String = text.chars().take(SHOWN).collect();
        let ellipsis = if text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        self.line(format_args!("{key:<64} {shown}{ellipsis}"))?;
        Ok(true)
    }

    /// A refused dispatch write from the decision log, as a row of the calls table.
    fn denial(
        &mut self,
        node_id: Option<&str>,
        decision: &serde_json::Value,
    ) -> switchboard::Result<()> {
        self.count += 1;
        self.denied += 1;
        let ctx = &decision["context"];
        // tools/{category}/{tool}/{id}
        let key = decision["key"].as_str().unwrap_or_default();
        let tool = key
            .strip_prefix("tools/")
            .and_then(|rest| rest.rsplit_once('/'))
            .map_or(key, |(tool, _id)| tool);
        self.call_row(&Row {
            at_ms: decision["at_ms"].as_u64().unwrap_or_default(),
            status: "denied",
            tool,
            agent: ctx["agent_id"].as_str(),
            caller: ctx["caller"].as_str(),
            latency_ms: None,
            error: decision["reason"].as_str(),
            trace_id: None,
            node_id,
        })
    }

    fn call_row(&mut self, r: &Row) -> switchboard::Result<()> {
        let node = r
            .node_id
            .map(|n| format!(" (node {n})"))
            .unwrap_or_default();
        let trace = if self.trace_ids {
            format!("{:<32}  ", r.trace_id.unwrap_or("-"))
        } else {
            String::new()
        };
        let row = format!(
            "{}  {:<11} {:<28} {:<16} {:<16} {:>8}  {trace}{}{node}",
            super::utc(r.at_ms),
            r.status,
            r.tool,
            r.agent.unwrap_or("-"),
            r.caller.unwrap_or("-"),
            r.latency_ms.unwrap_or("-"),
            r.error.unwrap_or("").replace('\n', " "),
        );
        self.line(format_args!("{}", row.trim_end()))
    }

    fn finish(mut self) -> switchboard::Result<()> {
        if self.json {
            return Ok(());
        }
        let mut summary = super::count(self.count - self.denied, "record");
        if self.denied > 0 {
            summary = format!(
                "{summary} and {} from the decision log ({DECISION_LOG})",
                super::count(self.denied, "refusal")
            );
        }
        let summary = format!("({summary})");
        self.line(format_args!("{summary}"))
    }
}
