//! Shared by the benches: the ratio report printed after each group.
//!
//! Machines here are shared and noisy, so absolute numbers are printed next to
//! a baseline measured in the same run, and the ratio is what to compare.
#![allow(dead_code)]

use std::path::PathBuf;

fn criterion_dir() -> PathBuf {
    if let Ok(home) = std::env::var("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_string());
    PathBuf::from(target).join("criterion")
}

/// Mean time per iteration (ns) that criterion measured for `group/id` in this run.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Prints ops/s for each id of `group` and its ratio to `baseline`.
pub fn report(group: &str, baseline: &str, ids: &[&str]) {
    let Some(base) = mean_ns(group, baseline) else {
        println!("{group}: no estimate for the baseline {baseline} (filtered out?)");
        return;
    };
    println!("\n{group}: throughput relative to {baseline} (same run)");
    println!("  {:<44} {:>12} {:>8}", "benchmark", "ops/s", "ratio");
    for id in std::iter::once(&baseline).chain(ids) {
        match mean_ns(group, id) {
            Some(ns) => println!(
                "  {:<44} {:>12.0} {:>7.1}%",
                id,
                1e9 / ns,
                100.0 * base / ns
            ),
            None => println!("  {:<44} {:>12} {:>8}", id, "-", "-"),
        }
    }
}

/// The RocksDB options `Database::open` uses (with `block_cache_bytes`).
fn raw_options(block_cache_bytes: usize) -> rocksdb::Options {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    options.increase_parallelism(2);
    // Mirrors the table options `Database::open` sets (16 KiB blocks, an LRU
    // block cache): the library keeps that RocksDB type to itself.
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_size(16 << 10);
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(block_cache_bytes));
    options.set_block_based_table_factory(&table);
    options
}

/// A bare RocksDB `TransactionDB` opened with the options `Database::open`
/// uses: the baseline every ratio is taken against.
pub fn raw_baseline_db(path: &std::path::Path) -> rocksdb::TransactionDB {
    rocksdb::TransactionDB::open(
        &raw_options(switchboard::DatabaseOptions::default().block_cache_bytes),
        &rocksdb::TransactionDBOptions::default(),
        path,
    )
    .unwrap()
}

/// A bare RocksDB `DB` with the same options: what `Database` commits to (one
/// `WriteBatch` per transaction), so the floor under its writes.
pub fn raw_batch_db(path: &std::path::Path) -> rocksdb::DB {
    raw_batch_db_with_cache(
        path,
        switchboard::DatabaseOptions::default().block_cache_bytes,
    )
}

/// [`raw_batch_db`] with a block cache of `bytes`.
pub fn raw_batch_db_with_cache(path: &std::path::Path, bytes: usize) -> rocksdb::DB {
    rocksdb::DB::open(&raw_options(bytes), path).unwrap()
}

/// A Rego module that inspects the context, as a realistic in-scope policy.
pub const TRUSTED_AGENTS_REGO: &str = r#"
package bench.trusted
import rego.v1
trusted := {"agent_0", "agent_1", "bench_agent"}
deny contains msg if {
    input.op == "put"
    not input.context.agent_id in trusted
    msg := sprintf("agent %v is not trusted", [input.context.agent_id])
}
"#;

/// One benchmark of an interleaved comparison: a name and one iteration.
pub type Case<'a> = (&'a str, Box<dyn FnMut() + 'a>);

/// Runs every case for `batch` iterations in turn, `rounds` times over, and
/// prints each case's median ops/s and its median ratio to the first case (the
/// baseline). Each ratio is taken within one round, so a shared machine's
/// drift (seen here to move a raw commit by ±40 % between criterion runs)
/// cancels out. Bounded: `rounds × batch` iterations per case.
pub fn interleaved(title: &str, rounds: usize, batch: usize, cases: &mut [Case<'_>]) {
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, (_, run)) in cases.iter_mut().enumerate() {
            let started = std::time::Instant::now();
            for _ in 0..batch {
                run();
            }
            rates[i].push(batch as f64 / started.elapsed().as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\n{title}: interleaved, {rounds} rounds of {batch} per case; medians");
    println!("  {:<44} {:>12} {:>8}", "benchmark", "ops/s", "ratio");
    for (i, (name, _)) in cases.iter().enumerate() {
        let ratios = rates[i]
            .iter()
            .zip(&rates[0])
            .map(|(r, base)| r / base)
            .collect();
        println!(
            "  {:<44} {:>12.0} {:>7.1}%",
            name,
            median(rates[i].clone()),
            100.0 * median(ratios)
        );
    }
}
