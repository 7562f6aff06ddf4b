//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result<T>`]. Variants are distinct so
//! a caller can branch on *why* something failed (bad input vs. policy vs. agent
//! vs. storage) without parsing messages; each message says what to do next.

use std::time::Duration;

/// Shorthand for `std::result::Result<T, switchboard::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Switchboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something malformed: a bad id, key, value, URL or option.
    /// Nothing was read or written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A policy hook or Rego module refused the operation. Nothing was written.
    #[error("policy denied {key}: {reason}")]
    PolicyDenied {
        /// The key whose write was refused.
        key: String,
        /// The reason the hook or module gave.
        reason: String,
    },

    /// A rate limit is used up for now. Nothing was written or read.
    #[error("rate limit reached: {limit}; it frees up in {retry_after:?}")]
    RateLimited {
        /// Which limit, e.g. "at most 10 dispatch per 60s for agent_id a".
        limit: String,
        /// When the current window ends.
        retry_after: Duration,
    },

    /// A Rego module could not be loaded (syntax error, missing scope, no rules).
    /// Policies loaded before it are unaffected.
    #[error("policy {name} could not be loaded: {reason}")]
    PolicyLoad {
        /// The module's name (file name or the name given at load).
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No registered, healthy agent serves the category (or every one was tried).
    #[error("no agent available for category {category}: {reason}")]
    NoAgentAvailable {
        /// The requested category.
        category: String,
        /// Why: none registered, all unhealthy, all denied, attempts exhausted.
        reason: String,
    },

    /// The tool itself reported a failure (a local handler's `ToolError`, or an
    /// HTTP agent's 4xx). Not retried on another agent.
    #[error("agent {agent_id} reported a tool error: {message}")]
    ToolFailed {
        /// The agent that ran the tool.
        agent_id: String,
        /// The tool's own message.
        message: String,
    },

    /// The agent could not produce an answer: 5xx, bad response, connection failure.
    #[error("agent {agent_id} failed: {message}")]
    AgentFailed {
        /// The agent that failed.
        agent_id: String,
        /// What went wrong.
        message: String,
    },

    /// The agent did not answer within its timeout.
    #[error("agent {agent_id} timed out after {timeout:?}")]
    AgentTimeout {
        /// The agent that hung.
        agent_id: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },

    /// No agent with this id is registered.
    #[error("unknown agent {0}: register it first or check `list_agents()`")]
    UnknownAgent(String),

    /// A transaction read a key with
    /// [`get_for_update`](crate::Transaction::get_for_update) and another
    /// commit changed it before this one: nothing of this transaction was
    /// written. Run the whole transaction again (read, modify, commit).
    #[error("transaction conflict on {key}: it changed after this transaction read it; nothing was written, retry the transaction")]
    Conflict {
        /// The first key found changed.
        key: String,
    },

    /// RocksDB reported an error, or a stored value could not be decoded.
    #[error("storage error: {0}")]
    Storage(String),

    /// A store this node shares with others (cluster mode's etcd) cannot be
    /// reached; nothing was written. Retry once it is back.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),

    /// Something outside the caller's control failed (a socket that cannot be
    /// bound, a task that died); `source` keeps the underlying error.
    #[error("{what}: {source}")]
    Internal {
        /// What was being done, e.g. "cannot listen on 127.0.0.1:7700".
        what: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// An [`Error::InvalidInput`] with this message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// An [`Error::Internal`]: `what` was being done when `source` happened.
    pub fn internal(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Internal {
            what: what.into(),
            source: source.into(),
        }
    }

    /// An [`Error::Storage`] with this message.
    pub fn storage(msg: impl std::fmt::Display) -> Self {
        Error::Storage(msg.to_string())
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

/// The message a caught panic carried, for reasons and logs ("non-string
/// panic" when it carried something else).
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
