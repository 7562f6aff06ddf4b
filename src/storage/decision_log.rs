//! The decision log's persistence: appending decisions under `policy_log/`
//! and pruning it to the retention the policy chain holds.
//!
//! Pruning starts from a cursor (the last key it removed), never from the
//! start of the prefix, and removes a run of old entries with one range
//! delete: a log that is pruned on every append would otherwise re-walk the
//! tombstones of everything pruned before, which is quadratic.

use super::{raw_prefix_iter, Database};
use crate::error::{Error, Result};
use crate::policy::Decision;
use rocksdb::WriteBatch;
use std::sync::atomic::Ordering;

/// Where the decision log lives; written only by the policy chain itself.
pub const DECISION_LOG: &str = "policy_log/";

/// Each decision as a new, time-ordered `policy_log/` key and its JSON.
pub(super) fn decision_entries(decisions: Vec<Decision>) -> Result<Vec<(String, Vec<u8>)>> {
    decisions
        .into_iter()
        .map(|decision| {
            let key = format!("{DECISION_LOG}{}", crate::namespace::new_invocation_id());
            let value = serde_json::to_vec(&decision).map_err(Error::storage)?;
            Ok((key, value))
        })
        .collect()
}

impl Database {
    /// Appends decisions to the decision log in their own write (for
    /// denials and reads, which have no write of their own to join), then
    /// prunes. A failure is logged: it must not turn an allowed read into an error.
    pub(crate) fn record_decisions(&self, decisions: Vec<Decision>) {
        if decisions.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        let staged = decisions.len() as u64;
        let result = decision_entries(decisions).and_then(|entries| {
            for (key, value) in entries {
                batch.put(key.as_bytes(), value);
            }
            Ok(self
                .inner
                .rocks
                .write_opt(batch, &self.inner.write_options)?)
        });
        match result {
            Ok(()) => self.decisions_added(staged),
            Err(e) => tracing::warn!(error = %e, "could not write to the decision log"),
        }
    }

    /// Counts `added` new entries and prunes what retention no longer keeps.
    pub(super) fn decisions_added(&self, added: u64) {
        let entries = &self.inner.decision_entries;
        entries.fetch_add(added, Ordering::AcqRel);
        let retention = self.inner.chain.retention();
        let over = entries.load(Ordering::Acquire) > retention.max_entries;
        if !over && retention.max_age.is_none() {
            return;
        }
        // One pruner at a time, so counts stay exact; the cursor is its state.
        let mut cursor = self.inner.prune_cursor.lock();
        let cutoff_ms = retention
            .max_age
            .map(|age| crate::namespace::now_ms().saturating_sub(age.as_millis() as u64));
        let mut iter = raw_prefix_iter(&self.inner.rocks, DECISION_LOG);
        if let Some(after) = cursor.as_ref() {
            let mut start = after.clone();
            start.push(0);
            iter.seek(&start);
        }
        let mut first: Option<Vec<u8>> = None;
        let mut last: Option<Vec<u8>> = None;
        let mut pruned = 0u64;
        while let Some(key) = iter.key() {
            let count = entries.load(Ordering::Acquire) - pruned;
            let too_many = count > retention.max_entries;
            let too_old = cutoff_ms.is_some_and(|cutoff| {
                std::str::from_utf8(&key[DECISION_LOG.len()..])
                    .ok()
                    .and_then(crate::namespace::invocation_id_time_ms)
                    .is_some_and(|at| at < cutoff)
            });
            if !too_many && !too_old {
                break;
            }
            if first.is_none() {
                first = Some(key.to_vec());
            }
            last = Some(key.to_vec());
            pruned += 1;
            iter.next();
        }
        drop(iter);
        let (Some(first), Some(last)) = (first, last) else {
            return;
        };
        let mut end = last.clone();
        end.push(0);
        let mut batch = WriteBatch::default();
        batch.delete_range(first, end);
        if let Err(e) = self.inner.rocks.write_opt(batch, &self.inner.write_options) {
            tracing::warn!(error = %e, "could not prune the decision log");
            return;
        }
        *cursor = Some(last);
        entries.fetch_sub(pruned, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DecisionLogRetention, PolicyEngine};
    use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};

    fn decision() -> Decision {
        serde_json::from_value(serde_json::json!({
            "at_ms": 1, "op": "put", "phase": "before", "key": "a/b",
            "decision": "deny", "by": "test", "reason": "test", "context": {}
        }))
        .unwrap()
    }

    /// A log pruned on every append: the next prune steps over none of the
    /// thousands of entries pruned before it (RocksDB's own counters).
    #[test]
    fn each_prune_starts_where_the_last_one_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        PolicyEngine::new(&db).set_decision_log_retention(DecisionLogRetention {
            max_entries: 10,
            max_age: None,
        });
        for _ in 0..3_000 {
            db.record_decisions(vec![decision()]);
        }
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        db.record_decisions(vec![decision()]);
        let stepped_over = perf.metric(PerfMetric::InternalDeleteSkippedCount)
            + perf.metric(PerfMetric::InternalKeySkippedCount);
        set_perf_stats(PerfStatsLevel::Disable);
        assert_eq!(db.scan_unjudged(DECISION_LOG, None).count(), 10);
        assert!(
            stepped_over < 100,
            "one prune stepped over {stepped_over} deleted entries"
        );
    }
}
