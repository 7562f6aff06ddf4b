//! The core store and its policy chain, on a real RocksDB in a temp dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use switchboard::{
    Database, DatabaseOptions, Error, PolicyAction, PolicyContext, PolicyEngine, RegoEvaluator,
};

fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db")).unwrap();
    (dir, db)
}

fn keys(db: &Database, prefix: &str) -> Vec<String> {
    db.scan(prefix).map(|kv| kv.unwrap().0).collect()
}

#[test]
fn transactions_commit_all_or_nothing() {
    let (_dir, db) = temp_db();
    db.put("notes/c", b"old").unwrap();
    let mut tx = db.transaction();
    tx.put("notes/a", b"1").unwrap();
    tx.put("notes/b", b"2").unwrap();
    tx.delete("notes/c").unwrap();
    assert_eq!(tx.get("notes/a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        tx.get("notes/c").unwrap(),
        None,
        "a staged delete hides the stored value"
    );
    assert_eq!(
        db.get("notes/a").unwrap(),
        None,
        "nothing is visible before commit"
    );
    tx.commit().unwrap();
    assert_eq!(keys(&db, "notes/"), ["notes/a", "notes/b"]);

    // One denied key aborts the whole transaction.
    let policy = PolicyEngine::new(&db);
    policy
        .before_write("notes/locked", |_, _, _| {
            PolicyAction::Deny("locked".into())
        })
        .unwrap();
    let mut tx = db.transaction();
    tx.put("notes/a", b"changed").unwrap();
    tx.put("notes/new", b"3").unwrap();
    tx.put("notes/locked", b"4").unwrap();
    tx.delete("notes/b").unwrap();
    let err = tx.commit().unwrap_err();
    assert!(
        matches!(&err, Error::PolicyDenied { key, reason } if key == "notes/locked" && reason == "locked"),
        "{err}"
    );
    assert_eq!(keys(&db, "notes/"), ["notes/a", "notes/b"]);
    assert_eq!(db.get("notes/a").unwrap().unwrap(), b"1");
}

#[test]
fn dropped_transaction_writes_nothing() {
    let (_dir, db) = temp_db();
    {
        let mut tx = db.transaction();
        tx.put("notes/a", b"1").unwrap();
    }
    assert_eq!(db.get("notes/a").unwrap(), None);
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

const TRUSTED_REGO: &str = r#"
package test.trusted
import rego.v1

default allow := false
allow if input.context.agent_id == "trusted"
allow if input.op == "delete"
"#;

#[test]
fn rego_allow_and_deny_both_ways_only_in_scope() {
    for evaluator in [RegoEvaluator::Interpreter, RegoEvaluator::Bytecode] {
        rego_allow_and_deny_both_ways_only_in_scope_with(evaluator);
    }
}

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

#[test]
fn only_the_time_limit_stops_a_rego_module_in_either_evaluator() {
    for evaluator in [RegoEvaluator::Interpreter, RegoEvaluator::Bytecode] {
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
fn reopening_keeps_every_committed_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Database::open(&path).unwrap();
        for i in 0..100 {
            db.put(&format!("notes/{i:03}"), format!("{i}").as_bytes())
                .unwrap();
        }
        let mut tx = db.transaction();
        tx.put("notes/tx1", b"a").unwrap();
        tx.put("notes/tx2", b"b").unwrap();
        tx.commit().unwrap();
        db.delete("notes/050").unwrap();
    }
    let db = Database::open_with(
        &path,
        DatabaseOptions::default().durability(switchboard::Durability::Sync),
    )
    .unwrap();
    let all = keys(&db, "notes/");
    assert_eq!(all.len(), 101);
    assert!(!all.contains(&"notes/050".to_string()));
    assert_eq!(db.get("notes/099").unwrap().unwrap(), b"99");
    assert_eq!(db.get("notes/tx2").unwrap().unwrap(), b"b");
}

#[test]
fn scans_are_ordered_and_stay_under_their_prefix() {
    let (_dir, db) = temp_db();
    for key in ["a/2", "ab/1", "a/10", "b/1", "a/1", "a", "a/1/x"] {
        db.put(key, b"v").unwrap();
    }
    assert_eq!(keys(&db, "a/"), ["a/1", "a/1/x", "a/10", "a/2"]);
    assert_eq!(keys(&db, "a"), ["a", "a/1", "a/1/x", "a/10", "a/2", "ab/1"]);
    assert_eq!(keys(&db, "c/"), Vec::<String>::new());
    assert_eq!(keys(&db, "").len(), 7);
    let paged: Vec<String> = db
        .scan_from("a/")
        .after(Some("a/1/x"))
        .iter()
        .map(|kv| kv.unwrap().0)
        .collect();
    assert_eq!(paged, ["a/10", "a/2"]);
    let bad: Vec<_> = db.scan("a b/").collect();
    assert!(matches!(bad.as_slice(), [Err(Error::InvalidInput(_))]));
}

#[test]
fn bad_input_is_refused_with_clear_errors_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_with(
        dir.path().join("db"),
        DatabaseOptions::default().max_value_bytes(64),
    )
    .unwrap();
    db.put("notes/a", b"1").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    PolicyEngine::new(&db)
        .before_write("**", move |_, _, _| {
            c.fetch_add(1, Ordering::SeqCst);
            PolicyAction::Allow
        })
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("", b"1".to_vec()),
        ("notes/", b"1".to_vec()),
        ("notes//a", b"1".to_vec()),
        ("notes/a b", b"1".to_vec()),
        ("notes/ä", b"1".to_vec()),
        ("notes/*", b"1".to_vec()),
        ("notes/a", vec![0xc3, 0x28]),
        ("notes/a", vec![b'x'; 65]),
    ];
    for (key, value) in cases {
        let err = db.put(key, &value).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{key:?}: {err}");
        let mut tx = db.transaction();
        assert!(tx.put(key, &value).is_err());
        assert!(tx.is_empty());
    }
    let long_key = format!("notes/{}", "k".repeat(129));
    assert!(matches!(db.put(&long_key, b"1"), Err(Error::InvalidInput(m)) if m.contains("128")));
    assert!(matches!(db.get("bad key"), Err(Error::InvalidInput(_))));
    assert!(matches!(db.delete("bad key"), Err(Error::InvalidInput(_))));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "invalid input never reaches the hooks"
    );
    assert_eq!(db.get("notes/a").unwrap().unwrap(), b"1");
    assert_eq!(keys(&db, ""), ["notes/a"]);
    assert!(matches!(
        Database::open_with(
            dir.path().join("x"),
            DatabaseOptions::default().max_value_bytes(0)
        ),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn scan_each_visits_what_scan_yields_and_can_stop_or_resume() {
    let (_dir, db) = temp_db();
    let mut tx = db.transaction();
    for i in 0..50 {
        tx.put(
            &format!("audit/{i:03}"),
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .unwrap();
    }
    tx.put("auditx/outside", b"1").unwrap();
    tx.commit().unwrap();
    let owned: Vec<(String, Vec<u8>)> = db.scan("audit/").map(Result::unwrap).collect();
    let mut borrowed = Vec::new();
    db.scan_from("audit/")
        .each(|key, value| {
            borrowed.push((key.to_string(), value.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(borrowed.len(), 50);
    assert_eq!(borrowed, owned);

    let mut first_ten = Vec::new();
    db.scan_from("audit/")
        .each(|key, _| {
            first_ten.push(key.to_string());
            first_ten.len() < 10
        })
        .unwrap();
    assert_eq!(first_ten.len(), 10, "returning false stops the scan");
    let mut rest = Vec::new();
    db.scan_from("audit/")
        .after(first_ten[9].as_str())
        .each(|key, _| {
            rest.push(key.to_string());
            true
        })
        .unwrap();
    assert_eq!(rest.first().map(String::as_str), Some("audit/010"));
    assert_eq!(rest.len(), 40);

    let err = db.scan_from("bad//prefix").each(|_, _| true).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}
