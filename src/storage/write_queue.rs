//! Group commit for commits made from async code (a dispatch's intent and
//! outcome): concurrent commits share one RocksDB write.
//!
//! A commit that finds no write in progress writes at once, on its own
//! thread: a lone request pays no hand-off. One that finds a write in
//! progress queues itself and its task waits, leaving its worker free for
//! other requests. When the writer is done it hands the whole queue to the
//! task of the first commit queued, which writes all of it as one
//! `WriteBatch`: one WAL `write(2)` per group (one fsync with
//! `Durability::Sync`), and RocksDB never has two of these writers at once
//! (its own write queue makes a second writer spin on `sched_yield`, or
//! sleep, until the first is done).
//!
//! Every queued commit is written, even if the task that queued it is gone
//! (a dropped future): a commit queued is a commit made, in order, so a
//! later write of the same keys can queue behind it
//! ([`Database::commit_behind_queue`]) and land after it.
//!
//! On a thread that gathers commits ([`gather_commits_on_this_thread`]: a
//! server's connection workers) the writer waits one turn of its scheduler
//! first: the tasks ready on the same worker run before it writes, and the
//! commits they make join its group. Under load that is one write for
//! several requests; a lone request's task is polled again at once.
//!
//! Commits made from blocking code (registrations, admin writes) do not
//! queue: they write directly, and RocksDB orders them with the group
//! writes under the same key locks.

use super::blocking::off_worker;
use super::transaction::{Checks, Prepared, PreparedWrite, Staged};
use super::{Database, Durability};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

thread_local! {
    static GATHERS: Cell<bool> = const { Cell::new(false) };
}

/// Makes the first commit of a group made from async code on the calling
/// thread wait for the tasks ready on the same worker before it writes, so
/// that their commits share its write (see the module's docs). For the
/// threads of a runtime that serves many requests at once; a thread that
/// polls one call at a time gains nothing from it.
pub(crate) fn gather_commits_on_this_thread() {
    GATHERS.with(|g| g.set(true));
}

/// Returns `Pending` once, having woken its task: the scheduler polls it
/// again after the tasks already waiting to run (a task that wakes itself
/// goes to the back of its worker's queue; it does not wait for I/O).
#[derive(Default)]
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The queue of commits waiting for the write in progress.
#[derive(Default)]
pub(super) struct WriteQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    /// Whether some thread is writing a group now.
    writing: bool,
    queued: Vec<Queued>,
    /// Groups written so far, for tests of how commits group.
    #[cfg(test)]
    groups: usize,
}

struct Queued {
    write: PreparedWrite,
    waiter: Waiter,
}

/// Who learns how a queued write went.
enum Waiter {
    /// A task awaiting the reply.
    Task(oneshot::Sender<Reply>),
    /// Nobody: the writer runs the after-hooks itself.
    Detached,
}

enum Reply {
    Written(Result<PreparedWrite>),
    /// The queue, to write next; the receiver's own commit is first.
    Lead(Leadership),
}

/// A queue handed to a waiting task. If that task is gone before it takes
/// it, dropping the hand-off writes the queue, so nothing queued is lost and
/// the queue is not left without a writer.
struct Leadership {
    db: Database,
    group: Vec<Queued>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let group = std::mem::take(&mut self.group);
        if !group.is_empty() {
            // Its task is gone: the after-hooks of its commit run here.
            if let Ok(write) = self.db.lead(group) {
                self.db.run_after_hooks(write.staged);
            }
        }
    }
}

impl Database {
    /// Commits `staged` from async code through the write queue; returns the
    /// puts a before-hook rewrote. A hook that may block runs off the worker.
    pub(super) async fn commit_queued(
        &self,
        staged: Vec<Staged>,
        read_set: Vec<(String, Option<Vec<u8>>)>,
        checks: Checks,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let may_block = self
            .inner
            .chain
            .may_block_on(|| staged.iter().map(|s| s.key.clone()).collect());
        let Prepared {
            write,
            reservation,
            rewrites,
        } = if may_block {
            off_worker(|| self.prepare(staged, read_set, checks))?
        } else {
            self.prepare(staged, read_set, checks)?
        };
        let mut waiting = None;
        let queued_as = || {
            let (reply, receiver) = oneshot::channel();
            waiting = Some(receiver);
            Waiter::Task(reply)
        };
        let written = match self.join(write, queued_as) {
            Some(write) => self.lead_gathering(write).await,
            None => match waiting.expect("queued with a reply").await {
                Ok(Reply::Written(written)) => written,
                Ok(Reply::Lead(mut handed)) => self.lead(std::mem::take(&mut handed.group)),
                Err(_) => Err(Error::Storage(
                    "the write queue dropped a commit without writing it".into(),
                )),
            },
        };
        self.landed_maybe_blocking(may_block, reservation, written)?;
        Ok(rewrites)
    }

    /// Writes `write`, which found no write in progress, and on a thread
    /// that gathers commits, with those queued behind it while the worker's
    /// other ready tasks ran. If the caller is dropped while it waits, its
    /// write (and what queued behind it) is still written, in order.
    async fn lead_gathering(&self, write: PreparedWrite) -> Result<PreparedWrite> {
        let own = Queued {
            write,
            waiter: Waiter::Detached,
        };
        if !GATHERS.with(Cell::get) {
            return self.lead(vec![own]);
        }
        let mut waiting = Leadership {
            db: self.clone(),
            group: vec![own],
        };
        YieldOnce::default().await;
        let mut group = std::mem::take(&mut waiting.group);
        group.append(&mut self.inner.write_queue.state.lock().queued);
        self.lead(group)
    }

    /// Queues `write` behind the group write in progress (with the waiter
    /// `queued_as` makes), or, if there is none, makes the caller the writer
    /// and gives `write` back.
    fn join(
        &self,
        write: PreparedWrite,
        queued_as: impl FnOnce() -> Waiter,
    ) -> Option<PreparedWrite> {
        let mut state = self.inner.write_queue.state.lock();
        if !state.writing {
            state.writing = true;
            return Some(write);
        }
        state.queued.push(Queued {
            write,
            waiter: queued_as(),
        });
        None
    }

    /// Commits `staged` as bookkeeping (after-hooks only) from code that
    /// cannot wait, after every commit already queued: for a write that
    /// must land after one its caller may have queued and abandoned (a
    /// dropped call marking itself cancelled). If a group is being written
    /// it is queued behind it and `Ok` means only that.
    pub(super) fn commit_behind_queue(&self, staged: Vec<Staged>) -> Result<()> {
        let Prepared {
            write, reservation, ..
        } = self.prepare(staged, Vec::new(), Checks::AfterOnly)?;
        let Some(write) = self.join(write, || Waiter::Detached) else {
            return Ok(());
        };
        let written = self.lead(vec![Queued {
            write,
            waiter: Waiter::Detached,
        }]);
        self.landed(reservation, written)
    }

    fn landed_maybe_blocking(
        &self,
        may_block: bool,
        reservation: Option<crate::policy::Reservation<'_>>,
        written: Result<PreparedWrite>,
    ) -> Result<()> {
        if may_block {
            off_worker(|| self.landed(reservation, written))
        } else {
            self.landed(reservation, written)
        }
    }

    /// Writes `group` as the queue's writer, answers every waiter, then
    /// hands the queue on (or marks it idle); returns the first commit's
    /// result, which is the caller's own.
    fn lead(&self, mut group: Vec<Queued>) -> Result<PreparedWrite> {
        let mut own = None;
        loop {
            #[cfg(test)]
            {
                self.inner.write_queue.state.lock().groups += 1;
            }
            let results = if self.inner.options.durability == Durability::Sync {
                // An fsync must not hold the worker its tasks are queued on.
                off_worker(|| self.write_group(group.iter().map(|q| &q.write)))
            } else {
                self.write_group(group.iter().map(|q| &q.write))
            };
            for (queued, result) in group.drain(..).zip(results) {
                let written = result.map(|()| queued.write);
                if own.is_none() {
                    own = Some(written);
                    continue;
                }
                match queued.waiter {
                    Waiter::Task(reply) => {
                        let _ = reply.send(Reply::Written(written));
                    }
                    Waiter::Detached => {
                        if let Ok(write) = written {
                            self.run_after_hooks(write.staged);
                        }
                    }
                }
            }
            match self.pass_on() {
                None => return own.expect("the group had the caller's commit"),
                Some(orphaned) => group = orphaned,
            }
        }
    }

    /// Hands the queue to the task of its first commit, or marks it idle if
    /// it is empty. Returns the queue if that commit has no task to take it
    /// (gone, or never had one): the caller writes it.
    fn pass_on(&self) -> Option<Vec<Queued>> {
        let mut state = self.inner.write_queue.state.lock();
        if state.queued.is_empty() {
            state.writing = false;
            return None;
        }
        let mut next = std::mem::take(&mut state.queued);
        drop(state);
        let Waiter::Task(reply) = std::mem::replace(&mut next[0].waiter, Waiter::Detached) else {
            return Some(next);
        };
        let handed = Leadership {
            db: self.clone(),
            group: next,
        };
        match reply.send(Reply::Lead(handed)) {
            Ok(()) => None,
            Err(Reply::Lead(mut handed)) => Some(std::mem::take(&mut handed.group)),
            Err(Reply::Written(_)) => unreachable!("a hand-off comes back as sent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::storage::Database;
    use std::future::Future;
    use std::time::{Duration, Instant};

    /// Marks a group write in progress, so the commits that follow queue.
    fn hold(db: &Database) {
        db.inner.write_queue.state.lock().writing = true;
    }

    async fn until_queued(db: &Database, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.inner.write_queue.state.lock().queued.len() < n {
            assert!(Instant::now() < deadline, "{n} commits never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A read-modify-write of `key` to `value`, committed through the queue.
    async fn swap(db: Database, key: &'static str, value: &'static str) -> crate::Result<()> {
        let mut tx = db.transaction();
        tx.get_for_update(key)?;
        tx.put(key, value.as_bytes())?;
        tx.commit_reporting_rewrites_queued().await.map(drop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let mut tx = db.transaction();
                        tx.put(&format!("notes/{t}/{i}"), b"x").unwrap();
                        tx.commit_bookkeeping_queued().await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for t in 0..8 {
            for i in 0..200 {
                assert!(db.get(&format!("notes/{t}/{i}")).unwrap().is_some());
            }
        }
        assert!(!db.inner.write_queue.state.lock().writing);
    }

    /// Runs `test` on a fresh database, on a one-thread runtime whose
    /// thread gathers commits: a thread of its own, since the setting is
    /// the thread's.
    fn on_a_gathering_thread<F, Fut>(test: F)
    where
        F: FnOnce(Database) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        std::thread::spawn(|| {
            super::gather_commits_on_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open(dir.path()).unwrap();
            runtime.block_on(test(db));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn commits_of_tasks_ready_on_a_gathering_worker_share_one_write() {
        on_a_gathering_thread(|db| async move {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let mut tx = db.transaction();
                        tx.put(&format!("notes/{i}"), b"x").unwrap();
                        tx.commit_bookkeeping_queued().await
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            for i in 0..8 {
                assert!(db.get(&format!("notes/{i}")).unwrap().is_some());
            }
            let state = db.inner.write_queue.state.lock();
            assert_eq!(state.groups, 1, "8 ready tasks' commits in one write");
            assert!(!state.writing);
        });
    }

    #[test]
    fn a_commit_dropped_while_it_gathers_still_lands_with_those_behind_it() {
        on_a_gathering_thread(|db| async move {
            let mut first = Box::pin({
                let db = db.clone();
                async move {
                    let mut tx = db.transaction();
                    tx.put("notes/a", b"1").unwrap();
                    tx.commit_bookkeeping_queued().await
                }
            });
            // Polled once: it leads the queue and waits its turn.
            let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
            assert!(first.as_mut().poll(noop).is_pending());
            let mut tx = db.owner_transaction();
            tx.put("notes/a", b"2").unwrap();
            tx.commit_bookkeeping_behind_queue().unwrap();
            drop(first);
            assert_eq!(db.get("notes/a").unwrap().as_deref(), Some(&b"2"[..]));
            assert!(!db.inner.write_queue.state.lock().writing);
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_checks_reads_against_the_writes_before_them_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        hold(&db);
        let first = tokio::spawn(swap(db.clone(), "notes/k", "first"));
        until_queued(&db, 1).await;
        let second = tokio::spawn(swap(db.clone(), "notes/k", "second"));
        until_queued(&db, 2).await;
        // The write in progress ends: the first queued task writes both.
        assert!(db.pass_on().is_none());
        first.await.unwrap().unwrap();
        let refused = second.await.unwrap();
        assert!(
            matches!(&refused, Err(Error::Conflict { key }) if key == "notes/k"),
            "{refused:?}"
        );
        assert_eq!(db.get("notes/k").unwrap().as_deref(), Some(&b"first"[..]));
        assert!(!db.inner.write_queue.state.lock().writing);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_whose_task_is_gone_still_lands_and_the_queue_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        hold(&db);
        let gone = tokio::spawn(swap(db.clone(), "notes/a", "1"));
        until_queued(&db, 1).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        // Behind it, a write that must land after it.
        let mut tx = db.owner_transaction();
        tx.put("notes/a", b"2").unwrap();
        tx.commit_bookkeeping_behind_queue().unwrap();
        let orphaned = db.pass_on().expect("nobody took the queue");
        let own = db.lead(orphaned);
        assert!(own.is_ok());
        assert_eq!(db.get("notes/a").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(!db.inner.write_queue.state.lock().writing);
        // And the next commit writes at once.
        swap(db.clone(), "notes/b", "3").await.unwrap();
        assert_eq!(db.get("notes/b").unwrap().as_deref(), Some(&b"3"[..]));
    }
}
