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

/// Dispatch hardening: outcomes are never lost, replaced agents stay out,
/// `max_concurrency` is exact, and dropped calls are recorded as cancelled.
/// Real local agents and real HTTP agents on 127.0.0.1.
mod hardening {

    use super::common;

    use common::{records, temp_db, Behaviour, TestAgent};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use switchboard::namespace::DispatchStatus;
    use switchboard::{
        AgentConfig, Error, HealthCheckConfig, PolicyEngine, RateLimitOp, RateLimitScope,
        RoutingOptions, RoutingStrategy, ToolCategory, ToolDispatcher, ToolError,
    };

    fn sensitive() -> ToolCategory {
        ToolCategory::Custom("sensitive".into())
    }

    #[tokio::test]
    async fn outcome_is_written_for_the_called_agent_after_a_denied_failover() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        let trusted = TestAgent::start("trusted_agent_1", Behaviour::Status(503)).await;
        d.register_agent(
            "trusted_agent_1",
            AgentConfig::new()
                .with_tools(vec![sensitive()])
                .with_endpoint(&trusted.endpoint)
                .with_priority(10),
        )
        .unwrap();
        d.register_local_agent_with(
            "untrusted",
            AgentConfig::new().with_tools(vec![sensitive()]),
            |_t, _i| async { Ok::<_, ToolError>(json!("should never run")) },
        )
        .unwrap();
        PolicyEngine::new(&db)
            .load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .unwrap();
        let err = d
            .invoke(
                "rotate_keys",
                sensitive(),
                json!({}),
                RoutingOptions::new().with_strategy(RoutingStrategy::Priority),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AgentFailed { .. }), "{err:?}");
        let recs = records(&db, "tools/sensitive/");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].status, DispatchStatus::Failed, "{:?}", recs[0]);
        assert_eq!(recs[0].agent_id.as_deref(), Some("trusted_agent_1"));
        assert_eq!(
            db.scan("inflight/").count(),
            0,
            "the in-flight entry is cleared"
        );
    }

    #[tokio::test]
    async fn outcome_is_written_even_when_a_rate_limit_is_used_up() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        d.register_local_agent("solo", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!("done"))
        })
        .unwrap();
        // The intent (record + in-flight entry) uses both puts of the window.
        PolicyEngine::new(&db)
            .add_rate_limit_per(
                RateLimitOp::Put,
                2,
                Duration::from_secs(3600),
                RateLimitScope::PerAgent,
            )
            .unwrap();
        let r = d
            .invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new())
            .await
            .unwrap();
        assert_eq!(r.output, json!("done"));
        let recs = records(&db, "tools/code/");
        assert_eq!(recs[0].status, DispatchStatus::Succeeded, "{:?}", recs[0]);
        assert_eq!(db.scan("inflight/").count(), 0);
    }

    #[tokio::test]
    async fn outcome_writes_are_not_subject_to_before_hook_denials() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        d.register_local_agent("solo", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!("done"))
        })
        .unwrap();
        let observed = Arc::new(AtomicUsize::new(0));
        let policy = PolicyEngine::new(&db);
        policy
            .before_write("tools/**", |_k, _v, ctx| match ctx.get("action") {
                Some("outcome") => switchboard::PolicyAction::Deny("no outcomes".into()),
                _ => switchboard::PolicyAction::Allow,
            })
            .unwrap();
        let seen = observed.clone();
        policy
            .after_write("tools/**", move |_k, _v, ctx| {
                if ctx.get("action") == Some("outcome") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                switchboard::PolicyAction::Allow
            })
            .unwrap();
        d.invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new())
            .await
            .unwrap();
        let recs = records(&db, "tools/code/");
        assert_eq!(recs[0].status, DispatchStatus::Succeeded);
        assert_eq!(observed.load(Ordering::SeqCst), 1, "after-hooks observe it");
    }

    #[tokio::test]
    async fn a_late_success_on_a_replaced_agent_does_not_bring_it_back() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, c) = (gate.clone(), calls.clone());
        d.register_local_agent_with(
            "worker",
            AgentConfig::new().with_tools(vec![ToolCategory::Code]),
            move |_t, _i| {
                let (g, n) = (g.clone(), c.fetch_add(1, Ordering::SeqCst));
                async move {
                    if n == 0 {
                        g.notified().await;
                        Ok::<_, ToolError>(json!("old"))
                    } else {
                        Err(ToolError::retryable("old is broken"))
                    }
                }
            },
        )
        .unwrap();
        d.enable_health_checks(
            HealthCheckConfig::new()
                .interval(Duration::from_secs(3600))
                .unhealthy_threshold(1),
        );
        let slow = {
            let d = d.clone();
            tokio::spawn(async move {
                d.invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new())
                    .await
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // A second call fails: the old registration is ejected.
        let options = RoutingOptions::new().with_max_attempts(1);
        let _ = d
            .invoke("run", ToolCategory::Code, json!({}), options)
            .await
            .unwrap_err();
        assert!(!d.get_metrics()["worker"].healthy);
        // Replace it, then let the old call succeed late.
        d.register_local_agent("worker", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!("new"))
        })
        .unwrap();
        gate.notify_one();
        assert_eq!(slow.await.unwrap().unwrap().output, json!("old"));
        for strategy in RoutingStrategy::ALL {
            let mut options = RoutingOptions::new().with_strategy(strategy);
            if strategy == RoutingStrategy::Sticky {
                options = options.with_session_id("s1");
            }
            for _ in 0..4 {
                let r = d
                    .invoke("run", ToolCategory::Code, json!({}), options.clone())
                    .await
                    .unwrap();
                assert_eq!(r.output, json!("new"), "{strategy} routed to the old agent");
                assert_eq!(r.attempts, 1, "{strategy} tried the old agent first");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn max_concurrency_is_exact_and_a_lost_race_tries_the_next_agent() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for id in ["a", "b"] {
            let (running, peak) = (running.clone(), peak.clone());
            let (mine, mine_peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let _ = (&running, &peak);
            d.register_local_agent_with(
                id,
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_max_concurrency(1),
                move |_t, _i| {
                    let (mine, mine_peak, peak) = (mine.clone(), mine_peak.clone(), peak.clone());
                    async move {
                        let now = mine.fetch_add(1, Ordering::SeqCst) + 1;
                        mine_peak.fetch_max(now, Ordering::SeqCst);
                        peak.fetch_max(mine_peak.load(Ordering::SeqCst), Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        mine.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, ToolError>(json!(null))
                    }
                },
            )
            .unwrap();
        }
        // Two callers at a time for two agents of capacity one: every call finds
        // a free agent, however the claims race.
        for _ in 0..200 {
            let calls: Vec<_> = (0..2)
                .map(|_| {
                    let d = d.clone();
                    tokio::spawn(async move {
                        d.invoke(
                            "run",
                            ToolCategory::Code,
                            json!({}),
                            RoutingOptions::new().with_strategy(RoutingStrategy::RoundRobin),
                        )
                        .await
                    })
                })
                .collect();
            for call in calls {
                call.await.unwrap().unwrap();
            }
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            1,
            "an agent ran two calls at once"
        );
    }

    /// Many callers at once against agents of capacity one, each call held
    /// open until every caller of its round is inside an agent: a claim that
    /// is not one compare-and-swap lets two calls into one agent, and a lost
    /// race that answered "no agent" would fail a call while another agent
    /// was free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_claims_never_exceed_max_concurrency_and_never_fail_while_capacity_remains() {
        const AGENTS: usize = 8;
        const ROUNDS: usize = 4000;
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let over = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(parking_lot::Mutex::new(Arc::new(
            tokio::sync::Barrier::new(AGENTS),
        )));
        for i in 0..AGENTS {
            let (over, barrier) = (over.clone(), barrier.clone());
            let mine = Arc::new(AtomicUsize::new(0));
            d.register_local_agent_with(
                &format!("a{i}"),
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_max_concurrency(1),
                move |_t, _i| {
                    let (mine, over, barrier) =
                        (mine.clone(), over.clone(), barrier.lock().clone());
                    async move {
                        if mine.fetch_add(1, Ordering::SeqCst) > 0 {
                            over.fetch_add(1, Ordering::SeqCst);
                        }
                        // Held until the whole round is inside agents (bounded,
                        // so a failed call cannot hang the test).
                        let _ = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
                        mine.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, ToolError>(json!(null))
                    }
                },
            )
            .unwrap();
        }
        for round in 0..ROUNDS {
            *barrier.lock() = Arc::new(tokio::sync::Barrier::new(AGENTS));
            let start = Arc::new(std::sync::Barrier::new(AGENTS));
            let strategy = [RoutingStrategy::Random, RoutingStrategy::LeastLoaded][round % 2];
            let calls: Vec<_> = (0..AGENTS)
                .map(|_| {
                    let (d, start) = (d.clone(), start.clone());
                    tokio::task::spawn_blocking(move || {
                        start.wait();
                        tokio::runtime::Handle::current().block_on(d.invoke(
                            "run",
                            ToolCategory::Code,
                            json!({}),
                            RoutingOptions::new().with_strategy(strategy),
                        ))
                    })
                })
                .collect();
            for call in calls {
                if let Err(e) = call.await.unwrap() {
                    panic!("round {round}: a call failed while an agent had capacity: {e}");
                }
            }
        }
        assert_eq!(
            over.load(Ordering::SeqCst),
            0,
            "an agent ran two calls at once"
        );
    }

    /// A call that an error stops after its first attempt is recorded
    /// `failed` with that error, not `cancelled`: its caller did not go away.
    /// Here the session's bound agent fails and is ejected, so failing over
    /// needs a new binding, which a node with strict bindings refuses while
    /// etcd is unreachable.
    #[cfg(feature = "cluster")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_during_failover_is_recorded_as_failed_not_cancelled() {
        use switchboard::cluster::{Cluster, ClusterSettings};
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        let first = TestAgent::start("first", Behaviour::Echo).await;
        let second = TestAgent::start("second", Behaviour::Echo).await;
        for agent in [&first, &second] {
            d.register_agent(
                &agent.name,
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint(agent.endpoint.clone()),
            )
            .unwrap();
        }
        let sticky = || {
            RoutingOptions::new()
                .with_strategy(RoutingStrategy::Sticky)
                .with_session_id("s1")
        };
        // Bound on this node before it joins a cluster.
        let bound = d
            .invoke("run", ToolCategory::Code, json!({}), sticky())
            .await
            .unwrap()
            .agent_id;
        let (bound_agent, other) = if bound == "first" {
            (&first, &second)
        } else {
            (&second, &first)
        };
        bound_agent.set(Behaviour::Status(500));
        d.enable_health_checks(
            HealthCheckConfig::new()
                .interval(Duration::from_secs(3600))
                .unhealthy_threshold(1),
        );
        // Nothing listens where its etcd should be.
        let cluster = Cluster::join(
            &d,
            ClusterSettings {
                etcd: vec![format!("http://127.0.0.1:{}", common::free_port())],
                node_id: "n1".into(),
                listen: "127.0.0.1:7700".into(),
                strict_bindings: true,
                start_from_snapshot: true,
                binding_ttl: Duration::from_secs(3600),
                url: "http://127.0.0.1:7700".into(),
                access: Default::default(),
                secret: None,
                max_unpublished_bindings: 10,
            },
        )
        .await
        .unwrap();

        let err = d
            .invoke("run", ToolCategory::Code, json!({}), sticky())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("etcd is unreachable"), "{err}");
        let failed: Vec<_> = records(&db, "tools/code/run/")
            .into_iter()
            .filter(|r| r.status != DispatchStatus::Succeeded)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        let rec = &failed[0];
        assert_eq!(rec.status, DispatchStatus::Failed, "{rec:?}");
        assert_eq!(rec.error.as_deref(), Some(err.to_string().as_str()));
        assert_eq!(rec.attempts.len(), 1, "{rec:?}");
        assert_eq!(rec.attempts[0].agent_id, bound);
        assert_eq!(rec.attempts[0].outcome, "failed");
        assert_eq!(rec.agent_id.as_deref(), Some(bound.as_str()));
        assert_eq!(other.hits(), 0);
        assert_eq!(d.get_metrics()[&bound].cancelled, 0);
        cluster.leave().await;
    }

    #[tokio::test]
    async fn a_dropped_invoke_is_recorded_as_cancelled_and_frees_its_load() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        let started = Arc::new(tokio::sync::Notify::new());
        let s = started.clone();
        d.register_local_agent("hang", vec![ToolCategory::Code], move |_t, _i| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, ToolError>(json!(null))
            }
        })
        .unwrap();
        let call = d.invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new());
        tokio::select! {
            _ = call => panic!("the call cannot finish"),
            _ = started.notified() => {}
        }
        // The future is dropped here: the caller went away.
        let recs = records(&db, "tools/code/");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].status, DispatchStatus::Cancelled, "{:?}", recs[0]);
        assert_eq!(recs[0].attempts[0].outcome, "cancelled");
        assert_eq!(db.scan("inflight/").count(), 0);
        let m = &d.get_metrics()["hang"];
        assert_eq!(m.active_tasks, 0);
        assert_eq!(m.cancelled, 1);
    }

    /// A commit's before-hook that blocks (here: sleeps 300 ms, as a slow Rego
    /// evaluation or an fsync might), added as one that may block, must not
    /// hold the runtime's only worker: an unrelated task woken meanwhile runs
    /// before the commit finishes. A liveness check, not a timing one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_slow_commit_does_not_stall_other_tasks_on_the_runtime() {
        use std::sync::atomic::AtomicBool;
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        d.register_local_agent("solo", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!("done"))
        })
        .unwrap();
        let hook_started = Arc::new(tokio::sync::Notify::new());
        let commit_done = Arc::new(AtomicBool::new(false));
        {
            let (hook_started, commit_done) = (hook_started.clone(), commit_done.clone());
            PolicyEngine::new(&db)
                .with_blocking_hooks()
                .before_write("tools/**", move |_k, _v, _ctx| {
                    hook_started.notify_one();
                    std::thread::sleep(Duration::from_millis(300));
                    commit_done.store(true, Ordering::SeqCst);
                    switchboard::PolicyAction::Allow
                })
                .unwrap();
        }
        // The unrelated task: woken when the slow commit starts, it reports
        // whether that commit had already finished by the time it got to run.
        let other = {
            let (hook_started, commit_done) = (hook_started.clone(), commit_done.clone());
            tokio::spawn(async move {
                hook_started.notified().await;
                commit_done.load(Ordering::SeqCst)
            })
        };
        // Spawned, so the dispatch runs on the runtime's one worker.
        let call = {
            let d = d.clone();
            tokio::spawn(async move {
                d.invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new())
                    .await
            })
        };
        let waited_for_the_commit = other.await.unwrap();
        assert!(
            !waited_for_the_commit,
            "the other task could not run until the slow commit finished"
        );
        assert_eq!(call.await.unwrap().unwrap().output, json!("done"));
    }
}

/// `invoke_may_block` tells a binding when a call may be started on a thread
/// that must not wait (an event loop): only when nothing in its commits can
/// block — no fsync, no Rego module and no blocking closure over its keys.
#[test]
fn invoke_may_block_names_what_makes_a_dispatch_commit_block() {
    let code = ToolCategory::Code;
    let plain = RoutingOptions::new();
    let session = RoutingOptions::new().with_session_id("s1");

    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    assert!(
        !d.invoke_may_block("run", &code, &plain),
        "no hooks, buffered"
    );
    // A closure that only computes runs where the commit is.
    switchboard::PolicyEngine::new(&db)
        .before_write("tools/**", |_k, _v, _c| switchboard::PolicyAction::Allow)
        .unwrap();
    assert!(!d.invoke_may_block("run", &code, &plain));
    // Rego may take up to its time limit: only the keys in its scope.
    switchboard::PolicyEngine::new(&db)
        .add_rego("tools/search/**", "package t\nallow := true")
        .unwrap();
    assert!(!d.invoke_may_block("run", &code, &plain));
    assert!(d.invoke_may_block("find", &ToolCategory::Search, &plain));
    // A blocking closure over the session bindings covers sticky calls only.
    switchboard::PolicyEngine::new(&db)
        .with_blocking_hooks()
        .before_write("sessions/*", |_k, _v, _c| switchboard::PolicyAction::Allow)
        .unwrap();
    assert!(!d.invoke_may_block("run", &code, &plain));
    assert!(d.invoke_may_block("run", &code, &session));

    // Every commit fsyncs.
    let dir = tempfile::tempdir().unwrap();
    let synced = switchboard::Database::open_with(
        dir.path(),
        switchboard::DatabaseOptions::default().durability(switchboard::Durability::Sync),
    )
    .unwrap();
    assert!(ToolDispatcher::new(synced).invoke_may_block("run", &code, &plain));
}

/// A stdio command registered with relative paths is stored with absolute
/// ones, resolved against the registering process's directory, so it runs
/// the same program after a restart from elsewhere (and the node's
/// allow-list, which names absolute paths, can name it).
#[test]
fn a_stdio_commands_relative_paths_are_stored_absolute() {
    let here = std::env::current_dir().unwrap();
    let program = here.join("bin/search-mcp").display().to_string();
    switchboard::CommandPolicy::new(std::slice::from_ref(&program))
        .unwrap()
        .install();
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let mut server = switchboard::McpServer::stdio("./bin/search-mcp", vec!["--fast".into()]);
    server.command.as_mut().unwrap().cwd = Some("data".into());
    d.register_agent(
        "search",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Search])
            .with_mcp_server(server),
    )
    .unwrap();
    let stored = d.registry().get("search").unwrap();
    let switchboard::AgentTransport::Mcp(server) = stored.transport else {
        panic!("stored as {:?}", stored.transport);
    };
    let command = server.command.unwrap();
    assert_eq!(command.program, program);
    assert_eq!(command.args, ["--fast"]);
    assert_eq!(
        command.cwd.as_deref(),
        Some(here.join("data").display().to_string().as_str())
    );
}
