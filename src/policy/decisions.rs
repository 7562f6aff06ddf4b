//! Decisions worth remembering: every Deny, Modify and Log a hook or Rego
//! module (or a rate limit) makes, as stored in the decision log under
//! `policy_log/{id}` (ids sort by time).

use super::{Op, Phase, PolicyContext};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Deny,
    Modify,
    Log,
}

/// One entry of the decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub at_ms: u64,
    /// `put`, `delete` or `get`.
    pub op: String,
    /// `before` or `after`.
    pub phase: String,
    pub key: String,
    pub decision: DecisionKind,
    /// Which hook, Rego module or rate limit decided, and on which scope.
    pub by: String,
    pub reason: String,
    pub context: serde_json::Value,
}

impl Decision {
    pub(crate) fn new(
        op: Op,
        phase: Phase,
        key: &str,
        by: String,
        decision: DecisionKind,
        reason: &str,
        ctx: &PolicyContext,
    ) -> Decision {
        Decision {
            at_ms: crate::namespace::now_ms(),
            op: op.as_str().into(),
            phase: phase.as_str().into(),
            key: key.into(),
            decision,
            by,
            reason: reason.into(),
            context: ctx.to_json(),
        }
    }
}

/// How much of the decision log to keep. Older entries are pruned as new
/// ones are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionLogRetention {
    /// Keep at most this many entries (the newest).
    pub max_entries: u64,
    /// Drop entries older than this, if set.
    pub max_age: Option<Duration>,
}

impl Default for DecisionLogRetention {
    fn default() -> Self {
        DecisionLogRetention {
            max_entries: 100_000,
            max_age: None,
        }
    }
}
