//! OpenTelemetry traces of `switchboard serve`, received by a real OTLP/HTTP
//! collector that the test runs on 127.0.0.1 and that decodes each export
//! by the protobuf definitions of opentelemetry-proto
//! (`collector/trace/v1`, `trace/v1`, `common/v1`): the span tree of a call
//! that fails over and of one a policy denies (with their commit and policy
//! spans), the caller's trace continued to the agent (an HTTP agent in its
//! headers, an MCP agent in `_meta`), the trace id in the dispatch record;
//! a `tools/call` through `/mcp` as the MCP convention's server and client
//! spans, with the opted-in arguments and result redacted, and in the
//! operation-duration histograms of `/metrics`; and calls that go on
//! unaffected while the collector is down. `scripts/otel-test` checks the
//! same exports with Python's `opentelemetry-proto` as the decoder.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::{Behaviour, ServeProcess, TestAgent};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, ContentBlock,
    ListToolsResult, PaginatedRequestParams, PingRequest, ProtocolVersion, RequestParamsMeta,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{ClientServiceExt, RequestContext, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The caller's trace, continued by Switchboard.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `Span.SpanKind` and `Status.StatusCode` of trace/v1.
const KIND_INTERNAL: u64 = 1;
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;

/// Denies every dispatch to the agent `gated`.
const GATE_POLICY: &str = r#"# scope: tools/**
package switchboard.gate

import rego.v1

deny contains "gated takes no calls" if {
	input.context.action == "dispatch"
	input.context.agent_id == "gated"
}
"#;

/// One exported span: what the test reads of it, ids in hex, attribute
/// values as text.
#[derive(Clone, Debug, Default)]
struct Span {
    /// `service.name` of its resource.
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: u64,
    attributes: Vec<(String, String)>,
    status_code: u64,
    status_message: String,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One field of a protobuf message, by its wire type.
enum Field<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = bytes.split_first().expect("a varint");
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("a varint longer than 10 bytes")
}

/// The fields of a message, in order.
fn fields(mut bytes: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut bytes)),
            1 => {
                let (value, rest) = bytes.split_at(8);
                bytes = rest;
                Field::Fixed(u64::from_le_bytes(value.try_into().unwrap()))
            }
            2 => {
                let len = varint(&mut bytes) as usize;
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                Field::Bytes(value)
            }
            5 => {
                let (value, rest) = bytes.split_at(4);
                bytes = rest;
                Field::Fixed(u64::from(u32::from_le_bytes(value.try_into().unwrap())))
            }
            other => panic!("wire type {other} is not protobuf's"),
        };
        found.push((key >> 3, field));
    }
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("a protobuf string is UTF-8")
}

/// `KeyValue { key = 1, value = 2 }`, the value an `AnyValue { string = 1,
/// bool = 2, int = 3, double = 4 }`.
fn key_value(bytes: &[u8]) -> (String, String) {
    let (mut key, mut value) = (String::new(), String::new());
    for (number, field) in fields(bytes) {
        match (number, field) {
            (1, Field::Bytes(k)) => key = text(k),
            (2, Field::Bytes(any)) => {
                for (number, field) in fields(any) {
                    value = match (number, field) {
                        (1, Field::Bytes(s)) => text(s),
                        (2, Field::Varint(b)) => (b != 0).to_string(),
                        (3, Field::Varint(i)) => (i as i64).to_string(),
                        (4, Field::Fixed(d)) => f64::from_bits(d).to_string(),
                        (number, _) => panic!("AnyValue field {number} of {key}"),
                    };
                }
            }
            _ => {}
        }
    }
    (key, value)
}

/// `Span`: ids 1, 2, 4; `name` 5; `kind` 6; `attributes` 9; `status` 15
/// `{ message = 2, code = 3 }`.
fn span(bytes: &[u8], service: &str) -> Span {
    let mut span = Span {
        service: service.to_string(),
        ..Span::default()
    };
    for (number, field) in fields(bytes) {
        match (number, field) {
            (1, Field::Bytes(id)) => span.trace_id = hex(id),
            (2, Field::Bytes(id)) => span.span_id = hex(id),
            (4, Field::Bytes(id)) => span.parent_span_id = hex(id),
            (5, Field::Bytes(name)) => span.name = text(name),
            (6, Field::Varint(kind)) => span.kind = kind,
            (9, Field::Bytes(kv)) => span.attributes.push(key_value(kv)),
            (15, Field::Bytes(status)) => {
                for (number, field) in fields(status) {
                    match (number, field) {
                        (2, Field::Bytes(m)) => span.status_message = text(m),
                        (3, Field::Varint(code)) => span.status_code = code,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    span
}

/// `ExportTraceServiceRequest { resource_spans = 1 }`, `ResourceSpans
/// { resource = 1 { attributes = 1 }, scope_spans = 2 }`, `ScopeSpans
/// { spans = 2 }`.
fn spans_of(request: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    for (number, field) in fields(request) {
        let (1, Field::Bytes(resource_spans)) = (number, field) else {
            continue;
        };
        let parts = fields(resource_spans);
        let mut service = String::new();
        for (number, field) in &parts {
            if let (1, Field::Bytes(resource)) = (number, field) {
                for (number, field) in fields(resource) {
                    if let (1, Field::Bytes(kv)) = (number, field) {
                        let (key, value) = key_value(kv);
                        if key == "service.name" {
                            service = value;
                        }
                    }
                }
            }
        }
        for (number, field) in &parts {
            if let (2, Field::Bytes(scope_spans)) = (number, field) {
                for (number, field) in fields(scope_spans) {
                    if let (2, Field::Bytes(s)) = (number, field) {
                        spans.push(span(s, &service));
                    }
                }
            }
        }
    }
    spans
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            url: format!("http://{addr}"),
            spans,
            server,
        }
    }

    /// The spans received so far that `wanted` picks, once there are at
    /// least `count` (the exporter sends them in batches, every 100 ms here).
    async fn spans(&self, count: usize, wanted: impl Fn(&Span) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| wanted(s))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not receive {count} such spans in 30 s; it has: {:#?}",
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Takes one export; answers with an empty `ExportTraceServiceResponse`.
async fn receive(
    State(spans): State<Arc<Mutex<Vec<Span>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    spans.lock().unwrap().extend(spans_of(&body));
    ""
}

/// An HTTP agent that answers every call and keeps the `traceparent`
/// header of each.
struct TracedAgent {
    endpoint: String,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    server: tokio::task::JoinHandle<()>,
}

impl TracedAgent {
    async fn start() -> TracedAgent {
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let seen = traceparents.clone();
        let app = Router::new().route(
            "/invoke",
            post(move |headers: HeaderMap, Json(_): Json<Value>| {
                let seen = seen.clone();
                async move {
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock().unwrap().push(traceparent);
                    Json(json!({"ok": true}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TracedAgent {
            endpoint: format!("http://{addr}/invoke"),
            traceparents,
            server,
        }
    }

    fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().unwrap().clone()
    }

    /// Registers this agent with `serve` as `traced`, serving `code`.
    async fn register_with(&self, client: &reqwest::Client, serve: &ServeProcess) {
        let body = json!({"tools": ["code"], "endpoint": self.endpoint});
        register(client, serve, "traced", body).await;
    }
}

impl Drop for TracedAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn register(client: &reqwest::Client, serve: &ServeProcess, id: &str, body: Value) {
    let r = client
        .put(format!("{}/v1/agents/{id}", serve.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
}

async fn invoke(
    client: &reqwest::Client,
    serve: &ServeProcess,
    body: Value,
    traceparent: Option<&str>,
) -> (u16, Value) {
    let mut request = client.post(format!("{}/v1/invoke", serve.base)).json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_and_a_denial_are_exported_as_span_trees_continuing_the_callers_trace() {
    let collector = Collector::start().await;
    let broken = TestAgent::start("broken", Behaviour::Status(500)).await;
    let traced = TracedAgent::start().await;
    let gated = TestAgent::start("gated", Behaviour::Echo).await;
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("gate.rego"), GATE_POLICY).unwrap();
    let client = common::http_client();
    let serve = ServeProcess::start(
        &format!("policies_dir = \"{}\"", policies.path().display()),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_SERVICE_NAME", "switchboard-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &client,
    )
    .await;
    let code = |endpoint: &str, priority: i32| json!({"tools": ["code"], "endpoint": endpoint, "priority": priority});
    register(&client, &serve, "broken", code(&broken.endpoint, 1)).await;
    register(&client, &serve, "traced", code(&traced.endpoint, 0)).await;
    register(
        &client,
        &serve,
        "gated",
        json!({"tools": ["database"], "endpoint": gated.endpoint}),
    )
    .await;

    // A call that fails over from `broken` to `traced`, in the caller's trace.
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, answer) = invoke(
        &client,
        &serve,
        json!({"tool": "run", "category": "code", "strategy": "priority"}),
        Some(&caller),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["agent_id"].as_str(), answer["attempts"].as_u64()),
        (Some("traced"), Some(2))
    );
    let invocation_id = answer["invocation_id"].as_str().unwrap().to_string();

    // The call, two attempts, their intent commits with a policy
    // evaluation in each, and the outcome's commit.
    let trace = collector.spans(8, |s| s.trace_id == CALLER_TRACE).await;
    assert!(trace.iter().all(|s| s.service == "switchboard-under-test"));
    let named = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {trace:#?}"))
            .clone()
    };
    let call = named("execute_tool run");
    assert_eq!(
        call.parent_span_id, CALLER_SPAN,
        "the caller's span is its parent"
    );
    assert_eq!(call.kind, KIND_INTERNAL);
    assert_eq!(call.status_code, STATUS_OK);
    for (key, value) in [
        ("gen_ai.operation.name", "execute_tool"),
        ("gen_ai.tool.name", "run"),
        ("gen_ai.tool.call.id", invocation_id.as_str()),
        ("gen_ai.tool.type", "extension"),
        ("switchboard.category", "code"),
        ("switchboard.strategy", "priority"),
        ("switchboard.agent.id", "traced"),
        ("switchboard.attempts", "2"),
    ] {
        assert_eq!(call.attr(key), Some(value), "{key} of {call:#?}");
    }
    let failed = named("attempt broken");
    let answered = named("attempt traced");
    for attempt in [&failed, &answered] {
        assert_eq!(
            attempt.parent_span_id, call.span_id,
            "a child of the call: {attempt:#?}"
        );
        assert_eq!(attempt.kind, KIND_CLIENT);
        assert_eq!(attempt.attr("server.address"), Some("127.0.0.1"));
        assert!(attempt.attr("server.port").is_some(), "{attempt:#?}");
    }
    assert_eq!(failed.attr("switchboard.agent.id"), Some("broken"));
    assert_eq!(failed.attr("switchboard.attempt.number"), Some("1"));
    assert_eq!(answered.attr("switchboard.attempt.number"), Some("2"));
    assert_eq!(failed.attr("switchboard.attempt.outcome"), Some("failed"));
    assert_eq!(failed.attr("error.type"), Some("failed"));
    assert_eq!(failed.status_code, STATUS_ERROR);
    let reason = failed.attr("switchboard.failover.reason").unwrap();
    assert!(reason.contains("500"), "{reason}");
    assert_eq!(
        answered.attr("switchboard.attempt.outcome"),
        Some("succeeded")
    );
    assert_eq!(answered.attr("switchboard.failover.reason"), None);
    assert_eq!(
        call.attr("gen_ai.tool.call.arguments"),
        None,
        "arguments are opt-in"
    );

    // Each attempt commits the record's intent under it, and the Rego
    // module (scoped to tools/**) judges that write; the outcome's commit
    // is the call's own child.
    let children = |parent: &Span, prefix: &str| -> Vec<Span> {
        trace
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.name.starts_with(prefix))
            .cloned()
            .collect()
    };
    for attempt in [&failed, &answered] {
        let commits = children(attempt, "commit intent");
        assert_eq!(commits.len(), 1, "{attempt:#?} in {trace:#?}");
        let commit = &commits[0];
        assert_eq!(commit.kind, KIND_INTERNAL);
        assert_eq!(commit.attr("switchboard.commit.record"), Some("intent"));
        assert_eq!(commit.attr("switchboard.commit.outcome"), Some("committed"));
        assert_eq!(commit.attr("db.system.name"), Some("rocksdb"));
        assert_eq!(commit.status_code, STATUS_OK);
        let policies = children(commit, "policy ");
        assert_eq!(policies.len(), 1, "{commit:#?} in {trace:#?}");
        let policy = &policies[0];
        assert_eq!(policy.attr("switchboard.policy.hook"), Some("rego"));
        let module = policy.attr("switchboard.policy.module").unwrap();
        assert_eq!(policy.name, format!("policy {module}"));
        assert_eq!(policy.attr("switchboard.policy.scope"), Some("tools/**"));
        assert_eq!(policy.attr("switchboard.policy.phase"), Some("before"));
        assert_eq!(policy.attr("switchboard.policy.operation"), Some("put"));
        assert_eq!(policy.attr("switchboard.policy.decision"), Some("allow"));
    }
    let outcome = children(&call, "commit outcome");
    assert_eq!(outcome.len(), 1, "{trace:#?}");
    assert_eq!(
        outcome[0].attr("switchboard.commit.record"),
        Some("outcome")
    );
    assert_eq!(
        outcome[0].attr("switchboard.commit.outcome"),
        Some("committed")
    );

    // The agent continued the trace, its parent the attempt that called it.
    assert_eq!(
        traced.traceparents(),
        [Some(format!("00-{CALLER_TRACE}-{}-01", answered.span_id))]
    );

    // The dispatch record keeps the trace id, and `scan --trace-ids` shows it.
    let page: Value = client
        .get(format!("{}/v1/scan?prefix=tools/code/run/", serve.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"][0]["value"]["trace_id"], CALLER_TRACE,
        "{page}"
    );
    let table = common::ok(common::switchboard().args([
        "scan",
        "tools/code/",
        "--trace-ids",
        "--server",
        serve.base.as_str(),
    ]));
    assert!(table.lines().next().unwrap().contains("TRACE"), "{table}");
    assert!(table.contains(CALLER_TRACE), "{table}");

    // A call the policy denies, with no caller trace: a trace of its own.
    let (status, answer) = invoke(
        &client,
        &serve,
        json!({"tool": "wipe", "category": "database"}),
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let denied = collector.spans(1, |s| s.name == "execute_tool wipe").await;
    let denied = denied[0].clone();
    assert!(denied.parent_span_id.is_empty(), "a root span: {denied:#?}");
    assert_ne!(denied.trace_id, CALLER_TRACE);
    assert_eq!(denied.status_code, STATUS_ERROR);
    assert_eq!(denied.attr("error.type"), Some("policy_denied"));
    assert_eq!(denied.attr("switchboard.policy.denials"), Some("1"));
    assert_eq!(denied.attr("switchboard.attempts"), Some("0"));
    let refused = collector.spans(1, |s| s.name == "attempt gated").await;
    let refused = &refused[0];
    assert_eq!(refused.parent_span_id, denied.span_id);
    assert_eq!(refused.attr("switchboard.agent.id"), Some("gated"));
    assert_eq!(refused.attr("switchboard.attempt.outcome"), Some("denied"));
    assert_eq!(refused.attr("error.type"), Some("denied"));
    assert_eq!(refused.status_code, STATUS_ERROR);
    assert!(
        refused.status_message.contains("gated takes no calls"),
        "{refused:#?}"
    );
    assert_eq!(gated.hits(), 0, "a denied agent is not called");
    // The denial is the policy span's decision, in the intent's commit.
    let commit = collector
        .spans(1, |s| {
            s.name == "commit intent" && s.parent_span_id == refused.span_id
        })
        .await;
    let commit = &commit[0];
    assert_eq!(
        commit.attr("switchboard.commit.outcome"),
        Some("policy_denied")
    );
    assert_eq!(commit.attr("error.type"), Some("policy_denied"));
    assert_eq!(commit.status_code, STATUS_ERROR);
    let policy = collector
        .spans(1, |s| s.parent_span_id == commit.span_id)
        .await;
    assert_eq!(policy[0].attr("switchboard.policy.decision"), Some("deny"));
    assert_eq!(policy[0].attr("switchboard.policy.hook"), Some("rego"));
}

/// An MCP server with one tool, `trace`, answering with the `traceparent`
/// of its call's `_meta`, or with a tool error when its arguments say
/// `"fail": true`; and one prompt, `greet`. It speaks the 2025 revisions
/// only, which keep a session.
#[derive(Clone)]
struct TraceEcho;

impl ServerHandler for TraceEcho {
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Owned(vec![ProtocolVersion::V_2025_11_25])
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .build(),
        )
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, McpError> {
        Ok(serde_json::from_value(json!({"prompts": [{"name": "greet"}]})).unwrap())
    }

    async fn get_prompt(
        &self,
        _request: rmcp::model::GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, McpError> {
        Ok(rmcp::model::GetPromptResponse::Complete(
            serde_json::from_value(json!({"messages": [
                {"role": "user", "content": {"type": "text", "text": "hello"}},
            ]}))
            .unwrap(),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let Value::Object(schema) = json!({"type": "object"}) else {
            unreachable!("an object literal")
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "trace",
            "Answers with its traceparent",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let traceparent = context.meta.0.get_traceparent();
        let fail = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("fail"))
            .and_then(Value::as_bool)
            == Some(true);
        if fail {
            return Ok(CallToolResult::error(vec![ContentBlock::text("asked to fail")]).into());
        }
        Ok(CallToolResult::structured(json!({ "traceparent": traceparent })).into())
    }
}

/// A second caller trace, for the call through `/mcp`.
const MCP_CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const MCP_CALLER_SPAN: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_tools_call_is_traced_from_the_client_through_mcp_to_the_mcp_agent() {
    let collector = Collector::start().await;
    let (url, agent) = common::mcp_http_agent(TraceEcho).await;
    let client = common::http_client();
    let serve = ServeProcess::start(
        "[records]\nredact = [\"secret\"]",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
        ],
        &client,
    )
    .await;
    let mcp = json!({"url": url, "tool_names": ["trace"]});
    register(
        &client,
        &serve,
        "tracer",
        json!({"tools": ["code"], "mcp": mcp}),
    )
    .await;

    // Through the HTTP API: the attempt's MCP client span is the agent's parent.
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, answer) = invoke(
        &client,
        &serve,
        json!({"tool": "trace", "category": "code"}),
        Some(&caller),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let attempt = collector
        .spans(1, |s| {
            s.name == "attempt tracer" && s.trace_id == CALLER_TRACE
        })
        .await;
    let attempt = &attempt[0];
    assert_eq!(attempt.attr("server.address"), Some("127.0.0.1"));
    let upstream = collector
        .spans(1, |s| {
            s.parent_span_id == attempt.span_id && s.kind == KIND_CLIENT
        })
        .await;
    let upstream = &upstream[0];
    assert_eq!(upstream.name, "tools/call trace");
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "trace"),
        ("gen_ai.operation.name", "execute_tool"),
        ("server.address", "127.0.0.1"),
        ("network.transport", "tcp"),
    ] {
        assert_eq!(upstream.attr(key), Some(value), "{key} of {upstream:#?}");
    }
    assert_eq!(upstream.status_code, STATUS_OK);
    assert!(
        upstream.attr("jsonrpc.request.id").is_some(),
        "the upstream request's id: {upstream:#?}"
    );
    assert!(
        upstream
            .attr("mcp.session.id")
            .is_some_and(|id| !id.is_empty()),
        "the upstream session: {upstream:#?}"
    );
    let expected = format!("00-{CALLER_TRACE}-{}-01", upstream.span_id);
    assert!(
        answer["output"].to_string().contains(&expected),
        "the agent saw {} rather than {expected}",
        answer["output"]
    );

    // Through /mcp, with the client's trace in `_meta`.
    let transport = StreamableHttpClientTransport::from_uri(format!("{}/mcp", serve.base));
    let session = ().serve(transport).await.expect("an MCP session with serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !session
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == "trace")
    {
        assert!(Instant::now() < deadline, "trace was never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |arguments: Value| {
        let Value::Object(arguments) = arguments else {
            unreachable!("an object literal")
        };
        let mut params = CallToolRequestParams::new("trace").with_arguments(arguments);
        params.set_traceparent(&format!("00-{MCP_CALLER_TRACE}-{MCP_CALLER_SPAN}-01"));
        session.call_tool(params)
    };
    let result = call(json!({"secret": "hunter2", "n": 1})).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let server = collector
        .spans(1, |s| {
            s.trace_id == MCP_CALLER_TRACE && s.kind == KIND_SERVER && s.status_code == STATUS_OK
        })
        .await;
    let server = &server[0];
    assert_eq!(server.name, "tools/call trace");
    assert_eq!(
        server.parent_span_id, MCP_CALLER_SPAN,
        "the client's span is its parent"
    );
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "trace"),
        ("gen_ai.operation.name", "execute_tool"),
        ("network.transport", "tcp"),
        ("network.protocol.name", "http"),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key} of {server:#?}");
    }
    for key in [
        "mcp.protocol.version",
        "mcp.session.id",
        "jsonrpc.request.id",
    ] {
        assert!(
            server.attr(key).is_some_and(|v| !v.is_empty()),
            "{key} of {server:#?}"
        );
    }
    assert_eq!(server.attr("error.type"), None);
    let execute = collector
        .spans(1, |s| s.parent_span_id == server.span_id)
        .await;
    let execute = &execute[0];
    assert_eq!(
        execute.name, "execute_tool trace",
        "beneath the server span"
    );
    let arguments = execute.attr("gen_ai.tool.call.arguments").unwrap();
    let arguments: Value = serde_json::from_str(arguments).unwrap();
    assert_eq!(arguments["n"], 1);
    assert_ne!(
        arguments["secret"], "hunter2",
        "redacted as records redact: {arguments}"
    );
    let tool_result = execute.attr("gen_ai.tool.call.result").unwrap();
    assert!(tool_result.contains(MCP_CALLER_TRACE), "{tool_result}");
    let attempt = collector
        .spans(1, |s| {
            s.parent_span_id == execute.span_id && s.name == "attempt tracer"
        })
        .await;
    let upstream = collector
        .spans(1, |s| {
            s.parent_span_id == attempt[0].span_id && s.kind == KIND_CLIENT
        })
        .await;
    let seen = format!("00-{MCP_CALLER_TRACE}-{}-01", upstream[0].span_id);
    assert!(
        format!("{result:?}").contains(&seen),
        "the agent saw the MCP client span as its parent: {result:?}"
    );

    // Other methods have their server span too, without a tool.
    let listed = collector
        .spans(1, |s| s.name == "tools/list" && s.kind == KIND_SERVER)
        .await;
    assert_eq!(listed[0].attr("mcp.method.name"), Some("tools/list"));
    assert_eq!(listed[0].attr("gen_ai.operation.name"), None);
    assert_eq!(listed[0].attr("gen_ai.tool.name"), None);
    assert_eq!(listed[0].status_code, STATUS_OK);
    // The session's start and a ping are requests with spans of their own;
    // `initialize` names the revision it negotiated.
    session
        .send_request(ClientRequest::PingRequest(PingRequest::default()))
        .await
        .unwrap();
    for method in ["initialize", "ping"] {
        let span = collector
            .spans(1, |s| s.name == method && s.kind == KIND_SERVER)
            .await;
        assert_eq!(span[0].attr("mcp.method.name"), Some(method));
        assert!(span[0].attr("mcp.protocol.version").is_some(), "{method}");
        assert_eq!(span[0].status_code, STATUS_OK);
    }

    // A tool error is the server span's `error.type`.
    let failed = call(json!({"fail": true})).await.unwrap();
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    let errored = collector
        .spans(1, |s| {
            s.kind == KIND_SERVER && s.status_code == STATUS_ERROR
        })
        .await;
    assert_eq!(errored[0].attr("error.type"), Some("tool_error"));
    // An unknown tool is a JSON-RPC error: its code is the error.type.
    let unknown = session
        .call_tool(CallToolRequestParams::new("made_up_by_the_client"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    let refused = collector
        .spans(1, |s| s.name == "tools/call made_up_by_the_client")
        .await;
    assert_eq!(refused[0].attr("error.type"), Some("-32602"));
    assert_eq!(refused[0].attr("rpc.response.status_code"), Some("-32602"));
    assert_eq!(refused[0].status_code, STATUS_ERROR);

    // A prompt is dispatched too: its MCP client span names the request
    // sent upstream by its id.
    let mut prompt = rmcp::model::GetPromptRequestParams::new("greet");
    prompt.set_traceparent(&format!("00-{MCP_CALLER_TRACE}-{MCP_CALLER_SPAN}-01"));
    session.get_prompt(prompt).await.unwrap();
    let upstream_prompt = collector
        .spans(1, |s| {
            s.name == "prompts/get greet" && s.kind == KIND_CLIENT
        })
        .await;
    assert_eq!(upstream_prompt[0].trace_id, MCP_CALLER_TRACE);
    assert!(
        upstream_prompt[0]
            .attr("jsonrpc.request.id")
            .is_some_and(|id| !id.is_empty()),
        "{upstream_prompt:#?}"
    );

    // A `subscriptions/listen` stream (of a 2026-07-28 client) has a
    // server span as long as it.
    let modern = ()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(format!("{}/mcp", serve.base)),
            rmcp::service::ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: None,
            },
        )
        .await
        .expect("a 2026-07-28 client of serve");
    let mut listening = modern
        .peer()
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
        .await
        .unwrap();
    listening.cancel().await.unwrap();
    let listened = collector
        .spans(1, |s| {
            s.name == "subscriptions/listen" && s.kind == KIND_SERVER
        })
        .await;
    assert_eq!(
        listened[0].attr("mcp.method.name"),
        Some("subscriptions/listen")
    );
    let _ = modern.cancel().await;
    let _ = session.cancel().await;

    // Both sides' durations are histograms in /metrics, by the convention's names.
    let metrics = client
        .get(format!("{}/metrics", serve.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"trace\",gen_ai_operation_name=\"execute_tool\"} 1",
        "mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"trace\",gen_ai_operation_name=\"execute_tool\",error_type=\"tool_error\"} 1",
        "mcp_server_operation_duration_seconds_bucket{le=\"+Inf\",mcp_method_name=\"tools/call\"",
        "mcp_client_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"trace\",gen_ai_operation_name=\"execute_tool\"} 2",
        "mcp_client_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"trace\",gen_ai_operation_name=\"execute_tool\",error_type=\"tool_error\"} 1",
        "mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/list\"} ",
        // The unknown tool's series has no tool name: made-up names add none.
        "mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\",gen_ai_operation_name=\"execute_tool\",error_type=\"-32602\"} 1",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    assert!(!metrics.contains("made_up_by_the_client"), "{metrics}");
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_caller_sampled_out_exports_no_span_and_the_agent_is_told_so() {
    let collector = Collector::start().await;
    let traced = TracedAgent::start().await;
    let client = common::http_client();
    let serve = ServeProcess::start(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &client,
    )
    .await;
    traced.register_with(&client, &serve).await;
    // The default sampler follows the caller: flags 00 is sampled out.
    let unsampled = format!("00-{MCP_CALLER_TRACE}-{MCP_CALLER_SPAN}-00");
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    for traceparent in [&unsampled, &sampled] {
        let (status, answer) = invoke(
            &client,
            &serve,
            json!({"tool": "run", "category": "code"}),
            Some(traceparent),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Spans are exported in the order they end: once the second call's
    // are in, the first call's would be too.
    collector.spans(4, |s| s.trace_id == CALLER_TRACE).await;
    let exported = collector.spans(0, |s| s.trace_id == MCP_CALLER_TRACE).await;
    assert!(exported.is_empty(), "{exported:#?}");
    let seen = traced.traceparents();
    let first = seen[0].as_deref().expect("a traceparent");
    assert!(
        first.starts_with(&format!("00-{MCP_CALLER_TRACE}-")) && first.ends_with("-00"),
        "the agent continues the caller's trace, unsampled: {first}"
    );
    assert!(seen[1].as_deref().unwrap().ends_with("-01"), "{seen:?}");
}

/// A trace id whose low 64 bits are small: a ratio sampler of 0.5 keeps it.
const KEPT_BY_HALF: &str = "5b8efff7980381030000000000000001";
/// A trace id whose low 64 bits are large: a ratio sampler of 0.5 drops it.
const DROPPED_BY_HALF: &str = "5b8efff798038103fffffffffffffffe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratio_sampler_decides_by_the_trace_id_and_a_dropped_call_makes_no_trace() {
    let (kept_trace, dropped_trace) = (KEPT_BY_HALF, DROPPED_BY_HALF);
    let collector = Collector::start().await;
    let traced = TracedAgent::start().await;
    let client = common::http_client();
    // Not parent-based: the caller's flags do not decide, the trace id does.
    let serve = ServeProcess::start(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
        &client,
    )
    .await;
    traced.register_with(&client, &serve).await;
    let unsampled_but_kept = format!("00-{kept_trace}-{CALLER_SPAN}-00");
    let sampled_but_dropped = format!("00-{dropped_trace}-{CALLER_SPAN}-01");
    for traceparent in [&sampled_but_dropped, &unsampled_but_kept] {
        let (status, answer) = invoke(
            &client,
            &serve,
            json!({"tool": "run", "category": "code"}),
            Some(traceparent),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Spans are exported in the order they end: once the second call's
    // are in, the first call's would be too.
    let kept = collector.spans(4, |s| s.trace_id == kept_trace).await;
    assert!(
        kept.iter().any(|s| s.name == "execute_tool run"),
        "{kept:#?}"
    );
    let dropped = collector.spans(0, |s| s.trace_id == dropped_trace).await;
    assert!(dropped.is_empty(), "{dropped:#?}");
    let seen = traced.traceparents();
    // A dropped call passes the caller's context on as it came.
    assert_eq!(seen[0].as_deref(), Some(sampled_but_dropped.as_str()));
    let attempt = kept.iter().find(|s| s.name == "attempt traced").unwrap();
    assert_eq!(
        seen[1].as_deref(),
        Some(format!("00-{kept_trace}-{}-01", attempt.span_id).as_str())
    );

    // A call that would start a trace here and is dropped makes none: it
    // is called and recorded as with no exporter.
    let off = ServeProcess::start(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
        &client,
    )
    .await;
    traced.register_with(&client, &off).await;
    let (status, answer) = invoke(
        &client,
        &off,
        json!({"tool": "run", "category": "code"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(traced.traceparents()[2], None);
    let page: Value = client
        .get(format!("{}/v1/scan?prefix=tools/code/run/", off.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["value"]["trace_id"], Value::Null, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_unaffected_while_the_collector_is_down() {
    let traced = TracedAgent::start().await;
    let client = common::http_client();
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let serve = ServeProcess::start(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nobody.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
        &client,
    )
    .await;
    traced.register_with(&client, &serve).await;
    for _ in 0..20 {
        let (status, answer) = invoke(
            &client,
            &serve,
            json!({"tool": "run", "category": "code"}),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Each call still started a trace of its own and passed it on.
    let seen = traced.traceparents();
    assert_eq!(seen.len(), 20);
    let mut traces: Vec<&str> = seen
        .iter()
        .map(|t| {
            t.as_deref()
                .expect("a traceparent")
                .split('-')
                .nth(1)
                .unwrap()
        })
        .collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 20, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_callers_trace_context_reaches_the_agent_as_it_came() {
    let traced = TracedAgent::start().await;
    let client = common::http_client();
    let serve = ServeProcess::start("", &[], &client).await;
    traced.register_with(&client, &serve).await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    for traceparent in [Some(caller.as_str()), None] {
        let (status, answer) = invoke(
            &client,
            &serve,
            json!({"tool": "run", "category": "code"}),
            traceparent,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(traced.traceparents(), [Some(caller), None]);
}

#[test]
fn serve_refuses_an_otlp_protocol_it_cannot_export_with_and_says_what_to_set() {
    let out = common::fails(
        common::switchboard()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .args(["serve", "--listen", "127.0.0.1:0"]),
    );
    assert!(out.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{out}");
    assert!(out.contains("http/protobuf"), "{out}");
}
