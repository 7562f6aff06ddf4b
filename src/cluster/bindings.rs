//! Session bindings shared through `switchboard/sessions/`: decided in etcd
//! (the `SessionBindings` hook: create-if-absent on a lease that outlives
//! the binding's TTL, an expired binding replaced compare-and-set, a rebind
//! only over the agent it replaces; refused or made on this node only while
//! etcd is unreachable), and the bindings other nodes make followed here,
//! replacing this node's cached copies.

use super::applier::Change;
use super::etcd::{Event, WatchMessage};
use super::hooks::{block, Hooks};
use super::state::{State, RETRY_EVERY, SESSIONS};
use crate::error::{Error, Result};
use crate::namespace::{now_ms, SessionRecord};
use crate::routing::shared::SessionBindings;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl State {
    /// The lease a binding made now is put on. It lives the TTL plus the
    /// tenth of it during which it is handed out, so etcd never drops a
    /// binding before its TTL is over by the binding's own clock
    /// (`created_at_ms`), which is what nodes holding it in cache go by.
    pub(super) async fn binding_lease(&self) -> Result<i64> {
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
    pub(super) fn expired(&self, binding: &SessionRecord, now_ms: u64) -> bool {
        let ttl_ms = self.binding_ttl.as_millis() as u64;
        now_ms >= binding.created_at_ms.saturating_add(ttl_ms)
    }

    /// Whether `held`, a binding as etcd holds it, is over (one that does
    /// not decode is left to the caller's error).
    pub(super) fn held_expired(&self, held: &[u8]) -> bool {
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
    pub(super) async fn bind_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
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

/// Follows `switchboard/sessions/`: a binding another node makes (a rebind
/// after it ejected the session's agent, or the session bound anew) replaces
/// the copy this node caches, or one session would be served by two agents
/// until the binding's TTL ran out. Lists the prefix first (bindings changed
/// while this node was away) and again after a compaction; a broken watch
/// is resumed from the revision seen. Runs until dropped.
pub(super) async fn follow_bindings(state: Arc<State>, apply: std::sync::mpsc::Sender<Change>) {
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
