//! The server's TOML configuration file. Every field is optional; command-line
//! flags override the file, and `SWITCHBOARD_TOKEN` overrides `token`.
//! `docs/configuration.md` documents each option.
//!
//! One schema, a struct per `[section]`, each next to the code that checks
//! and applies it, so an option is read, validated and documented in one
//! place. `[cluster]`, the largest section and the only one with settings
//! that must agree with each other, has its own file (`cluster`).

use crate::dispatch::{DispatcherConfig, ToolDispatcher};
use crate::error::{Error, Result};
use crate::namespace::{McpSpec, ToolCategory};
use crate::policy::RegoEvaluator;
use crate::policy::{CommandPolicy, NetworkPolicy};
use crate::policy::{DecisionLogRetention, PolicyEngine, RateLimitOp, RateLimitScope};
use crate::routing::{AgentConfig, HealthCheckConfig};
use crate::storage::{
    DatabaseOptions, Durability, DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_MAX_VALUE_BYTES,
};
use crate::transport::TlsTrust;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cluster;
pub use cluster::{
    ClusterBindings, ClusterSection, DEFAULT_BINDING_TTL_SECS, DEFAULT_CLUSTER_SECRET_ENV,
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
}

/// `[mcp]`: what this node lets MCP agents do on it, and what `/mcp` lists.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// Absolute paths of the programs this node may start as stdio MCP
    /// servers, with any arguments (empty: none, besides the exact commands
    /// of this file's own `[[agents]]`). Checked at registration, for
    /// registrations from the cluster, and before every start.
    pub allow_commands: Vec<String>,
    /// Whether `/mcp` lists a category tool for each category HTTP or local
    /// agents serve; `false` lists only the tools MCP agents serve by name.
    pub category_tools: bool,
}

impl Default for McpSection {
    fn default() -> Self {
        McpSection {
            allow_commands: Vec::new(),
            category_tools: true,
        }
    }
}

/// `[auth]`: callers' identities besides the static `token`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `[auth.jwt]`: accept JWTs verified against these keys.
    pub jwt: Option<crate::identity::JwtSettings>,
}

/// `[records]`: what a dispatch record keeps of its call (see
/// [`DispatcherConfig`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSection {
    /// Store each call's arguments (`input`).
    pub input: bool,
    /// Longest stored arguments, in bytes of JSON (cut past it, `input_truncated`).
    pub max_input_bytes: usize,
    /// Store each successful call's output (`output`).
    pub output: bool,
    /// Longest stored output, in bytes of JSON.
    pub max_output_bytes: usize,
    /// Field names (any depth) or dotted paths (from the top) masked before storing.
    pub redact: Vec<String>,
}

impl Default for RecordsSection {
    fn default() -> Self {
        let d = DispatcherConfig::default();
        RecordsSection {
            input: d.record_input,
            max_input_bytes: d.max_input_bytes,
            output: d.record_output,
            max_output_bytes: d.max_output_bytes,
            redact: d.redact,
        }
    }
}

impl RecordsSection {
    /// The dispatcher settings this section describes.
    pub fn dispatcher_config(&self) -> DispatcherConfig {
        DispatcherConfig {
            record_input: self.input,
            max_input_bytes: self.max_input_bytes,
            record_output: self.output,
            max_output_bytes: self.max_output_bytes,
            redact: self.redact.clone(),
        }
    }
}

/// One `[[rate_limits]]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    /// `put`, `delete`, `get` or `dispatch`.
    pub op: String,
    /// Operations allowed per window.
    pub max: u32,
    /// The window, in seconds (default 60).
    #[serde(default = "one_minute")]
    pub window_secs: u64,
    /// `global` (default), `per_agent`, `per_session` or `per_tool`.
    #[serde(default = "global")]
    pub scope: String,
}

fn one_minute() -> u64 {
    60
}

fn global() -> String {
    "global".into()
}

impl RateLimitEntry {
    fn parsed(&self) -> Result<(RateLimitOp, RateLimitScope)> {
        let op = match self.op.as_str() {
            "put" => RateLimitOp::Put,
            "delete" => RateLimitOp::Delete,
            "get" => RateLimitOp::Get,
            "dispatch" => RateLimitOp::Dispatch,
            other => {
                return Err(Error::invalid(format!(
                    "rate_limits: op {other:?} is not put, delete, get or dispatch"
                )))
            }
        };
        let scope = match self.scope.as_str() {
            "global" => RateLimitScope::Global,
            "per_agent" => RateLimitScope::PerAgent,
            "per_session" => RateLimitScope::PerSession,
            "per_tool" => RateLimitScope::PerTool,
            other => {
                return Err(Error::invalid(format!(
                    "rate_limits: scope {other:?} is not global, per_agent, per_session or per_tool"
                )))
            }
        };
        if self.max == 0 || self.window_secs == 0 {
            return Err(Error::invalid(
                "rate_limits: max and window_secs must be at least 1",
            ));
        }
        Ok((op, scope))
    }
}

/// `[decision_log]`: how much of `policy_log/` to keep.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogSection {
    /// Decisions kept at most; older ones are pruned as new ones arrive.
    pub max_entries: u64,
    /// Decisions older than this many seconds are pruned (none: no age limit).
    pub max_age_secs: Option<u64>,
}

impl Default for DecisionLogSection {
    fn default() -> Self {
        let d = DecisionLogRetention::default();
        DecisionLogSection {
            max_entries: d.max_entries,
            max_age_secs: d.max_age.map(|a| a.as_secs()),
        }
    }
}

/// One `[[agents]]` table: an HTTP or MCP agent, as `PUT /v1/agents/{id}`
/// takes it (an MCP `command`, a stdio server, only here).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent's id.
    pub id: String,
    /// The categories it serves.
    pub tools: Vec<ToolCategory>,
    /// Its `http://` endpoint (an HTTP agent).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An MCP server instead: `mcp = "http://…/mcp"`, or a table with `url`
    /// or `command = { program, args, env, cwd }`, `tool_names`,
    /// `category_rules`, `prefix`, `discovery_ttl_ms`.
    #[serde(default)]
    pub mcp: Option<McpSpec>,
    /// Its health URL (default: `scheme://host:port/health` of the endpoint).
    pub health_url: Option<String>,
    /// Its priority tier: higher is preferred (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Its per-call timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Calls it may have in flight at once.
    pub max_concurrency: Option<u32>,
}

impl AgentEntry {
    fn agent_config(&self) -> AgentConfig {
        let mut config = AgentConfig::new()
            .with_tools(self.tools.clone())
            .with_priority(self.priority);
        if let Some(endpoint) = &self.endpoint {
            config = config.with_endpoint(endpoint.clone());
        }
        if let Some(mcp) = &self.mcp {
            config = config.with_mcp_server(mcp.clone().into_server());
        }
        if let Some(url) = &self.health_url {
            config = config.with_health_url(url.clone());
        }
        if let Some(ms) = self.timeout_ms {
            config = config.with_timeout(Duration::from_millis(ms));
        }
        if let Some(max) = self.max_concurrency {
            config = config.with_max_concurrency(max);
        }
        config
    }
}

/// `[limits]`: what one client, or all of them, may hold of the server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A connection must send a request's headers within this long.
    pub header_read_timeout_ms: u64,
    /// A request is answered 504 after this long (an invoke still finishes
    /// and is recorded).
    pub request_timeout_ms: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// `POST /v1/invoke` calls in flight at once; more are answered 503.
    pub max_inflight_invokes: usize,
}

/// `[network]`: the agent address policy (see `policy::NetworkPolicy`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// CIDR ranges agents may be reached at even if refused by default.
    pub allow: Vec<String>,
    /// CIDR ranges agents may never be reached at.
    pub deny: Vec<String>,
}

/// `[tls]`: certificates. Relative paths are resolved against the config
/// file's directory.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// A PEM file of CA certificates trusted for `https://` agents and health
    /// URLs, besides the built-in webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The PEM certificate chain to serve HTTPS with (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 120_000,
            max_connections: 1024,
            max_inflight_invokes: 512,
        }
    }
}

/// `[health]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Whether the background health checks run.
    pub enabled: bool,
    /// Milliseconds between probe rounds.
    pub interval_ms: u64,
    /// Milliseconds a probe may take before it counts as a failure.
    pub timeout_ms: u64,
    /// Consecutive failed probes that mark an agent unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed probes that mark an unhealthy agent healthy again.
    pub healthy_threshold: u32,
    /// Share of a priority tier that may be ejected before it panics.
    pub panic_threshold: f64,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// When a commit counts as durable.
    pub durability: Durability,
    /// The largest value a write may store, in bytes.
    pub max_value_bytes: usize,
    /// The RocksDB block cache size, in bytes.
    pub block_cache_bytes: usize,
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
        }
    }
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = HealthCheckConfig::default();
        HealthSection {
            enabled: true,
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            unhealthy_threshold: d.unhealthy_threshold,
            healthy_threshold: d.healthy_threshold,
            panic_threshold: d.panic_threshold,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            durability: Durability::Buffered,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

impl Config {
    /// Reads and checks a config file. Relative `data_dir` and
    /// `policies_dir` are resolved against the file's directory, so the file
    /// means the same whatever directory `serve` starts in.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read config {}: {e}", path.display())))?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            Error::InvalidInput(m) => Error::invalid(format!("config {}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.data_dir = base.join(&config.data_dir);
        config.policies_dir = config.policies_dir.map(|p| base.join(p));
        let tls = &mut config.tls;
        for path in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
            *path = path.take().map(|p| base.join(p));
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

    /// What [`validate`](Self::validate) cannot see from the text alone: the
    /// listen address must be `host:port` that resolves, and the policy
    /// directory must be a readable directory. Returns a one-line summary.
    pub fn check(&self) -> Result<String> {
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> = self
            .listen
            .to_socket_addrs()
            .map_err(|e| {
                Error::invalid(format!(
                    "listen = {:?}: {e} (want host:port, e.g. 127.0.0.1:7700)",
                    self.listen
                ))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Error::invalid(format!(
                "listen = {:?} names no address",
                self.listen
            )));
        }
        let mut policies = String::from("no policies");
        if let Some(dir) = &self.policies_dir {
            // Compiled with the parser `serve` stores them with: a module
            // `serve` would refuse fails the check.
            let files = crate::policy::rego::module_files(dir)
                .map_err(|e| Error::invalid(format!("policies_dir {}: {e}", dir.display())))?;
            for (path, source) in &files {
                crate::policy::rego::parse_module(
                    &path.display().to_string(),
                    source,
                    None,
                    self.rego_evaluator,
                )?;
            }
            let rego = files.len();
            policies = format!("{rego} policy file(s) in {}", dir.display());
        }
        Ok(format!(
            "listen {}, data {}, {policies}, token {}",
            self.listen,
            self.data_dir.display(),
            if self.token.is_some() {
                "set"
            } else {
                "not set"
            }
        ))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.max_body_bytes == 0 || self.storage.max_value_bytes == 0 {
            return Err(Error::invalid(
                "max_body_bytes and storage.max_value_bytes must be at least 1",
            ));
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            return Err(Error::invalid(
                "health.interval_ms and health.timeout_ms must be at least 1",
            ));
        }
        if self.token.as_deref() == Some("") {
            return Err(Error::invalid(
                "token is empty; remove it to disable authentication",
            ));
        }
        if let Some(jwt) = &self.auth.jwt {
            if jwt.issuer.is_empty() || jwt.audience.is_empty() {
                return Err(Error::invalid("[auth.jwt] needs both issuer and audience"));
            }
            if jwt.leeway_secs.unwrap_or(0) > crate::identity::MAX_LEEWAY_SECS {
                return Err(Error::invalid(format!(
                    "auth.jwt.leeway_secs is at most {}",
                    crate::identity::MAX_LEEWAY_SECS
                )));
            }
            if jwt.hs256_secret_env.is_none()
                && jwt.public_key_files.is_empty()
                && jwt.jwks_file.is_none()
            {
                return Err(Error::invalid(
                    "[auth.jwt] has no key: set hs256_secret_env, public_key_files or jwks_file",
                ));
            }
        }
        let l = &self.limits;
        if l.header_read_timeout_ms == 0
            || l.request_timeout_ms == 0
            || l.max_connections == 0
            || l.max_inflight_invokes == 0
        {
            return Err(Error::invalid("every limits.* value must be at least 1"));
        }
        self.network_policy()?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(Error::invalid(
                "tls: give both cert_file and key_file (--tls-cert and --tls-key) to serve HTTPS, or neither",
            ));
        }
        for limit in &self.rate_limits {
            limit.parsed()?;
        }
        self.records
            .dispatcher_config()
            .validate()
            .map_err(|e| Error::invalid(format!("records.{e}")))?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.command_policy()?;
        for agent in &self.agents {
            crate::namespace::validate_id("agents: id", &agent.id)?;
            if agent.tools.is_empty() {
                return Err(Error::invalid(format!("agents: {} has no tools", agent.id)));
            }
        }
        Ok(())
    }

    /// Adds `[[rate_limits]]` and sets `[decision_log]` retention on the
    /// database's policy chain (before anything is dispatched).
    pub fn apply_policy(&self, policy: &PolicyEngine) -> Result<()> {
        for limit in &self.rate_limits {
            let (op, scope) = limit.parsed()?;
            policy.add_rate_limit_per(
                op,
                limit.max,
                Duration::from_secs(limit.window_secs),
                scope,
            )?;
        }
        policy.set_decision_log_retention(DecisionLogRetention {
            max_entries: self.decision_log.max_entries,
            max_age: self.decision_log.max_age_secs.map(Duration::from_secs),
        });
        Ok(())
    }

    /// Registers (or replaces) the `[[agents]]` of the file, and sets what
    /// dispatch records keep (`[records]`).
    pub fn register_agents(&self, dispatcher: &ToolDispatcher) -> Result<()> {
        dispatcher.set_config(self.records.dispatcher_config())?;
        for agent in &self.agents {
            dispatcher.register_agent(&agent.id, agent.agent_config())?;
        }
        Ok(())
    }

    /// The programs this node may start (`[mcp] allow_commands`), and the
    /// exact commands of this file's own `[[agents]]`: the operator wrote
    /// those, so each may run exactly as written (not with other arguments,
    /// environment or directory, which only `allow_commands` permits).
    pub fn command_policy(&self) -> Result<CommandPolicy> {
        let mut policy = CommandPolicy::new(&self.mcp.allow_commands)?;
        for agent in &self.agents {
            if let Some(McpSpec::Server(server)) = &agent.mcp {
                if let Some(command) = &server.command {
                    // As registration will store it: relative paths made
                    // absolute against this process's directory.
                    let mut command = command.clone();
                    if let Ok(here) = std::env::current_dir() {
                        command.resolve_relative_paths(&here);
                    }
                    policy = policy.with_exact(command);
                }
            }
        }
        Ok(policy)
    }

    /// The `[network]` address policy.
    pub fn network_policy(&self) -> Result<NetworkPolicy> {
        NetworkPolicy::new(&self.network.allow, &self.network.deny)
    }

    /// The certificates trusted for `https://` agents (`[tls] ca_file`).
    pub fn tls_trust(&self) -> Result<TlsTrust> {
        match &self.tls.ca_file {
            Some(path) => TlsTrust::new().with_ca_file(path),
            None => Ok(TlsTrust::new()),
        }
    }

    /// The options the database is opened with (`[storage]`).
    pub fn database_options(&self) -> DatabaseOptions {
        DatabaseOptions::default()
            .durability(self.storage.durability)
            .max_value_bytes(self.storage.max_value_bytes)
            .block_cache_bytes(self.storage.block_cache_bytes)
    }

    /// The health-check settings (`[health]`), or `None` when disabled.
    pub fn health_checks(&self) -> Option<HealthCheckConfig> {
        let h = &self.health;
        h.enabled.then(|| {
            HealthCheckConfig::new()
                .interval(Duration::from_millis(h.interval_ms))
                .timeout(Duration::from_millis(h.timeout_ms))
                .unhealthy_threshold(h.unhealthy_threshold)
                .healthy_threshold(h.healthy_threshold)
                .panic_threshold(h.panic_threshold)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
