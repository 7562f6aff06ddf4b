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
//! RocksDB `WriteBatch`: atomic and in the write-ahead log as one record, which
//! is all a commit needs. No write reads under a RocksDB lock (Switchboard
//! serialises its own read-modify-writes, e.g. per session), so a
//! `TransactionDB`'s lock manager would only add cost.

mod cache;

use crate::error::{Error, Result};
use crate::namespace::{validate_key, validate_prefix, SESSIONS};
use crate::policy::decisions::Decision;
use crate::policy::{Op, PolicyChain, PolicyContext};
use cache::PrefixCache;
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default ceiling on a stored value's size.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// The default size of the cache of uncompressed table blocks.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 32 << 20;

/// When a commit is considered durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is in the write-ahead log before it returns, but the log is
    /// not fsynced: a crashed *process* loses nothing, a crashed *machine* may
    /// lose the last moments of writes. The default.
    #[default]
    Buffered,
    /// The log is fsynced on every commit: survives power loss, costs a disk flush.
    Sync,
}

/// How to open a [`Database`].
#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    /// See [`Durability`].
    pub durability: Durability,
    /// Values larger than this are refused with [`Error::InvalidInput`].
    pub max_value_bytes: usize,
    /// Memory for uncompressed table blocks. Long scans read fastest when the
    /// part of the store they cover fits (see docs/benchmarks.md).
    pub block_cache_bytes: usize,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            durability: Durability::Buffered,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

impl DatabaseOptions {
    /// Sets the durability of commits.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the largest value accepted.
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }

    /// Sets the memory for cached table blocks.
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }
}

/// Where the decision log lives; written only by the policy chain itself.
pub const DECISION_LOG: &str = "policy_log/";

struct Inner {
    rocks: DB,
    /// Session bindings, read on every sticky call.
    bindings: PrefixCache,
    chain: Arc<PolicyChain>,
    /// Entries under `policy_log/` (counted at open, kept by appends and pruning).
    decision_entries: std::sync::atomic::AtomicU64,
    /// One pruner at a time, so counts stay exact.
    pruning: parking_lot::Mutex<()>,
    write_options: WriteOptions,
    options: DatabaseOptions,
    path: PathBuf,
}

/// A handle on one open store. Cloning is cheap and every clone shares the same
/// RocksDB instance and the same policy chain.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// The brief's other name for a [`Database`] handle.
pub type Connection = Database;

pub(crate) fn validate_value(value: &[u8], max_value_bytes: usize) -> Result<()> {
    if value.len() > max_value_bytes {
        return Err(Error::invalid(format!(
            "value is {} bytes; the limit is {max_value_bytes} (DatabaseOptions::max_value_bytes)",
            value.len()
        )));
    }
    if let Err(e) = std::str::from_utf8(value) {
        return Err(Error::invalid(format!(
            "value is not UTF-8 (invalid byte at offset {}); store JSON or text",
            e.valid_up_to()
        )));
    }
    Ok(())
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
        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.durability == Durability::Sync);
        let decision_entries = raw_prefix_iter(&rocks, DECISION_LOG).count() as u64;
        Ok(Database {
            inner: Arc::new(Inner {
                rocks,
                bindings: PrefixCache::new(SESSIONS),
                chain: Arc::new(PolicyChain::default()),
                decision_entries: decision_entries.into(),
                pruning: parking_lot::Mutex::new(()),
                write_options,
                options,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Where the store lives on disk.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DatabaseOptions {
        &self.inner.options
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

    pub(crate) fn policy_chain(&self) -> &Arc<PolicyChain> {
        &self.inner.chain
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
        let (allowed, decisions) = chain.check_read(key, ctx);
        self.record_decisions(decisions);
        allowed?;
        let (limited, decision) = chain.limit_read(key, ctx);
        self.record_decisions(decision.into_iter().collect());
        limited?;
        let Some(value) = self.inner.rocks.get(key.as_bytes())? else {
            return Ok(None);
        };
        let (value, decisions) = chain.filter_read(key, value, ctx);
        self.record_decisions(decisions);
        value.map(Some)
    }

    /// Reads one key without the read hooks: for Switchboard's own
    /// bookkeeping (session bindings, loading registrations, recovery).
    pub(crate) fn get_unjudged(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let load = || Ok(self.inner.rocks.get(key.as_bytes())?);
        if self.inner.bindings.covers(key) {
            return self.inner.bindings.get_or_load(key, load);
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

    /// Starts a transaction: stage writes, then [`Transaction::commit`].
    pub fn transaction(&self) -> Transaction {
        Transaction {
            db: self.clone(),
            staged: Vec::new(),
        }
    }

    /// Every key starting with `prefix`, in key order, with its value, through
    /// the read hooks with an empty context (see [`scan_with`](Self::scan_with)).
    pub fn scan(&self, prefix: &str) -> Scan<'_> {
        self.scan_after_with(prefix, None, &PolicyContext::new())
    }

    /// Like [`scan`](Self::scan), starting after `after` (exclusive): the way to
    /// page through a long prefix.
    pub fn scan_after(&self, prefix: &str, after: Option<&str>) -> Scan<'_> {
        self.scan_after_with(prefix, after, &PolicyContext::new())
    }

    /// A scan judged per key by the read hooks: a key a hook denies is
    /// skipped, a value an after-read hook redacts comes back redacted; the
    /// scan never stops because of one key. It counts as one read against read
    /// rate limits (refused as a whole, as its first item, when over).
    pub fn scan_with(&self, prefix: &str, ctx: &PolicyContext) -> Scan<'_> {
        self.scan_after_with(prefix, None, ctx)
    }

    /// [`scan_with`](Self::scan_with) starting after `after`.
    pub fn scan_after_with(
        &self,
        prefix: &str,
        after: Option<&str>,
        ctx: &PolicyContext,
    ) -> Scan<'_> {
        if let Err(e) = validate_prefix(prefix) {
            return Scan::failed(e);
        }
        let judge = match self.admit_scan(prefix, ctx) {
            Ok(judged) => judged.then(|| ctx.clone()),
            Err(e) => return Scan::failed(e),
        };
        let mut scan = self.scan_from(prefix, after);
        scan.judge = judge.map(|ctx| (self, ctx));
        scan
    }

    /// Visits every key under `prefix` in key order (starting after `after`,
    /// if given) without copying: `visit(key, value)` sees each pair in
    /// RocksDB's own buffers and returns `false` to stop early. The fastest way
    /// to read an audit trail; [`scan`](Self::scan) is the same walk as an
    /// iterator of owned pairs. Judged by the read hooks with an empty context
    /// (see [`scan_each_with`](Self::scan_each_with)).
    pub fn scan_each(
        &self,
        prefix: &str,
        after: Option<&str>,
        visit: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        self.scan_each_with(prefix, after, &PolicyContext::new(), visit)
    }

    /// [`scan_each`](Self::scan_each) as the reader `ctx`: with read hooks in
    /// place, a key a hook denies is skipped and a redacted value is what
    /// `visit` sees, exactly as in [`scan_with`](Self::scan_with); a read rate
    /// limit refuses the whole scan before it starts.
    pub fn scan_each_with(
        &self,
        prefix: &str,
        after: Option<&str>,
        ctx: &PolicyContext,
        mut visit: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        validate_prefix(prefix)?;
        let judged = self.admit_scan(prefix, ctx)?;
        let mut it = self.raw_iter_from(prefix, after);
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let key = std::str::from_utf8(key)
                .map_err(|_| Error::storage("a stored key is not UTF-8"))?;
            let keep_going = if judged {
                match self.judge_read(key, value.to_vec(), ctx) {
                    Some(value) => visit(key, &value),
                    None => true,
                }
            } else {
                visit(key, value)
            };
            if !keep_going {
                return Ok(());
            }
            it.next();
        }
        Ok(it.status()?)
    }

    /// Whether a scan of `prefix` is judged by the read hooks; when it is, the
    /// whole scan counts once against the read rate limits, which may refuse it.
    fn admit_scan(&self, prefix: &str, ctx: &PolicyContext) -> Result<bool> {
        let chain = &self.inner.chain;
        if !chain.judges_reads() {
            return Ok(false);
        }
        let (limited, decision) = chain.limit_read(prefix, ctx);
        self.record_decisions(decision.into_iter().collect());
        limited.map(|()| true)
    }

    /// One scanned key through the read hooks: the value the reader may see,
    /// or `None` when a hook hides the key.
    fn judge_read(&self, key: &str, value: Vec<u8>, ctx: &PolicyContext) -> Option<Vec<u8>> {
        let chain = &self.inner.chain;
        let (allowed, decisions) = chain.check_read(key, ctx);
        self.record_decisions(decisions);
        allowed.ok()?;
        let (value, decisions) = chain.filter_read(key, value, ctx);
        self.record_decisions(decisions);
        value.ok()
    }

    /// A scan without the read hooks, for Switchboard's own bookkeeping.
    pub(crate) fn scan_unjudged(&self, prefix: &str, after: Option<&str>) -> Scan<'_> {
        if let Err(e) = validate_prefix(prefix) {
            return Scan::failed(e);
        }
        self.scan_from(prefix, after)
    }

    /// The raw ordered scan of an already validated prefix.
    fn scan_from(&self, prefix: &str, after: Option<&str>) -> Scan<'_> {
        Scan {
            iter: Some(prefix_iter_from(
                &self.inner.rocks,
                prefix,
                &scan_start(prefix, after),
            )),
            pending_error: None,
            judge: None,
        }
    }

    /// A raw iterator positioned at the first key of `prefix` after `after`.
    fn raw_iter_from(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> rocksdb::DBRawIteratorWithThreadMode<'_, DB> {
        let mut it = self.inner.rocks.raw_iterator_opt(scan_read_options(prefix));
        it.seek(scan_start(prefix, after));
        it
    }

    /// Appends decisions to the decision log in their own transaction (for
    /// denials and reads, which have no write of their own to join), then
    /// prunes. A failure is logged: it must not turn an allowed read into an error.
    fn record_decisions(&self, decisions: Vec<Decision>) {
        if decisions.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        let staged = decisions.len() as u64;
        let result = stage_decisions(&mut batch, decisions).and_then(|()| {
            Ok(self
                .inner
                .rocks
                .write_opt(batch, &self.inner.write_options)?)
        });
        match result {
            Ok(()) => self.decisions_added(staged),
            Err(e) => tracing::warn!(error = %e, "could not write to the decision log"),
        }
    }

    fn decisions_added(&self, added: u64) {
        use std::sync::atomic::Ordering;
        self.inner
            .decision_entries
            .fetch_add(added, Ordering::AcqRel);
        let retention = self.inner.chain.retention();
        let over = self.inner.decision_entries.load(Ordering::Acquire) > retention.max_entries;
        if !over && retention.max_age.is_none() {
            return;
        }
        let _one_pruner = self.inner.pruning.lock();
        let cutoff_ms = retention
            .max_age
            .map(|age| crate::namespace::now_ms().saturating_sub(age.as_millis() as u64));
        let mut pruned = 0u64;
        for item in raw_prefix_iter(&self.inner.rocks, DECISION_LOG) {
            let Ok((key, _)) = item else { break };
            let count = self.inner.decision_entries.load(Ordering::Acquire) - pruned;
            let too_many = count > retention.max_entries;
            let too_old = cutoff_ms.is_some_and(|cutoff| {
                std::str::from_utf8(&key[DECISION_LOG.len()..])
                    .ok()
                    .and_then(crate::namespace::invocation_id_time_ms)
                    .is_some_and(|at| at < cutoff)
            });
            if !too_many && !too_old {
                break;
            }
            if let Err(e) = self.inner.rocks.delete_opt(&key, &self.inner.write_options) {
                tracing::warn!(error = %e, "could not prune the decision log");
                break;
            }
            pruned += 1;
        }
        self.inner
            .decision_entries
            .fetch_sub(pruned, Ordering::AcqRel);
    }

    fn commit_staged(&self, staged: Vec<Staged>, judged: bool) -> Result<()> {
        let chain = &self.inner.chain;
        let max = self.inner.options.max_value_bytes;
        let mut checked = Vec::with_capacity(staged.len());
        let mut decisions = Vec::new();
        for op in staged {
            if !judged {
                checked.push(op);
                continue;
            }
            let (value, mut made) = chain.check_before(op.op, &op.key, op.value, &op.ctx, max);
            decisions.append(&mut made);
            match value {
                Ok(value) => checked.push(Staged { value, ..op }),
                Err(e) => {
                    self.record_decisions(decisions);
                    return Err(e);
                }
            }
        }
        let mut batch = WriteBatch::default();
        for op in &checked {
            match &op.value {
                Some(v) => batch.put(op.key.as_bytes(), v),
                None => batch.delete(op.key.as_bytes()),
            }
        }
        // Modify and Log decisions commit with the write they were made about.
        let logged = decisions.len() as u64;
        stage_decisions(&mut batch, decisions)?;
        let mut cached = self
            .inner
            .bindings
            .lock_for_write(checked.iter().map(|op| op.key.as_str()));
        self.inner
            .rocks
            .write_opt(batch, &self.inner.write_options)?;
        for op in &checked {
            cached.committed(&op.key, op.value.as_deref());
        }
        // Released before any hook runs: a hook may write again.
        drop(cached);
        if logged > 0 {
            self.decisions_added(logged);
        }
        if chain.has_after_hooks() {
            for op in &checked {
                let made =
                    chain.notify_after(op.op, &op.key, op.value.as_deref().unwrap_or(&[]), &op.ctx);
                self.record_decisions(made);
            }
        }
        Ok(())
    }
}

fn stage_decisions(batch: &mut WriteBatch, decisions: Vec<Decision>) -> Result<()> {
    for decision in decisions {
        let key = format!("{DECISION_LOG}{}", crate::namespace::new_invocation_id());
        let value = serde_json::to_vec(&decision).map_err(Error::storage)?;
        batch.put(key.as_bytes(), value);
    }
    Ok(())
}

fn prefix_iter_from<'a>(
    rocks: &'a DB,
    prefix: &str,
    start: &[u8],
) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    rocks.iterator_opt(
        IteratorMode::From(start, Direction::Forward),
        scan_read_options(prefix),
    )
}

fn raw_prefix_iter<'a>(rocks: &'a DB, prefix: &str) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    prefix_iter_from(rocks, prefix, prefix.as_bytes())
}

/// A key a caller may write: valid, and outside the decision log, which only
/// the policy chain writes.
fn validate_writable_key(key: &str) -> Result<()> {
    validate_key(key)?;
    if key.starts_with(DECISION_LOG) {
        return Err(Error::invalid(format!(
            "{key:?} is in {DECISION_LOG}, which only the policy chain writes; read it with scan(\"{DECISION_LOG}\")"
        )));
    }
    Ok(())
}

/// The table format: 16 KiB blocks (RocksDB's default is 4 KiB), because the
/// store is read mostly by long prefix scans of records a few hundred bytes
/// long, which then cost a quarter of the block reads and checksums; and a
/// block cache of `block_cache_bytes`.
pub fn table_options(block_cache_bytes: usize) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_size(16 << 10);
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(block_cache_bytes));
    table
}

/// Reads for a scan: with readahead, so a long scan reads table files in
/// large sequential chunks instead of one block at a time.
fn scan_read_options(prefix: &str) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_readahead_size(SCAN_READAHEAD);
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

struct Staged {
    op: Op,
    key: String,
    value: Option<Vec<u8>>,
    ctx: PolicyContext,
}

/// Writes staged to commit together. Dropping it without `commit` discards them.
/// A Deny from any before-hook on any staged write aborts the whole commit.
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction {
    db: Database,
    staged: Vec<Staged>,
}

impl Transaction {
    /// Stages a put with an empty policy context.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.put_with(key, value, &PolicyContext::new())
    }

    /// Stages a put; `ctx` is handed to the policy hooks for this key.
    pub fn put_with(&mut self, key: &str, value: &[u8], ctx: &PolicyContext) -> Result<()> {
        validate_writable_key(key)?;
        validate_value(value, self.db.inner.options.max_value_bytes)?;
        self.staged.push(Staged {
            op: Op::Put,
            key: key.to_string(),
            value: Some(value.to_vec()),
            ctx: ctx.clone(),
        });
        Ok(())
    }

    /// Stages a delete with an empty policy context.
    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.delete_with(key, &PolicyContext::new())
    }

    /// Stages a delete; `ctx` is handed to the policy hooks for this key.
    pub fn delete_with(&mut self, key: &str, ctx: &PolicyContext) -> Result<()> {
        validate_writable_key(key)?;
        self.staged.push(Staged {
            op: Op::Delete,
            key: key.to_string(),
            value: None,
            ctx: ctx.clone(),
        });
        Ok(())
    }

    /// The value `key` would have after this transaction commits, as far as is
    /// known now: the last staged write to it, else the stored value.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.staged.iter().rev().find(|s| s.key == key) {
            Some(staged) => Ok(staged.value.clone()),
            None => self.db.get(key),
        }
    }

    /// Number of staged writes.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Runs the before-hooks, commits every staged write atomically, then runs
    /// the after-hooks. On any error nothing of this transaction is stored.
    pub fn commit(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db.commit_staged(self.staged, true)
    }

    /// Commits bookkeeping the store must not lose (a dispatch's outcome):
    /// before-hooks and rate limits are not consulted, after-hooks observe
    /// the write as usual.
    pub(crate) fn commit_bookkeeping(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db.commit_staged(self.staged, false)
    }
}

/// An ordered scan over one prefix; yields `(key, value)` pairs.
pub struct Scan<'a> {
    iter: Option<rocksdb::DBIteratorWithThreadMode<'a, DB>>,
    pending_error: Option<Error>,
    /// The database and reader context when the read hooks judge each key.
    judge: Option<(&'a Database, PolicyContext)>,
}

impl Scan<'_> {
    fn failed(e: Error) -> Self {
        Scan {
            iter: None,
            pending_error: Some(e),
            judge: None,
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        loop {
            let item = self.iter.as_mut()?.next()?;
            let (key, value) = match item {
                Ok((key, value)) => match String::from_utf8(key.into_vec()) {
                    Ok(key) => (key, value.into_vec()),
                    Err(_) => return Some(Err(Error::storage("a stored key is not UTF-8"))),
                },
                Err(e) => {
                    self.iter = None;
                    return Some(Err(e.into()));
                }
            };
            let Some((db, ctx)) = &self.judge else {
                return Some(Ok((key, value)));
            };
            // Judged per key: a refusal skips this key, never ends the scan.
            if let Some(value) = db.judge_read(&key, value, ctx) {
                return Some(Ok((key, value)));
            }
        }
    }
}
