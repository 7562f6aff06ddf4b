//! Rate limits: at most N operations per window, counted globally or per
//! agent, session or tool (read from the policy context). Fixed windows
//! aligned to the epoch; every limit that applies is checked and counted
//! under one lock, so counts are exact under concurrent callers.

use super::{Op, PolicyContext};
use crate::error::{Error, Result};
use crate::namespace::now_ms;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a rate limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitOp {
    /// Every put (dispatch records, registrations, bindings, generic writes).
    Put,
    Delete,
    /// Every `get`, and every `scan` (one per scan).
    Get,
    /// Dispatches: the record written before each agent is called.
    Dispatch,
}

/// Who shares one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitScope {
    /// Everyone.
    Global,
    /// Each `agent_id` of the policy context (operations without one are not counted).
    PerAgent,
    /// Each `session_id`.
    PerSession,
    /// Each `tool`.
    PerTool,
}

impl RateLimitScope {
    fn context_key(self) -> Option<&'static str> {
        match self {
            RateLimitScope::Global => None,
            RateLimitScope::PerAgent => Some("agent_id"),
            RateLimitScope::PerSession => Some("session_id"),
            RateLimitScope::PerTool => Some("tool"),
        }
    }
}

#[derive(Clone, Debug)]
struct Limit {
    op: RateLimitOp,
    max: u32,
    window: Duration,
    scope: RateLimitScope,
}

impl Limit {
    fn counts(&self, op: Op, key: &str, ctx: &PolicyContext) -> bool {
        match self.op {
            RateLimitOp::Put => op == Op::Put,
            RateLimitOp::Delete => op == Op::Delete,
            RateLimitOp::Get => op == Op::Get,
            RateLimitOp::Dispatch => {
                op == Op::Put
                    && key.starts_with(crate::namespace::TOOLS)
                    && ctx.get("action") == Some("dispatch")
            }
        }
    }

    fn describe(&self, who: &str) -> String {
        let op = format!("{:?}", self.op).to_lowercase();
        let per = match self.scope.context_key() {
            None => "in all".to_string(),
            Some(k) => format!("for {k} {who}"),
        };
        format!("at most {} {op} per {:?} {per}", self.max, self.window)
    }
}

/// The limits of one database and their counters.
#[derive(Default)]
pub(crate) struct RateLimiter {
    limits: RwLock<Arc<Vec<Limit>>>,
    /// (limit index, scope value) → (window number, count in it).
    counters: Mutex<HashMap<(usize, String), (u64, u32)>>,
}

/// Past this many counters, the ones of past windows are dropped.
const COUNTER_SWEEP: usize = 10_000;

impl RateLimiter {
    pub(crate) fn add(
        &self,
        op: RateLimitOp,
        max: u32,
        window: Duration,
        scope: RateLimitScope,
    ) -> Result<()> {
        if max == 0 {
            return Err(Error::invalid(
                "a rate limit must allow at least 1 operation",
            ));
        }
        if window.as_millis() == 0 {
            return Err(Error::invalid("a rate limit window must be at least 1 ms"));
        }
        let mut limits = self.limits.write();
        let mut next = (**limits).clone();
        next.push(Limit {
            op,
            max,
            window,
            scope,
        });
        *limits = Arc::new(next);
        Ok(())
    }

    pub(crate) fn limits_reads(&self) -> bool {
        self.limits.read().iter().any(|l| l.op == RateLimitOp::Get)
    }

    /// Counts one operation against every limit that applies, or refuses it
    /// (counting nothing) with the first limit it would exceed.
    pub(crate) fn acquire(&self, op: Op, key: &str, ctx: &PolicyContext) -> Result<()> {
        let limits = self.limits.read().clone();
        if limits.is_empty() {
            return Ok(());
        }
        let applicable: Vec<(usize, &Limit, String)> = limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.counts(op, key, ctx))
            .filter_map(|(i, l)| match l.scope.context_key() {
                None => Some((i, l, String::new())),
                Some(k) => ctx.get(k).map(|who| (i, l, who.to_string())),
            })
            .collect();
        if applicable.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut counters = self.counters.lock();
        for (i, limit, who) in &applicable {
            let window_ms = limit.window.as_millis() as u64;
            let window = now / window_ms;
            let used = match counters.get(&(*i, who.clone())) {
                Some(&(w, count)) if w == window => count,
                _ => 0,
            };
            if used >= limit.max {
                return Err(Error::RateLimited {
                    limit: limit.describe(who),
                    retry_after: Duration::from_millis((window + 1) * window_ms - now),
                });
            }
        }
        if counters.len() > COUNTER_SWEEP {
            counters.retain(|(i, _), (w, _)| {
                limits
                    .get(*i)
                    .is_some_and(|l| *w == now / l.window.as_millis() as u64)
            });
        }
        for (i, limit, who) in applicable {
            let window = now / limit.window.as_millis() as u64;
            let entry = counters.entry((i, who)).or_insert((window, 0));
            if entry.0 != window {
                *entry = (window, 0);
            }
            entry.1 += 1;
        }
        Ok(())
    }
}
