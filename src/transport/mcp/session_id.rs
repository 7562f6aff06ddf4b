//! The MCP session a streamable-HTTP connection to an upstream is in, as
//! its HTTP client sees it: the SDK keeps the `Mcp-Session-Id` inside its
//! transport, and passes it to the client with each request, so a client
//! that notes it lets a call's span name its session.

use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// One connection's upstream session id, once it has one.
#[derive(Clone, Default)]
pub(crate) struct SessionId(Arc<parking_lot::Mutex<Option<Arc<str>>>>);

impl SessionId {
    /// The session id the connection's last request was sent in.
    pub(crate) fn get(&self) -> Option<Arc<str>> {
        self.0.lock().clone()
    }

    fn note(&self, id: Option<&Arc<str>>) {
        if let Some(id) = id {
            let mut noted = self.0.lock();
            if noted.as_ref() != Some(id) {
                *noted = Some(id.clone());
            }
        }
    }
}

/// An HTTP client `http` that notes, in `session`, the session id each
/// request is sent in.
#[derive(Clone)]
pub(crate) struct NotingSession<C> {
    pub(crate) http: C,
    pub(crate) session: SessionId,
}

impl<C: StreamableHttpClient + Sync> StreamableHttpClient for NotingSession<C> {
    type Error = C::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        self.session.note(session_id.as_ref());
        self.http
            .post_message(uri, message, session_id, auth_token, custom_headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        self.session.note(session_id.as_ref());
        self.http
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_token,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<C::Error>> {
        self.session.note(session_id.as_ref());
        self.http
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_token,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<C::Error>> {
        self.http
            .delete_session(uri, session_id, auth_token, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxedSseResponse, StreamableHttpError<C::Error>> {
        self.session.note(session_id.as_ref());
        self.http
            .get_stream(uri, session_id, last_event_id, auth_token, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxedSseResponse, StreamableHttpError<C::Error>> {
        self.session.note(session_id.as_ref());
        self.http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_token,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
