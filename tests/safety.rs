//! Safety properties: no write path around the policy chain, and invariants
//! that hold under thousands of concurrent dispatches.

mod common;

use common::temp_db;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use switchboard::{
    AgentConfig, Error, PolicyAction, PolicyEngine, RoutingOptions, RoutingStrategy, ToolCategory,
    ToolDispatcher, ToolError,
};

#[tokio::test]
async fn every_public_write_path_meets_a_deny_all_policy() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    d.register_local_agent("before", vec![ToolCategory::Code], |_t, _i| async {
        Ok::<_, ToolError>(json!(null))
    })
    .unwrap();
    let before: Vec<(String, Vec<u8>)> = db.scan("").map(|kv| kv.unwrap()).collect();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("**", |_, _, _| PolicyAction::Deny("frozen".into()))
        .unwrap();
    policy
        .before_delete("**", |_, _, _| PolicyAction::Deny("frozen".into()))
        .unwrap();
    let denied = |result: switchboard::Result<()>, what: &str| {
        assert!(
            matches!(result, Err(Error::PolicyDenied { .. })),
            "{what} got past the chain"
        );
    };
    denied(db.put("notes/a", b"1"), "put");
    denied(
        db.put_with("notes/a", b"1", &Default::default()),
        "put_with",
    );
    denied(
        db.writes_to_reserved_namespaces().delete("agents/before"),
        "delete",
    );
    denied(
        db.writes_to_reserved_namespaces()
            .delete_with("agents/before", &Default::default()),
        "delete_with",
    );
    let mut tx = db.transaction();
    tx.put("notes/b", b"1").unwrap();
    denied(tx.commit(), "transaction");
    let http = AgentConfig::new()
        .with_tools(vec![ToolCategory::Code])
        .with_endpoint("http://127.0.0.1:9/invoke");
    denied(d.register_agent("new_http", http), "register_agent");
    denied(
        d.register_local_agent("new_local", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!(null))
        }),
        "register_local_agent",
    );
    denied(d.unregister_agent("before"), "unregister_agent");
    let invoked = d
        .invoke(
            "run",
            ToolCategory::Code,
            json!({}),
            RoutingOptions::new().with_session_id("s"),
        )
        .await;
    assert!(
        matches!(invoked, Err(Error::PolicyDenied { .. })),
        "invoke got past the chain"
    );
    assert_eq!(
        d.get_metrics()["before"].total,
        0,
        "a denied dispatch never reaches the agent"
    );
    let after: Vec<(String, Vec<u8>)> = db
        .scan("")
        .map(|kv| kv.unwrap())
        .filter(|(k, _)| !k.starts_with("policy_log/"))
        .collect();
    assert_eq!(before, after, "nothing but the decision log changed");
    assert_eq!(d.list_agents(), ["before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_dispatches_keep_every_count() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let handled = Arc::new(AtomicUsize::new(0));
    for id in ["a", "b", "c", "d"] {
        let handled = handled.clone();
        d.register_local_agent(id, vec![ToolCategory::Code], move |_t, _i| {
            let handled = handled.clone();
            async move {
                tokio::task::yield_now().await;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ToolError>(json!(id))
            }
        })
        .unwrap();
    }
    const CALLS: usize = 2_000;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let strategy = RoutingStrategy::ALL[i % RoutingStrategy::ALL.len()];
                let mut options = RoutingOptions::new().with_strategy(strategy);
                if strategy == RoutingStrategy::Sticky || i % 7 == 0 {
                    options = options.with_session_id(format!("s{}", i % 50));
                }
                d.invoke("run", ToolCategory::Code, json!({"i": i}), options)
                    .await
                    .unwrap()
                    .agent_id
            })
        })
        .collect();
    let mut served: HashMap<String, u64> = HashMap::new();
    for c in calls {
        *served.entry(c.await.unwrap()).or_default() += 1;
    }
    assert_eq!(handled.load(Ordering::SeqCst), CALLS);
    let metrics = d.get_metrics();
    for (id, m) in &metrics {
        assert_eq!(m.active_tasks, 0, "{id} still counts calls in flight");
        assert_eq!(
            m.total,
            served.get(id).copied().unwrap_or(0),
            "{id} lost counts"
        );
        assert_eq!(m.successes, m.total);
    }
    assert_eq!(metrics.values().map(|m| m.total).sum::<u64>(), CALLS as u64);
    assert_eq!(db.scan("tools/code/run/").count(), CALLS);
    assert_eq!(db.scan("inflight/").count(), 0);
    // One binding per session, naming an agent that served it.
    assert_eq!(db.scan("sessions/").count(), 50);
}

#[tokio::test]
async fn overloaded_and_truncating_agents_fail_over_and_retry_after_is_honoured() {
    use common::{truncating_endpoint, Behaviour, TestAgent};
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let busy = TestAgent::start("busy", Behaviour::RetryAfter(429, 1)).await;
    let unavailable = TestAgent::start("unavailable", Behaviour::RetryAfter(503, 1)).await;
    let good = TestAgent::start("good", common::Behaviour::Echo).await;
    let (truncating, _task) = truncating_endpoint().await;
    let register = |id: &str, endpoint: &str, priority| {
        d.register_agent(
            id,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_endpoint(endpoint)
                .with_priority(priority),
        )
        .unwrap()
    };
    register("busy", &busy.endpoint, 4);
    register("unavailable", &unavailable.endpoint, 3);
    register("truncating", &truncating, 2);
    register("good", &good.endpoint, 1);
    let options = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Priority)
        .with_max_attempts(4);
    let r = d
        .invoke("fetch", ToolCategory::Web, json!({}), options.clone())
        .await
        .unwrap();
    assert_eq!((r.agent_id.as_str(), r.attempts), ("good", 4));
    let record: switchboard::namespace::DispatchRecord = serde_json::from_slice(
        &db.get(&format!("tools/web/fetch/{}", r.invocation_id))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let outcomes: Vec<&str> = record.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["overloaded", "overloaded", "failed", "succeeded"]
    );
    assert!(
        record.attempts[2]
            .error
            .as_deref()
            .unwrap()
            .contains("broken off"),
        "{:?}",
        record.attempts[2]
    );

    // Within the pause they asked for, the overloaded agents are not called.
    let (busy_hits, unavailable_hits) = (busy.hits(), unavailable.hits());
    let r = d
        .invoke("fetch", ToolCategory::Web, json!({}), options.clone())
        .await
        .unwrap();
    assert_eq!(
        (r.agent_id.as_str(), r.attempts),
        ("good", 2),
        "only the truncating agent was tried first"
    );
    assert_eq!(
        (busy.hits(), unavailable.hits()),
        (busy_hits, unavailable_hits)
    );
    // After it, they are tried again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    d.invoke("fetch", ToolCategory::Web, json!({}), options)
        .await
        .unwrap();
    assert_eq!(busy.hits(), busy_hits + 1);
}

#[tokio::test]
async fn health_follows_a_flapping_agent() {
    use common::{Behaviour, TestAgent};
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let flapper = TestAgent::start("flapper", Behaviour::Echo).await;
    d.register_agent(
        "flapper",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Web])
            .with_endpoint(&flapper.endpoint),
    )
    .unwrap();
    d.enable_health_checks(
        switchboard::HealthCheckConfig::new()
            .interval(std::time::Duration::from_secs(3600))
            .unhealthy_threshold(2)
            .healthy_threshold(2),
    );
    // Each probe round sees the agent as the pattern says; the router's view
    // changes only after two agreeing rounds in a row.
    let pattern = [
        false, true, false, false, true, false, true, true, false, false,
    ];
    let expected = [
        true, true, true, false, false, false, false, true, true, false,
    ];
    for (up, healthy_after) in pattern.into_iter().zip(expected) {
        flapper.healthy.store(up, Ordering::SeqCst);
        d.check_health_now().await;
        assert_eq!(
            d.get_metrics()["flapper"].healthy,
            healthy_after,
            "after a probe that saw up={up}"
        );
    }
}

#[tokio::test]
async fn oversized_agent_answers_are_refused_and_fail_over() {
    use common::{Behaviour, TestAgent};
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let flood = TestAgent::start(
        "flood",
        Behaviour::Huge(switchboard::routing::MAX_RESPONSE_BYTES + 1),
    )
    .await;
    let good = TestAgent::start("good", Behaviour::Echo).await;
    for (agent, priority) in [(&flood, 2), (&good, 1)] {
        d.register_agent(
            &agent.name,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_endpoint(&agent.endpoint)
                .with_priority(priority),
        )
        .unwrap();
    }
    let options = RoutingOptions::new().with_strategy(RoutingStrategy::Priority);
    let r = d
        .invoke("fetch", ToolCategory::Web, json!({}), options)
        .await
        .unwrap();
    assert_eq!(r.agent_id, "good");
    let record: switchboard::namespace::DispatchRecord = serde_json::from_slice(
        &db.get(&format!("tools/web/fetch/{}", r.invocation_id))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        record.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("larger than"),
        "{:?}",
        record.attempts[0]
    );
}
