//! Calls to `http://` agents over a keep-alive pool of HTTP/1.1 connections
//! whose requests run on the calling task.
//!
//! `reqwest` (which `https://` agents and health probes keep using) returns
//! a pooled connection to its pool from a task it spawns for every request,
//! which wakes another runtime worker per call: on a gateway that is most of
//! a request's context switches. Here a call takes an idle connection (or
//! opens one), sends, reads the whole answer, and puts the connection back
//! itself; each connection's I/O runs on one task of its own for its
//! lifetime, as with any hyper client.
//!
//! Semantics match the `reqwest` path: names resolve through the network
//! policy (an address it denies is never dialled), redirects are answers,
//! no proxy, Nagle off, and a request that an idle connection closed before
//! it was written is sent again on a new connection (a request that was
//! written is never sent twice).

use super::{error_chain, Failure, MAX_RESPONSE_BYTES};
use crate::policy::NetworkPolicy;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections kept per agent address, as for the `reqwest` client.
const MAX_IDLE_PER_HOST: usize = 256;
/// An idle connection older than this is closed rather than reused (agents
/// commonly close theirs after a minute or so).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = SendRequest<Full<Bytes>>;

/// An agent's answer, before it is classified.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// Idle connections by `host:port`.
#[derive(Default)]
pub(crate) struct PlainPool {
    idle: Mutex<HashMap<String, Vec<(Sender, Instant)>>>,
}

impl PlainPool {
    /// `POST`s `body` to `endpoint` (an `http://` URL) and reads the answer,
    /// up to [`MAX_RESPONSE_BYTES`].
    pub(crate) async fn post(
        &self,
        endpoint: &reqwest::Url,
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let host = endpoint
            .host_str()
            .ok_or_else(|| Failure::Agent(format!("{endpoint} has no host")))?;
        let port = endpoint.port_or_known_default().unwrap_or(80);
        let authority = match endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let key = format!("{host}:{port}");
        let body = Bytes::from(body);
        let mut request = self.request(endpoint, &authority, body.clone())?;
        // A pooled connection the agent closed while it was idle fails the
        // request before it is written: then (only then) a new one is used.
        while let Some(mut sender) = self.take(&key) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return self.read(&key, sender, response).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(request_failed(e.error())),
                },
            }
        }
        let mut sender = connect(host, port).await?;
        sender.ready().await.map_err(|e| request_failed(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| request_failed(&e))?;
        self.read(&key, sender, response).await
    }

    fn request(
        &self,
        endpoint: &reqwest::Url,
        authority: &str,
        body: Bytes,
    ) -> Result<hyper::Request<Full<Bytes>>, Failure> {
        let path = match endpoint.query() {
            Some(query) => format!("{}?{query}", endpoint.path()),
            None => endpoint.path().to_string(),
        };
        hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Failure::Agent(format!("cannot build the request: {e}")))
    }

    /// Reads the whole answer, then keeps the connection for the next call.
    async fn read(
        &self,
        key: &str,
        sender: Sender,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Answer, Failure> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut incoming = response.into_body();
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| {
                Failure::Agent(format!("response body broken off: {}", error_chain(&e)))
            })?;
            if let Ok(chunk) = frame.into_data() {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    // Unread bytes stay on this connection: it is dropped.
                    return Err(Failure::Agent(format!(
                        "response larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
        }
        self.keep(key, sender);
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// The most recently used idle connection to `key` still fit for use.
    fn take(&self, key: &str) -> Option<Sender> {
        let mut idle = self.idle.lock();
        let connections = idle.get_mut(key)?;
        while let Some((sender, since)) = connections.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn keep(&self, key: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let connections = idle.entry(key.to_string()).or_default();
        connections.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if connections.len() < MAX_IDLE_PER_HOST {
            connections.push((sender, Instant::now()));
        }
    }
}

fn request_failed(e: &hyper::Error) -> Failure {
    Failure::Agent(format!("request failed: {}", error_chain(e)))
}

/// Opens a connection to `host:port`, dialling only addresses the network
/// policy in force permits, and starts its I/O task.
async fn connect(host: &str, port: u16) -> Result<Sender, Failure> {
    let policy = NetworkPolicy::current();
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    let addresses: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::Agent(format!("request failed: cannot resolve {host}: {e}")))?
            .collect(),
    };
    let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addresses.into_iter().partition(|a| policy.permits(a.ip()));
    if allowed.is_empty() {
        let denied: Vec<String> = denied.iter().map(|a| a.ip().to_string()).collect();
        return Err(Failure::Agent(format!(
            "request failed: {host} resolves only to addresses the network policy denies ({})",
            denied.join(", ")
        )));
    }
    let mut last_error = None;
    for address in allowed {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| request_failed(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "agent connection ended with an error");
                    }
                });
                return Ok(sender);
            }
            Err(e) => last_error = Some(format!("{address}: {e}")),
        }
    }
    Err(Failure::Agent(format!(
        "request failed: cannot connect to {host}:{port} ({})",
        last_error.unwrap_or_default()
    )))
}
