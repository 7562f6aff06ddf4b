//! `switchboard mcp`: MCP on stdin/stdout, for desktop MCP clients that
//! launch their servers as commands. Without `--server` it serves the
//! agents of a database it opens itself; with `--server URL` (or
//! `SWITCHBOARD_URL`) it relays to that running server's `/mcp`
//! (`mcp_bridge.rs`), which keeps the database and decides what is listed.

use super::{mcp_bridge, open, ServerArgs};
use clap::Args;
use std::path::PathBuf;
use switchboard::config::DEFAULT_DATA_DIR;
use switchboard::mcp::server::SwitchboardMcp;
use switchboard::{Error, ToolDispatcher};

/// `switchboard mcp`: the database and policies it serves over stdio, or
/// the server it relays to.
#[derive(Args)]
pub struct McpArgs {
    /// The database directory (without --server).
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
    // With --server: relay to that server's /mcp, with its token.
    #[command(flatten)]
    pub remote: ServerArgs,
}

pub async fn run(args: McpArgs) -> switchboard::Result<()> {
    if let Some(client) = args.remote.client()? {
        if args.policies.is_some() || !args.allow_commands.is_empty() || args.no_category_tools {
            return Err(Error::invalid(
                "--policies, --allow-command and --no-category-tools are for a local database; \
                 a server decides them in its own config ([mcp] section, policies_dir): drop \
                 them, or drop --server (and unset SWITCHBOARD_URL)",
            ));
        }
        return mcp_bridge::relay(&client).await;
    }
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
