//! Dispatch: the failover loop, dispatch records and metrics, clear errors,
//! and recovery of interrupted dispatches, with local and real HTTP agents.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::{
    AgentConfig, Database, DispatchStatus, Error, RoutingOptions, RoutingStrategy, ToolCategory,
    ToolDispatcher, ToolError,
};

fn echo_agent(d: &ToolDispatcher, id: &'static str, tools: Vec<ToolCategory>) {
    d.register_local_agent(
        id,
        tools,
        move |tool: String, input: serde_json::Value| async move {
            Ok::<_, ToolError>(json!({ "agent": id, "tool": tool, "echo": input }))
        },
    )
    .unwrap();
}

async fn call(
    d: &ToolDispatcher,
    strategy: RoutingStrategy,
) -> switchboard::Result<switchboard::InvocationResult> {
    d.invoke(
        "run",
        ToolCategory::Code,
        json!({}),
        RoutingOptions::new().with_strategy(strategy),
    )
    .await
}

#[tokio::test]
async fn quick_start_echoes_through_a_local_agent_and_records_it() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    echo_agent(&d, "local_code", vec![ToolCategory::Code]);
    let r = d
        .invoke(
            "code_exec",
            ToolCategory::Code,
            json!({"code": "print('hello')"}),
            RoutingOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.agent_id, "local_code");
    assert_eq!(
        r.output,
        json!({"agent": "local_code", "tool": "code_exec", "echo": {"code": "print('hello')"}})
    );
    let recs = records(&db, "tools/code/code_exec/");
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.invocation_id, r.invocation_id);
    assert_eq!(rec.status, DispatchStatus::Succeeded);
    assert_eq!(rec.agent_id.as_deref(), Some("local_code"));
    assert_eq!(rec.attempts.len(), 1);
    assert!(rec.finished_at_ms.is_some() && rec.latency_ms.is_some());
    assert_eq!(
        db.scan("inflight/").count(),
        0,
        "the in-flight entry is cleared with the outcome"
    );
}

#[tokio::test]
async fn http_failover_on_5xx_timeout_refused_and_non_json() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let broken = TestAgent::start("broken", Behaviour::Status(500)).await;
    let hanging = TestAgent::start("hanging", Behaviour::Slow(Duration::from_secs(30))).await;
    let garbled = TestAgent::start("garbled", Behaviour::NotJson).await;
    let good = TestAgent::start("good", Behaviour::Echo).await;
    let register = |id: &str, endpoint: &str, priority| {
        d.register_agent(
            id,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_endpoint(endpoint)
                .with_priority(priority)
                .with_timeout(Duration::from_millis(300)),
        )
        .unwrap()
    };
    register("broken", &broken.endpoint, 50);
    register("hanging", &hanging.endpoint, 40);
    register("refused", &refused_endpoint(), 30);
    register("garbled", &garbled.endpoint, 20);
    let (closing, _closer) = closing_endpoint().await;
    register("closing", &closing, 15);
    register("good", &good.endpoint, 10);

    let opts = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Priority)
        .with_max_attempts(6);
    let r = d
        .invoke("run", ToolCategory::Code, json!({"x": 1}), opts)
        .await
        .unwrap();
    assert_eq!(r.agent_id, "good");
    assert_eq!(r.attempts, 6);
    assert_eq!(r.output["input"], json!({"x": 1}));
    let sent = good.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["tool"], "run");
    assert_eq!(sent["category"], "code");
    assert_eq!(sent["invocation_id"], r.invocation_id.as_str());
    assert!(sent["session_id"].is_null());

    let rec = &records(&db, "tools/code/run/")[0];
    assert_eq!(rec.status, DispatchStatus::Succeeded);
    let outcomes: Vec<(&str, &str)> = rec
        .attempts
        .iter()
        .map(|a| (a.agent_id.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("broken", "failed"),
            ("hanging", "timeout"),
            ("refused", "failed"),
            ("garbled", "failed"),
            ("closing", "failed"),
            ("good", "succeeded")
        ]
    );
    assert!(rec.attempts[0].error.as_deref().unwrap().contains("500"));
    assert!(rec.attempts[3]
        .error
        .as_deref()
        .unwrap()
        .contains("not JSON"));

    // Default: at most 3 agent calls, then the last failure is returned and recorded.
    let err = d
        .invoke(
            "run",
            ToolCategory::Code,
            json!({}),
            RoutingOptions::new().with_strategy(RoutingStrategy::Priority),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AgentFailed { ref agent_id, .. } if agent_id == "refused"),
        "{err}"
    );
    let failed: Vec<_> = records(&db, "tools/code/run/")
        .into_iter()
        .filter(|r| r.status == DispatchStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts.len(), 3);
    assert!(failed[0].error.as_deref().unwrap().contains("refused"));
    let m = d.get_metrics();
    assert_eq!((m["broken"].total, m["broken"].failures), (2, 2));
    assert_eq!((m["good"].total, m["good"].successes), (1, 1));
    assert_eq!(m["good"].success_rate, 1.0);
    assert_eq!(m["hanging"].success_rate, 0.0);
}

#[tokio::test]
async fn tool_errors_are_not_retried() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let rejecting = TestAgent::start("rejecting", Behaviour::Status(422)).await;
    let good = TestAgent::start("good", Behaviour::Echo).await;
    for (agent, priority) in [(&rejecting, 2), (&good, 1)] {
        d.register_agent(
            &agent.name,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_endpoint(&agent.endpoint)
                .with_priority(priority),
        )
        .unwrap();
    }
    let err = call(&d, RoutingStrategy::Priority).await.unwrap_err();
    assert!(
        matches!(&err, Error::ToolFailed { agent_id, message } if agent_id == "rejecting" && message.contains("422")),
        "{err}"
    );
    assert_eq!(good.hits(), 0);
    echo_agent(&d, "local_fail", vec![ToolCategory::Search]);
    d.register_local_agent("local_fail", vec![ToolCategory::Search], |_t, _i| async {
        Err::<serde_json::Value, _>(ToolError::from("bad query"))
    })
    .unwrap();
    let err = d
        .invoke("q", ToolCategory::Search, json!({}), RoutingOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::ToolFailed { message, .. } if message == "bad query"));
    let rec = &records(&db, "tools/search/q/")[0];
    assert_eq!(
        (rec.status, rec.error.as_deref()),
        (DispatchStatus::Failed, Some("bad query"))
    );
}

#[tokio::test]
async fn local_handlers_that_panic_or_hang_fail_over() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    fn explode() -> ToolError {
        panic!("handler bug")
    }
    d.register_local_agent_with(
        "panics",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_priority(3),
        |_t, _i| async { Err::<serde_json::Value, _>(explode()) },
    )
    .unwrap();
    d.register_local_agent_with(
        "hangs",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_priority(2)
            .with_timeout(Duration::from_millis(100)),
        |_t, _i| async {
            std::future::pending::<()>().await;
            Ok::<_, ToolError>(json!(null))
        },
    )
    .unwrap();
    fn explode_early() {
        panic!("handler bug before the future")
    }
    d.register_local_agent_with(
        "panics_early",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_priority(4),
        |_t, _i| {
            explode_early();
            async { Ok::<_, ToolError>(json!(null)) }
        },
    )
    .unwrap();
    echo_agent(&d, "works", vec![ToolCategory::Code]);
    let options = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Priority)
        .with_max_attempts(4);
    let r = d
        .invoke("run", ToolCategory::Code, json!({}), options)
        .await
        .unwrap();
    assert_eq!((r.agent_id.as_str(), r.attempts), ("works", 4));
    let m = d.get_metrics();
    assert!(m.values().all(|m| m.active_tasks == 0));
    assert_eq!(
        (
            m["panics"].failures,
            m["panics_early"].failures,
            m["hangs"].failures
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn records_and_metrics_match_what_happened() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    d.register_local_agent(
        "every_third_fails",
        vec![ToolCategory::Git],
        move |_t, _i| {
            let k = n2.fetch_add(1, Ordering::SeqCst);
            async move {
                if k % 3 == 2 {
                    Err(ToolError::from("merge conflict"))
                } else {
                    Ok(json!(k))
                }
            }
        },
    )
    .unwrap();
    let mut ok = 0;
    for _ in 0..30 {
        if d.invoke("merge", ToolCategory::Git, json!({}), RoutingOptions::new())
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
    let m = &d.get_metrics()["every_third_fails"];
    assert_eq!(
        (m.total, m.successes, m.failures, m.active_tasks),
        (30, 20, 10, 0)
    );
    assert!((m.success_rate - 2.0 / 3.0).abs() < 1e-9);
    assert!(m.p99_latency_ms >= m.p50_latency_ms);
    let recs = records(&db, "tools/git/merge/");
    assert_eq!(recs.len(), 30);
    assert_eq!(
        recs.iter()
            .filter(|r| r.status == DispatchStatus::Succeeded)
            .count(),
        20
    );
    let ids: Vec<&String> = recs.iter().map(|r| &r.invocation_id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "a prefix scan reads a tool's history in order");
    assert!(recs
        .windows(2)
        .all(|w| w[0].started_at_ms <= w[1].started_at_ms));
}

#[tokio::test]
async fn bad_invocations_get_clear_errors() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    echo_agent(&d, "a", vec![ToolCategory::Code]);
    let err = d
        .invoke(
            "x",
            ToolCategory::Database,
            json!({}),
            RoutingOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoAgentAvailable { category, reason } if category == "database" && reason.contains("no agent is registered")),
        "{err}"
    );
    for bad_tool in ["", "a/b", "spaces here"] {
        let err = d
            .invoke(
                bad_tool,
                ToolCategory::Code,
                json!({}),
                RoutingOptions::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{bad_tool:?}");
    }
    let err = d
        .invoke(
            "x",
            ToolCategory::Code,
            json!({}),
            RoutingOptions::new().with_session_id("bad session"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
    let err = d
        .invoke(
            "x",
            ToolCategory::Code,
            json!({}),
            RoutingOptions::new().with_max_attempts(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
    assert_eq!(db.scan("tools/").count(), 0, "rejected calls write nothing");
}

#[tokio::test]
async fn interrupted_dispatches_are_marked_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Database::open(&path).unwrap();
        let d = ToolDispatcher::new(db.clone());
        d.register_local_agent("stuck", vec![ToolCategory::Code], |_t, _i| async {
            std::future::pending::<()>().await;
            Ok::<_, ToolError>(json!(null))
        })
        .unwrap();
        echo_agent(&d, "fine", vec![ToolCategory::Search]);
        d.invoke("q", ToolCategory::Search, json!({}), RoutingOptions::new())
            .await
            .unwrap();
        // The process "dies" mid-call: after the intent commits, the call is
        // never polled or dropped again (a dropped call is recorded as cancelled).
        let mut pending = Box::pin(call(&d, RoutingStrategy::RoundRobin));
        tokio::select! {
            _ = &mut pending => panic!("the stuck agent cannot answer"),
            _ = async {
                while db.scan("inflight/").count() == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } => {}
        }
        std::mem::forget(pending);
        assert_eq!(
            records(&db, "tools/code/")[0].status,
            DispatchStatus::InFlight
        );
    }
    let db = Database::open(&path).unwrap();
    let _d = ToolDispatcher::new(db.clone());
    let rec = &records(&db, "tools/code/")[0];
    assert_eq!(rec.status, DispatchStatus::Interrupted);
    assert_eq!(rec.attempts[0].outcome, "interrupted");
    assert_eq!(
        records(&db, "tools/search/")[0].status,
        DispatchStatus::Succeeded,
        "finished records are untouched"
    );
    assert_eq!(db.scan("inflight/").count(), 0);
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
