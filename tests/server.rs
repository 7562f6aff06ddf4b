//! The HTTP API on a real listener: routes, errors, the token, policies, and
//! hardening (redirects, address policy, host names, connection and request
//! limits, slow clients, hostile agent answers, read policies).

mod common;

use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::server::{run, AppState};
use switchboard::ToolDispatcher;
use tokio::sync::Notify;

struct Api {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    dispatcher: ToolDispatcher,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

const BODY_LIMIT: usize = 16 * 1024;

impl Api {
    async fn start(token: Option<&str>) -> Api {
        let (dir, db) = temp_db();
        let dispatcher = ToolDispatcher::new(db);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(dispatcher.clone(), token.map(String::from));
        tokio::spawn(run(
            listener,
            state,
            BODY_LIMIT,
            Duration::from_secs(5),
            async {
                let _ = stopped.await;
            },
        ));
        Api {
            base,
            client: common::http_client(),
            token: token.map(String::from),
            dispatcher,
            _dir: dir,
            _stop: stop,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path);
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

/// A 4xx with the stable error shape and the given code.
fn assert_client_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The routes the API serves; docs/openapi.json must describe exactly these.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/.well-known/oauth-protected-resource"),
    ("get", "/.well-known/oauth-protected-resource/mcp"),
    ("get", "/v1/agents"),
    ("get", "/v1/tools"),
    ("get", "/v1/agents/{id}"),
    ("put", "/v1/agents/{id}"),
    ("delete", "/v1/agents/{id}"),
    ("post", "/v1/invoke"),
    ("get", "/v1/metrics"),
    ("get", "/v1/cluster"),
    ("get", "/metrics"),
    ("get", "/v1/scan"),
    ("get", "/v1/calls/stream"),
    ("get", "/v1/policies"),
    ("post", "/v1/policies"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens"),
    ("delete", "/v1/tokens/{id}"),
    ("get", "/v1/policies/{name}"),
    ("put", "/v1/policies/{name}"),
    ("delete", "/v1/policies/{name}"),
    ("post", "/v1/policies/{name}/check"),
    ("post", "/mcp"),
    ("get", "/mcp"),
    ("delete", "/mcp"),
    ("get", "/.well-known/agent-card.json"),
    ("post", "/a2a"),
];

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_remove("SWITCHBOARD_TOKEN").env("RUST_LOG", "warn");
    c
}

/// A `switchboard serve` child process; killed on drop.
struct Server {
    process: common::ServeProcess,
    client: reqwest::Client,
}

impl std::ops::Deref for Server {
    type Target = common::ServeProcess;

    fn deref(&self) -> &common::ServeProcess {
        &self.process
    }
}

impl Server {
    /// Starts the binary with `extra` appended to a config that sets the
    /// listen address and the data directory, and waits for `/healthz`.
    async fn start(extra: &str) -> Server {
        // No pooled connections: they would hold connection slots.
        let client = common::http_client_builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Server {
            process: common::ServeProcess::start(extra, &[], &client).await,
            client,
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

    /// Registering an agent at each of `endpoints` is refused (400) by the
    /// network policy.
    async fn refuses_by_network_policy(&self, endpoints: &[&str]) {
        for endpoint in endpoints {
            let (status, body) = self.register("refused", endpoint).await;
            assert_eq!(status, 400, "{endpoint}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("network policy"), "{endpoint}: {body}");
        }
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

const HIDE_AGENT_POLICY: &str = r#"# scope: agents/**
# ops: get
package switchboard.hide_agents

import rego.v1

deny contains "hidden agents are not listed" if {
	input.key == "agents/hidden"
}
"#;

#[tokio::test]
async fn agents_can_be_registered_listed_read_and_removed() {
    let api = Api::start(None).await;
    let agent = TestAgent::start("code_agent", Behaviour::Echo).await;
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/agents/code_agent",
            Some(json!({"tools": ["code", "shell"], "endpoint": agent.endpoint, "priority": 10, "timeout_ms": 2000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["agent_id"], "code_agent");
    assert_eq!(body["tools"], json!(["code", "shell"]));
    assert_eq!(body["priority"], 10);
    let (status, list) = api.get("/v1/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, one) = api.get("/v1/agents/code_agent").await;
    assert_eq!(
        (status, one["timeout_ms"].as_u64()),
        (StatusCode::OK, Some(2000))
    );
    let (status, body) = api.get("/v1/agents/nobody").await;
    assert_client_error(status, &body, StatusCode::NOT_FOUND, "unknown_agent");
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/agents/code_agent", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .send(reqwest::Method::DELETE, "/v1/agents/code_agent", None)
        .await;
    assert_client_error(status, &body, StatusCode::NOT_FOUND, "unknown_agent");
    assert!(api.dispatcher.list_agents().is_empty());
}

#[tokio::test]
async fn bad_requests_get_json_4xx_and_change_nothing() {
    let api = Api::start(None).await;
    let agent = TestAgent::start("a", Behaviour::Echo).await;
    let good = json!({"tools": ["code"], "endpoint": agent.endpoint});
    assert_eq!(
        api.send(reqwest::Method::PUT, "/v1/agents/a", Some(good.clone()))
            .await
            .0,
        StatusCode::OK
    );
    let before = api
        .dispatcher
        .database()
        .scan("")
        .map(|kv| kv.unwrap())
        .collect::<Vec<_>>();

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v1/agents/a",
            json!({"tools": ["code"], "endpoint": agent.endpoint, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "/v1/agents/a",
            json!({"tools": ["no spaces"], "endpoint": agent.endpoint}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "/v1/agents/a",
            json!({"tools": [], "endpoint": agent.endpoint}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "/v1/agents/a",
            json!({"tools": ["code"], "endpoint": "ftp://127.0.0.1/x"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "/v1/agents/bad%20id",
            good.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "/v1/agents/a",
            json!({"tools": ["code"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
    ];
    for (path, body, expected, code) in cases {
        let (status, answer) = api
            .send(reqwest::Method::PUT, path, Some(body.clone()))
            .await;
        assert_client_error(status, &answer, expected, code);
    }
    // Malformed JSON, no content type, an oversized body.
    let r = api
        .req(reqwest::Method::PUT, "/v1/agents/a")
        .header("content-type", "application/json")
        .body("{\"tools\": [")
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_client_error(
        status,
        &serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    let r = api
        .req(reqwest::Method::PUT, "/v1/agents/a")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_client_error(
        status,
        &serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let huge = json!({"tools": ["code"], "endpoint": agent.endpoint, "health_url": "x".repeat(BODY_LIMIT)});
    let (status, answer) = api
        .send(reqwest::Method::PUT, "/v1/agents/a", Some(huge))
        .await;
    assert_client_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );

    let invokes: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"tool": "t", "category": "code", "strategy": "fanciest"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            json!({"tool": "t", "category": "code", "strategy": "sticky"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"tool": "bad tool", "category": "code"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"tool": "t", "category": "code", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            json!({"category": "code"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            json!({"tool": "t", "category": "database"}),
            StatusCode::SERVICE_UNAVAILABLE,
            "no_agent_available",
        ),
    ];
    for (body, expected, code) in invokes {
        let (status, answer) = api
            .send(reqwest::Method::POST, "/v1/invoke", Some(body))
            .await;
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    // A body that does not parse is described with the path of the field
    // at fault, as every JSON route's is.
    let (_, answer) = api
        .send(
            reqwest::Method::POST,
            "/v1/invoke",
            Some(json!({"tool": "t", "category": "code", "strategy": "fanciest"})),
        )
        .await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("strategy"), "{answer}");
    for path in [
        "/v1/scan",
        "/v1/scan?prefix=a%20b",
        "/v1/scan?prefix=tools/&limit=0",
        "/v1/scan?prefix=tools/&limit=x",
    ] {
        let (status, answer) = api.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    let (status, answer) = api.get("/v1/scan?prefix=tools/&cluster=true").await;
    assert_client_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_input");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("not in a cluster"), "{answer}");
    let (status, answer) = api.get("/v1/nothing-here").await;
    assert_client_error(status, &answer, StatusCode::NOT_FOUND, "not_found");

    let after = api
        .dispatcher
        .database()
        .scan("")
        .map(|kv| kv.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(before, after, "rejected requests change nothing stored");
}

/// An MCP registration that is not valid says what is wrong with it, not
/// only that it matched neither form of `mcp`.
#[tokio::test]
async fn mcp_registrations_say_what_is_wrong_with_them() {
    let api = Api::start(None).await;
    let url = "http://127.0.0.1:9/mcp";
    let cases: Vec<(Value, StatusCode, &str, &[&str])> = vec![
        (
            json!({"url": url, "oauth": {"client_id": "sb"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["client_secret", "private_key", "${VAR}"],
        ),
        (
            json!({"url": url, "oauth": {"client_secret": "${S}"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            &["missing field `client_id`"],
        ),
        (
            json!({"url": url, "tool_name": ["a"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            &["unknown field `tool_name`"],
        ),
        (
            json!({"url": url, "oauth": null}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            &["null", "leave the field out"],
        ),
        (
            json!({"url": url, "oauth": {"client_id": "sb", "client_secret": "${S}", "token_url": null}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            &["leave the field out"],
        ),
    ];
    for (mcp, expected, code, said) in cases {
        let body = json!({"tools": ["code"], "mcp": mcp});
        let (status, answer) = api
            .send(reqwest::Method::PUT, "/v1/agents/m", Some(body))
            .await;
        assert_client_error(status, &answer, expected, code);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        for part in said {
            assert!(message.contains(part), "{mcp}: {message}");
        }
        assert!(!message.contains("untagged"), "{mcp}: {message}");
    }
    // The schema says null is a value of discovery_ttl_ms, and it is.
    let (status, answer) = api
        .send(
            reqwest::Method::PUT,
            "/v1/agents/m",
            Some(json!({"tools": ["code"], "mcp": {"url": url, "discovery_ttl_ms": null}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn invoke_metrics_and_audit_scan() {
    let api = Api::start(None).await;
    let agent = TestAgent::start("code_agent", Behaviour::Echo).await;
    api.send(
        reqwest::Method::PUT,
        "/v1/agents/code_agent",
        Some(json!({"tools": ["code"], "endpoint": agent.endpoint})),
    )
    .await;
    for i in 0..3 {
        let (status, r) = api
            .send(
                reqwest::Method::POST,
                "/v1/invoke",
                Some(json!({"tool": "code_exec", "category": "code", "input": {"i": i}, "strategy": "sticky", "session_id": "s1"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(r["agent_id"], "code_agent");
        assert_eq!(r["output"]["input"], json!({"i": i}));
        assert_eq!(agent.requests.lock().unwrap()[i]["session_id"], "s1");
    }
    let (status, m) = api.get("/v1/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            m["code_agent"]["total"].as_u64(),
            m["code_agent"]["success_rate"].as_f64()
        ),
        (Some(3), Some(1.0))
    );
    let text = api
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "switchboard_agent_invocations_total{agent=\"code_agent\",outcome=\"success\"} 3"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE switchboard_agent_active_tasks gauge"));
    assert!(text.contains("switchboard_agent_healthy{agent=\"code_agent\"} 1"));

    // Paging through the audit trail.
    let (status, page) = api
        .get("/v1/scan?prefix=tools/code/code_exec/&limit=2")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["value"]["status"], "succeeded");
    let next = page["next_after"].as_str().unwrap().to_string();
    let (_, rest) = api
        .get(&format!(
            "/v1/scan?prefix=tools/code/code_exec/&after={next}"
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_after"].is_null());
    let (_, sessions) = api.get("/v1/scan?prefix=sessions/").await;
    assert_eq!(sessions["items"][0]["value"]["agent_id"], "code_agent");
}

#[tokio::test]
async fn policies_can_be_listed_and_loaded_and_they_apply() {
    let api = Api::start(None).await;
    let agent = TestAgent::start("intern", Behaviour::Echo).await;
    api.send(
        reqwest::Method::PUT,
        "/v1/agents/intern",
        Some(json!({"tools": ["sensitive"], "endpoint": agent.endpoint})),
    )
    .await;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/sensitive_tools.rego"
    ))
    .unwrap();
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/policies",
            Some(json!({"scope": "tools/sensitive/**", "source": source})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"name": "switchboard.sensitive_tools", "scope": "tools/sensitive/**"})
    );
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/policies",
            Some(json!({"scope": "a/**", "source": "package x\nallow if {"})),
        )
        .await;
    assert_client_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "policy_invalid",
    );
    let (_, list) = api.get("/v1/policies").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/invoke",
            Some(json!({"tool": "rotate", "category": "sensitive"})),
        )
        .await;
    assert_client_error(status, &body, StatusCode::FORBIDDEN, "policy_denied");
    assert_eq!(agent.hits(), 0);
}

#[tokio::test]
async fn the_token_guards_every_route_but_healthz() {
    let api = Api::start(Some("s3cret-token")).await;
    let anonymous = common::http_client();
    let r = anonymous
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for path in [
        "/v1/agents",
        "/v1/metrics",
        "/metrics",
        "/v1/scan?prefix=tools/",
        "/v1/policies",
        "/v1/agents/x",
    ] {
        let r = anonymous
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_client_error(
            status,
            &serde_json::from_str(&r.text().await.unwrap()).unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let r = anonymous
            .get(format!("{}{path}", api.base))
            .bearer_auth("s3cret-tokem")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = anonymous
        .post(format!("{}/v1/invoke", api.base))
        .header("content-type", "application/json")
        .body(json!({"tool": "t", "category": "code"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["connection"],
        "close",
        "a refused request's unread body ends its connection, and the answer says so"
    );
    let r = anonymous
        .put(format!("{}/v1/agents/x", api.base))
        .header("content-type", "application/json")
        .body(json!({}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("/v1/agents").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_description_matches_the_routes() {
    let doc = openapi();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And each documented route is served (not the fallback, not 405).
    let api = Api::start(None).await;
    for (method, path) in ROUTES {
        let method: reqwest::Method = method.to_uppercase().parse().unwrap();
        if *path == "/v1/calls/stream" {
            // An event stream does not end: its headers say it is served.
            let r = api.req(method, path).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()["content-type"], "text/event-stream", "{path}");
            continue;
        }
        let (status, body) = api
            .send(method, &path.replace("{id}", "x"), Some(json!({})))
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(body["error"]["code"] != "not_found", "{path} is not routed");
    }
}

fn openapi() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap()
}

/// The constraints docs/openapi.json states are the ones the server's
/// validators enforce: the document quotes the crate's own constants, and
/// the property test below holds the validators to those patterns.
#[test]
fn the_openapi_constraints_are_the_validators() {
    use switchboard::namespace::{ID_PATTERN, KEY_PREFIX_PATTERN, MAX_ID_LEN, MAX_KEY_LEN};
    let doc = openapi();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Id"]["pattern"], ID_PATTERN);
    assert_eq!(schemas["Id"]["maxLength"], MAX_ID_LEN);
    assert_eq!(schemas["Category"]["pattern"], ID_PATTERN);
    assert_eq!(
        schemas["Invoke"]["properties"]["session_id"]["pattern"],
        ID_PATTERN
    );
    let scan = &doc["paths"]["/v1/scan"]["get"]["parameters"];
    let param = |name: &str| {
        scan.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(param("prefix")["schema"]["pattern"], KEY_PREFIX_PATTERN);
    assert_eq!(param("prefix")["schema"]["maxLength"], MAX_KEY_LEN);
    assert_eq!(
        param("limit")["schema"]["maximum"],
        switchboard::server::MAX_SCAN_PAGE
    );
    let register = &schemas["RegisterAgent"]["properties"];
    assert_eq!(
        register["timeout_ms"]["maximum"],
        switchboard::routing::MAX_AGENT_TIMEOUT.as_millis() as u64
    );
    for url in ["endpoint", "health_url"] {
        assert_eq!(
            register[url]["pattern"],
            switchboard::routing::ENDPOINT_PATTERN
        );
        assert_eq!(
            register[url]["maxLength"],
            switchboard::routing::MAX_ENDPOINT_LEN
        );
    }
    assert_eq!(register["priority"]["minimum"], i32::MIN);
    assert_eq!(register["priority"]["maximum"], i32::MAX);
    assert_eq!(register["max_concurrency"]["maximum"], u32::MAX);
    assert_eq!(
        schemas["Invoke"]["properties"]["max_attempts"]["maximum"],
        u32::MAX
    );
    let oauth = &schemas["McpServer"]["properties"]["oauth"]["properties"];
    assert_eq!(
        oauth["signing_algorithm"]["enum"],
        json!(switchboard::namespace::ASSERTION_ALGORITHMS)
    );
    assert_eq!(
        oauth["scopes"]["maxItems"],
        switchboard::namespace::MAX_OAUTH_SCOPES
    );
    assert_eq!(
        oauth["token_exchange"]["properties"]["subject_token_type"]["enum"],
        json!(switchboard::namespace::SUBJECT_TOKEN_TYPES)
    );
    let codes: Vec<&str> = schemas["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes, switchboard::server::ERROR_CODES);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

    /// `validate_id` accepts exactly the strings `ID_PATTERN` matches.
    #[test]
    fn ids_are_valid_exactly_when_the_documented_pattern_matches(
        id in "[A-Za-z0-9._:/ -]{0,3}|[a-z0-9._:-]{120,130}|\\PC{0,6}"
    ) {
        let pattern = regex::Regex::new(switchboard::namespace::ID_PATTERN).unwrap();
        proptest::prop_assert_eq!(
            switchboard::namespace::validate_id("id", &id).is_ok(),
            pattern.is_match(&id),
            "{:?}", id
        );
    }

    /// The scan-prefix check accepts exactly the strings `KEY_PREFIX_PATTERN`
    /// matches within `MAX_KEY_LEN` bytes.
    #[test]
    fn prefixes_are_valid_exactly_when_the_documented_pattern_matches(
        prefix in "([a-z:_]{0,2}/?){0,4}|([a-z]{100,128}/){7,9}|\\PC{0,5}|(a/){31,33}"
    ) {
        use switchboard::namespace::{validate_prefix, KEY_PREFIX_PATTERN, MAX_KEY_LEN};
        let pattern = regex::Regex::new(KEY_PREFIX_PATTERN).unwrap();
        proptest::prop_assert_eq!(
            validate_prefix(&prefix).is_ok(),
            pattern.is_match(&prefix) && prefix.len() <= MAX_KEY_LEN,
            "{:?}", prefix
        );
    }
}

#[tokio::test]
async fn mcp_requests_without_accept_are_served() {
    // No Accept header means "any media type"; only an Accept that names
    // neither JSON nor an event stream is refused.
    let api = Api::start(None).await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}
    });
    let post = |accept: Option<&'static str>| {
        let mut r = http_client()
            .post(format!("{}/mcp", api.base))
            .header("content-type", "application/json")
            .body(initialize.to_string());
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        post(Some("text/html")).await.unwrap().status(),
        StatusCode::NOT_ACCEPTABLE
    );
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
    server
        .refuses_by_network_policy(&[
            "http://169.254.169.254/latest/meta-data",
            "http://169.254.1.1:8080/invoke",
            "http://[fe80::1]/invoke",
            "http://[::ffff:169.254.169.254]/invoke",
            "http://100.100.100.200/invoke",
        ])
        .await;
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

/// `serve` installs its policies before anything writes: the recovery of a
/// call a stopped process left in flight is itself judged by them.
#[tokio::test(flavor = "multi_thread")]
async fn serve_recovers_interrupted_calls_under_its_policies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = switchboard::namespace::new_invocation_id();
    let record_key = format!("tools/guarded/wipe/{id}");
    {
        let db = switchboard::Database::open(&data).unwrap();
        let record = json!({
            "invocation_id": id, "tool": "wipe", "category": "guarded", "agent_id": "a1",
            "session_id": null, "strategy": "round_robin", "status": "in_flight",
            "attempts": [{"agent_id": "a1", "outcome": "in_flight", "latency_ms": 0.0, "error": null}],
            "started_at_ms": 1, "finished_at_ms": null, "latency_ms": null, "error": null
        });
        let mut tx = db.writes_to_reserved_namespaces().transaction();
        tx.put(&record_key, record.to_string().as_bytes()).unwrap();
        tx.put(&format!("inflight/{id}"), record_key.as_bytes())
            .unwrap();
        tx.commit().unwrap();
    }
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("hold.rego"),
        "# scope: tools/guarded/**\npackage hold\nimport rego.v1\n\
         deny contains \"interrupted guarded calls are held for review\" if input.context.action == \"recover\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut child = switchboard()
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--policies", policies.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let db = switchboard::Database::open(&data).unwrap();
    let record: Value = serde_json::from_slice(&db.get(&record_key).unwrap().unwrap()).unwrap();
    assert_eq!(
        record["status"], "in_flight",
        "the policy refused the recovery write, so the record is as the stopped process left it"
    );
    let refused: Vec<switchboard::Decision> = db
        .scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .filter(|d: &switchboard::Decision| {
            d.key == record_key && d.decision == switchboard::DecisionKind::Deny
        })
        .collect();
    assert!(
        refused.iter().any(|d| d.context["action"] == "recover"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_does_not_cut_its_call_short() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let release = release.clone();
        App::start(Router::new().route(
            "/invoke",
            post(move || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    r#"{"done": true}"#
                }
            }),
        ))
        .await
    };
    let server = Server::start("").await;
    server.register("slow", &slow.url("/invoke")).await;
    // The client gives up while the agent works: its connection closes.
    let gave_up = server
        .client
        .post(format!("{}/v1/invoke", server.base))
        .header("content-type", "application/json")
        .body(r#"{"tool": "t", "category": "code"}"#)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    release.notify_one();
    // The call still finishes and is recorded as the agent answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = server
            .send(reqwest::Method::GET, "/v1/scan?prefix=tools/code/t/", None)
            .await;
        assert_eq!(status, 200, "{page}");
        let statuses: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["value"]["status"].as_str())
            .collect();
        if statuses == ["succeeded"] {
            break;
        }
        assert!(
            Instant::now() < deadline && statuses.iter().all(|s| *s == "in_flight"),
            "the call ended as {statuses:?}, not succeeded: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sticky calls of one session queue on one session lock (the stripe is
/// keyed per process, so one session id is the only sure collision). The
/// first call's commit is held by a before-hook that may block until
/// `/healthz` has answered; the others, four times as many calls as the
/// server has workers, wait for the lock meanwhile. Waiting must not hold a
/// worker, so `/healthz` answers while the first commit is still held; a
/// lock that blocked its waiters' threads would leave no worker to answer it
/// until the hook gave up. Every later commit sleeps 200 ms, as a slow Rego
/// evaluation might.
#[test]
fn healthz_answers_while_sticky_calls_wait_on_one_session_lock() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const WORKERS: usize = 2;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap();
    // Client and agent run apart, so only the server's workers are at stake.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let agent = client_rt.block_on(TestAgent::start("a", Behaviour::Echo));
    let (_dir, db) = temp_db();
    let commits = Arc::new(AtomicUsize::new(0));
    let holding = Arc::new(AtomicBool::new(false));
    let healthz_answered = Arc::new(AtomicBool::new(false));
    {
        let (commits, holding, healthz_answered) =
            (commits.clone(), holding.clone(), healthz_answered.clone());
        switchboard::PolicyEngine::new(&db)
            .with_blocking_hooks()
            .before_write("sessions/**", move |_k, _v, _ctx| {
                if commits.fetch_add(1, Ordering::SeqCst) == 0 {
                    holding.store(true, Ordering::SeqCst);
                    // Bounded, so a stalled server fails the test instead of hanging it.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !healthz_answered.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    holding.store(false, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(200));
                switchboard::PolicyAction::Allow
            })
            .unwrap();
    }
    let base = {
        let _runtime = server_rt.enter();
        let dispatcher = ToolDispatcher::new(db);
        dispatcher
            .register_agent(
                "a",
                switchboard::AgentConfig::new()
                    .with_tools(vec![switchboard::ToolCategory::Code])
                    .with_endpoint(agent.endpoint.clone()),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(dispatcher, None);
        server_rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            run(
                listener,
                state,
                BODY_LIMIT,
                Duration::from_secs(5),
                std::future::pending(),
            )
            .await
        });
        base
    };
    client_rt.block_on(async {
        let client = http_client();
        let calls: Vec<_> = (0..4 * WORKERS)
            .map(|_| {
                let request = client
                    .post(format!("{base}/v1/invoke"))
                    .header("content-type", "application/json")
                    .body(
                        json!({"tool": "t", "category": "code", "strategy": "sticky",
                               "session_id": "one-session"})
                        .to_string(),
                    );
                tokio::spawn(async move {
                    let resp = request.send().await.unwrap();
                    (resp.status(), resp.text().await.unwrap())
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holding.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "no sticky call reached its commit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
        let first_commit_still_held = holding.load(Ordering::SeqCst);
        healthz_answered.store(true, Ordering::SeqCst);
        assert_eq!(healthz.status(), StatusCode::OK);
        assert!(
            first_commit_still_held,
            "/healthz was answered only after the first commit gave up waiting: the calls \
             waiting for the session lock held every worker"
        );
        for call in calls {
            let (status, body) = call.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    });
    assert_eq!(commits.load(Ordering::SeqCst), 4 * WORKERS);
    server_rt.shutdown_background();
}

/// `tools/call` on `/mcp` is an invoke: it takes a slot of
/// `limits.max_inflight_invokes` like `POST /v1/invoke`, whichever way in
/// holds the one slot, the other is refused, and a refused call never
/// reaches the agent.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_tool_calls_share_the_in_flight_invoke_cap() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::ServiceExt;
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (e, r, h) = (entered.clone(), release.clone(), hits.clone());
    let slow = App::start(Router::new().route(
        "/invoke",
        post(move || {
            let (e, r) = (e.clone(), r.clone());
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                e.notify_one();
                r.notified().await;
                "{\"done\":true}"
            }
        }),
    ))
    .await;
    let server = Arc::new(Server::start("[limits]\nmax_inflight_invokes = 1\n").await);
    let (status, body) = server.register("slow", &slow.url("/invoke")).await;
    assert_eq!(status, 200, "{body}");
    let transport =
        rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{}/mcp", server.base));
    let mcp = ().serve(transport).await.unwrap();
    let mcp_call = || {
        let mut args = serde_json::Map::new();
        args.insert("tool".into(), json!("t"));
        args.insert("input".into(), json!({}));
        CallToolRequestParams::new("code").with_arguments(args)
    };

    // An invoke holds the slot: a tool call is refused, naming the limit.
    let invoke = tokio::spawn({
        let server = server.clone();
        async move { server.invoke().await }
    });
    entered.notified().await;
    let refused = tokio::select! {
        refused = mcp.call_tool(mcp_call()) => refused.unwrap(),
        _ = entered.notified() => panic!("the tool call reached the agent while an invoke held the only slot"),
    };
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let text = serde_json::to_string(&refused.content).unwrap();
    assert!(text.contains("limits.max_inflight_invokes"), "{text}");
    release.notify_one();
    let (status, body) = invoke.await.unwrap();
    assert_eq!(status, 200, "{body}");

    // A tool call holds the slot: an invoke gets 503.
    let peer = mcp.peer().clone();
    let call = tokio::spawn(async move { peer.call_tool(mcp_call()).await });
    entered.notified().await;
    let (status, body) = tokio::select! {
        answer = server.invoke() => answer,
        _ = entered.notified() => panic!("the invoke reached the agent while a tool call held the only slot"),
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    release.notify_one();
    let answered = call.await.unwrap().unwrap();
    assert_ne!(answered.is_error, Some(true), "{answered:?}");
    assert_eq!(answered.structured_content.unwrap()["output"]["done"], true);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Addresses that reach a denied one by another spelling are refused too:
/// the unspecified address reaches this host, and an IPv6 address carrying
/// an IPv4 one (NAT64, IPv4-compatible) reaches that IPv4 address.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_of_denied_addresses_are_refused_at_registration() {
    let server = Server::start("[network]\ndeny = [\"127.0.0.0/8\", \"::1/128\"]\n").await;
    server
        .refuses_by_network_policy(&[
            "http://0.0.0.0:9/invoke",
            "http://[::]:9/invoke",
            "http://[::ffff:0.0.0.0]:9/invoke",
            "http://[64:ff9b::7f00:1]:9/invoke",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "http://[::a9fe:a9fe]/latest/meta-data",
            "http://[64:ff9b::6464:64c8]/invoke",
        ])
        .await;
    let (status, body) = server.register("remote", "http://192.0.2.1:9/invoke").await;
    assert_eq!(status, 200, "{body}");
}
