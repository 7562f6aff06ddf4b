//! What the tasks of a node's membership share: `State` (the etcd client,
//! whether etcd answers and since when the registrations in memory may be
//! stale, the revision mirrored, the node's lease, the bindings waiting to
//! be published, the live nodes last counted), the keys they keep under
//! `switchboard/`, and how long a failed list or a broken watch waits.

use super::etcd::Etcd;
use crate::error::Error;
use crate::namespace::{now_ms, SessionRecord};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub(super) const A2A_TASKS: &str = "switchboard/a2a_tasks/";
pub(super) const AGENTS: &str = "switchboard/agents/";
pub(super) const NODES: &str = "switchboard/nodes/";
pub(super) const SESSIONS: &str = "switchboard/sessions/";
pub(super) const TOKENS: &str = "switchboard/tokens/";
/// How long a broken watch waits before listing again.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(500);

pub(super) struct State {
    pub(super) etcd: Etcd,
    pub(super) node_id: String,
    pub(super) listen: String,
    pub(super) url: String,
    pub(super) secret: Option<String>,
    pub(super) started_at_ms: u64,
    /// Whether the last exchange with etcd worked.
    pub(super) connected: AtomicBool,
    /// When etcd was last lost, so when the registrations in memory were
    /// last known complete (ms).
    pub(super) synced_at_ms: AtomicU64,
    /// The etcd revision the mirror has applied (0: not listed yet).
    pub(super) revision: AtomicI64,
    /// This node's lease (0: none yet).
    pub(super) lease: AtomicI64,
    pub(super) strict_bindings: bool,
    /// Bindings made on this node only while etcd was unreachable
    /// (`best_effort`), to publish when it is back.
    pub(super) pending: parking_lot::Mutex<HashMap<String, SessionRecord>>,
    /// At most this many in `pending`: past it, new sessions are refused
    /// as under `strict` until etcd is back.
    pub(super) max_pending: usize,
    /// New sessions refused because `pending` was full.
    pub(super) refused_at_cap: AtomicU64,
    /// Whether the refusals since `pending` last filled have been logged.
    pub(super) cap_reached: AtomicBool,
    /// Wakes the publisher of `pending` (etcd answers again).
    pub(super) publish_now: tokio::sync::Notify,
    /// Wakes the liveness loop to check etcd now (the watch broke).
    pub(super) check_now: tokio::sync::Notify,
    /// The live nodes last counted, which share every rate limit.
    pub(super) live_nodes: AtomicU32,
    /// The last list of live nodes read from etcd and when (ms): a cluster
    /// scan asks those nodes while etcd is unreachable.
    pub(super) last_nodes: parking_lot::Mutex<Option<(Vec<Value>, u64)>>,
    pub(super) binding_ttl: Duration,
    /// The lease new bindings are put on and when it was granted (ms): one
    /// lease serves every binding made within a tenth of the TTL.
    pub(super) binding_lease: tokio::sync::Mutex<Option<(i64, u64)>>,
}

impl State {
    pub(super) fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::AcqRel);
        if was && !connected {
            tracing::warn!("etcd unreachable: routing from the registrations held in memory; registry writes refused");
        } else if !was && connected {
            tracing::info!("etcd reachable again");
        }
        if was && !connected {
            // The snapshot in memory was complete until now.
            self.synced_at_ms.store(now_ms(), Ordering::Release);
        }
    }

    pub(super) fn unreachable(&self) -> Error {
        Error::Unavailable(format!(
            "etcd is unreachable from node {} (last in sync {} ms ago); registrations cannot be \
             changed until it is back",
            self.node_id,
            now_ms().saturating_sub(self.synced_at_ms.load(Ordering::Acquire))
        ))
    }
}
