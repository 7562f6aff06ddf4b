//! Calls to `http://` agents over a keep-alive pool of HTTP/1.1 connections,
//! each call running entirely on the calling task.
//!
//! `reqwest` (which `https://` agents and health probes keep using) runs
//! every connection on a task of its own and returns a connection to its
//! pool from another task it spawns per request; request, answer and body
//! then pass between tasks several times per call, and past a few such
//! hand-offs tokio wakes a second worker to help: on a gateway that was
//! most of a request's context switches. Here a call takes an idle
//! connection (or opens one) and drives it itself ([`drive`]) while it
//! sends and reads the whole answer, then puts it back. An idle connection
//! is not polled: one the agent closed meanwhile is found out when the next
//! call uses it, before its request is written, and that request goes on a
//! new connection (a request that was written is never sent twice).
//!
//! Semantics match the `reqwest` path: names resolve through the network
//! policy (an address it denies is never dialled), redirects are answers,
//! no proxy, Nagle off, answers capped at [`MAX_RESPONSE_BYTES`].

use super::{error_chain, Failure, TraceContext, MAX_RESPONSE_BYTES};
use crate::policy::NetworkPolicy;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Idle connections kept per agent address, as for the `reqwest` client.
const MAX_IDLE_PER_HOST: usize = 256;
/// An idle connection older than this is closed rather than reused (agents
/// commonly close theirs after a minute or so).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Body = Full<Bytes>;

/// One connection: the request side and the I/O state machine, which only
/// makes progress while a call drives it.
struct Conn {
    sender: SendRequest<Body>,
    io: Pin<Box<Connection<TokioIo<tokio::net::TcpStream>, Body>>>,
    /// Whether `io` has finished (the connection is closed).
    done: bool,
}

/// An agent's answer, before it is classified.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// How one exchange on a connection ended.
enum Exchange {
    Answered(Answer),
    /// The connection closed before the request was written: it may be sent
    /// on another.
    Unsent(hyper::Request<Body>),
    Failed(Failure),
}

/// Idle connections by runtime, then by authority (`host:port`), so that a
/// call finds its connections without building a key.
#[derive(Default)]
pub(crate) struct PlainPool {
    idle: Mutex<HashMap<Option<u64>, HashMap<String, Idle>>>,
}

/// One authority's idle connections, each with when it was put back.
type Idle = Vec<(Conn, Instant)>;

thread_local! {
    /// The runtime whose idle connections a call on this thread may reuse.
    /// A connection is registered with the I/O driver of the runtime that
    /// opened it, and only that driver reports it ready: a call on another
    /// runtime would be woken through it, a cross-thread wake per read.
    /// `serve` runs connections on runtimes of one worker each
    /// (`server/conn_runtimes.rs`), which mark their threads with
    /// [`mark_runtime_thread`]; calls there reuse only their runtime's
    /// connections. Elsewhere (one multi-threaded runtime) the mark is absent.
    static RUNTIME: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as one of runtime `id`'s, for the pool's keys;
/// called as each of the runtime's threads starts (workers and the blocking
/// threads a worker's tasks move to).
pub(crate) fn mark_runtime_thread(id: u64) {
    RUNTIME.with(|r| r.set(Some(id)));
}

/// The runtime the calling thread belongs to, if it is marked.
fn this_runtime() -> Option<u64> {
    RUNTIME.with(|r| r.get())
}

impl PlainPool {
    /// `POST`s `body` to `endpoint` (an `http://` URL), with the trace
    /// context's headers, and reads the answer.
    pub(crate) async fn post(
        &self,
        endpoint: &reqwest::Url,
        body: Vec<u8>,
        trace: Option<&TraceContext>,
    ) -> Result<Answer, Failure> {
        let host = endpoint
            .host_str()
            .ok_or_else(|| Failure::Agent(format!("{endpoint} has no host")))?;
        let port = endpoint.port_or_known_default().unwrap_or(80);
        // `authority()` is `host:port` unless the URL carries credentials,
        // which do not belong in `Host`.
        let with_credentials;
        let authority = if endpoint.username().is_empty() && endpoint.password().is_none() {
            endpoint.authority()
        } else {
            with_credentials = match endpoint.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            };
            &with_credentials
        };
        let runtime = this_runtime();
        let mut request = build_request(endpoint, authority, Bytes::from(body), trace)?;
        loop {
            let (mut conn, pooled) = match self.take(runtime, authority) {
                Some(conn) => (conn, true),
                None => (connect(host, port).await?, false),
            };
            match exchange(&mut conn, request).await {
                Exchange::Answered(answer) => {
                    self.keep(runtime, authority, conn);
                    return Ok(answer);
                }
                // An idle connection the agent had closed: the request was
                // never written, so it goes out on the next one.
                Exchange::Unsent(unsent) if pooled => request = unsent,
                Exchange::Unsent(_) => return Err(Failure::Agent(
                    "request failed: the agent closed a new connection before the request was sent"
                        .into(),
                )),
                Exchange::Failed(failure) => return Err(failure),
            }
        }
    }

    /// The most recently used idle connection to `authority` on `runtime`
    /// still fit for use.
    fn take(&self, runtime: Option<u64>, authority: &str) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let connections = idle.get_mut(&runtime)?.get_mut(authority)?;
        while let Some((conn, since)) = connections.pop() {
            if !conn.done && since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn keep(&self, runtime: Option<u64>, authority: &str, conn: Conn) {
        if conn.done || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let by_authority = idle.entry(runtime).or_default();
        if !by_authority.contains_key(authority) {
            by_authority.insert(authority.to_string(), Vec::new());
        }
        let connections = by_authority
            .get_mut(authority)
            .expect("inserted above if missing");
        connections.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
        if connections.len() < MAX_IDLE_PER_HOST {
            connections.push((conn, Instant::now()));
        }
    }
}

fn build_request(
    endpoint: &reqwest::Url,
    authority: &str,
    body: Bytes,
    trace: Option<&TraceContext>,
) -> Result<hyper::Request<Body>, Failure> {
    let path = match endpoint.query() {
        Some(query) => format!("{}?{query}", endpoint.path()),
        None => endpoint.path().to_string(),
    };
    let mut builder = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in trace.map(TraceContext::headers).into_iter().flatten() {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| Failure::Agent(format!("cannot build the request: {e}")))
}

/// Sends `request` on `conn` and reads the whole answer, driving the
/// connection meanwhile.
async fn exchange(conn: &mut Conn, request: hyper::Request<Body>) -> Exchange {
    let Conn { sender, io, done } = conn;
    let call = async {
        if sender.ready().await.is_err() {
            return Exchange::Unsent(request);
        }
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => {
                return match e.take_message() {
                    Some(unsent) => Exchange::Unsent(unsent),
                    None => Exchange::Failed(request_failed(e.error())),
                }
            }
        };
        match read_answer(response).await {
            Ok(answer) => Exchange::Answered(answer),
            Err(failure) => Exchange::Failed(failure),
        }
    };
    match drive(io.as_mut(), done, call).await {
        Some(exchange) => exchange,
        None => Exchange::Failed(Failure::Agent(
            "response body broken off: the agent closed the connection".into(),
        )),
    }
}

async fn read_answer(response: hyper::Response<hyper::body::Incoming>) -> Result<Answer, Failure> {
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
                return Err(Failure::Agent(format!(
                    "response larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Polls `call` and the connection `io` together until `call` finishes;
/// `None` if the connection ended first and `call` cannot finish without it.
/// Sets `done` once `io` has finished (it is never polled again).
///
/// `io` and `call` wake each other all the time (a request is queued, an
/// answer arrives, the body wants more). Those wakes happen inside this
/// poll: they are caught by a [`Relay`] and answered by polling again here,
/// rather than by waking the task, which tokio would count as a yield and
/// answer by waking another worker. Wakes from outside (the socket became
/// readable) go to the task as usual.
async fn drive<T>(
    mut io: Pin<&mut Connection<TokioIo<tokio::net::TcpStream>, Body>>,
    done: &mut bool,
    call: impl Future<Output = T>,
) -> Option<T> {
    let mut call = pin!(call);
    let relay = Arc::new(Relay::default());
    let waker = Waker::from(relay.clone());
    std::future::poll_fn(move |cx| {
        relay.set_task(cx.waker());
        let mut inner = Context::from_waker(&waker);
        loop {
            relay.polling.store(true, Ordering::SeqCst);
            relay.woken.store(false, Ordering::SeqCst);
            if let Poll::Ready(out) = call.as_mut().poll(&mut inner) {
                relay.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(Some(out));
            }
            if !*done {
                if let Poll::Ready(result) = io.as_mut().poll(&mut inner) {
                    *done = true;
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "agent connection ended with an error");
                    }
                    // What the connection delivered before it ended (an
                    // answer, an error for the call) is there to collect.
                    relay.polling.store(false, Ordering::SeqCst);
                    return match call.as_mut().poll(cx) {
                        Poll::Ready(out) => Poll::Ready(Some(out)),
                        Poll::Pending => Poll::Ready(None),
                    };
                }
            }
            relay.polling.store(false, Ordering::SeqCst);
            // A wake that came in after the last poll began was caught, not
            // passed on: poll again.
            if !relay.woken.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// The waker [`drive`] lends to the call and the connection: while it is
/// polling them it only notes a wake (it polls again itself); otherwise it
/// wakes the task.
#[derive(Default)]
struct Relay {
    task: Mutex<Option<Waker>>,
    polling: AtomicBool,
    woken: AtomicBool,
}

impl Relay {
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock();
        if !task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            if let Some(task) = self.task.lock().as_ref() {
                task.wake_by_ref();
            }
        }
    }
}

fn request_failed(e: &hyper::Error) -> Failure {
    Failure::Agent(format!("request failed: {}", error_chain(e)))
}

/// Opens a connection to `host:port`, dialling only addresses the network
/// policy in force permits.
async fn connect(host: &str, port: u16) -> Result<Conn, Failure> {
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
    let allowed = policy
        .permitted_addresses(host, addresses)
        .map_err(|denied| Failure::Agent(format!("request failed: {denied}")))?;
    let mut last_error = None;
    for address in allowed {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (sender, io) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| request_failed(&e))?;
                return Ok(Conn {
                    sender,
                    io: Box::pin(io),
                    done: false,
                });
            }
            Err(e) => last_error = Some(format!("{address}: {e}")),
        }
    }
    Err(Failure::Agent(format!(
        "request failed: cannot connect to {host}:{port} ({})",
        last_error.unwrap_or_default()
    )))
}
