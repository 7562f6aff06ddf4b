//! Crash recovery: dispatches a previous process left in flight are found
//! through the `inflight/` index (never by scanning history) and marked
//! interrupted.

use crate::error::{Error, Result};
use crate::namespace::{now_ms, AttemptOutcome, DispatchRecord, DispatchStatus, INFLIGHT};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::storage::Database;

/// Marks every dispatch a previous process left in flight as interrupted.
/// Reads only the `inflight/` index, never the history. Returns how many.
pub fn recover_interrupted(db: &Database) -> Result<usize> {
    let mut recovered = 0;
    let entries: Vec<(String, Vec<u8>)> =
        db.scan_unjudged(INFLIGHT, None).collect::<Result<_>>()?;
    for (inflight, record_key) in entries {
        let record_key = String::from_utf8_lossy(&record_key).into_owned();
        let mut ctx = PolicyContext::new().for_operation(OperationKind::Recover);
        let mut tx = db.owner_transaction();
        if let Some(bytes) = db.get_unjudged(&record_key).ok().flatten() {
            match serde_json::from_slice::<DispatchRecord>(&bytes) {
                Ok(mut record) if record.status == DispatchStatus::InFlight => {
                    if let Some(agent) = &record.agent_id {
                        ctx.insert(keys::AGENT_ID, agent.as_str());
                    }
                    record.status = DispatchStatus::Interrupted;
                    record.error = Some("the process stopped while the call was in flight".into());
                    record.finished_at_ms = Some(now_ms());
                    if let Some(last) = record.attempts.last_mut() {
                        if last.outcome == AttemptOutcome::InFlight {
                            last.outcome = AttemptOutcome::Interrupted;
                        }
                    }
                    let value = serde_json::to_vec(&record).map_err(Error::storage)?;
                    tx.put_with(&record_key, &value, &ctx)?;
                    recovered += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %record_key, error = %e, "in-flight record does not decode")
                }
            }
        }
        tx.delete_with(&inflight, &ctx)?;
        if let Err(e) = tx.commit() {
            tracing::warn!(key = %record_key, error = %e, "could not mark an interrupted dispatch");
        }
    }
    Ok(recovered)
}
