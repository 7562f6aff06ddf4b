//! Rate limits: at most N operations per window, counted globally or per
//! agent, session or tool (read from the policy context).
//!
//! Fixed windows aligned to the epoch of an injectable [`Clock`]. Counting is
//! two-phase: a transaction [`reserve`](RateLimiter::reserve)s every count it
//! needs, all or nothing, under one lock (so counts are exact under
//! concurrent callers), and the counts stay spent only if the reservation is
//! committed; a transaction refused later gives them back.
//!
//! Memory is bounded without sweeping: each limit keeps counts for its
//! current window only (a new window swaps in an empty map, and the old one
//! is freed outside the lock), and at most [`MAX_TRACKED_PER_WINDOW`]
//! distinct scope values per window; past that, new values are refused with
//! a clear error until the window ends (a limiter fails closed).
//!
//! In cluster mode every limit is shared by the live nodes: each node
//! enforces `max / nodes` (never below 1), the node count being set by the
//! cluster as nodes come and go ([`RateLimiter::set_nodes`]).

use super::context::keys;
use super::{Op, OperationKind, PolicyContext};
use crate::error::{Error, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a rate limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitOp {
    /// Every put (dispatch records, registrations, bindings, generic writes).
    Put,
    /// Every delete.
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
            RateLimitScope::PerAgent => Some(keys::AGENT_ID),
            RateLimitScope::PerSession => Some(keys::SESSION_ID),
            RateLimitScope::PerTool => Some(keys::TOOL),
        }
    }
}

/// Where rate limits read the time. [`SystemClock`] in production; tests use
/// a [`ManualClock`] to cross window edges without sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since an epoch windows are aligned to.
    fn now_ms(&self) -> u64;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::namespace::now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn at(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Distinct scope values (sessions, agents, tools) one limit counts per
/// window; new ones past this are refused until the window ends.
pub const MAX_TRACKED_PER_WINDOW: usize = 100_000;

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
                    && ctx.operation() == Some(OperationKind::Dispatch)
            }
        }
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// This node's share of the limit when `nodes` share it: `max / nodes`,
    /// never below 1.
    fn share(&self, nodes: u32) -> u32 {
        (self.max / nodes.max(1)).max(1)
    }

    fn describe(&self, who: &str, nodes: u32) -> String {
        let op = format!("{:?}", self.op).to_lowercase();
        let per = match self.scope.context_key() {
            None => "in all".to_string(),
            Some(k) => format!("for {k} {who}"),
        };
        let shared = if nodes > 1 {
            format!(
                " on this node (its share of {} shared by {nodes} live nodes)",
                self.max
            )
        } else {
            String::new()
        };
        format!(
            "at most {} {op} per {:?} {per}{shared}",
            self.share(nodes),
            self.window
        )
    }
}

/// One limit's counts in its current window.
#[derive(Default)]
struct Counts {
    window: u64,
    by_scope: HashMap<String, u32>,
}

/// The limits of one database and their counters.
pub(crate) struct RateLimiter {
    limits: RwLock<Arc<Vec<Limit>>>,
    /// Per limit (same index), the counts of its current window.
    counts: Mutex<Vec<Counts>>,
    clock: RwLock<Arc<dyn Clock>>,
    /// How many nodes share every limit (1 outside cluster mode).
    nodes: AtomicU32,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            limits: RwLock::default(),
            counts: Mutex::default(),
            clock: RwLock::new(Arc::new(SystemClock)),
            nodes: AtomicU32::new(1),
        }
    }
}

/// Counts taken by [`RateLimiter::reserve`]: spent if committed, given back
/// if dropped.
#[must_use = "dropping a reservation gives its counts back"]
pub(crate) struct Reservation<'a> {
    limiter: &'a RateLimiter,
    /// (limit index, scope value, window, count).
    taken: Vec<(usize, String, u64, u32)>,
}

impl Reservation<'_> {
    /// Keeps the counts spent.
    pub(crate) fn commit(mut self) {
        self.taken.clear();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let mut counts = self.limiter.counts.lock();
        for (i, who, window, n) in self.taken.drain(..) {
            let Some(limit) = counts.get_mut(i) else {
                continue;
            };
            // A window that has ended took its counts with it.
            if limit.window == window {
                if let Some(used) = limit.by_scope.get_mut(&who) {
                    *used = used.saturating_sub(n);
                }
            }
        }
    }
}

/// A refused reservation: the error, and the operation it was refused at.
pub(crate) type Refusal = Box<(Error, Op, String, PolicyContext)>;

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
        self.counts.lock().push(Counts::default());
        *limits = Arc::new(next);
        Ok(())
    }

    /// Shares every limit among `nodes` nodes from now on (at least 1).
    pub(crate) fn set_nodes(&self, nodes: u32) {
        self.nodes.store(nodes.max(1), Ordering::Relaxed);
    }

    /// How many nodes share every limit.
    pub(crate) fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Reads the time from `clock` from now on.
    pub(crate) fn set_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write() = clock;
    }

    pub(crate) fn limits_reads(&self) -> bool {
        self.limits.read().iter().any(|l| l.op == RateLimitOp::Get)
    }

    /// Counts every operation of `ops` against every limit that applies, or
    /// refuses them all (counting nothing) at the first one a limit would not
    /// allow.
    pub(crate) fn reserve<'a>(
        &self,
        ops: impl IntoIterator<Item = (Op, &'a str, &'a PolicyContext)>,
    ) -> std::result::Result<Reservation<'_>, Refusal> {
        let mut reservation = Reservation {
            limiter: self,
            taken: Vec::new(),
        };
        let limits = self.limits.read().clone();
        if limits.is_empty() {
            return Ok(reservation);
        }
        let now = self.clock.read().now_ms();
        let nodes = self.nodes();
        let mut stale = Vec::new();
        let mut counts = self.counts.lock();
        for (op, key, ctx) in ops {
            for (i, limit) in limits.iter().enumerate() {
                if !limit.counts(op, key, ctx) {
                    continue;
                }
                let who = match limit.scope.context_key() {
                    None => "",
                    Some(k) => match ctx.get(k) {
                        Some(who) => who,
                        None => continue,
                    },
                };
                let window_ms = limit.window_ms();
                let window = now / window_ms;
                let state = &mut counts[i];
                if state.window != window {
                    // A new window: the old counts go, freed after the lock.
                    stale.push(std::mem::take(&mut state.by_scope));
                    state.window = window;
                }
                let retry_after = Duration::from_millis((window + 1) * window_ms - now);
                let refuse = |limit: String| {
                    Box::new((
                        Error::RateLimited { limit, retry_after },
                        op,
                        key.to_string(),
                        ctx.clone(),
                    ))
                };
                let used = state.by_scope.get(who).copied();
                if used.is_none() && state.by_scope.len() >= MAX_TRACKED_PER_WINDOW {
                    drop(counts);
                    return Err(refuse(format!(
                        "{} (already counting {MAX_TRACKED_PER_WINDOW} distinct values in this window, the most it tracks)",
                        limit.describe(who, nodes)
                    )));
                }
                if used.unwrap_or(0) >= limit.share(nodes) {
                    drop(counts);
                    return Err(refuse(limit.describe(who, nodes)));
                }
                *state.by_scope.entry(who.to_string()).or_insert(0) += 1;
                match reservation
                    .taken
                    .iter_mut()
                    .find(|(j, w, _, _)| *j == i && w == who)
                {
                    Some(taken) => taken.3 += 1,
                    None => reservation.taken.push((i, who.to_string(), window, 1)),
                }
            }
        }
        drop(counts);
        drop(stale);
        Ok(reservation)
    }

    /// Counts one operation now (reads, which have no transaction to wait for).
    #[cfg(test)]
    fn acquire(&self, op: Op, key: &str, ctx: &PolicyContext) -> Result<()> {
        self.reserve([(op, key, ctx)])
            .map(Reservation::commit)
            .map_err(|refusal| refusal.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(
        op: RateLimitOp,
        max: u32,
        scope: RateLimitScope,
    ) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(60_000 * 1000));
        let limiter = RateLimiter::default();
        limiter.set_clock(clock.clone());
        limiter
            .add(op, max, Duration::from_secs(60), scope)
            .unwrap();
        (limiter, clock)
    }

    fn session(id: &str) -> PolicyContext {
        PolicyContext::new().with(keys::SESSION_ID, id)
    }

    #[test]
    fn a_window_edge_frees_the_budget() {
        let (limiter, clock) = limiter(RateLimitOp::Put, 2, RateLimitScope::Global);
        let ctx = PolicyContext::new();
        limiter.acquire(Op::Put, "a", &ctx).unwrap();
        clock.advance(Duration::from_secs(59));
        limiter.acquire(Op::Put, "a", &ctx).unwrap();
        let Err(Error::RateLimited { retry_after, .. }) = limiter.acquire(Op::Put, "a", &ctx)
        else {
            panic!("the third put in a window must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        limiter.acquire(Op::Put, "a", &ctx).unwrap();
    }

    #[test]
    fn a_dropped_reservation_gives_its_counts_back() {
        let (limiter, _clock) = limiter(RateLimitOp::Put, 2, RateLimitScope::Global);
        let ctx = PolicyContext::new();
        let reservation = limiter
            .reserve([(Op::Put, "a", &ctx), (Op::Put, "b", &ctx)])
            .unwrap();
        assert!(
            limiter.acquire(Op::Put, "c", &ctx).is_err(),
            "reserved counts are in use"
        );
        drop(reservation);
        limiter.acquire(Op::Put, "c", &ctx).unwrap();
        limiter.acquire(Op::Put, "d", &ctx).unwrap();
        assert!(limiter.acquire(Op::Put, "e", &ctx).is_err());
    }

    #[test]
    fn a_transaction_over_the_limit_counts_nothing() {
        let (limiter, _clock) = limiter(RateLimitOp::Put, 2, RateLimitScope::Global);
        let ctx = PolicyContext::new();
        let ops = [
            (Op::Put, "a", &ctx),
            (Op::Put, "b", &ctx),
            (Op::Put, "c", &ctx),
        ];
        let Err(refusal) = limiter.reserve(ops) else {
            panic!("three puts cannot fit in a budget of two");
        };
        assert!(matches!(refusal.0, Error::RateLimited { .. }));
        assert_eq!((refusal.1, refusal.2.as_str()), (Op::Put, "c"));
        limiter.acquire(Op::Put, "a", &ctx).unwrap();
        limiter.acquire(Op::Put, "b", &ctx).unwrap();
    }

    #[test]
    fn distinct_scope_values_are_bounded_per_window() {
        let (limiter, clock) = limiter(RateLimitOp::Put, 5, RateLimitScope::PerSession);
        for i in 0..MAX_TRACKED_PER_WINDOW {
            limiter
                .acquire(Op::Put, "k", &session(&i.to_string()))
                .unwrap();
        }
        let Err(Error::RateLimited { limit, .. }) =
            limiter.acquire(Op::Put, "k", &session("one-more"))
        else {
            panic!("a value past the cap must be refused");
        };
        assert!(limit.contains("distinct values"), "{limit}");
        limiter.acquire(Op::Put, "k", &session("0")).unwrap();
        clock.advance(Duration::from_secs(60));
        limiter.acquire(Op::Put, "k", &session("one-more")).unwrap();
        assert_eq!(
            limiter.counts.lock()[0].by_scope.len(),
            1,
            "the old window was dropped"
        );
    }

    #[test]
    fn each_node_enforces_its_share_of_a_limit_as_nodes_come_and_go() {
        let limiter_of = limiter;
        let (limiter, _clock) = limiter_of(RateLimitOp::Put, 7, RateLimitScope::Global);
        let ctx = PolicyContext::new();
        let allowed = |limiter: &RateLimiter| {
            let mut n = 0;
            while limiter.acquire(Op::Put, "k", &ctx).is_ok() {
                n += 1;
                assert!(n <= 7, "never more than the whole limit");
            }
            n
        };
        limiter.set_nodes(3);
        assert_eq!(allowed(&limiter), 2, "7 / 3 nodes");
        let Err(Error::RateLimited { limit, .. }) = limiter.acquire(Op::Put, "k", &ctx) else {
            panic!("over this node's share");
        };
        assert!(limit.contains("shared by 3 live nodes"), "{limit}");
        // A node leaves: the two left share the limit, 3 each.
        limiter.set_nodes(2);
        assert_eq!(allowed(&limiter), 1, "3 of the window, 2 used");
        // More nodes than the limit: still 1 each, never 0.
        let (fresh, _clock) = limiter_of(RateLimitOp::Put, 7, RateLimitScope::Global);
        fresh.set_nodes(20);
        assert_eq!(allowed(&fresh), 1);
        fresh.set_nodes(0);
        assert_eq!(fresh.nodes(), 1);
        assert_eq!(allowed(&fresh), 6, "alone again: the whole limit");
    }

    #[test]
    fn dispatch_limits_count_only_typed_dispatches() {
        let (limiter, _clock) = limiter(RateLimitOp::Dispatch, 1, RateLimitScope::Global);
        let forged = PolicyContext::new().with(keys::ACTION, "dispatch");
        limiter.acquire(Op::Put, "tools/c/t/1", &forged).unwrap();
        limiter.acquire(Op::Put, "tools/c/t/2", &forged).unwrap();
        let real = PolicyContext::new().for_operation(OperationKind::Dispatch);
        limiter.acquire(Op::Put, "tools/c/t/3", &real).unwrap();
        assert!(limiter.acquire(Op::Put, "tools/c/t/4", &real).is_err());
    }
}
