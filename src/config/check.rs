//! What is wrong with a config, all of it at once: each [`Problem`] names
//! the key it is about, so a file is fixed in one pass rather than one
//! refusal at a time. These are the checks of the text alone; the server's
//! preflight adds the ones that need the machine (files, addresses, the
//! environment).

use super::Config;
use crate::error::{Error, Result};
use std::fmt;

/// One thing a config gets wrong, and the key it is about (`limits.max_connections`,
/// `agents[2].endpoint`, `tls.cert_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key path in the TOML file.
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Problem {
    /// A problem with `key`, described by `message`.
    pub fn new(key: impl Into<String>, message: impl fmt::Display) -> Problem {
        Problem {
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// The problem `result` reports about `key`, if any. The message of an
    /// [`Error::InvalidInput`] is taken without its kind's prefix.
    pub fn of(key: impl Into<String>, result: Result<()>) -> Option<Problem> {
        result.err().map(|e| match e {
            Error::InvalidInput(message) => Problem::new(key, message),
            other => Problem::new(key, other),
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Messages from the parts that read a key's file often name the key
        // already (`tls.cert_file /etc/x.pem: cannot read it`).
        if self.message.starts_with(&self.key) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// `Ok` when there are no problems, else one error listing each.
pub fn refuse(problems: &[Problem]) -> Result<()> {
    match problems {
        [] => Ok(()),
        [one] => Err(Error::invalid(one.to_string())),
        many => {
            let mut text = format!("{} problems:", many.len());
            for problem in many {
                text.push_str("\n  ");
                text.push_str(&problem.to_string());
            }
            Err(Error::invalid(text))
        }
    }
}

impl Config {
    /// Every value of the text that cannot work, each with its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        let mut at_least_one = |key: &str, value: u64| {
            if value == 0 {
                found.push(Problem::new(key, "must be at least 1"));
            }
        };
        at_least_one("max_body_bytes", self.max_body_bytes as u64);
        at_least_one(
            "storage.max_value_bytes",
            self.storage.max_value_bytes as u64,
        );
        at_least_one("health.interval_ms", self.health.interval_ms);
        at_least_one("health.timeout_ms", self.health.timeout_ms);
        let l = &self.limits;
        at_least_one("limits.header_read_timeout_ms", l.header_read_timeout_ms);
        at_least_one("limits.request_timeout_ms", l.request_timeout_ms);
        at_least_one("limits.max_connections", l.max_connections as u64);
        at_least_one("limits.max_inflight_invokes", l.max_inflight_invokes as u64);
        if self.token.as_deref() == Some("") {
            found.push(Problem::new(
                "token",
                "is empty; remove it to disable authentication",
            ));
        }
        if let Some(jwt) = &self.auth.jwt {
            if jwt.issuer.is_empty() || jwt.audience.is_empty() {
                found.push(Problem::new("auth.jwt", "needs both issuer and audience"));
            }
            if jwt.leeway_secs.unwrap_or(0) > crate::identity::MAX_LEEWAY_SECS {
                found.push(Problem::new(
                    "auth.jwt.leeway_secs",
                    format!("is at most {}", crate::identity::MAX_LEEWAY_SECS),
                ));
            }
            if jwt.hs256_secret_env.is_none()
                && jwt.public_key_files.is_empty()
                && jwt.jwks_file.is_none()
                && jwt.jwks_url.is_none()
                && !jwt.discover_jwks
            {
                found.push(Problem::new(
                    "auth.jwt",
                    "has no key: set hs256_secret_env, public_key_files, jwks_file, jwks_url or \
                     discover_jwks",
                ));
            }
            if jwt.jwks_url.is_some() && jwt.discover_jwks {
                found.push(Problem::new(
                    "auth.jwt.discover_jwks",
                    "set jwks_url or discover_jwks, not both: discover_jwks finds the URL in \
                     the issuer's metadata",
                ));
            }
        }
        if let Some(resource) = &self.auth.resource {
            let parsed = reqwest::Url::parse(resource);
            let usable = parsed.as_ref().is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.fragment().is_none()
            });
            if !usable {
                found.push(Problem::new(
                    "auth.resource",
                    format!(
                        "{resource:?} is not an absolute http(s) URL without a #fragment; give \
                         the URL clients reach /mcp at, e.g. https://switchboard.example/mcp"
                    ),
                ));
            }
            if let Some(jwt) = &self.auth.jwt {
                if !jwt.audience.is_empty() && &jwt.audience != resource {
                    found.push(Problem::new(
                        "auth.jwt.audience",
                        format!(
                            "is {:?} but auth.resource is {resource:?}: tokens for /mcp name \
                             the resource as their audience (RFC 8707); make them equal",
                            jwt.audience
                        ),
                    ));
                }
            }
        }
        found.extend(Problem::of("network", self.network_policy().map(drop)));
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            found.push(Problem::new(
                "tls",
                "give both cert_file and key_file (--tls-cert and --tls-key) to serve HTTPS, or neither",
            ));
        }
        for (i, limit) in self.rate_limits.iter().enumerate() {
            found.extend(Problem::of(
                format!("rate_limits[{i}]"),
                limit.parsed().map(drop),
            ));
        }
        found.extend(Problem::of(
            "records.redact",
            self.records.dispatcher_config().validate(),
        ));
        if let Some(cluster) = &self.cluster {
            found.extend(cluster.problems());
        }
        found.extend(Problem::of(
            "mcp.allow_commands",
            self.command_policy().map(drop),
        ));
        for (key, why) in self.telemetry.problems() {
            found.push(Problem::new(format!("telemetry.{key}"), why));
        }
        for (i, agent) in self.agents.iter().enumerate() {
            let key = |field: &str| format!("agents[{i}].{field}");
            found.extend(Problem::of(
                key("id"),
                crate::namespace::validate_id("agent id", &agent.id),
            ));
            if agent.tools.is_empty() {
                found.push(Problem::new(
                    key("tools"),
                    format!(
                        "agent {} serves no tool categories; give it at least one",
                        agent.id
                    ),
                ));
            }
            let kinds = [
                agent.endpoint.is_some(),
                agent.mcp.is_some(),
                agent.a2a.is_some(),
            ];
            match kinds.iter().filter(|k| **k).count() {
                0 => found.push(Problem::new(
                    format!("agents[{i}]"),
                    format!(
                        "agent {} has neither endpoint (an HTTP agent's URL) nor mcp (an MCP server's URL or command) nor a2a (an A2A agent's card URL)",
                        agent.id
                    ),
                )),
                1 => {}
                _ => found.push(Problem::new(
                    format!("agents[{i}]"),
                    format!(
                        "agent {} has more than one of endpoint (an HTTP agent), mcp (an MCP server) and a2a (an A2A agent); keep one",
                        agent.id
                    ),
                )),
            }
        }
        found
    }

    /// Refuses values that cannot work, naming every one.
    pub fn validate(&self) -> Result<()> {
        refuse(&self.problems())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_of_the_text_is_found_with_its_key() {
        let config: Config = toml::from_str(
            r#"
token = ""
[limits]
max_connections = 0
max_inflight_invokes = 0
[[rate_limits]]
op = "write"
max = 1
[[agents]]
id = "no tools"
tools = []
[cluster]
etcd = []
node_id = "n1"
username = "u"
[telemetry]
protocol = "grpc"
"#,
        )
        .unwrap();
        let keys: Vec<_> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "limits.max_connections",
                "limits.max_inflight_invokes",
                "token",
                "rate_limits[0]",
                "cluster.username",
                "cluster.etcd",
                "telemetry.protocol",
                "agents[0].id",
                "agents[0].tools",
                "agents[0]",
            ]
        );
        let refusal = config.validate().unwrap_err().to_string();
        assert!(refusal.contains("10 problems:\n  limits.max_connections: must be at least 1"));
        assert!(
            refusal.contains("telemetry.protocol: is \"grpc\": Switchboard exports OTLP over HTTP")
        );
        assert!(refusal
            .contains("\n  rate_limits[0]: op \"write\" is not put, delete, get or dispatch"));
    }

    #[test]
    fn a_message_that_names_its_key_is_not_prefixed_again() {
        let named = Problem::new("tls.cert_file", "tls.cert_file /x.pem: cannot read it");
        assert_eq!(named.to_string(), "tls.cert_file /x.pem: cannot read it");
        assert_eq!(
            Problem::new("token", "is empty").to_string(),
            "token: is empty"
        );
        assert_eq!(refuse(&[]).map_err(|e| e.to_string()), Ok(()));
    }
}
