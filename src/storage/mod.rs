//! The transactional key-value store: RocksDB (a `TransactionDB`) behind an API
//! whose every write passes through the database's policy chain.
//!
//! There is one way to write: a [`Transaction`]. `put`, `put_with` and `delete`
//! are one-operation transactions. A commit first runs the before-hooks on every
//! staged operation (any Deny aborts the whole transaction before RocksDB sees
//! it), then commits atomically, then hands the committed operations to the
//! after-hooks.

use crate::error::{Error, Result};
use crate::namespace::{validate_key, validate_prefix};
use crate::policy::{Op, PolicyChain, PolicyContext};
use rocksdb::{
    Direction, IteratorMode, Options, ReadOptions, TransactionDB, TransactionDBOptions,
    WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default ceiling on a stored value's size.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

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
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            durability: Durability::Buffered,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
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
}

struct Inner {
    rocks: TransactionDB,
    chain: Arc<PolicyChain>,
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
        let rocks = TransactionDB::open(&db_options, &TransactionDBOptions::default(), path)
            .map_err(|e| {
                Error::Storage(format!(
                    "cannot open {}: {}",
                    path.display(),
                    e.into_string()
                ))
            })?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.durability == Durability::Sync);
        Ok(Database {
            inner: Arc::new(Inner {
                rocks,
                chain: Arc::new(PolicyChain::default()),
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

    pub(crate) fn policy_chain(&self) -> &Arc<PolicyChain> {
        &self.inner.chain
    }

    /// Reads one key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.inner.rocks.get(key.as_bytes())?)
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

    /// Every key starting with `prefix`, in key order, with its value.
    pub fn scan(&self, prefix: &str) -> Scan<'_> {
        self.scan_after(prefix, None)
    }

    /// Like [`scan`](Self::scan), starting after `after` (exclusive): the way to
    /// page through a long prefix.
    pub fn scan_after(&self, prefix: &str, after: Option<&str>) -> Scan<'_> {
        if let Err(e) = validate_prefix(prefix) {
            return Scan::failed(e);
        }
        let mut read_options = ReadOptions::default();
        if let Some(end) = prefix_successor(prefix.as_bytes()) {
            read_options.set_iterate_upper_bound(end);
        }
        let start = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut s = after.as_bytes().to_vec();
                s.push(0);
                s
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let iter = self
            .inner
            .rocks
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), read_options);
        Scan {
            iter: Some(iter),
            pending_error: None,
        }
    }

    fn commit_staged(&self, staged: Vec<Staged>) -> Result<()> {
        let chain = &self.inner.chain;
        let max = self.inner.options.max_value_bytes;
        let mut checked = Vec::with_capacity(staged.len());
        for op in staged {
            let value = chain.check_before(op.op, &op.key, op.value, &op.ctx, max)?;
            checked.push(Staged { value, ..op });
        }
        let txn = self.inner.rocks.transaction_opt(
            &self.inner.write_options,
            &rocksdb::TransactionOptions::default(),
        );
        for op in &checked {
            match &op.value {
                Some(v) => txn.put(op.key.as_bytes(), v)?,
                None => txn.delete(op.key.as_bytes())?,
            }
        }
        txn.commit()?;
        if chain.has_after_hooks() {
            for op in &checked {
                chain.notify_after(op.op, &op.key, op.value.as_deref().unwrap_or(&[]), &op.ctx);
            }
        }
        Ok(())
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
        validate_key(key)?;
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
        validate_key(key)?;
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
        self.db.commit_staged(self.staged)
    }
}

/// An ordered scan over one prefix; yields `(key, value)` pairs.
pub struct Scan<'a> {
    iter: Option<rocksdb::DBIteratorWithThreadMode<'a, TransactionDB>>,
    pending_error: Option<Error>,
}

impl Scan<'_> {
    fn failed(e: Error) -> Self {
        Scan {
            iter: None,
            pending_error: Some(e),
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        let item = self.iter.as_mut()?.next()?;
        Some(match item {
            Ok((key, value)) => match String::from_utf8(key.into_vec()) {
                Ok(key) => Ok((key, value.into_vec())),
                Err(_) => Err(Error::storage("a stored key is not UTF-8")),
            },
            Err(e) => {
                self.iter = None;
                Err(e.into())
            }
        })
    }
}
