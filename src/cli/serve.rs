//! `switchboard serve`: the config file, overridden by flags.

use clap::Args;
use std::path::PathBuf;
use switchboard::config::Config;

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
    /// A second address serving only GET /metrics, without a token.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Cluster mode: etcd client URLs, comma-separated (see docs/cluster.md).
    #[arg(long, value_delimiter = ',')]
    pub cluster_etcd: Vec<String>,
    /// Cluster mode: this node's id, unique among the nodes.
    #[arg(long)]
    pub node_id: Option<String>,
}

pub async fn run(args: ServeArgs) -> switchboard::Result<()> {
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
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if !args.cluster_etcd.is_empty() || args.node_id.is_some() {
        let mut section = config.cluster.take().unwrap_or_default();
        if !args.cluster_etcd.is_empty() {
            section.etcd = args.cluster_etcd;
        }
        if let Some(id) = args.node_id {
            section.node_id = id;
        }
        if section.etcd.is_empty() {
            return Err(switchboard::Error::invalid(
                "--node-id needs --cluster-etcd URL (or `etcd` under [cluster] in the config)",
            ));
        }
        config.cluster = Some(section);
    }
    switchboard::server::serve(config, switchboard::server::shutdown_signal()).await
}
