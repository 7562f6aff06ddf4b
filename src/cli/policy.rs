//! `switchboard policy check` (compile a Rego module and run its tests), and
//! `policy list|add` on a running server (`/v1/policies`): a server's loaded
//! modules live in its memory, so these need `--server`.

use super::ServerArgs;
use clap::Subcommand;
use reqwest::Method;
use std::path::{Path, PathBuf};
use switchboard::Error;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Compile a Rego module (and its scope header) and run its *_test.rego tests.
    Check { file: PathBuf },
    /// List the Rego modules a running server has loaded.
    List {
        #[command(flatten)]
        remote: ServerArgs,
    },
    /// Load a Rego module into a running server (in memory, until it stops).
    Add {
        file: PathBuf,
        /// The key glob it guards, e.g. tools/sensitive/** [default: the
        /// file's `# scope:` header].
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        remote: ServerArgs,
    },
}

pub async fn run(cmd: PolicyCommand) -> switchboard::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::List { remote } => {
            let client = needs_server(&remote, "list")?;
            let modules = client.get("v1/policies").await?;
            let modules = modules.as_array().cloned().unwrap_or_default();
            for m in &modules {
                super::out(format_args!(
                    "{}  scope {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["scope"].as_str().unwrap_or_default()
                ))?;
            }
            if modules.is_empty() {
                super::out("(no policies loaded)")?;
            }
            Ok(())
        }
        PolicyCommand::Add {
            file,
            scope,
            remote,
        } => {
            let client = needs_server(&remote, "add")?;
            let source = read(&file)?;
            let scope = match scope {
                Some(scope) => scope,
                None => {
                    let declared = switchboard::policy::rego::declared_scopes(
                        &file.display().to_string(),
                        &source,
                    )?;
                    let scopes: Vec<&str> = declared.iter().map(|g| g.as_str()).collect();
                    if scopes.len() != 1 {
                        return Err(Error::invalid(format!(
                            "{} declares {} scopes; pick one with --scope",
                            file.display(),
                            scopes.len()
                        )));
                    }
                    scopes[0].to_string()
                }
            };
            let body = serde_json::json!({"scope": scope, "source": source});
            let added = client
                .send(Method::POST, client.url("v1/policies"), Some(&body))
                .await?;
            super::out(format_args!(
                "loaded {} (scope {})",
                added["name"].as_str().unwrap_or_default(),
                added["scope"].as_str().unwrap_or_default()
            ))
        }
    }
}

fn needs_server(remote: &ServerArgs, what: &str) -> switchboard::Result<super::Client> {
    remote.client()?.ok_or_else(|| {
        Error::invalid(format!(
            "`policy {what}` works on a running server: add --server URL (or set SWITCHBOARD_URL); \
             locally, policies are a directory passed with --policies"
        ))
    })
}

fn read(file: &Path) -> switchboard::Result<String> {
    std::fs::read_to_string(file)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))
}

pub fn check(file: &Path) -> switchboard::Result<()> {
    let results = switchboard::policy::rego::run_tests(file)?;
    let scopes =
        switchboard::policy::rego::declared_scopes(&file.display().to_string(), &read(file)?)?;
    let scopes: Vec<&str> = scopes.iter().map(|g| g.as_str()).collect();
    super::out(format_args!(
        "{}: compiles; scope {}",
        file.display(),
        scopes.join(", ")
    ))?;
    if results.is_empty() {
        return super::out(format_args!(
            "no tests (add {}_test.rego beside it)",
            file.file_stem().and_then(|s| s.to_str()).unwrap_or("")
        ));
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for r in &results {
        match &r.detail {
            None => super::out(format_args!("  PASS {}", r.name))?,
            Some(d) => super::out(format_args!("  FAIL {} ({d})", r.name))?,
        }
    }
    super::out(format_args!(
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    ))?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{} policy test(s) failed",
            failed.len()
        )))
    }
}
