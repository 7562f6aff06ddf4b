//! Running store work that may block from async code without stalling the
//! runtime.
//!
//! A commit may wait on an fsync (`Durability::Sync`) or on a hook that may
//! block (a Rego evaluation may take up to its time limit; a closure added
//! through [`PolicyEngine::with_blocking_hooks`](crate::PolicyEngine::with_blocking_hooks)),
//! and registrations and scans read and write in bulk: such work must not
//! hold a tokio worker that other tasks are queued on. Any other commit (a
//! buffered WAL `write(2)` and hooks that only compute) takes microseconds
//! and runs where it is (see `write_queue`): handing the worker's queue to
//! another thread and back would cost two context switches to save nothing.

use tokio::runtime::{Handle, RuntimeFlavor};

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
