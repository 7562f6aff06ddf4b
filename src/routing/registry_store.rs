//! The registry's records in the store: each registration under
//! `agents/{id}`, read back at start, and every write to it with the policy
//! context it is judged in (register, unregister, a health change; the
//! caller; `source` = `cluster` for a record from another node), or as
//! bookkeeping (an undo, another node's removal). Knows no registry:
//! `registry.rs` decides what is written and when.

use crate::error::{Error, Result};
use crate::namespace::{agent_key, AgentRecord, AGENTS};
use crate::policy::{keys, OperationKind, PolicyContext, Principal};
use crate::storage::{off_worker, Database};

fn context(agent_id: &str, action: OperationKind) -> PolicyContext {
    PolicyContext::new()
        .with(keys::AGENT_ID, agent_id)
        .for_operation(action)
}

/// [`context`] with the caller's entries, if there is a caller.
fn caller_context(
    agent_id: &str,
    action: OperationKind,
    caller: Option<&Principal>,
) -> PolicyContext {
    let mut ctx = context(agent_id, action);
    if let Some(caller) = caller {
        caller.apply_to(&mut ctx);
    }
    ctx
}

/// Every registration stored in `db`, with its key; a record that does not
/// decode is skipped (and logged).
pub(super) fn load(db: &Database) -> Result<Vec<(String, AgentRecord)>> {
    let mut records = Vec::new();
    for item in db.scan_unjudged(AGENTS, None) {
        let (key, value) = item?;
        let record: AgentRecord = match serde_json::from_slice(&value) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping an agent record that does not decode");
                continue;
            }
        };
        records.push((key, record));
    }
    Ok(records)
}

/// Stores `value`, the record of `agent_id` registered (or replaced) by
/// `caller`, through the policy chain.
pub(super) fn register(
    db: &Database,
    agent_id: &str,
    value: &[u8],
    caller: Option<&Principal>,
) -> Result<()> {
    off_worker(|| {
        db.owner_put_with(
            &agent_key(agent_id),
            value,
            &caller_context(agent_id, OperationKind::Register, caller),
        )
    })
}

/// Deletes the record of `agent_id`, unregistered by `caller`, through the
/// policy chain.
pub(super) fn unregister(db: &Database, agent_id: &str, caller: Option<&Principal>) -> Result<()> {
    off_worker(|| {
        db.owner_delete_with(
            &agent_key(agent_id),
            &caller_context(agent_id, OperationKind::Unregister, caller),
        )
    })
}

/// Puts the stored record of `agent_id` back to `previous` (or removes it),
/// after a write whose publication failed. Bookkeeping: it undoes a write
/// the policy chain already allowed.
pub(super) fn restore(db: &Database, agent_id: &str, previous: Option<&AgentRecord>) -> Result<()> {
    off_worker(|| {
        let mut tx = db.owner_transaction();
        let ctx = context(agent_id, OperationKind::Register);
        match previous {
            Some(record) => {
                let value = serde_json::to_vec(record).map_err(Error::storage)?;
                tx.put_with(&agent_key(agent_id), &value, &ctx)?;
            }
            None => tx.delete_with(&agent_key(agent_id), &ctx)?,
        }
        tx.commit_bookkeeping()
    })
}

/// Stores `value`, a record of `agent_id` from the cluster, through the
/// before-hooks, as a local registration: a record in etcd is only as
/// trustworthy as whoever could write it there.
pub(super) fn apply_shared(db: &Database, agent_id: &str, value: &[u8]) -> Result<()> {
    let ctx = context(agent_id, OperationKind::Register).with("source", "cluster");
    off_worker(|| db.owner_put_with(&agent_key(agent_id), value, &ctx))
}

/// Deletes the record of `agent_id`, which the cluster removed, as
/// bookkeeping.
pub(super) fn remove_shared(db: &Database, agent_id: &str) -> Result<()> {
    off_worker(|| {
        let mut tx = db.owner_transaction();
        tx.delete_with(
            &agent_key(agent_id),
            &context(agent_id, OperationKind::Unregister),
        )?;
        tx.commit_bookkeeping()
    })
}

/// Stores `record`, the record of `agent_id` with its new health status,
/// through the policy chain.
pub(super) fn set_health(db: &Database, agent_id: &str, record: &AgentRecord) -> Result<()> {
    serde_json::to_vec(record)
        .map_err(Error::storage)
        .and_then(|v| {
            // Called from calls and probes on the runtime: see `off_worker`.
            off_worker(|| {
                db.owner_put_with(
                    &agent_key(agent_id),
                    &v,
                    &context(agent_id, OperationKind::Health),
                )
            })
        })
}
