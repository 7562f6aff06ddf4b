//! The storage layer on a real RocksDB in a temp dir: transactions, scans,
//! reopening, input validation, isolation of read-modify-write transactions,
//! ownership of reserved namespaces, bounded read-denied scans.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::{Database, DatabaseOptions, DecisionKind, Error, PolicyAction, PolicyEngine};

fn keys(db: &Database, prefix: &str) -> Vec<String> {
    db.scan(prefix).map(|kv| kv.unwrap().0).collect()
}

fn decisions(db: &Database) -> Vec<switchboard::Decision> {
    db.scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
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

/// An invocation id started at `ms`, with `n` as its tie-breaking suffix.
fn invocation_id_at(ms: u64, n: u64) -> String {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let time = (0..10).map(|i| CROCKFORD[((ms >> (45 - 5 * i)) & 31) as usize] as char);
    let suffix = (0..16).map(|i| CROCKFORD[((n >> (75 - 5 * i).min(63)) & 31) as usize] as char);
    time.chain(suffix).collect()
}

#[test]
fn an_audit_returns_exactly_the_records_its_filter_selects_in_every_mode() {
    use switchboard::{AuditFilter, DispatchStatus};
    let (_dir, db) = temp_db();
    let t0 = 1_790_000_000_000u64;
    let mut tx = db.writes_to_reserved_namespaces().transaction();
    let mut all = Vec::new();
    for (c, category) in ["code", "search", "web"].iter().enumerate() {
        for tool in ["a", "b"] {
            for i in 0..100u64 {
                let id = invocation_id_at(t0 + i, c as u64 * 1000 + i);
                let agent = format!("agent{}", i % 3);
                let status = ["succeeded", "failed"][(i % 2) as usize];
                let value = serde_json::json!({
                    "invocation_id": id, "tool": tool, "category": category,
                    "agent_id": agent, "session_id": null, "strategy": "round_robin",
                    "status": status,
                    // An attempt on another agent must not make the record its.
                    "attempts": [{"agent_id": "agent1", "outcome": "failed", "latency_ms": 1.0, "error": null}],
                    "started_at_ms": t0 + i, "finished_at_ms": t0 + i, "latency_ms": 1.0, "error": null
                });
                let key = format!("tools/{category}/{tool}/{id}");
                tx.put(&key, value.to_string().as_bytes()).unwrap();
                all.push((key, agent, status, t0 + i));
            }
        }
    }
    // Not a dispatch record: a window skips it.
    tx.put("tools/code/a/notes", b"{}").unwrap();
    tx.commit().unwrap();
    all.sort();

    let filter = AuditFilter {
        agent: Some("agent2".into()),
        status: Some(DispatchStatus::Failed),
        since_ms: Some(t0 + 20),
        until_ms: Some(t0 + 60),
    };
    let expected: Vec<String> = all
        .iter()
        .filter(|(_, agent, status, t)| {
            agent == "agent2" && *status == "failed" && (t0 + 20..=t0 + 60).contains(t)
        })
        .map(|(key, ..)| key.clone())
        .collect();
    assert_eq!(expected.len(), 3 * 2 * 7, "agent2 and odd i within 20..=60");

    let by_iter: Vec<String> = db
        .scan_from("tools/")
        .audit(&filter)
        .iter()
        .map(|kv| kv.unwrap().0)
        .collect();
    assert_eq!(by_iter, expected);
    let mut by_each = Vec::new();
    db.scan_from("tools/")
        .audit(&filter)
        .each(|key, _| {
            by_each.push(key.to_string());
            true
        })
        .unwrap();
    assert_eq!(by_each, expected);
    let mut by_pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .scan_from("tools/")
            .after(after.as_deref())
            .audit(&filter)
            .page(5)
            .unwrap();
        by_pages.extend(page.items.into_iter().map(|(key, _)| key));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(by_pages, expected);

    // A window alone, on a narrower prefix; and an empty filter is a plain scan.
    let window = AuditFilter {
        since_ms: Some(t0 + 98),
        ..AuditFilter::default()
    };
    let late: Vec<String> = db
        .scan_from("tools/web/")
        .audit(&window)
        .iter()
        .map(|kv| kv.unwrap().0)
        .collect();
    assert_eq!(late.len(), 4, "{late:?}");
    assert_eq!(
        db.scan_from("tools/")
            .audit(&AuditFilter::default())
            .iter()
            .count(),
        all.len() + 1
    );
}
