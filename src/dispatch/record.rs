//! The dispatch record of one call and its writes: the intent (record,
//! in-flight index entry and any session binding, policy-checked with the
//! candidate in the context) before an agent is called, and the outcome
//! (record and removal of the in-flight entry) after.

use crate::error::{Error, Result};
use crate::namespace::{
    dispatch_key, inflight_key, now_ms, session_key, Attempt, AttemptOutcome, DispatchRecord,
    DispatchStatus, SessionRecord,
};
use crate::policy::PolicyContext;
use crate::storage::{Database, Transaction};
use std::time::Duration;

/// One call's record, as it will be (or was last) stored.
pub(super) struct Record {
    pub(super) key: String,
    pub(super) value: DispatchRecord,
    /// Whether some version of the record has committed (and so must be finished).
    pub(super) written: bool,
    /// Whether its outcome has been written (or given up on).
    pub(super) finished: bool,
}

/// How a call ended, as its record keeps it.
#[derive(Clone, Debug)]
pub(super) struct Outcome {
    pub(super) status: DispatchStatus,
    pub(super) error: Option<String>,
    /// From the call's start to its end.
    pub(super) elapsed: Duration,
}

impl Record {
    pub(super) fn new(value: DispatchRecord) -> Self {
        Record {
            key: dispatch_key(&value.category, &value.tool, &value.invocation_id),
            value,
            written: false,
            finished: false,
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        // A record is a few hundred bytes: one allocation instead of growing.
        let mut bytes = Vec::with_capacity(512);
        serde_json::to_writer(&mut bytes, &self.value).map_err(Error::storage)?;
        Ok(bytes)
    }

    /// Starts an attempt at `agent_id`: it becomes the record's agent.
    pub(super) fn begin_attempt(&mut self, agent_id: &str) {
        self.value.agent_id = Some(agent_id.to_string());
        self.value.attempts.push(Attempt {
            agent_id: agent_id.to_string(),
            outcome: AttemptOutcome::InFlight,
            latency_ms: 0.0,
            error: None,
        });
    }

    /// Forgets the current attempt, begun but never written.
    pub(super) fn drop_attempt(&mut self) {
        if self
            .value
            .attempts
            .last()
            .is_some_and(|a| a.outcome == AttemptOutcome::InFlight)
        {
            self.value.attempts.pop();
        }
        self.value.agent_id = self.value.attempts.last().map(|a| a.agent_id.clone());
    }

    /// Ends the current attempt.
    pub(super) fn end_attempt(
        &mut self,
        outcome: AttemptOutcome,
        latency: Duration,
        error: Option<String>,
    ) {
        if let Some(attempt) = self.value.attempts.last_mut() {
            attempt.outcome = outcome;
            attempt.latency_ms = latency.as_secs_f64() * 1000.0;
            attempt.error = error;
        }
    }

    /// Commits the record before an agent is called, with the in-flight
    /// entry (first time only) and the session binding, if one must be
    /// written. Returns whether a before-hook rewrote the stored arguments.
    pub(super) async fn write_intent(
        &mut self,
        db: &Database,
        ctx: &PolicyContext,
        binding: Option<(&str, &SessionRecord)>,
    ) -> Result<bool> {
        let mut tx = db.owner_transaction();
        tx.put_with(&self.key, &self.bytes()?, ctx)?;
        if !self.written {
            tx.put_with(
                &inflight_key(&self.value.invocation_id),
                self.key.as_bytes(),
                ctx,
            )?;
        }
        if let Some((session_id, binding)) = binding {
            let value = serde_json::to_vec(binding).map_err(Error::storage)?;
            tx.put_with(&session_key(session_id), &value, ctx)?;
        }
        // Once queued, the intent lands even if the call is dropped while it
        // waits; the call's drop then writes its outcome behind it.
        let first = !self.written;
        self.written = true;
        let rewrites = match tx.commit_reporting_rewrites_queued().await {
            Ok(rewrites) => rewrites,
            Err(e) => {
                self.written = !first;
                return Err(e);
            }
        };
        // A before-write hook that masked the stored arguments (`Modify`)
        // must not be undone by the record's later writes.
        if let Some((_, stored)) = rewrites.iter().find(|(key, _)| *key == self.key) {
            if let Ok(stored) = serde_json::from_slice::<DispatchRecord>(stored) {
                self.value.input = stored.input;
                self.value.input_truncated = stored.input_truncated;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the outcome and clears the in-flight entry, in one transaction.
    /// Does nothing for a call that never wrote its record. The outcome is
    /// bookkeeping: before-hooks and rate limits do not apply to it (after-hooks
    /// observe it), so a policy cannot leave a record in flight.
    pub(super) async fn write_outcome(
        &mut self,
        db: &Database,
        ctx: &PolicyContext,
        outcome: Outcome,
    ) -> Result<()> {
        let Some(tx) = self.outcome(db, ctx, outcome)? else {
            return Ok(());
        };
        // Once queued, the outcome lands even if the call is dropped while
        // it waits, and the drop must not write another.
        self.finished = true;
        let written = tx.commit_bookkeeping_queued().await;
        self.finished = written.is_ok();
        written
    }

    /// [`write_outcome`](Self::write_outcome) from a dropped call: it lands
    /// after the call's intent, which may still be queued.
    pub(super) fn write_outcome_on_drop(
        &mut self,
        db: &Database,
        ctx: &PolicyContext,
        outcome: Outcome,
    ) -> Result<()> {
        let Some(tx) = self.outcome(db, ctx, outcome)? else {
            return Ok(());
        };
        tx.commit_bookkeeping_behind_queue()?;
        self.finished = true;
        Ok(())
    }

    /// The outcome's transaction, or `None` if there is none to write.
    fn outcome(
        &mut self,
        db: &Database,
        ctx: &PolicyContext,
        outcome: Outcome,
    ) -> Result<Option<Transaction>> {
        if !self.written || self.finished {
            return Ok(None);
        }
        self.value.status = outcome.status;
        self.value.error = outcome.error;
        self.value.finished_at_ms = Some(now_ms());
        self.value.latency_ms = Some(outcome.elapsed.as_secs_f64() * 1000.0);
        let bytes = self.bytes()?;
        let mut tx = db.owner_transaction();
        tx.put_with(&self.key, &bytes, ctx)?;
        tx.delete_with(&inflight_key(&self.value.invocation_id), ctx)?;
        Ok(Some(tx))
    }
}
