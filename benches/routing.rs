//! Agent selection at 10 / 1,000 / 10,000 agents for every strategy.
//! Selection includes claiming and releasing the agent (in-flight counting).

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchboard::{
    Database, RoutingOptions, RoutingStrategy, ToolCategory, ToolDispatcher, ToolError,
};

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    for &n in &[10usize, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let dispatcher = ToolDispatcher::new(Database::open(dir.path()).unwrap());
        for i in 0..n {
            dispatcher
                .register_local_agent_with(
                    &format!("agent_{i}"),
                    switchboard::AgentConfig::new()
                        .with_tools(vec![ToolCategory::Code])
                        .with_priority((i % 10) as i32),
                    |_t, _i| async { Ok::<_, ToolError>(serde_json::Value::Null) },
                )
                .unwrap();
        }
        // Bind one session so Sticky measures the bound path (binding read included).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sticky = RoutingOptions::new()
            .with_strategy(RoutingStrategy::Sticky)
            .with_session_id("bench_session");
        rt.block_on(dispatcher.invoke("warm", ToolCategory::Code, serde_json::json!({}), sticky))
            .unwrap();
        for strategy in RoutingStrategy::ALL {
            let mut options = RoutingOptions::new().with_strategy(strategy);
            if strategy == RoutingStrategy::Sticky {
                options = options.with_session_id("bench_session");
            }
            group.bench_with_input(
                BenchmarkId::new(strategy.as_str(), n),
                &options,
                |b, options| {
                    b.iter(|| {
                        dispatcher
                            .select_agent(&ToolCategory::Code, options)
                            .unwrap()
                            .unwrap()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
