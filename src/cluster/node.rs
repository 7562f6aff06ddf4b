//! What a node publishes about itself under `switchboard/nodes/{id}` (who
//! it is, where the other nodes reach it, its policy revision, the agents
//! its health checks eject) and what it learns from the list of live nodes:
//! the nodes a cluster scan asks (the last list read standing in while etcd
//! is unreachable), and their count, which shares every rate limit.

use super::etcd::Kv;
use super::state::{State, NODES};
use super::Cluster;
use crate::error::{Error, Result};
use crate::namespace::{now_ms, AgentRecord, AgentStatus, AGENTS};
use crate::policy::PolicyEngine;
use crate::storage::Database;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// This node's liveness value: who it is, where it listens, the revision of
/// the policy chain it runs, and the agents its own health checks eject.
/// Health is decided per node (each probes from where it stands) and only
/// its changes reach etcd: the value is put again when it differs.
pub(super) async fn node_value(state: &State, db: &Database) -> Value {
    let db = db.clone();
    let (policy, unhealthy) = tokio::task::spawn_blocking(move || {
        (
            super::policy_digest::policy_revision(&db),
            unhealthy_agents(&db),
        )
    })
    .await
    .unwrap_or_else(|_| {
        (
            json!({"policy_revision": "unreadable", "policies": []}),
            Vec::new(),
        )
    });
    json!({
        "node_id": state.node_id,
        "listen": state.listen,
        "url": state.url,
        "started_at_ms": state.started_at_ms,
        "policy_revision": policy["policy_revision"],
        "policies": policy["policies"],
        "unhealthy_agents": unhealthy,
    })
}

/// The agents this node holds as unhealthy (its registry writes each
/// status change to the agent's record), sorted by id.
fn unhealthy_agents(db: &Database) -> Vec<String> {
    db.scan_unjudged(AGENTS, None)
        .filter_map(|item| item.ok())
        .filter_map(|(_, value)| serde_json::from_slice::<AgentRecord>(&value).ok())
        .filter(|record| record.status == AgentStatus::Unhealthy)
        .map(|record| record.agent_id)
        .collect()
}

/// Counts the live nodes and shares every rate limit among them (each node
/// enforces `max / nodes`, never below 1). Without etcd the last count holds.
pub(super) async fn share_rate_limits(state: &State, db: &Database) {
    let Ok((kvs, _)) = state.etcd.list(NODES).await else {
        return;
    };
    *state.last_nodes.lock() = Some((parse_nodes(&kvs), now_ms()));
    let nodes = u32::try_from(kvs.len()).unwrap_or(u32::MAX).max(1);
    let before = state.live_nodes.swap(nodes, Ordering::AcqRel);
    let engine = PolicyEngine::new(db);
    if before != nodes || engine.rate_limit_nodes() != nodes {
        engine.set_rate_limit_nodes(nodes);
        tracing::info!(
            live_nodes = nodes,
            "rate limits shared by the live nodes: each allows its share (limit / nodes)"
        );
    }
}

/// The live nodes as their liveness keys describe them, sorted by id. A
/// node that did not publish a `url` (an older version) is given
/// `http://{listen}`.
fn parse_nodes(kvs: &[Kv]) -> Vec<Value> {
    let mut nodes: Vec<Value> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|node| node["node_id"].is_string())
        .map(|mut node| {
            if !node["url"].is_string() {
                node["url"] = json!(format!("http://{}", node["listen"].as_str().unwrap_or("")));
            }
            node
        })
        .collect();
    nodes.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    nodes
}

impl Cluster {
    /// The live nodes as their liveness keys describe them (`node_id`,
    /// `listen`, `url`, `started_at_ms`), sorted by id, and the etcd
    /// revision they were read at.
    pub async fn nodes(&self) -> Result<(Vec<Value>, i64)> {
        let state = self.state.clone();
        let handle = self.runtime.lock().as_ref().map(|r| r.handle().clone());
        let Some(handle) = handle else {
            return Err(self.state.unreachable());
        };
        let (kvs, revision) = handle
            .spawn(async move { state.etcd.list(NODES).await })
            .await
            .map_err(|e| Error::internal("listing the cluster's nodes", e))??;
        let nodes = parse_nodes(&kvs);
        *self.state.last_nodes.lock() = Some((nodes.clone(), now_ms()));
        Ok((nodes, revision))
    }

    /// The live nodes from etcd, or while etcd is unreachable the last list
    /// this node read (at start, at each keep-alive, or for a scan) with how
    /// old it is in ms (`None`: listed now). Fails when etcd is unreachable
    /// and no list was ever read.
    pub async fn nodes_or_last_known(&self) -> Result<(Vec<Value>, Option<u64>)> {
        match self.nodes().await {
            Ok((nodes, _)) => Ok((nodes, None)),
            Err(Error::Unavailable(reason)) => match self.state.last_nodes.lock().clone() {
                Some((nodes, read_at_ms)) => Ok((nodes, Some(now_ms().saturating_sub(read_at_ms)))),
                None => Err(Error::Unavailable(format!(
                    "{reason}; and this node has not read the list of nodes since it started, \
                     so it cannot tell which nodes to ask"
                ))),
            },
            Err(e) => Err(e),
        }
    }
}
