//! Running a commit from async code without stalling the runtime, and
//! without paying for that when it cannot stall it.
//!
//! A commit may wait on an fsync (`Durability::Sync`) or on a hook that may
//! block (a Rego evaluation may take up to its time limit; a closure added
//! through [`PolicyEngine::with_blocking_hooks`](crate::PolicyEngine::with_blocking_hooks)):
//! such a commit must not hold a tokio worker that other tasks are queued
//! on, so it is handed off (`block_in_place`). Any other commit (a buffered
//! WAL `write(2)` and hooks that only compute) takes microseconds and runs
//! where it is: handing the worker's queue to another thread and back would
//! cost two context switches to save nothing. Concurrent commits that are
//! handed off still share WAL writes and fsyncs: RocksDB's write group
//! makes one writer commit the batches of every thread waiting behind it.

use super::{Database, Durability};
use tokio::runtime::{Handle, RuntimeFlavor};

impl Database {
    /// Runs `commit` on `state`, a commit to `keys(state)` (computed only
    /// if a hook that may block exists), on this thread, or, if it may
    /// block, off the async worker this thread is (see the module's doc).
    pub(crate) fn commit_from_async<S, R, K: AsRef<str>>(
        &self,
        state: &mut S,
        keys: impl FnOnce(&S) -> Vec<K>,
        commit: impl FnOnce(&mut S) -> R,
    ) -> R {
        let may_block = self.inner.options.durability == Durability::Sync
            || self.inner.chain.may_block_on(|| keys(state));
        if may_block {
            off_worker(|| commit(state))
        } else {
            commit(state)
        }
    }
}

/// Runs `f`, a blocking store operation, in place. On a multi-threaded tokio
/// runtime the worker's other tasks are handed to another thread first
/// (`block_in_place`: no spawn, no `'static` bound); on a current-thread
/// runtime (where that would panic) and outside a runtime it simply runs.
pub(crate) fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::off_worker;

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_inline_on_a_current_thread_runtime() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn runs_on_a_multi_thread_runtime() {
        let spawned = tokio::spawn(async { off_worker(|| 7) });
        assert_eq!(spawned.await.unwrap(), 7);
    }
}
