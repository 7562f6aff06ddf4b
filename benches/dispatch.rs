//! A full local-handler dispatch (intent and outcome records written) with no
//! policy, one glob hook, and one Rego module in scope (the default
//! evaluator, which runs it on the VM, and the interpreter), next to raw RocksDB transactions of two puts (the baseline) and
//! raw `WriteBatch`es of two puts (what each of the dispatch's two commits
//! is). Criterion measures each in turn; an interleaved pass then takes every
//! ratio within one round, which is what docs/benchmarks.md reports.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and the other `OTEL_*` variables,
//! e.g. `OTEL_TRACES_SAMPLER`), the dispatches are traced as a library user
//! traces them (`Telemetry::start`, its layer in the process's subscriber),
//! for the traced-throughput comparison of docs/benchmarks.md, "Traces".

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard::telemetry::{Telemetry, TelemetryConfig};
use switchboard::{
    Database, PolicyAction, PolicyEngine, RegoEvaluator, RoutingOptions, ToolCategory,
    ToolDispatcher, ToolError,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const GROUP: &str = "dispatch";
const RAW_TXN: &str = "raw_rocksdb_txn_2_puts";
const RAW_BATCH: &str = "raw_rocksdb_batch_2_puts";
const RECORD: &[u8] = br#"{"invocation_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","tool":"code_exec","category":"code","agent_id":"bench_agent","status":"succeeded"}"#;

/// Puts the policy under test on a database.
type InstallPolicy = fn(&Database);

const CASES: [(&str, InstallPolicy); 4] = [
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
    ("invoke_one_rego_module_interpreter", |db| {
        let policy = PolicyEngine::new(db);
        policy.set_rego_evaluator(RegoEvaluator::Interpreter);
        policy
            .add_rego("tools/**", support::TRUSTED_AGENTS_REGO)
            .unwrap()
    }),
];

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

/// The trace exporter the `OTEL_*` variables ask for, if any, on a runtime
/// of its own (the measured calls run on current-thread runtimes, which
/// would run its exports only while they are driven).
fn traced() -> Option<(tokio::runtime::Runtime, Telemetry)> {
    let config = TelemetryConfig::default()
        .with_env()
        .expect("the OTEL_* variables");
    config.traces_url()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let telemetry = {
        let _inside = runtime.enter();
        Telemetry::start(&config).expect("the trace exporter")?
    };
    tracing_subscriber::registry()
        .with(telemetry.layer::<tracing_subscriber::Registry>())
        .init();
    println!("dispatch: traced, exporting to {}", config.traces_url()?);
    Some((runtime, telemetry))
}

fn dispatch(c: &mut Criterion) {
    let traced = traced();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = serde_json::json!({"code": "print('hello')"});
    let counter = AtomicU64::new(0);

    let raw = support::raw_baseline_db(&dir.path().join("raw"));
    let raw_txn = || {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let txn = raw.transaction();
        txn.put(format!("tools/code/code_exec/{i:026}").as_bytes(), RECORD)
            .unwrap();
        txn.put(
            format!("inflight/{i:026}").as_bytes(),
            b"tools/code/code_exec/x",
        )
        .unwrap();
        txn.commit().unwrap();
    };
    let batch_db = support::raw_batch_db(&dir.path().join("raw_batch"));
    let raw_batch = || {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(format!("tools/code/code_exec/{i:026}").as_bytes(), RECORD);
        batch.put(
            format!("inflight/{i:026}").as_bytes(),
            b"tools/code/code_exec/x",
        );
        batch_db.write(batch).unwrap();
    };
    let dispatchers: Vec<(&str, ToolDispatcher)> = CASES
        .iter()
        .map(|(name, install)| {
            let d = dispatcher(&dir.path().join(name));
            install(d.database());
            (*name, d)
        })
        .collect();
    let invoke = |d: &ToolDispatcher| {
        rt.block_on(d.invoke(
            "code_exec",
            ToolCategory::Code,
            input.clone(),
            RoutingOptions::new(),
        ))
        .unwrap();
    };

    let mut group = c.benchmark_group(GROUP);
    group.bench_function(RAW_TXN, |b| b.iter(raw_txn));
    group.bench_function(RAW_BATCH, |b| b.iter(raw_batch));
    for (name, d) in &dispatchers {
        group.bench_function(*name, |b| b.iter(|| invoke(d)));
    }
    group.finish();
    let names: Vec<&str> = std::iter::once(RAW_BATCH)
        .chain(CASES.iter().map(|(name, _)| *name))
        .collect();
    support::report(GROUP, RAW_TXN, &names);

    let mut cases: Vec<support::Case<'_>> = vec![
        (RAW_TXN, Box::new(raw_txn)),
        (RAW_BATCH, Box::new(raw_batch)),
    ];
    for (name, d) in &dispatchers {
        cases.push((name, Box::new(move || invoke(d))));
    }
    support::interleaved(GROUP, 21, 2_000, &mut cases);
    scaling(dir.path());
    if let Some((runtime, telemetry)) = traced {
        telemetry.shutdown();
        drop(runtime);
    }
}

/// Dispatches per second with the glob hook from `threads` threads sharing
/// one dispatcher, `total` calls in all.
fn dispatches_per_sec(d: &ToolDispatcher, threads: usize, total: usize) -> f64 {
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for _ in 0..total / threads {
                    rt.block_on(d.invoke(
                        "code_exec",
                        ToolCategory::Code,
                        serde_json::json!({"code": "print('hello')"}),
                        RoutingOptions::new(),
                    ))
                    .unwrap();
                }
            });
        }
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// Two threads against one, alternated over several rounds (the machine is
/// shared: the median ratio of the rounds is what counts).
fn scaling(dir: &std::path::Path) {
    let d = dispatcher(&dir.join("scaling"));
    (CASES[1].1)(d.database());
    const TOTAL: usize = 4_000;
    dispatches_per_sec(&d, 2, TOTAL); // warm up
    let mut ratios: Vec<f64> = (0..7)
        .map(|_| dispatches_per_sec(&d, 2, TOTAL) / dispatches_per_sec(&d, 1, TOTAL))
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "dispatch scaling (one glob hook, local agent): 2 threads = {:.2}x 1 thread \
         (median of {} rounds of {TOTAL} calls each; min {:.2}x, max {:.2}x)",
        ratios[ratios.len() / 2],
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
