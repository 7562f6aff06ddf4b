//! Hardening of the policy layer: two-phase rate limits, globs that protect
//! what they name.

use std::sync::Arc;
use std::time::Duration;
use switchboard::policy::ManualClock;
use switchboard::{
    Database, Error, PolicyAction, PolicyContext, PolicyEngine, RateLimitOp, RateLimitScope,
};

fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db")).unwrap();
    (dir, db)
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
