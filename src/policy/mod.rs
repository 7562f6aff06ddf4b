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

pub mod glob;
pub mod rego;

use crate::error::{Error, Result};
use glob::Glob;
use parking_lot::RwLock;
use rego::RegoModule;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

/// What a hook decides about one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Let the write through unchanged.
    Allow,
    /// Refuse the write (and with it the whole transaction) with a reason.
    Deny(String),
    /// Let the write through with this value instead (before-hooks on puts only).
    Modify(Vec<u8>),
}

/// Who is writing and why: string pairs the caller attaches to a write, handed
/// to every hook (and to Rego as `input.context`). The dispatcher sets
/// `agent_id`, `tool`, `category`, `session_id`, `invocation_id` and `strategy`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyContext {
    // A handful of entries: a vector beats a map on both lookup and build cost.
    entries: Vec<(String, String)>,
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
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
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
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }
}

/// The operation a hook is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Delete,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
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
    /// `None`: both puts and deletes (Rego modules).
    op: Option<Op>,
    check: Check,
}

impl Hook {
    fn applies(&self, phase: Phase, op: Op, key: &str) -> bool {
        self.phase == phase && self.op.is_none_or(|o| o == op) && self.scope.matches(key)
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

    /// Runs the before-hooks for one staged write. Returns the value to store
    /// (rewritten by `Modify`), or `PolicyDenied` with the first refusal.
    pub(crate) fn check_before(
        &self,
        op: Op,
        key: &str,
        value: Option<Vec<u8>>,
        ctx: &PolicyContext,
        max_value_bytes: usize,
    ) -> Result<Option<Vec<u8>>> {
        let hooks = self.snapshot();
        let mut value = value;
        for hook in hooks.iter().filter(|h| h.applies(Phase::Before, op, key)) {
            let current = value.as_deref().unwrap_or(&[]);
            match hook.decide(op, key, current, ctx) {
                PolicyAction::Allow => {}
                PolicyAction::Deny(reason) => {
                    return Err(Error::PolicyDenied {
                        key: key.to_string(),
                        reason,
                    })
                }
                PolicyAction::Modify(new_value) => {
                    if op == Op::Delete {
                        return Err(Error::PolicyDenied {
                            key: key.to_string(),
                            reason: format!(
                                "{} returned Modify for a delete; denying (fail closed)",
                                hook.describe()
                            ),
                        });
                    }
                    crate::storage::validate_value(&new_value, max_value_bytes).map_err(|e| {
                        Error::PolicyDenied {
                            key: key.to_string(),
                            reason: format!("{} produced an invalid value: {e}", hook.describe()),
                        }
                    })?;
                    value = Some(new_value);
                }
            }
        }
        Ok(value)
    }

    /// Runs the after-hooks for one committed write. They cannot undo it: a
    /// Deny or Modify is logged, and a panic is caught and logged.
    pub(crate) fn notify_after(&self, op: Op, key: &str, value: &[u8], ctx: &PolicyContext) {
        let hooks = self.snapshot();
        for hook in hooks.iter().filter(|h| h.applies(Phase::After, op, key)) {
            match hook.decide(op, key, value, ctx) {
                PolicyAction::Allow => {}
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
    }

    /// Whether any after-hook could apply: lets writers skip collecting
    /// committed values when nobody will look at them.
    pub(crate) fn has_after_hooks(&self) -> bool {
        self.hooks.read().iter().any(|h| h.phase == Phase::After)
    }

    fn rego_modules(&self) -> Vec<(String, String)> {
        self.snapshot()
            .iter()
            .filter_map(|h| match &h.check {
                Check::Rego(m) => Some((m.name().to_string(), h.scope.to_string())),
                Check::Closure(_) => None,
            })
            .collect()
    }
}

impl Hook {
    fn share(&self) -> Hook {
        Hook {
            scope: self.scope.clone(),
            phase: self.phase,
            op: self.op,
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
            op: Some(op),
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

    /// Compiles a Rego module and evaluates it before every put and delete whose
    /// key matches `scope`. The module's name is its package. A module that does
    /// not compile, or defines neither `deny` nor `allow`, is refused and the
    /// chain is unchanged.
    pub fn add_rego(&self, scope: &str, source: &str) -> Result<()> {
        let scope = Glob::new(scope)?;
        let module = RegoModule::compile(None, source)?;
        self.push_rego(vec![scope], module);
        Ok(())
    }

    /// Loads every `*.rego` file of `dir` (not `*_test.rego`) in file-name
    /// order. Each must declare its scope in a leading comment,
    /// `# scope: tools/shell/**` (several lines for several scopes). All files
    /// are compiled before any is added: one bad file refuses the whole
    /// directory and the chain is unchanged. Returns the loaded module names.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let loaded = rego::load_dir(dir.as_ref())?;
        let names = loaded.iter().map(|(_, m)| m.name().to_string()).collect();
        for (scopes, module) in loaded {
            self.push_rego(scopes, module);
        }
        Ok(names)
    }

    fn push_rego(&self, scopes: Vec<Glob>, module: RegoModule) {
        let module = Arc::new(module);
        for scope in scopes {
            self.chain.push(Hook {
                scope,
                phase: Phase::Before,
                op: None,
                check: Check::Rego(module.clone()),
            });
        }
    }

    /// `(module name, scope)` for each loaded Rego module scope, in chain order.
    pub fn rego_modules(&self) -> Vec<(String, String)> {
        self.chain.rego_modules()
    }
}
