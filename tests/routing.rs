//! Routing: strategies, session affinity, health checks, registrations and
//! which agents are candidates, through the dispatcher with local and real
//! HTTP agents on 127.0.0.1.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::{
    AgentConfig, AgentRecord, AgentStatus, Database, DispatchStatus, Error, HealthCheckConfig,
    PolicyEngine, RoutingOptions, RoutingStrategy, SessionRecord, ToolCategory, ToolDispatcher,
    ToolError,
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

async fn tally(d: &ToolDispatcher, strategy: RoutingStrategy, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(call(d, strategy).await.unwrap().agent_id)
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_is_exactly_even_and_random_reaches_everyone() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    for id in ["a", "b", "c"] {
        echo_agent(&d, id, vec![ToolCategory::Code]);
    }
    let rr = tally(&d, RoutingStrategy::RoundRobin, 300).await;
    assert_eq!(
        rr,
        HashMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)])
    );
    let random = tally(&d, RoutingStrategy::Random, 300).await;
    assert_eq!(random.len(), 3);
    // Expected 100 each; 40 is over 7 standard deviations below.
    assert!(random.values().all(|&n| n >= 40), "{random:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_never_picks_a_busier_agent_under_concurrency() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let violations = Arc::new(AtomicUsize::new(0));
    for id in ["a", "b", "c", "d"] {
        let (d2, violations) = (d.clone(), violations.clone());
        d.register_local_agent(id, vec![ToolCategory::Code], move |_tool, _input| {
            let (d2, violations) = (d2.clone(), violations.clone());
            async move {
                // Loads as the router counts them, seen from inside a call: the
                // agent that was just chosen can be at most one above the rest.
                let m = d2.get_metrics();
                let mine = m[id].active_tasks;
                if m.values().any(|other| mine > other.active_tasks + 1) {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, ToolError>(json!(id))
            }
        })
        .unwrap();
    }
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                call(&d, RoutingStrategy::LeastLoaded)
                    .await
                    .unwrap()
                    .agent_id
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in calls {
        *counts.entry(c.await.unwrap()).or_default() += 1;
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10; 4],
        "{counts:?}"
    );
    assert!(d.get_metrics().values().all(|m| m.active_tasks == 0));
}

#[tokio::test]
async fn priority_prefers_the_highest_and_spreads_ties() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    for (id, priority) in [("low", 1), ("high1", 10), ("high2", 10), ("mid", 5)] {
        d.register_local_agent_with(
            id,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_priority(priority),
            move |_t, _i| async move { Ok::<_, ToolError>(json!(id)) },
        )
        .unwrap();
    }
    let counts = tally(&d, RoutingStrategy::Priority, 100).await;
    assert_eq!(
        counts,
        HashMap::from([("high1".into(), 50), ("high2".into(), 50)])
    );
    d.unregister_agent("high1").unwrap();
    d.unregister_agent("high2").unwrap();
    assert_eq!(
        tally(&d, RoutingStrategy::Priority, 10).await,
        HashMap::from([("mid".into(), 10)])
    );
}

#[tokio::test]
async fn fastest_shifts_to_the_fast_agent() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let slow = TestAgent::start("slow", Behaviour::Slow(Duration::from_millis(40))).await;
    let fast = TestAgent::start("fast", Behaviour::Echo).await;
    for agent in [&slow, &fast] {
        d.register_agent(
            &agent.name,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_endpoint(&agent.endpoint),
        )
        .unwrap();
    }
    let counts = tally(&d, RoutingStrategy::Fastest, 40).await;
    // Both are tried first while unmeasured; after that the fast one wins.
    assert!(counts["fast"] >= 37, "{counts:?}");
    assert!(slow.hits() >= 1, "a new agent is tried");
}

#[tokio::test]
async fn fastest_penalises_fast_failures() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let failing = TestAgent::start("failing", Behaviour::Status(503)).await;
    let steady = TestAgent::start("steady", Behaviour::Slow(Duration::from_millis(5))).await;
    for agent in [&failing, &steady] {
        d.register_agent(
            &agent.name,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_endpoint(&agent.endpoint)
                .with_timeout(Duration::from_secs(2)),
        )
        .unwrap();
    }
    for _ in 0..20 {
        let r = call(&d, RoutingStrategy::Fastest).await.unwrap();
        assert_eq!(r.agent_id, "steady");
    }
    assert_eq!(
        failing.hits(),
        1,
        "one fast failure is enough to stop preferring it"
    );
}

#[tokio::test]
async fn sticky_sessions_hold_across_calls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first_agent;
    {
        let db = Database::open(&path).unwrap();
        let d = ToolDispatcher::new(db.clone());
        for id in ["a", "b", "c"] {
            echo_agent(&d, id, vec![ToolCategory::Code]);
        }
        let opts = RoutingOptions::new()
            .with_strategy(RoutingStrategy::Sticky)
            .with_session_id("session_abc123");
        first_agent = d
            .invoke("run", ToolCategory::Code, json!({}), opts.clone())
            .await
            .unwrap()
            .agent_id;
        for _ in 0..20 {
            assert_eq!(
                d.invoke("run", ToolCategory::Code, json!({}), opts.clone())
                    .await
                    .unwrap()
                    .agent_id,
                first_agent
            );
        }
        // A session id binds under other strategies too.
        let rr = RoutingOptions::new().with_session_id("s2");
        let bound = d
            .invoke("run", ToolCategory::Code, json!({}), rr.clone())
            .await
            .unwrap()
            .agent_id;
        for _ in 0..5 {
            assert_eq!(
                d.invoke("run", ToolCategory::Code, json!({}), rr.clone())
                    .await
                    .unwrap()
                    .agent_id,
                bound
            );
        }
        let binding: SessionRecord =
            serde_json::from_slice(&db.get("sessions/session_abc123").unwrap().unwrap()).unwrap();
        assert_eq!(binding.agent_id, first_agent);
        assert_eq!(binding.category, ToolCategory::Code);
        let recs = records(&db, "tools/code/run/");
        assert_eq!(
            recs.iter()
                .filter(|r| r.session_id.as_deref() == Some("session_abc123"))
                .count(),
            21
        );
    }
    let db = Database::open(&path).unwrap();
    let d = ToolDispatcher::new(db);
    assert_eq!(
        d.list_agents(),
        ["a", "b", "c"],
        "local registrations survive"
    );
    let opts = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Sticky)
        .with_session_id("session_abc123");
    let err = d
        .invoke("run", ToolCategory::Code, json!({}), opts.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoAgentAvailable { .. }),
        "handlers are not bound yet: {err}"
    );
    for id in ["c", "b", "a"] {
        echo_agent(&d, id, vec![ToolCategory::Code]);
    }
    for _ in 0..5 {
        assert_eq!(
            d.invoke("run", ToolCategory::Code, json!({}), opts.clone())
                .await
                .unwrap()
                .agent_id,
            first_agent
        );
    }
}

/// Bindings are cached in memory; every other way a binding changes must be
/// seen by the next call all the same.
#[tokio::test]
async fn sticky_calls_follow_bindings_edited_deleted_or_rewritten_by_policy() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    for id in ["a", "b", "c"] {
        echo_agent(&d, id, vec![ToolCategory::Code]);
    }
    let sticky = |session: &str| {
        RoutingOptions::new()
            .with_strategy(RoutingStrategy::Sticky)
            .with_session_id(session)
    };
    let agent_of = |d: &ToolDispatcher, session: &'static str| {
        let d = d.clone();
        async move {
            d.invoke("run", ToolCategory::Code, json!({}), sticky(session))
                .await
                .unwrap()
                .agent_id
        }
    };
    let first = agent_of(&d, "s1").await;
    assert_eq!(agent_of(&d, "s1").await, first);
    let binding = |agent: &str| {
        serde_json::to_vec(&SessionRecord {
            agent_id: agent.into(),
            category: ToolCategory::Code,
            created_at_ms: 1,
            last_used_ms: 1,
        })
        .unwrap()
    };

    // Edited by someone else: the next call goes where the store says.
    let other = if first == "c" { "b" } else { "c" };
    db.writes_to_reserved_namespaces()
        .put("sessions/s1", &binding(other))
        .unwrap();
    assert_eq!(agent_of(&d, "s1").await, other);

    // Deleted: the session binds afresh, and the new binding is stored.
    db.writes_to_reserved_namespaces()
        .delete("sessions/s1")
        .unwrap();
    let rebound = agent_of(&d, "s1").await;
    let stored: SessionRecord =
        serde_json::from_slice(&db.get("sessions/s1").unwrap().unwrap()).unwrap();
    assert_eq!(stored.agent_id, rebound);

    // Rewritten by a policy as it is stored: calls follow the stored value.
    PolicyEngine::new(&db)
        .before_write("sessions/**", move |_, value, _| {
            let mut record: SessionRecord = serde_json::from_slice(value).unwrap();
            record.agent_id = "a".into();
            switchboard::PolicyAction::Modify(serde_json::to_vec(&record).unwrap())
        })
        .unwrap();
    db.writes_to_reserved_namespaces()
        .put("sessions/s2", &binding("b"))
        .unwrap();
    assert_eq!(agent_of(&d, "s2").await, "a");
    // A new binding is rewritten too: the call that made it went to the
    // chosen agent, the calls after it follow the stored binding.
    agent_of(&d, "s3").await;
    assert_eq!(agent_of(&d, "s3").await, "a");
}

#[tokio::test]
async fn sticky_needs_a_session_and_bindings_follow_removed_or_unhealthy_agents() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    echo_agent(&d, "a", vec![ToolCategory::Code]);
    echo_agent(&d, "b", vec![ToolCategory::Code]);
    let err = call(&d, RoutingStrategy::Sticky).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("session")),
        "{err}"
    );

    let opts = RoutingOptions::new()
        .with_strategy(RoutingStrategy::Sticky)
        .with_session_id("s1");
    let first = d
        .invoke("run", ToolCategory::Code, json!({}), opts.clone())
        .await
        .unwrap()
        .agent_id;
    d.unregister_agent(&first).unwrap();
    let second = d
        .invoke("run", ToolCategory::Code, json!({}), opts.clone())
        .await
        .unwrap()
        .agent_id;
    assert_ne!(first, second);
    let binding: SessionRecord =
        serde_json::from_slice(&db.get("sessions/s1").unwrap().unwrap()).unwrap();
    assert_eq!(binding.agent_id, second, "the binding is rewritten");

    // An unhealthy bound agent is replaced too.
    d.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_secs(3600))
            .unhealthy_threshold(1),
    );
    d.register_local_agent(&second, vec![ToolCategory::Code], |_t, _i| async {
        Err::<serde_json::Value, _>(ToolError::retryable("crashed"))
    })
    .unwrap();
    echo_agent(&d, "c", vec![ToolCategory::Code]);
    let r = d
        .invoke("run", ToolCategory::Code, json!({}), opts.clone())
        .await
        .unwrap();
    assert_eq!(r.agent_id, "c", "failed over from the bound agent");
    assert!(!d.get_metrics()[&second].healthy);
    let r = d
        .invoke("run", ToolCategory::Code, json!({}), opts.clone())
        .await
        .unwrap();
    assert_eq!(r.attempts, 1);
    let binding: SessionRecord =
        serde_json::from_slice(&db.get("sessions/s1").unwrap().unwrap()).unwrap();
    assert_eq!(binding.agent_id, "c");
}

#[tokio::test]
async fn health_checks_exclude_and_readmit_agents() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let flaky = TestAgent::start("flaky", Behaviour::Echo).await;
    let steady = TestAgent::start("steady", Behaviour::Echo).await;
    for agent in [&flaky, &steady] {
        d.register_agent(
            &agent.name,
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_endpoint(&agent.endpoint),
        )
        .unwrap();
    }
    d.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_secs(3600))
            .timeout(Duration::from_millis(500))
            .unhealthy_threshold(2)
            .healthy_threshold(2),
    );
    let web = || d.invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new());
    flaky.healthy.store(false, Ordering::SeqCst);
    d.check_health_now().await;
    assert!(
        d.get_metrics()["flaky"].healthy,
        "one failed probe is below the threshold"
    );
    d.check_health_now().await;
    assert!(!d.get_metrics()["flaky"].healthy);
    let stored: AgentRecord =
        serde_json::from_slice(&db.get("agents/flaky").unwrap().unwrap()).unwrap();
    assert_eq!(
        stored.status,
        AgentStatus::Unhealthy,
        "status changes are persisted"
    );
    let before = flaky.hits();
    for _ in 0..10 {
        assert_eq!(web().await.unwrap().agent_id, "steady");
    }
    assert_eq!(flaky.hits(), before);

    flaky.healthy.store(true, Ordering::SeqCst);
    d.check_health_now().await;
    d.check_health_now().await;
    assert!(d.get_metrics()["flaky"].healthy);
    let counts: HashMap<String, usize> = {
        let mut c = HashMap::new();
        for _ in 0..10 {
            *c.entry(web().await.unwrap().agent_id).or_default() += 1;
        }
        c
    };
    assert_eq!(counts["flaky"], 5);
    let stored: AgentRecord =
        serde_json::from_slice(&db.get("agents/flaky").unwrap().unwrap()).unwrap();
    assert_eq!(stored.status, AgentStatus::Healthy);

    // Passive marking: consecutive failed invocations mark an agent unhealthy.
    flaky.set(Behaviour::Status(503));
    for _ in 0..4 {
        assert_eq!(web().await.unwrap().agent_id, "steady");
    }
    assert!(!d.get_metrics()["flaky"].healthy);
    assert_eq!(flaky.hits(), before + 5 + 2);
}

#[tokio::test]
async fn health_checks_run_in_the_background() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let agent = TestAgent::start("a", Behaviour::Echo).await;
    d.register_agent(
        "a",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Web])
            .with_endpoint(&agent.endpoint),
    )
    .unwrap();
    agent.healthy.store(false, Ordering::SeqCst);
    // Panic routing off: an ejected agent gets no calls, even as the last one.
    d.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_millis(20))
            .unhealthy_threshold(1)
            .panic_threshold(1.0),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.get_metrics()["a"].healthy {
        assert!(
            std::time::Instant::now() < deadline,
            "the background task never marked the agent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = d
        .invoke("f", ToolCategory::Web, json!({}), RoutingOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoAgentAvailable { reason, .. } if reason.contains("unhealthy")),
        "{err}"
    );
}

#[tokio::test]
async fn policy_denied_candidates_are_skipped() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    for id in ["untrusted", "trusted_agent_1"] {
        echo_agent(&d, id, vec![ToolCategory::Custom("sensitive".into())]);
    }
    echo_agent(&d, "other", vec![ToolCategory::Code]);
    PolicyEngine::new(&db)
        .load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .unwrap();
    let sensitive = ToolCategory::Custom("sensitive".into());
    for _ in 0..6 {
        let r = d
            .invoke(
                "rotate_keys",
                sensitive.clone(),
                json!({}),
                RoutingOptions::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.agent_id, "trusted_agent_1");
    }
    let recs = records(&db, "tools/sensitive/");
    assert_eq!(recs.len(), 6);
    assert!(recs.iter().all(|r| r.status == DispatchStatus::Succeeded));
    let denied_first: Vec<_> = recs.iter().filter(|r| r.attempts.len() == 2).collect();
    assert_eq!(
        denied_first.len(),
        3,
        "round robin offered the untrusted agent first half the time"
    );
    assert_eq!(denied_first[0].attempts[0].outcome, "denied");
    assert!(denied_first[0].attempts[0]
        .error
        .as_deref()
        .unwrap()
        .contains("not trusted"));

    // Every candidate denied: the call fails with the reason and calls nobody.
    d.unregister_agent("trusted_agent_1").unwrap();
    let err = d
        .invoke("rotate_keys", sensitive, json!({}), RoutingOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason.contains("untrusted")),
        "{err}"
    );
    assert_eq!(d.get_metrics()["untrusted"].total, 0);
}

#[tokio::test]
async fn registrations_persist_and_bad_registrations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let agent = TestAgent::start("remote", Behaviour::Echo).await;
    {
        let d = ToolDispatcher::new(Database::open(&path).unwrap());
        d.register_agent(
            "remote",
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code, ToolCategory::Shell])
                .with_endpoint(&agent.endpoint)
                .with_priority(10),
        )
        .unwrap();
        echo_agent(&d, "local", vec![ToolCategory::Code]);
        // Replacing keeps one registration with the new settings.
        d.register_agent(
            "remote",
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Shell])
                .with_endpoint(&agent.endpoint)
                .with_priority(7),
        )
        .unwrap();

        let bad: Vec<(&str, AgentConfig)> = vec![
            (
                "",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint(&agent.endpoint),
            ),
            (
                "has space",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint(&agent.endpoint),
            ),
            ("x", AgentConfig::new().with_endpoint(&agent.endpoint)),
            ("x", AgentConfig::new().with_tools(vec![ToolCategory::Code])),
            (
                "x",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint("ftp://127.0.0.1/x"),
            ),
            (
                "x",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint("not a url"),
            ),
            (
                "x",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Custom("bad cat".into())])
                    .with_endpoint(&agent.endpoint),
            ),
            (
                "x",
                AgentConfig::new()
                    .with_tools(vec![ToolCategory::Code])
                    .with_endpoint(&agent.endpoint)
                    .with_timeout(Duration::ZERO),
            ),
        ];
        for (id, config) in bad {
            let err = d.register_agent(id, config.clone()).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput(_)),
                "{id:?} {config:?}: {err}"
            );
        }
        assert!(matches!(
            d.unregister_agent("nobody"),
            Err(Error::UnknownAgent(_))
        ));
        assert_eq!(d.list_agents(), ["local", "remote"]);
    }
    let db = Database::open(&path).unwrap();
    let d = ToolDispatcher::new(db.clone());
    assert_eq!(d.list_agents(), ["local", "remote"]);
    let stored: AgentRecord =
        serde_json::from_slice(&db.get("agents/remote").unwrap().unwrap()).unwrap();
    assert_eq!(
        (stored.priority, stored.tools.clone()),
        (7, vec![ToolCategory::Shell])
    );
    let r = d
        .invoke("ls", ToolCategory::Shell, json!({}), RoutingOptions::new())
        .await
        .unwrap();
    assert_eq!(
        r.agent_id, "remote",
        "HTTP agents are routable right after a restart"
    );
    let err = d
        .invoke("run", ToolCategory::Code, json!({}), RoutingOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoAgentAvailable { reason, .. } if reason.contains("not bound")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_agents_at_max_concurrency_are_skipped() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    d.register_local_agent_with(
        "single_slot",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_priority(10)
            .with_max_concurrency(1),
        |_t, _i| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, ToolError>(json!("slow"))
        },
    )
    .unwrap();
    echo_agent(&d, "overflow", vec![ToolCategory::Code]);
    let first = {
        let d = d.clone();
        tokio::spawn(async move { call(&d, RoutingStrategy::Priority).await })
    };
    while d.get_metrics()["single_slot"].active_tasks == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = call(&d, RoutingStrategy::Priority).await.unwrap();
    assert_eq!(second.agent_id, "overflow", "the busy agent is skipped");
    assert_eq!(first.await.unwrap().unwrap().agent_id, "single_slot");
    let third = call(&d, RoutingStrategy::Priority).await.unwrap();
    assert_eq!(third.agent_id, "single_slot", "a free slot is used again");
}

#[test]
fn many_stored_http_agents_are_all_routable_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let category_of = |i: usize| {
        if i.is_multiple_of(2) {
            ToolCategory::Code
        } else {
            ToolCategory::Web
        }
    };
    {
        let d = ToolDispatcher::new(Database::open(&path).unwrap());
        for i in 0..300 {
            d.register_agent(
                &format!("agent_{i}"),
                AgentConfig::new()
                    .with_tools(vec![category_of(i)])
                    .with_endpoint("http://127.0.0.1:9/invoke")
                    .with_priority((i % 3) as i32),
            )
            .unwrap();
        }
    }
    let d = ToolDispatcher::new(Database::open(&path).unwrap());
    let select = |category: &ToolCategory, strategy| {
        d.select_agent(category, &RoutingOptions::new().with_strategy(strategy))
            .unwrap()
            .unwrap()
    };
    for category in [ToolCategory::Code, ToolCategory::Web] {
        // Priorities are failover tiers: round robin turns over the top tier
        // (priority 2, 50 agents), which is all healthy.
        let turn: std::collections::HashSet<String> = (0..150)
            .map(|_| select(&category, RoutingStrategy::RoundRobin))
            .collect();
        assert_eq!(turn.len(), 50, "one round robin turn meets the top tier");
        for id in &turn {
            let i: usize = id["agent_".len()..].parse().unwrap();
            assert_eq!((i % 3, category_of(i)), (2, category.clone()), "{id}");
        }
        for _ in 0..20 {
            let id = select(&category, RoutingStrategy::Priority);
            let i: usize = id["agent_".len()..].parse().unwrap();
            assert_eq!((i % 3, category_of(i)), (2, category.clone()), "{id}");
        }
    }
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
