//! Rego unit tests: the `test_*` rules of a test module, run in the
//! interpreter against the module they test: a module file's `*_test.rego`
//! sibling (`switchboard policy check`), or a test module given as text
//! (`POST /v1/policies/{name}/check`, the admin UI's editor).

use super::loader::{parse_module, read};
use super::pool::new_engine;
use super::{message_text, RegoEvaluator};
use crate::error::{Error, Result};
use regorus::Value;
use std::path::Path;

/// The result of one Rego unit test (`test_*` rule).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegoTestResult {
    /// `package.rule`, e.g. `switchboard.sensitive_tools_test.test_untrusted_denied`.
    pub name: String,
    /// Whether the rule evaluated to `true`.
    pub passed: bool,
    /// What it evaluated to, or the evaluation error, when it did not pass.
    pub detail: Option<String>,
}

/// Compiles `module` (a file path) and, if it exists, its `*_test.rego`
/// sibling, then evaluates every `test_*` rule of the test file. Fails if either
/// does not compile or no test is found.
pub fn run_tests(module: &Path) -> Result<Vec<RegoTestResult>> {
    let source = read(module)?;
    let file = module.display().to_string();
    // The parser `serve` and the policy store use: same headers, same errors.
    parse_module(&file, &source, None, RegoEvaluator::Interpreter)?;
    let test_path = module.with_file_name(format!(
        "{}_test.rego",
        module.file_stem().and_then(|s| s.to_str()).unwrap_or("")
    ));
    if !test_path.exists() {
        return Ok(Vec::new());
    }
    let test_source = read(&test_path)?;
    run_test_module(
        (&file, &source),
        (&test_path.display().to_string(), &test_source),
    )
}

/// Evaluates every `test_*` rule of a test module against a module, each
/// given as (a name for messages, its Rego source), in the interpreter.
/// Fails if either does not compile or the test module has no test.
pub fn run_test_module(
    (file, source): (&str, &str),
    (test_file, test_source): (&str, &str),
) -> Result<Vec<RegoTestResult>> {
    let mut engine = new_engine();
    engine
        .add_policy(file.to_string(), source.to_string())
        .map_err(|e| Error::PolicyLoad {
            name: file.to_string(),
            reason: e.to_string(),
        })?;
    let package = engine
        .add_policy(test_file.to_string(), test_source.to_string())
        .map_err(|e| Error::PolicyLoad {
            name: test_file.to_string(),
            reason: e.to_string(),
        })?;
    let names = test_rule_names(test_source);
    if names.is_empty() {
        return Err(Error::PolicyLoad {
            name: test_file.to_string(),
            reason: "no `test_*` rules found".into(),
        });
    }
    Ok(names
        .into_iter()
        .map(|rule| {
            let path = format!("{package}.{rule}");
            let (passed, detail) = match engine.eval_rule(path.clone()) {
                Ok(Value::Bool(true)) => (true, None),
                Ok(other) => (false, Some(message_text(&other))),
                Err(e) => (false, Some(e.to_string())),
            };
            RegoTestResult {
                name: path.trim_start_matches("data.").to_string(),
                passed,
                detail,
            }
        })
        .collect())
}

/// Names of `test_*` rules, read from rule heads at the start of a line.
fn test_rule_names(source: &str) -> Vec<String> {
    let mut names: Vec<String> = source
        .lines()
        .filter(|line| line.starts_with("test_"))
        .map(|line| {
            line.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.dedup();
    names
}
