//! MCP through Switchboard vs directly: what does routing a `tools/call`
//! through `switchboard serve`'s `/mcp` cost, next to calling the same MCP
//! server directly, in the same run?
//!
//! One run starts an MCP server (rmcp, streamable HTTP, in this process on a
//! runtime of its own, on 127.0.0.1) serving one small tool, `echo`, and the
//! real `switchboard serve` binary on a temp data directory with that server
//! registered as an MCP agent (`"mcp": URL`, discovered before the run). Then,
//! for each concurrency C, C rmcp clients (one MCP session each) call
//! `tools/call echo {"text": "hello"}` in a closed loop:
//!
//! - **direct**: on the MCP server itself;
//! - **through**: on Switchboard's `/mcp`, which routes the call to the agent
//!   (policy chain, intent and outcome records, a `tools/call` upstream on
//!   the connection Switchboard keeps to the server).
//!
//! The two alternate for R rounds (which goes first alternates too), each
//! round bounded by a number of calls and by a time, whichever ends first;
//! the throughput ratio (through / direct) is taken within each round and
//! its median reported, so the machine's drift cancels out. Latencies are
//! each call's, from the client's request to its answer, merged over rounds.
//!
//! `cargo bench --bench mcp`. Settings, from the environment:
//! `MCP_CONCURRENCY` (`1,16`), `MCP_ROUNDS` (5), `MCP_CALLS` (20000, per round
//! and case), `MCP_ROUND_SECS` (2, per round and case).

#[path = "support/harness.rs"]
mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::{Budget, Case, KillOnDrop};
use reqwest::header::CONTENT_TYPE;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService, ServiceExt};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler};
use serde_json::json;
use tokio::runtime::Runtime;

/// Calls of the warm-up each client makes before the rounds.
const WARM_UP_CALLS: usize = 20;

fn main() {
    // `run` owns the server process and the temp dir: both are gone by the
    // time the process exits, on an error as well as on success.
    if let Err(e) = run() {
        eprintln!("mcp bench: {e}");
        std::process::exit(1);
    }
}

struct Settings {
    concurrency: Vec<usize>,
    rounds: usize,
    budget: Budget,
}

fn settings() -> Result<Settings, String> {
    Ok(Settings {
        concurrency: harness::env_list("MCP_CONCURRENCY", &[1, 16], 1..=256)?,
        rounds: harness::env_number("MCP_ROUNDS", 5, 1..=100)?,
        budget: Budget {
            calls: harness::env_number("MCP_CALLS", 20_000, 1..=10_000_000)?,
            time: Duration::from_secs(harness::env_number("MCP_ROUND_SECS", 2, 1..=600)?),
        },
    })
}

// ---------------------------------------------------------------- upstream

/// The MCP server under both paths: one tool that answers its `text`.
#[derive(Clone)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let serde_json::Value::Object(schema) = json!({
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"]
        }) else {
            unreachable!("an object literal")
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "echo",
            "Answers its text",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name != "echo" {
            return Err(McpError::invalid_params("unknown tool", None));
        }
        let text = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("text"))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Serves [`Echo`] on 127.0.0.1 on `rt` (until the runtime is dropped);
/// returns its URL.
fn start_upstream(rt: &Runtime) -> Result<String, String> {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the MCP server: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let service = StreamableHttpService::new(
            || Ok(Echo),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the MCP server stopped: {e}");
            }
        });
        Ok(format!("http://{addr}/mcp"))
    })
}

// ---------------------------------------------------------------- switchboard

/// Starts `switchboard serve` on a fresh database, registers the MCP server
/// as agent `echo_server` (answered once its tools are listed) and returns
/// Switchboard's `/mcp` URL and the process.
fn start_switchboard(
    dir: &Path,
    upstream: &str,
    rt: &Runtime,
    http: &reqwest::Client,
) -> Result<(String, KillOnDrop), String> {
    let port = harness::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut command = harness::serve_command(&dir.join("switchboard_data"), port);
    command.current_dir(dir);
    let mut child = KillOnDrop::spawn("switchboard", command, &dir.join("switchboard.log"))?;
    harness::wait_ready(rt, http, &format!("{base}/healthz"), &mut child)?;
    let body = json!({"tools": ["code"], "mcp": upstream}).to_string();
    let request = http
        .put(format!("{base}/v1/agents/echo_server"))
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    let (status, text) = rt.block_on(harness::call(request))?;
    if !status.is_success() {
        return Err(format!(
            "registering the MCP server with switchboard: {status} {text}"
        ));
    }
    Ok((format!("{base}/mcp"), child))
}

// ---------------------------------------------------------------- clients

type Client = RunningService<RoleClient, ()>;

fn echo_call() -> CallToolRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("text".into(), json!("hello"));
    CallToolRequestParams::new("echo").with_arguments(args)
}

/// True when the call answered `hello` as a success.
async fn call_echo(peer: &Peer<RoleClient>) -> bool {
    match peer.call_tool(echo_call()).await {
        Ok(result) => {
            result.is_error != Some(true)
                && result
                    .content
                    .iter()
                    .any(|c| c.as_text().is_some_and(|t| t.text == "hello"))
        }
        Err(_) => false,
    }
}

/// `n` MCP sessions at `url`, each checked with one call.
async fn connect(url: &str, n: usize, what: &str) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = ()
            .serve(StreamableHttpClientTransport::from_uri(url.to_string()))
            .await
            .map_err(|e| format!("{what}: cannot connect an MCP client to {url}: {e}"))?;
        if !call_echo(client.peer()).await {
            let answer = client.peer().call_tool(echo_call()).await;
            return Err(format!(
                "{what}: tools/call echo did not answer \"hello\": {answer:?}"
            ));
        }
        clients.push(client);
    }
    Ok(clients)
}

/// One closed-loop run: every client calls `echo` in a loop.
async fn load(clients: &[Client], budget: Budget) -> harness::Run {
    let callers = clients
        .iter()
        .map(|c| {
            let peer = c.peer().clone();
            move || {
                let peer = peer.clone();
                async move { call_echo(&peer).await }
            }
        })
        .collect();
    harness::closed_loop(callers, budget).await
}

async fn close(clients: Vec<Client>) {
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.cancel()).await;
    }
}

// ---------------------------------------------------------------- run

fn run() -> Result<(), String> {
    let settings = settings()?;
    println!(
        "mcp bench: tools/call through switchboard serve's /mcp vs directly on the MCP server"
    );
    harness::print_machine();
    println!(
        "  load        closed loop; {} rounds per concurrency, each case per round <= {} calls or <= {:?}; which case goes first alternates",
        settings.rounds, settings.budget.calls, settings.budget.time
    );
    println!("  switchboard {}", env!("CARGO_BIN_EXE_switchboard"));
    println!();

    // The MCP server gets a runtime of its own, as a separate process would.
    let upstream_rt = harness::runtime(2, "mcp-server")?;
    let client_rt = harness::runtime(2, "client")?;
    let upstream = start_upstream(&upstream_rt)?;
    let http = harness::http_client()?;
    // Declared before the process so the directory outlives it.
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let (through_url, switchboard) = start_switchboard(dir.path(), &upstream, &client_rt, &http)?;

    let mut results = Vec::new();
    for &c in &settings.concurrency {
        let (direct, through) =
            client_rt.block_on(measure(&settings, c, &upstream, &through_url))?;
        results.push((c, direct, through));
    }
    drop(switchboard);
    drop(upstream_rt);

    println!();
    harness::print_table_header();
    for (_, direct, through) in &results {
        harness::print_case(direct);
        harness::print_case(through);
    }
    println!();
    for (c, direct, through) in &results {
        println!(
            "  concurrency {c:>3}: through / direct throughput {:.2}x (median of per-round ratios); added p50 {:+.3} ms, added p99 {:+.3} ms",
            through.ratio_to(direct),
            through.added_p50_ms(direct).unwrap_or(f64::NAN),
            through.added_p99_ms(direct).unwrap_or(f64::NAN),
        );
    }
    if results.iter().any(|(_, d, t)| d.errors + t.errors > 0) {
        println!("  note: some calls failed or timed out (errors column)");
    }
    println!("  load average at the end {}", harness::load_average());
    Ok(())
}

/// All rounds at concurrency `c`: (direct, through).
async fn measure(
    settings: &Settings,
    c: usize,
    direct_url: &str,
    through_url: &str,
) -> Result<(Case, Case), String> {
    println!("concurrency {c}: connecting {c} + {c} MCP clients");
    let direct_clients = connect(direct_url, c, "direct").await?;
    let through_clients = connect(through_url, c, "through switchboard").await?;
    let warm_up = Budget {
        calls: WARM_UP_CALLS * c,
        time: Duration::from_secs(2),
    };
    load(&direct_clients, warm_up).await;
    load(&through_clients, warm_up).await;
    let mut direct = Case::new(format!("direct, {c} concurrent"));
    let mut through = Case::new(format!("through switchboard, {c} concurrent"));
    for round in 0..settings.rounds {
        for first in [round % 2 == 0, round % 2 != 0] {
            if first {
                direct.add(load(&direct_clients, settings.budget).await);
            } else {
                through.add(load(&through_clients, settings.budget).await);
            }
        }
        println!(
            "  round {}: direct {:.0} calls/s, through {:.0} calls/s",
            round + 1,
            direct.rates.last().copied().unwrap_or(0.0),
            through.rates.last().copied().unwrap_or(0.0)
        );
    }
    close(direct_clients).await;
    close(through_clients).await;
    Ok((direct, through))
}
