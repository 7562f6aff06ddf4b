//! [`PolicyEngine`]: the public handle on one database's hook chain, through
//! which hooks, Rego modules, rate limits and retention are configured.

use super::chain::{Check, Hook, PolicyChain};
use super::decisions::DecisionLogRetention;
use super::glob::Glob;
use super::limits::{Clock, RateLimitOp, RateLimitScope};
use super::rego::{self, RegoEvaluator, RegoModule};
use super::{Op, Phase, PolicyAction, PolicyContext};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Keeps [`ChainOwner`] implemented only inside the crate (by storage).
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// What owns a hook chain: a [`Database`](crate::Database). Sealed: the
/// storage layer implements it, so the policy layer need not know storage.
pub trait ChainOwner: sealed::Sealed {
    /// The one chain every write of this owner passes through.
    #[doc(hidden)]
    fn policy_chain(&self) -> &Arc<PolicyChain>;
}

/// A handle on one database's hook chain. Every handle made from the same
/// database (or its clones) adds to the same chain.
#[derive(Clone)]
pub struct PolicyEngine {
    chain: Arc<PolicyChain>,
    /// Whether closures added through this handle may block.
    hooks_may_block: bool,
}

impl PolicyEngine {
    /// The hook chain of `db` (a [`Database`](crate::Database)).
    pub fn new<D: ChainOwner + ?Sized>(db: &D) -> Self {
        PolicyEngine {
            chain: db.policy_chain().clone(),
            hooks_may_block: false,
        }
    }

    /// The same chain, through a handle whose closure hooks are taken to
    /// block: to wait on a lock, on I/O, or on another language's runtime
    /// (a Python hook waits for the GIL). A commit such a hook judges is
    /// run off the async runtime's worker threads, as one a Rego module
    /// judges is. Closures added through [`new`](Self::new)'s handle run
    /// on the committing thread, which in async code is a runtime worker:
    /// they must only compute.
    pub fn with_blocking_hooks(mut self) -> Self {
        self.hooks_may_block = true;
        self
    }

    fn add_closure<F>(&self, scope: &str, phase: Phase, op: Op, f: F) -> Result<()>
    where
        F: Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static,
    {
        self.chain.push(Hook {
            stored: None,
            scope: Glob::new(scope)?,
            phase,
            ops: vec![op],
            check: Check::Closure {
                f: Arc::new(f),
                may_block: self.hooks_may_block,
            },
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
        for hook in rego_hooks(scopes, ops, module, None) {
            self.chain.push(hook);
        }
    }

    /// Compiles a stored policy's module with the one parser every entry
    /// point uses (`scopes` overrides its `# scope:` header), without adding
    /// it: the policy store checks a module before storing it.
    pub(crate) fn parse_stored(
        &self,
        name: &str,
        source: &str,
        scopes: Option<&[String]>,
    ) -> Result<rego::LoadedModule> {
        rego::parse_module(name, source, scopes, *self.chain.rego_evaluator.read())
    }

    /// Installs (or, with `None`, removes) stored policy `name`'s hooks,
    /// replacing its previous version in place.
    pub(crate) fn install_stored(&self, name: &str, module: Option<rego::LoadedModule>) {
        let hooks = module.map_or_else(Vec::new, |m| {
            rego_hooks(m.scopes, &m.ops, m.module, Some(Arc::from(name)))
        });
        self.chain.replace_stored(name, hooks);
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

    /// Shares every rate limit among `nodes` nodes (cluster mode: the live
    /// nodes): each limit then allows `max / nodes` here, never below 1.
    /// 1 (the default) is a node alone.
    pub fn set_rate_limit_nodes(&self, nodes: u32) {
        self.chain.rate_limiter.set_nodes(nodes);
    }

    /// How many nodes the rate limits are shared by (1 outside cluster mode).
    pub fn rate_limit_nodes(&self) -> u32 {
        self.chain.rate_limiter.nodes()
    }

    /// Makes the rate limits read the time from `clock` (e.g. a
    /// [`ManualClock`](crate::policy::ManualClock) in tests, to cross window
    /// edges without sleeping). The wall clock by default.
    pub fn set_rate_limit_clock(&self, clock: Arc<dyn Clock>) {
        self.chain.rate_limiter.set_clock(clock);
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

    /// `(module name, scope)` for each loaded Rego module scope, in chain order
    /// (stored policies included).
    pub fn rego_modules(&self) -> Vec<(String, String)> {
        self.chain.rego_modules()
    }
}

/// The hooks of one Rego module: before puts/deletes per scope, and after
/// reads when it opted into them.
fn rego_hooks(
    scopes: Vec<Glob>,
    ops: &[Op],
    module: RegoModule,
    stored: Option<Arc<str>>,
) -> Vec<Hook> {
    let module = Arc::new(module);
    let writes: Vec<Op> = ops.iter().copied().filter(|op| *op != Op::Get).collect();
    let mut hooks = Vec::new();
    for scope in scopes {
        if !writes.is_empty() {
            hooks.push(Hook {
                scope: scope.clone(),
                phase: Phase::Before,
                ops: writes.clone(),
                check: Check::Rego(module.clone()),
                stored: stored.clone(),
            });
        }
        if ops.contains(&Op::Get) {
            hooks.push(Hook {
                scope,
                phase: Phase::After,
                ops: vec![Op::Get],
                check: Check::Rego(module.clone()),
                stored: stored.clone(),
            });
        }
    }
    hooks
}
