//! The hook chain of one database, and the one runner every phase uses.
//!
//! A hook is a closure or a Rego module scoped by a [`Glob`] to a phase and
//! some operations. [`PolicyChain::run`] runs the hooks that apply to one
//! operation in one phase, in registration order, and applies the table of
//! [`rules`]: what `Modify` and `Deny` mean depends only on (phase, op).

use super::decisions::{Decision, DecisionKind, DecisionLogRetention, Recorder};
use super::glob::Glob;
use super::limits::{RateLimiter, Reservation};
use super::rego::{RegoEvaluator, RegoModule};
use super::{Op, Phase, PolicyAction, PolicyContext};
use crate::error::{panic_message, Error, Result};
use crate::namespace::validate_value;
use parking_lot::RwLock;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The closure shape every hook takes: key, value (empty for deletes), context.
pub type HookFn = dyn Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync;

#[derive(Clone)]
pub(crate) enum Check {
    /// A closure; `may_block` when it can wait (on a lock, I/O, or another
    /// language's runtime) rather than only compute.
    Closure {
        f: Arc<HookFn>,
        may_block: bool,
    },
    Rego(Arc<RegoModule>),
}

impl Check {
    /// Whether deciding can take long enough that it must not run on an
    /// async runtime's worker: a Rego evaluation may use its whole time
    /// limit; a closure only when it said so.
    fn may_block(&self) -> bool {
        match self {
            Check::Closure { may_block, .. } => *may_block,
            Check::Rego(_) => true,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Hook {
    pub(crate) scope: Glob,
    pub(crate) phase: Phase,
    /// The operations it judges: one for a closure; for a Rego module, puts
    /// and deletes, plus gets if it opted into reads.
    pub(crate) ops: Vec<Op>,
    pub(crate) check: Check,
    /// The stored policy it came from (`policies/{name}`), if any: replacing
    /// or deleting that policy replaces or removes exactly these hooks.
    pub(crate) stored: Option<Arc<str>>,
}

impl Hook {
    fn applies(&self, phase: Phase, op: Op, key: &str) -> bool {
        self.phase == phase && self.ops.contains(&op) && self.scope.matches(key)
    }

    fn describe(&self) -> String {
        let kind = match &self.check {
            Check::Closure { .. } => "hook".to_string(),
            Check::Rego(module) => format!("rego module {}", module.name()),
        };
        format!("{} {kind} on {}", self.phase.as_str(), self.scope)
    }

    /// The span of one evaluation of this hook, a child of `parent` (the
    /// traced commit); its decision is recorded once made.
    fn span(&self, parent: &tracing::Span, phase: Phase, op: Op) -> tracing::Span {
        let (kind, module) = match &self.check {
            Check::Closure { .. } => ("closure", None),
            Check::Rego(module) => ("rego", Some(module.name())),
        };
        tracing::info_span!(
            target: super::SPAN_TARGET,
            parent: parent,
            "policy",
            otel.name = format!("policy {}", module.unwrap_or(self.scope.as_str())),
            otel.kind = "internal",
            switchboard.policy.hook = kind,
            switchboard.policy.module = module,
            switchboard.policy.scope = self.scope.as_str(),
            switchboard.policy.phase = phase.as_str(),
            switchboard.policy.operation = op.as_str(),
            switchboard.policy.decision = tracing::field::Empty,
        )
    }

    /// The hook's action; a panic (in a closure or in the Rego engine)
    /// denies: the chain fails closed.
    fn decide(&self, op: Op, key: &str, value: &[u8], ctx: &PolicyContext) -> PolicyAction {
        let decided = catch_unwind(AssertUnwindSafe(|| match &self.check {
            Check::Closure { f, .. } => f(key, value, ctx),
            Check::Rego(module) => module.decide(op, self.phase, key, value, ctx),
        }));
        decided.unwrap_or_else(|panic| {
            PolicyAction::Deny(format!(
                "{} panicked ({}); denying (fail closed)",
                self.describe(),
                panic_message(&panic)
            ))
        })
    }
}

/// What a `Modify` means in one (phase, op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnModify {
    /// The value is replaced, and the decision recorded with this note;
    /// `validate`: the new value must be a storable value, or the write is denied.
    Replace { note: &'static str, validate: bool },
    /// Nonsense here: denies, saying why.
    Refuse(&'static str),
    /// Too late to matter (the write committed): logged and ignored.
    Ignore,
}

/// What a `Deny` means in one (phase, op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnDeny {
    /// Refuses the operation and is recorded.
    Refuse,
    /// The write committed already: logged, cannot undo it.
    Warn,
}

/// The table: what `Modify` and `Deny` mean per (phase, op).
pub(crate) fn rules(phase: Phase, op: Op) -> (OnModify, OnDeny) {
    match (phase, op) {
        (Phase::Before, Op::Put) => (
            OnModify::Replace {
                note: "value rewritten before storing",
                validate: true,
            },
            OnDeny::Refuse,
        ),
        (Phase::Before, Op::Delete) => (OnModify::Refuse("for a delete"), OnDeny::Refuse),
        (Phase::Before, Op::Get) => (
            OnModify::Refuse("before a read (redact in an after_read hook)"),
            OnDeny::Refuse,
        ),
        (Phase::After, Op::Get) => (
            OnModify::Replace {
                note: "value redacted for this reader",
                validate: false,
            },
            OnDeny::Refuse,
        ),
        (Phase::After, Op::Put | Op::Delete) => (OnModify::Ignore, OnDeny::Warn),
    }
}

/// What the chain concluded about one operation in one phase.
pub(crate) struct Verdict {
    /// The value after any rewrite (`None` for deletes and before-reads), or
    /// the refusal.
    pub(crate) value: Result<Option<Vec<u8>>>,
    /// The decisions to record, whatever the outcome.
    pub(crate) decisions: Vec<Decision>,
}

/// A database's hooks. Cheap to read on every write: readers clone an `Arc`
/// of the current list; adding a hook swaps in a new list.
#[derive(Default)]
pub struct PolicyChain {
    hooks: RwLock<Arc<Vec<Hook>>>,
    pub(crate) rate_limiter: RateLimiter,
    pub(crate) retention: RwLock<DecisionLogRetention>,
    pub(crate) rego_evaluator: RwLock<RegoEvaluator>,
    max_value_bytes: std::sync::atomic::AtomicUsize,
}

impl PolicyChain {
    /// A chain whose rewrites must fit in `max_value_bytes`.
    pub(crate) fn new(max_value_bytes: usize) -> Self {
        let chain = PolicyChain::default();
        chain
            .max_value_bytes
            .store(max_value_bytes, std::sync::atomic::Ordering::Relaxed);
        chain
    }

    pub(crate) fn push(&self, hook: Hook) {
        let mut hooks = self.hooks.write();
        let mut next: Vec<Hook> = Vec::with_capacity(hooks.len() + 1);
        next.extend(hooks.iter().cloned());
        next.push(hook);
        *hooks = Arc::new(next);
    }

    /// Swaps the hooks of stored policy `name` for `hooks` in one step (no
    /// write sees neither or both): at the place of the old ones, or at the
    /// end for a new policy. Empty `hooks` removes the policy.
    pub(crate) fn replace_stored(&self, name: &str, hooks: Vec<Hook>) {
        let mut current = self.hooks.write();
        let is_it = |h: &Hook| h.stored.as_deref() == Some(name);
        let at = current.iter().position(is_it);
        let mut next: Vec<Hook> = current.iter().filter(|h| !is_it(h)).cloned().collect();
        let at = at.unwrap_or(next.len()).min(next.len());
        next.splice(at..at, hooks);
        *current = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Vec<Hook>> {
        self.hooks.read().clone()
    }

    /// Runs every hook that applies to `op` on `key` in `phase`, in
    /// registration order, on `value` (`None` for deletes and before-reads).
    /// The first refusal stops the chain.
    pub(crate) fn run(
        &self,
        phase: Phase,
        op: Op,
        key: &str,
        value: Option<Vec<u8>>,
        ctx: &PolicyContext,
    ) -> Verdict {
        let (on_modify, on_deny) = rules(phase, op);
        let mut recorder = Recorder::new(op, phase, key, ctx);
        let mut value = value;
        let hooks = self.snapshot();
        for hook in hooks.iter().filter(|h| h.applies(phase, op, key)) {
            // Made only on a write whose call is traced and recorded: the
            // span's life is the evaluation's duration.
            let span = ctx
                .trace_parent()
                .map(|parent| hook.span(parent, phase, op));
            let action = hook.decide(op, key, value.as_deref().unwrap_or(&[]), ctx);
            if let Some(span) = span {
                span.record("switchboard.policy.decision", action.kind());
            }
            let refusal = match action {
                PolicyAction::Allow => continue,
                PolicyAction::Log(note) => {
                    recorder.record(hook.describe(), DecisionKind::Log, &note);
                    continue;
                }
                PolicyAction::Deny(reason) => match on_deny {
                    OnDeny::Refuse => reason,
                    OnDeny::Warn => {
                        tracing::warn!(
                            key,
                            hook = %hook.describe(),
                            %reason,
                            "after-hook objected to a committed write (after-hooks cannot undo writes)"
                        );
                        continue;
                    }
                },
                PolicyAction::Modify(new_value) => match on_modify {
                    OnModify::Refuse(when) => format!(
                        "{} returned Modify {when}; denying (fail closed)",
                        hook.describe()
                    ),
                    OnModify::Ignore => {
                        tracing::warn!(
                            key,
                            hook = %hook.describe(),
                            "after-hook returned Modify; ignored (the write has already committed)"
                        );
                        continue;
                    }
                    OnModify::Replace { note, validate } => {
                        let invalid = validate
                            .then(|| validate_value(&new_value, self.max_value_bytes()).err())
                            .flatten();
                        match invalid {
                            Some(e) => {
                                format!("{} produced an invalid value: {e}", hook.describe())
                            }
                            None => {
                                recorder.record(hook.describe(), DecisionKind::Modify, note);
                                value = Some(new_value);
                                continue;
                            }
                        }
                    }
                },
            };
            recorder.record(hook.describe(), DecisionKind::Deny, &refusal);
            return Verdict {
                value: Err(Error::PolicyDenied {
                    key: key.to_string(),
                    reason: refusal,
                }),
                decisions: recorder.decisions,
            };
        }
        Verdict {
            value: Ok(value),
            decisions: recorder.decisions,
        }
    }

    fn max_value_bytes(&self) -> usize {
        match self
            .max_value_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => usize::MAX,
            max => max,
        }
    }

    /// Counts `ops` against the rate limits, all or nothing: the counts hold
    /// only if the returned reservation is committed (dropping it gives them
    /// back). A refusal comes with its decision.
    pub(crate) fn reserve<'a>(
        &self,
        ops: impl IntoIterator<Item = (Op, &'a str, &'a PolicyContext)>,
    ) -> std::result::Result<Reservation<'_>, Box<(Error, Decision)>> {
        self.rate_limiter.reserve(ops).map_err(|refusal| {
            let (e, op, key, ctx) = *refusal;
            let mut recorder = Recorder::new(op, Phase::Before, &key, &ctx);
            recorder.record("rate limit".into(), DecisionKind::Deny, &e.to_string());
            let decision = recorder.decisions.pop().expect("just recorded");
            Box::new((e, decision))
        })
    }

    /// Whether any after-hook could apply: lets writers skip collecting
    /// committed values when nobody will look at them.
    pub(crate) fn has_after_hooks(&self) -> bool {
        self.hooks
            .read()
            .iter()
            .any(|h| h.phase == Phase::After && h.ops != [Op::Get])
    }

    /// Whether a hook that may block (see `Check::may_block`) judges a
    /// write to any of `keys`, which are only computed if such a hook
    /// exists: such a commit must run off an async worker.
    pub(crate) fn may_block_on<K: AsRef<str>>(&self, keys: impl FnOnce() -> Vec<K>) -> bool {
        let hooks = self.snapshot();
        let mut blocking = hooks
            .iter()
            .filter(|h| h.check.may_block() && h.ops != [Op::Get])
            .peekable();
        if blocking.peek().is_none() {
            return false;
        }
        let keys = keys();
        blocking.any(|h| keys.iter().any(|k| h.scope.matches(k.as_ref())))
    }

    /// Whether reads need the chain at all (read hooks or read rate limits).
    pub(crate) fn judges_reads(&self) -> bool {
        self.hooks.read().iter().any(|h| h.ops.contains(&Op::Get))
            || self.rate_limiter.limits_reads()
    }

    pub(crate) fn retention(&self) -> DecisionLogRetention {
        *self.retention.read()
    }

    pub(crate) fn rego_modules(&self) -> Vec<(String, String)> {
        let mut modules: Vec<(String, String)> = Vec::new();
        for hook in self.snapshot().iter() {
            if let Check::Rego(m) = &hook.check {
                let entry = (m.name().to_string(), hook.scope.to_string());
                if !modules.contains(&entry) {
                    modules.push(entry);
                }
            }
        }
        modules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_with(
        phase: Phase,
        op: Op,
        f: fn(&str, &[u8], &PolicyContext) -> PolicyAction,
    ) -> PolicyChain {
        let chain = PolicyChain::new(16);
        chain.push(Hook {
            stored: None,
            scope: Glob::new("a/**").unwrap(),
            phase,
            ops: vec![op],
            check: Check::Closure {
                f: Arc::new(f),
                may_block: false,
            },
        });
        chain
    }

    fn run(chain: &PolicyChain, phase: Phase, op: Op, value: Option<&str>) -> Verdict {
        let value = value.map(|v| v.as_bytes().to_vec());
        chain.run(phase, op, "a/b", value, &PolicyContext::new())
    }

    #[test]
    fn modify_rewrites_before_a_put_and_redacts_after_a_read() {
        for (phase, op, note) in [
            (Phase::Before, Op::Put, "value rewritten before storing"),
            (Phase::After, Op::Get, "value redacted for this reader"),
        ] {
            let chain = chain_with(phase, op, |_, _, _| PolicyAction::Modify(b"new".to_vec()));
            let verdict = run(&chain, phase, op, Some("old"));
            assert_eq!(verdict.value.unwrap(), Some(b"new".to_vec()));
            assert_eq!(verdict.decisions.len(), 1);
            assert_eq!(verdict.decisions[0].decision, DecisionKind::Modify);
            assert_eq!(verdict.decisions[0].reason, note);
        }
    }

    #[test]
    fn modify_denies_where_it_means_nothing() {
        for (phase, op) in [(Phase::Before, Op::Delete), (Phase::Before, Op::Get)] {
            let chain = chain_with(phase, op, |_, _, _| PolicyAction::Modify(b"x".to_vec()));
            let verdict = run(&chain, phase, op, None);
            assert!(matches!(verdict.value, Err(Error::PolicyDenied { .. })));
            assert_eq!(verdict.decisions[0].decision, DecisionKind::Deny);
        }
    }

    #[test]
    fn an_invalid_rewrite_denies() {
        let chain = chain_with(Phase::Before, Op::Put, |_, _, _| {
            PolicyAction::Modify(vec![b'x'; 17])
        });
        let verdict = run(&chain, Phase::Before, Op::Put, Some("v"));
        let Err(Error::PolicyDenied { reason, .. }) = verdict.value else {
            panic!("an oversized rewrite must deny");
        };
        assert!(reason.contains("invalid value"), "{reason}");
    }

    #[test]
    fn after_a_write_deny_and_modify_only_warn() {
        for action in [
            |_: &str, _: &[u8], _: &PolicyContext| PolicyAction::Deny("no".into()),
            |_: &str, _: &[u8], _: &PolicyContext| PolicyAction::Modify(b"x".to_vec()),
        ] {
            let chain = chain_with(Phase::After, Op::Put, action);
            let verdict = run(&chain, Phase::After, Op::Put, Some("v"));
            assert_eq!(verdict.value.unwrap(), Some(b"v".to_vec()));
            assert!(verdict.decisions.is_empty());
        }
    }

    #[test]
    fn log_allows_and_records_and_a_panic_denies() {
        let chain = chain_with(Phase::Before, Op::Put, |_, _, _| {
            PolicyAction::Log("n".into())
        });
        let verdict = run(&chain, Phase::Before, Op::Put, Some("v"));
        assert!(verdict.value.is_ok());
        assert_eq!(verdict.decisions[0].decision, DecisionKind::Log);

        let chain = chain_with(Phase::Before, Op::Put, |_, _, _| panic!("boom"));
        let verdict = run(&chain, Phase::Before, Op::Put, Some("v"));
        let Err(Error::PolicyDenied { reason, .. }) = verdict.value else {
            panic!("a panicking hook must deny");
        };
        assert!(
            reason.contains("boom") && reason.contains("fail closed"),
            "{reason}"
        );
    }

    #[test]
    fn hooks_outside_their_scope_phase_or_op_do_not_run() {
        let chain = chain_with(Phase::Before, Op::Put, |_, _, _| {
            PolicyAction::Deny("no".into())
        });
        assert!(run(&chain, Phase::Before, Op::Delete, None).value.is_ok());
        assert!(run(&chain, Phase::After, Op::Put, Some("v")).value.is_ok());
        let other = chain.run(
            Phase::Before,
            Op::Put,
            "b/c",
            Some(vec![]),
            &PolicyContext::new(),
        );
        assert!(other.value.is_ok());
    }
}
