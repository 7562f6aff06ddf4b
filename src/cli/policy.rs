//! `switchboard policy check`: compile a Rego module and run its tests.

use clap::Subcommand;
use std::path::{Path, PathBuf};
use switchboard::Error;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Compile a Rego module (and its scope header) and run its *_test.rego tests.
    Check { file: PathBuf },
}

pub fn check(file: &Path) -> switchboard::Result<()> {
    let results = switchboard::policy::rego::run_tests(file)?;
    let scopes = switchboard::policy::rego::declared_scopes(
        &file.display().to_string(),
        &std::fs::read_to_string(file)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))?,
    )?;
    let scopes: Vec<&str> = scopes.iter().map(|g| g.as_str()).collect();
    println!("{}: compiles; scope {}", file.display(), scopes.join(", "));
    if results.is_empty() {
        println!(
            "no tests (add {}_test.rego beside it)",
            file.file_stem().and_then(|s| s.to_str()).unwrap_or("")
        );
        return Ok(());
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    for r in &results {
        match &r.detail {
            None => println!("  PASS {}", r.name),
            Some(d) => println!("  FAIL {} ({d})", r.name),
        }
    }
    println!(
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{} policy test(s) failed",
            failed.len()
        )))
    }
}
