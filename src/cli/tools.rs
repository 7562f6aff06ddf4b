//! `switchboard tools`: the tools MCP agents serve by name (agent, name,
//! the name callers use, category, schema hash), from a server's
//! `GET /v1/tools` or, on the local database, as the last discovery stored
//! them under `mcp_tools/`.

use super::StoreArgs;
use clap::Args;
use switchboard::{DiscoveredTool, Error};

#[derive(Args)]
pub struct ToolsArgs {
    /// One JSON record per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: ToolsArgs) -> switchboard::Result<()> {
    let tools: Vec<DiscoveredTool> = match args.store.client()? {
        Some(client) => serde_json::from_value(client.get("v1/tools").await?)
            .map_err(|e| Error::internal("the server's tool list is not readable", e))?,
        None => args.store.dispatcher()?.discovered_tools(),
    };
    if args.json {
        for tool in &tools {
            super::out(serde_json::to_string(tool).map_err(Error::storage)?)?;
        }
        return Ok(());
    }
    super::out(format_args!(
        "{:<20} {:<24} {:<28} {:<12} SCHEMA_HASH",
        "AGENT", "TOOL", "CALLED_AS", "CATEGORY"
    ))?;
    for t in &tools {
        super::out(format_args!(
            "{:<20} {:<24} {:<28} {:<12} {}",
            t.agent_id,
            t.name,
            t.exposed_name,
            t.category.as_str(),
            &t.schema_hash[..t.schema_hash.len().min(16)],
        ))?;
    }
    if tools.is_empty() {
        super::out("(no MCP tools discovered)")?;
    }
    Ok(())
}
