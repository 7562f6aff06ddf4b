//! The HTTP API, served for real on 127.0.0.1 and driven with a real client.

mod common;

use common::{temp_db, Behaviour, TestAgent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::server::{run, AppState};
use switchboard::ToolDispatcher;

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
            client: reqwest::Client::new(),
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
    for path in [
        "/v1/scan",
        "/v1/scan?prefix=a%20b",
        "/v1/scan?prefix=tools/&limit=0",
        "/v1/scan?prefix=tools/&limit=x",
    ] {
        let (status, answer) = api.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
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
    let anonymous = reqwest::Client::new();
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

/// The routes the API serves; docs/openapi.json must describe exactly these.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/v1/agents"),
    ("get", "/v1/agents/{id}"),
    ("put", "/v1/agents/{id}"),
    ("delete", "/v1/agents/{id}"),
    ("post", "/v1/invoke"),
    ("get", "/v1/metrics"),
    ("get", "/metrics"),
    ("get", "/v1/scan"),
    ("get", "/v1/policies"),
    ("post", "/v1/policies"),
    ("post", "/mcp"),
];

#[tokio::test]
async fn the_openapi_description_matches_the_routes() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
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
        let (status, body) = api
            .send(method, &path.replace("{id}", "x"), Some(json!({})))
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(body["error"]["code"] != "not_found", "{path} is not routed");
    }
}
