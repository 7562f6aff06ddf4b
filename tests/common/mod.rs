//! Test fixtures: real HTTP agents on 127.0.0.1 and temp-dir databases.
#![allow(dead_code)]

pub mod etcd;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::{
    InvocationResult, RoutingOptions, RoutingStrategy, ToolCategory, ToolDispatcher, ToolError,
};

/// How a test agent answers `POST /invoke`.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with `{"agent": name, "tool": .., "input": .., "session_id": ..}`.
    Echo,
    /// Sleep, then echo.
    Slow(Duration),
    /// This status with a short text body.
    Status(u16),
    /// 200 with a body that is not JSON.
    NotJson,
    /// This status (429 or 503) with `Retry-After: seconds`.
    RetryAfter(u16, u64),
    /// 200 with a JSON string body of this many bytes.
    Huge(usize),
}

pub struct TestAgent {
    pub name: String,
    pub endpoint: String,
    pub hits: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub healthy: Arc<AtomicBool>,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct AgentState {
    name: String,
    hits: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    healthy: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn invoke(State(s): State<AgentState>, Json(body): Json<serde_json::Value>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    s.requests.lock().unwrap().push(body.clone());
    let behaviour = s.behaviour.lock().unwrap().clone();
    let echo = || {
        Json(serde_json::json!({
            "agent": s.name, "tool": body["tool"], "input": body["input"],
            "session_id": body["session_id"], "invocation_id": body["invocation_id"],
        }))
        .into_response()
    };
    match behaviour {
        Behaviour::Echo => echo(),
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            echo()
        }
        Behaviour::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("status {code} from {}", s.name),
        )
            .into_response(),
        Behaviour::NotJson => (StatusCode::OK, "<html>not json</html>").into_response(),
        Behaviour::Huge(bytes) => {
            (StatusCode::OK, format!("\"{}\"", "x".repeat(bytes))).into_response()
        }
        Behaviour::RetryAfter(code, seconds) => (
            StatusCode::from_u16(code).unwrap(),
            [(axum::http::header::RETRY_AFTER, seconds.to_string())],
            "busy",
        )
            .into_response(),
    }
}

async fn health(State(s): State<AgentState>) -> StatusCode {
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl TestAgent {
    /// Starts an agent on an ephemeral 127.0.0.1 port (inside a tokio runtime).
    pub async fn start(name: &str, behaviour: Behaviour) -> TestAgent {
        let state = AgentState {
            name: name.to_string(),
            hits: Arc::new(AtomicUsize::new(0)),
            behaviour: Arc::new(Mutex::new(behaviour)),
            healthy: Arc::new(AtomicBool::new(true)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route("/invoke", post(invoke))
            .route("/health", get(health))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestAgent {
            name: name.to_string(),
            endpoint: format!("http://{addr}/invoke"),
            hits: state.hits,
            behaviour: state.behaviour,
            healthy: state.healthy,
            requests: state.requests,
            server,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A port on 127.0.0.1 for a process the test starts: free a moment ago,
/// never handed out twice in one test binary, and below Linux's ephemeral
/// range (32768 up), so no outgoing connection (etcd's peers, a node's
/// calls) can be given it before the process binds it. That race once
/// kept an etcd member from starting while the test binary's other tests
/// ran.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    use std::sync::LazyLock;
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 32_768 - FIRST;
    // Each test binary starts at its own place, in case two run at once.
    static NEXT: LazyLock<AtomicU32> =
        LazyLock::new(|| AtomicU32::new(std::process::id().wrapping_mul(7_919) % PORTS));
    for _ in 0..PORTS {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % PORTS) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {FIRST} and 32767");
}

/// An endpoint on 127.0.0.1 where nothing listens.
pub fn refused_endpoint() -> String {
    format!("http://127.0.0.1:{}/invoke", free_port())
}

pub fn temp_db() -> (tempfile::TempDir, switchboard::Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = switchboard::Database::open(dir.path().join("db")).unwrap();
    (dir, db)
}

/// Every dispatch record under `prefix`, decoded.
pub fn records(
    db: &switchboard::Database,
    prefix: &str,
) -> Vec<switchboard::namespace::DispatchRecord> {
    db.scan(prefix)
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

/// An endpoint on 127.0.0.1 that accepts each connection, reads the request,
/// and closes the socket without answering.
pub async fn closing_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            read_request(&socket).await;
            drop(socket);
        }
    });
    (format!("http://{addr}/invoke"), task)
}

/// An endpoint on 127.0.0.1 that answers 200 with a `Content-Length` longer
/// than the body it sends, then closes the socket.
pub async fn truncating_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            read_request(&socket).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\": ";
            if socket.writable().await.is_ok() {
                let _ = socket.try_write(answer);
            }
            drop(socket);
        }
    });
    (format!("http://{addr}/invoke"), task)
}

/// Reads one whole HTTP/1.1 request (headers and a `Content-Length` body).
async fn read_request(socket: &tokio::net::TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&request).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return;
            }
        }
    }
}

/// Registers a local agent that echoes its tool and input, tagged with its id.
pub fn echo_agent(d: &ToolDispatcher, id: &'static str, tools: Vec<ToolCategory>) {
    d.register_local_agent(
        id,
        tools,
        move |tool: String, input: serde_json::Value| async move {
            Ok::<_, ToolError>(json!({ "agent": id, "tool": tool, "echo": input }))
        },
    )
    .unwrap();
}

/// One `run` call in the code category with `strategy`.
pub async fn call(
    d: &ToolDispatcher,
    strategy: RoutingStrategy,
) -> switchboard::Result<InvocationResult> {
    d.invoke(
        "run",
        ToolCategory::Code,
        json!({}),
        RoutingOptions::new().with_strategy(strategy),
    )
    .await
}

/// A plain `reqwest` client for talking to a server under test (this build
/// of reqwest needs the process's TLS provider installed first).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().unwrap()
}

/// [`http_client`]'s builder, for tests that tune the client.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    switchboard::TlsTrust::install_crypto_provider();
    reqwest::Client::builder()
}

/// The `switchboard` binary, with no server or token from the environment.
pub fn switchboard() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_URL")
        .env("RUST_LOG", "warn");
    c
}

/// A process output stream as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` and returns its stdout, failing the test with both streams.
pub fn ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `cmd`, expecting status 1; returns its stderr, then its stdout.
pub fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?}:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    format!("{}{}", text(&out.stderr), text(&out.stdout))
}

/// A `switchboard serve` child on a free 127.0.0.1 port, over its own
/// temp-dir data directory; killed on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `switchboard serve` with `extra` appended to a config that
    /// sets the listen address and data directory, and `env` set, and waits
    /// (30 s at most) until `/healthz` answers to `client`.
    pub async fn start(extra: &str, env: &[(&str, &str)], client: &reqwest::Client) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = switchboard()
            .envs(env.iter().copied())
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("switchboard serve exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "switchboard serve did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServeProcess {
            child,
            port,
            base,
            dir,
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `handler` as an MCP server over streamable HTTP on 127.0.0.1:
/// its `/mcp` URL, and the task serving it (abort it to stop the server).
pub async fn mcp_http_agent<H>(handler: H) -> (String, tokio::task::JoinHandle<()>)
where
    H: rmcp::ServerHandler + Clone + Send + Sync + 'static,
{
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = Router::new().nest_service("/mcp", service);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), task)
}
