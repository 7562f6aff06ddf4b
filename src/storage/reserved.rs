//! Namespace ownership: which prefixes the generic write API may touch.
//!
//! The audit trail is append-only from the outside. `tools/`, `inflight/`,
//! `sessions/`, `agents/`, `mcp_tools/`, `mcp_prompts/`, `mcp_resources/`, `a2a_tasks/`,
//! `a2a_task_states/` and `policies/` are written by the parts of
//! Switchboard that own them (the dispatcher, recovery, the registry, the
//! policy store) through a crate-internal
//! way in; `policy_log/` only by the policy chain. A caller who really must
//! write a reserved key (a migration, a repair) opts in loudly with
//! [`Database::writes_to_reserved_namespaces`]; those writes still pass
//! through the policy chain.

use super::decision_log::DECISION_LOG;
use super::policy_store::POLICIES;
use super::{Database, Transaction};
use crate::error::{Error, Result};
use crate::namespace::{
    validate_key, A2A_TASKS, A2A_TASK_STATES, AGENTS, INFLIGHT, MCP_PROMPTS, MCP_RESOURCES,
    MCP_TOOLS, SESSIONS, TOKENS, TOOLS,
};
use crate::policy::PolicyContext;

/// Who a write comes from, as far as namespaces go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The generic API: reserved namespaces are refused.
    Generic,
    /// An owner inside the crate, or a caller who opted in explicitly.
    Reserved,
}

/// The reserved prefixes and who owns each.
const OWNED: [(&str, &str); 11] = [
    (TOOLS, "the dispatcher"),
    (INFLIGHT, "the dispatcher and recovery"),
    (SESSIONS, "the dispatcher"),
    (AGENTS, "the agent registry"),
    (TOKENS, "the token store (`switchboard tokens`)"),
    (MCP_TOOLS, "MCP tool discovery"),
    (MCP_PROMPTS, "MCP discovery"),
    (MCP_RESOURCES, "MCP discovery"),
    (A2A_TASKS, "the A2A server (task affinity)"),
    (A2A_TASK_STATES, "the A2A server (task histories)"),
    (
        POLICIES,
        "the policy store (PUT /v1/policies/{name}, `switchboard policy put`, `Database::put_policy`)",
    ),
];

/// Checks that `key` is valid and writable with `access`.
pub(crate) fn validate_writable_key(key: &str, access: Access) -> Result<()> {
    validate_key(key)?;
    if key.starts_with(DECISION_LOG) {
        return Err(Error::invalid(format!(
            "{key:?} is in {DECISION_LOG}, which only the policy chain writes; read it with scan(\"{DECISION_LOG}\")"
        )));
    }
    if access == Access::Generic {
        if let Some((prefix, owner)) = OWNED.iter().find(|(p, _)| key.starts_with(p)) {
            return Err(Error::invalid(format!(
                "{key:?} is in {prefix}, which only {owner} writes (the audit trail is append-only); \
                 use the API that owns it, `prune_dispatch_records` to retire old dispatch records, \
                 or `Database::writes_to_reserved_namespaces()` if you really mean to write there"
            )));
        }
    }
    Ok(())
}

/// Writes that may touch Switchboard's reserved namespaces (`tools/`,
/// `inflight/`, `sessions/`, `agents/`), from
/// [`Database::writes_to_reserved_namespaces`].
///
/// **These bypass namespace ownership**: a write here can forge or erase
/// dispatch records, session bindings and registrations that the rest of
/// Switchboard trusts. Every write still passes through the policy chain.
/// Meant for migrations and repairs, not for application data.
pub struct ReservedWrites<'a> {
    db: &'a Database,
}

impl ReservedWrites<'_> {
    /// Writes one key with an empty policy context.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.put_with(key, value, &PolicyContext::new())
    }

    /// Writes one key; `ctx` is handed to the policy hooks.
    pub fn put_with(&self, key: &str, value: &[u8], ctx: &PolicyContext) -> Result<()> {
        let mut tx = self.transaction();
        tx.put_with(key, value, ctx)?;
        tx.commit()
    }

    /// Deletes one key with an empty policy context.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.delete_with(key, &PolicyContext::new())
    }

    /// Deletes one key; `ctx` is handed to the policy hooks.
    pub fn delete_with(&self, key: &str, ctx: &PolicyContext) -> Result<()> {
        let mut tx = self.transaction();
        tx.delete_with(key, ctx)?;
        tx.commit()
    }

    /// A transaction whose writes may touch reserved namespaces.
    pub fn transaction(&self) -> Transaction {
        self.db.transaction_with(Access::Reserved)
    }
}

impl Database {
    /// Opts into writing Switchboard's reserved namespaces (`tools/`,
    /// `inflight/`, `sessions/`, `agents/`), which the generic `put`,
    /// `delete` and `transaction` refuse. See [`ReservedWrites`]: this
    /// bypasses namespace ownership (not the policy chain), for migrations
    /// and repairs.
    pub fn writes_to_reserved_namespaces(&self) -> ReservedWrites<'_> {
        ReservedWrites { db: self }
    }

    /// The owners' way in (dispatcher, registry, recovery): a transaction
    /// that may write reserved namespaces.
    pub(crate) fn owner_transaction(&self) -> Transaction {
        self.transaction_with(Access::Reserved)
    }

    /// [`owner_transaction`](Self::owner_transaction) for one put.
    pub(crate) fn owner_put_with(
        &self,
        key: &str,
        value: &[u8],
        ctx: &PolicyContext,
    ) -> Result<()> {
        self.writes_to_reserved_namespaces()
            .put_with(key, value, ctx)
    }

    /// [`owner_transaction`](Self::owner_transaction) for one delete.
    pub(crate) fn owner_delete_with(&self, key: &str, ctx: &PolicyContext) -> Result<()> {
        self.writes_to_reserved_namespaces().delete_with(key, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefixes_need_the_reserved_access() {
        for key in [
            "tools/c/t/1",
            "inflight/1",
            "sessions/s",
            "agents/a",
            "policies/p",
            "mcp_tools/a/t",
        ] {
            assert!(
                validate_writable_key(key, Access::Generic).is_err(),
                "{key}"
            );
            assert!(
                validate_writable_key(key, Access::Reserved).is_ok(),
                "{key}"
            );
        }
        assert!(validate_writable_key("notes/a", Access::Generic).is_ok());
        assert!(validate_writable_key("toolsx/a", Access::Generic).is_ok());
        assert!(validate_writable_key("policy_log/1", Access::Reserved).is_err());
    }
}
