//! Publishing the session bindings a node made on its own while etcd was
//! unreachable (`best_effort`), once it answers again: in batches, off the
//! liveness loop.

use super::applier::Change;
use super::state::{State, SESSIONS};
use crate::namespace::{now_ms, SessionRecord};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How many unpublished bindings one etcd transaction publishes (etcd
/// allows 128 operations per transaction by default).
const PUBLISH_BATCH: usize = 64;

/// Publishes the bindings this node made on its own while etcd was
/// unreachable, on a task of its own that the liveness loop wakes when etcd
/// answers: a long backlog must not delay the keep-alive that holds this
/// node's lease.
pub(super) async fn run(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
    loop {
        state.publish_now.notified().await;
        publish_pending(&state, &apply).await;
    }
}

/// Publishes the unpublished bindings a batch per etcd transaction, each
/// create-if-absent: where another node's binding won, this node adopts it
/// (through the applier). Bindings over by now are dropped, not published.
/// Stops at the first failure, until woken again.
async fn publish_pending(state: &State, apply: &std::sync::mpsc::Sender<Change>) {
    loop {
        let batch: Vec<(String, SessionRecord)> = {
            let now = now_ms();
            let mut pending = state.pending.lock();
            pending.retain(|_, binding| !state.expired(binding, now));
            pending
                .iter()
                .take(PUBLISH_BATCH)
                .map(|(id, b)| (id.clone(), b.clone()))
                .collect()
        };
        if batch.is_empty() {
            state.cap_reached.store(false, Ordering::Release);
            return;
        }
        let entries: Vec<(String, Vec<u8>)> = batch
            .iter()
            .map(|(id, binding)| {
                let value = serde_json::to_vec(binding).expect("a session binding encodes");
                (format!("{SESSIONS}{id}"), value)
            })
            .collect();
        let published = async {
            let lease = Some(state.binding_lease().await?);
            state.etcd.create_all_if_absent(&entries, lease).await
        };
        let held = match published.await {
            Ok(None) => {
                for (session_id, local) in &batch {
                    state.published(session_id, local);
                }
                tracing::info!(
                    bindings = batch.len(),
                    "published bindings made while etcd was unreachable"
                );
                continue;
            }
            Ok(Some(held)) => held,
            Err(e) => {
                tracing::debug!(error = %e, "could not publish the bindings made while etcd was unreachable");
                return;
            }
        };
        // Some sessions were bound meanwhile: settle those; the rest go in
        // the next batch, which no longer meets them.
        let mut settled = false;
        for (((session_id, local), (key, value)), held) in batch.into_iter().zip(entries).zip(held)
        {
            let Some(mut held) = held else { continue };
            if state.held_expired(&held) {
                held = match state.bind_if_absent(&key, &value).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not publish the bindings made while etcd was unreachable");
                        return;
                    }
                };
            }
            settled = true;
            state.published(&session_id, &local);
            match serde_json::from_slice::<SessionRecord>(&held) {
                Ok(held) if held.agent_id != local.agent_id => {
                    tracing::info!(session_id, local = %local.agent_id, cluster = %held.agent_id, "another node bound the session first; adopting its binding");
                    let _ = apply.send(Change::Adopt(session_id, local.agent_id, held));
                }
                Ok(_) => tracing::info!(
                    session_id,
                    "published a binding made while etcd was unreachable"
                ),
                Err(e) => {
                    tracing::warn!(session_id, error = %e, "a session binding in etcd does not decode")
                }
            }
        }
        if !settled {
            // The transaction failed on keys that are gone again (a race
            // with their leases): the next wake tries again.
            return;
        }
    }
}

impl State {
    /// `local`, the binding `session_id` had while unpublished, is settled
    /// in etcd: forgotten unless the session was bound anew meanwhile.
    fn published(&self, session_id: &str, local: &SessionRecord) {
        let mut pending = self.pending.lock();
        if pending.get(session_id) == Some(local) {
            pending.remove(session_id);
        }
        if pending.len() < self.max_pending {
            self.cap_reached.store(false, Ordering::Release);
        }
    }
}
