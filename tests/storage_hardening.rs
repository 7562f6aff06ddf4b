//! Hardening of the storage layer: isolation of read-modify-write
//! transactions, ownership of reserved namespaces, bounded read-denied scans.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::policy::DecisionKind;
use switchboard::{Database, Error, PolicyAction, PolicyEngine};

fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db")).unwrap();
    (dir, db)
}

fn decisions(db: &Database) -> Vec<switchboard::Decision> {
    db.scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

#[test]
fn concurrent_increments_with_get_for_update_lose_no_update() {
    let (_dir, db) = temp_db();
    let threads = 4;
    let per_thread = 50;
    let conflicts = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..threads {
            let db = db.clone();
            let conflicts = conflicts.clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    loop {
                        let mut tx = db.transaction();
                        let n: u64 = tx
                            .get_for_update("counters/a")
                            .unwrap()
                            .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                        // Widen the window between read and commit.
                        std::thread::yield_now();
                        tx.put("counters/a", (n + 1).to_string().as_bytes())
                            .unwrap();
                        match tx.commit() {
                            Ok(()) => break,
                            Err(Error::Conflict { key }) => {
                                assert_eq!(key, "counters/a");
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let total = db.get("counters/a").unwrap().unwrap();
    assert_eq!(
        String::from_utf8(total).unwrap(),
        (threads * per_thread).to_string()
    );
}

#[test]
fn a_conflicting_commit_writes_nothing_and_says_to_retry() {
    let (_dir, db) = temp_db();
    db.put("counters/b", b"1").unwrap();
    let mut tx = db.transaction();
    tx.get_for_update("counters/b").unwrap();
    tx.put("counters/b", b"2").unwrap();
    tx.put("counters/other", b"x").unwrap();
    db.put("counters/b", b"5").unwrap();
    let err = tx.commit().unwrap_err();
    assert!(matches!(&err, Error::Conflict { key } if key == "counters/b"));
    assert!(err.to_string().contains("retry"), "{err}");
    assert_eq!(db.get("counters/b").unwrap().unwrap(), b"5");
    assert_eq!(db.get("counters/other").unwrap(), None);
}

#[test]
fn generic_writes_to_reserved_namespaces_are_refused() {
    let (_dir, db) = temp_db();
    for key in ["tools/code/run/1", "sessions/x", "agents/a", "inflight/1"] {
        let err = db.put(key, b"{}").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("writes_to_reserved_namespaces")),
            "{key}: {err}"
        );
        assert!(db.delete(key).is_err(), "{key}");
        let mut tx = db.transaction();
        assert!(tx.put(key, b"{}").is_err(), "{key}");
    }
    // The explicit opt-in still meets the policy chain.
    db.writes_to_reserved_namespaces()
        .put("sessions/x", b"{}")
        .unwrap();
    PolicyEngine::new(&db)
        .before_delete("sessions/**", |_, _, _| PolicyAction::Deny("kept".into()))
        .unwrap();
    assert!(matches!(
        db.writes_to_reserved_namespaces().delete("sessions/x"),
        Err(Error::PolicyDenied { .. })
    ));
}

#[test]
fn pruning_dispatch_records_is_policy_checked_and_logged_once() {
    let (_dir, db) = temp_db();
    let old = "01AAAAAAAA0000000000000000"; // 1970s: older than any cutoff
    let record = serde_json::json!({"invocation_id": old, "tool": "run", "category": "code",
        "agent_id": "a", "session_id": null, "strategy": "priority", "status": "succeeded",
        "attempts": [], "started_at_ms": 0, "finished_at_ms": 0, "latency_ms": 0.0, "error": null});
    let reserved = db.writes_to_reserved_namespaces();
    for key in [
        format!("tools/code/run/{old}"),
        format!("tools/git/merge/{old}"),
    ] {
        reserved.put(&key, record.to_string().as_bytes()).unwrap();
    }
    let fresh = switchboard::namespace::new_invocation_id();
    reserved
        .put(
            &format!("tools/code/run/{fresh}"),
            record.to_string().as_bytes(),
        )
        .unwrap();

    let policy = PolicyEngine::new(&db);
    policy
        .before_delete("tools/git/**", |_, _, ctx| match ctx.get("action") {
            Some("prune") => PolicyAction::Deny("git history is kept".into()),
            _ => PolicyAction::Allow,
        })
        .unwrap();
    assert!(matches!(
        db.prune_dispatch_records(Duration::from_secs(3600)),
        Err(Error::PolicyDenied { .. })
    ));
    assert_eq!(
        db.scan("tools/").count(),
        3,
        "a denied pruning deletes nothing"
    );

    let (_dir2, db) = temp_db();
    let reserved = db.writes_to_reserved_namespaces();
    reserved
        .put(
            &format!("tools/code/run/{old}"),
            record.to_string().as_bytes(),
        )
        .unwrap();
    reserved
        .put(
            &format!("tools/code/run/{fresh}"),
            record.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(
        db.prune_dispatch_records(Duration::from_secs(3600))
            .unwrap(),
        1
    );
    assert_eq!(db.scan("tools/").count(), 1);
    let log = decisions(&db);
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].reason.contains("pruned 1 dispatch records"));
}

fn deny_reads_of_tools(db: &Database) -> Arc<AtomicUsize> {
    let judged = Arc::new(AtomicUsize::new(0));
    let counter = judged.clone();
    PolicyEngine::new(db)
        .before_read("tools/**", move |_, _, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            PolicyAction::Deny("not for you".into())
        })
        .unwrap();
    judged
}

fn fill(db: &Database, n: usize) {
    let mut tx = db.writes_to_reserved_namespaces().transaction();
    for i in 0..n {
        tx.put(&format!("tools/code/run/{i:05}"), b"{}").unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_read_denied_scan_records_one_aggregate_decision() {
    let (_dir, db) = temp_db();
    fill(&db, 600);
    let _judged = deny_reads_of_tools(&db);
    let seen = db.scan("tools/").take(1).count();
    assert_eq!(seen, 0);
    let log = decisions(&db);
    assert_eq!(log.len(), 1, "one decision per scan, not one per key");
    assert_eq!(log[0].decision, DecisionKind::Deny);
    assert!(log[0].reason.starts_with("600 keys"), "{}", log[0].reason);
}

#[test]
fn a_page_examines_a_bounded_number_of_hidden_keys() {
    let (_dir, db) = temp_db();
    fill(&db, 3 * switchboard::PAGE_HIDDEN_BUDGET);
    let judged = deny_reads_of_tools(&db);
    let page = db.scan_from("tools/").page(1).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(
        judged.load(Ordering::Relaxed),
        switchboard::PAGE_HIDDEN_BUDGET
    );
    let cursor = page.next_after.expect("a page stopped early has a cursor");
    let next = db
        .scan_from("tools/")
        .after(cursor.as_str())
        .page(1)
        .unwrap();
    assert!(next.next_after.is_some());
    assert!(next.next_after.unwrap() > cursor);
}
