//! `switchboard config check FILE`: every problem `serve` would refuse a
//! config file for, without starting.

use clap::Subcommand;
use std::path::PathBuf;
use switchboard::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a config file as `serve` would, without starting: unknown
    /// options, bad values, the listen address and token, the files it names
    /// (TLS, JWT keys, policies, etcd credentials), the agents, `[cluster]`.
    /// Lists every problem with its key.
    Check {
        /// The TOML config file `serve --config` would read (docs/configuration.md).
        file: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> switchboard::Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let config = Config::read(&file)?;
            let problems = switchboard::server::preflight(&config);
            switchboard::config::refuse(&problems).map_err(|e| match e {
                switchboard::Error::InvalidInput(m) => {
                    switchboard::Error::invalid(format!("config {}: {m}", file.display()))
                }
                other => other,
            })?;
            super::out(format_args!(
                "{}: valid; {}",
                file.display(),
                config.summary()
            ))
        }
    }
}
