//! Core errors as JavaScript errors. Each carries a stable `code` (the name
//! of the `switchboard::Error` variant, `Timeout` for `AgentTimeout`) and the
//! variant's fields; `index.js` turns it into the matching `Error` subclass,
//! so JavaScript code branches on `code` or `instanceof`, never on the text.
//!
//! napi-rs errors carry a status and a message only, so the payload travels
//! in the message as JSON behind a marker `index.js` recognises.

use serde_json::{json, Value};
use switchboard::Error;

/// The prefix of a message that carries an error payload.
pub const MARKER: &str = "\u{1}switchboard:";

/// A JS error carrying `code`, the message and the fields.
pub fn coded(code: &str, message: String, fields: Value) -> napi::Error {
    let payload = json!({ "code": code, "message": message, "fields": fields });
    napi::Error::from_reason(format!("{MARKER}{payload}"))
}

/// An `InvalidInput` error raised by the bindings themselves.
pub fn invalid(message: impl Into<String>) -> napi::Error {
    to_js(Error::invalid(message))
}

/// Converts a core error into its JS error.
pub fn to_js(e: Error) -> napi::Error {
    let message = e.to_string();
    let (code, fields) = match e {
        Error::InvalidInput(_) => ("InvalidInput", json!({})),
        Error::PolicyDenied { key, reason } => {
            ("PolicyDenied", json!({ "key": key, "reason": reason }))
        }
        Error::RateLimited { limit, retry_after } => (
            "RateLimited",
            json!({ "limit": limit, "retryAfterSeconds": retry_after.as_secs_f64() }),
        ),
        Error::PolicyLoad { name, reason } => (
            "PolicyLoad",
            json!({ "policyName": name, "reason": reason }),
        ),
        Error::NoAgentAvailable { category, reason } => (
            "NoAgentAvailable",
            json!({ "category": category, "reason": reason }),
        ),
        Error::ToolFailed { agent_id, message } => (
            "ToolFailed",
            json!({ "agentId": agent_id, "toolMessage": message }),
        ),
        Error::AgentFailed { agent_id, message } => (
            "AgentFailed",
            json!({ "agentId": agent_id, "agentMessage": message }),
        ),
        Error::AgentTimeout { agent_id, timeout } => (
            "Timeout",
            json!({ "agentId": agent_id, "timeoutSeconds": timeout.as_secs_f64() }),
        ),
        Error::UnknownAgent(agent_id) => ("UnknownAgent", json!({ "agentId": agent_id })),
        Error::Conflict { key } => ("Conflict", json!({ "key": key })),
        Error::Storage(_) => ("Storage", json!({})),
        Error::Unavailable(_) => ("Unavailable", json!({})),
        Error::Internal { .. } => ("Internal", json!({})),
        // A kind added to the core later still arrives with a code.
        #[allow(unreachable_patterns)]
        _ => ("Internal", json!({})),
    };
    coded(code, message, fields)
}

/// `Result<T, switchboard::Error>` → `napi::Result<T>`.
pub trait IntoJs<T> {
    fn js(self) -> napi::Result<T>;
}

impl<T> IntoJs<T> for switchboard::Result<T> {
    fn js(self) -> napi::Result<T> {
        self.map_err(to_js)
    }
}
