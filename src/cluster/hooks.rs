//! The cluster's side of the routing hooks (`routing::shared`): `Hooks`,
//! which routing calls synchronously, and `block`, which runs their etcd
//! work on the cluster's runtime. What each hook does is the file of what it
//! shares: `registrations` (`RegistrationSink`), `bindings`
//! (`SessionBindings`), `a2a_tasks` (`SharedTasks`).

use super::etcd;
use super::state::State;
use crate::error::{Error, Result};
use crate::storage::off_worker;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `future` on the cluster's runtime and waits for it from synchronous
/// code (off the async workers, bounded by the request timeout).
pub(super) fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    state: &State,
    future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    let answer = off_worker(|| rx.recv_timeout(etcd::DEADLINE + Duration::from_millis(500)));
    let answer = answer.unwrap_or_else(|_| Err(state.unreachable()));
    state.set_connected(!matches!(answer, Err(Error::Unavailable(_))));
    answer
}

pub(super) struct Hooks {
    pub(super) state: Arc<State>,
    pub(super) runtime: tokio::runtime::Handle,
}
