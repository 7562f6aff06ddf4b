//! `switchboard mcp` driven over stdin/stdout by a real MCP client (rmcp's,
//! on the child process's pipes): serving a data directory.

mod common;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{RunningService, ServiceExt};
use rmcp::RoleClient;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::{AgentConfig, ToolCategory, ToolDispatcher};

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
async fn names(client: &RunningService<RoleClient, ()>) -> Vec<String> {
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
    client: &RunningService<RoleClient, ()>,
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
async fn close(process: Stdio, client: RunningService<RoleClient, ()>) {
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
