//! Cluster mode: several `switchboard serve` nodes share their agents and
//! session bindings through etcd, each keeping its own RocksDB for the audit
//! trail (`tools/`, `inflight/`, the decision log).
//!
//! - `etcd`: the etcd v3 client (JSON gateway over HTTP, etcd's user
//!   authentication and client TLS);
//! - `node`: what a node publishes about itself (its liveness value, with
//!   its policy revision from `policy_digest`) and learns from the node list
//!   (the live nodes, their count sharing the rate limits);
//! - this file: [`Cluster`], what a node runs: the registrations mirror
//!   (list `switchboard/agents/`, then watch from the next revision, list
//!   again after a compaction or a broken watch), the node's liveness key on
//!   a lease, the two routing hooks (publishing registrations, deciding
//!   session bindings by create-if-absent), the watch of the bindings
//!   other nodes make, which replace this node's cached copies, and the
//!   task of `tokens` (issued tokens kept in step with
//!   `switchboard/tokens/`); `publisher` publishes the bindings made while
//!   etcd was unreachable. A
//!   registration read from etcd is applied only if it passes this node's
//!   own checks and policy chain (`ToolDispatcher::apply_shared_registration`):
//!   etcd is not trusted to say what runs here.
//!
//! When etcd cannot be reached, routing goes on from the registrations held
//! in memory, registry writes fail as unavailable, new session bindings are
//! refused (`strict`) or made on this node only and published create-if-absent
//! when etcd is back (`best_effort`), and [`Cluster::health`] says `degraded`.
//!
//! Every keep-alive also counts the live nodes, which share every rate
//! limit (each node enforces its share, `max / nodes`, never below 1).

mod etcd;
mod node;
mod policy_digest;
mod publisher;
mod tokens;

use crate::dispatch::ToolDispatcher;
use crate::error::{Error, Result};
use crate::namespace::{now_ms, validate_id, AgentRecord, SessionRecord};
use crate::routing::shared::{RegistrationSink, SessionBindings};
use crate::storage::{off_worker, Database};
use etcd::{Etcd, Event, WatchMessage};
pub use etcd::{EtcdAccess, EtcdCredentials};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every key this crate writes in etcd starts with this.
pub const PREFIX: &str = "switchboard/";
const AGENTS: &str = "switchboard/agents/";
const NODES: &str = "switchboard/nodes/";
const SESSIONS: &str = "switchboard/sessions/";
const TOKENS: &str = "switchboard/tokens/";
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
    /// While etcd is unreachable, refuse new session bindings (`true`) rather
    /// than bind on this node only and publish them when etcd is back.
    pub strict_bindings: bool,
    /// Start even if no etcd member answers, routing from the registrations
    /// in this node's own store, and join when etcd is back.
    pub start_from_snapshot: bool,
    /// How long a session binding lasts from when it is made; the session
    /// is then bound anew (etcd drops the key on a lease).
    pub binding_ttl: Duration,
    /// The base URL the other nodes reach this node's API at (a cluster
    /// scan asks each node for its records there), e.g. `http://10.0.0.1:7700`.
    pub url: String,
    /// How this node signs in to etcd and checks it (etcd's user
    /// authentication, TLS to `https://` members).
    pub access: EtcdAccess,
    /// The secret every node of the cluster shares: sent by this node when
    /// it asks another for its part of a cluster scan, and accepted from
    /// other nodes on that route only. `None`: peers are asked without a
    /// credential (they answer only if they require none).
    pub secret: Option<String>,
    /// Under `best_effort`, at most this many bindings made on this node
    /// only wait for etcd; past it new sessions are refused until etcd is
    /// back ([`DEFAULT_MAX_UNPUBLISHED_BINDINGS`] unless configured).
    pub max_unpublished_bindings: usize,
}

impl ClusterSettings {
    /// What [`Cluster::join`] refuses before it reaches etcd: the node id,
    /// the advertise URL, the etcd URLs, the secret's length, and the files
    /// of `access` (read and parsed, as the etcd client will).
    pub fn check(&self) -> Result<()> {
        validate_id("node id", &self.node_id)?;
        check_advertise_url(&self.url)?;
        for url in &self.etcd {
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                Error::invalid(format!(
                    "cluster: etcd URL {url:?} does not parse ({e}); give a client URL such as \
                     http://127.0.0.1:2379"
                ))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::invalid(format!(
                    "cluster: etcd URL {url:?} is not http:// or https://"
                )));
            }
        }
        if let Some(secret) = &self.secret {
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(Error::invalid(format!(
                    "cluster: the cluster secret has fewer than {MIN_SECRET_CHARS} characters; \
                     give every node the same longer random secret (e.g. `openssl rand -hex 32`)"
                )));
            }
        }
        Etcd::new(self.etcd.clone(), &self.access).map(drop)
    }
}

/// How many bindings made while etcd is unreachable a node keeps to
/// publish, unless configured.
pub const DEFAULT_MAX_UNPUBLISHED_BINDINGS: usize = 10_000;

/// The header a node sends the cluster secret in, node to node.
pub const CREDENTIAL_HEADER: &str = "x-switchboard-cluster-credential";
/// The header carrying the principal a node-to-node call is made for
/// (base64url of its JSON; absent for a caller without a credential),
/// believed only with a valid [`CREDENTIAL_HEADER`].
pub const ON_BEHALF_OF_HEADER: &str = "x-switchboard-on-behalf-of";
/// The shortest cluster secret accepted.
pub const MIN_SECRET_CHARS: usize = 16;

/// Refuses an advertise URL the other nodes could not use to reach this
/// node: an unspecified address (`0.0.0.0`, `::`) reaches whichever node
/// dials it, so a scan would read the asking node twice and report nothing
/// missing.
pub fn check_advertise_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        Error::invalid(format!(
            "cluster: the advertise URL {url:?} does not parse ({e}); set advertise_url under \
             [cluster] to the base URL the other nodes reach this node at, e.g. http://10.0.0.1:7700"
        ))
    })?;
    let unspecified = match parsed.host_str() {
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified()),
        None => true,
    };
    if unspecified || !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "cluster: this node would tell the other nodes to reach it at {url}, which is not an \
             address they can reach (0.0.0.0 and :: mean every interface of whoever dials them); \
             set advertise_url under [cluster] to this node's routable base URL, e.g. \
             http://10.0.0.1:7700"
        )));
    }
    Ok(())
}

struct State {
    etcd: Etcd,
    node_id: String,
    listen: String,
    url: String,
    secret: Option<String>,
    started_at_ms: u64,
    /// Whether the last exchange with etcd worked.
    connected: AtomicBool,
    /// When etcd was last lost, so when the registrations in memory were
    /// last known complete (ms).
    synced_at_ms: AtomicU64,
    /// The etcd revision the mirror has applied (0: not listed yet).
    revision: AtomicI64,
    /// This node's lease (0: none yet).
    lease: AtomicI64,
    strict_bindings: bool,
    /// Bindings made on this node only while etcd was unreachable
    /// (`best_effort`), to publish when it is back.
    pending: parking_lot::Mutex<HashMap<String, SessionRecord>>,
    /// At most this many in `pending`: past it, new sessions are refused
    /// as under `strict` until etcd is back.
    max_pending: usize,
    /// New sessions refused because `pending` was full.
    refused_at_cap: AtomicU64,
    /// Whether the refusals since `pending` last filled have been logged.
    cap_reached: AtomicBool,
    /// Wakes the publisher of `pending` (etcd answers again).
    publish_now: tokio::sync::Notify,
    /// Wakes the liveness loop to check etcd now (the watch broke).
    check_now: tokio::sync::Notify,
    /// The live nodes last counted, which share every rate limit.
    live_nodes: AtomicU32,
    /// The last list of live nodes read from etcd and when (ms): a cluster
    /// scan asks those nodes while etcd is unreachable.
    last_nodes: parking_lot::Mutex<Option<(Vec<Value>, u64)>>,
    binding_ttl: Duration,
    /// The lease new bindings are put on and when it was granted (ms): one
    /// lease serves every binding made within a tenth of the TTL.
    binding_lease: tokio::sync::Mutex<Option<(i64, u64)>>,
}

impl State {
    /// The lease a binding made now is put on. It lives the TTL plus the
    /// tenth of it during which it is handed out, so etcd never drops a
    /// binding before its TTL is over by the binding's own clock
    /// (`created_at_ms`), which is what nodes holding it in cache go by.
    async fn binding_lease(&self) -> Result<i64> {
        let reuse_ms = (self.binding_ttl.as_millis() as u64 / 10).max(1_000);
        let mut held = self.binding_lease.lock().await;
        if let Some((id, granted_at_ms)) = *held {
            if now_ms().saturating_sub(granted_at_ms) < reuse_ms {
                return Ok(id);
            }
        }
        let granted_at_ms = now_ms();
        let ttl_secs = (self.binding_ttl.as_millis() as u64 + reuse_ms).div_ceil(1_000);
        let id = self.etcd.grant(ttl_secs).await?;
        *held = Some((id, granted_at_ms));
        Ok(id)
    }

    /// Whether `binding` has outlived the TTL at `now_ms`, by its own clock.
    fn expired(&self, binding: &SessionRecord, now_ms: u64) -> bool {
        let ttl_ms = self.binding_ttl.as_millis() as u64;
        now_ms >= binding.created_at_ms.saturating_add(ttl_ms)
    }

    /// Whether `held`, a binding as etcd holds it, is over (one that does
    /// not decode is left to the caller's error).
    fn held_expired(&self, held: &[u8]) -> bool {
        serde_json::from_slice::<SessionRecord>(held).is_ok_and(|b| self.expired(&b, now_ms()))
    }

    /// Binds the session under `key` to `value` unless etcd holds a binding
    /// still in force; returns the one that holds. etcd keeps a binding
    /// until its lease ends, up to a tenth of the TTL after the binding is
    /// over: adopting it would hand every node a binding already expired,
    /// so each call would come back here (a synchronous etcd transaction
    /// under the session's lock) until the key went. An expired binding is
    /// replaced instead, compare-and-set on its revision so racing nodes
    /// still end with one.
    async fn bind_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        let lease = Some(self.binding_lease().await?);
        let held = self.etcd.create_if_absent(key, value, lease).await?;
        if !self.held_expired(&held) {
            return Ok(held);
        }
        match self.etcd.get(key).await? {
            None => self.etcd.create_if_absent(key, value, lease).await,
            Some((held, revision)) if self.held_expired(&held) => {
                self.etcd
                    .put_if_unchanged(key, value, revision, lease)
                    .await
            }
            Some((held, _)) => Ok(held),
        }
    }

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
    /// The thread applying changes to the registry: it holds the dispatcher
    /// (and so the database) until the runtime's tasks are gone.
    applier: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
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
    let answer = off_worker(|| rx.recv_timeout(etcd::DEADLINE + Duration::from_millis(500)));
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
        // Literal env values (secrets) stay on this node: every node that
        // should start the command resolves `${VAR}` / `file:` references
        // itself.
        let value = record
            .map(|r| serde_json::to_vec(&r.redacted()))
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
            state.bind_if_absent(&key, &value).await
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
        // A new agent is a new binding: its time to live starts now.
        let proposed = SessionRecord {
            created_at_ms: proposed.last_used_ms,
            ..proposed.clone()
        };
        let value = serde_json::to_vec(&proposed).map_err(Error::storage)?;
        let replaced = replaced_agent.to_string();
        let held = block(&self.runtime, &self.state, async move {
            let lease = Some(state.binding_lease().await?);
            match state.etcd.get(&key).await? {
                None => state.etcd.create_if_absent(&key, &value, lease).await,
                Some((held, revision)) => {
                    let bound_to = serde_json::from_slice::<SessionRecord>(&held)
                        .map(|b| b.agent_id)
                        .ok();
                    if bound_to.is_some_and(|agent| agent != replaced) && !state.held_expired(&held)
                    {
                        // Another node rebound it already: theirs holds.
                        return Ok(held);
                    }
                    state
                        .etcd
                        .put_if_unchanged(&key, &value, revision, lease)
                        .await
                }
            }
        })?;
        serde_json::from_slice(&held)
            .map_err(|e| Error::storage(format!("session {session_id}'s binding in etcd: {e}")))
    }

    fn unreachable(&self, session_id: &str, proposed: &SessionRecord, error: Error) -> Result<()> {
        if self.state.strict_bindings {
            tracing::warn!(session_id, error = %error, "etcd unreachable: new session binding refused (bindings = \"strict\")");
            return Err(match error {
                Error::Unavailable(_) => Error::Unavailable(format!(
                    "session {session_id} needs a new binding and etcd is unreachable from node {}; \
                     this node refuses new bindings until it is back (bindings = \"strict\" under \
                     [cluster], --cluster-bindings strict)",
                    self.state.node_id
                )),
                other => other,
            });
        }
        let mut pending = self.state.pending.lock();
        if pending.len() >= self.state.max_pending && !pending.contains_key(session_id) {
            self.state.refused_at_cap.fetch_add(1, Ordering::AcqRel);
            if !self.state.cap_reached.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    max_unpublished_bindings = self.state.max_pending,
                    "etcd unreachable and this node holds as many unpublished bindings as it keeps: \
                     new sessions are refused until etcd is back (counted in /healthz as \
                     bindings_refused_at_cap)"
                );
            }
            return Err(Error::Unavailable(format!(
                "session {session_id} needs a new binding and etcd is unreachable from node {}; \
                 this node already holds {} bindings made on its own (max_unpublished_bindings \
                 under [cluster]) and refuses new sessions until etcd is back",
                self.state.node_id, self.state.max_pending
            )));
        }
        tracing::warn!(session_id, error = %error, "etcd unreachable: session bound on this node only, published when etcd is back");
        pending.insert(session_id.to_string(), proposed.clone());
        Ok(())
    }

    fn expired(&self, binding: &SessionRecord, now_ms: u64) -> bool {
        self.state.expired(binding, now_ms)
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
            // Refused (checks, command allow-list, policy chain) or failed:
            // not applied here; an agent held before stays as it was.
            if let Err(e) = dispatcher.apply_shared_registration(record) {
                tracing::warn!(agent_id = %id, error = %e, "a registration from the cluster was refused or failed on this node; not applied");
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

fn follow(dispatcher: &ToolDispatcher, session_id: &str, value: &[u8]) {
    let held = match serde_json::from_slice::<SessionRecord>(value) {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(session_id, error = %e, "a session binding in etcd does not decode; ignored");
            return;
        }
    };
    match dispatcher.follow_shared_binding(session_id, &held) {
        Ok(true) => {
            tracing::info!(session_id, agent_id = %held.agent_id, "following the session's binding made by another node")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(session_id, error = %e, "could not follow the cluster's session binding")
        }
    }
}

/// A change for the applier thread to make to the registry.
enum Change {
    Put(String, Vec<u8>),
    Delete(String),
    Listing(Vec<etcd::Kv>),
    /// Adopt the cluster's binding of a session bound here to another agent.
    Adopt(String, String, SessionRecord),
    /// A session's binding as etcd holds it now: follow it if this node
    /// holds another one.
    Follow(String, Vec<u8>),
}

/// Applies changes in order on a thread of its own: applying takes the
/// registry's lock, which a registration on this node holds while it waits
/// for etcd on the cluster runtime, so the runtime must never wait for it.
/// Work an applied change starts (an MCP agent's discovery) runs on
/// `serving`, the runtime of the node's API.
fn applier(
    dispatcher: ToolDispatcher,
    serving: tokio::runtime::Handle,
) -> (std::sync::mpsc::Sender<Change>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<Change>();
    let thread = std::thread::Builder::new()
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
                    Change::Adopt(session_id, local, held) => {
                        if let Err(e) = dispatcher.apply_shared_binding(&session_id, &local, &held) {
                            tracing::warn!(session_id, error = %e, "could not adopt the cluster's session binding");
                        }
                    }
                    Change::Follow(session_id, value) => follow(&dispatcher, &session_id, &value),
                }
            }
        })
        .expect("spawning the cluster's applier thread");
    (tx, thread)
}

/// Lists the registrations (unless the node joined with a listing), then
/// follows the watch from the revision applied so far; a broken watch is
/// resumed from that revision, on the next member if need be, and the prefix
/// is listed again only when the revision was compacted away. Runs until
/// dropped.
async fn mirror(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
    loop {
        if state.revision.load(Ordering::Acquire) == 0 {
            match state.etcd.list(AGENTS).await {
                Ok((kvs, revision)) => {
                    let _ = apply.send(Change::Listing(kvs));
                    state.revision.store(revision.max(1), Ordering::Release);
                    state.set_connected(true);
                    tracing::info!(revision, "listed the cluster's registrations");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the cluster's registrations");
                    state.set_connected(false);
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            }
        }
        let from = state.revision.load(Ordering::Acquire) + 1;
        let mut compacted = false;
        let watched = state
            .etcd
            .watch(AGENTS, from, |message| match message {
                WatchMessage::Compacted => {
                    compacted = true;
                    false
                }
                WatchMessage::Events { revision, events } => {
                    if events.is_empty() {
                        return true;
                    }
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
        if compacted {
            tracing::info!(from, "the watch's revision was compacted; listing again");
            state.revision.store(0, Ordering::Release);
            continue;
        }
        if let Err(e) = watched {
            tracing::debug!(error = %e, "the registrations watch stopped; resuming it");
            // Whether etcd is still there is for the lease to tell, now.
            state.check_now.notify_one();
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Follows `switchboard/sessions/`: a binding another node makes (a rebind
/// after it ejected the session's agent, or the session bound anew) replaces
/// the copy this node caches, or one session would be served by two agents
/// until the binding's TTL ran out. Lists the prefix first (bindings changed
/// while this node was away) and again after a compaction; a broken watch
/// is resumed from the revision seen. Runs until dropped.
async fn follow_bindings(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
    let mut revision = 0;
    loop {
        if revision == 0 {
            match state.etcd.list(SESSIONS).await {
                Ok((kvs, listed_at)) => {
                    for kv in kvs {
                        if let Some(id) = kv.key.strip_prefix(SESSIONS) {
                            let _ = apply.send(Change::Follow(id.to_string(), kv.value));
                        }
                    }
                    revision = listed_at.max(1);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the cluster's session bindings");
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            }
        }
        let mut compacted = false;
        let watched = state
            .etcd
            .watch(SESSIONS, revision + 1, |message| match message {
                WatchMessage::Compacted => {
                    compacted = true;
                    false
                }
                WatchMessage::Events {
                    revision: at,
                    events,
                } => {
                    for event in events {
                        // A binding that ends (its lease) is over on every
                        // node by its own clock already.
                        let Event::Put(kv) = event else { continue };
                        if let Some(id) = kv.key.strip_prefix(SESSIONS) {
                            let _ = apply.send(Change::Follow(id.to_string(), kv.value));
                        }
                    }
                    revision = revision.max(at);
                    true
                }
            })
            .await;
        if compacted {
            tracing::info!("the session bindings watch's revision was compacted; listing again");
            revision = 0;
            continue;
        }
        if let Err(e) = watched {
            tracing::debug!(error = %e, "the session bindings watch stopped; resuming it");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Keeps `switchboard/nodes/{id}` on a lease, renewed every few seconds;
/// whether that works is whether this node counts as connected. Puts the
/// node's value again when its policy revision changed, recounts the live
/// nodes (who share every rate limit), and when etcd is back wakes the
/// publisher of the bindings made meanwhile.
async fn liveness(state: Arc<State>, db: Database) {
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

impl Cluster {
    /// Joins the cluster: lists the registrations in etcd into `dispatcher`'s
    /// registry (etcd's list wins over what the local store held), installs
    /// the routing hooks, and starts the watch and the liveness lease. Fails
    /// if etcd cannot be reached, unless `start_from_snapshot`: then the node
    /// routes from the registrations in its own store, degraded, and joins
    /// when etcd is back.
    pub async fn join(
        dispatcher: &ToolDispatcher,
        settings: ClusterSettings,
    ) -> Result<Arc<Cluster>> {
        settings.check()?;
        let state = Arc::new(State {
            etcd: Etcd::new(settings.etcd.clone(), &settings.access)?,
            node_id: settings.node_id,
            listen: settings.listen,
            url: settings.url,
            secret: settings.secret,
            started_at_ms: now_ms(),
            connected: AtomicBool::new(false),
            synced_at_ms: AtomicU64::new(0),
            revision: AtomicI64::new(0),
            lease: AtomicI64::new(0),
            strict_bindings: settings.strict_bindings,
            pending: parking_lot::Mutex::new(HashMap::new()),
            max_pending: settings.max_unpublished_bindings.max(1),
            refused_at_cap: AtomicU64::new(0),
            cap_reached: AtomicBool::new(false),
            publish_now: tokio::sync::Notify::new(),
            check_now: tokio::sync::Notify::new(),
            live_nodes: AtomicU32::new(1),
            last_nodes: parking_lot::Mutex::new(None),
            binding_ttl: settings.binding_ttl,
            binding_lease: tokio::sync::Mutex::new(None),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard-cluster")
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start the cluster runtime", e))?;
        let listing = {
            let state = state.clone();
            runtime.spawn(async move { state.etcd.list(AGENTS).await })
        };
        let listed = match listing.await {
            Ok(listed) => listed,
            Err(e) => {
                runtime.shutdown_background();
                return Err(Error::internal("listing the cluster's agents", e));
            }
        };
        match listed {
            Ok((kvs, revision)) => {
                let d = dispatcher.clone();
                off_worker(move || apply_listing(&d, &kvs));
                state.revision.store(revision.max(1), Ordering::Release);
                state.set_connected(true);
            }
            Err(e) if settings.start_from_snapshot => {
                tracing::warn!(error = %e, agents = dispatcher.registry().list().len(), "etcd unreachable at start: routing from the registrations in this node's store (start_from_snapshot) until it is back");
                state.synced_at_ms.store(now_ms(), Ordering::Release);
            }
            Err(e) => {
                // Dropping a runtime inside an async context panics.
                runtime.shutdown_background();
                return Err(Error::Unavailable(format!(
                    "cannot join the cluster: {e}. A node does not start without etcd unless \
                     told to route from its own store meanwhile: --cluster-start-from-snapshot \
                     (`start_from_snapshot = true` under [cluster])"
                )));
            }
        }
        let revision = state.revision.load(Ordering::Acquire);
        let hooks = Arc::new(Hooks {
            state: state.clone(),
            runtime: runtime.handle().clone(),
        });
        dispatcher.set_shared(Some(hooks.clone()), Some(hooks));
        let (apply, applier) = applier(dispatcher.clone(), tokio::runtime::Handle::current());
        // The liveness key first: it is what lists this node as a member.
        runtime.spawn(liveness(state.clone(), dispatcher.database().clone()));
        runtime.spawn(mirror(state.clone(), apply.clone()));
        runtime.spawn(publisher::run(state.clone(), apply.clone()));
        runtime.spawn(follow_bindings(state.clone(), apply.clone()));
        runtime.spawn(tokens::follow_tokens(
            state.clone(),
            dispatcher.database().clone(),
        ));
        tracing::info!(node_id = %state.node_id, revision, "joined the cluster");
        Ok(Arc::new(Cluster {
            state,
            runtime: parking_lot::Mutex::new(Some(runtime)),
            applier: parking_lot::Mutex::new(Some(applier)),
        }))
    }

    /// Leaves the cluster at once: revokes this node's lease (its key in
    /// `switchboard/nodes/` goes with it) and stops the background work,
    /// waiting (boundedly) for the changes being applied. A node that cannot
    /// reach etcd leaves when its lease expires.
    pub async fn leave(&self) {
        let runtime = self.runtime.lock().take();
        let Some(runtime) = runtime else {
            return;
        };
        let state = self.state.clone();
        let revoked = runtime.spawn(async move {
            match state.lease.swap(0, Ordering::AcqRel) {
                0 => Ok(()),
                id => state.etcd.revoke(id).await,
            }
        });
        match tokio::time::timeout(etcd::DEADLINE, revoked).await {
            Ok(Ok(Ok(()))) => tracing::info!(node_id = %self.state.node_id, "left the cluster"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "could not revoke this node's lease; it expires on its own")
            }
            _ => tracing::warn!("revoking this node's lease took too long; it expires on its own"),
        }
        // Stop the background tasks, then let the applier thread finish
        // with the database before the process exits (off the async workers).
        let applier = self.applier.lock().take();
        let stopped = tokio::task::spawn_blocking(move || {
            runtime.shutdown_timeout(Duration::from_secs(2));
            if let Some(thread) = applier {
                let _ = thread.join();
            }
        });
        if tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .is_err()
        {
            tracing::warn!("the cluster's background work did not stop in time");
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.state.node_id
    }

    /// Publishes a token issued or revoked on this node (its record: the
    /// hash, never the secret) so every node accepts or refuses it.
    pub async fn publish_token(&self, record: &crate::namespace::TokenRecord) -> Result<()> {
        let handle = self.runtime.lock().as_ref().map(|r| r.handle().clone());
        let Some(handle) = handle else {
            return Err(self.state.unreachable());
        };
        let (state, record) = (self.state.clone(), record.clone());
        let published = handle
            .spawn(async move { tokens::publish_token(&state, &record).await })
            .await
            .map_err(|e| Error::internal("publishing a token", e))?;
        self.state
            .set_connected(!matches!(published, Err(Error::Unavailable(_))));
        published
    }

    /// The cluster secret this node sends to the others, if configured.
    pub fn secret(&self) -> Option<&str> {
        self.state.secret.as_deref()
    }

    /// Whether `presented` is the cluster secret (compared in constant
    /// time); never true on a node without one.
    pub fn accepts_secret(&self, presented: &str) -> bool {
        self.state.secret.as_deref().is_some_and(|secret| {
            crate::identity::constant_time_eq(presented.as_bytes(), secret.as_bytes())
        })
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
                "bindings": if self.state.strict_bindings { "strict" } else { "best_effort" },
                "unpublished_bindings": self.state.pending.lock().len(),
                "max_unpublished_bindings": self.state.max_pending,
                "bindings_refused_at_cap": self.state.refused_at_cap.load(Ordering::Acquire),
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
