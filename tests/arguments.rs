//! A call's arguments, visible to policies and kept (redacted, capped) in its
//! dispatch record; output kept when configured.

mod common;

use common::{records, temp_db, Behaviour, TestAgent};
use serde_json::json;
use std::sync::{Arc, Mutex};
use switchboard::{
    AgentConfig, Decision, DecisionKind, DispatchStatus, DispatcherConfig, Error, PolicyAction,
    PolicyContext, PolicyEngine, RoutingOptions, ToolCategory, ToolDispatcher, REDACTED,
};

const SHELL_GUARD: &str = include_str!("../policies/shell_guard.rego");

#[tokio::test]
async fn shell_guard_denies_rm_rf_through_a_real_http_agent_and_the_record_shows_redacted_arguments(
) {
    let (_tmp, db) = temp_db();
    PolicyEngine::new(&db)
        .add_rego("tools/shell/**", SHELL_GUARD)
        .unwrap();
    let d = ToolDispatcher::new(db.clone());
    d.set_config(DispatcherConfig::new().redact("api_key"))
        .unwrap();
    let agent = TestAgent::start("shell_agent", Behaviour::Echo).await;
    d.register_agent(
        "shell_agent",
        AgentConfig::new()
            .with_tools(vec![ToolCategory::Shell])
            .with_endpoint(&agent.endpoint),
    )
    .unwrap();

    let denied = d
        .invoke(
            "run",
            ToolCategory::Shell,
            json!({"command": "rm -rf /var/lib/app", "api_key": "sk-live-123"}),
            RoutingOptions::new(),
        )
        .await;
    let reason = match denied {
        Err(Error::PolicyDenied { reason, .. }) => reason,
        other => panic!("expected a policy denial, got {other:?}"),
    };
    assert!(reason.contains("rm -rf /var/lib/app"), "{reason}");
    assert!(reason.contains("recursive rm"), "{reason}");
    assert_eq!(agent.hits(), 0, "a denied call never reaches the agent");

    let ok = d
        .invoke(
            "run",
            ToolCategory::Shell,
            json!({"command": "ls -la", "api_key": "sk-live-456"}),
            RoutingOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        ok.output["input"]["api_key"], "sk-live-456",
        "the agent gets the real key"
    );
    assert_eq!(agent.hits(), 1);

    // The refused call was never dispatched: its decision is on record,
    // with who, which tool and the (redacted) arguments.
    let decisions: Vec<Decision> = db
        .scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect();
    let refusal = decisions
        .iter()
        .find(|d| d.decision == DecisionKind::Deny)
        .unwrap();
    assert_eq!(refusal.context["agent_id"], "shell_agent");
    assert_eq!(refusal.context["tool"], "run");
    assert!(
        refusal.by.contains("switchboard.shell_guard"),
        "{}",
        refusal.by
    );
    assert_eq!(
        refusal.input,
        Some(json!({"command": "rm -rf /var/lib/app", "api_key": REDACTED}))
    );
    let stored = records(&db, "tools/shell/run/");
    assert_eq!(
        stored.len(),
        1,
        "only the allowed call has a dispatch record"
    );
    let succeeded = &stored[0];
    assert_eq!(succeeded.status, DispatchStatus::Succeeded);
    assert_eq!(
        succeeded.input,
        Some(json!({"command": "ls -la", "api_key": REDACTED}))
    );
    assert!(succeeded.output.is_none(), "output is not kept by default");
    // No copy of either key anywhere in the store (records, decision log).
    for kv in db.scan("") {
        let (key, value) = kv.unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("sk-live"), "{key} holds a key: {text}");
    }
}

#[tokio::test]
async fn closure_hooks_see_the_arguments_on_dispatch_and_outcome_writes() {
    let (_tmp, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    type Seen = Arc<Mutex<Vec<(String, Option<serde_json::Value>)>>>;
    let seen: Seen = Arc::default();
    let before = seen.clone();
    policy
        .before_write("tools/**", move |_, _, ctx: &PolicyContext| {
            before.lock().unwrap().push((
                ctx.get("action").unwrap_or_default().to_string(),
                ctx.input().cloned(),
            ));
            match ctx.input().and_then(|i| i["amount"].as_u64()) {
                Some(amount) if amount > 100 => {
                    PolicyAction::Deny(format!("refunds over 100 need a human (got {amount})"))
                }
                _ => PolicyAction::Allow,
            }
        })
        .unwrap();
    let after = seen.clone();
    policy
        .after_write("tools/**", move |_, _, ctx: &PolicyContext| {
            after.lock().unwrap().push((
                format!("after {}", ctx.get("action").unwrap_or_default()),
                ctx.input().cloned(),
            ));
            PolicyAction::Allow
        })
        .unwrap();
    let d = ToolDispatcher::new(db.clone());
    common::echo_agent(
        &d,
        "payments",
        vec![ToolCategory::Custom("payments".into())],
    );
    let payments = ToolCategory::Custom("payments".into());

    let err = d
        .invoke(
            "refund",
            payments.clone(),
            json!({"amount": 250}),
            RoutingOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("refunds over 100 need a human (got 250)"),
        "{err}"
    );
    d.invoke(
        "refund",
        payments,
        json!({"amount": 20}),
        RoutingOptions::new(),
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let small = Some(json!({"amount": 20}));
    assert!(seen.contains(&("dispatch".into(), Some(json!({"amount": 250})))));
    assert!(seen.contains(&("dispatch".into(), small.clone())));
    assert!(
        seen.contains(&("after outcome".into(), small.clone())),
        "{seen:?}"
    );
    // Other writes carry no arguments.
    db.put("notes/a", b"{}").unwrap();
    assert_eq!(PolicyContext::new().input(), None);
}

#[tokio::test]
async fn a_before_write_modify_masks_the_stored_arguments_for_good() {
    let (_tmp, db) = temp_db();
    PolicyEngine::new(&db)
        .before_write("tools/**", |_, value, ctx: &PolicyContext| {
            if ctx.get("action") != Some("dispatch") {
                return PolicyAction::Allow;
            }
            let mut record: serde_json::Value = serde_json::from_slice(value).unwrap();
            record["input"]["password"] = json!("***");
            PolicyAction::Modify(serde_json::to_vec(&record).unwrap())
        })
        .unwrap();
    let d = ToolDispatcher::new(db.clone());
    common::echo_agent(&d, "db_agent", vec![ToolCategory::Database]);
    d.invoke(
        "login",
        ToolCategory::Database,
        json!({"user": "ann", "password": "hunter2"}),
        RoutingOptions::new(),
    )
    .await
    .unwrap();
    let stored = records(&db, "tools/database/login/");
    assert_eq!(stored[0].status, DispatchStatus::Succeeded);
    assert_eq!(
        stored[0].input,
        Some(json!({"user": "ann", "password": "***"}))
    );
}

#[tokio::test]
async fn long_arguments_are_capped_with_a_marker_and_output_is_kept_when_configured() {
    let (_tmp, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    d.set_config(
        DispatcherConfig::new()
            .max_input_bytes(64)
            .record_output(512)
            .redact("echo.token"),
    )
    .unwrap();
    common::echo_agent(&d, "code_agent", vec![ToolCategory::Code]);
    d.invoke(
        "long",
        ToolCategory::Code,
        json!({"code": "x".repeat(1000)}),
        RoutingOptions::new(),
    )
    .await
    .unwrap();
    d.invoke(
        "short",
        ToolCategory::Code,
        json!({"token": "t0k"}),
        RoutingOptions::new(),
    )
    .await
    .unwrap();
    let long = &records(&db, "tools/code/long/")[0];
    assert!(long.input_truncated);
    let head = long.input.as_ref().unwrap().as_str().unwrap();
    assert!(
        head.starts_with("{\"code\":\"xxx") && head.len() == 64,
        "{head}"
    );
    assert!(
        long.output_truncated,
        "the echoed output is over its cap too"
    );

    let short = &records(&db, "tools/code/short/")[0];
    assert!(!short.input_truncated);
    // `echo.token` is a path in the output (the agent echoes under "echo"),
    // not in the arguments.
    assert_eq!(short.input, Some(json!({"token": "t0k"})));
    assert_eq!(
        short.output,
        Some(json!({"agent": "code_agent", "tool": "short", "echo": {"token": REDACTED}}))
    );
    assert!(d.set_config(DispatcherConfig::new().redact("")).is_err());
}

#[tokio::test]
async fn rego_sees_the_call_arguments_as_input_input_and_the_stored_copy_as_input_value_input() {
    let (_tmp, db) = temp_db();
    PolicyEngine::new(&db)
        .add_rego(
            "tools/payments/**",
            r#"package refunds
import rego.v1
deny contains msg if {
    input.context.action == "dispatch"
    input.input.amount > 100
    input.value.input.card == "[redacted]"
    msg := sprintf("refund of %v needs a human", [input.input.amount])
}"#,
        )
        .unwrap();
    let d = ToolDispatcher::new(db.clone());
    d.set_config(DispatcherConfig::new().redact("card"))
        .unwrap();
    common::echo_agent(
        &d,
        "payments",
        vec![ToolCategory::Custom("payments".into())],
    );
    let err = d
        .invoke(
            "refund",
            ToolCategory::Custom("payments".into()),
            json!({"amount": 150, "card": "4111"}),
            RoutingOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refund of 150 needs a human"),
        "{err}"
    );
}

#[test]
fn the_records_table_of_the_config_file_sets_what_records_keep() {
    let (_tmp, db) = temp_db();
    let d = ToolDispatcher::new(db);
    let config = switchboard::config::Config::parse(
        "[records]\nmax_input_bytes = 128\noutput = true\nredact = [\"api_key\"]\n",
    )
    .unwrap();
    config.register_agents(&d).unwrap();
    assert_eq!(
        d.config(),
        DispatcherConfig::new()
            .max_input_bytes(128)
            .record_output(switchboard::DEFAULT_MAX_OUTPUT_BYTES)
            .redact("api_key")
    );
}
