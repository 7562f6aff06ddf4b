//! `[cluster]`: the settings of a node that joins others through etcd
//! (docs/cluster.md), and the checks they must pass together.

use super::Problem;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// `[cluster]`: this node joins the nodes sharing one etcd (docs/cluster.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// etcd client URLs, e.g. `["http://127.0.0.1:2379"]`.
    pub etcd: Vec<String>,
    /// This node's id, unique among the nodes.
    pub node_id: String,
    /// What a session with no binding yet gets while etcd is unreachable.
    #[serde(default)]
    pub bindings: ClusterBindings,
    /// Start even when no etcd member answers: route from the registrations
    /// in this node's own store (degraded) and join when etcd is back.
    #[serde(default)]
    pub start_from_snapshot: bool,
    /// Seconds a session binding lasts from when it is made (default
    /// [`DEFAULT_BINDING_TTL_SECS`]); the session is then bound anew and etcd
    /// drops the old key.
    #[serde(default)]
    pub binding_ttl_secs: Option<u64>,
    /// The base URL the other nodes reach this node's API at (a cluster
    /// scan asks each node there); default `http://{listen}` (`https://`
    /// when serving HTTPS). Set it when `listen` is not an address the
    /// other nodes can reach, such as `0.0.0.0:7700`.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// etcd's own authentication: the etcd user this node signs in as
    /// (needs `password_env` or `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// The name of an environment variable holding the etcd user's password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the etcd user's password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A PEM file of the CA certificates etcd's `https://` client URLs are
    /// verified against (besides the built-in webpki roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The PEM client certificate this node presents to etcd (etcd's
    /// `--client-cert-auth`); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name of an environment variable holding the cluster secret, the
    /// credential nodes present to each other (a cluster scan); default
    /// `SWITCHBOARD_CLUSTER_SECRET`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A file holding the cluster secret (its first line).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Under `bindings = "best_effort"`, how many bindings made while etcd
    /// is unreachable this node keeps to publish (default 10,000); past it,
    /// new sessions are refused (503) until etcd is back.
    #[serde(default)]
    pub max_unpublished_bindings: Option<usize>,
}

/// The variable the cluster secret is read from when `[cluster]` names none.
pub const DEFAULT_CLUSTER_SECRET_ENV: &str = "SWITCHBOARD_CLUSTER_SECRET";

impl ClusterSection {
    /// Every setting that cannot work, alone or with the others, each
    /// with its key.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        let passwords =
            usize::from(self.password_env.is_some()) + usize::from(self.password_file.is_some());
        match (&self.username, passwords) {
            (Some(user), _) if user.is_empty() => found.push(Problem::new(
                "cluster.username",
                "is empty; remove it to connect to etcd without authentication",
            )),
            (Some(_), 1) | (None, 0) => {}
            (Some(_), 0) => found.push(Problem::new(
                "cluster.username",
                "needs a password: set password_env (an environment variable's name) \
                 or password_file (a file's path) under [cluster]",
            )),
            (Some(_), _) => found.push(Problem::new(
                "cluster.password_env",
                "give password_env or password_file, not both",
            )),
            (None, _) => found.push(Problem::new(
                "cluster.username",
                "password_env and password_file need username (the etcd user)",
            )),
        }
        if self.max_unpublished_bindings == Some(0) {
            found.push(Problem::new(
                "cluster.max_unpublished_bindings",
                "must be at least 1 (use bindings = \"strict\" to refuse every new session \
                 while etcd is unreachable)",
            ));
        }
        if self.secret_env.is_some() && self.secret_file.is_some() {
            found.push(Problem::new(
                "cluster.secret_env",
                "give secret_env or secret_file, not both",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            found.push(Problem::new(
                "cluster.cert_file",
                "give both cert_file and key_file (the client certificate etcd checks), or neither",
            ));
        }
        if self.etcd.is_empty() {
            found.push(Problem::new(
                "cluster.etcd",
                "names no etcd member: give at least one client URL, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        found
    }

    /// How this node joins the cluster: the section, with the API's
    /// `listen` address and scheme as the advertise URL unless one is set.
    #[cfg(feature = "cluster")]
    pub fn settings(&self, listen: &str, https: bool) -> Result<crate::cluster::ClusterSettings> {
        let scheme = if https { "https" } else { "http" };
        let url = self
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{listen}"));
        Ok(crate::cluster::ClusterSettings {
            etcd: self.etcd.clone(),
            node_id: self.node_id.clone(),
            strict_bindings: self.bindings == ClusterBindings::Strict,
            start_from_snapshot: self.start_from_snapshot,
            binding_ttl: std::time::Duration::from_secs(
                self.binding_ttl_secs
                    .unwrap_or(DEFAULT_BINDING_TTL_SECS)
                    .max(1),
            ),
            listen: listen.to_string(),
            url: url.trim_end_matches('/').to_string(),
            access: self.etcd_access()?,
            secret: self.cluster_secret()?,
            max_unpublished_bindings: self
                .max_unpublished_bindings
                .unwrap_or(crate::cluster::DEFAULT_MAX_UNPUBLISHED_BINDINGS),
        })
    }

    /// The cluster secret, read now from the file or variable named (never
    /// from the config text); `None` when neither is set and
    /// `SWITCHBOARD_CLUSTER_SECRET` is unset or empty.
    pub fn cluster_secret(&self) -> Result<Option<String>> {
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid(format!(
                    "cluster.secret_file {}: cannot read it ({e})",
                    path.display()
                ))
            })?;
            return Ok(Some(text.lines().next().unwrap_or("").to_string()));
        }
        match &self.secret_env {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                Error::invalid(format!(
                    "cluster.secret_env names {var}, which is not set in this node's environment; \
                     set it to the secret every node of the cluster shares"
                ))
            }),
            None => Ok(std::env::var(DEFAULT_CLUSTER_SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty())),
        }
    }

    /// How this node reaches etcd: the password read now from the variable
    /// or file named (never from the config text), and the TLS files.
    #[cfg(feature = "cluster")]
    pub fn etcd_access(&self) -> Result<crate::cluster::EtcdAccess> {
        let password = match (&self.password_env, &self.password_file) {
            (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                Error::invalid(format!(
                    "cluster.password_env names {var}, which is not set in this node's environment; \
                     set it to the etcd user's password"
                ))
            })?),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::invalid(format!(
                        "cluster.password_file {}: cannot read it ({e})",
                        path.display()
                    ))
                })?;
                Some(text.lines().next().unwrap_or("").to_string())
            }
            (None, None) => None,
        };
        let credentials = match (&self.username, password) {
            (Some(username), Some(password)) => Some(crate::cluster::EtcdCredentials {
                username: username.clone(),
                password,
            }),
            _ => None,
        };
        Ok(crate::cluster::EtcdAccess {
            credentials,
            ca_file: self.ca_file.clone(),
            client_cert: self.cert_file.clone().zip(self.key_file.clone()),
        })
    }
}

/// How long a session binding lasts in cluster mode unless configured: a day.
pub const DEFAULT_BINDING_TTL_SECS: u64 = 86_400;

/// `bindings` under `[cluster]`: new session bindings while etcd is unreachable.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBindings {
    /// Bind on this node only; publish the binding create-if-absent when
    /// etcd is back, adopting another node's if it won.
    #[default]
    BestEffort,
    /// Refuse the call with 503 `cluster_unavailable`; sessions already
    /// bound keep being served.
    Strict,
}

impl std::str::FromStr for ClusterBindings {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strict" => Ok(ClusterBindings::Strict),
            "best_effort" => Ok(ClusterBindings::BestEffort),
            other => Err(format!(
                "{other:?} is not a bindings mode: use strict or best_effort"
            )),
        }
    }
}
