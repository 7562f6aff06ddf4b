//! The transactional key-value store: RocksDB behind an API whose every write
//! passes through the database's policy chain.
//!
//! There is one way to write: a [`Transaction`]. `put`, `put_with` and `delete`
//! are one-operation transactions. A commit first runs the before-hooks on every
//! staged operation (any Deny aborts the whole transaction before RocksDB sees
//! it), then commits atomically, then hands the committed operations to the
//! after-hooks.
//!
//! A transaction stages its writes here, in Rust, and commits them as one
//! RocksDB `WriteBatch`: atomic and in the write-ahead log as one record.
//! Read-modify-write transactions use optimistic concurrency
//! ([`Transaction::get_for_update`]), checked under striped key locks held
//! only around the batch write, so a `TransactionDB`'s lock manager is not
//! needed.
//!
//! Files: `options` (how to open), `transaction` (the commit path),
//! `write_queue` (group commit for commits from async code), `scan` (prefix
//! scans), `decision_log` (its persistence and pruning), `policy_store` (Rego
//! modules stored under `policies/`), `reserved` (namespace ownership),
//! `cache` (session bindings and tokens), `blocking` (store work that may
//! block, off the async worker).

mod blocking;
mod cache;
mod decision_log;
mod options;
mod policy_store;
mod reserved;
mod scan;
mod transaction;
mod write_queue;
pub(crate) use write_queue::gather_commits_on_this_thread;

pub(crate) use blocking::off_worker;
pub use decision_log::DECISION_LOG;
pub(crate) use options::table_options;
pub use options::{
    DatabaseOptions, Durability, DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_MAX_VALUE_BYTES,
};
pub use policy_store::{PolicyChange, StoredPolicy, POLICIES};
pub use reserved::ReservedWrites;
pub use scan::{Page, Scan, ScanBuilder, PAGE_HIDDEN_BUDGET};
pub use transaction::Transaction;

use crate::error::{Error, Result};
use crate::namespace::{validate_key, DispatchStatus, SESSIONS, TOKENS, TOOLS};
use crate::policy::decisions::Recorder;
use crate::policy::{
    ChainOwner, DecisionKind, Op, OperationKind, Phase, PolicyChain, PolicyContext,
};
use cache::PrefixCache;
use rocksdb::{Options, ReadOptions, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use transaction::KeyLocks;

struct Inner {
    rocks: DB,
    /// Session bindings, read on every sticky call, and issued tokens, read
    /// on every request that presents one.
    cached: PrefixCache,
    chain: Arc<PolicyChain>,
    /// Held by every commit over the keys it writes or checks.
    key_locks: KeyLocks,
    /// Commits from async code waiting for the group write in progress.
    write_queue: write_queue::WriteQueue,
    /// Entries under `policy_log/` (counted at open, kept by appends and pruning).
    decision_entries: std::sync::atomic::AtomicU64,
    /// The last decision-log key pruned; one pruner at a time holds it.
    prune_cursor: parking_lot::Mutex<Option<Vec<u8>>>,
    write_options: rocksdb::WriteOptions,
    options: DatabaseOptions,
    path: PathBuf,
    /// Held by each change to the stored policies (`policies/`).
    policy_changes: parking_lot::Mutex<()>,
}

/// A handle on one open store. Cloning is cheap and every clone shares the same
/// RocksDB instance and the same policy chain.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Another name for a [`Database`] handle.
pub type Connection = Database;

impl crate::policy::sealed::Sealed for Database {}

impl ChainOwner for Database {
    fn policy_chain(&self) -> &Arc<PolicyChain> {
        &self.inner.chain
    }
}

impl Database {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Self::open_with(path, DatabaseOptions::default())
    }

    /// Opens (creating if needed) the store at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: DatabaseOptions) -> Result<Database> {
        let path = path.as_ref();
        if options.max_value_bytes == 0 {
            return Err(Error::invalid("max_value_bytes must be at least 1"));
        }
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_options.increase_parallelism(2);
        db_options.set_block_based_table_factory(&table_options(options.block_cache_bytes));
        let rocks = DB::open(&db_options, path).map_err(|e| {
            Error::Storage(format!(
                "cannot open {}: {}",
                path.display(),
                e.into_string()
            ))
        })?;
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(options.durability == Durability::Sync);
        let decision_entries = {
            let mut it = raw_prefix_iter(&rocks, DECISION_LOG);
            let mut n = 0u64;
            while it.valid() {
                n += 1;
                it.next();
            }
            n
        };
        let db = Database {
            inner: Arc::new(Inner {
                rocks,
                cached: PrefixCache::new(&[SESSIONS, TOKENS]),
                chain: Arc::new(PolicyChain::new(options.max_value_bytes)),
                key_locks: KeyLocks::default(),
                write_queue: Default::default(),
                decision_entries: decision_entries.into(),
                prune_cursor: parking_lot::Mutex::new(None),
                write_options,
                options,
                path: path.to_path_buf(),
                policy_changes: parking_lot::Mutex::new(()),
            }),
        };
        // Every process that opens the store runs under its stored policies.
        db.install_stored_policies()?;
        Ok(db)
    }

    /// Where the store lives on disk.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DatabaseOptions {
        &self.inner.options
    }

    /// Whether a commit writing `keys` may block its thread: every commit
    /// fsyncs, or a hook that may block covers one of the keys.
    pub(crate) fn commit_may_block(&self, keys: impl FnOnce() -> Vec<String>) -> bool {
        self.inner.options.durability == Durability::Sync || self.inner.chain.may_block_on(keys)
    }

    /// A RocksDB integer property, e.g. `rocksdb.cur-size-all-mem-tables`,
    /// `rocksdb.block-cache-usage` or `rocksdb.estimate-num-keys`: for
    /// monitoring. `None` if RocksDB does not know the name.
    pub fn rocksdb_property(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.inner.rocks.property_int_value(name)?)
    }

    /// Flushes the memtables and compacts the whole key space into sorted
    /// files: slow, but later scans merge fewer sources. For maintenance
    /// windows, e.g. before exporting a long audit trail.
    pub fn compact(&self) -> Result<()> {
        self.inner.rocks.flush()?;
        self.inner.rocks.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    /// Reads one key, with an empty policy context.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_with(key, &PolicyContext::new())
    }

    /// Reads one key through the read hooks: a before-read Deny (or a read
    /// rate limit) refuses it, an after-read `Modify` returns a redacted value.
    pub fn get_with(&self, key: &str, ctx: &PolicyContext) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let chain = &self.inner.chain;
        if !chain.judges_reads() {
            return Ok(self.inner.rocks.get(key.as_bytes())?);
        }
        let before = chain.run(Phase::Before, Op::Get, key, None, ctx);
        self.record_decisions(before.decisions);
        before.value?;
        match chain.reserve([(Op::Get, key, ctx)]) {
            Ok(reservation) => reservation.commit(),
            Err(refusal) => {
                let (e, decision) = *refusal;
                self.record_decisions(vec![decision]);
                return Err(e);
            }
        }
        let Some(value) = self.inner.rocks.get(key.as_bytes())? else {
            return Ok(None);
        };
        let after = chain.run(Phase::After, Op::Get, key, Some(value), ctx);
        self.record_decisions(after.decisions);
        after.value
    }

    /// Whether reads pass any hook or rate limit: where none does, every
    /// reader sees every key, and a filter by reader can be skipped.
    pub(crate) fn judges_reads(&self) -> bool {
        self.inner.chain.judges_reads()
    }

    /// Reads one key without the read hooks: for Switchboard's own
    /// bookkeeping (session bindings, loading registrations, recovery).
    pub(crate) fn get_unjudged(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let load = || Ok(self.inner.rocks.get(key.as_bytes())?);
        if self.inner.cached.covers(key) {
            return self.inner.cached.get_or_load(key, load);
        }
        load()
    }

    /// Writes one key with an empty policy context.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.put_with(key, value, &PolicyContext::new())
    }

    /// Writes one key; `ctx` is handed to the policy hooks.
    pub fn put_with(&self, key: &str, value: &[u8], ctx: &PolicyContext) -> Result<()> {
        let mut tx = self.transaction();
        tx.put_with(key, value, ctx)?;
        tx.commit()
    }

    /// Deletes one key (a no-op if absent, but hooks still run).
    pub fn delete(&self, key: &str) -> Result<()> {
        self.delete_with(key, &PolicyContext::new())
    }

    /// Deletes one key; `ctx` is handed to the policy hooks.
    pub fn delete_with(&self, key: &str, ctx: &PolicyContext) -> Result<()> {
        let mut tx = self.transaction();
        tx.delete_with(key, ctx)?;
        tx.commit()
    }

    /// Retires finished dispatch records (`tools/…`) whose invocation is
    /// older than `older_than`: the one way to shrink the audit trail. Every
    /// delete passes the policy chain with `action` = `prune` (a
    /// `before_delete` Deny refuses the whole pruning, and nothing is
    /// deleted), and the pruning itself is recorded as one decision in the
    /// decision log. Records still in flight are kept. Returns how many
    /// records were deleted.
    pub fn prune_dispatch_records(&self, older_than: Duration) -> Result<u64> {
        let cutoff = crate::namespace::now_ms().saturating_sub(older_than.as_millis() as u64);
        let ctx = PolicyContext::new().for_operation(OperationKind::Prune);
        let mut old = Vec::new();
        for item in self.scan_unjudged(TOOLS, None) {
            let (key, value) = item?;
            let id = key.rsplit('/').next().unwrap_or_default();
            let Some(at) = crate::namespace::invocation_id_time_ms(id) else {
                continue;
            };
            let in_flight = serde_json::from_slice::<crate::namespace::DispatchRecord>(&value)
                .is_ok_and(|r| r.status == DispatchStatus::InFlight);
            if at < cutoff && !in_flight {
                old.push(key);
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let mut tx = self.owner_transaction();
        for key in &old {
            tx.delete_with(key, &ctx)?;
        }
        tx.commit()?;
        let mut recorder = Recorder::new(Op::Delete, Phase::Before, TOOLS, &ctx);
        recorder.record(
            "prune_dispatch_records".into(),
            DecisionKind::Log,
            &format!(
                "pruned {} dispatch records older than {older_than:?}",
                old.len()
            ),
        );
        self.record_decisions(recorder.decisions);
        Ok(old.len() as u64)
    }
}

/// A raw iterator over `prefix`, positioned at its first key.
fn raw_prefix_iter<'a>(
    rocks: &'a DB,
    prefix: &str,
) -> rocksdb::DBRawIteratorWithThreadMode<'a, DB> {
    let mut it = rocks.raw_iterator_opt(scan_read_options(prefix));
    it.seek(prefix.as_bytes());
    it
}

/// Reads for a scan: with readahead, so a long scan reads table files in
/// large sequential chunks instead of one block at a time.
fn scan_read_options(prefix: &str) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_readahead_size(SCAN_READAHEAD);
    // The audit trail is history read front to back: its blocks would only
    // evict the hot ones (agents, sessions) from the block cache.
    if prefix.starts_with(TOOLS) || prefix.starts_with(DECISION_LOG) {
        read_options.fill_cache(false);
    }
    if let Some(end) = prefix_successor(prefix.as_bytes()) {
        read_options.set_iterate_upper_bound(end);
    }
    read_options
}

const SCAN_READAHEAD: usize = 2 << 20;

/// Where a scan of `prefix` resuming after `after` (exclusive) starts.
fn scan_start(prefix: &str, after: Option<&str>) -> Vec<u8> {
    match after {
        Some(after) if after.as_bytes() >= prefix.as_bytes() => {
            let mut start = after.as_bytes().to_vec();
            start.push(0);
            start
        }
        _ => prefix.as_bytes().to_vec(),
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
