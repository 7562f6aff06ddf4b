//! Everything `serve` would refuse in a config, found before anything is
//! opened and reported at once: the text's own problems, then what needs
//! the machine — the listen addresses, the token a non-loopback address
//! requires, the files the config names (TLS, JWT keys, policies, etcd
//! credentials), the agents under the config's own network and command
//! policies, and the cluster settings. `serve` runs it first, and
//! `switchboard config check` runs nothing else, so the two cannot disagree.

use super::tls::ServerTls;
use crate::config::{Config, Problem};
use std::net::{SocketAddr, ToSocketAddrs};

/// Every problem `serve` would refuse `config` for, each with its key.
/// Reads the files the config names and resolves its addresses; opens no
/// database, binds no port and reaches no agent or etcd member.
pub fn preflight(config: &Config) -> Vec<Problem> {
    let mut found = config.problems();
    match resolve("listen", &config.listen) {
        Ok(addrs) => {
            let loopback_only = addrs.iter().all(|a| a.ip().is_loopback());
            if api_token(config).is_none() && config.auth.jwt.is_none() && !loopback_only {
                found.push(Problem::new(
                    "listen",
                    format!(
                        "refusing to serve on {} without an API token: anyone who can reach it \
                         could register agents and invoke tools. Set SWITCHBOARD_TOKEN=<secret> \
                         in the environment or `token = \"<secret>\"` in the config, or listen on \
                         127.0.0.1",
                        config.listen
                    ),
                ));
            }
        }
        Err(problem) => found.push(problem),
    }
    if let Some(addr) = &config.metrics_listen {
        found.extend(resolve("metrics_listen", addr).err());
    }
    if let Some(settings) = &config.auth.jwt {
        found.extend(Problem::of(
            "auth.jwt",
            crate::identity::JwtVerifier::new(settings.clone()).map(drop),
        ));
    }
    found.extend(Problem::of("tls.ca_file", config.tls_trust().map(drop)));
    found.extend(Problem::of(
        "tls.cert_file",
        ServerTls::from_config(config).map(drop),
    ));
    if let Some(dir) = &config.policies_dir {
        found.extend(policy_problems(config, dir));
    }
    if config.data_dir.exists() && !config.data_dir.is_dir() {
        found.push(Problem::new(
            "data_dir",
            format!(
                "{} is a file; the database needs a directory",
                config.data_dir.display()
            ),
        ));
    }
    // Under the config's own policies (an error in them is reported above).
    if let (Ok(network), Ok(commands)) = (config.network_policy(), config.command_policy()) {
        for (i, agent) in config.agents.iter().enumerate() {
            let mut registration = agent.agent_config();
            if let Some(command) = registration.mcp.as_mut().and_then(|m| m.command.as_mut()) {
                // As registration will: relative paths against this directory.
                if let Ok(here) = std::env::current_dir() {
                    command.resolve_relative_paths(&here);
                }
            }
            found.extend(Problem::of(
                format!("agents[{i}]"),
                crate::routing::check_agent_config(&agent.id, &registration, &network, &commands),
            ));
        }
    }
    #[cfg(feature = "cluster")]
    if let Some(section) = &config.cluster {
        let https = config.tls.cert_file.is_some();
        found.extend(Problem::of(
            "cluster",
            section
                .settings(&config.listen, https)
                .and_then(|settings| settings.check()),
        ));
    }
    #[cfg(not(feature = "cluster"))]
    if config.cluster.is_some() {
        found.push(Problem::new(
            "cluster",
            "needs a build with the `cluster` feature (on by default)",
        ));
    }
    found
}

/// The static API token: `SWITCHBOARD_TOKEN` if set and not empty, else the
/// config's `token`.
pub(super) fn api_token(config: &Config) -> Option<String> {
    std::env::var("SWITCHBOARD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or(config.token.clone())
}

fn resolve(key: &str, addr: &str) -> Result<Vec<SocketAddr>, Problem> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| {
            Problem::new(
                key,
                format!("{addr:?}: {e} (want host:port, e.g. 127.0.0.1:7700)"),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Problem::new(key, format!("{addr:?} names no address")));
    }
    Ok(addrs)
}

/// The modules of `dir`, compiled with the parser `serve` stores them with.
fn policy_problems(config: &Config, dir: &std::path::Path) -> Vec<Problem> {
    let files = match crate::policy::rego::module_files(dir) {
        Ok(files) => files,
        Err(e) => {
            return vec![Problem::new(
                "policies_dir",
                format!("{}: {e}", dir.display()),
            )]
        }
    };
    files
        .iter()
        .filter_map(|(path, source)| {
            let name = path.display().to_string();
            Problem::of(
                "policies_dir",
                crate::policy::rego::parse_module(&name, source, None, config.rego_evaluator)
                    .map(drop),
            )
        })
        .collect()
}
