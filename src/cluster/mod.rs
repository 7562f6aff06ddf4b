//! Cluster mode: several `switchboard serve` nodes share their agents and
//! session bindings through etcd, each keeping its own RocksDB for the audit
//! trail (`tools/`, `inflight/`, the decision log).
//!
//! - `etcd`: the etcd v3 client (JSON gateway over HTTP);
//! - `node`: what a node publishes about itself (its liveness value, with
//!   its policy revision from `policy_digest`) and learns from the node list
//!   (the live nodes, their count sharing the rate limits);
//! - this file: [`Cluster`], what a node runs: the registrations mirror
//!   (list `switchboard/agents/`, then watch from the next revision, list
//!   again after a compaction or a broken watch), the node's liveness key on
//!   a lease, and the two routing hooks (publishing registrations, deciding
//!   session bindings by create-if-absent).
//!
//! When etcd cannot be reached, routing goes on from the registrations held
//! in memory, registry writes fail as unavailable, new session bindings are
//! made on this node only, and [`Cluster::health`] says `degraded`.
//!
//! Every keep-alive also counts the live nodes, which share every rate
//! limit (each node enforces its share, `max / nodes`, never below 1).

mod etcd;
mod node;
mod policy_digest;

use crate::dispatch::ToolDispatcher;
use crate::error::{Error, Result};
use crate::namespace::{now_ms, validate_id, AgentRecord, SessionRecord};
use crate::routing::shared::{RegistrationSink, SessionBindings};
use crate::storage::{off_worker, Database};
use etcd::{Etcd, Event, WatchMessage};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every key this crate writes in etcd starts with this.
pub const PREFIX: &str = "switchboard/";
const AGENTS: &str = "switchboard/agents/";
const NODES: &str = "switchboard/nodes/";
const SESSIONS: &str = "switchboard/sessions/";
/// How long a node stays listed after its last keep-alive.
pub const NODE_LEASE_SECS: u64 = 10;
/// How often a node renews its lease.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// How long a broken watch waits before listing again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// How a node joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// etcd client URLs (`http://host:port`), any member of one etcd cluster.
    pub etcd: Vec<String>,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// The address this node's API listens on (shown by `cluster status`).
    pub listen: String,
    /// The base URL the other nodes reach this node's API at (a cluster
    /// scan asks each node for its records there), e.g. `http://10.0.0.1:7700`.
    pub url: String,
}

struct State {
    etcd: Etcd,
    node_id: String,
    listen: String,
    url: String,
    started_at_ms: u64,
    /// Whether the last exchange with etcd worked.
    connected: AtomicBool,
    /// When etcd was last lost, so when the registrations in memory were
    /// last known complete (ms).
    synced_at_ms: AtomicU64,
    /// The etcd revision the mirror has applied.
    revision: AtomicI64,
    /// The live nodes last counted, which share every rate limit.
    live_nodes: AtomicU32,
}

impl State {
    fn set_connected(&self, connected: bool) {
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

    fn unreachable(&self) -> Error {
        Error::Unavailable(format!(
            "etcd is unreachable from node {} (last in sync {} ms ago); registrations cannot be \
             changed until it is back",
            self.node_id,
            now_ms().saturating_sub(self.synced_at_ms.load(Ordering::Acquire))
        ))
    }
}

/// A node's membership of a cluster. Dropping it stops its background work
/// (the node's key then expires with its lease).
pub struct Cluster {
    state: Arc<State>,
    runtime: parking_lot::Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on the cluster's runtime and waits for it from synchronous
/// code (off the async workers, bounded by the request timeout).
fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    state: &State,
    future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    let answer = off_worker(|| rx.recv_timeout(etcd::REQUEST_TIMEOUT * 2));
    let answer = answer.unwrap_or_else(|_| Err(state.unreachable()));
    state.set_connected(!matches!(answer, Err(Error::Unavailable(_))));
    answer
}

struct Hooks {
    state: Arc<State>,
    runtime: tokio::runtime::Handle,
}

impl RegistrationSink for Hooks {
    fn ready(&self) -> Result<()> {
        if self.state.connected.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self.state.unreachable())
        }
    }

    fn publish(&self, agent_id: &str, record: Option<&AgentRecord>) -> Result<()> {
        let state = self.state.clone();
        let key = format!("{AGENTS}{agent_id}");
        let value = record
            .map(serde_json::to_vec)
            .transpose()
            .map_err(Error::storage)?;
        block(&self.runtime, &self.state, async move {
            match value {
                Some(value) => state.etcd.put(&key, &value, None).await,
                None => state.etcd.delete(&key).await,
            }
        })
    }
}

impl SessionBindings for Hooks {
    fn bind_if_absent(&self, session_id: &str, proposed: &SessionRecord) -> Result<SessionRecord> {
        let state = self.state.clone();
        let key = format!("{SESSIONS}{session_id}");
        let value = serde_json::to_vec(proposed).map_err(Error::storage)?;
        let held = block(&self.runtime, &self.state, async move {
            state.etcd.create_if_absent(&key, &value).await
        })?;
        serde_json::from_slice(&held)
            .map_err(|e| Error::storage(format!("session {session_id}'s binding in etcd: {e}")))
    }

    fn rebind(
        &self,
        session_id: &str,
        replaced_agent: &str,
        proposed: &SessionRecord,
    ) -> Result<SessionRecord> {
        let state = self.state.clone();
        let key = format!("{SESSIONS}{session_id}");
        let value = serde_json::to_vec(proposed).map_err(Error::storage)?;
        let replaced = replaced_agent.to_string();
        let held = block(&self.runtime, &self.state, async move {
            match state.etcd.get(&key).await? {
                None => state.etcd.create_if_absent(&key, &value).await,
                Some((held, revision)) => {
                    let bound_to = serde_json::from_slice::<SessionRecord>(&held)
                        .map(|b| b.agent_id)
                        .ok();
                    if bound_to.is_some_and(|agent| agent != replaced) {
                        // Another node rebound it already: theirs holds.
                        return Ok(held);
                    }
                    state.etcd.put_if_unchanged(&key, &value, revision).await
                }
            }
        })?;
        serde_json::from_slice(&held)
            .map_err(|e| Error::storage(format!("session {session_id}'s binding in etcd: {e}")))
    }
}

/// Brings the registry in line with a full listing of `switchboard/agents/`.
fn apply_listing(dispatcher: &ToolDispatcher, kvs: &[etcd::Kv]) {
    let mut listed = HashSet::new();
    for kv in kvs {
        let Some(id) = kv.key.strip_prefix(AGENTS) else {
            continue;
        };
        listed.insert(id.to_string());
        apply_put(dispatcher, id, &kv.value);
    }
    for id in dispatcher.registry().list() {
        if !listed.contains(&id) {
            if let Err(e) = dispatcher.apply_shared_removal(&id) {
                tracing::warn!(agent_id = %id, error = %e, "could not remove an agent the cluster no longer has");
            }
        }
    }
}

fn apply_put(dispatcher: &ToolDispatcher, id: &str, value: &[u8]) {
    match serde_json::from_slice::<AgentRecord>(value) {
        Ok(record) if record.agent_id == id => {
            if let Err(e) = dispatcher.apply_shared_registration(record) {
                tracing::warn!(agent_id = %id, error = %e, "could not apply a registration from the cluster");
            }
        }
        Ok(_) => {
            tracing::warn!(agent_id = %id, "a registration in etcd names another agent; ignored")
        }
        Err(e) => {
            tracing::warn!(agent_id = %id, error = %e, "a registration in etcd does not decode; ignored")
        }
    }
}

/// A change for the applier thread to make to the registry.
enum Change {
    Put(String, Vec<u8>),
    Delete(String),
    Listing(Vec<etcd::Kv>),
}

/// Applies changes in order on a thread of its own: applying takes the
/// registry's lock, which a registration on this node holds while it waits
/// for etcd on the cluster runtime, so the runtime must never wait for it.
/// Work an applied change starts (an MCP agent's discovery) runs on
/// `serving`, the runtime of the node's API.
fn applier(
    dispatcher: ToolDispatcher,
    serving: tokio::runtime::Handle,
) -> std::sync::mpsc::Sender<Change> {
    let (tx, rx) = std::sync::mpsc::channel::<Change>();
    std::thread::Builder::new()
        .name("switchboard-cluster-apply".into())
        .spawn(move || {
            let _serving = serving.enter();
            for change in rx {
                match change {
                    Change::Put(id, value) => apply_put(&dispatcher, &id, &value),
                    Change::Delete(id) => {
                        if let Err(e) = dispatcher.apply_shared_removal(&id) {
                            tracing::warn!(agent_id = %id, error = %e, "could not apply a removal from the cluster");
                        }
                    }
                    Change::Listing(kvs) => apply_listing(&dispatcher, &kvs),
                }
            }
        })
        .expect("spawning the cluster's applier thread");
    tx
}

/// Lists the registrations, then follows the watch; lists again whenever
/// the watch breaks or its revision was compacted. Runs until dropped.
async fn mirror(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
    loop {
        let from = state.revision.load(Ordering::Acquire) + 1;
        let watched = state
            .etcd
            .watch(AGENTS, from, |message| match message {
                WatchMessage::Compacted => false,
                WatchMessage::Events { revision, events } => {
                    state.set_connected(true);
                    for event in events {
                        let change = match event {
                            Event::Put(kv) => match kv.key.strip_prefix(AGENTS) {
                                Some(id) => Change::Put(id.to_string(), kv.value),
                                None => continue,
                            },
                            Event::Delete(key) => match key.strip_prefix(AGENTS) {
                                Some(id) => Change::Delete(id.to_string()),
                                None => continue,
                            },
                        };
                        let _ = apply.send(change);
                    }
                    if revision > 0 {
                        state.revision.fetch_max(revision, Ordering::AcqRel);
                    }
                    true
                }
            })
            .await;
        if let Err(e) = watched {
            tracing::debug!(error = %e, "the registrations watch stopped");
            state.set_connected(false);
        }
        // List again: catches up whatever the watch missed.
        loop {
            tokio::time::sleep(RETRY_EVERY).await;
            match state.etcd.list(AGENTS).await {
                Ok((kvs, revision)) => {
                    let _ = apply.send(Change::Listing(kvs));
                    state.revision.store(revision, Ordering::Release);
                    state.set_connected(true);
                    break;
                }
                Err(_) => state.set_connected(false),
            }
        }
    }
}

/// Keeps `switchboard/nodes/{id}` on a lease, renewed every few seconds,
/// and puts its value again when the node's policy revision changed.
async fn liveness(state: Arc<State>, db: Database) {
    let key = format!("{NODES}{}", state.node_id);
    let mut lease: Option<i64> = None;
    let mut published: Option<Value> = None;
    loop {
        let value = node::node_value(&state, &db).await;
        let renewed = match lease {
            Some(id) => state.etcd.keep_alive(id).await,
            None => Ok(false),
        };
        match renewed {
            Ok(true) if published.as_ref() == Some(&value) => {}
            Ok(true) => {
                let bytes = value.to_string();
                match state.etcd.put(&key, bytes.as_bytes(), lease).await {
                    Ok(()) => published = Some(value),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not publish this node's policy revision")
                    }
                }
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
                        lease = Some(id);
                        published = Some(value);
                    }
                    Err(e) => tracing::debug!(error = %e, "could not register this node in etcd"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not renew this node's lease"),
        }
        node::share_rate_limits(&state, &db).await;
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
    }
}

impl Cluster {
    /// Joins the cluster: lists the registrations in etcd into `dispatcher`'s
    /// registry (etcd's list wins over what the local store held), installs
    /// the routing hooks, and starts the watch and the liveness lease. Fails
    /// if etcd cannot be reached.
    pub async fn join(
        dispatcher: &ToolDispatcher,
        settings: ClusterSettings,
    ) -> Result<Arc<Cluster>> {
        validate_id("node id", &settings.node_id)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard-cluster")
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start the cluster runtime", e))?;
        let state = Arc::new(State {
            etcd: Etcd::new(settings.etcd.clone())?,
            node_id: settings.node_id,
            listen: settings.listen,
            url: settings.url,
            started_at_ms: now_ms(),
            connected: AtomicBool::new(false),
            synced_at_ms: AtomicU64::new(0),
            revision: AtomicI64::new(0),
            live_nodes: AtomicU32::new(1),
        });
        let listing = {
            let state = state.clone();
            runtime.spawn(async move { state.etcd.list(AGENTS).await })
        };
        let (kvs, revision) = listing
            .await
            .map_err(|e| Error::internal("listing the cluster's agents", e))?
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot join the cluster: {e}. A node does not start without etcd"
                ))
            })?;
        {
            let d = dispatcher.clone();
            off_worker(move || apply_listing(&d, &kvs));
        }
        state.revision.store(revision, Ordering::Release);
        state.set_connected(true);
        let hooks = Arc::new(Hooks {
            state: state.clone(),
            runtime: runtime.handle().clone(),
        });
        dispatcher.set_shared(Some(hooks.clone()), Some(hooks));
        runtime.spawn(mirror(
            state.clone(),
            applier(dispatcher.clone(), tokio::runtime::Handle::current()),
        ));
        runtime.spawn(liveness(state.clone(), dispatcher.database().clone()));
        tracing::info!(node_id = %state.node_id, revision, "joined the cluster");
        Ok(Arc::new(Cluster {
            state,
            runtime: parking_lot::Mutex::new(Some(runtime)),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.state.node_id
    }

    /// `ok`, or `degraded` when etcd is unreachable, with how old the
    /// registrations this node routes from may be.
    pub fn health(&self) -> Value {
        let connected = self.state.connected.load(Ordering::Acquire);
        let synced = self.state.synced_at_ms.load(Ordering::Acquire);
        json!({
            "status": if connected { "ok" } else { "degraded" },
            "cluster": {
                "node_id": self.state.node_id,
                "etcd": if connected { "connected" } else { "unreachable" },
                "revision": self.state.revision.load(Ordering::Acquire),
                "snapshot_age_ms": if connected { 0 } else { now_ms().saturating_sub(synced) },
            }
        })
    }

    /// The live nodes (those whose lease has not expired), sorted by id,
    /// each with its policy revision; `policies_agree` says whether every
    /// node runs the same policies.
    pub async fn status(&self) -> Result<Value> {
        let (nodes, revision) = self.nodes().await?;
        let revisions: std::collections::BTreeSet<&str> = nodes
            .iter()
            .map(|n| n["policy_revision"].as_str().unwrap_or("unknown"))
            .collect();
        Ok(json!({
            "mode": "cluster",
            "node_id": self.state.node_id,
            "revision": revision,
            "policies_agree": revisions.len() <= 1,
            "rate_limits_shared_by": self.state.live_nodes.load(Ordering::Acquire),
            "nodes": nodes,
        }))
    }
}
