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
