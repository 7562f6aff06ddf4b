//! The runtimes that serve connections: one tokio runtime of a single worker
//! per core, each running the connections handed to it from accept to close.
//!
//! On one multi-threaded runtime a request's work crosses workers: the
//! worker that polls the I/O driver wakes an idle sibling whenever it finds
//! more than one task ready, so at low load both workers sleep and wake on
//! every call (the cost guard counted 2.4–3 voluntary switches per proxied
//! call with two workers, 1.9 with one). A connection that lives on a
//! runtime of its own, with the agent connections its calls open kept on
//! the same runtime (`transport/plain.rs` pools by runtime), is served
//! with no cross-thread wake. The accept loop runs on the first runtime and
//! hands each new connection to the runtime serving the fewest, keeping it
//! on a tie (a client that connects per request stays on one thread).
//!
//! Each is a multi-threaded runtime of one worker rather than a
//! current-thread runtime so that work which may block (an fsync, a Rego
//! evaluation: `storage/blocking.rs`) still hands the worker's other
//! connections to another thread instead of stalling them.
//!
//! Everything a handler spawns runs on its connection's runtime. Background
//! work (health checks, discovery, cluster) stays on the runtime `serve` was
//! called from.

use crate::error::{Error, Result};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The connection runtimes of one server; stopped by [`ConnRuntimes::stop`].
pub(super) struct ConnRuntimes {
    runtimes: Vec<ConnRuntime>,
}

struct ConnRuntime {
    /// Taken by [`ConnRuntimes::stop`]; dropped unstopped (the server's future
    /// was dropped), it is shut down without waiting.
    runtime: Option<Runtime>,
    /// Connections it serves now.
    connections: Arc<AtomicUsize>,
}

impl ConnRuntimes {
    /// One runtime per core the process may use.
    pub(super) fn start() -> Result<ConnRuntimes> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtimes = (0..n)
            .map(|_| ConnRuntime::start())
            .collect::<Result<Vec<_>>>()?;
        Ok(ConnRuntimes { runtimes })
    }

    /// Runs `connection` (a future serving one accepted connection) on the
    /// runtime serving the fewest. `connection` is made there, so the sockets
    /// it opens register with that runtime.
    pub(super) fn serve<C, F>(&self, connection: C)
    where
        C: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let least = self
            .runtimes
            .iter()
            .min_by_key(|r| r.connections.load(Ordering::Relaxed))
            .expect("at least one connection runtime");
        let connections = least.connections.clone();
        connections.fetch_add(1, Ordering::Relaxed);
        let runtime = least.runtime.as_ref().expect("a running runtime");
        runtime.spawn(async move {
            connection().await;
            connections.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Runs `task` on the first runtime (the one [`serve`](Self::serve)
    /// prefers when several serve as few connections).
    pub(super) fn spawn_on_first<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtimes[0]
            .runtime
            .as_ref()
            .expect("a running runtime")
            .spawn(task)
    }

    /// Stops every runtime: connections still open are dropped (the server
    /// has drained them, or its grace period is over).
    pub(super) async fn stop(mut self) {
        let runtimes: Vec<Runtime> = self
            .runtimes
            .iter_mut()
            .filter_map(|r| r.runtime.take())
            .collect();
        // Shutting a runtime down waits for its threads: not on a worker.
        let _ = tokio::task::spawn_blocking(move || {
            for runtime in runtimes {
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        })
        .await;
    }
}

impl ConnRuntime {
    fn start() -> Result<ConnRuntime> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchboard-conn")
            .on_thread_start(move || {
                crate::transport::mark_runtime_thread(id);
                // Many requests are ready at once here under load: their
                // dispatch commits share writes.
                crate::storage::gather_commits_on_this_thread();
            })
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start a connection runtime", e))?;
        Ok(ConnRuntime {
            runtime: Some(runtime),
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl Drop for ConnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
