//! Subcommands for a person at a terminal. Each opens the embedded database
//! directly, or with `--server URL` talks to a running `switchboard serve`
//! (which holds the database) over its HTTP API (`client.rs`). This file holds
//! the command table and what the commands share (opening the store under its
//! policies); each command lives in its own file.

mod agents;
mod client;
#[cfg(feature = "cluster")]
mod cluster;
mod config;
mod demo;
mod invoke;
mod mcp;
mod mcp_bridge;
mod metrics;
mod policy;
mod scan;
mod serve;
mod tokens;
mod tools;

pub use client::{Client, ServerArgs};

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use switchboard::config::DEFAULT_DATA_DIR;
use switchboard::{Database, Error, ToolDispatcher};

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
    /// Route one tool call to an agent (HTTP or MCP) and print the result.
    Invoke(invoke::InvokeArgs),
    /// Print every record under a key prefix (the audit trail).
    Scan(scan::ScanArgs),
    /// Print per-agent metrics (a server's, with --server).
    Metrics(metrics::MetricsArgs),
    /// List the tools MCP agents serve (agent, category, schema hash).
    Tools(tools::ToolsArgs),
    /// Work with Rego policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Issue, list or revoke API tokens.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// The nodes of a cluster (cluster mode, docs/cluster.md).
    #[cfg(feature = "cluster")]
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Check a config file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the guided demo on a throwaway database.
    Demo(DemoArgs),
    /// Serve MCP on stdin/stdout (for desktop MCP clients; see docs/mcp.md).
    ///
    /// Serves the agents of the database in --data, or, with --server URL
    /// (or SWITCHBOARD_URL), relays to that running `switchboard serve`'s
    /// /mcp with the token from SWITCHBOARD_TOKEN (or --token).
    Mcp(mcp::McpArgs),
}

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's database in this directory [default: a temporary
    /// directory, removed at the end].
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// The database and the policies every read and write of a command runs under.
#[derive(Args)]
pub struct StoreArgs {
    /// The database directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Directory of *.rego policies to import into the database's stored
    /// policies before the command runs (local database only; on a server use
    /// `policy put --server`). Stored policies apply to every later command.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub remote: ServerArgs,
}

impl StoreArgs {
    /// The server to talk to, if `--server` or `SWITCHBOARD_URL` names one.
    pub fn client(&self) -> switchboard::Result<Option<Client>> {
        let client = self.remote.client()?;
        if client.is_some() && self.policies.is_some() {
            return Err(Error::invalid(
                "--policies imports into the local database; a server keeps its policies in its own: use `switchboard policy put FILE --server URL`",
            ));
        }
        Ok(client)
    }

    /// Opens the database (which installs its stored policies) and imports
    /// `--policies` before anything reads or writes through it.
    pub fn open(&self) -> switchboard::Result<Database> {
        let db = open(&self.data)?;
        if let Some(dir) = &self.policies {
            db.import_policies(dir)?;
        }
        Ok(db)
    }

    /// A dispatcher over [`open`](Self::open)'s database: recovery and the
    /// registry load already run under the policies.
    pub fn dispatcher(&self) -> switchboard::Result<ToolDispatcher> {
        ToolDispatcher::try_new(self.open()?)
    }
}

/// Writes one line to stdout. When the reader has gone (`switchboard scan
/// tools/ | head -1`) the process ends quietly with status 0: the output
/// nobody reads is not an error, and a panic would be noise.
pub fn out(line: impl std::fmt::Display) -> switchboard::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Error::internal("cannot write to standard output", e)),
    }
}

/// `println!` through [`out`]: a closed stdout ends the process quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))?
    };
}
pub(crate) use say;

/// "1 record", "2 records".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from milliseconds since the Unix epoch
/// (the civil-from-days conversion of Howard Hinnant's date algorithms).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
    dispatch(cli).await.map_err(in_cli_words)
}

/// Where the commands that route calls (`serve`, `mcp`) export traces: the
/// config file's `[telemetry]` with the `OTEL_*` variables over it. `None`
/// for the other commands, which make no spans.
pub fn telemetry_config(
    command: &Command,
) -> switchboard::Result<Option<switchboard::telemetry::TelemetryConfig>> {
    let section = match command {
        Command::Serve(args) => match &args.config {
            Some(path) => switchboard::config::Config::read(path)?.telemetry,
            None => Default::default(),
        },
        Command::Mcp(_) => Default::default(),
        _ => return Ok(None),
    };
    section.with_env().map(Some)
}

/// The library's messages name its Rust API; at the terminal, name commands.
fn in_cli_words(e: Error) -> Error {
    match e {
        Error::UnknownAgent(id) => Error::invalid(format!(
            "unknown agent {id}: see `switchboard agents list`, or add it with `switchboard agents register {id} --tools … --endpoint …`"
        )),
        other => other,
    }
}

async fn dispatch(cli: Cli) -> switchboard::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Agents(cmd) => agents::run(cmd).await,
        Command::Invoke(args) => invoke::run(args).await,
        Command::Scan(args) => scan::run(args).await,
        Command::Metrics(args) => metrics::run(args).await,
        Command::Tools(args) => tools::run(args).await,
        Command::Policy(cmd) => policy::run(cmd).await,
        Command::Tokens(cmd) => tokens::run(cmd).await,
        Command::Config(cmd) => config::run(cmd),
        #[cfg(feature = "cluster")]
        Command::Cluster(cmd) => cluster::run(cmd).await,
        Command::Demo(args) => demo::run(args.data).await,
        Command::Mcp(args) => mcp::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(super::utc(1_709_210_096_000), "2024-02-29 12:34:56");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
