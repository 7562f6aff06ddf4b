//! `switchboard demo`: a guided tour on the embedded database. It starts HTTP
//! agents on 127.0.0.1 (each on its own runtime, so "killing" one really
//! closes its sockets) and in-process agents, then routes a visible mix of
//! calls through every strategy (on agents of equal priority, then the
//! priority tiers on their own), a sticky session, a policy denial and a
//! failover, an MCP server as an agent called by an MCP client through
//! Switchboard, and ends with metrics and an audit scan.

mod agent;
mod mcp;
mod tally;

use super::{count, say};
use agent::DemoAgent;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard::namespace::DispatchRecord;
use switchboard::{
    AgentConfig, Database, Error, HealthCheckConfig, PolicyEngine, RoutingOptions, RoutingStrategy,
    ToolCategory, ToolDispatcher, ToolError,
};
use tally::{show_counts, tally};

const STEPS: usize = 9;
const SHIPPED_POLICY: &str = include_str!("../../../policies/sensitive_tools.rego");

fn step(n: usize, title: &str) -> switchboard::Result<()> {
    say!("\n[{n}/{STEPS}] {title}");
    Ok(())
}

/// Runs the demo on `data`, or on a temporary directory removed at the end
/// (so it leaves nothing in the directory a user serves from).
pub async fn run(data: Option<PathBuf>) -> switchboard::Result<()> {
    if let Some(dir) = data {
        say!("Switchboard demo — database kept in {}", dir.display());
        return tour(&dir, true).await;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("switchboard-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}", dir.display()), e))?;
    say!(
        "Switchboard demo — a throwaway database in {} (removed at the end; keep one with --data DIR)",
        dir.display()
    );
    let result = tour(&dir, false).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn tour(data: &Path, kept: bool) -> switchboard::Result<()> {
    let db = Database::open(data)?;
    let dispatcher = ToolDispatcher::try_new(db.clone())?;

    step(
        1,
        "Starting agents (HTTP on 127.0.0.1, and in-process handlers)",
    )?;
    let mut code_agent = DemoAgent::start("code_agent", Duration::from_millis(1))?;
    let backup_agent = DemoAgent::start("backup_agent", Duration::from_millis(15))?;
    let search_agent = DemoAgent::start("search_agent", Duration::from_millis(2))?;
    let http = |endpoint: &str, tools, priority| {
        AgentConfig::new()
            .with_tools(tools)
            .with_endpoint(endpoint)
            .with_priority(priority)
            .with_timeout(Duration::from_secs(2))
    };
    // One priority for all: priorities are failover tiers (step 4), and a
    // strategy only chooses within the top tier.
    let code_tools = || vec![ToolCategory::Code, ToolCategory::Shell];
    dispatcher.register_agent("code_agent", http(&code_agent.endpoint, code_tools(), 0))?;
    dispatcher.register_agent(
        "backup_agent",
        http(&backup_agent.endpoint, vec![ToolCategory::Code], 0),
    )?;
    dispatcher.register_agent(
        "search_agent",
        http(
            &search_agent.endpoint,
            vec![ToolCategory::Search, ToolCategory::Web],
            0,
        ),
    )?;
    dispatcher.register_local_agent(
        "local_code",
        vec![ToolCategory::Code],
        |tool: String, input: Value| async move {
            Ok::<_, ToolError>(json!({"agent": "local_code", "tool": tool, "echo": input}))
        },
    )?;
    let sensitive = ToolCategory::Custom("sensitive".into());
    for id in ["intern_agent", "trusted_agent_1"] {
        dispatcher.register_local_agent(
            id,
            vec![sensitive.clone()],
            move |tool: String, _input: Value| async move {
                Ok::<_, ToolError>(json!({"agent": id, "rotated": tool}))
            },
        )?;
    }
    for id in dispatcher.list_agents() {
        let r = dispatcher
            .registry()
            .get(&id)
            .expect("listed agents have records");
        let tools: Vec<&str> = r.tools.iter().map(|t| t.as_str()).collect();
        let kind = match r.transport {
            switchboard::namespace::AgentTransport::Local => "local".to_string(),
            other => other.describe(),
        };
        say!(
            "    {id:<16} {:<16} priority {:>2}   {kind}",
            tools.join(","),
            r.priority
        );
    }

    step(2, "Loading the shipped policy")?;
    let policy = PolicyEngine::new(&db);
    policy.add_rego("tools/sensitive/**", SHIPPED_POLICY)?;
    for (name, scope) in policy.rego_modules() {
        say!("    {name} on {scope}: only trusted agents may run sensitive tools");
    }
    dispatcher.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_millis(200))
            .timeout(Duration::from_millis(200))
            .unhealthy_threshold(2)
            .healthy_threshold(2),
    );

    step(
        3,
        "Routing 12 `code` calls with each strategy (three agents of equal priority)",
    )?;
    for strategy in [
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Random,
        RoutingStrategy::LeastLoaded,
        RoutingStrategy::Priority,
        RoutingStrategy::Fastest,
    ] {
        let counts = tally(
            &dispatcher,
            ToolCategory::Code,
            RoutingOptions::new().with_strategy(strategy),
            12,
        )
        .await?;
        show_counts(strategy.as_str(), &counts)?;
    }

    step(
        4,
        "Priorities are failover tiers, not weights: code_agent re-registered with priority 10",
    )?;
    dispatcher.register_agent("code_agent", http(&code_agent.endpoint, code_tools(), 10))?;
    let counts = tally(
        &dispatcher,
        ToolCategory::Code,
        RoutingOptions::new().with_strategy(RoutingStrategy::RoundRobin),
        12,
    )
    .await?;
    show_counts("round_robin", &counts)?;
    say!("    Every strategy chooses among the healthy agents of the highest priority only;");
    say!("    backup_agent and local_code (priority 0) are standbys until code_agent is down (step 7).");

    step(
        5,
        "A sticky session: every call of session `demo-session` goes to one agent",
    )?;
    let sticky = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Sticky)
        .with_session_id("demo-session");
    let counts = tally(&dispatcher, ToolCategory::Code, sticky, 8).await?;
    show_counts("sticky", &counts)?;
    if let Some(binding) = db.get("sessions/demo-session")? {
        say!(
            "    sessions/demo-session = {}",
            String::from_utf8_lossy(&binding)
        );
    }

    step(6, "Policy: the sensitive tool `rotate_keys` (round robin over an untrusted and a trusted agent)")?;
    let mut denied_first = 0;
    for i in 0..4 {
        let r = dispatcher
            .invoke(
                "rotate_keys",
                sensitive.clone(),
                json!({"key": i}),
                RoutingOptions::new(),
            )
            .await?;
        let rec: DispatchRecord = serde_json::from_slice(
            &db.get(&switchboard::namespace::dispatch_key(
                &sensitive,
                "rotate_keys",
                &r.invocation_id,
            ))?
            .unwrap_or_default(),
        )
        .map_err(Error::storage)?;
        if let Some(denied) = rec.attempts.iter().find(|a| a.outcome == "denied") {
            denied_first += 1;
            say!(
                "    call {i}: {} denied ({}), then served by {}",
                denied.agent_id,
                denied.error.as_deref().unwrap_or(""),
                r.agent_id
            );
        } else {
            say!("    call {i}: served by {}", r.agent_id);
        }
    }
    // Its metrics go with the registration; kept for the table in the last step.
    let unregistered = dispatcher
        .get_metrics()
        .remove("trusted_agent_1")
        .map(|m| ("trusted_agent_1".to_string(), m));
    dispatcher.unregister_agent("trusted_agent_1")?;
    match dispatcher
        .invoke(
            "rotate_keys",
            sensitive.clone(),
            json!({}),
            RoutingOptions::new(),
        )
        .await
    {
        Err(e) => say!("    with only intern_agent left: {e}"),
        Ok(r) => {
            return Err(Error::storage(format!(
                "the policy should have denied {}",
                r.agent_id
            )))
        }
    }
    say!("    ({denied_first} of 4 calls offered the untrusted agent first; it never ran)");

    step(
        7,
        "Killing code_agent: failover to the next tier, then health checks exclude it",
    )?;
    code_agent.kill();
    let counts = tally(
        &dispatcher,
        ToolCategory::Code,
        RoutingOptions::new().with_strategy(RoutingStrategy::Priority),
        10,
    )
    .await?;
    show_counts("priority", &counts)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while dispatcher
        .get_metrics()
        .get("code_agent")
        .is_some_and(|m| m.healthy)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy = dispatcher
        .get_metrics()
        .get("code_agent")
        .is_some_and(|m| m.healthy);
    say!(
        "    code_agent is {}; every call above still succeeded",
        if healthy {
            "still healthy"
        } else {
            "marked unhealthy and skipped"
        }
    );

    step(
        8,
        "MCP both ways: an MCP server as an agent, an MCP client calling it through Switchboard",
    )?;
    let weather = mcp::DemoMcpServer::start()?;
    // A category of its own: HTTP agents serving all of `web` would be
    // candidates for any tool called in `web`, `forecast` included.
    let weather_category = ToolCategory::Custom("weather".into());
    dispatcher.register_agent(
        "weather_mcp",
        AgentConfig::new()
            .with_tools(vec![weather_category])
            .with_mcp(&weather.url)
            .with_timeout(Duration::from_secs(2)),
    )?;
    for t in dispatcher.discover_tools("weather_mcp").await? {
        say!(
            "    tools/list on weather_mcp ({}): {} → category {}, schema {}…, stored at mcp_tools/{}/{}",
            weather.url,
            t.name,
            t.category,
            &t.schema_hash[..12],
            t.agent_id,
            t.name
        );
    }
    let switchboard_mcp = mcp::serve_switchboard(&dispatcher)?;
    let (names, answer) = mcp::call_through(&switchboard_mcp).await?;
    say!(
        "    an MCP client of Switchboard's {switchboard_mcp} sees: {}",
        names.join(", ")
    );
    say!("    it calls forecast {{\"city\": \"Oslo\"}} → {answer:?}");
    if let Some(Ok((key, value))) = db.scan("tools/weather/forecast/").last() {
        let r: DispatchRecord = serde_json::from_slice(&value).map_err(Error::storage)?;
        say!(
            "    recorded at {key}: agent {}, {}",
            r.agent_id.as_deref().unwrap_or("-"),
            serde_json::to_value(r.status)
                .map_err(Error::storage)?
                .as_str()
                .unwrap_or_default()
        );
    }

    step(9, "Metrics and the audit trail")?;
    say!(
        "    {:<16} {:>6} {:>8} {:>9} {:>9} {:>9}  HEALTHY",
        "AGENT",
        "TOTAL",
        "SUCCESS",
        "AVG ms",
        "p50 ms",
        "p99 ms"
    );
    let mut metrics: BTreeMap<_, _> = dispatcher
        .get_metrics()
        .into_iter()
        .map(|(id, m)| (id, (m, true)))
        .collect();
    if let Some((id, m)) = unregistered {
        metrics.insert(id, (m, false));
    }
    for (id, (m, registered)) in &metrics {
        let health = match (registered, m.healthy) {
            (false, _) => "unregistered in step 6",
            (true, true) => "yes",
            (true, false) => "no",
        };
        say!(
            "    {id:<16} {:>6} {:>7.0}% {:>9.2} {:>9.2} {:>9.2}  {health}",
            m.total,
            m.success_rate * 100.0,
            m.avg_latency_ms,
            m.p50_latency_ms,
            m.p99_latency_ms,
        );
    }
    let records: Vec<DispatchRecord> = db
        .scan("tools/sensitive/")
        .filter_map(|kv| kv.ok().and_then(|(_, v)| serde_json::from_slice(&v).ok()))
        .collect();
    const SHOWN: usize = 5;
    let shown = if records.len() > SHOWN {
        format!("the last {SHOWN} of {}", records.len())
    } else {
        count(records.len(), "record")
    };
    say!("\n    scan tools/sensitive/ ({shown}, oldest first):");
    for r in records.iter().rev().take(SHOWN).rev() {
        let attempts: Vec<String> = r
            .attempts
            .iter()
            .map(|a| format!("{}:{}", a.agent_id, a.outcome))
            .collect();
        // The stored (snake_case) name, as `scan` shows it.
        let status = serde_json::to_value(r.status).map_err(Error::storage)?;
        say!(
            "    {}  {}  {}",
            r.invocation_id,
            status.as_str().unwrap_or_default(),
            attempts.join(" → ")
        );
    }
    let refusals = db
        .scan(switchboard::DECISION_LOG)
        .filter_map(|kv| {
            kv.ok()
                .and_then(|(_, v)| serde_json::from_slice::<Value>(&v).ok())
        })
        .filter(|d| {
            d["decision"] == "deny"
                && d["key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("tools/sensitive/"))
        })
        .count();
    say!(
        "    and {} in the decision log ({}), the refused call among them: it has no dispatch record,",
        count(refusals, "refusal"),
        switchboard::DECISION_LOG
    );
    say!("    and `switchboard scan tools/sensitive/` lists them with the records, marked denied.");
    let total = db.scan("tools/").count();
    // The HTTP agents' ports close and the handlers go with this process:
    // registrations left behind would point at nothing.
    for id in dispatcher.list_agents() {
        dispatcher.unregister_agent(&id)?;
    }
    drop(backup_agent);
    drop(search_agent);
    drop(weather);
    if kept {
        say!(
            "\nDone: {} under tools/ in {} (the demo's agents are unregistered; the records stay). Try `switchboard scan tools/code/ --data {}`.",
            count(total, "dispatch record"),
            data.display(),
            data.display()
        );
    } else {
        say!(
            "\nDone: {} under tools/. The database is removed now; `switchboard demo --data DIR` keeps one to scan.",
            count(total, "dispatch record")
        );
    }
    Ok(())
}
