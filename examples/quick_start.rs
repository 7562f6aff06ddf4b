//! The brief's quick start, end to end: a real HTTP agent on 127.0.0.1, a
//! local agent, health checks, a policy, a sticky least-loaded call, and the
//! audit scan. Run with `cargo run --example quick_start`.

use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;
use switchboard::{
    AgentConfig, Database, HealthCheckConfig, PolicyAction, PolicyContext, PolicyEngine,
    RoutingOptions, RoutingStrategy, ToolCategory, ToolDispatcher, ToolError,
};

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    // An HTTP agent speaking the wire protocol: POST the call, GET /health.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let endpoint = format!(
        "http://{}/invoke",
        listener.local_addr().expect("local addr")
    );
    let agent = Router::new()
        .route(
            "/invoke",
            post(|Json(call): Json<serde_json::Value>| async move {
                Json(serde_json::json!({"ran": call["tool"], "with": call["input"], "by": "code_agent"}))
            }),
        )
        .route("/health", get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, agent).await });

    let data = std::env::temp_dir().join("switchboard_quick_start");
    let db = Database::open(&data)?;
    let dispatcher = ToolDispatcher::new(db.clone());

    dispatcher.register_agent(
        "code_agent",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Code, ToolCategory::Shell])
            .with_endpoint(&endpoint)
            .with_priority(10),
    )?;
    dispatcher.register_local_agent(
        "local_code",
        vec![ToolCategory::Code],
        |tool: String, input: serde_json::Value| async move {
            Ok::<_, ToolError>(serde_json::json!({ "tool": tool, "echo": input }))
        },
    )?;
    dispatcher.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_secs(30))
            .timeout(Duration::from_secs(5))
            .unhealthy_threshold(3),
    );

    let policy = PolicyEngine::new(&db);
    policy.before_write(
        "tools/sensitive/**",
        |_key: &str, _value: &[u8], ctx: &PolicyContext| match ctx.get("agent_id") {
            Some("trusted_agent_1") | Some("trusted_agent_2") => PolicyAction::Allow,
            _ => PolicyAction::Deny("untrusted agent".into()),
        },
    )?;

    for _ in 0..3 {
        let r = dispatcher
            .invoke(
                "code_exec",
                ToolCategory::Code,
                serde_json::json!({ "code": "print('hello')" }),
                RoutingOptions::new()
                    .with_strategy(RoutingStrategy::LeastLoaded)
                    .with_session_id("session_abc123"),
            )
            .await?;
        println!(
            "{} -> {}  (invocation {})",
            r.agent_id, r.output, r.invocation_id
        );
    }
    println!("agents: {:?}", dispatcher.list_agents());
    for (id, m) in dispatcher.get_metrics() {
        println!(
            "{id}: total {} success rate {:.2} avg {:.2} ms active {}",
            m.total, m.success_rate, m.avg_latency_ms, m.active_tasks
        );
    }
    println!("audit trail under tools/code/code_exec/:");
    for kv in db.scan("tools/code/code_exec/") {
        let (key, value) = kv?;
        println!("  {key} {}", String::from_utf8_lossy(&value));
    }
    dispatcher.unregister_agent("code_agent")?;
    Ok(())
}
