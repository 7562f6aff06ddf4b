//! The node's liveness key: `switchboard/nodes/{id}` on a lease, renewed
//! every few seconds, which lists the node as a member and tells whether
//! etcd answers; each renewal also puts the node's value again when it
//! changed, recounts the live nodes and wakes the publisher of the bindings
//! made while etcd was unreachable.

use super::node;
use super::state::{State, NODES, RETRY_EVERY};
use crate::error::Error;
use crate::storage::Database;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a node stays listed after its last keep-alive.
pub const NODE_LEASE_SECS: u64 = 10;
/// How often a node renews its lease.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);

/// Keeps `switchboard/nodes/{id}` on a lease, renewed every few seconds;
/// whether that works is whether this node counts as connected. Puts the
/// node's value again when its policy revision changed, recounts the live
/// nodes (who share every rate limit), and when etcd is back wakes the
/// publisher of the bindings made meanwhile.
pub(super) async fn run(state: Arc<State>, db: Database) {
    let key = format!("{NODES}{}", state.node_id);
    let mut published: Option<Value> = None;
    loop {
        let value = node::node_value(&state, &db).await;
        let lease = state.lease.load(Ordering::Acquire);
        let renewed = match lease {
            0 => Ok(false),
            id => state.etcd.keep_alive(id).await,
        };
        let alive = match renewed {
            Ok(true) => {
                if published.as_ref() != Some(&value) {
                    match state
                        .etcd
                        .put(&key, value.to_string().as_bytes(), Some(lease))
                        .await
                    {
                        Ok(()) => published = Some(value),
                        Err(e) => {
                            tracing::debug!(error = %e, "could not publish this node's value (policy revision, ejected agents)")
                        }
                    }
                }
                true
            }
            Ok(false) => {
                let bytes = value.to_string();
                let granted = async {
                    let id = state.etcd.grant(NODE_LEASE_SECS).await?;
                    state.etcd.put(&key, bytes.as_bytes(), Some(id)).await?;
                    Ok::<_, Error>(id)
                }
                .await;
                match granted {
                    Ok(id) => {
                        state.lease.store(id, Ordering::Release);
                        published = Some(value);
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not register this node in etcd");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not renew this node's lease");
                false
            }
        };
        state.set_connected(alive);
        if alive {
            if !state.pending.lock().is_empty() {
                state.publish_now.notify_one();
            }
            node::share_rate_limits(&state, &db).await;
        }
        let pause = if alive { KEEP_ALIVE_EVERY } else { RETRY_EVERY };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.check_now.notified() => {}
        }
    }
}
