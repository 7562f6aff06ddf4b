//! The audit trail read back: a prefix scan over 1,000,000 dispatch records
//! (records/s), next to a raw RocksDB iterator over the same records measured
//! in the same run; and the audit queries an operator runs (one agent's
//! calls, the failed ones, the last 1 % by time), in records examined per
//! second of the whole trail.
//!
//! `AUDIT_RECORDS` overrides the count (e.g. 100000 for a quick look);
//! `AUDIT_NO_COMPACT=1` scans the fresh, uncompacted files instead;
//! `AUDIT_BLOCK_CACHE_MIB` sizes both stores' block caches (default: the
//! store's default, 32 MiB; 512 holds every block of 1M records).

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Instant;
use switchboard::namespace::{
    dispatch_key, new_invocation_id, now_ms, Attempt, DispatchRecord, DispatchStatus,
};
use switchboard::{
    AuditFilter, Database, DatabaseOptions, PolicyAction, PolicyEngine, ToolCategory,
};

const GROUP: &str = "audit";
const DEFAULT_RECORDS: u64 = 1_000_000;
const BATCH: u64 = 1_000;

/// A finished dispatch as `invoke` writes it, with one attempt.
fn record(i: u64) -> (String, Vec<u8>) {
    let invocation_id = new_invocation_id();
    let agent_id = format!("agent_{}", i % 16);
    let record = DispatchRecord {
        invocation_id: invocation_id.clone(),
        tool: "code_exec".into(),
        category: ToolCategory::Code,
        agent_id: Some(agent_id.clone()),
        session_id: i
            .is_multiple_of(4)
            .then(|| format!("session_{}", i % 10_000)),
        strategy: switchboard::RoutingStrategy::LeastLoaded,
        status: if failed(i) {
            DispatchStatus::Failed
        } else {
            DispatchStatus::Succeeded
        },
        attempts: vec![Attempt {
            agent_id,
            outcome: switchboard::namespace::AttemptOutcome::Succeeded,
            latency_ms: 1.25,
            error: None,
        }],
        started_at_ms: now_ms(),
        finished_at_ms: Some(now_ms()),
        latency_ms: Some(1.31),
        error: None,
        caller: None,
        input: None,
        input_truncated: false,
        output: None,
        output_truncated: false,
        trace_id: None,
    };
    let key = dispatch_key(&ToolCategory::Code, "code_exec", &invocation_id);
    (key, serde_json::to_vec(&record).unwrap())
}

/// One call in ten failed.
fn failed(i: u64) -> bool {
    i.is_multiple_of(10)
}

/// Writes `count` records, in transactions of `BATCH`, to both stores;
/// returns the time the last 1 % of them started from.
fn fill(db: &Database, raw: &rocksdb::DB, count: u64) -> u64 {
    let started = Instant::now();
    let mut last_percent_since = 0;
    for start in (0..count).step_by(BATCH as usize) {
        if start >= count - count / 100 && last_percent_since == 0 {
            last_percent_since = now_ms();
        }
        let mut tx = db.writes_to_reserved_namespaces().transaction();
        let mut raw_batch = rocksdb::WriteBatch::default();
        for i in start..(start + BATCH).min(count) {
            let (key, value) = record(i);
            tx.put(&key, &value).unwrap();
            raw_batch.put(key.as_bytes(), &value);
        }
        tx.commit().unwrap();
        raw.write(raw_batch).unwrap();
    }
    eprintln!(
        "audit: wrote {count} dispatch records to each store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    last_percent_since
}

fn audit(c: &mut Criterion) {
    let count = std::env::var("AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RECORDS);
    let dir = tempfile::tempdir().unwrap();
    let cache_bytes = std::env::var("AUDIT_BLOCK_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(
            switchboard::DatabaseOptions::default().block_cache_bytes,
            |mib| mib << 20,
        );
    let db = Database::open_with(
        dir.path().join("switchboard"),
        DatabaseOptions::default().block_cache_bytes(cache_bytes),
    )
    .unwrap();
    let raw = support::raw_batch_db_with_cache(&dir.path().join("raw"), cache_bytes);
    eprintln!("audit: block cache {} MiB per store", cache_bytes >> 20);
    let last_percent_since = fill(&db, &raw, count);
    if std::env::var_os("AUDIT_NO_COMPACT").is_none() {
        // An audit trail is mostly history: read it as RocksDB keeps it once
        // compaction has caught up, not as a burst of fresh L0 files.
        let started = Instant::now();
        db.compact().unwrap();
        raw.flush().unwrap();
        raw.compact_range::<&[u8], &[u8]>(None, None);
        eprintln!(
            "audit: compacted both stores in {:.1} s; {:.0} MiB of table files each",
            started.elapsed().as_secs_f64(),
            db.rocksdb_property("rocksdb.total-sst-files-size")
                .ok()
                .flatten()
                .unwrap_or(0) as f64
                / (1 << 20) as f64
        );
    }

    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group.throughput(Throughput::Elements(count));

    group.bench_function("raw_rocksdb_iterator", |b| {
        b.iter(|| {
            let mut read_options = rocksdb::ReadOptions::default();
            read_options.set_readahead_size(2 << 20);
            let mut it = raw.raw_iterator_opt(read_options);
            it.seek(b"tools/");
            let (mut n, mut bytes) = (0u64, 0usize);
            while let (Some(key), Some(value)) = (it.key(), it.value()) {
                if !key.starts_with(b"tools/") {
                    break;
                }
                n += 1;
                bytes += value.len();
                it.next();
            }
            assert_eq!(n, count);
            bytes
        })
    });

    group.bench_function("scan", |b| {
        b.iter(|| {
            let (mut n, mut bytes) = (0u64, 0usize);
            db.scan_from("tools/")
                .each(|_key, value| {
                    n += 1;
                    bytes += value.len();
                    true
                })
                .unwrap();
            assert_eq!(n, count);
            bytes
        })
    });

    group.bench_function("scan_iterator", |b| {
        b.iter(|| {
            let (mut n, mut bytes) = (0u64, 0usize);
            for item in db.scan("tools/") {
                let (_key, value) = item.unwrap();
                n += 1;
                bytes += value.len();
            }
            assert_eq!(n, count);
            bytes
        })
    });

    group.bench_function("scan_decoding_records", |b| {
        b.iter(|| {
            let mut succeeded = 0u64;
            db.scan_from("tools/")
                .each(|_key, value| {
                    let record: DispatchRecord = serde_json::from_slice(value).unwrap();
                    succeeded += u64::from(record.status == DispatchStatus::Succeeded);
                    true
                })
                .unwrap();
            assert_eq!(succeeded, count - count.div_ceil(10));
        })
    });

    // The audit queries: each answers over the whole trail.
    let db_ref = &db;
    let audit_query = |filter: AuditFilter| {
        move || {
            let mut n = 0u64;
            db_ref
                .scan_from("tools/")
                .audit(&filter)
                .each(|_key, _value| {
                    n += 1;
                    true
                })
                .unwrap();
            n
        }
    };
    let one_agent = audit_query(AuditFilter {
        agent: Some("agent_7".into()),
        ..AuditFilter::default()
    });
    group.bench_function("audit_one_agent", |b| {
        b.iter(|| assert_eq!(one_agent(), count / 16 + u64::from(count % 16 > 7)))
    });
    let failures = audit_query(AuditFilter {
        status: Some(DispatchStatus::Failed),
        ..AuditFilter::default()
    });
    group.bench_function("audit_failed", |b| {
        b.iter(|| assert_eq!(failures(), count.div_ceil(10)))
    });
    let last_percent = audit_query(AuditFilter {
        since_ms: Some(last_percent_since),
        ..AuditFilter::default()
    });
    group.bench_function("audit_last_percent", |b| {
        b.iter(|| {
            let n = last_percent();
            assert!(n >= count / 100 && n < count / 10, "{n}");
        })
    });

    // A read hook in scope makes the scan judge every key.
    PolicyEngine::new(&db)
        .before_read("tools/**", |_, _, ctx| match ctx.get("reader") {
            Some(_) => PolicyAction::Allow,
            None => PolicyAction::Deny("anonymous reader".into()),
        })
        .unwrap();
    let reader = switchboard::PolicyContext::new().with("reader", "auditor");
    group.bench_function("scan_one_read_hook", |b| {
        b.iter(|| {
            let mut n = 0u64;
            db.scan_from("tools/")
                .as_reader(&reader)
                .each(|_key, _value| {
                    n += 1;
                    true
                })
                .unwrap();
            assert_eq!(n, count);
        })
    });
    group.finish();

    support::report(
        GROUP,
        "raw_rocksdb_iterator",
        &[
            "scan",
            "scan_iterator",
            "scan_decoding_records",
            "audit_one_agent",
            "audit_failed",
            "audit_last_percent",
            "scan_one_read_hook",
        ],
    );
    println!("  (ops/s here are full scans/s; records/s = ops/s × {count})");
}

criterion_group!(benches, audit);
criterion_main!(benches);
