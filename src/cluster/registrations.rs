//! Registrations shared through `switchboard/agents/`, both ways: this
//! node's published as they commit here (the `RegistrationSink` hook, its
//! secrets redacted), the cluster's mirrored here (list the prefix, then
//! watch from the next revision, list again after a compaction) through the
//! applier, which judges each by this node's own checks and policy chain.

use super::applier::Change;
use super::etcd::{Event, WatchMessage};
use super::hooks::{block, Hooks};
use super::state::{State, AGENTS, RETRY_EVERY};
use crate::error::{Error, Result};
use crate::namespace::AgentRecord;
use crate::routing::shared::RegistrationSink;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

/// Lists the registrations (unless the node joined with a listing), then
/// follows the watch from the revision applied so far; a broken watch is
/// resumed from that revision, on the next member if need be, and the prefix
/// is listed again only when the revision was compacted away. Runs until
/// dropped.
pub(super) async fn mirror(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
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
