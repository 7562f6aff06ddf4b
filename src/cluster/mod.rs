//! Cluster mode: several `switchboard serve` nodes share their agents,
//! session bindings and A2A task affinity through etcd, each keeping its
//! own RocksDB for the audit trail (`tools/`, `inflight/`, the decision
//! log).
//!
//! - this file: [`Cluster`], what a node runs (joining: the first listing
//!   of the registrations, the routing hooks, the background tasks below;
//!   leaving; health and status), and [`ClusterSettings`];
//! - `state`: what those tasks share (the etcd client, whether etcd
//!   answers, the revision mirrored, the lease, the bindings waiting to be
//!   published) and the keys they keep under `switchboard/`;
//! - `hooks`: the routing hooks' handle on the cluster's runtime;
//! - `registrations`: registrations through `switchboard/agents/`, both
//!   ways: this node's published (a hook), the cluster's mirrored (list the
//!   prefix, then watch from the next revision, list again after a
//!   compaction);
//! - `bindings`: session bindings through `switchboard/sessions/`: decided
//!   by create-if-absent (a hook), and the ones other nodes make followed,
//!   replacing this node's cached copies;
//! - `a2a_tasks`: A2A task affinity through `switchboard/a2a_tasks/`: the
//!   record of each task published as a node records it, read by a node
//!   that holds none (a hook);
//! - `publisher`: publishes the bindings made while etcd was unreachable;
//! - `applier`: the thread that applies what etcd brings (registrations,
//!   removals, bindings) to this node, in order;
//! - `liveness`: the node's key in `switchboard/nodes/` on a lease;
//! - `node`: what a node publishes about itself (its liveness value, with
//!   its policy revision from `policy_digest`) and learns from the node list
//!   (the live nodes, their count sharing the rate limits);
//! - `tokens`: issued tokens kept in step with `switchboard/tokens/`;
//! - `etcd`: the etcd v3 client (JSON gateway over HTTP, etcd's user
//!   authentication and client TLS).
//!
//! A registration read from etcd is applied only if it passes this node's
//! own checks and policy chain (`ToolDispatcher::apply_shared_registration`):
//! etcd is not trusted to say what runs here.
//!
//! When etcd cannot be reached, routing goes on from the registrations held
//! in memory, registry writes fail as unavailable, new session bindings are
//! refused (`strict`) or made on this node only and published create-if-absent
//! when etcd is back (`best_effort`), and [`Cluster::health`] says `degraded`.
//!
//! Every keep-alive also counts the live nodes, which share every rate
//! limit (each node enforces its share, `max / nodes`, never below 1).

mod a2a_tasks;
mod applier;
mod bindings;
mod etcd;
mod hooks;
mod liveness;
mod node;
mod policy_digest;
mod publisher;
mod registrations;
mod state;
mod tokens;

use crate::dispatch::ToolDispatcher;
use crate::error::{Error, Result};
use crate::namespace::{now_ms, validate_id};
use crate::storage::off_worker;
use etcd::Etcd;
pub use etcd::{EtcdAccess, EtcdCredentials};
use hooks::Hooks;
pub use liveness::{KEEP_ALIVE_EVERY, NODE_LEASE_SECS};
use serde_json::{json, Value};
use state::{State, AGENTS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every key this crate writes in etcd starts with this.
pub const PREFIX: &str = "switchboard/";

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
                off_worker(move || applier::apply_listing(&d, &kvs));
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
        dispatcher.set_shared_tasks(Some(hooks.clone()));
        dispatcher.set_shared(Some(hooks.clone()), Some(hooks));
        let (apply, applier) =
            applier::start(dispatcher.clone(), tokio::runtime::Handle::current());
        // The liveness key first: it is what lists this node as a member.
        runtime.spawn(liveness::run(state.clone(), dispatcher.database().clone()));
        runtime.spawn(registrations::mirror(state.clone(), apply.clone()));
        runtime.spawn(publisher::run(state.clone(), apply.clone()));
        runtime.spawn(bindings::follow_bindings(state.clone(), apply.clone()));
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
