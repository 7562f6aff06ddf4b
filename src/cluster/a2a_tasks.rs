//! A2A task affinity shared through `switchboard/a2a_tasks/`: a node that
//! records a task's state (it routed a call of the task) publishes the
//! task's record, and a node that holds no record of a task reads it there
//! (`SharedTasks`), so a `GetTask` or follow-up on any node takes the
//! task's route to its owner, and `ListTasks` on any node lists every
//! node's. Records are put on the lease session
//! bindings are put on: a task's calls reach its owner through its
//! context's session binding, so its record lives as long as the binding.

use super::hooks::{block, Hooks};
use super::state::A2A_TASKS;
use crate::error::{Error, Result};
use crate::namespace::A2aTaskRecord;
use crate::routing::shared::SharedTasks;

impl SharedTasks for Hooks {
    fn publish(&self, task_id: &str, record: &A2aTaskRecord) -> Result<()> {
        let state = self.state.clone();
        let key = format!("{A2A_TASKS}{task_id}");
        let value = serde_json::to_vec(record).map_err(Error::storage)?;
        block(&self.runtime, &self.state, async move {
            let lease = state.binding_lease().await?;
            state.etcd.put(&key, &value, Some(lease)).await
        })
    }

    fn fetch(&self, task_id: &str) -> Result<Option<A2aTaskRecord>> {
        let state = self.state.clone();
        let key = format!("{A2A_TASKS}{task_id}");
        let held = block(&self.runtime, &self.state, async move {
            Ok(state.etcd.get(&key).await?.map(|(value, _)| value))
        })?;
        held.map(|value| {
            serde_json::from_slice(&value)
                .map_err(|e| Error::storage(format!("A2A task {task_id}'s record in etcd: {e}")))
        })
        .transpose()
    }

    fn all(&self) -> Result<Vec<(String, A2aTaskRecord)>> {
        let state = self.state.clone();
        let held = block(&self.runtime, &self.state, async move {
            Ok(state.etcd.list(A2A_TASKS).await?.0)
        })?;
        let mut records = Vec::with_capacity(held.len());
        for kv in held {
            let Some(task_id) = kv.key.strip_prefix(A2A_TASKS) else {
                continue;
            };
            match serde_json::from_slice::<A2aTaskRecord>(&kv.value) {
                Ok(record) => records.push((task_id.to_string(), record)),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping an A2A task record in etcd that does not decode")
                }
            }
        }
        Ok(records)
    }
}
