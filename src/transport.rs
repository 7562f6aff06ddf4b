//! Calling an agent: in-process handlers and the HTTP agent protocol.
//!
//! The transport knows nothing of routing or storage: it takes one call to one
//! agent and says how it ended, classifying failures into the tool's own error
//! (not retried) and retryable ones (fail over to another agent).

use crate::error::{Error, Result};
use crate::net_policy::NetworkPolicy;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The largest agent response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// The deepest nesting of arrays and objects accepted in an agent's answer.
pub const MAX_ANSWER_DEPTH: usize = 64;
/// The most JSON values accepted in an agent's answer: a decoded value costs
/// far more than its text (`[0,0,…]` is 2 bytes a value, decoded about 32),
/// so the byte limit alone does not bound memory.
pub const MAX_ANSWER_VALUES: usize = 1 << 18;

/// A tool's own failure, returned by a local handler.
///
/// By default it is final: the caller gets it as [`Error::ToolFailed`] and no
/// other agent is tried. [`ToolError::retryable`] marks a failure of the agent
/// rather than of the request, which fails over like an HTTP 5xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolError {
    message: String,
    retryable: bool,
}

impl ToolError {
    /// A final tool error.
    pub fn new(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An agent failure worth retrying on another agent.
    pub fn retryable(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            retryable: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another agent should be tried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

impl From<&str> for ToolError {
    fn from(s: &str) -> Self {
        ToolError::new(s)
    }
}

impl From<String> for ToolError {
    fn from(s: String) -> Self {
        ToolError::new(s)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An in-process agent: `(tool, input) -> output`.
pub(crate) type LocalHandler = Arc<
    dyn Fn(String, serde_json::Value) -> BoxFuture<Result<serde_json::Value, ToolError>>
        + Send
        + Sync,
>;

pub(crate) fn local_handler<F, Fut>(f: F) -> LocalHandler
where
    F: Fn(String, serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, ToolError>> + Send + 'static,
{
    Arc::new(move |tool, input| Box::pin(f(tool, input)))
}

/// How a call that did not succeed ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The tool's own error (local `ToolError`, HTTP 4xx): final.
    Tool(String),
    /// The agent could not answer properly (5xx, bad body, connection, panic).
    Agent(String),
    /// No answer within the timeout.
    Timeout,
    /// 429 or 503 with `Retry-After`: the agent asked not to be called for a while.
    Overloaded {
        message: String,
        retry_after: Duration,
    },
}

impl Failure {
    /// Whether another agent should be tried.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Tool(_))
    }

    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Failure::Tool(_) => "tool_error",
            Failure::Agent(_) => "failed",
            Failure::Timeout => "timeout",
            Failure::Overloaded { .. } => "overloaded",
        }
    }

    pub(crate) fn into_error(self, agent_id: &str, timeout: Duration) -> Error {
        let agent_id = agent_id.to_string();
        match self {
            Failure::Tool(message) => Error::ToolFailed { agent_id, message },
            Failure::Agent(message) | Failure::Overloaded { message, .. } => {
                Error::AgentFailed { agent_id, message }
            }
            Failure::Timeout => Error::AgentTimeout { agent_id, timeout },
        }
    }

    pub(crate) fn message(&self, timeout: Duration) -> String {
        match self {
            Failure::Tool(m) | Failure::Agent(m) | Failure::Overloaded { message: m, .. } => {
                m.clone()
            }
            Failure::Timeout => format!("timed out after {timeout:?}"),
        }
    }
}

/// Where one agent is reached.
#[derive(Clone)]
pub(crate) enum Transport {
    Local(LocalHandler),
    Http { endpoint: reqwest::Url },
}

/// One invocation as the HTTP protocol carries it.
#[derive(serde::Serialize)]
pub(crate) struct WireRequest<'a> {
    pub invocation_id: &'a str,
    pub tool: &'a str,
    pub category: &'a str,
    pub input: &'a serde_json::Value,
    pub session_id: Option<&'a str>,
}

impl Transport {
    /// Runs one call to completion or timeout.
    pub(crate) async fn call(
        &self,
        client: &reqwest::Client,
        request: WireRequest<'_>,
        timeout: Duration,
    ) -> Result<serde_json::Value, Failure> {
        match self {
            Transport::Local(handler) => {
                // The handler may panic while building its future, or while it runs.
                let tool = request.tool.to_string();
                let input = request.input.clone();
                let fut = match catch_unwind(AssertUnwindSafe(|| handler(tool, input))) {
                    Ok(fut) => CatchUnwind(fut),
                    Err(panic) => {
                        let message = crate::policy::panic_message(&panic);
                        return Err(Failure::Agent(format!("handler panicked: {message}")));
                    }
                };
                match tokio::time::timeout(timeout, fut).await {
                    Err(_) => Err(Failure::Timeout),
                    Ok(Err(panic)) => Err(Failure::Agent(format!("handler panicked: {panic}"))),
                    Ok(Ok(Err(e))) if e.is_retryable() => Err(Failure::Agent(e.message)),
                    Ok(Ok(Err(e))) => Err(Failure::Tool(e.message)),
                    Ok(Ok(Ok(output))) => Ok(output),
                }
            }
            Transport::Http { endpoint } => {
                let body = serde_json::to_vec(&request)
                    .map_err(|e| Failure::Agent(format!("cannot encode request: {e}")))?;
                let call = http_call(client, endpoint.clone(), body);
                match tokio::time::timeout(timeout, call).await {
                    Err(_) => Err(Failure::Timeout),
                    Ok(result) => result,
                }
            }
        }
    }
}

async fn http_call(
    client: &reqwest::Client,
    endpoint: reqwest::Url,
    body: Vec<u8>,
) -> Result<serde_json::Value, Failure> {
    // Registration checked the address too, but the policy may have changed since.
    NetworkPolicy::current()
        .check_url(&endpoint)
        .map_err(|e| Failure::Agent(e.to_string()))?;
    let mut response = client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Agent(format!("request failed: {}", error_chain(&e))))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Failure::Agent(format!(
                        "response larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Failure::Agent(format!(
                    "response body broken off: {}",
                    error_chain(&e)
                )))
            }
        }
    }
    match (parse_response(status.as_u16(), &bytes), retry_after) {
        (Err(Failure::Agent(message)), Some(retry_after))
            if matches!(status.as_u16(), 429 | 503) =>
        {
            Err(Failure::Overloaded {
                message,
                retry_after,
            })
        }
        (result, _) => result,
    }
}

/// The longest pause an agent's `Retry-After` can ask for.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` in delta-seconds (the HTTP-date form is not honoured),
/// capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Classifies an agent's answer: 2xx JSON is output, 4xx (but 408 and 429)
/// the tool's own error, anything else a retryable agent failure.
pub fn parse_response(status: u16, body: &[u8]) -> Result<serde_json::Value, Failure> {
    let excerpt = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text
        }
    };
    match status {
        200..=299 => {
            check_answer_shape(body).map_err(|why| {
                Failure::Agent(format!("answered {status} with a JSON body {why}"))
            })?;
            serde_json::from_slice(body).map_err(|e| {
                Failure::Agent(format!(
                    "answered {status} with a body that is not JSON ({e})"
                ))
            })
        }
        400..=499 if status != 429 && status != 408 => {
            Err(Failure::Tool(format!("HTTP {status}: {}", excerpt())))
        }
        _ => Err(Failure::Agent(format!("HTTP {status}: {}", excerpt()))),
    }
}

/// Refuses, before decoding, an answer nested deeper than [`MAX_ANSWER_DEPTH`]
/// or holding more than [`MAX_ANSWER_VALUES`] values (counted from the
/// separators and brackets outside strings; malformed text is left to the parser).
fn check_answer_shape(body: &[u8]) -> std::result::Result<(), String> {
    let (mut depth, mut values, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                values += 1;
                if depth > MAX_ANSWER_DEPTH {
                    return Err(format!(
                        "nested too deeply (over {MAX_ANSWER_DEPTH} levels)"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => values += 1,
            _ => {}
        }
        if values > MAX_ANSWER_VALUES {
            return Err(format!("with too many values (over {MAX_ANSWER_VALUES})"));
        }
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The HTTP client of agent calls and health probes.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        // A redirect is an answer like any other (a retryable failure):
        // following it would let an agent send Switchboard anywhere.
        .redirect(reqwest::redirect::Policy::none())
        // Straight to the agent, so the address policy judges the real peer.
        .no_proxy()
        .dns_resolver(Arc::new(crate::net_policy::PolicyResolver))
        .build()
        .map_err(|e| Error::internal("cannot build the HTTP client", e))
}

/// Probes an HTTP agent's health URL: any 2xx within `timeout` is healthy.
pub(crate) async fn probe(client: &reqwest::Client, url: &reqwest::Url, timeout: Duration) -> bool {
    if NetworkPolicy::current().check_url(url).is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(timeout, client.get(url.clone()).send()).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

/// Checks an endpoint URL and derives its default health URL
/// (`scheme://host:port/health`).
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(reqwest::Url, reqwest::Url)> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| Error::invalid(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(Error::invalid(format!(
            "endpoint {endpoint:?}: only http:// endpoints are supported by this build \
             (https needs TLS, which is not compiled in)"
        )));
    }
    if url.host_str().is_none() {
        return Err(Error::invalid(format!("endpoint {endpoint:?} has no host")));
    }
    NetworkPolicy::current().check_url(&url)?;
    let mut health = url.clone();
    health.set_path("/health");
    health.set_query(None);
    Ok((url, health))
}

/// Polls a future, turning a panic inside it into an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(crate::policy::panic_message(&panic))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_classified() {
        assert_eq!(parse_response(200, b"{\"a\":1}").unwrap()["a"], 1);
        assert!(matches!(
            parse_response(200, b"<html>"),
            Err(Failure::Agent(_))
        ));
        assert!(matches!(
            parse_response(200, b"{\"a\":"),
            Err(Failure::Agent(_))
        ));
        assert!(
            matches!(parse_response(404, b"no such tool"), Err(Failure::Tool(m)) if m.contains("no such tool"))
        );
        assert!(matches!(parse_response(429, b""), Err(Failure::Agent(_))));
        assert!(matches!(parse_response(503, b""), Err(Failure::Agent(m)) if m.contains("503")));
        assert!(matches!(parse_response(302, b""), Err(Failure::Agent(_))));
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn endpoints_must_be_http() {
        let (url, health) = parse_endpoint("http://127.0.0.1:8001/invoke?x=1").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8001/invoke?x=1");
        assert_eq!(health.as_str(), "http://127.0.0.1:8001/health");
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "127.0.0.1:80",
            "",
            "http://",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }
}
