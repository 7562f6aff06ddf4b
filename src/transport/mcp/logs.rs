//! The log messages an MCP server sends about one call, to that call's
//! caller only.
//!
//! A `notifications/message` names no request, and calls without a
//! Switchboard session share one connection to the agent, so the message
//! itself cannot say whose call it is about. The streamable HTTP transport
//! can: a server sends the notifications of a request on that request's
//! response stream (the POST's SSE stream). [`LogTap`] wraps the HTTP client
//! of one connection and reads each `tools/call` response stream before the
//! SDK does: a log message on it is handed to the sink of the call that
//! opened the stream, and taken out of the stream. A message on any other
//! stream (the session's standalone stream, a stdio server's pipe) reaches
//! the SDK's handler, which drops it: it could be any caller's.

use super::calls::AskRoutes;
use crate::transport::{LogLevel, LogMessage};
use futures::StreamExt;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, RequestId};
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// One connection's HTTP client, routing the log messages on each
/// `tools/call` response stream to the call's sink (see the module doc).
#[derive(Clone)]
pub(super) struct LogTap<C> {
    pub(super) inner: C,
    /// The connection's calls in flight, with where each one's logs go.
    pub(super) calls: Arc<AskRoutes>,
}

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
fn call_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        ClientJsonRpcMessage::Request(request)
            if matches!(request.request, ClientRequest::CallToolRequest(_)) =>
        {
            Some(request.id.clone())
        }
        _ => None,
    }
}

impl<C> LogTap<C> {
    /// `answer`, its response stream read for the log messages of call
    /// `id` (`None`: the message was no `tools/call`).
    fn tap<E>(
        &self,
        id: Option<RequestId>,
        answer: Result<StreamableHttpPostResponse, E>,
    ) -> Result<StreamableHttpPostResponse, E> {
        let (id, stream, session) = match (id, answer) {
            (Some(id), Ok(StreamableHttpPostResponse::Sse(stream, session))) => {
                (id, stream, session)
            }
            (_, answer) => return answer,
        };
        let calls = self.calls.clone();
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
}

impl<C: StreamableHttpClient + Sync> StreamableHttpClient for LogTap<C> {
    type Error = C::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        let id = call_id(&message);
        let answer = self
            .inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await;
        self.tap(id, answer)
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        let id = call_id(&message);
        let answer = self
            .inner
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await;
        self.tap(id, answer)
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        let id = call_id(&message);
        let answer = self
            .inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await;
        self.tap(id, answer)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<C::Error>> {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxedSseResponse, StreamableHttpError<C::Error>> {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxedSseResponse, StreamableHttpError<C::Error>> {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
