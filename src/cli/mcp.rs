//! `switchboard mcp`: MCP on stdin/stdout, for desktop MCP clients that
//! launch their servers as commands: the agents of a database it opens
//! itself.

use super::open;
use clap::Args;
use std::path::PathBuf;
use switchboard::config::DEFAULT_DATA_DIR;
use switchboard::mcp::server::SwitchboardMcp;
use switchboard::ToolDispatcher;

/// `switchboard mcp`: the database and policies it serves over stdio.
#[derive(Args)]
pub struct McpArgs {
    /// The database directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Directory of *.rego policies to import into the database's stored policies.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// A program the stdio MCP agents of the database may be started with
    /// (its absolute path; repeatable). None by default.
    #[arg(long = "allow-command", value_name = "PATH")]
    pub allow_commands: Vec<String>,
    /// List only the tools MCP agents serve by name: no category tools.
    #[arg(long)]
    pub no_category_tools: bool,
}

pub async fn run(args: McpArgs) -> switchboard::Result<()> {
    switchboard::CommandPolicy::new(&args.allow_commands)?.install();
    let db = open(&args.data)?;
    if let Some(dir) = &args.policies {
        db.import_policies(dir)?;
    }
    let dispatcher = ToolDispatcher::try_new(db)?;
    dispatcher.start_discovery();
    let handler = SwitchboardMcp::new(dispatcher).with_category_tools(!args.no_category_tools);
    switchboard::mcp::stdio::serve_stdio(handler).await
}
