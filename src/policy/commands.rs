//! Which programs this node may start as stdio MCP servers: the command
//! allow-list.
//!
//! A stdio MCP registration names a program, its arguments, environment and
//! working directory, and Switchboard runs it. Whoever can write a
//! registration (the local API, a config file, the CLI on the data
//! directory, or in cluster mode anyone able to write `switchboard/agents/*`
//! in etcd) would otherwise run code on the node. So starting a program
//! needs this node's explicit permission, given one of two ways:
//!
//! - `programs`: exact absolute paths (`[mcp] allow_commands`, or
//!   `--allow-command`). Such a program runs with whatever arguments,
//!   environment and directory a registration gives it, so list MCP servers,
//!   never a shell or an interpreter.
//! - `exact`: whole commands (program, arguments, environment, directory)
//!   the operator wrote in the node's own config file (`[[agents]]`): that
//!   command, exactly as written, and nothing else.
//!
//! The list is checked when an agent is registered, when a registration
//! arrives from the cluster, and again before every start of the program.
//! A shared record never grants permission. One list per process, like the
//! address policy (`network`): `switchboard serve` installs the configured
//! one before it loads any agent; library users call
//! [`CommandPolicy::install`]. Until then nothing may be started.

use crate::error::{Error, Result};
use crate::namespace::McpCommand;
use std::path::Path;
use std::sync::{Arc, LazyLock, RwLock};

/// The programs and commands this node may start. Empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandPolicy {
    programs: Vec<String>,
    exact: Vec<McpCommand>,
}

static CURRENT: LazyLock<RwLock<Arc<CommandPolicy>>> =
    LazyLock::new(|| RwLock::new(Arc::new(CommandPolicy::default())));

impl CommandPolicy {
    /// A policy allowing these programs, each an absolute path, with any
    /// arguments. A relative name is refused: what it runs depends on `PATH`
    /// and the working directory at start.
    pub fn new(programs: &[String]) -> Result<Self> {
        for program in programs {
            if !Path::new(program).is_absolute() {
                return Err(Error::invalid(format!(
                    "mcp.allow_commands: {program:?} is not an absolute path; give the exact \
                     path of the program (e.g. \"/usr/local/bin/files-mcp\"), see `command -v {program}`"
                )));
            }
        }
        Ok(CommandPolicy {
            programs: programs.to_vec(),
            exact: Vec::new(),
        })
    }

    /// Also allows `command` exactly as given (program, arguments,
    /// environment and directory): a command the operator wrote in the
    /// node's own config file.
    pub fn with_exact(mut self, command: McpCommand) -> Self {
        if !self.exact.contains(&command) {
            self.exact.push(command);
        }
        self
    }

    /// Makes this the list every registration and start is checked against.
    pub fn install(self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self);
    }

    /// The list in force.
    pub fn current() -> Arc<CommandPolicy> {
        CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `command` may be started.
    pub fn permits(&self, command: &McpCommand) -> bool {
        self.programs.contains(&command.program) || self.exact.contains(command)
    }

    /// Refuses `command` (of agent `agent_id`) unless it may be started,
    /// saying which setting would allow it.
    pub fn check(&self, agent_id: &str, command: &McpCommand) -> Result<()> {
        if self.permits(command) {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "agent {agent_id}: the stdio MCP program {:?} is not in this node's command \
             allow-list, so it is not run. To allow it, add its absolute path to \
             `allow_commands` under [mcp] in this node's config file (or pass \
             --allow-command PATH), on every node that should run it; see docs/cluster.md",
            command.program
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(program: &str, args: &[&str]) -> McpCommand {
        McpCommand {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..McpCommand::default()
        }
    }

    #[test]
    fn nothing_runs_by_default_and_only_what_is_listed_runs_after() {
        assert!(!CommandPolicy::default().permits(&command("/bin/true", &[])));
        let policy = CommandPolicy::new(&["/usr/bin/files-mcp".into()])
            .unwrap()
            .with_exact(command("python", &["server.py"]));
        assert!(policy.permits(&command("/usr/bin/files-mcp", &["--root", "/srv"])));
        assert!(!policy.permits(&command("files-mcp", &[])));
        assert!(!policy.permits(&command("/usr/bin/files-mcp2", &[])));
        // A command from the config file runs exactly as written, nothing else.
        assert!(policy.permits(&command("python", &["server.py"])));
        assert!(!policy.permits(&command("python", &["-c", "import os"])));
        let refused = policy
            .check("evil", &command("/bin/sh", &["-c", "id"]))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("allow_commands") && refused.contains("[mcp]"),
            "{refused}"
        );
        assert!(CommandPolicy::new(&["sh".into()]).is_err());
    }
}
