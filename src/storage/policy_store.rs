//! Stored policies: Rego modules kept in the database under `policies/{name}`
//! (source, scopes, ops, a revision), so every process that opens the
//! database runs under the same policies. `Database::open` installs them;
//! each change is itself a write through the policy chain (`action` =
//! `policy`), recorded in the decision log with the policy's name and new
//! revision, and takes effect in this process as soon as it commits.

use super::Database;
use crate::error::{Error, Result};
use crate::namespace::{now_ms, validate_id};
use crate::policy::decisions::Recorder;
use crate::policy::{keys, DecisionKind, Op, OperationKind, Phase, PolicyContext, PolicyEngine};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The prefix of stored policies; only the policy store writes there.
pub const POLICIES: &str = "policies/";

/// One stored policy, the value under `policies/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPolicy {
    /// Its name (the key's last segment).
    pub name: String,
    /// The Rego module's package, e.g. `switchboard.shell_guard`.
    pub package: String,
    /// The Rego source, header comments included.
    pub source: String,
    /// The key globs it guards.
    pub scopes: Vec<String>,
    /// The operations it judges (`put`, `delete`, `get`).
    pub ops: Vec<Op>,
    /// 1 when first stored, +1 on every change of source, scopes or ops.
    pub revision: u64,
    /// When this revision was stored (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// What storing a policy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// It was not stored before.
    Created,
    /// It replaced an earlier revision.
    Replaced,
    /// The same source, scopes and ops were stored already: nothing written.
    Unchanged,
}

fn key(name: &str) -> String {
    format!("{POLICIES}{name}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredPolicy> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("stored policy {key} is not readable: {e}")))
}

impl Database {
    /// Every stored policy, by name.
    pub fn stored_policies(&self) -> Result<Vec<StoredPolicy>> {
        self.scan_unjudged(POLICIES, None)
            .map(|kv| kv.and_then(|(k, v)| decode(&k, &v)))
            .collect()
    }

    /// One stored policy.
    pub fn stored_policy(&self, name: &str) -> Result<Option<StoredPolicy>> {
        validate_id("policy name", name)?;
        let key = key(name);
        self.get_unjudged(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// Stores (or replaces) policy `name`: compiles `source` first (a module
    /// that does not compile, or a bad header, changes nothing), writes it
    /// through the policy chain, then swaps it into this database's chain in
    /// place of its previous revision. `scopes` overrides the source's
    /// `# scope:` lines; the ops come from its `# ops:` line. Storing the
    /// same source, scopes and ops again changes nothing (same revision).
    pub fn put_policy(
        &self,
        name: &str,
        source: &str,
        scopes: Option<&[String]>,
    ) -> Result<(StoredPolicy, PolicyChange)> {
        self.put_policy_with(name, source, scopes, &PolicyContext::new())
    }

    /// [`put_policy`](Self::put_policy) with the caller's policy context.
    pub fn put_policy_with(
        &self,
        name: &str,
        source: &str,
        scopes: Option<&[String]>,
        ctx: &PolicyContext,
    ) -> Result<(StoredPolicy, PolicyChange)> {
        validate_id("policy name", name)?;
        let engine = PolicyEngine::new(self);
        let _one_change_at_a_time = self.inner.policy_changes.lock();
        let parsed = engine.parse_stored(name, source, scopes)?;
        let scopes: Vec<String> = parsed.scopes.iter().map(|g| g.to_string()).collect();
        let previous = self.stored_policy(name)?;
        if let Some(p) = &previous {
            if p.source == source && p.scopes == scopes && p.ops == parsed.ops {
                return Ok((p.clone(), PolicyChange::Unchanged));
            }
        }
        let policy = StoredPolicy {
            name: name.to_string(),
            package: parsed.module.name().to_string(),
            source: source.to_string(),
            scopes,
            ops: parsed.ops.clone(),
            revision: previous.as_ref().map_or(1, |p| p.revision + 1),
            updated_at_ms: now_ms(),
        };
        let ctx = change_context(ctx, name, Some(policy.revision));
        let value = serde_json::to_vec(&policy).map_err(Error::storage)?;
        self.owner_put_with(&key(name), &value, &ctx)?;
        engine.install_stored(name, Some(parsed));
        let change = if previous.is_some() {
            PolicyChange::Replaced
        } else {
            PolicyChange::Created
        };
        let verb = match change {
            PolicyChange::Replaced => "replaced",
            _ => "stored",
        };
        self.log_change(
            name,
            Op::Put,
            &ctx,
            format!(
                "policy {name} {verb}: revision {} (package {}, scope {})",
                policy.revision,
                policy.package,
                policy.scopes.join(", ")
            ),
        );
        Ok((policy, change))
    }

    /// Removes stored policy `name` (through the policy chain) and its hooks.
    /// Returns the removed policy, or `None` if there was none.
    pub fn delete_policy(&self, name: &str) -> Result<Option<StoredPolicy>> {
        self.delete_policy_with(name, &PolicyContext::new())
    }

    /// [`delete_policy`](Self::delete_policy) with the caller's policy context.
    pub fn delete_policy_with(
        &self,
        name: &str,
        ctx: &PolicyContext,
    ) -> Result<Option<StoredPolicy>> {
        let _one_change_at_a_time = self.inner.policy_changes.lock();
        let Some(previous) = self.stored_policy(name)? else {
            return Ok(None);
        };
        let ctx = change_context(ctx, name, None);
        self.owner_delete_with(&key(name), &ctx)?;
        PolicyEngine::new(self).install_stored(name, None);
        self.log_change(
            name,
            Op::Delete,
            &ctx,
            format!("policy {name} deleted (was revision {})", previous.revision),
        );
        Ok(Some(previous))
    }

    /// Stores every `*.rego` module of `dir` (not `*_test.rego`), named by
    /// its package, with its header's scopes and ops. All are compiled
    /// before any is stored: one bad file stores nothing. A file whose
    /// policy is stored already with the same content keeps its revision.
    pub fn import_policies(
        &self,
        dir: impl AsRef<Path>,
    ) -> Result<Vec<(StoredPolicy, PolicyChange)>> {
        let engine = PolicyEngine::new(self);
        let mut modules = Vec::new();
        for (path, source) in crate::policy::rego::module_files(dir.as_ref())? {
            let file = path.display().to_string();
            let parsed = engine.parse_stored(&file, &source, None)?;
            modules.push((parsed.module.name().to_string(), source));
        }
        modules
            .into_iter()
            .map(|(name, source)| self.put_policy(&name, &source, None))
            .collect()
    }

    /// Installs every stored policy in this database's chain (at open). A
    /// stored module that no longer compiles refuses the open: running
    /// without a policy the store promises would fail open.
    pub(super) fn install_stored_policies(&self) -> Result<()> {
        let engine = PolicyEngine::new(self);
        for policy in self.stored_policies()? {
            let parsed = engine
                .parse_stored(&policy.name, &policy.source, Some(&policy.scopes))
                .map_err(|e| Error::PolicyLoad {
                    name: format!("{}{}", POLICIES, policy.name),
                    reason: format!("the stored policy no longer loads ({e}); nothing was opened"),
                })?;
            engine.install_stored(&policy.name, Some(parsed));
        }
        Ok(())
    }

    /// Compiles every stored policy again with the chain's current Rego
    /// evaluator (after `PolicyEngine::set_rego_evaluator`).
    pub fn reload_stored_policies(&self) -> Result<()> {
        self.install_stored_policies()
    }

    fn log_change(&self, name: &str, op: Op, ctx: &PolicyContext, note: String) {
        let key = key(name);
        let mut recorder = Recorder::new(op, Phase::After, &key, ctx);
        recorder.record("policy store".into(), DecisionKind::Log, &note);
        self.record_decisions(recorder.decisions);
    }
}

/// The caller's context, marked as a policy change of `name`.
fn change_context(ctx: &PolicyContext, name: &str, revision: Option<u64>) -> PolicyContext {
    let mut ctx = ctx.clone();
    ctx.set_operation(OperationKind::Policy);
    ctx.insert_static(keys::POLICY, name);
    if let Some(revision) = revision {
        ctx.insert_static(keys::REVISION, &revision.to_string());
    }
    ctx
}
