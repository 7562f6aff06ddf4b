//! `switchboard cluster status`: the live nodes of a server's cluster, from
//! its `GET /v1/cluster`, with each node's policy revision (and a warning
//! when they differ) and the agents its health checks eject.

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
        "{:<24} {:<24} {:<14} {:<14} UNHEALTHY_AGENTS",
        "NODE", "LISTEN", "POLICY_REV", "STARTED_AT_MS"
    ))?;
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    for node in &nodes {
        let unhealthy: Vec<&str> = node["unhealthy_agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str())
            .collect();
        super::out(format_args!(
            "{:<24} {:<24} {:<14} {:<14} {}",
            node["node_id"].as_str().unwrap_or("?"),
            node["listen"].as_str().unwrap_or("?"),
            node["policy_revision"].as_str().unwrap_or("unknown"),
            node["started_at_ms"],
            if unhealthy.is_empty() {
                "-".to_string()
            } else {
                unhealthy.join(",")
            },
        ))?;
    }
    if status["policies_agree"] == false {
        let mut by_revision: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for node in &nodes {
            by_revision
                .entry(node["policy_revision"].as_str().unwrap_or("unknown"))
                .or_default()
                .push(node["node_id"].as_str().unwrap_or("?"));
        }
        let groups: Vec<String> = by_revision
            .iter()
            .map(|(revision, ids)| format!("{revision}: {}", ids.join(", ")))
            .collect();
        super::out(format_args!(
            "WARNING: the nodes run different policies ({}); give every node the same \
             policies_dir and put stored policies through every node",
            groups.join("; ")
        ))?;
    }
    Ok(())
}
