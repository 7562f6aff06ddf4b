//! A full local-handler dispatch (intent and outcome records written) with no
//! policy, one glob hook, and one Rego module in scope, next to raw RocksDB
//! transactions of two puts measured in the same run (the baseline), and raw
//! `WriteBatch`es of two puts (what each of the dispatch's two commits is).

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard::{
    Database, PolicyAction, PolicyEngine, RoutingOptions, ToolCategory, ToolDispatcher, ToolError,
};

const GROUP: &str = "dispatch";

/// Puts the policy under test on a database.
type InstallPolicy = fn(&Database);

fn dispatcher(path: &std::path::Path) -> ToolDispatcher {
    let d = ToolDispatcher::new(Database::open(path).unwrap());
    d.register_local_agent(
        "bench_agent",
        vec![ToolCategory::Code],
        |_tool, input| async move { Ok::<_, ToolError>(input) },
    )
    .unwrap();
    d
}

fn dispatch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(GROUP);
    let input = serde_json::json!({"code": "print('hello')"});

    let raw = support::raw_baseline_db(&dir.path().join("raw"));
    let counter = AtomicU64::new(0);
    let record = br#"{"invocation_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","tool":"code_exec","category":"code","agent_id":"bench_agent","status":"succeeded"}"#;
    group.bench_function("raw_rocksdb_txn_2_puts", |b| {
        b.iter(|| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let txn = raw.transaction();
            txn.put(format!("tools/code/code_exec/{i:026}").as_bytes(), record)
                .unwrap();
            txn.put(
                format!("inflight/{i:026}").as_bytes(),
                b"tools/code/code_exec/x",
            )
            .unwrap();
            txn.commit().unwrap();
        })
    });
    drop(raw);

    let batch_db = support::raw_batch_db(&dir.path().join("raw_batch"));
    group.bench_function("raw_rocksdb_batch_2_puts", |b| {
        b.iter(|| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let mut batch = rocksdb::WriteBatch::default();
            batch.put(format!("tools/code/code_exec/{i:026}").as_bytes(), record);
            batch.put(
                format!("inflight/{i:026}").as_bytes(),
                b"tools/code/code_exec/x",
            );
            batch_db.write(batch).unwrap();
        })
    });
    drop(batch_db);

    let cases: [(&str, InstallPolicy); 3] = [
        ("invoke_no_policy", |_| {}),
        ("invoke_one_glob_hook", |db| {
            PolicyEngine::new(db)
                .before_write("tools/**", |_, _, ctx| match ctx.get("agent_id") {
                    Some(_) => PolicyAction::Allow,
                    None => PolicyAction::Deny("no agent".into()),
                })
                .unwrap()
        }),
        ("invoke_one_rego_module", |db| {
            PolicyEngine::new(db)
                .add_rego("tools/**", support::TRUSTED_AGENTS_REGO)
                .unwrap()
        }),
    ];
    for (name, install) in cases {
        let d = dispatcher(&dir.path().join(name));
        install(d.database());
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(d.invoke(
                    "code_exec",
                    ToolCategory::Code,
                    input.clone(),
                    RoutingOptions::new(),
                ))
                .unwrap()
            })
        });
    }
    group.finish();
    support::report(
        GROUP,
        "raw_rocksdb_txn_2_puts",
        &[
            "raw_rocksdb_batch_2_puts",
            "invoke_no_policy",
            "invoke_one_glob_hook",
            "invoke_one_rego_module",
        ],
    );
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
