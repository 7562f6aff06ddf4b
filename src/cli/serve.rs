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
    /// Cluster mode: while etcd is unreachable, `strict` refuses sessions
    /// with no binding yet (503 cluster_unavailable); `best_effort` (the
    /// default) binds them on this node and publishes the binding when etcd
    /// is back.
    #[arg(long, value_name = "MODE")]
    pub cluster_bindings: Option<switchboard::config::ClusterBindings>,
    /// Cluster mode: start even when no etcd member answers, routing from
    /// the agents in this node's own store (degraded) until etcd is back.
    #[arg(long)]
    pub cluster_start_from_snapshot: bool,
    /// Cluster mode: seconds a session binding lasts from when it is made
    /// (default 86400); the session is then bound anew.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_binding_ttl: Option<u64>,
    /// A program this node may start as a stdio MCP server (its absolute
    /// path; repeatable), added to `allow_commands` under [mcp].
    #[arg(long = "allow-command", value_name = "PATH")]
    pub allow_commands: Vec<String>,
    /// PEM file of extra CA certificates trusted for https:// agents
    /// (besides the built-in webpki roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> switchboard::Result<()> {
    let mut config = match &args.config {
        // Checked whole, flags included, by the server's preflight.
        Some(path) => Config::read(path)?,
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
    if !args.cluster_etcd.is_empty()
        || args.node_id.is_some()
        || args.cluster_bindings.is_some()
        || args.cluster_start_from_snapshot
        || args.cluster_binding_ttl.is_some()
    {
        let mut section = config.cluster.take().unwrap_or_default();
        if let Some(mode) = args.cluster_bindings {
            section.bindings = mode;
        }
        if args.cluster_start_from_snapshot {
            section.start_from_snapshot = true;
        }
        if let Some(secs) = args.cluster_binding_ttl {
            section.binding_ttl_secs = Some(secs);
        }
        if !args.cluster_etcd.is_empty() {
            section.etcd = args.cluster_etcd;
        }
        if let Some(id) = args.node_id {
            section.node_id = id;
        }
        if section.etcd.is_empty() {
            return Err(switchboard::Error::invalid(
                "--node-id, --cluster-bindings and --cluster-start-from-snapshot need \
                 --cluster-etcd URL (or `etcd` under [cluster] in the config)",
            ));
        }
        config.cluster = Some(section);
    }
    config.mcp.allow_commands.extend(args.allow_commands);
    if let Some(ca_file) = args.ca_file {
        config.tls.ca_file = Some(ca_file);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
    }
    switchboard::server::serve(config, switchboard::server::shutdown_signal()).await
}
