//! `switchboard agents list|register|remove`.

use super::StoreArgs;
use clap::Subcommand;
use switchboard::namespace::AgentTransport;
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

pub fn run(cmd: AgentsCommand) -> switchboard::Result<()> {
    match cmd {
        AgentsCommand::List { store, json } => list(&store, json),
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
            println!("registered {id}");
            Ok(())
        }
        AgentsCommand::Remove { id, store } => {
            store.dispatcher()?.unregister_agent(&id)?;
            println!("removed {id}");
            Ok(())
        }
    }
}

fn list(store: &StoreArgs, json: bool) -> switchboard::Result<()> {
    let dispatcher = store.dispatcher()?;
    let ctx = PolicyContext::new()
        .with("source", "cli")
        .with("action", "list_agents");
    let records = switchboard::server::visible_agents(&dispatcher, &ctx)?;
    if json {
        for r in &records {
            println!("{}", serde_json::to_string(r).map_err(Error::storage)?);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:>8} {:<10} ENDPOINT",
        "AGENT", "TOOLS", "PRIORITY", "STATUS"
    );
    for r in &records {
        let tools: Vec<&str> = r.tools.iter().map(|t| t.as_str()).collect();
        let endpoint = match &r.transport {
            AgentTransport::Local => "(local handler)".to_string(),
            AgentTransport::Http { endpoint, .. } => endpoint.clone(),
        };
        println!(
            "{:<24} {:<20} {:>8} {:<10} {}",
            r.agent_id,
            tools.join(","),
            r.priority,
            format!("{:?}", r.status).to_lowercase(),
            endpoint
        );
    }
    if records.is_empty() {
        println!("(no agents registered)");
    }
    Ok(())
}
