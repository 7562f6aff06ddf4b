//! Routing hardening with real local agents and real HTTP agents on
//! 127.0.0.1: health changes never deadlock a policy hook that reads the
//! registry; priorities are failover tiers under every strategy; ejection and
//! re-admission have hysteresis both ways; panic routing; a health URL that
//! does not exist; stored health agrees with routing after a restart.

mod common;

use common::temp_db;
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchboard::{
    HealthCheckConfig, PolicyAction, PolicyEngine, RoutingOptions, ToolCategory, ToolDispatcher,
    ToolError,
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
