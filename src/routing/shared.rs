//! Hooks through which a store shared by several nodes (cluster mode) takes
//! part in routing, without routing knowing what that store is: where
//! registrations are published after they commit locally, who decides a
//! session's binding when this node has none, and where the A2A tasks
//! created through one node are found by the others. All are absent on a
//! single node.

use crate::error::{Error, Result};
use crate::namespace::{A2aTaskRecord, AgentRecord, SessionRecord};

/// Where registrations are published once their local commit (and so the
/// policy hooks) has passed. An error undoes the local write.
pub trait RegistrationSink: Send + Sync {
    /// Whether a write would be accepted now; an error says why not.
    fn ready(&self) -> Result<()>;
    /// Publishes `record` under `agent_id` (`None`: the agent was removed).
    fn publish(&self, agent_id: &str, record: Option<&AgentRecord>) -> Result<()>;
}

/// Decides session bindings among nodes.
pub trait SessionBindings: Send + Sync {
    /// Binds `session_id` to `proposed` unless it is bound already; returns
    /// the binding that holds (the proposed one, or the earlier one).
    fn bind_if_absent(&self, session_id: &str, proposed: &SessionRecord) -> Result<SessionRecord>;
    /// Replaces the binding of a session whose agent (`replaced_agent`) can
    /// no longer serve it, only if the binding is still to that agent (or
    /// gone); returns the binding that holds (the proposed one, or one
    /// another node made meanwhile).
    fn rebind(
        &self,
        session_id: &str,
        replaced_agent: &str,
        proposed: &SessionRecord,
    ) -> Result<SessionRecord>;
    /// The shared bindings could not decide `session_id`'s new binding
    /// (`error`): `Ok` binds it to `proposed` on this node only (the store
    /// may take it up later), an error refuses the call with it.
    fn unreachable(&self, session_id: &str, proposed: &SessionRecord, error: Error) -> Result<()>;
    /// Whether `binding` (held on this node) has outlived the shared
    /// bindings' time to live at `now_ms`: the session is then bound anew,
    /// through them, as if it had never been bound.
    fn expired(&self, binding: &SessionRecord, now_ms: u64) -> bool;
}

/// A2A task affinity shared among nodes: which agent owns a task created
/// through any node (`a2a_tasks/{task_id}` on the node that recorded it),
/// so that a `GetTask` or follow-up on another node takes the task's route.
pub trait SharedTasks: Send + Sync {
    /// Publishes the task's record as this node just recorded it.
    fn publish(&self, task_id: &str, record: &A2aTaskRecord) -> Result<()>;
    /// The task's record as the last node that recorded it published it.
    fn fetch(&self, task_id: &str) -> Result<Option<A2aTaskRecord>>;
    /// Every task's record as last published, by task id.
    fn all(&self) -> Result<Vec<(String, A2aTaskRecord)>>;
}
