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
    /// A hook, module or rate limit refused the operation.
    Deny,
    /// A hook rewrote the value.
    Modify,
    /// A hook asked for the operation to be logged.
    Log,
}

/// One entry of the decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// When it was decided (ms since the Unix epoch).
    pub at_ms: u64,
    /// `put`, `delete` or `get`.
    pub op: Op,
    /// `before` or `after`.
    pub phase: Phase,
    /// The key concerned.
    pub key: String,
    /// What was decided.
    pub decision: DecisionKind,
    /// Which hook, Rego module or rate limit decided, and on which scope.
    pub by: String,
    /// Why, as the deciding hook or module put it.
    pub reason: String,
    /// The acting [`PolicyContext`](crate::PolicyContext), as JSON.
    pub context: serde_json::Value,
    /// On a dispatch's writes: the call's arguments as its record stores
    /// them (redacted and size-capped), so a refused call's arguments are on
    /// record too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
}

/// Collects the decisions about one operation in one phase: everything but
/// who decided, what and why is fixed once.
pub(crate) struct Recorder<'a> {
    op: Op,
    phase: Phase,
    key: &'a str,
    ctx: &'a PolicyContext,
    pub(crate) decisions: Vec<Decision>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(op: Op, phase: Phase, key: &'a str, ctx: &'a PolicyContext) -> Self {
        Recorder {
            op,
            phase,
            key,
            ctx,
            decisions: Vec::new(),
        }
    }

    /// Records one decision by `by`.
    pub(crate) fn record(&mut self, by: String, kind: DecisionKind, reason: &str) {
        self.decisions.push(Decision {
            at_ms: crate::namespace::now_ms(),
            op: self.op,
            phase: self.phase,
            key: self.key.into(),
            decision: kind,
            by,
            reason: reason.into(),
            context: self.ctx.to_json(),
            input: self.ctx.recorded_input().cloned(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_json_keeps_its_shape() {
        let ctx = PolicyContext::new().with("agent_id", "a");
        let mut recorder = Recorder::new(Op::Get, Phase::After, "tools/x", &ctx);
        recorder.record("hook".into(), DecisionKind::Modify, "why");
        let mut decision = recorder.decisions.pop().unwrap();
        decision.at_ms = 7;
        let json = serde_json::to_string(&decision).unwrap();
        assert_eq!(
            json,
            r#"{"at_ms":7,"op":"get","phase":"after","key":"tools/x","decision":"modify","by":"hook","reason":"why","context":{"agent_id":"a"}}"#
        );
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), decision);
    }
}
