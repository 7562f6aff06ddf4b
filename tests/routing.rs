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
                // `get_metrics` reads agent after agent while other calls are
                // being claimed, so only a view that two reads agree on is
                // judged (loads only grow until the calls start ending).
                let loads = || -> HashMap<String, u64> {
                    d2.get_metrics()
                        .into_iter()
                        .map(|(agent, m)| (agent, m.active_tasks))
                        .collect()
                };
                for _ in 0..100 {
                    let (first, second) = (loads(), loads());
                    if first != second {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let mine = first[id];
                    if first.values().any(|&other| mine > other + 1) {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
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

/// Routing hardening with real local agents and real HTTP agents on
/// 127.0.0.1: health changes never deadlock a policy hook that reads the
/// registry; priorities are failover tiers under every strategy; ejection and
/// re-admission have hysteresis both ways; panic routing; a health URL that
/// does not exist; stored health agrees with routing after a restart.
mod hardening {

    use super::common;

    use common::temp_db;
    use serde_json::json;
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;
    use switchboard::{
        HealthCheckConfig, PolicyAction, PolicyEngine, RoutingOptions, ToolCategory,
        ToolDispatcher, ToolError,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_that_reads_the_registry_during_a_health_change_does_not_deadlock() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db.clone());
        d.register_local_agent("flaky", vec![ToolCategory::Code], |_t, _i| async {
            Err::<serde_json::Value, _>(ToolError::retryable("down"))
        })
        .unwrap();
        d.enable_health_checks(
            HealthCheckConfig::new()
                .interval(Duration::from_secs(3600))
                .unhealthy_threshold(1),
        );
        let seen: Arc<OnceLock<ToolDispatcher>> = Arc::new(OnceLock::new());
        let _ = seen.set(d.clone());
        let reader = seen.clone();
        PolicyEngine::new(&db)
            .before_write("agents/**", move |_k, _v, _ctx| {
                // Reads the registry while its health status is being written.
                let listed = reader.get().map(|d| d.list_agents().len()).unwrap_or(0);
                assert_eq!(listed, 1);
                PolicyAction::Allow
            })
            .unwrap();
        let call = {
            let d = d.clone();
            tokio::spawn(async move {
                d.invoke(
                    "run",
                    ToolCategory::Code,
                    json!({}),
                    RoutingOptions::new().with_max_attempts(1),
                )
                .await
            })
        };
        // Generous: this guards against a hang, it does not measure speed.
        let finished = tokio::time::timeout(Duration::from_secs(30), call).await;
        assert!(finished.is_ok(), "the health change deadlocked on the hook");
        assert!(!d.get_metrics()["flaky"].healthy);
    }

    #[tokio::test]
    async fn retry_after_is_back_pressure_not_a_failure() {
        use common::{Behaviour, TestAgent};
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let busy = TestAgent::start("busy", Behaviour::RetryAfter(503, 1)).await;
        d.register_agent(
            "busy",
            switchboard::AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_endpoint(&busy.endpoint)
                .with_timeout(Duration::from_secs(20)),
        )
        .unwrap();
        d.enable_health_checks(
            HealthCheckConfig::new()
                .interval(Duration::from_secs(3600))
                .unhealthy_threshold(1),
        );
        let err = d
            .invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, switchboard::Error::AgentFailed { .. }),
            "{err:?}"
        );
        let m = &d.get_metrics()["busy"];
        assert!(m.healthy, "a Retry-After pause is not an ejection");
        // The pause is honoured: no call reaches it while it runs.
        let before = busy.hits();
        let _ = d
            .invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
            .await
            .unwrap_err();
        assert_eq!(busy.hits(), before);
    }

    // ---- Priority tiers -------------------------------------------------------

    /// Two HTTP agents at priority 10 and a local agent at priority 5: every
    /// strategy balances within the top tier and falls to the lower one only
    /// when the top tier has nothing left to try.
    async fn priority_is_a_failover_tier(strategy: switchboard::RoutingStrategy) {
        use common::{Behaviour, TestAgent};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let top_a = TestAgent::start("top_a", Behaviour::Echo).await;
        let top_b = TestAgent::start("top_b", Behaviour::Echo).await;
        for agent in [&top_a, &top_b] {
            d.register_agent(
                &agent.name,
                switchboard::AgentConfig::new()
                    .with_tools(vec![ToolCategory::Web])
                    .with_endpoint(&agent.endpoint)
                    .with_priority(10),
            )
            .unwrap();
        }
        let backup_hits = Arc::new(AtomicUsize::new(0));
        let hits = backup_hits.clone();
        d.register_local_agent_with(
            "backup",
            switchboard::AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_priority(5),
            move |_t, _i| {
                hits.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, ToolError>(json!({"agent": "backup"})) }
            },
        )
        .unwrap();
        let options = |i: usize| {
            let o = RoutingOptions::new().with_strategy(strategy);
            if strategy == switchboard::RoutingStrategy::Sticky {
                o.with_session_id(format!("session_{i}"))
            } else {
                o
            }
        };
        for i in 0..20 {
            let r = d
                .invoke("fetch", ToolCategory::Web, json!({}), options(i))
                .await
                .unwrap();
            assert!(r.agent_id.starts_with("top_"), "{strategy:?}: {r:?}");
        }
        assert_eq!(backup_hits.load(Ordering::SeqCst), 0, "{strategy:?}");
        if strategy != switchboard::RoutingStrategy::Fastest {
            assert!(
                top_a.hits() > 0 && top_b.hits() > 0,
                "{strategy:?} balances within the tier: {} / {}",
                top_a.hits(),
                top_b.hits()
            );
        }
        // The whole top tier fails: the call falls to the next tier.
        top_a.set(Behaviour::Status(503));
        top_b.set(Behaviour::Status(503));
        let r = d
            .invoke("fetch", ToolCategory::Web, json!({}), options(99))
            .await
            .unwrap();
        assert_eq!(
            (r.agent_id.as_str(), r.attempts),
            ("backup", 3),
            "{strategy:?}"
        );
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_round_robin() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::RoundRobin).await;
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_random() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::Random).await;
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_least_loaded() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::LeastLoaded).await;
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_fastest() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::Fastest).await;
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_sticky_first_bind() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::Sticky).await;
    }

    #[tokio::test]
    async fn priority_is_a_failover_tier_under_priority() {
        priority_is_a_failover_tier(switchboard::RoutingStrategy::Priority).await;
    }

    // ---- Hysteresis -----------------------------------------------------------

    /// A local agent that fails on `{"fail": true}`, answers a tool error on
    /// `{"tool_error": true}`, waits for `release` on `{"slow": true}`, and
    /// answers otherwise.
    fn register_switchable(
        d: &ToolDispatcher,
        release: Arc<tokio::sync::Notify>,
        started: Arc<tokio::sync::Notify>,
    ) {
        d.register_local_agent("solo", vec![ToolCategory::Code], move |_t, input| {
            let (release, started) = (release.clone(), started.clone());
            async move {
                if input["fail"] == true {
                    return Err(ToolError::retryable("down"));
                }
                if input["tool_error"] == true {
                    return Err(ToolError::new("bad request"));
                }
                if input["slow"] == true {
                    started.notify_one();
                    release.notified().await;
                }
                Ok(json!("ok"))
            }
        })
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lucky_call_does_not_readmit_an_ejected_agent() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let (release, started) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        register_switchable(&d, release.clone(), started.clone());
        d.enable_health_checks(
            HealthCheckConfig::new()
                .interval(Duration::from_secs(3600))
                .unhealthy_threshold(1)
                .healthy_threshold(3),
        );
        let once = RoutingOptions::new().with_max_attempts(1);
        // A call in flight when the agent is ejected...
        let slow = {
            let (d, once) = (d.clone(), once.clone());
            tokio::spawn(async move {
                d.invoke("run", ToolCategory::Code, json!({"slow": true}), once)
                    .await
            })
        };
        started.notified().await;
        let failed = d
            .invoke(
                "run",
                ToolCategory::Code,
                json!({"fail": true}),
                once.clone(),
            )
            .await;
        assert!(failed.is_err());
        assert!(
            !d.get_metrics()["solo"].healthy,
            "ejected after one failure"
        );
        // ...succeeds afterwards: one success of the three needed.
        release.notify_one();
        slow.await.unwrap().unwrap();
        assert!(
            !d.get_metrics()["solo"].healthy,
            "one lucky call does not re-admit it"
        );
        // Calls reach it in panic routing (it is the category's only agent); a
        // tool error is an answer, and the third success in a row re-admits it.
        let tool_error = d
            .invoke(
                "run",
                ToolCategory::Code,
                json!({"tool_error": true}),
                once.clone(),
            )
            .await;
        assert!(
            matches!(tool_error, Err(switchboard::Error::ToolFailed { .. })),
            "{tool_error:?}"
        );
        assert!(!d.get_metrics()["solo"].healthy, "two successes of three");
        d.invoke("run", ToolCategory::Code, json!({}), once.clone())
            .await
            .unwrap();
        assert!(
            d.get_metrics()["solo"].healthy,
            "three successes in a row re-admit it"
        );
    }

    // ---- Panic routing --------------------------------------------------------

    async fn http_agents(d: &ToolDispatcher, names: &[&str]) -> Vec<common::TestAgent> {
        let mut agents = Vec::new();
        for name in names {
            let agent = common::TestAgent::start(name, common::Behaviour::Echo).await;
            d.register_agent(
                name,
                switchboard::AgentConfig::new()
                    .with_tools(vec![ToolCategory::Web])
                    .with_endpoint(&agent.endpoint),
            )
            .unwrap();
            agents.push(agent);
        }
        agents
    }

    fn probe_once_config() -> HealthCheckConfig {
        HealthCheckConfig::new()
            .interval(Duration::from_secs(3600))
            .unhealthy_threshold(1)
            .healthy_threshold(2)
    }

    #[tokio::test]
    async fn a_category_with_every_agent_ejected_still_routes() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let agents = http_agents(&d, &["one", "two"]).await;
        d.enable_health_checks(probe_once_config());
        for agent in &agents {
            agent
                .healthy
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        d.check_health_now().await;
        let m = d.get_metrics();
        assert!(!m["one"].healthy && !m["two"].healthy);
        let r = d
            .invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
            .await
            .unwrap();
        assert!(r.agent_id == "one" || r.agent_id == "two");
        assert_eq!(
            d.get_metrics()[&r.agent_id].panic_calls,
            1,
            "counted in metrics"
        );
    }

    #[tokio::test]
    async fn a_tier_mostly_ejected_routes_to_all_its_members() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let agents = http_agents(&d, &["a", "b", "c"]).await;
        d.enable_health_checks(probe_once_config());
        // One of three ejected: not a panic, the ejected agent gets nothing.
        agents[0]
            .healthy
            .store(false, std::sync::atomic::Ordering::SeqCst);
        d.check_health_now().await;
        for _ in 0..6 {
            d.invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
                .await
                .unwrap();
        }
        assert_eq!(agents[0].hits(), 0);
        // Two of three: more than half the tier is out, it routes to all three.
        agents[1]
            .healthy
            .store(false, std::sync::atomic::Ordering::SeqCst);
        d.check_health_now().await;
        assert!(!d.get_metrics()["b"].healthy);
        for _ in 0..6 {
            d.invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
                .await
                .unwrap();
        }
        assert!(
            agents[0].hits() > 0 && agents[1].hits() > 0,
            "{} {}",
            agents[0].hits(),
            agents[1].hits()
        );
    }

    #[tokio::test]
    async fn a_health_url_that_does_not_exist_does_not_eject_the_agent() {
        let (_dir, db) = temp_db();
        let d = ToolDispatcher::new(db);
        let agent = common::TestAgent::start("nohealth", common::Behaviour::Echo).await;
        let missing = agent.endpoint.replace("/invoke", "/no-such-route");
        d.register_agent(
            "nohealth",
            switchboard::AgentConfig::new()
                .with_tools(vec![ToolCategory::Web])
                .with_endpoint(&agent.endpoint)
                .with_health_url(&missing),
        )
        .unwrap();
        d.enable_health_checks(probe_once_config());
        d.check_health_now().await;
        d.check_health_now().await;
        assert!(
            d.get_metrics()["nohealth"].healthy,
            "a 404 health URL is no health endpoint"
        );
    }

    // ---- Stored health after a restart ----------------------------------------

    #[tokio::test]
    async fn a_stored_unhealthy_agent_starts_ejected_after_a_restart() {
        use switchboard::namespace::AgentStatus;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let agents;
        {
            let d = ToolDispatcher::new(switchboard::Database::open(&path).unwrap());
            agents = http_agents(&d, &["down", "up"]).await;
            d.enable_health_checks(probe_once_config());
            agents[0]
                .healthy
                .store(false, std::sync::atomic::Ordering::SeqCst);
            d.check_health_now().await;
            assert_eq!(
                d.registry().get("down").unwrap().status,
                AgentStatus::Unhealthy
            );
        }
        let d = ToolDispatcher::new(switchboard::Database::open(&path).unwrap());
        assert_eq!(
            d.registry().get("down").unwrap().status,
            AgentStatus::Unhealthy
        );
        assert!(
            !d.get_metrics()["down"].healthy,
            "routing agrees with the stored status"
        );
        for _ in 0..4 {
            let r = d
                .invoke("fetch", ToolCategory::Web, json!({}), RoutingOptions::new())
                .await
                .unwrap();
            assert_eq!(r.agent_id, "up");
        }
        assert_eq!(agents[0].hits(), 0);
        // Re-admitted by the usual rule: healthy_threshold probes in a row.
        d.enable_health_checks(probe_once_config());
        agents[0]
            .healthy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        d.check_health_now().await;
        assert!(!d.get_metrics()["down"].healthy, "one probe of two");
        d.check_health_now().await;
        assert!(d.get_metrics()["down"].healthy);
        assert_eq!(
            d.registry().get("down").unwrap().status,
            AgentStatus::Healthy
        );
    }
}
