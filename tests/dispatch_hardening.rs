//! Dispatch hardening: outcomes are never lost, replaced agents stay out,
//! `max_concurrency` is exact, and dropped calls are recorded as cancelled.
//! Real local agents and real HTTP agents on 127.0.0.1.

mod common;

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
/// evaluation or an fsync might) must not hold the runtime's only worker:
/// an unrelated task woken meanwhile runs before the commit finishes. A
/// liveness check, not a timing one.
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
