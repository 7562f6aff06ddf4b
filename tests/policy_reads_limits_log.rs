//! Read hooks, rate limits and the decision log.

mod common;

use common::temp_db;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use switchboard::policy::{Op, RateLimitOp, RateLimitScope};
use switchboard::{
    Database, Error, PolicyAction, PolicyContext, PolicyEngine, RoutingOptions, ToolCategory,
    ToolDispatcher, ToolError,
};
use switchboard::{Decision, DecisionKind, DecisionLogRetention};

fn decisions(db: &Database) -> Vec<Decision> {
    db.scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

/// Minute-window tests must not straddle a window edge: wait out the last
/// two seconds of a minute.
fn away_from_minute_edge() {
    let left = 60_000 - switchboard::namespace::now_ms() % 60_000;
    if left < 2_000 {
        std::thread::sleep(Duration::from_millis(left + 50));
    }
}

fn admin() -> PolicyContext {
    PolicyContext::new().with("role", "admin")
}

#[test]
fn before_read_denials_refuse_gets_and_scans_skip_the_key() {
    let (_dir, db) = temp_db();
    db.put("secrets/k1", b"\"s1\"").unwrap();
    db.put("notes/a", b"1").unwrap();
    db.put("secrets/k2", b"\"s2\"").unwrap();
    PolicyEngine::new(&db)
        .before_read("secrets/**", |_, value, ctx| {
            assert!(value.is_empty(), "before-read hooks see no value");
            match ctx.get("role") {
                Some("admin") => PolicyAction::Allow,
                _ => PolicyAction::Deny("secrets are for admins".into()),
            }
        })
        .unwrap();
    let err = db.get("secrets/k1").unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason == "secrets are for admins"),
        "{err}"
    );
    assert_eq!(
        db.get_with("secrets/k1", &admin()).unwrap().unwrap(),
        b"\"s1\""
    );
    assert_eq!(db.get("notes/a").unwrap().unwrap(), b"1");
    let err = db.get("secrets/missing").unwrap_err();
    assert!(
        err.to_string().contains("admins"),
        "missing keys are refused alike: {err}"
    );

    let seen: Vec<String> = db
        .scan("")
        .map(|kv| kv.unwrap().0)
        .filter(|k| !k.starts_with("policy_log/"))
        .collect();
    assert_eq!(
        seen,
        ["notes/a"],
        "denied keys are skipped, the scan goes on"
    );
    let as_admin: Vec<String> = db
        .scan_from("secrets/")
        .as_reader(&admin())
        .iter()
        .map(|kv| kv.unwrap().0)
        .collect();
    assert_eq!(as_admin, ["secrets/k1", "secrets/k2"]);

    // The borrowing scan is judged the same way.
    let mut visited = Vec::new();
    db.scan_from("")
        .each(|key, _| {
            if !key.starts_with("policy_log/") {
                visited.push(key.to_string());
            }
            true
        })
        .unwrap();
    assert_eq!(visited, ["notes/a"]);
    let mut as_admin = Vec::new();
    db.scan_from("secrets/")
        .as_reader(&admin())
        .each(|key, value| {
            as_admin.push((key.to_string(), value.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(
        as_admin,
        [
            ("secrets/k1".to_string(), b"\"s1\"".to_vec()),
            ("secrets/k2".to_string(), b"\"s2\"".to_vec())
        ]
    );
}

#[test]
fn after_read_modify_redacts_what_readers_get_but_not_what_is_stored() {
    let (_dir, db) = temp_db();
    let record = json!({"tool": "deploy", "input": {"api_key": "sk-live-123", "target": "prod"}});
    db.writes_to_reserved_namespaces()
        .put("tools/web/deploy/1", record.to_string().as_bytes())
        .unwrap();
    db.writes_to_reserved_namespaces()
        .put(
            "tools/web/deploy/2",
            json!({"input": {}}).to_string().as_bytes(),
        )
        .unwrap();
    PolicyEngine::new(&db)
        .after_read("tools/**", |_, value, ctx| {
            if ctx.get("role") == Some("admin") {
                return PolicyAction::Allow;
            }
            let mut v: serde_json::Value = serde_json::from_slice(value).unwrap();
            match v["input"].get_mut("api_key") {
                Some(key) => {
                    *key = json!("***");
                    PolicyAction::Modify(serde_json::to_vec(&v).unwrap())
                }
                None => PolicyAction::Allow,
            }
        })
        .unwrap();
    let read: serde_json::Value =
        serde_json::from_slice(&db.get("tools/web/deploy/1").unwrap().unwrap()).unwrap();
    assert_eq!(read["input"], json!({"api_key": "***", "target": "prod"}));
    let stored: serde_json::Value = serde_json::from_slice(
        &db.get_with("tools/web/deploy/1", &admin())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, record, "the stored value is untouched");
    let scanned: Vec<serde_json::Value> = db
        .scan("tools/web/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect();
    assert_eq!(scanned.len(), 2);
    assert_eq!(scanned[0]["input"]["api_key"], "***");
    let mut visited = Vec::new();
    db.scan_from("tools/web/")
        .each(|_, value| {
            visited.push(serde_json::from_slice::<serde_json::Value>(value).unwrap());
            true
        })
        .unwrap();
    assert_eq!(visited, scanned, "the borrowing scan redacts alike");
    // One Modify decision per redacted read (get, scan, scan_each), none for
    // admin reads.
    let modifies: Vec<_> = decisions(&db)
        .into_iter()
        .filter(|d| d.decision == DecisionKind::Modify)
        .collect();
    assert_eq!(modifies.len(), 3);
    assert!(modifies
        .iter()
        .all(|d| d.op == "get" && d.key == "tools/web/deploy/1"));
}

#[test]
fn rego_modules_can_opt_into_reads() {
    let (_dir, db) = temp_db();
    db.put("notes/public", br#"{"secret": false}"#).unwrap();
    db.put("notes/private", br#"{"secret": true}"#).unwrap();
    let module = r#"
package reads.secret
import rego.v1
deny contains "secret notes are hidden" if {
    input.op == "get"
    input.phase == "after"
    input.value.secret
    not input.context.role == "admin"
}"#;
    PolicyEngine::new(&db)
        .add_rego_for("notes/**", module, &[Op::Get])
        .unwrap();
    assert!(db.get("notes/public").unwrap().is_some());
    assert!(matches!(
        db.get("notes/private"),
        Err(Error::PolicyDenied { .. })
    ));
    assert!(db
        .get_with("notes/private", &admin().with("x", "y"))
        .unwrap()
        .is_some());
    let keys: Vec<String> = db.scan("notes/").map(|kv| kv.unwrap().0).collect();
    assert_eq!(keys, ["notes/public"]);
    // The module judges reads only: writes pass.
    db.put("notes/private", br#"{"secret": true, "v": 2}"#)
        .unwrap();

    // Directories declare reads in the header.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.rego"),
        format!("# scope: files/**\n# ops: get\n{module}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.rego"),
        format!("# scope: x/**\n# ops: read\n{module}"),
    )
    .unwrap();
    let err = PolicyEngine::new(&db).load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("unknown op \"read\""), "{err}");
}

#[test]
fn log_outcomes_allow_and_are_recorded_once() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("agents/*", |_, _, _| {
            PolicyAction::Log("registration change".into())
        })
        .unwrap();
    policy
        .before_write("notes/*", |_, _, _| {
            PolicyAction::Modify(b"\"stamped\"".to_vec())
        })
        .unwrap();
    policy
        .before_write("locked/*", |_, _, _| PolicyAction::Deny("locked".into()))
        .unwrap();
    db.writes_to_reserved_namespaces()
        .put_with(
            "agents/a",
            b"{}",
            &PolicyContext::new().with("agent_id", "a"),
        )
        .unwrap();
    db.put("notes/n", b"1").unwrap();
    assert!(db.put("locked/x", b"1").is_err());
    assert_eq!(
        db.get("agents/a").unwrap().unwrap(),
        b"{}",
        "Log allows the write unchanged"
    );
    let log = decisions(&db);
    let summary: Vec<(DecisionKind, &str, &str)> = log
        .iter()
        .map(|d| (d.decision, d.key.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (DecisionKind::Log, "agents/a", "registration change"),
            (
                DecisionKind::Modify,
                "notes/n",
                "value rewritten before storing"
            ),
            (DecisionKind::Deny, "locked/x", "locked"),
        ]
    );
    assert_eq!(log[0].context, json!({"agent_id": "a"}));
    assert_eq!(
        (log[0].op.as_str(), log[0].phase.as_str()),
        ("put", "before")
    );
    assert!(
        log[2].by.contains("before hook on locked/*"),
        "{}",
        log[2].by
    );
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    // Nobody writes the log but the chain.
    assert!(matches!(
        db.put("policy_log/forged", b"{}"),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        db.delete("policy_log/x"),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn the_decision_log_is_pruned_by_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Database::open(&path).unwrap();
        let policy = PolicyEngine::new(&db);
        policy
            .before_write("locked/*", |key, _, _| {
                PolicyAction::Deny(format!("no {key}"))
            })
            .unwrap();
        policy.set_decision_log_retention(DecisionLogRetention {
            max_entries: 5,
            max_age: None,
        });
        for i in 0..12 {
            assert!(db.put(&format!("locked/k{i:02}"), b"1").is_err());
        }
        let reasons: Vec<String> = decisions(&db).into_iter().map(|d| d.reason).collect();
        assert_eq!(
            reasons,
            [
                "no locked/k07",
                "no locked/k08",
                "no locked/k09",
                "no locked/k10",
                "no locked/k11"
            ]
        );
    }
    // The count survives a restart; age pruning drops what is too old.
    let db = Database::open(&path).unwrap();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("locked/*", |key, _, _| {
            PolicyAction::Deny(format!("no {key}"))
        })
        .unwrap();
    policy.set_decision_log_retention(DecisionLogRetention {
        max_entries: 5,
        max_age: Some(Duration::from_millis(300)),
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(db.put("locked/new", b"1").is_err());
    let reasons: Vec<String> = decisions(&db).into_iter().map(|d| d.reason).collect();
    assert_eq!(reasons, ["no locked/new"]);
}

#[test]
fn rate_limits_are_exact_under_concurrency_and_reset_after_the_window() {
    let (_dir, db) = temp_db();
    PolicyEngine::new(&db)
        .add_rate_limit_per(
            RateLimitOp::Put,
            20,
            Duration::from_millis(1500),
            RateLimitScope::Global,
        )
        .unwrap();
    // Align to the start of a window so the burst fits in one.
    let window_ms = 1500u64;
    let now = switchboard::namespace::now_ms();
    std::thread::sleep(Duration::from_millis(window_ms - now % window_ms + 20));
    let db = Arc::new(db);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || db.put(&format!("notes/{i}"), b"1"))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 20);
    let limited = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    match limited {
        Error::RateLimited { limit, retry_after } => {
            assert!(limit.contains("at most 20 put"), "{limit}");
            assert!(*retry_after <= Duration::from_millis(window_ms));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        db.scan("notes/").count(),
        20,
        "refused writes stored nothing"
    );
    let now = switchboard::namespace::now_ms();
    std::thread::sleep(Duration::from_millis(window_ms - now % window_ms + 20));
    db.put("notes/after_reset", b"1").unwrap();
}

#[tokio::test]
async fn dispatch_limits_per_agent_tool_and_session() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    for id in ["a", "b"] {
        d.register_local_agent(id, vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!(null))
        })
        .unwrap();
    }
    let policy = PolicyEngine::new(&db);
    // Minute windows: nothing here may reset mid-test.
    away_from_minute_edge();
    policy
        .add_rate_limit(RateLimitOp::Dispatch, 2, RateLimitScope::PerAgent)
        .unwrap();
    policy
        .add_rate_limit(RateLimitOp::Dispatch, 100, RateLimitScope::PerTool)
        .unwrap();
    let call =
        |tool: &'static str| d.invoke(tool, ToolCategory::Code, json!({}), RoutingOptions::new());
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(call("run").await.unwrap().agent_id);
    }
    served.sort();
    assert_eq!(
        served,
        ["a", "a", "b", "b"],
        "a limited agent is passed over for the next"
    );
    let err = call("run").await.unwrap_err();
    assert!(
        matches!(&err, Error::RateLimited { limit, .. } if limit.contains("agent_id")),
        "{err}"
    );
    let recorded: Vec<_> = decisions(&db)
        .into_iter()
        .filter(|d| d.by == "rate limit")
        .collect();
    assert_eq!(recorded.len(), 2, "one refusal recorded per candidate");

    let (_dir2, db2) = temp_db();
    let d2 = ToolDispatcher::new(db2.clone());
    d2.register_local_agent("a", vec![ToolCategory::Code], |_t, _i| async {
        Ok::<_, ToolError>(json!(null))
    })
    .unwrap();
    let policy = PolicyEngine::new(&db2);
    policy
        .add_rate_limit(RateLimitOp::Dispatch, 2, RateLimitScope::PerTool)
        .unwrap();
    policy
        .add_rate_limit(RateLimitOp::Dispatch, 1, RateLimitScope::PerSession)
        .unwrap();
    let invoke = |tool: &'static str, session: Option<&'static str>| {
        let mut o = RoutingOptions::new();
        if let Some(s) = session {
            o = o.with_session_id(s);
        }
        d2.invoke(tool, ToolCategory::Code, json!({}), o)
    };
    invoke("x", None).await.unwrap();
    invoke("x", None).await.unwrap();
    assert!(matches!(
        invoke("x", None).await,
        Err(Error::RateLimited { .. })
    ));
    invoke("y", Some("s1")).await.unwrap();
    assert!(
        matches!(invoke("y", Some("s1")).await, Err(Error::RateLimited { limit, .. }) if limit.contains("session_id s1"))
    );
    invoke("y", Some("s2")).await.unwrap();
}

#[test]
fn read_limits_count_gets_and_whole_scans() {
    let (_dir, db) = temp_db();
    for i in 0..5 {
        db.put(&format!("notes/{i}"), b"1").unwrap();
    }
    away_from_minute_edge();
    PolicyEngine::new(&db)
        .add_rate_limit(RateLimitOp::Get, 3, RateLimitScope::Global)
        .unwrap();
    assert_eq!(db.scan("notes/").count(), 5, "a scan is one read");
    db.get("notes/1").unwrap();
    db.get("notes/2").unwrap();
    assert!(matches!(db.get("notes/3"), Err(Error::RateLimited { .. })));
    let refused: Vec<_> = db.scan("notes/").collect();
    assert!(matches!(
        refused.as_slice(),
        [Err(Error::RateLimited { .. })]
    ));
    assert!(PolicyEngine::new(&db)
        .add_rate_limit(RateLimitOp::Get, 0, RateLimitScope::Global)
        .is_err());
}

#[test]
fn per_agent_limits_are_exact_for_each_agent_under_concurrency() {
    let (_dir, db) = temp_db();
    PolicyEngine::new(&db)
        .add_rate_limit(RateLimitOp::Put, 5, RateLimitScope::PerAgent)
        .unwrap();
    away_from_minute_edge();
    let db = Arc::new(db);
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                let agent = ["a", "b"][i % 2];
                let ctx = PolicyContext::new().with("agent_id", agent);
                (
                    agent,
                    db.put_with(&format!("notes/{i}"), b"1", &ctx).is_ok(),
                )
            })
        })
        .collect();
    let mut ok = std::collections::HashMap::new();
    for t in threads {
        let (agent, stored) = t.join().unwrap();
        *ok.entry(agent).or_insert(0) += usize::from(stored);
    }
    assert_eq!(ok, std::collections::HashMap::from([("a", 5), ("b", 5)]));
    // Writes without an agent_id are outside a per-agent budget.
    for i in 0..10 {
        db.put(&format!("other/{i}"), b"1").unwrap();
    }
}
