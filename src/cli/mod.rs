//! Subcommands for a person at a terminal. Each opens the embedded database
//! directly (so it must not be held by a running `switchboard serve`; use the
//! HTTP API then). This file holds the command table and what the commands
//! share (opening the store under its policies); each command lives in its
//! own file.

mod agents;
mod demo;
mod invoke;
mod policy;
mod scan;
mod serve;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use switchboard::config::DEFAULT_DATA_DIR;
use switchboard::{Database, Error, PolicyEngine, ToolDispatcher};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Routes tool invocations across AI agents over a policy-checked RocksDB store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(serve::ServeArgs),
    /// List, register or remove agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Route one tool call to an HTTP agent and print the result.
    Invoke(invoke::InvokeArgs),
    /// Print every record under a key prefix (the audit trail).
    Scan(scan::ScanArgs),
    /// Work with Rego policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the guided demo on the embedded database.
    Demo(DataArgs),
    /// Serve MCP on stdin/stdout (for desktop MCP clients; see docs/mcp.md).
    Mcp(DataArgs),
}

#[derive(Args)]
pub struct DataArgs {
    /// The database directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
}

/// The database and the policies every read and write of a command runs under.
#[derive(Args)]
pub struct StoreArgs {
    /// The database directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Directory of *.rego policies this command runs under.
    #[arg(long)]
    pub policies: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the database and loads `--policies` before anything reads or
    /// writes through it.
    pub fn open(&self) -> switchboard::Result<Database> {
        let db = open(&self.data)?;
        if let Some(dir) = &self.policies {
            PolicyEngine::new(&db).load_dir(dir)?;
        }
        Ok(db)
    }

    /// A dispatcher over [`open`](Self::open)'s database: recovery and the
    /// registry load already run under the policies.
    pub fn dispatcher(&self) -> switchboard::Result<ToolDispatcher> {
        ToolDispatcher::try_new(self.open()?)
    }
}

/// Opens the database, turning RocksDB's lock error into advice.
fn open(data: &Path) -> switchboard::Result<Database> {
    Database::open(data).map_err(|e| match e {
        Error::Storage(m) if m.contains("lock") => Error::Storage(format!(
            "{m}\nanother process (a running `switchboard serve`?) holds this database; use its HTTP API, or stop it"
        )),
        other => other,
    })
}

pub async fn run(cli: Cli) -> switchboard::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Agents(cmd) => agents::run(cmd),
        Command::Invoke(args) => invoke::run(args).await,
        Command::Scan(args) => scan::run(args),
        Command::Policy(policy::PolicyCommand::Check { file }) => policy::check(&file),
        Command::Demo(args) => demo::run(&args.data).await,
        // MCP integration point: `switchboard mcp` (stdio).
        Command::Mcp(args) => {
            switchboard::mcp::stdio::serve_stdio(ToolDispatcher::try_new(open(&args.data)?)?).await
        }
    }
}
