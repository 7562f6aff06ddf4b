//! The HTTP+JSON binding of A2A v1.0, for agents whose card offers it
//! first: each method is its own route under the interface's URL
//! (`POST /message:send`, `POST /message:stream`, `GET /tasks/{id}`,
//! `POST /tasks/{id}:cancel`, `POST /tasks/{id}:subscribe`), the body is
//! the request's params, an answer is the result itself (a stream's
//! events each a `data:` line of one), and an error is an HTTP status with
//! `{"error": {"code", "status", "message", "details": [ErrorInfo]}}`,
//! whose `ErrorInfo.reason` names the A2A error (mapped back to its
//! JSON-RPC code, so callers of `/a2a` see the agent's error as over
//! JSON-RPC).

use super::super::Failure;
use super::rpc_error_message;
use reqwest::{Method, Url};

/// The route of `method`: its HTTP method and URL under `base`.
pub(super) fn route(
    base: &Url,
    method: &str,
    params: &serde_json::Value,
) -> Result<(Method, Url), Failure> {
    let task = || {
        params
            .get("id")
            .and_then(|id| id.as_str())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Failure::Tool(format!("{method} takes {{\"id\": \"<task id>\"}}")))
    };
    let (verb, segments) = match method {
        "SendMessage" => (Method::POST, vec!["message:send".to_string()]),
        "SendStreamingMessage" => (Method::POST, vec!["message:stream".to_string()]),
        "GetTask" => (Method::GET, vec!["tasks".to_string(), task()?.to_string()]),
        "CancelTask" => (
            Method::POST,
            vec!["tasks".to_string(), format!("{}:cancel", task()?)],
        ),
        "SubscribeToTask" => (
            Method::POST,
            vec!["tasks".to_string(), format!("{}:subscribe", task()?)],
        ),
        other => {
            return Err(Failure::Tool(format!(
                "{other} has no HTTP+JSON route Switchboard calls"
            )))
        }
    };
    let mut url = base.clone();
    {
        let mut path = url.path_segments_mut().map_err(|()| {
            Failure::Agent(format!(
                "the card's HTTP+JSON interface url {base} cannot take a path"
            ))
        })?;
        path.pop_if_empty();
        for segment in &segments {
            path.push(segment);
        }
    }
    if method == "GetTask" {
        if let Some(length) = params.get("historyLength").and_then(|n| n.as_u64()) {
            url.query_pairs_mut()
                .append_pair("historyLength", &length.to_string());
        }
    }
    Ok((verb, url))
}

/// An answer (or one event of a stream): the result itself, or the A2A
/// error it carries as the tool's own error.
pub(super) fn decode(bytes: &[u8]) -> Result<serde_json::Value, Failure> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Failure::Agent(format!("the A2A agent's answer is not JSON: {e}")))?;
    match error_of(&value) {
        Some(error) => Err(error),
        None => Ok(value),
    }
}

/// The A2A error an answer that is not a success carries, if it is one.
pub(super) fn error_of(value: &serde_json::Value) -> Option<Failure> {
    let error = value.get("error")?.as_object()?;
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("(no message)");
    let reason = error
        .get("details")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .find_map(|detail| detail.get("reason").and_then(|r| r.as_str()));
    Some(Failure::Tool(rpc_error_message(
        reason.map_or(-32603, rpc_code),
        message,
    )))
}

/// The JSON-RPC code of an A2A error reason (A2A v1.0's table).
fn rpc_code(reason: &str) -> i64 {
    match reason {
        "TASK_NOT_FOUND" => -32001,
        "TASK_NOT_CANCELABLE" => -32002,
        "PUSH_NOTIFICATION_NOT_SUPPORTED" => -32003,
        "UNSUPPORTED_OPERATION" => -32004,
        "CONTENT_TYPE_NOT_SUPPORTED" => -32005,
        "INVALID_AGENT_RESPONSE" => -32006,
        "EXTENDED_AGENT_CARD_NOT_CONFIGURED" => -32007,
        "EXTENSION_SUPPORT_REQUIRED" => -32008,
        "VERSION_NOT_SUPPORTED" => -32009,
        "INVALID_PARAMS" => -32602,
        "INVALID_REQUEST" => -32600,
        "METHOD_NOT_FOUND" => -32601,
        _ => -32603,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::a2a::parse_rpc_error;

    #[test]
    fn each_method_has_its_route_under_the_interface_url() {
        let base = Url::parse("http://127.0.0.1:9/agent/").unwrap();
        let params = serde_json::json!({"id": "t 1", "historyLength": 2});
        let route = |method| {
            let (verb, url) = route(&base, method, &params).unwrap();
            format!("{verb} {url}")
        };
        assert_eq!(
            route("SendMessage"),
            "POST http://127.0.0.1:9/agent/message:send"
        );
        assert_eq!(
            route("SendStreamingMessage"),
            "POST http://127.0.0.1:9/agent/message:stream"
        );
        assert_eq!(
            route("GetTask"),
            "GET http://127.0.0.1:9/agent/tasks/t%201?historyLength=2"
        );
        assert_eq!(
            route("CancelTask"),
            "POST http://127.0.0.1:9/agent/tasks/t%201:cancel"
        );
        assert_eq!(
            route("SubscribeToTask"),
            "POST http://127.0.0.1:9/agent/tasks/t%201:subscribe"
        );
        assert!(matches!(
            super::route(&base, "GetTask", &serde_json::json!({})),
            Err(Failure::Tool(_))
        ));
    }

    #[test]
    fn an_error_keeps_the_code_of_its_reason() {
        let Err(Failure::Tool(message)) = decode(
            br#"{"error":{"code":404,"status":"NOT_FOUND","message":"Task not found",
                 "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"TASK_NOT_FOUND"}]}}"#,
        ) else {
            panic!("an error answer was taken for a result");
        };
        assert_eq!(parse_rpc_error(&message), Some((-32001, "Task not found")));
        assert_eq!(
            decode(br#"{"task":{"id":"t"}}"#).unwrap(),
            serde_json::json!({"task": {"id": "t"}})
        );
    }
}
