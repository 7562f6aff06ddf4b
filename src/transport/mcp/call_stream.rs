//! What an MCP server sends about one call on that call's response stream
//! (its log messages and progress reports), to that call's caller only, in
//! the order the server sent it and before the call's answer.
//!
//! A `notifications/message` names no request, and calls without a
//! Switchboard session share one connection to the agent, so the message
//! itself cannot say whose call it is about. The streamable HTTP transport
//! can: a server sends the notifications of a request on that request's
//! response stream (the POST's SSE stream). [`route_call_stream`] reads each
//! `tools/call` response stream before the SDK does (the connection's HTTP
//! client calls it, `tap`): a log message on it is handed to the sink of
//! the call that opened the stream, and so is a progress report under the
//! call's own token, and both are taken out of the stream. The SDK would
//! hand each notification to a task of its own, so a report could reach
//! the caller after the answer, or not at all; read here, every report is
//! with the caller before the answer is.
//!
//! A log message on any other stream (the session's standalone stream, a
//! stdio server's pipe) reaches the SDK's handler, which drops it: it could
//! be any caller's. A progress report there is routed by its token
//! (`upstream`'s progress routes).

use super::calls::AskRoutes;
use crate::transport::{LogLevel, LogMessage, Progress};
use futures::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ProgressNotificationParam, RequestId};
use rmcp::transport::streamable_http_client::StreamableHttpPostResponse;
use std::sync::Arc;

/// A notification on a call's response stream that is routed here.
#[derive(serde::Deserialize)]
#[serde(tag = "method", content = "params")]
enum Notification {
    #[serde(rename = "notifications/message")]
    Log(LogParams),
    #[serde(rename = "notifications/progress")]
    Progress(ProgressNotificationParam),
}

#[derive(serde::Deserialize)]
struct LogParams {
    level: LogLevel,
    logger: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// The notification an SSE event's data carries, if it is one routed here.
fn notification(data: &str) -> Option<Notification> {
    // Most events are answers or requests: skip those without parsing them.
    if !data.contains("notifications/message") && !data.contains("notifications/progress") {
        return None;
    }
    serde_json::from_str(data).ok()
}

/// The report a `notifications/progress` carries.
pub(super) fn progress_of(params: ProgressNotificationParam) -> Progress {
    Progress {
        progress: params.progress,
        total: params.total,
        message: params.message,
    }
}

/// The id of `message` if it is a `tools/call`, whose response stream
/// carries that call's log messages and progress.
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

/// `answer`, its response stream read for the log messages and progress of
/// call `id` (`None`: the message was no `tools/call`), which go to the
/// call's sinks among `calls` and are taken out of the stream.
pub(super) fn route_call_stream<E>(
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
            let notification = match &event {
                Ok(sse) => sse.data.as_deref().and_then(notification),
                Err(_) => None,
            };
            match notification {
                None => Some(event),
                Some(Notification::Log(params)) => {
                    if let Some(sink) = calls.log_for(&id).await {
                        sink.log(LogMessage {
                            level: params.level,
                            logger: params.logger,
                            data: params.data,
                        });
                    }
                    None
                }
                Some(Notification::Progress(params)) => {
                    match calls.progress_for(&id, &params.progress_token).await {
                        // Under another token: the SDK routes it by token.
                        None => Some(event),
                        Some(sink) => {
                            if let Some(sink) = sink {
                                sink.report(progress_of(params));
                            }
                            None
                        }
                    }
                }
            }
        }
    });
    Ok(StreamableHttpPostResponse::Sse(stream.boxed(), session))
}
