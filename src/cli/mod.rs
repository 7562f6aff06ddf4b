//! Subcommands for a person at a terminal. Each opens the embedded database
//! directly (so it must not be held by a running `switchboard serve`; use the
//! HTTP API then).

mod demo;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use switchboard::config::{Config, DEFAULT_DATA_DIR};
use switchboard::namespace::AgentTransport;
use switchboard::{
    AgentConfig, Database, Error, PolicyEngine, RoutingOptions, RoutingStrategy, ToolCategory,
    ToolDispatcher,
};

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
    Serve(ServeArgs),
    /// List, register or remove agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Route one tool call to an HTTP agent and print the result.
    Invoke(InvokeArgs),
    /// Print every record under a key prefix (the audit trail).
    Scan(ScanArgs),
    /// Work with Rego policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
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

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The database directory [default: ./switchboard_data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Directory of *.rego policies to load at start.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long)]
    pub listen: Option<String>,
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// List registered agents.
    List {
        #[command(flatten)]
        data: DataArgs,
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
        data: DataArgs,
    },
    /// Remove an agent.
    Remove {
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Args)]
pub struct InvokeArgs {
    pub tool: String,
    #[arg(long)]
    pub category: String,
    /// The input as JSON.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// round_robin, random, least_loaded, priority, sticky or fastest.
    #[arg(long, default_value = "round_robin")]
    pub strategy: String,
    #[arg(long)]
    pub session: Option<String>,
    /// Directory of *.rego policies to apply to this call.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Args)]
pub struct ScanArgs {
    /// Key prefix, e.g. tools/ or tools/code/code_exec/.
    pub prefix: String,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Compile a Rego module (and its scope header) and run its *_test.rego tests.
    Check { file: PathBuf },
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
        Command::Serve(args) => serve(args).await,
        Command::Agents(cmd) => agents(cmd),
        Command::Invoke(args) => invoke(args).await,
        Command::Scan(args) => scan(args),
        Command::Policy(PolicyCommand::Check { file }) => policy_check(&file),
        Command::Demo(args) => demo::run(&args.data).await,
        // MCP integration point: `switchboard mcp` (stdio).
        Command::Mcp(args) => {
            switchboard::mcp::stdio::serve_stdio(ToolDispatcher::try_new(open(&args.data)?)?).await
        }
    }
}

async fn serve(args: ServeArgs) -> switchboard::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(policies) = args.policies {
        config.policies_dir = Some(policies);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    switchboard::server::serve(config, switchboard::server::shutdown_signal()).await
}

fn agents(cmd: AgentsCommand) -> switchboard::Result<()> {
    match cmd {
        AgentsCommand::List { data, json } => {
            let dispatcher = ToolDispatcher::try_new(open(&data.data)?)?;
            let registry = dispatcher.registry();
            let records: Vec<_> = registry
                .list()
                .iter()
                .filter_map(|id| registry.get(id))
                .collect();
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
        AgentsCommand::Register {
            id,
            tools,
            endpoint,
            priority,
            timeout_ms,
            max_concurrency,
            data,
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
            ToolDispatcher::try_new(open(&data.data)?)?.register_agent(&id, config)?;
            println!("registered {id}");
            Ok(())
        }
        AgentsCommand::Remove { id, data } => {
            ToolDispatcher::try_new(open(&data.data)?)?.unregister_agent(&id)?;
            println!("removed {id}");
            Ok(())
        }
    }
}

async fn invoke(args: InvokeArgs) -> switchboard::Result<()> {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| Error::invalid(format!("--input is not JSON: {e}")))?;
    let strategy: RoutingStrategy = args.strategy.parse()?;
    let category: ToolCategory = args.category.parse()?;
    let db = open(&args.data.data)?;
    if let Some(dir) = &args.policies {
        PolicyEngine::new(&db).load_dir(dir)?;
    }
    let dispatcher = ToolDispatcher::try_new(db)?;
    let mut options = RoutingOptions::new().with_strategy(strategy);
    if let Some(session) = args.session {
        options = options.with_session_id(session);
    }
    let result = dispatcher
        .invoke(&args.tool, category, input, options)
        .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&result).map_err(Error::storage)?
    );
    Ok(())
}

fn scan(args: ScanArgs) -> switchboard::Result<()> {
    let db = open(&args.data.data)?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut count = 0;
    if !args.json {
        println!("{:<64} VALUE", "KEY");
    }
    for kv in db.scan(&args.prefix).take(limit) {
        let (key, value) = kv?;
        let text = String::from_utf8_lossy(&value);
        if args.json {
            let value: serde_json::Value = serde_json::from_slice(&value)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
            println!("{}", serde_json::json!({"key": key, "value": value}));
        } else {
            let shown: String = text.chars().take(100).collect();
            let ellipsis = if text.chars().count() > 100 {
                "…"
            } else {
                ""
            };
            println!("{key:<64} {shown}{ellipsis}");
        }
        count += 1;
    }
    if !args.json {
        println!("({count} records)");
    }
    Ok(())
}

fn policy_check(file: &Path) -> switchboard::Result<()> {
    let results = switchboard::policy::rego::run_tests(file)?;
    let scopes = switchboard::policy::rego::declared_scopes(
        &file.display().to_string(),
        &std::fs::read_to_string(file).map_err(|e| Error::invalid(e.to_string()))?,
    )?;
    let scopes: Vec<&str> = scopes.iter().map(|g| g.as_str()).collect();
    println!("{}: compiles; scope {}", file.display(), scopes.join(", "));
    if results.is_empty() {
        println!(
            "no tests (add {}_test.rego beside it)",
            file.file_stem().and_then(|s| s.to_str()).unwrap_or("")
        );
        return Ok(());
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for r in &results {
        match &r.detail {
            None => println!("  PASS {}", r.name),
            Some(d) => println!("  FAIL {} ({d})", r.name),
        }
    }
    println!(
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{} policy test(s) failed",
            failed.len()
        )))
    }
}
