//! The applier: every change etcd brings to this node's registry and
//! sessions (a registration put or deleted, a full listing, a binding to
//! adopt or to follow), applied in order on a thread of its own, each
//! through the dispatcher's own checks and policy chain.

use super::etcd::Kv;
use super::state::AGENTS;
use crate::dispatch::ToolDispatcher;
use crate::namespace::{AgentRecord, SessionRecord};
use std::collections::HashSet;

/// A change for the applier thread to make to the registry.
pub(super) enum Change {
    Put(String, Vec<u8>),
    Delete(String),
    Listing(Vec<Kv>),
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
pub(super) fn start(
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

/// Brings the registry in line with a full listing of `switchboard/agents/`.
pub(super) fn apply_listing(dispatcher: &ToolDispatcher, kvs: &[Kv]) {
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
