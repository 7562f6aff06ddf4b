//! The log messages an MCP server sends about one call, to that call's
//! caller only.
//!
//! A `notifications/message` names no request, and calls without a
//! Switchboard session share one connection to the agent, so the message
//! itself cannot say whose call it is about. The streamable HTTP transport
//! can: a server sends the notifications of a request on that request's
//! response stream (the POST's SSE stream). [`route_logs`] reads each
//! `tools/call` response stream before the SDK does (the connection's HTTP
//! client calls it, `tap`): a log message on it is handed to the sink of the
//! call that opened the stream, and taken out of the stream. A message on any other
//! stream (the session's standalone stream, a stdio server's pipe) reaches
//! the SDK's handler, which drops it: it could be any caller's.

use super::calls::AskRoutes;
use crate::transport::{LogLevel, LogMessage};
use futures::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, RequestId};
use rmcp::transport::streamable_http_client::StreamableHttpPostResponse;
use std::sync::Arc;

/// What a log notification on the wire holds.
#[derive(serde::Deserialize)]
struct Notification {
    method: String,
    params: Option<LogParams>,
}

#[derive(serde::Deserialize)]
struct LogParams {
    level: LogLevel,
    logger: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// The log message an SSE event's data carries, if it is one.
fn log_message(data: &str) -> Option<LogMessage> {
    // Most events are not log messages: skip those without parsing them.
    if !data.contains("notifications/message") {
        return None;
    }
    let notification: Notification = serde_json::from_str(data).ok()?;
    if notification.method != "notifications/message" {
        return None;
    }
    let params = notification.params?;
    Some(LogMessage {
        level: params.level,
        logger: params.logger,
        data: params.data,
    })
}

/// The id of `message` if it is a `tools/call`, whose response stream
/// carries that call's log messages.
pub(super) fn call_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        ClientJsonRpcMessage::Request(request)
            if matches!(request.request, ClientRequest::CallToolRequest(_)) =>
        {
            Some(request.id.clone())
        }
        _ => None,
    }
}

/// `answer`, its response stream read for the log messages of call `id`
/// (`None`: the message was no `tools/call`), which go to the call's sink
/// among `calls` and are taken out of the stream.
pub(super) fn route_logs<E>(
    calls: &Arc<AskRoutes>,
    id: Option<RequestId>,
    answer: Result<StreamableHttpPostResponse, E>,
) -> Result<StreamableHttpPostResponse, E> {
    let (id, stream, session) = match (id, answer) {
        (Some(id), Ok(StreamableHttpPostResponse::Sse(stream, session))) => (id, stream, session),
        (_, answer) => return answer,
    };
    let calls = calls.clone();
    let stream = stream.filter_map(move |event| {
        let calls = calls.clone();
        let id = id.clone();
        async move {
            let message = match &event {
                Ok(sse) => sse.data.as_deref().and_then(log_message),
                Err(_) => None,
            };
            let Some(message) = message else {
                return Some(event);
            };
            if let Some(sink) = calls.log_for(&id).await {
                sink.log(message);
            }
            None
        }
    });
    Ok(StreamableHttpPostResponse::Sse(stream.boxed(), session))
}
