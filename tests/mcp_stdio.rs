//! `switchboard mcp` driven over stdin/stdout by a real MCP client (rmcp's,
//! on the child process's pipes): serving a data directory, and relaying to
//! a running `switchboard serve` (`--server`), in both protocol eras.

mod common;

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{RunningService, ServiceExt};
use rmcp::{ClientLifecycleMode, ClientServiceExt, Peer, RoleClient};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard::{AgentConfig, ToolCategory, ToolDispatcher};

/// The API token of the servers these tests start.
const TOKEN: &str = "bridge-test-token";

/// Every wait of these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(30);

/// A `switchboard mcp` child with piped stdio (killed on drop), and its
/// stderr as it comes.
struct Stdio {
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Stdio {
    /// Starts `switchboard mcp ARGS` with `env` set.
    fn start(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (
        Stdio,
        (tokio::process::ChildStdout, tokio::process::ChildStdin),
    ) {
        let mut child = tokio::process::Command::from(common::switchboard())
            .arg("mcp")
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pipes = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut text).await;
            text
        });
        (Stdio { child, stderr }, pipes)
    }

    /// Waits (bounded) for the process to exit; its status and stderr.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("switchboard mcp did not exit")
            .unwrap();
        let stderr = tokio::time::timeout(BOUND, &mut self.stderr)
            .await
            .unwrap()
            .unwrap();
        (status, stderr)
    }
}

/// An MCP client of a `switchboard mcp ARGS` child (2025-11-25 handshake).
async fn connect(args: &[&str], env: &[(&str, &str)]) -> (Stdio, RunningService<RoleClient, ()>) {
    let (process, pipes) = Stdio::start(args, env);
    let client = tokio::time::timeout(BOUND, ().serve(pipes))
        .await
        .expect("initialize timed out")
        .unwrap();
    (process, client)
}

/// The tool names `client` lists, sorted.
async fn names(client: &Peer<RoleClient>) -> Vec<String> {
    let tools = tokio::time::timeout(BOUND, client.list_all_tools())
        .await
        .unwrap()
        .unwrap();
    let mut names: Vec<String> = tools.into_iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

/// `tools/call name arguments` (bounded).
async fn call(
    client: &Peer<RoleClient>,
    name: &str,
    arguments: Value,
) -> Result<rmcp::model::CallToolResult, rmcp::ServiceError> {
    let Value::Object(arguments) = arguments else {
        panic!("arguments are an object")
    };
    let request = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
    tokio::time::timeout(BOUND, client.call_tool(request))
        .await
        .unwrap()
}

/// The message of a JSON-RPC error, or a failed test.
fn json_rpc_error(answer: Result<rmcp::model::CallToolResult, rmcp::ServiceError>) -> String {
    match answer {
        Err(rmcp::ServiceError::McpError(e)) => e.message.to_string(),
        other => panic!("expected a JSON-RPC error: {other:?}"),
    }
}

/// Ends the client (closing the child's stdin) and waits for a clean exit.
async fn close<S: rmcp::Service<RoleClient>>(
    process: Stdio,
    client: RunningService<RoleClient, S>,
) {
    tokio::time::timeout(BOUND, client.cancel())
        .await
        .unwrap()
        .unwrap();
    let (status, stderr) = process.exit().await;
    assert!(status.success(), "{status}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_is_served_with_or_without_category_tools() {
    let agent = common::TestAgent::start("coder", common::Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let d = ToolDispatcher::new(switchboard::Database::open(&data).unwrap());
        d.register_agent(
            "coder",
            AgentConfig::new()
                .with_tools(vec![ToolCategory::Code])
                .with_endpoint(agent.endpoint.clone()),
        )
        .unwrap();
    }
    let data = data.to_str().unwrap();

    let (process, client) = connect(&["--data", data], &[]).await;
    assert_eq!(names(&client).await, ["code"]);
    let result = call(&client, "code", json!({"tool": "run", "input": {"v": 1}}))
        .await
        .unwrap();
    assert_eq!(result.structured_content.unwrap()["agent_id"], "coder");
    close(process, client).await;

    let (process, client) = connect(&["--data", data, "--no-category-tools"], &[]).await;
    assert!(names(&client).await.is_empty());
    let refused = json_rpc_error(call(&client, "code", json!({"tool": "run"})).await);
    assert!(refused.contains("--no-category-tools"), "{refused}");
    assert_eq!(agent.hits(), 1, "the refused call reached no agent");
    close(process, client).await;
}

/// Counts `notifications/tools/list_changed`, as an MCP client.
#[derive(Clone, Default)]
struct Listener {
    changes: Arc<AtomicUsize>,
}

impl rmcp::ClientHandler for Listener {
    async fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Registers an HTTP agent on `serve` through its API.
async fn register(http: &reqwest::Client, serve: &common::ServeProcess, id: &str, body: Value) {
    let r = http
        .put(format!("{}/v1/agents/{id}", serve.base))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_client_reaches_a_running_server_through_the_bridge() {
    let http = common::http_client();
    let coder = common::TestAgent::start("coder", common::Behaviour::Echo).await;
    let serve = common::ServeProcess::start("", &[("SWITCHBOARD_TOKEN", TOKEN)], &http).await;
    register(
        &http,
        &serve,
        "coder",
        json!({"tools": ["code"], "endpoint": coder.endpoint}),
    )
    .await;
    let bridge = ["--server", serve.base.as_str()];
    let token = [("SWITCHBOARD_TOKEN", TOKEN)];

    // 2025-11-25: a session (Mcp-Session-Id), answers as SSE, and the
    // server's own stream for its notifications.
    let listener = Listener::default();
    let (process, pipes) = Stdio::start(&bridge, &token);
    let client = tokio::time::timeout(BOUND, listener.clone().serve(pipes))
        .await
        .expect("initialize timed out")
        .unwrap();
    assert_eq!(names(&client).await, ["code"]);
    let result = call(&client, "code", json!({"tool": "run", "input": {"v": 1}}))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let output = result.structured_content.unwrap();
    assert_eq!(output["agent_id"], "coder");
    assert_eq!(output["output"]["input"], json!({"v": 1}));
    assert_eq!(coder.hits(), 1);
    // The server's errors come through as the server gave them.
    let unknown = json_rpc_error(call(&client, "nothing", json!({})).await);
    assert!(unknown.contains("unknown tool"), "{unknown}");
    // A tool registered on the server: the client is told, through the bridge.
    let searcher = common::TestAgent::start("searcher", common::Behaviour::Echo).await;
    register(
        &http,
        &serve,
        "searcher",
        json!({"tools": ["search"], "endpoint": searcher.endpoint}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while listener.changes.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tools/list_changed came through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(names(&client).await, ["code", "search"]);
    close(process, client).await;

    // 2026-07-28: stateless requests, each with its own headers.
    let (process, pipes) = Stdio::start(&bridge, &token);
    let modern = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let client = tokio::time::timeout(BOUND, ().serve_with_lifecycle(pipes, modern))
        .await
        .expect("server/discover timed out")
        .unwrap();
    assert_eq!(names(&client).await, ["code", "search"]);
    let result = call(
        &client,
        "search",
        json!({"tool": "find", "input": {"q": "x"}}),
    )
    .await
    .unwrap();
    assert_eq!(result.structured_content.unwrap()["agent_id"], "searcher");
    close(process, client).await;

    // A script that closes stdin after its requests still gets the answers.
    let messages = [
        initialize(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ];
    let (status, answers, stderr) = exchange(&serve.base, &token, &messages, true).await;
    assert_eq!(status, Some(0), "{stderr}");
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2)], "{answers:?}");
    assert_eq!(answers[1]["result"]["tools"].as_array().unwrap().len(), 2);
}

/// The `initialize` request of a 2025-11-25 client, with id 1.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}})
}

/// Writes `messages` to a bridge to `server` started with `env` (then
/// closes its stdin if `close`, as a script would) and reads what it writes
/// until it exits: its status, its stdout lines (each must be a JSON-RPC
/// message) and its stderr.
async fn exchange(
    server: &str,
    env: &[(&str, &str)],
    messages: &[Value],
    close: bool,
) -> (Option<i32>, Vec<Value>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (process, (mut stdout, mut stdin)) = Stdio::start(&["--server", server], env);
    for message in messages {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }
    let stdin = (!close).then_some(stdin);
    let mut out = String::new();
    tokio::time::timeout(BOUND, stdout.read_to_string(&mut out))
        .await
        .expect("the bridge did not end")
        .unwrap();
    drop(stdin);
    let (status, stderr) = process.exit().await;
    let lines = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout is protocol only, not {l:?}: {e}"));
            assert_eq!(v["jsonrpc"], "2.0", "{l}");
            v
        })
        .collect();
    (status.code(), lines, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_says_why_it_cannot_reach_the_server() {
    let http = common::http_client();
    let serve = common::ServeProcess::start("", &[("SWITCHBOARD_TOKEN", TOKEN)], &http).await;
    for env in [&[("SWITCHBOARD_TOKEN", "not-the-token")][..], &[]] {
        // The client keeps stdin open, as a desktop client does.
        let (status, stdout, stderr) = exchange(&serve.base, env, &[initialize()], false).await;
        assert_eq!(status, Some(1), "{stderr}");
        assert!(
            stderr.contains("answered 401") && stderr.contains("set SWITCHBOARD_TOKEN"),
            "{env:?}: {stderr}"
        );
        // The client's request is answered too, with the same reason.
        assert_eq!(stdout.len(), 1, "{stdout:?}");
        assert_eq!(stdout[0]["id"], 1);
        let message = stdout[0]["error"]["message"].as_str().unwrap();
        assert!(message.contains("SWITCHBOARD_TOKEN"), "{message}");
    }

    // A token without the `invoke` scope /mcp needs: 403, naming the scope.
    let created: Value = http
        .post(format!("{}/v1/tokens", serve.base))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "auditor", "scopes": ["audit"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auditor = [("SWITCHBOARD_TOKEN", created["secret"].as_str().unwrap())];
    let (status, _, stderr) = exchange(&serve.base, &auditor, &[initialize()], false).await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("answered 403") && stderr.contains("invoke"),
        "{stderr}"
    );

    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let token = [("SWITCHBOARD_TOKEN", TOKEN)];
    let (status, _, stderr) = exchange(&nowhere, &token, &[initialize()], true).await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to") && stderr.contains("switchboard serve"),
        "{stderr}"
    );

    // What only a local database takes is refused with a server.
    let refused = common::fails(common::switchboard().args([
        "mcp",
        "--server",
        &serve.base,
        "--no-category-tools",
    ]));
    assert!(refused.contains("for a local database"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_configured_without_category_tools_lists_none_through_the_bridge() {
    let http = common::http_client();
    let coder = common::TestAgent::start("coder", common::Behaviour::Echo).await;
    let serve = common::ServeProcess::start(
        "[mcp]\ncategory_tools = false\n",
        &[("SWITCHBOARD_TOKEN", TOKEN)],
        &http,
    )
    .await;
    register(
        &http,
        &serve,
        "coder",
        json!({"tools": ["code"], "endpoint": coder.endpoint}),
    )
    .await;
    let (process, client) =
        connect(&["--server", &serve.base], &[("SWITCHBOARD_TOKEN", TOKEN)]).await;
    assert!(names(&client).await.is_empty());
    let refused = json_rpc_error(call(&client, "code", json!({"tool": "run"})).await);
    assert!(refused.contains("category_tools = false"), "{refused}");
    assert_eq!(coder.hits(), 0);
    close(process, client).await;
}
