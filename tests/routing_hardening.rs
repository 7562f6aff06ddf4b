//! Routing hardening with real local agents: health changes never deadlock
//! a policy hook that reads the registry.

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
