//! Status codes: one per kind of `switchboard::Error`, the same kinds (and
//! the same field names, in the JSON payload) the Node and Python packages
//! report, so every language branches on the same codes.

use serde_json::{json, Value};
use switchboard::Error;

/// Success.
pub const SB_OK: i32 = 0;
/// `sb_dispatcher_invoke` only: the call is running; its `done` callback
/// will be called exactly once.
pub const SB_PENDING: i32 = 1;
/// Malformed input (id, key, value, URL, option, JSON); nothing was read or written.
pub const SB_INVALID_INPUT: i32 = 2;
/// A hook or Rego module refused (fields: `key`, `reason`).
pub const SB_POLICY_DENIED: i32 = 3;
/// A rate limit is used up (fields: `limit`, `retry_after_seconds`).
pub const SB_RATE_LIMITED: i32 = 4;
/// A Rego module could not be loaded (fields: `policy_name`, `reason`).
pub const SB_POLICY_LOAD: i32 = 5;
/// No healthy agent serves the category, or all were tried (fields: `category`, `reason`).
pub const SB_NO_AGENT_AVAILABLE: i32 = 6;
/// The tool reported its own failure; not retried (fields: `agent_id`, `tool_message`).
pub const SB_TOOL_FAILED: i32 = 7;
/// The agent could not answer (fields: `agent_id`, `agent_message`).
pub const SB_AGENT_FAILED: i32 = 8;
/// The agent did not answer in time (fields: `agent_id`, `timeout_seconds`).
pub const SB_TIMEOUT: i32 = 9;
/// No agent with this id is registered (fields: `agent_id`).
pub const SB_UNKNOWN_AGENT: i32 = 10;
/// A transaction lost a race on a key (fields: `key`).
pub const SB_CONFLICT: i32 = 11;
/// RocksDB failed, or a stored value does not decode.
pub const SB_STORAGE: i32 = 12;
/// A shared store (cluster mode) cannot be reached.
pub const SB_UNAVAILABLE: i32 = 13;
/// Something outside the caller's control failed (including a panic caught
/// inside the library).
pub const SB_INTERNAL: i32 = 14;
/// The call was cancelled by `sb_call_cancel`; its record says `cancelled`.
pub const SB_CANCELLED: i32 = 15;

/// A failure on its way to C: a status and its JSON payload.
pub(crate) struct Failure {
    pub code: i32,
    pub message: String,
    pub fields: Value,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            fields: json!({}),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::from(Error::invalid(message))
    }

    /// `{"message": ..., "fields": ...}`, the payload `*err` receives.
    pub fn payload(&self) -> Vec<u8> {
        json!({ "message": self.message, "fields": self.fields })
            .to_string()
            .into_bytes()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let (code, fields) = match e {
            Error::InvalidInput(_) => (SB_INVALID_INPUT, json!({})),
            Error::PolicyDenied { key, reason } => {
                (SB_POLICY_DENIED, json!({ "key": key, "reason": reason }))
            }
            Error::RateLimited { limit, retry_after } => (
                SB_RATE_LIMITED,
                json!({ "limit": limit, "retry_after_seconds": retry_after.as_secs_f64() }),
            ),
            Error::PolicyLoad { name, reason } => (
                SB_POLICY_LOAD,
                json!({ "policy_name": name, "reason": reason }),
            ),
            Error::NoAgentAvailable { category, reason } => (
                SB_NO_AGENT_AVAILABLE,
                json!({ "category": category, "reason": reason }),
            ),
            Error::ToolFailed { agent_id, message } => (
                SB_TOOL_FAILED,
                json!({ "agent_id": agent_id, "tool_message": message }),
            ),
            Error::AgentFailed { agent_id, message } => (
                SB_AGENT_FAILED,
                json!({ "agent_id": agent_id, "agent_message": message }),
            ),
            Error::AgentTimeout { agent_id, timeout } => (
                SB_TIMEOUT,
                json!({ "agent_id": agent_id, "timeout_seconds": timeout.as_secs_f64() }),
            ),
            Error::UnknownAgent(agent_id) => (SB_UNKNOWN_AGENT, json!({ "agent_id": agent_id })),
            Error::Conflict { key } => (SB_CONFLICT, json!({ "key": key })),
            Error::Storage(_) => (SB_STORAGE, json!({})),
            Error::Unavailable(_) => (SB_UNAVAILABLE, json!({})),
            Error::Internal { .. } => (SB_INTERNAL, json!({})),
            // A kind added to the core later still arrives with a code.
            #[allow(unreachable_patterns)]
            _ => (SB_INTERNAL, json!({})),
        };
        Failure {
            code,
            message,
            fields,
        }
    }
}

pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;
