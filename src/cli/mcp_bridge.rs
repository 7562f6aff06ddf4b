//! `switchboard mcp --server URL`: a desktop MCP client's stdin/stdout,
//! relayed to a running server's `/mcp`. Both ends are `rmcp` transports:
//! stdio, and the streamable HTTP client, which sends the bearer token,
//! keeps the `Mcp-Session-Id` of the 2025 revisions (and initialises again
//! when a restarted server has forgotten it), reads answers sent as SSE,
//! and listens on the session's stream for the server's notifications. This
//! file only moves messages between the two and turns failures into words a
//! person can act on: on stderr, and as the JSON-RPC error of the request
//! that failed. Stdout carries protocol messages only.

use super::client::{server_error, Client};
use reqwest::{StatusCode, Url};
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ErrorData, RequestId, ServerJsonRpcMessage,
};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::{StreamableHttpClientTransport, Transport};
use rmcp::RoleServer;
use std::collections::HashSet;
use std::time::Duration;
use switchboard::Error;
use tokio::task::JoinSet;

/// How long the requests still open may take to be answered once the
/// client has closed stdin, and the messages still being sent to say why
/// they failed once the connection to the server has ended.
const GRACE: Duration = Duration::from_secs(5);

type HttpError = StreamableHttpError<reqwest::Error>;

/// One message sent to the server: the request's id (none for a
/// notification or an answer), and how the sending went.
type Sent = (Option<RequestId>, Result<(), HttpError>);

/// The MCP client's end: this process's stdin and stdout.
type Stdio = AsyncRwTransport<RoleServer, tokio::io::Stdin, tokio::io::Stdout>;

/// Relays between stdin/stdout and `client`'s server until the MCP client
/// closes stdin (`Ok`, once its open requests are answered), or the
/// connection to the server ends (`Err`, saying why: unreachable, token
/// refused, …).
pub async fn relay(client: &Client) -> switchboard::Result<()> {
    let url = client.url("mcp");
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url.as_str()).reinit_on_expired_session(true);
    if let Some(token) = client.token() {
        config = config.auth_header(token);
    }
    let mut server = StreamableHttpClientTransport::with_client(client.http().clone(), config);
    let (stdin, stdout) = rmcp::transport::stdio();
    let mut relay = Relay {
        url,
        desktop: AsyncRwTransport::new_server(stdin, stdout),
        open: HashSet::new(),
        connected: false,
        first_failure: None,
    };
    let mut sends: JoinSet<Sent> = JoinSet::new();
    // Set when the client closes stdin: its open requests still get their
    // answers (a script's `echo … | switchboard mcp`), until then.
    let mut closing: Option<tokio::time::Instant> = None;
    let mut started = false;
    loop {
        if closing.is_some() && relay.open.is_empty() && sends.is_empty() {
            break;
        }
        tokio::select! {
            from_client = relay.desktop.receive(), if closing.is_none() => {
                let Some(message) = from_client else {
                    closing = Some(tokio::time::Instant::now() + GRACE);
                    continue;
                };
                let id = request_id(&message);
                relay.open.extend(id.clone());
                // rmcp's worker takes the first message as the start of the
                // connection, and (2025 revisions) the next as
                // `notifications/initialized`: each of those is sent before
                // the next message is read, so they reach it in order.
                let handshake = !started || is_initialized(&message);
                started = true;
                let send = server.send(message);
                if handshake {
                    let sent = (id, send.await);
                    relay.settle(Ok(sent)).await;
                } else {
                    // On their own tasks: an answer a call is waiting for
                    // must not hold back the next message (a cancellation).
                    sends.spawn(async move { (id, send.await) });
                }
            }
            from_server = server.receive() => {
                let Some(message) = from_server else {
                    return Err(relay.connection_ended(sends).await);
                };
                relay.connected = true;
                if let Some(id) = answered(&message) {
                    relay.open.remove(id);
                }
                if relay.desktop.send(message).await.is_err() {
                    // Stdout is closed: the client has gone.
                    break;
                }
            }
            Some(sent) = sends.join_next(), if !sends.is_empty() => relay.settle(sent).await,
            _ = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)),
                if closing.is_some() => break,
        }
    }
    // The client is done: end the server's session too (rmcp bounds the
    // DELETE to a few seconds).
    let _ = server.close().await;
    match relay.first_failure {
        Some(failure) if !relay.connected => Err(failure),
        _ => Ok(()),
    }
}

/// The client's end of the relay, and what the relay knows of the exchange.
struct Relay {
    url: Url,
    desktop: Stdio,
    /// The client's requests sent and not answered yet.
    open: HashSet<RequestId>,
    /// Whether the server has answered anything. rmcp ends the connection
    /// when the first message fails (nothing was established); that failure
    /// is then the reason the relay stops. Later failures end only their own
    /// request, and are logged as they happen.
    connected: bool,
    first_failure: Option<Error>,
}

impl Relay {
    /// What follows a message sent to the server: nothing if it went; if it
    /// failed, its request (if it was one) is answered with the reason,
    /// which is logged, or, before the connection was made, kept as the
    /// reason the relay stops.
    async fn settle(&mut self, sent: Result<Sent, tokio::task::JoinError>) {
        let Ok((id, Err(e))) = sent else { return };
        // Said of every message after the connection has ended: no reason.
        let said_nothing = matches!(e, StreamableHttpError::TransportChannelClosed);
        let reason = explain(&self.url, e);
        if let Some(id) = id {
            self.open.remove(&id);
            // Answered, so the client does not wait for an answer that will
            // never come; a client that has gone cannot be told.
            let error = ErrorData::internal_error(reason.to_string(), None);
            let _ = self
                .desktop
                .send(ServerJsonRpcMessage::error(error, Some(id)))
                .await;
        }
        if self.connected {
            tracing::warn!("{reason}");
        } else if self.first_failure.is_none() && !said_nothing {
            self.first_failure = Some(reason);
        }
    }

    /// Why the relay stops now that the connection to the server has ended:
    /// the messages still being sent fail now, and may carry the reason.
    async fn connection_ended(mut self, mut sends: JoinSet<Sent>) -> Error {
        let _ = tokio::time::timeout(GRACE, async {
            while let Some(sent) = sends.join_next().await {
                self.settle(sent).await;
            }
        })
        .await;
        self.first_failure.unwrap_or_else(|| {
            Error::internal(
                format!("the connection to {} ended", self.url),
                "is the server still running? Start `switchboard mcp --server` again once \
                 it is back",
            )
        })
    }
}

/// The id of a request (what a failure is answered to).
fn request_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        ClientJsonRpcMessage::Request(request) => Some(request.id.clone()),
        _ => None,
    }
}

/// Whether `message` is `notifications/initialized`.
fn is_initialized(message: &ClientJsonRpcMessage) -> bool {
    matches!(
        message,
        ClientJsonRpcMessage::Notification(n)
            if matches!(n.notification, ClientNotification::InitializedNotification(_))
    )
}

/// The id of the client's request a server message answers, if it is an answer.
fn answered(message: &ServerJsonRpcMessage) -> Option<&RequestId> {
    match message {
        ServerJsonRpcMessage::Response(response) => Some(&response.id),
        ServerJsonRpcMessage::Error(error) => error.id.as_ref(),
        _ => None,
    }
}

/// A failure to reach `url`, in words that say what to do.
fn explain(url: &Url, e: HttpError) -> Error {
    match e {
        StreamableHttpError::Client(e) if e.is_connect() => Error::internal(
            format!(
                "cannot connect to {url}: is `switchboard serve` running there? Start it, or \
                 fix --server (SWITCHBOARD_URL)"
            ),
            e,
        ),
        StreamableHttpError::AuthRequired(e) => Error::internal(
            format!("{url} answered 401"),
            format!(
                "{}: pass --token or set SWITCHBOARD_TOKEN",
                e.www_authenticate_header
            ),
        ),
        StreamableHttpError::InsufficientScope(e) => Error::internal(
            format!("{url} answered 403"),
            format!(
                "{}: the token lacks a scope /mcp needs (invoke)",
                e.www_authenticate_header
            ),
        ),
        // rmcp reports other refusals (the API's 401 and 403 among them) as
        // "HTTP <status> <reason>: <body>"; the body is the API's error.
        StreamableHttpError::UnexpectedServerResponse(m) => match refusal(&m) {
            Some((status, body)) => server_error(url.as_str(), status, body.as_bytes()),
            None => Error::internal(format!("{url} answered what is not MCP"), m.into_owned()),
        },
        other => Error::internal(format!("relaying to {url} failed"), other),
    }
}

/// The status and body of rmcp's "HTTP 401 Unauthorized: {body}".
fn refusal(message: &str) -> Option<(StatusCode, &str)> {
    let (status, body) = message.strip_prefix("HTTP ")?.split_once(": ")?;
    let code = status.split(' ').next()?.parse::<u16>().ok()?;
    Some((StatusCode::from_u16(code).ok()?, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_give_their_status_and_the_apis_body() {
        let (status, body) =
            refusal(r#"HTTP 401 Unauthorized: {"error":{"code":"unauthorized"}}"#).unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, r#"{"error":{"code":"unauthorized"}}"#);
        assert!(refusal("expect json, got Accepted").is_none());
    }

    #[test]
    fn a_refused_token_says_to_set_switchboard_token() {
        let url = Url::parse("http://127.0.0.1:7700/mcp").unwrap();
        let e = explain(
            &url,
            StreamableHttpError::UnexpectedServerResponse(
                r#"HTTP 401 Unauthorized: {"error":{"code":"unauthorized","message":"unknown token"}}"#
                    .into(),
            ),
        )
        .to_string();
        assert!(e.contains("401") && e.contains("unknown token"), "{e}");
        assert!(e.contains("SWITCHBOARD_TOKEN"), "{e}");
    }
}
