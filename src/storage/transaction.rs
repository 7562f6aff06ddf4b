//! [`Transaction`]: the one way to write, and the commit path every write
//! takes (before-hooks, rate-limit reservation, conflict check, one atomic
//! `WriteBatch`, after-hooks).

use super::decision_log::decision_entries;
use super::reserved::{validate_writable_key, Access};
use super::Database;
use crate::error::{Error, Result};
use crate::namespace::validate_value;
use crate::policy::{Op, Phase, PolicyContext, Reservation};
use parking_lot::{Mutex, MutexGuard};
use rocksdb::WriteBatch;
use std::collections::HashSet;

pub(super) struct Staged {
    pub(super) op: Op,
    pub(super) key: String,
    pub(super) value: Option<Vec<u8>>,
    pub(super) ctx: PolicyContext,
}

/// Writes staged to commit together. Dropping it without `commit` discards them.
/// A Deny from any before-hook on any staged write aborts the whole commit.
///
/// # Isolation
///
/// [`get`](Self::get) is a plain read: two transactions that both `get` a
/// key, change it and commit can lose one update. For read-modify-write, read
/// with [`get_for_update`](Self::get_for_update): the commit then checks,
/// atomically with its write, that every key so read still holds the value it
/// had (optimistic concurrency), and otherwise fails with
/// [`Error::Conflict`] and writes nothing. Retry the whole transaction:
///
/// ```no_run
/// # fn f(db: &switchboard::Database) -> switchboard::Result<()> {
/// loop {
///     let mut tx = db.transaction();
///     let n: u64 = match tx.get_for_update("counters/a")? {
///         Some(v) => String::from_utf8_lossy(&v).parse().unwrap_or(0),
///         None => 0,
///     };
///     tx.put("counters/a", (n + 1).to_string().as_bytes())?;
///     match tx.commit() {
///         Err(switchboard::Error::Conflict { .. }) => continue,
///         other => return other,
///     }
/// }
/// # }
/// ```
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction {
    db: Database,
    staged: Vec<Staged>,
    /// Keys read for update, with the stored value seen.
    read_set: Vec<(String, Option<Vec<u8>>)>,
    access: Access,
}

impl Database {
    /// Starts a transaction: stage writes, then [`Transaction::commit`].
    /// Reserved namespaces are refused (see
    /// [`writes_to_reserved_namespaces`](Self::writes_to_reserved_namespaces)).
    pub fn transaction(&self) -> Transaction {
        self.transaction_with(Access::Generic)
    }

    pub(super) fn transaction_with(&self, access: Access) -> Transaction {
        Transaction {
            db: self.clone(),
            staged: Vec::new(),
            read_set: Vec::new(),
            access,
        }
    }
}

impl Transaction {
    /// Stages a put with an empty policy context.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.put_with(key, value, &PolicyContext::new())
    }

    /// Stages a put; `ctx` is handed to the policy hooks for this key.
    pub fn put_with(&mut self, key: &str, value: &[u8], ctx: &PolicyContext) -> Result<()> {
        validate_writable_key(key, self.access)?;
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
        validate_writable_key(key, self.access)?;
        self.staged.push(Staged {
            op: Op::Delete,
            key: key.to_string(),
            value: None,
            ctx: ctx.clone(),
        });
        Ok(())
    }

    /// The value `key` would have after this transaction commits, as far as is
    /// known now: the last staged write to it, else the stored value. No
    /// isolation: see [`get_for_update`](Self::get_for_update).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.staged.iter().rev().find(|s| s.key == key) {
            Some(staged) => Ok(staged.value.clone()),
            None => self.db.get(key),
        }
    }

    /// Like [`get`](Self::get), and remembers the stored value: the commit
    /// fails with [`Error::Conflict`] (writing nothing) if another commit has
    /// changed `key` by then. The read passes the read hooks like `get`.
    pub fn get_for_update(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        crate::namespace::validate_key(key)?;
        if !self.read_set.iter().any(|(k, _)| k == key) {
            let stored = self.db.inner.rocks.get(key.as_bytes())?;
            self.read_set.push((key.to_string(), stored));
        }
        self.get(key)
    }

    /// Number of staged writes.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Runs the before-hooks, reserves the rate limits, checks the keys read
    /// for update, commits every staged write atomically, then runs the
    /// after-hooks. On any error nothing of this transaction is stored and
    /// no rate-limit budget is spent.
    pub fn commit(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db
            .commit_staged(self.staged, self.read_set, Checks::BeforeAndAfter)
            .map(drop)
    }

    /// Commits bookkeeping the store must not lose (a dispatch's outcome):
    /// before-hooks and rate limits are not consulted, after-hooks observe
    /// the write as usual.
    pub(crate) fn commit_bookkeeping(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db
            .commit_staged(self.staged, self.read_set, Checks::AfterOnly)
            .map(drop)
    }
}

/// Commits from async code: concurrent ones share one RocksDB write (see
/// `write_queue`).
impl Transaction {
    /// [`commit`](Self::commit) through the write queue, returning the puts
    /// a before-hook rewrote (`Modify`) as `(key, stored value)`: an owner
    /// that writes the same record again (the dispatcher) keeps what the
    /// hooks masked. Dropped while it waits in the queue, the commit still
    /// lands.
    pub(crate) async fn commit_reporting_rewrites_queued(self) -> Result<Vec<(String, Vec<u8>)>> {
        if self.staged.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .commit_queued(self.staged, self.read_set, Checks::BeforeAndAfter)
            .await
    }

    /// [`commit_bookkeeping`](Self::commit_bookkeeping) through the write
    /// queue. Dropped while it waits there, the commit still lands.
    pub(crate) async fn commit_bookkeeping_queued(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db
            .commit_queued(self.staged, self.read_set, Checks::AfterOnly)
            .await
            .map(drop)
    }

    /// [`commit_bookkeeping`](Self::commit_bookkeeping) from code that
    /// cannot wait, landing after every commit already queued (see
    /// `Database::commit_behind_queue`).
    pub(crate) fn commit_bookkeeping_behind_queue(self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.db.commit_behind_queue(self.staged)
    }
}

/// Which hooks a commit runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Checks {
    /// Before-hooks and rate limits may refuse; after-hooks observe.
    BeforeAndAfter,
    /// Only after-hooks observe: for bookkeeping that must not be lost.
    AfterOnly,
}

const STRIPES: usize = 64;

/// Striped locks held by every commit over the keys it writes or checks, so
/// a conflict check and the write it guards are atomic with respect to other
/// commits.
pub(super) struct KeyLocks {
    stripes: Box<[Mutex<()>]>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl KeyLocks {
    /// Locks the stripes of `keys` in index order (no crosswise waits).
    fn lock<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<MutexGuard<'_, ()>> {
        let mut indexes: Vec<usize> = keys.map(super::cache::stripe_of).collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|i| self.stripes[i].lock())
            .collect()
    }
}

/// A commit past its before-hooks: what goes to RocksDB, alone or in a
/// group (see `write_queue`).
pub(super) struct PreparedWrite {
    /// The writes as the before-hooks left them, in order.
    pub(super) staged: Vec<Staged>,
    /// Decision-log entries (key, JSON) committed with them.
    decisions: Vec<(String, Vec<u8>)>,
    /// Keys read for update, with the stored value seen.
    read_set: Vec<(String, Option<Vec<u8>>)>,
}

/// A prepared write with what its committer keeps: the rate-limit counts it
/// spends once the write lands, and the puts a before-hook rewrote.
pub(super) struct Prepared<'a> {
    pub(super) write: PreparedWrite,
    pub(super) reservation: Option<Reservation<'a>>,
    pub(super) rewrites: Vec<(String, Vec<u8>)>,
}

impl Database {
    /// Commits `staged`; returns the puts a before-hook rewrote.
    fn commit_staged(
        &self,
        staged: Vec<Staged>,
        read_set: Vec<(String, Option<Vec<u8>>)>,
        checks: Checks,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let Prepared {
            write,
            reservation,
            rewrites,
        } = self.prepare(staged, read_set, checks)?;
        let written = self
            .write_group([&write].into_iter())
            .pop()
            .expect("one write, one result")
            .map(|()| write);
        self.landed(reservation, written)?;
        Ok(rewrites)
    }

    /// Runs the before-hooks (unless `checks` says bookkeeping), reserves
    /// the rate limits and serialises the decisions to log with the write.
    /// A refusal is logged in the decision log here.
    pub(super) fn prepare(
        &self,
        staged: Vec<Staged>,
        read_set: Vec<(String, Option<Vec<u8>>)>,
        checks: Checks,
    ) -> Result<Prepared<'_>> {
        let chain = &self.inner.chain;
        let (mut checked, unchecked) = match checks {
            Checks::BeforeAndAfter => (Vec::with_capacity(staged.len()), staged),
            Checks::AfterOnly => (staged, Vec::new()),
        };
        let mut decisions = Vec::new();
        let mut rewrites = Vec::new();
        for op in unchecked {
            let mut verdict = chain.run(Phase::Before, op.op, &op.key, op.value, &op.ctx);
            let rewritten = verdict
                .decisions
                .iter()
                .any(|d| d.decision == crate::policy::DecisionKind::Modify);
            decisions.append(&mut verdict.decisions);
            match verdict.value {
                Ok(value) => checked.push(Staged {
                    op: op.op,
                    key: op.key,
                    value,
                    ctx: op.ctx,
                }),
                Err(e) => {
                    self.record_decisions(decisions);
                    return Err(e);
                }
            }
            if rewritten {
                if let Some(staged @ Staged { value: Some(v), .. }) = checked.last() {
                    rewrites.push((staged.key.clone(), v.clone()));
                }
            }
        }
        let reservation = match checks {
            Checks::AfterOnly => None,
            Checks::BeforeAndAfter => {
                match chain.reserve(checked.iter().map(|s| (s.op, s.key.as_str(), &s.ctx))) {
                    Ok(reservation) => Some(reservation),
                    Err(refusal) => {
                        let (e, decision) = *refusal;
                        decisions.push(decision);
                        self.record_decisions(decisions);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Prepared {
            write: PreparedWrite {
                staged: checked,
                // Modify and Log decisions commit with the write they were made about.
                decisions: decision_entries(decisions)?,
                read_set,
            },
            reservation,
            rewrites,
        })
    }

    /// Finishes a commit once its write is done: keeps the rate-limit
    /// counts if it landed (they go back otherwise), then runs the
    /// after-hooks.
    pub(super) fn landed(
        &self,
        reservation: Option<Reservation<'_>>,
        written: Result<PreparedWrite>,
    ) -> Result<()> {
        let write = written?;
        if let Some(reservation) = reservation {
            reservation.commit();
        }
        self.run_after_hooks(write.staged);
        Ok(())
    }

    pub(super) fn run_after_hooks(&self, written: Vec<Staged>) {
        let chain = &self.inner.chain;
        if chain.has_after_hooks() {
            for op in written {
                let verdict = chain.run(Phase::After, op.op, &op.key, op.value, &op.ctx);
                self.record_decisions(verdict.decisions);
            }
        }
    }

    /// Writes `group` in one atomic RocksDB write, in order, and returns
    /// each write's result. A write whose keys read for update changed since
    /// (in the store, or by a write before it in the group) fails with
    /// [`Error::Conflict`] and the others still land.
    pub(super) fn write_group<'w>(
        &self,
        group: impl Iterator<Item = &'w PreparedWrite> + Clone,
    ) -> Vec<Result<()>> {
        let keys = group.clone().flat_map(|w| {
            w.staged
                .iter()
                .map(|op| op.key.as_str())
                .chain(w.read_set.iter().map(|(k, _)| k.as_str()))
        });
        let key_locks = self.inner.key_locks.lock(keys);
        let checks_reads = group.clone().any(|w| !w.read_set.is_empty());
        let mut written_before: HashSet<&str> = HashSet::new();
        let mut results: Vec<Result<()>> = Vec::new();
        for write in group.clone() {
            let result = self.check_reads(write, &written_before);
            if checks_reads && result.is_ok() {
                written_before.extend(write.staged.iter().map(|op| op.key.as_str()));
            }
            results.push(result);
        }
        let landing = || {
            group
                .clone()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(w, _)| w)
        };
        let mut cached = self
            .inner
            .cached
            .lock_for_write(landing().flat_map(|w| w.staged.iter().map(|op| op.key.as_str())));
        let mut batch = WriteBatch::default();
        let mut logged = 0u64;
        for write in landing() {
            for op in &write.staged {
                match &op.value {
                    Some(v) => batch.put(op.key.as_bytes(), v),
                    None => batch.delete(op.key.as_bytes()),
                }
            }
            for (key, value) in &write.decisions {
                batch.put(key.as_bytes(), value);
            }
            logged += write.decisions.len() as u64;
        }
        if batch.is_empty() {
            return results;
        }
        if let Err(e) = self.inner.rocks.write_opt(batch, &self.inner.write_options) {
            let message = e.into_string();
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(Error::Storage(message.clone()));
            }
            return results;
        }
        for write in landing() {
            for op in &write.staged {
                cached.committed(&op.key, op.value.as_deref());
            }
        }
        // Released before any after-hook runs: a hook may write again.
        drop(cached);
        drop(key_locks);
        if logged > 0 {
            self.decisions_added(logged);
        }
        results
    }

    /// Whether every key `write` read for update still holds the value it
    /// saw, and was not written by an earlier write of its group.
    fn check_reads(&self, write: &PreparedWrite, written_before: &HashSet<&str>) -> Result<()> {
        for (key, seen) in &write.read_set {
            if written_before.contains(key.as_str())
                || self.inner.rocks.get(key.as_bytes())? != *seen
            {
                // The reservation is dropped: its counts go back.
                return Err(Error::Conflict { key: key.clone() });
            }
        }
        Ok(())
    }
}
