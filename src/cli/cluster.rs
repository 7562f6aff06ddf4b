//! `switchboard cluster status`: the live nodes of a server's cluster, from
//! its `GET /v1/cluster`.

use super::ServerArgs;
use clap::{Args, Subcommand};
use switchboard::Error;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// List the live nodes (those whose lease has not expired).
    Status(StatusArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    /// The answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(command: ClusterCommand) -> switchboard::Result<()> {
    let ClusterCommand::Status(args) = command;
    let Some(client) = args.server.client()? else {
        return Err(Error::invalid(
            "cluster status asks a running node: add --server URL (or set SWITCHBOARD_URL)",
        ));
    };
    let status = client.get("v1/cluster").await?;
    if args.json {
        return super::out(status);
    }
    if status["mode"] == "single" {
        return super::out("(this server is not in cluster mode)");
    }
    super::out(format_args!(
        "{:<24} {:<24} STARTED_AT_MS",
        "NODE", "LISTEN"
    ))?;
    for node in status["nodes"].as_array().into_iter().flatten() {
        super::out(format_args!(
            "{:<24} {:<24} {}",
            node["node_id"].as_str().unwrap_or("?"),
            node["listen"].as_str().unwrap_or("?"),
            node["started_at_ms"],
        ))?;
    }
    Ok(())
}
