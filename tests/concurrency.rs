//! Behaviour under many concurrent callers, across layers: read-modify-write
//! transactions, dispatch counts, first calls of one session, and exact rate
//! limits.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::{
    Error, ManualClock, PolicyContext, PolicyEngine, RateLimitOp, RateLimitScope, RoutingOptions,
    RoutingStrategy, ToolCategory, ToolDispatcher, ToolError,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_dispatches_keep_every_count() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db.clone());
    let handled = Arc::new(AtomicUsize::new(0));
    for id in ["a", "b", "c", "d"] {
        let handled = handled.clone();
        d.register_local_agent(id, vec![ToolCategory::Code], move |_t, _i| {
            let handled = handled.clone();
            async move {
                tokio::task::yield_now().await;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ToolError>(json!(id))
            }
        })
        .unwrap();
    }
    const CALLS: usize = 2_000;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let strategy = RoutingStrategy::ALL[i % RoutingStrategy::ALL.len()];
                let mut options = RoutingOptions::new().with_strategy(strategy);
                if strategy == RoutingStrategy::Sticky || i % 7 == 0 {
                    options = options.with_session_id(format!("s{}", i % 50));
                }
                d.invoke("run", ToolCategory::Code, json!({"i": i}), options)
                    .await
                    .unwrap()
                    .agent_id
            })
        })
        .collect();
    let mut served: HashMap<String, u64> = HashMap::new();
    for c in calls {
        *served.entry(c.await.unwrap()).or_default() += 1;
    }
    assert_eq!(handled.load(Ordering::SeqCst), CALLS);
    let metrics = d.get_metrics();
    for (id, m) in &metrics {
        assert_eq!(m.active_tasks, 0, "{id} still counts calls in flight");
        assert_eq!(
            m.total,
            served.get(id).copied().unwrap_or(0),
            "{id} lost counts"
        );
        assert_eq!(m.successes, m.total);
    }
    assert_eq!(metrics.values().map(|m| m.total).sum::<u64>(), CALLS as u64);
    assert_eq!(db.scan("tools/code/run/").count(), CALLS);
    assert_eq!(db.scan("inflight/").count(), 0);
    // One binding per session, naming an agent that served it.
    assert_eq!(db.scan("sessions/").count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_calls_of_a_session_agree_on_one_agent() {
    let (_dir, db) = temp_db();
    let d = ToolDispatcher::new(db);
    for id in ["a", "b", "c", "d"] {
        echo_agent(&d, id, vec![ToolCategory::Code]);
    }
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                let opts = RoutingOptions::new()
                    .with_strategy(RoutingStrategy::Sticky)
                    .with_session_id("race");
                d.invoke("run", ToolCategory::Code, json!({}), opts)
                    .await
                    .unwrap()
                    .agent_id
            })
        })
        .collect();
    let mut agents = std::collections::HashSet::new();
    for c in calls {
        agents.insert(c.await.unwrap());
    }
    assert_eq!(agents.len(), 1, "{agents:?}");
}

#[test]
fn rate_limits_are_exact_under_concurrency_and_reset_after_the_window() {
    let (_dir, db) = temp_db();
    let window_ms = 1500u64;
    // A clock that stands still: the whole burst falls in one window.
    let clock = Arc::new(ManualClock::at(1_000_000));
    let policy = PolicyEngine::new(&db);
    policy.set_rate_limit_clock(clock.clone());
    policy
        .add_rate_limit_per(
            RateLimitOp::Put,
            20,
            Duration::from_millis(window_ms),
            RateLimitScope::Global,
        )
        .unwrap();
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
    assert!(matches!(
        db.put("notes/still_limited", b"1"),
        Err(Error::RateLimited { .. })
    ));
    clock.advance(Duration::from_millis(window_ms));
    db.put("notes/after_reset", b"1").unwrap();
}

#[test]
fn per_agent_limits_are_exact_for_each_agent_under_concurrency() {
    let (_dir, db) = temp_db();
    let policy = PolicyEngine::new(&db);
    // A clock that stands still: no window resets mid-test.
    policy.set_rate_limit_clock(Arc::new(ManualClock::at(1_000_000)));
    policy
        .add_rate_limit(RateLimitOp::Put, 5, RateLimitScope::PerAgent)
        .unwrap();
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
