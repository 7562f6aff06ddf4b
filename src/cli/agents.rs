//! `switchboard agents list|register|remove`, on the local database or
//! through a server's `/v1/agents` routes.

use super::{Client, StoreArgs};
use clap::Subcommand;
use reqwest::Method;
use switchboard::namespace::AgentRecord;
use switchboard::{AgentConfig, Error, PolicyContext, ToolCategory};

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
    /// Register (or replace) an HTTP agent.
    Register {
        id: String,
        /// Comma-separated categories, e.g. code,shell.
        #[arg(long, value_delimiter = ',', required = true)]
        tools: Vec<String>,
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        max_concurrency: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an agent.
    Remove {
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
            priority,
            timeout_ms,
            max_concurrency,
            store,
        } => {
            let tools = tools
                .iter()
                .map(|t| t.parse())
                .collect::<switchboard::Result<Vec<ToolCategory>>>()?;
            if let Some(client) = store.client()? {
                let body = serde_json::json!({
                    "tools": tools, "endpoint": endpoint, "priority": priority,
                    "timeout_ms": timeout_ms, "max_concurrency": max_concurrency,
                });
                let url = agent_url(&client, &id);
                client.send(Method::PUT, url, Some(&body)).await?;
                super::out(format_args!("registered {id}"))?;
                return Ok(());
            }
            let mut config = AgentConfig::new()
                .with_tools(tools)
                .with_endpoint(endpoint)
                .with_priority(priority);
            if let Some(ms) = timeout_ms {
                config = config.with_timeout(std::time::Duration::from_millis(ms));
            }
            if let Some(max) = max_concurrency {
                config = config.with_max_concurrency(max);
            }
            store.dispatcher()?.register_agent(&id, config)?;
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
