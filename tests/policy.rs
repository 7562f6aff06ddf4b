//! The policy layer through a real database: write, delete and read hooks,
//! Rego modules and policy directories, rate limits, the decision log, and
//! globs that protect what they name.

mod common;

use common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::{
    AgentConfig, Database, Decision, DecisionKind, DecisionLogRetention, Error, ManualClock, Op,
    PolicyAction, PolicyContext, PolicyEngine, RateLimitOp, RateLimitScope, RegoEvaluator,
    RoutingOptions, ToolCategory, ToolDispatcher, ToolError,
};

fn keys(db: &Database, prefix: &str) -> Vec<String> {
    db.scan(prefix).map(|kv| kv.unwrap().0).collect()
}

const TRUSTED_REGO: &str = r#"
package test.trusted
import rego.v1

default allow := false
allow if input.context.agent_id == "trusted"
allow if input.op == "delete"
"#;

fn rego_allow_and_deny_both_ways_only_in_scope_with(evaluator: RegoEvaluator) {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy.set_rego_evaluator(evaluator);
    policy.add_rego("tools/shell/**", TRUSTED_REGO).unwrap();
    policy
        .add_rego(
            "tools/**",
            r#"package test.sizes
import rego.v1
deny contains msg if {
    input.op == "put"
    count(input.value.args) > 2
    msg := sprintf("too many args for %s", [input.key])
}"#,
        )
        .unwrap();
    let trusted = PolicyContext::new().with("agent_id", "trusted");
    let other = PolicyContext::new().with("agent_id", "other");
    db.writes_to_reserved_namespaces()
        .put_with("tools/shell/ls/1", b"{\"args\":[]}", &trusted)
        .unwrap();
    let err = db
        .writes_to_reserved_namespaces()
        .put_with("tools/shell/ls/2", b"{\"args\":[]}", &other)
        .unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason.contains("allow is not true")),
        "{evaluator:?}: {err}"
    );
    let err = db
        .writes_to_reserved_namespaces()
        .put_with("tools/shell/ls/3", b"{\"args\":[1,2,3]}", &trusted)
        .unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason == "too many args for tools/shell/ls/3"),
        "{evaluator:?}: {err}"
    );
    // Out of the first module's scope: only the second applies.
    db.writes_to_reserved_namespaces()
        .put_with("tools/code/run/1", b"{\"args\":[1]}", &other)
        .unwrap();
    db.writes_to_reserved_namespaces()
        .delete_with("tools/shell/ls/1", &other)
        .unwrap();
    assert_eq!(keys(&db, "tools/"), ["tools/code/run/1"]);
    assert_eq!(
        policy.rego_modules(),
        [
            ("test.trusted".to_string(), "tools/shell/**".to_string()),
            ("test.sizes".into(), "tools/**".into())
        ]
    );
}

/// A module whose evaluation always errors: two complete-rule definitions
/// disagree on every input.
const BROKEN_AT_EVAL: &str = r#"
package test.broken
import rego.v1
verdict := "a" if input.key
verdict := "b" if input.key
deny contains "never" if verdict == "c"
"#;

/// Runs far longer than the 250 ms evaluation limit.
const SLOW_REGO: &str = r#"
package test.slow
import rego.v1
deny contains "never" if {
    some i in numbers.range(1, 20000)
    some j in numbers.range(1, 20000)
    i * j < 0
}
"#;

/// A few thousand iterations: well inside the time limit, though past the
/// Rego VM's default instruction budget.
const BUSY_REGO: &str = r#"
package test.busy
import rego.v1
deny contains "negative" if {
    some i in numbers.range(1, 5000)
    i < 0
}
"#;

fn decisions(db: &Database) -> Vec<Decision> {
    db.scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

fn admin() -> PolicyContext {
    PolicyContext::new().with("role", "admin")
}

#[test]
fn denied_write_leaves_store_unchanged_and_context_reaches_hooks() {
    let (_dir, db) = temp_db();
    db.writes_to_reserved_namespaces()
        .put("tools/sensitive/rotate", b"{\"v\":0}")
        .unwrap();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("tools/sensitive/*", |_key, _value, ctx| {
            match ctx.get("agent_id") {
                Some("trusted_agent_1") | Some("trusted_agent_2") => PolicyAction::Allow,
                _ => PolicyAction::Deny("untrusted agent".into()),
            }
        })
        .unwrap();
    let untrusted = PolicyContext::new().with("agent_id", "intruder");
    let err = db
        .writes_to_reserved_namespaces()
        .put_with("tools/sensitive/rotate", b"{\"v\":1}", &untrusted)
        .unwrap_err();
    assert!(matches!(err, Error::PolicyDenied { ref reason, .. } if reason == "untrusted agent"));
    assert!(
        db.writes_to_reserved_namespaces()
            .put("tools/sensitive/rotate", b"{\"v\":1}")
            .is_err(),
        "no context, no trust"
    );
    assert_eq!(
        db.get("tools/sensitive/rotate").unwrap().unwrap(),
        b"{\"v\":0}"
    );

    let trusted = PolicyContext::new().with("agent_id", "trusted_agent_2");
    db.writes_to_reserved_namespaces()
        .put_with("tools/sensitive/rotate", b"{\"v\":2}", &trusted)
        .unwrap();
    assert_eq!(
        db.get("tools/sensitive/rotate").unwrap().unwrap(),
        b"{\"v\":2}"
    );
    // A trailing `/*` also covers nested keys (dispatch records are deeper).
    assert!(db
        .writes_to_reserved_namespaces()
        .put_with("tools/sensitive/rotate/deeper", b"1", &untrusted)
        .is_err());
    // Out of the glob's scope: the hook does not run.
    db.writes_to_reserved_namespaces()
        .put_with("tools/public/rotate/deeper", b"1", &untrusted)
        .unwrap();
}

#[test]
fn delete_hooks_guard_deletes() {
    let (_dir, db) = temp_db();
    db.writes_to_reserved_namespaces()
        .put("agents/keep", b"{}")
        .unwrap();
    let policy = PolicyEngine::new(&db);
    policy
        .before_delete("agents/*", |_, value, _| {
            assert!(value.is_empty());
            PolicyAction::Deny("registrations are permanent".into())
        })
        .unwrap();
    assert!(matches!(
        db.writes_to_reserved_namespaces().delete("agents/keep"),
        Err(Error::PolicyDenied { .. })
    ));
    assert!(db.get("agents/keep").unwrap().is_some());
}

#[test]
fn modify_rewrites_the_stored_value_and_chains() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("notes/**", |_, value, _| {
            let mut v: serde_json::Value = serde_json::from_slice(value).unwrap();
            v["stamped"] = true.into();
            PolicyAction::Modify(serde_json::to_vec(&v).unwrap())
        })
        .unwrap();
    // The second hook sees the first hook's rewrite.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    policy
        .before_write("notes/**", move |_, value, _| {
            seen2.lock().unwrap().push(value.to_vec());
            PolicyAction::Allow
        })
        .unwrap();
    db.put("notes/a", b"{\"v\":1}").unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&db.get("notes/a").unwrap().unwrap()).unwrap();
    assert_eq!(stored, serde_json::json!({"v": 1, "stamped": true}));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen.lock().unwrap()[0]).unwrap(),
        stored
    );

    // A Modify that produces a bad value denies instead of storing it.
    policy
        .before_write("bad/*", |_, _, _| PolicyAction::Modify(vec![0xff, 0xfe]))
        .unwrap();
    assert!(matches!(
        db.put("bad/a", b"1"),
        Err(Error::PolicyDenied { .. })
    ));
    assert_eq!(db.get("bad/a").unwrap(), None);
}

#[test]
fn after_hooks_see_only_committed_data() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    let observed = Arc::new(Mutex::new(Vec::new()));
    let (obs, reader) = (observed.clone(), db.clone());
    policy
        .after_write("notes/**", move |key, value, ctx| {
            // The write is visible in the store by the time the hook runs.
            let stored = reader.get(key).unwrap();
            obs.lock().unwrap().push((
                key.to_string(),
                value.to_vec(),
                stored,
                ctx.get("who").map(String::from),
            ));
            PolicyAction::Deny("after-hooks cannot undo".into())
        })
        .unwrap();
    policy
        .before_write("notes/denied", |_, _, _| PolicyAction::Deny("no".into()))
        .unwrap();
    db.put_with("notes/a", b"1", &PolicyContext::new().with("who", "me"))
        .unwrap();
    assert!(db.put("notes/denied", b"2").is_err());
    let mut tx = db.transaction();
    tx.put("notes/b", b"3").unwrap();
    tx.put("notes/denied", b"4").unwrap();
    assert!(tx.commit().is_err());

    let observed = observed.lock().unwrap();
    assert_eq!(
        observed.len(),
        1,
        "denied writes never reach after-hooks: {observed:?}"
    );
    assert_eq!(
        observed[0],
        (
            "notes/a".into(),
            b"1".to_vec(),
            Some(b"1".to_vec()),
            Some("me".into())
        )
    );
    // The after-hook's Deny did not undo the write.
    assert_eq!(db.get("notes/a").unwrap().unwrap(), b"1");
}

#[test]
fn panicking_hook_denies_and_changes_nothing() {
    let (_dir, db) = temp_db();
    db.put("notes/a", b"1").unwrap();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("notes/*", |_, _, _| panic!("hook bug"))
        .unwrap();
    let err = db.put("notes/a", b"2").unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason.contains("panicked") && reason.contains("hook bug")),
        "{err}"
    );
    assert_eq!(db.get("notes/a").unwrap().unwrap(), b"1");
    // A panicking after-hook is contained too.
    policy
        .after_write("other/*", |_, _, _| panic!("after bug"))
        .unwrap();
    db.put("other/a", b"1").unwrap();
}

#[test]
fn rego_allow_and_deny_both_ways_only_in_scope() {
    for evaluator in [
        RegoEvaluator::Auto,
        RegoEvaluator::Interpreter,
        RegoEvaluator::Bytecode,
    ] {
        rego_allow_and_deny_both_ways_only_in_scope_with(evaluator);
    }
}

#[test]
fn rego_eval_errors_fail_closed_and_are_never_evaluated_out_of_scope() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy.add_rego("secret/**", BROKEN_AT_EVAL).unwrap();
    db.put("notes/a", b"1").unwrap(); // the module never runs here
    let err = db.put("secret/a", b"1").unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { reason, .. } if reason.contains("test.broken") && reason.contains("fail closed")),
        "{err}"
    );
    assert_eq!(db.get("secret/a").unwrap(), None);
    assert!(
        db.delete("secret/a").is_err(),
        "deletes are judged by Rego too"
    );
}

#[test]
fn only_the_time_limit_stops_a_rego_module_in_either_evaluator() {
    for evaluator in [
        RegoEvaluator::Auto,
        RegoEvaluator::Interpreter,
        RegoEvaluator::Bytecode,
    ] {
        let (_dir, db) = temp_db();
        let policy = PolicyEngine::new(&db);
        policy.set_rego_evaluator(evaluator);
        policy.add_rego("slow/**", SLOW_REGO).unwrap();
        policy.add_rego("busy/**", BUSY_REGO).unwrap();
        let err = db.put("slow/a", b"1").unwrap_err();
        assert!(
            matches!(&err, Error::PolicyDenied { reason, .. }
                if reason.to_lowercase().contains("time limit") && reason.contains("fail closed")),
            "{evaluator:?}: {err}"
        );
        assert_eq!(db.get("slow/a").unwrap(), None);
        db.put("busy/a", b"1")
            .unwrap_or_else(|e| panic!("{evaluator:?}: {e}"));
    }
}

#[test]
fn malformed_rego_is_refused_and_loaded_policies_stay() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy.add_rego("tools/shell/**", TRUSTED_REGO).unwrap();
    let err = policy
        .add_rego("tools/**", "package x\nallow if {")
        .unwrap_err();
    assert!(matches!(err, Error::PolicyLoad { .. }), "{err}");
    let err = policy
        .add_rego("tools/**", "package x\nimport rego.v1\nsomething := 1")
        .unwrap_err();
    assert!(
        err.to_string().contains("neither `deny` nor `allow`"),
        "{err}"
    );
    let err = policy.add_rego("tools/*x*/**/", TRUSTED_REGO).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert_eq!(policy.rego_modules().len(), 1);
    assert!(db
        .put_with(
            "tools/shell/a/1",
            b"{}",
            &PolicyContext::new().with("agent_id", "x")
        )
        .is_err());
}

#[test]
fn policy_directories_need_declared_scopes_and_load_atomically() {
    let (dir, db) = temp_db();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("a_trusted.rego"),
        format!("# scope: tools/shell/**\n# scope: tools/git/**\n{TRUSTED_REGO}"),
    )
    .unwrap();
    std::fs::write(
        policies.join("b_noscope.rego"),
        "package x\nimport rego.v1\nallow := true\n",
    )
    .unwrap();
    let policy = PolicyEngine::new(&db);
    let err = policy.load_dir(&policies).unwrap_err();
    assert!(err.to_string().contains("# scope:"), "{err}");
    assert!(
        policy.rego_modules().is_empty(),
        "a bad file refuses the whole directory"
    );

    std::fs::remove_file(policies.join("b_noscope.rego")).unwrap();
    std::fs::write(policies.join("a_trusted_test.rego"), "not even rego").unwrap(); // tests are not loaded
    assert_eq!(policy.load_dir(&policies).unwrap(), ["test.trusted"]);
    assert_eq!(policy.rego_modules().len(), 2);
    assert!(db
        .writes_to_reserved_namespaces()
        .put("tools/git/a/1", b"{}")
        .is_err());
    assert!(db
        .writes_to_reserved_namespaces()
        .put("tools/code/a/1", b"{}")
        .is_ok());
}

#[test]
fn shipped_policies_pass_their_rego_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut modules = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".rego") || name.ends_with("_test.rego") {
            continue;
        }
        modules += 1;
        let results = switchboard::policy::rego::run_tests(&path).unwrap();
        assert!(!results.is_empty(), "{name} has no tests");
        for r in &results {
            assert!(r.passed, "{}: {:?}", r.name, r.detail);
        }
    }
    assert!(modules >= 1);
    // And the shipped directory loads.
    let (_tmp, db) = temp_db();
    assert!(PolicyEngine::new(&db)
        .load_dir(&dir)
        .unwrap()
        .contains(&"switchboard.sensitive_tools".to_string()));
}

#[test]
fn rego_test_runner_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.rego"),
        format!("# scope: a/**\n{TRUSTED_REGO}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m_test.rego"),
        "package test.trusted_test\nimport rego.v1\nimport data.test.trusted\n\
         test_ok if trusted.allow with input as {\"op\": \"put\", \"context\": {\"agent_id\": \"trusted\"}}\n\
         test_wrong if trusted.allow with input as {\"op\": \"put\", \"context\": {}}\n",
    )
    .unwrap();
    let results = switchboard::policy::rego::run_tests(&dir.path().join("m.rego")).unwrap();
    let verdicts: Vec<(String, bool)> =
        results.iter().map(|r| (r.name.clone(), r.passed)).collect();
    assert_eq!(
        verdicts,
        [
            ("test.trusted_test.test_ok".to_string(), true),
            ("test.trusted_test.test_wrong".to_string(), false)
        ]
    );
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
    // A clock that stands still: no minute window resets mid-test.
    policy.set_rate_limit_clock(Arc::new(ManualClock::at(1_000_000)));
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
    policy.set_rate_limit_clock(Arc::new(ManualClock::at(1_000_000)));
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
    let policy = PolicyEngine::new(&db);
    // A clock that stands still: no minute window resets mid-test.
    policy.set_rate_limit_clock(Arc::new(ManualClock::at(1_000_000)));
    policy
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
fn a_transaction_refused_by_a_later_hook_spends_no_rate_limit() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy.set_rate_limit_clock(Arc::new(ManualClock::at(1_000_000)));
    policy
        .add_rate_limit(RateLimitOp::Put, 2, RateLimitScope::Global)
        .unwrap();
    policy
        .before_write("locked/*", |_, _, _| PolicyAction::Deny("locked".into()))
        .unwrap();
    for _ in 0..5 {
        let mut tx = db.transaction();
        tx.put("notes/a", b"1").unwrap();
        tx.put("locked/x", b"1").unwrap();
        assert!(matches!(tx.commit(), Err(Error::PolicyDenied { .. })));
    }
    // Nothing was spent by the refused transactions.
    db.put("notes/a", b"1").unwrap();
    db.put("notes/b", b"1").unwrap();
    assert!(matches!(
        db.put("notes/c", b"1"),
        Err(Error::RateLimited { .. })
    ));
}

#[test]
fn a_transaction_over_the_limit_is_refused_whole_and_counts_nothing() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    let clock = Arc::new(ManualClock::at(1_000_000));
    policy.set_rate_limit_clock(clock.clone());
    policy
        .add_rate_limit(RateLimitOp::Put, 2, RateLimitScope::Global)
        .unwrap();
    let mut tx = db.transaction();
    for key in ["notes/a", "notes/b", "notes/c"] {
        tx.put(key, b"1").unwrap();
    }
    assert!(matches!(tx.commit(), Err(Error::RateLimited { .. })));
    assert_eq!(db.scan("notes/").count(), 0);
    db.put("notes/a", b"1").unwrap();
    db.put("notes/b", b"1").unwrap();
    assert!(db.put("notes/c", b"1").is_err());
    clock.advance(Duration::from_secs(60));
    db.put("notes/c", b"1").unwrap();
}

#[test]
fn the_documented_sensitive_scope_protects_dispatch_records() {
    let (_dir, db) = temp_db();
    PolicyEngine::new(&db)
        .before_write("tools/sensitive/*", |_, _, ctx| match ctx.get("agent_id") {
            Some("trusted_agent_1") => PolicyAction::Allow,
            _ => PolicyAction::Deny("only trusted agents".into()),
        })
        .unwrap();
    let intern = PolicyContext::new().with("agent_id", "intern_agent");
    let record = "tools/sensitive/rotate_keys/01KAXN8Y6R0F3V2S8C0000001A";
    assert!(matches!(
        db.writes_to_reserved_namespaces()
            .put_with(record, b"{}", &intern),
        Err(Error::PolicyDenied { .. })
    ));
}

#[test]
fn scopes_that_can_match_no_key_are_refused_at_registration() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    for scope in ["tools/sensitive", "agents/*/x", "tools/a/b/c/d"] {
        let err = policy
            .before_write(scope, |_, _, _| PolicyAction::Allow)
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("can match no key") && m.contains("**")),
            "{scope}: {err}"
        );
    }
    assert!(policy
        .add_rego("agents/*/x", "package p\ndeny contains \"x\" if true")
        .is_err());
}

#[test]
fn a_double_star_scope_covers_its_own_root_and_many_stars_stay_cheap() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("notes/**", |_, _, _| PolicyAction::Deny("frozen".into()))
        .unwrap();
    assert!(db.put("notes", b"1").is_err(), "`a/**` matches `a`");
    policy
        .before_write("x/**/a/**/b/**/c/**/d/**/e/**/f/**/z", |_, _, _| {
            PolicyAction::Allow
        })
        .unwrap();
    let key = vec!["x"; 32].join("/");
    db.put(&key, b"1").unwrap();
}

#[tokio::test]
async fn every_public_write_path_meets_a_deny_all_policy() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    d.register_local_agent("before", vec![ToolCategory::Code], |_t, _i| async {
        Ok::<_, ToolError>(json!(null))
    })
    .unwrap();
    let before: Vec<(String, Vec<u8>)> = db.scan("").map(|kv| kv.unwrap()).collect();
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("**", |_, _, _| PolicyAction::Deny("frozen".into()))
        .unwrap();
    policy
        .before_delete("**", |_, _, _| PolicyAction::Deny("frozen".into()))
        .unwrap();
    let denied = |result: switchboard::Result<()>, what: &str| {
        assert!(
            matches!(result, Err(Error::PolicyDenied { .. })),
            "{what} got past the chain"
        );
    };
    denied(db.put("notes/a", b"1"), "put");
    denied(
        db.put_with("notes/a", b"1", &Default::default()),
        "put_with",
    );
    denied(
        db.writes_to_reserved_namespaces().delete("agents/before"),
        "delete",
    );
    denied(
        db.writes_to_reserved_namespaces()
            .delete_with("agents/before", &Default::default()),
        "delete_with",
    );
    let mut tx = db.transaction();
    tx.put("notes/b", b"1").unwrap();
    denied(tx.commit(), "transaction");
    let http = AgentConfig::new()
        .with_tools(vec![ToolCategory::Code])
        .with_endpoint("http://127.0.0.1:9/invoke");
    denied(d.register_agent("new_http", http), "register_agent");
    denied(
        d.register_local_agent("new_local", vec![ToolCategory::Code], |_t, _i| async {
            Ok::<_, ToolError>(json!(null))
        }),
        "register_local_agent",
    );
    denied(d.unregister_agent("before"), "unregister_agent");
    let invoked = d
        .invoke(
            "run",
            ToolCategory::Code,
            json!({}),
            RoutingOptions::new().with_session_id("s"),
        )
        .await;
    assert!(
        matches!(invoked, Err(Error::PolicyDenied { .. })),
        "invoke got past the chain"
    );
    assert_eq!(
        d.get_metrics()["before"].total,
        0,
        "a denied dispatch never reaches the agent"
    );
    let after: Vec<(String, Vec<u8>)> = db
        .scan("")
        .map(|kv| kv.unwrap())
        .filter(|(k, _)| !k.starts_with("policy_log/"))
        .collect();
    assert_eq!(before, after, "nothing but the decision log changed");
    assert_eq!(d.list_agents(), ["before"]);
}
