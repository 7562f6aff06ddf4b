//! The server's TOML configuration file. Every field is optional; command-line
//! flags override the file, `SWITCHBOARD_TOKEN` overrides `token`, and the
//! standard `OTEL_*` variables override `[telemetry]`.
//! `docs/configuration.md` documents each option.
//!
//! One schema, a struct per `[section]`:
//! - this file: [`Config`], the whole file, read and resolved against its
//!   directory;
//! - `sections`: the sections' structs and defaults (`cluster`: `[cluster]`,
//!   the largest, whose settings must agree with each other);
//! - `check`: every [`Problem`] of the text at once, each with its key;
//! - `apply`: what the config builds at start (policies, agents, TLS trust,
//!   database options, health checks).
//!
//! `[telemetry]` is the library's own [`TelemetryConfig`](crate::telemetry::TelemetryConfig)
//! (the binary starts the exporter before `serve` reads the rest).

use crate::error::{Error, Result};
use crate::policy::RegoEvaluator;
use serde::Deserialize;
use std::path::{Path, PathBuf};

mod apply;
mod check;
mod cluster;
mod sections;
pub use check::{refuse, Problem};
pub use cluster::{
    ClusterBindings, ClusterSection, DEFAULT_BINDING_TTL_SECS, DEFAULT_CLUSTER_SECRET_ENV,
};
pub use sections::{
    AgentEntry, AuthSection, DecisionLogSection, HealthSection, LimitsSection, McpSection,
    NetworkSection, RateLimitEntry, RecordsSection, StorageSection, TlsSection,
};

/// Where `switchboard` keeps its database unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./switchboard_data";
/// Where `switchboard serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// The largest request body the HTTP API accepts by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The address the HTTP API listens on (`host:port`).
    pub listen: String,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// A directory of `.rego` modules imported into the database's stored
    /// policies at start (each file's header names its scope).
    pub policies_dir: Option<PathBuf>,
    /// How the modules of `policies_dir` are evaluated.
    pub rego_evaluator: RegoEvaluator,
    /// Bearer token required by every route but `/healthz`.
    pub token: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Host names (with or without a port) requests may be addressed to, besides
    /// the listen address itself (and `localhost` when listening on loopback).
    pub allowed_hosts: Vec<String>,
    /// `[limits]`: per-request bounds of the HTTP API.
    pub limits: LimitsSection,
    /// `[network]`: which addresses agents may be registered at.
    pub network: NetworkSection,
    /// `[tls]`: extra CAs trusted for `https://` agents; the certificate
    /// the API is served with over HTTPS.
    pub tls: TlsSection,
    /// `[health]`: background health checks of HTTP agents.
    pub health: HealthSection,
    /// `[storage]`: how the database is opened.
    pub storage: StorageSection,
    /// `[[rate_limits]]`, added to the policy chain at start.
    pub rate_limits: Vec<RateLimitEntry>,
    /// `[decision_log]`: how much of the decision log to keep.
    pub decision_log: DecisionLogSection,
    /// `[[agents]]`: HTTP agents registered (or replaced) at start.
    pub agents: Vec<AgentEntry>,
    /// `[auth]`: who may call besides the static token (JWT verification).
    pub auth: AuthSection,
    /// A second listen address serving only `GET /metrics`, without a
    /// token (for Prometheus); `/metrics` on the API still needs one.
    pub metrics_listen: Option<String>,
    /// `[records]`: what dispatch records keep of each call's arguments and output.
    pub records: RecordsSection,
    /// `[cluster]`: share agents and session bindings with other nodes through etcd.
    pub cluster: Option<ClusterSection>,
    /// `[mcp]`: which programs this node may start as stdio MCP servers;
    /// whether `/mcp` lists category tools.
    pub mcp: McpSection,
    /// `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP (the
    /// standard `OTEL_*` variables win over its keys).
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            data_dir: DEFAULT_DATA_DIR.into(),
            policies_dir: None,
            rego_evaluator: RegoEvaluator::default(),
            token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace_secs: 30,
            allowed_hosts: Vec::new(),
            limits: LimitsSection::default(),
            network: NetworkSection::default(),
            tls: TlsSection::default(),
            health: HealthSection::default(),
            storage: StorageSection::default(),
            rate_limits: Vec::new(),
            decision_log: DecisionLogSection::default(),
            agents: Vec::new(),
            auth: AuthSection::default(),
            metrics_listen: None,
            records: RecordsSection::default(),
            cluster: None,
            mcp: McpSection::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// Reads and checks a config file (see [`read`](Self::read)).
    pub fn load(path: &Path) -> Result<Config> {
        let config = Self::read(path)?;
        config.validate().map_err(|e| match e {
            Error::InvalidInput(m) => Error::invalid(format!("config {}: {m}", path.display())),
            other => other,
        })?;
        Ok(config)
    }

    /// Reads a config file without checking its values (for a caller that
    /// reports every problem itself). Relative paths (`data_dir`,
    /// `policies_dir`, the TLS, JWT and etcd files) are resolved against the
    /// file's directory, so the file means the same whatever directory
    /// `serve` starts in.
    pub fn read(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read config {}: {e}", path.display())))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.data_dir = base.join(&config.data_dir);
        config.policies_dir = config.policies_dir.map(|p| base.join(p));
        let tls = &mut config.tls;
        for path in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
            *path = path.take().map(|p| base.join(p));
        }
        if let Some(jwt) = &mut config.auth.jwt {
            for path in &mut jwt.public_key_files {
                *path = base.join(&*path);
            }
            jwt.jwks_file = jwt.jwks_file.take().map(|p| base.join(p));
        }
        if let Some(cluster) = &mut config.cluster {
            for path in [
                &mut cluster.password_file,
                &mut cluster.secret_file,
                &mut cluster.ca_file,
                &mut cluster.cert_file,
                &mut cluster.key_file,
            ] {
                *path = path.take().map(|p| base.join(p));
            }
        }
        Ok(config)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// A line saying what `serve` would do with this config.
    pub fn summary(&self) -> String {
        let policies = match &self.policies_dir {
            Some(dir) => match crate::policy::rego::module_files(dir) {
                Ok(files) => format!("{} policy file(s) in {}", files.len(), dir.display()),
                Err(_) => format!("policies from {}", dir.display()),
            },
            None => "no policies".to_string(),
        };
        format!(
            "listen {}, data {}, {policies}, token {}",
            self.listen,
            self.data_dir.display(),
            if self.token.is_some() {
                "set"
            } else {
                "not set"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::ToolCategory;
    use crate::storage::Durability;

    #[test]
    fn cluster_bindings_and_start_from_snapshot_parse_with_defaults() {
        let base = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode_id = \"n1\"\n";
        let c = Config::parse(base).unwrap().cluster.unwrap();
        assert_eq!(c.bindings, ClusterBindings::BestEffort);
        assert!(!c.start_from_snapshot);
        let c = Config::parse(&format!(
            "{base}bindings = \"strict\"\nstart_from_snapshot = true\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.bindings, ClusterBindings::Strict);
        assert!(c.start_from_snapshot);
        assert!(Config::parse(&format!("{base}bindings = \"sometimes\"\n")).is_err());
    }

    #[test]
    fn auth_jwt_and_metrics_listen_parse_and_bad_jwt_settings_are_refused() {
        let c = Config::parse(
            "metrics_listen = \"127.0.0.1:9100\"\n[auth.jwt]\nissuer = \"https://idp\"\n\
             audience = \"sb\"\npublic_key_files = [\"k.pem\"]\nclaims = [\"email\"]\n",
        )
        .unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(c.auth.jwt.unwrap().claims, vec!["email".to_string()]);
        for bad in [
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n",
            "[auth.jwt]\nissuer = \"\"\naudience = \"a\"\njwks_file = \"k\"\n",
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"k\"\nleeway_secs = 3600\n",
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"k\"\nsecret = \"x\"\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_every_option_and_refuses_unknown_ones() {
        let c = Config::parse(
            r#"
listen = "127.0.0.1:9000"
data_dir = "/tmp/sb"
policies_dir = "policies"
rego_evaluator = "bytecode"
token = "s3cret"
max_body_bytes = 4096
shutdown_grace_secs = 5
allowed_hosts = ["switchboard.internal"]
[limits]
header_read_timeout_ms = 2000
request_timeout_ms = 9000
max_connections = 10
max_inflight_invokes = 3
[network]
allow = ["169.254.10.0/24"]
deny = ["10.0.0.0/8"]
[health]
enabled = false
interval_ms = 1000
timeout_ms = 200
unhealthy_threshold = 5
healthy_threshold = 1
[storage]
durability = "sync"
max_value_bytes = 2048
block_cache_bytes = 1048576
"#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.storage.durability, Durability::Sync);
        assert_eq!(c.rego_evaluator, RegoEvaluator::Bytecode);
        assert_eq!(c.database_options().block_cache_bytes, 1 << 20);
        assert_eq!(c.health_checks(), None);
        assert_eq!(c.limits.max_inflight_invokes, 3);
        assert!(!c
            .network_policy()
            .unwrap()
            .permits("10.1.1.1".parse().unwrap()));
        assert!(Config::parse("[network]\ndeny = [\"ten\"]").is_err());
        assert!(Config::parse("[limits]\nmax_connections = 0").is_err());
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert!(Config::parse("listen_addr = \"x\"")
            .unwrap_err()
            .to_string()
            .contains("listen_addr"));
        assert!(Config::parse("[storage]\ndurability = \"fast\"").is_err());
        assert!(Config::parse("rego_evaluator = \"jit\"").is_err());
        assert!(Config::parse("token = \"\"").is_err());
        let c = Config::parse(
            r#"
[decision_log]
max_entries = 10
max_age_secs = 3600
[[rate_limits]]
op = "dispatch"
max = 5
scope = "per_agent"
[[agents]]
id = "code_agent"
tools = ["code", "shell"]
endpoint = "http://127.0.0.1:8001/invoke"
priority = 3
"#,
        )
        .unwrap();
        assert_eq!(c.rate_limits[0].window_secs, 60);
        assert_eq!(c.agents[0].priority, 3);
        assert_eq!(c.decision_log.max_age_secs, Some(3600));
        assert!(Config::parse("[[rate_limits]]\nop = \"write\"\nmax = 1").is_err());
        let c = Config::parse(
            "[records]\nmax_input_bytes = 100\noutput = true\nredact = [\"api_key\", \"auth.token\"]",
        )
        .unwrap();
        let d = c.records.dispatcher_config();
        assert!(d.record_input && d.record_output && d.max_input_bytes == 100);
        assert_eq!(d.redact, ["api_key", "auth.token"]);
        assert!(Config::parse("[records]\nredact = [\"a..b\"]").is_err());
        assert!(
            Config::parse("[[agents]]\nid = \"a\"\ntools = []\nendpoint = \"http://x\"").is_err()
        );
        assert!(Config::parse(
            "[[agents]]\nid = \"a\"\ntools = [\"code\"]\nendpoint = \"x\"\ncolor = 1"
        )
        .is_err());
    }

    #[test]
    fn the_command_allow_list_and_etcd_protections_parse_and_bad_ones_are_refused() {
        let c = Config::parse(
            r#"
[mcp]
allow_commands = ["/usr/local/bin/files-mcp"]
[[agents]]
id = "files"
tools = ["file"]
mcp = { command = { program = "python", args = ["server.py"] } }
[cluster]
etcd = ["https://127.0.0.1:2379"]
node_id = "n1"
username = "switchboard"
password_env = "SB_ETCD_PASSWORD"
ca_file = "etcd-ca.pem"
cert_file = "node.pem"
key_file = "node-key.pem"
"#,
        )
        .unwrap();
        let policy = c.command_policy().unwrap();
        let command = |program: &str, args: &[&str]| crate::namespace::McpCommand {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        assert!(policy.permits(&command("/usr/local/bin/files-mcp", &["-v"])));
        // The config file's own agent, exactly as written, and nothing else.
        assert!(policy.permits(&command("python", &["server.py"])));
        assert!(!policy.permits(&command("python", &["-c", "print(1)"])));
        assert!(!Config::default()
            .command_policy()
            .unwrap()
            .permits(&command("/bin/true", &[])));
        let cluster = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode_id = \"n1\"\n";
        for bad in [
            "[mcp]\nallow_commands = [\"files-mcp\"]\n".to_string(),
            format!("{cluster}username = \"u\"\n"),
            format!("{cluster}username = \"u\"\npassword_env = \"A\"\npassword_file = \"p\"\n"),
            format!("{cluster}password_env = \"A\"\n"),
            format!("{cluster}cert_file = \"c.pem\"\n"),
            format!("{cluster}password = \"in clear\"\n"),
            format!("{cluster}secret_env = \"A\"\nsecret_file = \"s\"\n"),
            format!("{cluster}secret = \"in clear\"\n"),
            format!("{cluster}max_unpublished_bindings = 0\n"),
        ] {
            assert!(Config::parse(&bad).is_err(), "{bad}");
        }
        let c = Config::parse(&format!(
            "{cluster}secret_env = \"SB_TEST_UNSET_CLUSTER_SECRET\"\nmax_unpublished_bindings = 5\n"
        ))
        .unwrap();
        let section = c.cluster.unwrap();
        assert_eq!(section.max_unpublished_bindings, Some(5));
        let err = section.cluster_secret().unwrap_err().to_string();
        assert!(err.contains("SB_TEST_UNSET_CLUSTER_SECRET"), "{err}");
    }

    #[test]
    fn mcp_agents_are_declared_by_url_or_command() {
        let c = Config::parse(
            r#"
[[agents]]
id = "remote"
tools = ["search"]
mcp = "http://127.0.0.1:9000/mcp"

[[agents]]
id = "files"
tools = ["file", "code"]
mcp = { command = { program = "python", args = ["server.py"], env = { LOG = "1" } }, category_rules = [{ glob = "run_*", category = "code" }] }
"#,
        )
        .unwrap();
        let remote = c.agents[0].mcp.clone().unwrap().into_server();
        assert_eq!(remote.url.as_deref(), Some("http://127.0.0.1:9000/mcp"));
        let files = c.agents[1].mcp.clone().unwrap().into_server();
        let command = files.command.unwrap();
        assert_eq!(
            (command.program.as_str(), command.args.len()),
            ("python", 1)
        );
        assert_eq!(files.category_rules[0].category, ToolCategory::Code);
        assert!(Config::parse(
            "[[agents]]\nid = \"a\"\ntools = [\"code\"]\nmcp = { url = \"http://x/mcp\", colour = 1 }"
        )
        .is_err());
    }

    #[test]
    fn a2a_agents_are_declared_by_card_url_and_exactly_one_kind_is_given() {
        let c = Config::parse(
            r#"
[[agents]]
id = "translator"
tools = ["search", "code"]
a2a = { card_url = "http://127.0.0.1:9100/.well-known/agent-card.json", category_rules = [{ glob = "compile*", category = "code" }] }
"#,
        )
        .unwrap();
        let agent = c.agents[0].agent_config().a2a.clone().unwrap();
        assert_eq!(
            agent.card_url,
            "http://127.0.0.1:9100/.well-known/agent-card.json"
        );
        assert_eq!(agent.category_rules[0].category, ToolCategory::Code);
        let both = Config::parse(
            "[[agents]]\nid = \"both\"\ntools = [\"search\"]\nendpoint = \"http://127.0.0.1:8001/invoke\"\n\
             a2a = \"http://127.0.0.1:9100/.well-known/agent-card.json\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("agents[0]") && both.contains("keep one"),
            "{both}"
        );
    }
}
