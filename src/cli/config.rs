//! `switchboard config check FILE`: validate a config file without starting.

use clap::Subcommand;
use std::path::PathBuf;
use switchboard::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (unknown options, bad values, the listen
    /// address, the policy directory) without starting the server.
    Check {
        /// The TOML config file `serve --config` would read (docs/configuration.md).
        file: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> switchboard::Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let config = Config::load(&file)?;
            let summary = config.check()?;
            super::out(format_args!("{}: valid; {summary}", file.display()))
        }
    }
}
