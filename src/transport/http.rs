//! The HTTP agent protocol: `POST {endpoint}` with the wire request (over
//! `plain`'s pool for `http://`, the `reqwest` client for `https://`), the
//! answer classified into output, the tool's own error, or a retryable agent
//! failure (with `Retry-After` read on 429/503); the health probe; and the
//! construction of the one HTTP client a dispatcher uses.

use super::plain::{Answer, PlainPool};
use super::tls::TlsTrust;
use super::{
    error_chain, Failure, TraceContext, WireRequest, MAX_ANSWER_DEPTH, MAX_ANSWER_VALUES,
    MAX_RESPONSE_BYTES,
};
use crate::error::{Error, Result};
use crate::policy::NetworkPolicy;
use crate::routing::health::ProbeResult;
use std::sync::Arc;
use std::time::Duration;

/// Builds the HTTP client every agent call and probe of one dispatcher
/// shares: `http://` and `https://`, trusting the [`TlsTrust`] in force.
pub(crate) fn build_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(TlsTrust::current().client_config()?)
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        // A redirect is an answer like any other (a retryable failure):
        // following it would let an agent send Switchboard anywhere.
        .redirect(reqwest::redirect::Policy::none())
        // Straight to the agent, so the address policy judges the real peer.
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver))
        .build()
        .map_err(|e| Error::internal("cannot build the HTTP client", e))
}

/// Runs one HTTP call to completion: `http://` agents over the plain pool
/// (`plain`), `https://` ones through `client`.
pub(crate) async fn call(
    client: &reqwest::Client,
    plain: &PlainPool,
    endpoint: &reqwest::Url,
    request: WireRequest<'_>,
) -> Result<serde_json::Value, Failure> {
    let body = serde_json::to_vec(&request)
        .map_err(|e| Failure::Agent(format!("cannot encode request: {e}")))?;
    // Registration checked the address too, but the policy may have changed since.
    NetworkPolicy::current()
        .check_url(endpoint)
        .map_err(|e| Failure::Agent(e.to_string()))?;
    let answer = if endpoint.scheme() == "http" {
        plain.post(endpoint, body, request.trace).await?
    } else {
        // Boxed: `reqwest`'s future would size every call's, plain HTTP too.
        Box::pin(post(client, endpoint.clone(), body, request.trace)).await?
    };
    let retry_after = answer.retry_after.as_deref().and_then(parse_retry_after);
    match (parse_response(answer.status, &answer.body), retry_after) {
        (Err(Failure::Agent(message)), Some(retry_after)) if matches!(answer.status, 429 | 503) => {
            Err(Failure::Overloaded {
                message,
                retry_after,
            })
        }
        (result, _) => result,
    }
}

/// `POST`s `body` through `client` (with the trace context's headers) and
/// reads the answer, up to [`MAX_RESPONSE_BYTES`].
async fn post(
    client: &reqwest::Client,
    endpoint: reqwest::Url,
    body: Vec<u8>,
    trace: Option<&TraceContext>,
) -> Result<Answer, Failure> {
    let mut builder = client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in trace.map(TraceContext::headers).into_iter().flatten() {
        builder = builder.header(name, value);
    }
    let mut response = builder
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Agent(format!("request failed: {}", error_chain(&e))))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
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
    Ok(Answer {
        status,
        retry_after,
        body: bytes,
    })
}

/// The longest pause an agent's `Retry-After` can ask for.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` in delta-seconds (the HTTP-date form is not honoured),
/// capped at [`MAX_RETRY_AFTER`].
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
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
        // Most often a URL registered with the wrong path (or the health
        // URL): say so, as the agent's own answer alone does not.
        404 | 405 => Err(Failure::Tool(format!(
            "HTTP {status}: {}; the agent's endpoint URL looks wrong (nothing there accepts \
             POST): check its path, e.g. http://host:port/invoke",
            excerpt()
        ))),
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

/// The health probe over HTTP: any 2xx within the timeout is healthy; 404
/// or 405 means the agent has no health endpoint (it is not ejected for it:
/// its calls alone judge it); anything else is unhealthy.
pub(crate) async fn probe(
    client: &reqwest::Client,
    url: &reqwest::Url,
    timeout: Duration,
) -> ProbeResult {
    if NetworkPolicy::current().check_url(url).is_err() {
        return ProbeResult::Unhealthy;
    }
    match tokio::time::timeout(timeout, client.get(url.clone()).send()).await {
        Ok(Ok(r)) if r.status().is_success() => ProbeResult::Healthy,
        Ok(Ok(r)) if matches!(r.status().as_u16(), 404 | 405) => ProbeResult::NoEndpoint,
        _ => ProbeResult::Unhealthy,
    }
}

/// Resolves names for the agent HTTP client and drops every address the
/// policy in force denies; a name left with none fails to connect.
pub(crate) struct PolicyResolver;

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = NetworkPolicy::current().permitted_addresses(&host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
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
}
