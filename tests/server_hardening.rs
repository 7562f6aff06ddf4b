//! The server surface under hostile or careless use, against the real
//! `switchboard serve` binary on 127.0.0.1: agents that redirect or answer
//! with huge documents, denied addresses, foreign Host headers, slow or too
//! many clients, and the policies the CLI and the server start under.

mod common;

use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use common::free_port;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_remove("SWITCHBOARD_TOKEN").env("RUST_LOG", "warn");
    c
}

/// A `switchboard serve` child process; killed on drop.
struct Server {
    child: Child,
    port: u16,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `extra` appended to a config that sets the
    /// listen address and the data directory, and waits for `/healthz`.
    async fn start(extra: &str) -> Server {
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
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // No pooled connections: they would hold connection slots.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("switchboard serve exited: {status}");
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child,
            port,
            base,
            client,
            _dir: dir,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn register(&self, id: &str, endpoint: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/agents/{id}"),
            Some(json!({"tools": ["code"], "endpoint": endpoint})),
        )
        .await
    }

    async fn invoke(&self) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/invoke",
            Some(json!({"tool": "t", "category": "code", "max_attempts": 1})),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP app on an ephemeral 127.0.0.1 port, stopped when dropped.
struct App {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(router: Router) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        App { addr, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An agent answering every call with this status, headers and body.
async fn fixed_agent(status: u16, headers: Vec<(&'static str, String)>, body: String) -> App {
    App::start(Router::new().route(
        "/invoke",
        post(move || {
            let headers = headers.clone();
            let body = body.clone();
            async move {
                let mut response = (AxumStatus::from_u16(status).unwrap(), body).into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        }),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_redirects_are_not_followed() {
    // What an agent might point Switchboard at: here a "secret" service on
    // loopback standing in for a cloud metadata endpoint.
    let secret = fixed_agent(
        200,
        vec![],
        json!({"secret": "instance-credentials"}).to_string(),
    )
    .await;
    let redirecting = fixed_agent(
        307,
        vec![("location", secret.url("/invoke"))],
        String::new(),
    )
    .await;
    let server = Server::start("").await;
    let (status, _) = server
        .register("redirector", &redirecting.url("/invoke"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server.invoke().await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "agent_failed");
    assert!(!body.to_string().contains("instance-credentials"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn link_local_and_metadata_addresses_are_refused_at_registration() {
    let server = Server::start("").await;
    for endpoint in [
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.1.1:8080/invoke",
        "http://[fe80::1]/invoke",
        "http://[::ffff:169.254.169.254]/invoke",
        "http://100.100.100.200/invoke",
    ] {
        let (status, body) = server.register("meta", endpoint).await;
        assert_eq!(status, 400, "{endpoint}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("network policy"),
            "{body}"
        );
    }
    let (status, body) = server
        .send(
            reqwest::Method::PUT,
            "/v1/agents/meta",
            Some(json!({"tools": ["code"], "endpoint": "http://127.0.0.1:9/invoke", "health_url": "http://169.254.169.254/"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Loopback stays allowed: agents on 127.0.0.1 are the normal case.
    let (status, body) = server.register("local", "http://127.0.0.1:9/invoke").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_deny_applies_to_resolved_addresses_and_allow_overrides_the_default() {
    let agent = fixed_agent(200, vec![], "{\"ok\":true}".into()).await;
    let server = Server::start(
        "[network]\ndeny = [\"127.0.0.0/8\", \"::1/128\"]\nallow = [\"169.254.10.0/24\"]\n",
    )
    .await;
    // A literal address is judged at registration...
    let (status, _) = server.register("literal", &agent.url("/invoke")).await;
    assert_eq!(status, 400);
    // ...a name when it is resolved, at call time.
    let by_name = format!("http://localhost:{}/invoke", agent.addr.port());
    let (status, body) = server.register("named", &by_name).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.invoke().await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("network policy"), "{body}");
    // An allow entry lifts the default link-local refusal for its range.
    let (status, body) = server
        .register("allowed", "http://169.254.10.7/invoke")
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Sends a raw HTTP/1.1 request and returns the whole response text.
fn raw_request(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_for_foreign_host_names_are_refused() {
    let server = Server::start("allowed_hosts = [\"switchboard.internal\"]\n").await;
    let port = server.port;
    let ask = move |host: &str| {
        raw_request(
            port,
            &format!("GET /v1/agents HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    let status_line = |r: &str| r.lines().next().unwrap_or("").to_string();
    let foreign = tokio::task::spawn_blocking(move || ask("rebound.attacker.example"))
        .await
        .unwrap();
    assert!(status_line(&foreign).contains(" 421 "), "{foreign}");
    assert!(foreign.contains("host_not_allowed"), "{foreign}");
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "switchboard.internal".to_string(),
    ] {
        let r = tokio::task::spawn_blocking(move || ask(&host))
            .await
            .unwrap();
        assert!(status_line(&r).contains(" 200 "), "{r}");
    }
}

#[test]
fn serve_on_a_non_loopback_address_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = switchboard()
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{}", free_port()),
            "--data",
            dir.path().join("data").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("serve on 0.0.0.0 without a token kept running");
    assert!(!status.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("SWITCHBOARD_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = Server::start("[limits]\nheader_read_timeout_ms = 300\n").await;
    let port = server.port;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let mut answer = Vec::new();
        // The server closes the connection (EOF, or a reset); a read timeout
        // means it was still waiting for the rest of the headers.
        match stream.read_to_end(&mut answer) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    })
    .await
    .unwrap();
    assert!(closed, "the server kept waiting for the headers");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_answered_503() {
    let server = Server::start("[limits]\nmax_connections = 2\n").await;
    let port = server.port;
    tokio::task::spawn_blocking(move || {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        // Two kept-alive connections hold both slots. The server frees the
        // slot of an earlier connection (its readiness probe) only once it
        // has seen that connection close, so a refusal here is retried.
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while held.len() < 2 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            if answer.starts_with("HTTP/1.1 200") {
                held.push(s);
                continue;
            }
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(Instant::now() < deadline, "no slot came free: {answer}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let third = raw_request(port, &request);
        assert!(third.starts_with("HTTP/1.1 503"), "{third}");
        assert!(
            third.to_ascii_lowercase().contains("retry-after:"),
            "{third}"
        );
        // Closing one frees its slot.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = raw_request(
                port,
                &format!(
                    "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                ),
            );
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the slot was never freed: {r}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn invokes_over_the_in_flight_cap_get_503_with_retry_after() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let gate = App::start(Router::new().route(
        "/invoke",
        post(move || {
            let (e, r) = (e.clone(), r.clone());
            async move {
                e.notify_one();
                r.notified().await;
                "{\"done\":true}"
            }
        }),
    ))
    .await;
    let server = Arc::new(Server::start("[limits]\nmax_inflight_invokes = 1\n").await);
    server.register("gate", &gate.url("/invoke")).await;
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.invoke().await }
    });
    entered.notified().await;
    let resp = server
        .client
        .post(format!("{}/v1/invoke", server.base))
        .header("content-type", "application/json")
        .body(json!({"tool": "t", "category": "code"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    release.notify_one();
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["done"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_is_answered_by_the_request_timeout() {
    let slow = App::start(Router::new().route(
        "/invoke",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            "{}"
        }),
    ))
    .await;
    let server = Server::start("[limits]\nrequest_timeout_ms = 300\n").await;
    server.register("slow", &slow.url("/invoke")).await;
    let (status, body) = server.invoke().await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_or_huge_agent_answers_are_refused() {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let wide = format!("[{}0]", "0,".repeat(600_000));
    let server = Server::start("").await;
    for (name, body) in [("deep", deep), ("wide", wide)] {
        let agent = fixed_agent(200, vec![], body).await;
        server.register(name, &agent.url("/invoke")).await;
        let (status, body) = server.invoke().await;
        assert_eq!(status, 502, "{name}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("too"),
            "{name}: {body}"
        );
        server
            .send(reqwest::Method::DELETE, &format!("/v1/agents/{name}"), None)
            .await;
    }
}

const HIDE_AGENT_POLICY: &str = r#"# scope: agents/**
# ops: get
package switchboard.hide_agents

import rego.v1

deny contains "hidden agents are not listed" if {
	input.key == "agents/hidden"
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_list_honours_read_policies() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("hide.rego"), HIDE_AGENT_POLICY).unwrap();
    let server = Server::start(&format!("policies_dir = \"{}\"", policies.display())).await;
    for id in ["hidden", "shown"] {
        let (status, body) = server.register(id, "http://127.0.0.1:9/invoke").await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, list) = server.send(reqwest::Method::GET, "/v1/agents", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["shown"]);
    let (status, _) = server
        .send(reqwest::Method::GET, "/v1/agents/hidden", None)
        .await;
    assert_eq!(status, 403);
}

#[test]
fn cli_agent_list_and_scan_run_under_the_given_policies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("hide.rego"), HIDE_AGENT_POLICY).unwrap();
    let data = data.to_str().unwrap();
    for id in ["hidden", "shown"] {
        let out = switchboard()
            .args(["agents", "register", id, "--tools", "code"])
            .args(["--endpoint", "http://127.0.0.1:9/invoke", "--data", data])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policies = policies.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = switchboard().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&[
        "agents",
        "list",
        "--json",
        "--data",
        data,
        "--policies",
        policies,
    ]);
    assert!(listed.contains("\"shown\""), "{listed}");
    assert!(!listed.contains("\"hidden\""), "{listed}");
    let scanned = run(&[
        "scan",
        "agents/",
        "--json",
        "--data",
        data,
        "--policies",
        policies,
    ]);
    assert!(scanned.contains("agents/shown"), "{scanned}");
    assert!(!scanned.contains("agents/hidden"), "{scanned}");
    // Without the policies both are there.
    let listed = run(&["agents", "list", "--json", "--data", data]);
    assert!(listed.contains("\"hidden\""), "{listed}");
}
