//! The policy chain: every write to the store passes through it.
//!
//! A database owns exactly one [`PolicyChain`]; [`PolicyEngine`] is a handle on
//! it. The chain holds hooks in registration order, each scoped by a [`Glob`]:
//! closures (`before_write`, `after_write`, `before_delete`, `after_delete`) and
//! Rego modules (`add_rego`). Before-hooks run on the staged value before the
//! commit and may allow, deny or rewrite it; the first Deny stops the chain and
//! nothing is written. After-hooks see a write that has committed; they cannot
//! undo it, and a Deny from one is logged. Hooks that panic, and Rego modules
//! that fail to evaluate, deny (fail closed).

pub mod decisions;
pub mod glob;
mod limits;
pub mod rego;

use crate::error::{Error, Result};
use decisions::{Decision, DecisionKind, DecisionLogRetention};
use glob::Glob;
use limits::RateLimiter;
pub use limits::{RateLimitOp, RateLimitScope};
use parking_lot::RwLock;
pub use rego::RegoEvaluator;
use rego::RegoModule;
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a hook decides about one write or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Let it through unchanged.
    Allow,
    /// Refuse the write (and with it the whole transaction) or the read, with a reason.
    Deny(String),
    /// Let it through with this value instead: a before-write hook rewrites
    /// what is stored, an after-read hook what the reader gets (the stored
    /// value stays as it is).
    Modify(Vec<u8>),
    /// Let it through unchanged, and record the decision (with this note) in
    /// the decision log.
    Log(String),
}

/// Who is writing and why: string pairs the caller attaches to a write, handed
/// to every hook (and to Rego as `input.context`). The dispatcher sets
/// `agent_id`, `tool`, `category`, `session_id`, `invocation_id` and `strategy`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyContext {
    // A handful of entries: a vector beats a map on both lookup and build cost.
    // Shared, because every staged write of a transaction keeps its context
    // and a clone should not copy every string; keys are usually literals.
    entries: Arc<Vec<(Cow<'static, str>, String)>>,
}

impl PolicyContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.set(Cow::Owned(key.into()), value.into());
    }

    /// An empty context with room for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Self {
        PolicyContext {
            entries: Arc::new(Vec::with_capacity(n)),
        }
    }

    /// [`insert`](Self::insert) for a literal key, which is not copied.
    pub(crate) fn insert_static(&mut self, key: &'static str, value: impl Into<String>) {
        self.set(Cow::Borrowed(key), value.into());
    }

    fn set(&mut self, key: Cow<'static, str>, value: String) {
        let entries = Arc::make_mut(&mut self.entries);
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
    }

    /// The value for `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }
}

/// The operation a hook is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Delete,
    /// A read through `get` or `scan`.
    Get,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Get => "get",
        }
    }
}

/// Before the commit (can refuse or rewrite) or after it (observes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Before,
    After,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::After => "after",
        }
    }
}

/// The closure shape every hook takes: key, value (empty for deletes), context.
pub type HookFn = dyn Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync;

enum Check {
    Closure(Arc<HookFn>),
    Rego(Arc<RegoModule>),
}

struct Hook {
    scope: Glob,
    phase: Phase,
    /// The operations it judges: one for a closure; for a Rego module, puts
    /// and deletes, plus gets if it opted into reads.
    ops: Vec<Op>,
    check: Check,
}

impl Hook {
    fn applies(&self, phase: Phase, op: Op, key: &str) -> bool {
        self.phase == phase && self.ops.contains(&op) && self.scope.matches(key)
    }

    fn describe(&self) -> String {
        let kind = match &self.check {
            Check::Closure(_) => "hook".to_string(),
            Check::Rego(module) => format!("rego module {}", module.name()),
        };
        format!("{} {kind} on {}", self.phase.as_str(), self.scope)
    }

    fn decide(&self, op: Op, key: &str, value: &[u8], ctx: &PolicyContext) -> PolicyAction {
        match &self.check {
            Check::Closure(f) => match catch_unwind(AssertUnwindSafe(|| f(key, value, ctx))) {
                Ok(action) => action,
                Err(panic) => PolicyAction::Deny(format!(
                    "{} panicked ({}); denying (fail closed)",
                    self.describe(),
                    panic_message(&panic)
                )),
            },
            Check::Rego(module) => module.decide(op, self.phase, key, value, ctx),
        }
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// A database's hooks. Cheap to read on every write: readers clone an `Arc`
/// of the current list; adding a hook swaps in a new list.
#[derive(Default)]
pub struct PolicyChain {
    hooks: RwLock<Arc<Vec<Hook>>>,
    rate_limiter: RateLimiter,
    retention: RwLock<DecisionLogRetention>,
    rego_evaluator: RwLock<RegoEvaluator>,
}

impl Decision {
    fn rate_limited(op: Op, key: &str, error: &Error, ctx: &PolicyContext) -> Decision {
        Decision::new(
            op,
            Phase::Before,
            key,
            "rate limit".into(),
            DecisionKind::Deny,
            &error.to_string(),
            ctx,
        )
    }
}

impl PolicyChain {
    fn push(&self, hook: Hook) {
        let mut hooks = self.hooks.write();
        let mut next: Vec<Hook> = Vec::with_capacity(hooks.len() + 1);
        next.extend(hooks.iter().map(Hook::share));
        next.push(hook);
        *hooks = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Vec<Hook>> {
        self.hooks.read().clone()
    }

    /// Runs the before-hooks and rate limits for one staged write. Returns
    /// the value to store (rewritten by `Modify`) or the first refusal, and
    /// the decisions to record either way.
    pub(crate) fn check_before(
        &self,
        op: Op,
        key: &str,
        value: Option<Vec<u8>>,
        ctx: &PolicyContext,
        max_value_bytes: usize,
    ) -> (Result<Option<Vec<u8>>>, Vec<Decision>) {
        let hooks = self.snapshot();
        let mut decisions = Vec::new();
        let mut value = value;
        for hook in hooks.iter().filter(|h| h.applies(Phase::Before, op, key)) {
            let current = value.as_deref().unwrap_or(&[]);
            let action = hook.decide(op, key, current, ctx);
            let refusal = |reason: String, decisions: &mut Vec<Decision>| {
                decisions.push(Decision::new(
                    op,
                    Phase::Before,
                    key,
                    hook.describe(),
                    DecisionKind::Deny,
                    &reason,
                    ctx,
                ));
                Err(Error::PolicyDenied {
                    key: key.to_string(),
                    reason,
                })
            };
            match action {
                PolicyAction::Allow => {}
                PolicyAction::Log(note) => {
                    decisions.push(Decision::new(
                        op,
                        Phase::Before,
                        key,
                        hook.describe(),
                        DecisionKind::Log,
                        &note,
                        ctx,
                    ));
                }
                PolicyAction::Deny(reason) => return (refusal(reason, &mut decisions), decisions),
                PolicyAction::Modify(new_value) => {
                    if op == Op::Delete {
                        let reason = format!(
                            "{} returned Modify for a delete; denying (fail closed)",
                            hook.describe()
                        );
                        return (refusal(reason, &mut decisions), decisions);
                    }
                    if let Err(e) = crate::storage::validate_value(&new_value, max_value_bytes) {
                        let reason = format!("{} produced an invalid value: {e}", hook.describe());
                        return (refusal(reason, &mut decisions), decisions);
                    }
                    decisions.push(Decision::new(
                        op,
                        Phase::Before,
                        key,
                        hook.describe(),
                        DecisionKind::Modify,
                        "value rewritten before storing",
                        ctx,
                    ));
                    value = Some(new_value);
                }
            }
        }
        let limited = self.rate_limiter.acquire(op, key, ctx);
        if let Err(e) = &limited {
            decisions.push(Decision::rate_limited(op, key, e, ctx));
        }
        (limited.map(|()| value), decisions)
    }

    /// Before a read: the before-read hooks. A Deny refuses the read.
    pub(crate) fn check_read(&self, key: &str, ctx: &PolicyContext) -> (Result<()>, Vec<Decision>) {
        let hooks = self.snapshot();
        let mut decisions = Vec::new();
        for hook in hooks
            .iter()
            .filter(|h| h.applies(Phase::Before, Op::Get, key))
        {
            match hook.decide(Op::Get, key, &[], ctx) {
                PolicyAction::Allow => {}
                PolicyAction::Log(note) => {
                    decisions.push(Decision::new(
                        Op::Get,
                        Phase::Before,
                        key,
                        hook.describe(),
                        DecisionKind::Log,
                        &note,
                        ctx,
                    ));
                }
                refusal => {
                    let reason = match refusal {
                        PolicyAction::Deny(reason) => reason,
                        _ => format!(
                            "{} returned Modify before a read (redact in an after_read hook); denying (fail closed)",
                            hook.describe()
                        ),
                    };
                    decisions.push(Decision::new(
                        Op::Get,
                        Phase::Before,
                        key,
                        hook.describe(),
                        DecisionKind::Deny,
                        &reason,
                        ctx,
                    ));
                    return (
                        Err(Error::PolicyDenied {
                            key: key.to_string(),
                            reason,
                        }),
                        decisions,
                    );
                }
            }
        }
        (Ok(()), decisions)
    }

    /// Counts one read (a `get`, or a whole `scan`) against the read rate limits.
    pub(crate) fn limit_read(
        &self,
        key: &str,
        ctx: &PolicyContext,
    ) -> (Result<()>, Option<Decision>) {
        match self.rate_limiter.acquire(Op::Get, key, ctx) {
            Ok(()) => (Ok(()), None),
            Err(e) => {
                let decision = Decision::rate_limited(Op::Get, key, &e, ctx);
                (Err(e), Some(decision))
            }
        }
    }

    /// After a read, before the value is returned: after-read hooks and Rego
    /// modules that opted into reads. `Modify` redacts what the reader gets;
    /// a Deny hides the value.
    pub(crate) fn filter_read(
        &self,
        key: &str,
        value: Vec<u8>,
        ctx: &PolicyContext,
    ) -> (Result<Vec<u8>>, Vec<Decision>) {
        let hooks = self.snapshot();
        let mut decisions = Vec::new();
        let mut value = value;
        for hook in hooks
            .iter()
            .filter(|h| h.applies(Phase::After, Op::Get, key))
        {
            match hook.decide(Op::Get, key, &value, ctx) {
                PolicyAction::Allow => {}
                PolicyAction::Log(note) => {
                    decisions.push(Decision::new(
                        Op::Get,
                        Phase::After,
                        key,
                        hook.describe(),
                        DecisionKind::Log,
                        &note,
                        ctx,
                    ));
                }
                PolicyAction::Modify(redacted) => {
                    decisions.push(Decision::new(
                        Op::Get,
                        Phase::After,
                        key,
                        hook.describe(),
                        DecisionKind::Modify,
                        "value redacted for this reader",
                        ctx,
                    ));
                    value = redacted;
                }
                PolicyAction::Deny(reason) => {
                    decisions.push(Decision::new(
                        Op::Get,
                        Phase::After,
                        key,
                        hook.describe(),
                        DecisionKind::Deny,
                        &reason,
                        ctx,
                    ));
                    return (
                        Err(Error::PolicyDenied {
                            key: key.to_string(),
                            reason,
                        }),
                        decisions,
                    );
                }
            }
        }
        (Ok(value), decisions)
    }

    /// Runs the after-hooks for one committed write. They cannot undo it: a
    /// Deny or Modify is logged, and a panic is caught and logged. Returns
    /// the decisions to record.
    pub(crate) fn notify_after(
        &self,
        op: Op,
        key: &str,
        value: &[u8],
        ctx: &PolicyContext,
    ) -> Vec<Decision> {
        let hooks = self.snapshot();
        let mut decisions = Vec::new();
        for hook in hooks.iter().filter(|h| h.applies(Phase::After, op, key)) {
            match hook.decide(op, key, value, ctx) {
                PolicyAction::Allow => {}
                PolicyAction::Log(note) => {
                    decisions.push(Decision::new(
                        op,
                        Phase::After,
                        key,
                        hook.describe(),
                        DecisionKind::Log,
                        &note,
                        ctx,
                    ));
                }
                PolicyAction::Deny(reason) => tracing::warn!(
                    key,
                    hook = %hook.describe(),
                    %reason,
                    "after-hook objected to a committed write (after-hooks cannot undo writes)"
                ),
                PolicyAction::Modify(_) => tracing::warn!(
                    key,
                    hook = %hook.describe(),
                    "after-hook returned Modify; ignored (the write has already committed)"
                ),
            }
        }
        decisions
    }

    /// Whether any after-hook could apply: lets writers skip collecting
    /// committed values when nobody will look at them.
    pub(crate) fn has_after_hooks(&self) -> bool {
        self.hooks
            .read()
            .iter()
            .any(|h| h.phase == Phase::After && h.ops != [Op::Get])
    }

    /// Whether reads need the chain at all (read hooks or read rate limits).
    pub(crate) fn judges_reads(&self) -> bool {
        self.hooks.read().iter().any(|h| h.ops.contains(&Op::Get))
            || self.rate_limiter.limits_reads()
    }

    pub(crate) fn retention(&self) -> DecisionLogRetention {
        *self.retention.read()
    }

    fn rego_modules(&self) -> Vec<(String, String)> {
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

impl Hook {
    fn share(&self) -> Hook {
        Hook {
            scope: self.scope.clone(),
            phase: self.phase,
            ops: self.ops.clone(),
            check: match &self.check {
                Check::Closure(f) => Check::Closure(f.clone()),
                Check::Rego(m) => Check::Rego(m.clone()),
            },
        }
    }
}

/// A handle on one database's hook chain. Every handle made from the same
/// database (or its clones) adds to the same chain.
#[derive(Clone)]
pub struct PolicyEngine {
    chain: Arc<PolicyChain>,
}

impl PolicyEngine {
    /// The hook chain of `db`.
    pub fn new(db: &crate::Database) -> Self {
        PolicyEngine {
            chain: db.policy_chain().clone(),
        }
    }

    fn add_closure<F>(&self, scope: &str, phase: Phase, op: Op, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.chain.push(Hook {
            scope: Glob::new(scope)?,
            phase,
            ops: vec![op],
            check: Check::Closure(Arc::new(f)),
        });
        Ok(())
    }

    /// Runs `f` before every put whose key matches `scope`; it may allow, deny
    /// or rewrite the value. Fails only if `scope` is not a valid glob.
    pub fn before_write<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::Before, Op::Put, f)
    }

    /// Runs `f` after every committed put whose key matches `scope`.
    pub fn after_write<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::After, Op::Put, f)
    }

    /// Runs `f` before every delete whose key matches `scope` (value is empty).
    pub fn before_delete<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::Before, Op::Delete, f)
    }

    /// Runs `f` after every committed delete whose key matches `scope`.
    pub fn after_delete<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::After, Op::Delete, f)
    }

    /// Runs `f` before every `get` (and every key of a `scan`) whose key
    /// matches `scope`, with an empty value. A Deny refuses the read (a scan
    /// skips the key).
    pub fn before_read<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::Before, Op::Get, f)
    }

    /// Runs `f` on every value read from a key matching `scope`, before the
    /// reader gets it: `Modify` hands the reader a redacted value (the stored
    /// value is unchanged), a Deny hides the value (a scan skips the key).
    pub fn after_read<F>(&self, scope: &str, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.add_closure(scope, Phase::After, Op::Get, f)
    }

    /// Compiles a Rego module and evaluates it before every put and delete whose
    /// key matches `scope`. The module's name is its package. A module that does
    /// not compile, or defines neither `deny` nor `allow`, is refused and the
    /// chain is unchanged.
    pub fn add_rego(&self, scope: &str, source: &str) -> Result<()> {
        self.add_rego_for(scope, source, &[Op::Put, Op::Delete])
    }

    /// Like [`add_rego`](Self::add_rego), for the given operations. With
    /// [`Op::Get`] the module also judges reads: it sees `op: "get"`, `phase:
    /// "after"` and the stored value, and a Deny hides the value.
    pub fn add_rego_for(&self, scope: &str, source: &str, ops: &[Op]) -> Result<()> {
        let scope = Glob::new(scope)?;
        if ops.is_empty() {
            return Err(Error::invalid(
                "a Rego module must judge at least one operation",
            ));
        }
        let module = RegoModule::compile(None, source, *self.chain.rego_evaluator.read())?;
        self.push_rego(vec![scope], ops, module);
        Ok(())
    }

    /// Loads every `*.rego` file of `dir` (not `*_test.rego`) in file-name
    /// order. Each must declare its scope in a leading comment,
    /// `# scope: tools/shell/**` (several lines for several scopes), and may
    /// declare the operations it judges, `# ops: put, delete, get` (default:
    /// put, delete). All files are compiled before any is added: one bad file
    /// refuses the whole directory and the chain is unchanged. Returns the
    /// loaded module names.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let loaded = rego::load_dir(dir.as_ref(), *self.chain.rego_evaluator.read())?;
        let names = loaded.iter().map(|l| l.module.name().to_string()).collect();
        for l in loaded {
            self.push_rego(l.scopes, &l.ops, l.module);
        }
        Ok(names)
    }

    fn push_rego(&self, scopes: Vec<Glob>, ops: &[Op], module: RegoModule) {
        let module = Arc::new(module);
        let writes: Vec<Op> = ops.iter().copied().filter(|op| *op != Op::Get).collect();
        for scope in scopes {
            if !writes.is_empty() {
                self.chain.push(Hook {
                    scope: scope.clone(),
                    phase: Phase::Before,
                    ops: writes.clone(),
                    check: Check::Rego(module.clone()),
                });
            }
            if ops.contains(&Op::Get) {
                self.chain.push(Hook {
                    scope,
                    phase: Phase::After,
                    ops: vec![Op::Get],
                    check: Check::Rego(module.clone()),
                });
            }
        }
    }

    /// Allows at most `max_per_minute` operations of kind `op` per minute,
    /// counted globally or per agent, session or tool of the policy context.
    /// Checked before the write, read or dispatch; over the limit, it fails with
    /// [`Error::RateLimited`](crate::Error::RateLimited) saying which limit and
    /// when it frees up (a dispatch tries the next agent).
    pub fn add_rate_limit(
        &self,
        op: RateLimitOp,
        max_per_minute: u32,
        scope: RateLimitScope,
    ) -> Result<()> {
        self.add_rate_limit_per(op, max_per_minute, Duration::from_secs(60), scope)
    }

    /// Like [`add_rate_limit`](Self::add_rate_limit) with a window other than a minute.
    pub fn add_rate_limit_per(
        &self,
        op: RateLimitOp,
        max: u32,
        window: Duration,
        scope: RateLimitScope,
    ) -> Result<()> {
        self.chain.rate_limiter.add(op, max, window, scope)
    }

    /// Chooses the evaluator for Rego modules added from now on (modules
    /// already loaded keep theirs). See [`RegoEvaluator`] for the trade-off.
    pub fn set_rego_evaluator(&self, evaluator: RegoEvaluator) {
        *self.chain.rego_evaluator.write() = evaluator;
    }

    /// Sets how much of the decision log (`policy_log/`) to keep; applied as
    /// new decisions are written.
    pub fn set_decision_log_retention(&self, retention: DecisionLogRetention) {
        *self.chain.retention.write() = retention;
    }

    /// `(module name, scope)` for each loaded Rego module scope, in chain order.
    pub fn rego_modules(&self) -> Vec<(String, String)> {
        self.chain.rego_modules()
    }
}
