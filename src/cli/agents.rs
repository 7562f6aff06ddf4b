//! `switchboard agents list|register|remove`, on the local database or
//! through a server's `/v1/agents` routes.

use super::{Client, StoreArgs};
use clap::{ArgGroup, Subcommand};
use reqwest::Method;
use switchboard::namespace::AgentRecord;
use switchboard::{AgentConfig, CategoryRule, Error, McpServer, PolicyContext, ToolCategory};

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// List registered agents (those the policies let this reader see).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON record per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register (or replace) an agent: an HTTP agent (--endpoint URL) or an
    /// MCP server (--mcp URL, or --mcp-command "program args..." run over
    /// stdio). One of the three is required.
    #[command(group(ArgGroup::new("agent").required(true).args(["endpoint", "mcp", "mcp_command"])))]
    Register {
        /// The agent's id, e.g. code_agent (an existing id is replaced).
        id: String,
        /// Comma-separated categories, e.g. code,shell (an MCP agent's tools
        /// go to the first unless --mcp-category maps them elsewhere).
        #[arg(long, value_delimiter = ',', required = true)]
        tools: Vec<String>,
        /// The URL an HTTP agent takes calls at (POST), e.g.
        /// http://127.0.0.1:8001/invoke; its health URL is /health on the
        /// same host and port. Or use --mcp / --mcp-command instead.
        #[arg(long)]
        endpoint: Option<String>,
        /// The streamable-HTTP URL of an MCP server.
        #[arg(long)]
        mcp: Option<String>,
        /// A stdio MCP server: the program and its arguments, split at
        /// spaces (local database only: it runs on this machine).
        #[arg(long)]
        mcp_command: Option<String>,
        /// GLOB=CATEGORY: MCP tools whose names match GLOB go to CATEGORY
        /// (repeatable; first match wins).
        #[arg(long = "mcp-category")]
        mcp_categories: Vec<String>,
        /// A program this command may start as a stdio MCP server (its
        /// absolute path; repeatable): --mcp-command's program must be one.
        /// `serve` needs it too, in `allow_commands` under [mcp].
        #[arg(long = "allow-command", value_name = "PATH")]
        allow_commands: Vec<String>,
        /// Its failover tier: every strategy chooses among the healthy
        /// agents of the highest priority; lower ones are standbys.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// How long one call may take, in milliseconds [default: 30000].
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Calls it may have in flight at once; a busy agent is skipped
        /// [default: no limit].
        #[arg(long)]
        max_concurrency: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an agent.
    Remove {
        /// The agent's id (see `switchboard agents list`).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: AgentsCommand) -> switchboard::Result<()> {
    match cmd {
        AgentsCommand::List { store, json } => {
            let records = match store.client()? {
                Some(client) => serde_json::from_value(client.get("v1/agents").await?)
                    .map_err(|e| Error::internal("the server's agent list is not readable", e))?,
                None => local_list(&store)?,
            };
            print_list(&records, json)
        }
        AgentsCommand::Register {
            id,
            tools,
            endpoint,
            mcp,
            mcp_command,
            mcp_categories,
            allow_commands,
            priority,
            timeout_ms,
            max_concurrency,
            store,
        } => {
            let tools = tools
                .iter()
                .map(|t| t.parse())
                .collect::<switchboard::Result<Vec<ToolCategory>>>()?;
            let server = mcp_server(mcp, mcp_command, &mcp_categories)?;
            if let Some(client) = store.client()? {
                if server.as_ref().is_some_and(|s| s.command.is_some()) {
                    return Err(Error::invalid(
                        "--mcp-command runs a program on the machine that serves it: register it on the data \
                         directory (without --server), or declare it in the server's config file",
                    ));
                }
                let mut body = serde_json::json!({
                    "tools": tools, "priority": priority,
                    "timeout_ms": timeout_ms, "max_concurrency": max_concurrency,
                });
                if let Some(endpoint) = &endpoint {
                    body["endpoint"] = serde_json::json!(endpoint);
                }
                if let Some(server) = &server {
                    body["mcp"] = serde_json::to_value(server).map_err(Error::storage)?;
                }
                let url = agent_url(&client, &id);
                client.send(Method::PUT, url, Some(&body)).await?;
                super::out(format_args!("registered {id}"))?;
                return Ok(());
            }
            let mut config = AgentConfig::new().with_tools(tools).with_priority(priority);
            if let Some(endpoint) = endpoint {
                config = config.with_endpoint(endpoint);
            }
            let is_mcp = server.is_some();
            if let Some(server) = server {
                config = config.with_mcp_server(server);
            }
            if let Some(ms) = timeout_ms {
                config = config.with_timeout(std::time::Duration::from_millis(ms));
            }
            if let Some(max) = max_concurrency {
                config = config.with_max_concurrency(max);
            }
            switchboard::CommandPolicy::new(&allow_commands)?.install();
            let dispatcher = store.dispatcher()?;
            dispatcher.register_agent(&id, config)?;
            if is_mcp {
                match dispatcher.discover_tools(&id).await {
                    Ok(tools) => {
                        return super::out(format_args!(
                            "registered {id} ({} MCP tools discovered)",
                            tools.len()
                        ))
                    }
                    Err(e) => super::out(format_args!(
                        "registered {id}; its tools could not be listed yet: {e}"
                    ))?,
                }
                return Ok(());
            }
            super::out(format_args!("registered {id}"))
        }
        AgentsCommand::Remove { id, store } => {
            match store.client()? {
                Some(client) => {
                    let url = agent_url(&client, &id);
                    client.send(Method::DELETE, url, None).await?;
                }
                None => store.dispatcher()?.unregister_agent(&id)?,
            }
            super::out(format_args!("removed {id}"))
        }
    }
}

/// `v1/agents/{id}`, the id escaped as one path segment.
fn agent_url(client: &Client, id: &str) -> reqwest::Url {
    let mut url = client.url("v1/agents/");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .pop_if_empty()
        .push(id);
    url
}

fn local_list(store: &StoreArgs) -> switchboard::Result<Vec<AgentRecord>> {
    let dispatcher = store.dispatcher()?;
    let ctx = PolicyContext::new()
        .with("source", "cli")
        .with("action", "list_agents");
    switchboard::server::visible_agents(&dispatcher, &ctx)
}

fn print_list(records: &[AgentRecord], json: bool) -> switchboard::Result<()> {
    if json {
        for r in records {
            super::out(serde_json::to_string(r).map_err(Error::storage)?)?;
        }
        return Ok(());
    }
    super::out(format_args!(
        "{:<24} {:<20} {:>8} {:<10} ENDPOINT",
        "AGENT", "TOOLS", "PRIORITY", "STATUS"
    ))?;
    for r in records {
        let tools: Vec<&str> = r.tools.iter().map(|t| t.as_str()).collect();
        let endpoint = r.transport.describe();
        super::out(format_args!(
            "{:<24} {:<20} {:>8} {:<10} {}",
            r.agent_id,
            tools.join(","),
            r.priority,
            format!("{:?}", r.status).to_lowercase(),
            endpoint
        ))?;
    }
    if records.is_empty() {
        super::out("(no agents registered)")?;
    }
    Ok(())
}

/// The MCP server of `--mcp` / `--mcp-command` and `--mcp-category`.
fn mcp_server(
    url: Option<String>,
    command: Option<String>,
    categories: &[String],
) -> switchboard::Result<Option<McpServer>> {
    let mut server = match (url, command) {
        (Some(url), _) => McpServer::http(url),
        (None, Some(command)) => {
            let mut words = command.split_whitespace().map(str::to_string);
            let Some(program) = words.next() else {
                return Err(Error::invalid(
                    "--mcp-command is empty; give the program and its arguments",
                ));
            };
            let mut server = McpServer::stdio(program, words.collect());
            // Relative to where this command runs, also when a server far
            // from here registers it.
            if let (Some(command), Ok(here)) = (server.command.as_mut(), std::env::current_dir()) {
                command.resolve_relative_paths(&here);
            }
            server
        }
        (None, None) => {
            if !categories.is_empty() {
                return Err(Error::invalid(
                    "--mcp-category needs --mcp or --mcp-command",
                ));
            }
            return Ok(None);
        }
    };
    for rule in categories {
        let Some((glob, category)) = rule.split_once('=') else {
            return Err(Error::invalid(format!(
                "--mcp-category {rule:?}: write GLOB=CATEGORY, e.g. search_*=search"
            )));
        };
        server.category_rules.push(CategoryRule {
            glob: glob.to_string(),
            category: category.parse()?,
        });
    }
    Ok(Some(server))
}
