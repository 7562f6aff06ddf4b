//! Puts per second through the policy chain (no hooks, a glob-scoped closure,
//! a Rego module in the interpreter and as bytecode), next to raw RocksDB
//! transactions measured in the same run.

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard::{Database, PolicyAction, PolicyContext, PolicyEngine, RegoEvaluator};

const GROUP: &str = "store";
const VALUE: &[u8] =
    br#"{"agent_id":"bench_agent","status":"succeeded","latency_ms":1.25,"attempts":1}"#;

fn next_key(counter: &AtomicU64) -> String {
    format!("bench/k/{:012}", counter.fetch_add(1, Ordering::Relaxed))
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group(GROUP);

    let raw = support::raw_baseline_db(&dir.path().join("raw"));
    group.bench_function("raw_rocksdb_txn_put", |b| {
        b.iter(|| {
            let txn = raw.transaction();
            txn.put(next_key(&counter).as_bytes(), VALUE).unwrap();
            txn.commit().unwrap();
        })
    });
    drop(raw);

    let ctx = PolicyContext::new().with("agent_id", "bench_agent");
    let plain = Database::open(dir.path().join("plain")).unwrap();
    group.bench_function("put_no_hooks", |b| {
        b.iter(|| plain.put_with(&next_key(&counter), VALUE, &ctx).unwrap())
    });

    let glob = Database::open(dir.path().join("glob")).unwrap();
    PolicyEngine::new(&glob)
        .before_write("bench/**", |_, _, ctx| match ctx.get("agent_id") {
            Some(_) => PolicyAction::Allow,
            None => PolicyAction::Deny("no agent".into()),
        })
        .unwrap();
    group.bench_function("put_one_glob_hook", |b| {
        b.iter(|| glob.put_with(&next_key(&counter), VALUE, &ctx).unwrap())
    });

    let rego = Database::open(dir.path().join("rego")).unwrap();
    PolicyEngine::new(&rego)
        .add_rego("bench/**", support::TRUSTED_AGENTS_REGO)
        .unwrap();
    group.bench_function("put_one_rego_module", |b| {
        b.iter(|| rego.put_with(&next_key(&counter), VALUE, &ctx).unwrap())
    });

    let bytecode = Database::open(dir.path().join("rego_bytecode")).unwrap();
    let policy = PolicyEngine::new(&bytecode);
    policy.set_rego_evaluator(RegoEvaluator::Bytecode);
    policy
        .add_rego("bench/**", support::TRUSTED_AGENTS_REGO)
        .unwrap();
    group.bench_function("put_one_rego_module_bytecode", |b| {
        b.iter(|| bytecode.put_with(&next_key(&counter), VALUE, &ctx).unwrap())
    });
    group.finish();

    support::report(
        GROUP,
        "raw_rocksdb_txn_put",
        &[
            "put_no_hooks",
            "put_one_glob_hook",
            "put_one_rego_module",
            "put_one_rego_module_bytecode",
        ],
    );
}

criterion_group!(benches, store);
criterion_main!(benches);
