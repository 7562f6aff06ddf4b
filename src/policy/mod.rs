//! The policy layer: pure decisions about writes and reads, with no storage.
//!
//! A database owns exactly one hook chain (`chain`); [`PolicyEngine`] is a handle on
//! it. The chain holds hooks in registration order, each scoped by a glob:
//! closures (`before_write`, `after_write`, `before_delete`, `after_delete`,
//! `before_read`, `after_read`) and Rego modules (`add_rego`). Before-hooks
//! run on the staged value before the commit and may allow, deny or rewrite
//! it; the first Deny stops the chain and nothing is written. After-hooks see
//! a write that has committed; they cannot undo it. Hooks that panic, and Rego
//! modules that fail to evaluate (or panic), deny (fail closed).
//!
//! Files: `context` (who is writing), `principal` (the authenticated
//! caller), `chain` (the hooks and the one runner), `engine` (the public
//! handle), `decisions`, `glob`, `limits`, `network` (which addresses agents
//! may live at), `commands` (which programs may run as stdio MCP servers),
//! [`rego`].

mod chain;
mod commands;
mod context;
pub(crate) mod decisions;
mod engine;
pub(crate) mod glob;
mod limits;
mod network;
mod principal;
pub mod rego;

pub use chain::HookFn;
pub(crate) use chain::PolicyChain;
pub use commands::CommandPolicy;
pub(crate) use context::SPAN_TARGET;
pub use context::{keys, OperationKind, PolicyContext};
pub use decisions::{Decision, DecisionKind, DecisionLogRetention};
pub(crate) use engine::sealed;
pub use engine::{ChainOwner, PolicyEngine};
pub(crate) use limits::Reservation;
pub use limits::{Clock, ManualClock, RateLimitOp, RateLimitScope, SystemClock};
pub use network::NetworkPolicy;
pub use principal::{CallerCredential, Principal, Scope};
pub use rego::RegoEvaluator;

// Kept for callers that still import it from the policy layer; it lives in `error`.
pub(crate) use crate::error::panic_message;

use serde::{Deserialize, Serialize};

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

impl PolicyAction {
    /// `allow`, `deny`, `modify` or `log`: what a trace's policy span says
    /// the hook decided.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PolicyAction::Allow => "allow",
            PolicyAction::Deny(_) => "deny",
            PolicyAction::Modify(_) => "modify",
            PolicyAction::Log(_) => "log",
        }
    }
}

/// The operation a hook is asked about. Stored lowercase in the decision log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A write.
    Put,
    /// A delete.
    Delete,
    /// A read through `get` or `scan`.
    Get,
}

impl Op {
    /// `put`, `delete` or `get`, as Rego and the decision log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Get => "get",
        }
    }
}

/// Before the commit (can refuse or rewrite) or after it (observes). Stored
/// lowercase in the decision log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the operation commits (may refuse or rewrite it).
    Before,
    /// After the operation committed (sees it, cannot undo it).
    After,
}

impl Phase {
    /// `before` or `after`, as Rego and the decision log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::After => "after",
        }
    }
}

macro_rules! eq_str {
    ($t:ty) => {
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
eq_str!(Op);
eq_str!(Phase);
