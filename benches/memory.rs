//! Resident memory of one process holding 10,000 agents and 1,000,000 sticky
//! sessions: each session is bound by a real `invoke` (so the store also holds
//! 1,000,000 dispatch records). Prints the resident set after each stage and
//! RocksDB's own accounting of its memtables and block cache.
//!
//! `MEMORY_AGENTS` and `MEMORY_SESSIONS` override the counts.

use std::time::Instant;
use switchboard::{Database, RoutingOptions, RoutingStrategy, ToolCategory, ToolDispatcher};

const CATEGORIES: [ToolCategory; 4] = [
    ToolCategory::Code,
    ToolCategory::Search,
    ToolCategory::Web,
    ToolCategory::Shell,
];
/// Tasks binding sessions at once (the machine has 2 cores).
const WORKERS: u64 = 4;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `VmRSS`/`VmHWM` line of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn report(stage: &str, db: Option<&Database>) {
    let mut line = format!(
        "  {stage:<44} RSS {:>8.1} MiB   peak {:>8.1} MiB",
        status_mib("VmRSS:"),
        status_mib("VmHWM:")
    );
    if let Some(db) = db {
        let mib = |name| {
            db.rocksdb_property(name)
                .ok()
                .flatten()
                .map_or(f64::NAN, |bytes| bytes as f64 / (1 << 20) as f64)
        };
        line += &format!(
            "   (RocksDB memtables {:.1} MiB, block cache {:.1} MiB)",
            mib("rocksdb.cur-size-all-mem-tables"),
            mib("rocksdb.block-cache-usage")
        );
    }
    println!("{line}");
}

fn main() {
    // `cargo bench` passes `--bench`; this is not a criterion bench.
    let agents = env_count("MEMORY_AGENTS", 10_000);
    let sessions = env_count("MEMORY_SESSIONS", 1_000_000);
    println!("memory: {agents} agents, {sessions} sticky sessions (one invoke each)");
    report("process start", None);

    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::open(dir.path()).expect("open");
    let dispatcher = ToolDispatcher::new(db.clone());
    report("database and dispatcher open", Some(&db));

    let started = Instant::now();
    for i in 0..agents {
        let category = CATEGORIES[i as usize % CATEGORIES.len()].clone();
        dispatcher
            .register_local_agent(
                &format!("agent_{i:05}"),
                vec![category],
                |_tool, input| async move { Ok::<_, switchboard::ToolError>(input) },
            )
            .expect("register");
    }
    report(
        &format!(
            "{agents} agents registered ({:.1} s)",
            started.elapsed().as_secs_f64()
        ),
        Some(&db),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    runtime.block_on(async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let dispatcher = dispatcher.clone();
                tokio::spawn(async move {
                    let input = serde_json::json!({"q": "memory"});
                    for i in (worker..sessions).step_by(WORKERS as usize) {
                        let category = CATEGORIES[i as usize % CATEGORIES.len()].clone();
                        let options = RoutingOptions::new()
                            .with_strategy(RoutingStrategy::Sticky)
                            .with_session_id(format!("session_{i:07}"));
                        dispatcher
                            .invoke("lookup", category, input.clone(), options)
                            .await
                            .expect("invoke");
                        if worker == 0 && i > 0 && i % 100_000 == 0 {
                            eprintln!("  ... {i} sessions bound");
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
    });
    report(
        &format!(
            "{sessions} sessions bound ({:.1} s)",
            started.elapsed().as_secs_f64()
        ),
        Some(&db),
    );
    let stored = db
        .rocksdb_property("rocksdb.estimate-num-keys")
        .ok()
        .flatten();
    println!("  keys in the store (RocksDB estimate): {stored:?}");
}
