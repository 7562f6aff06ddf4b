//! Rego modules in the policy chain, evaluated with `regorus`.
//!
//! A module is compiled once at load. Evaluation needs a mutable engine, so
//! each module keeps a small pool of ready engines cloned from the compiled
//! one: concurrent writers never share (or recompile) an engine.
//!
//! Decision rules: a module may define `deny` (a set of messages; non-empty
//! means Deny) and/or `allow` (must evaluate to `true` when defined). Any
//! evaluation error, a time-limit overrun, or an `allow` that is not `true`
//! denies: the chain fails closed.

use super::glob::Glob;
use super::{Op, Phase, PolicyAction, PolicyContext};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use regorus::{Engine, Value};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

/// The longest one module may evaluate before it is stopped (and denies).
const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Engines kept ready per module; beyond this, spare engines are dropped.
const POOL_LIMIT: usize = 64;

/// A compiled module, ready to decide.
pub struct RegoModule {
    name: String,
    deny_rule: Option<String>,
    allow_rule: Option<String>,
    compiled: Engine,
    pool: Mutex<Vec<Engine>>,
}

fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).expect("non-zero"),
    });
    engine
}

impl RegoModule {
    /// Compiles `source`. `file` names it in errors; the module's name is its
    /// package (without the `data.` prefix).
    pub fn compile(file: Option<&str>, source: &str) -> Result<RegoModule> {
        let path = file.unwrap_or("module.rego").to_string();
        let load_err = |reason: String| Error::PolicyLoad {
            name: path.clone(),
            reason,
        };
        let mut engine = new_engine();
        let package = engine
            .add_policy(path.clone(), source.to_string())
            .map_err(|e| load_err(e.to_string()))?;
        let declares = |engine: &Engine, rule: &str| {
            engine
                .has_declared_rule_rooted_at(&path, rule)
                .map_err(|e| load_err(e.to_string()))
        };
        let deny_rule = declares(&engine, "deny")?.then(|| format!("{package}.deny"));
        let allow_rule = declares(&engine, "allow")?.then(|| format!("{package}.allow"));
        if deny_rule.is_none() && allow_rule.is_none() {
            return Err(load_err(format!(
                "package {package} defines neither `deny` nor `allow`, so it could never decide anything"
            )));
        }
        let module = RegoModule {
            name: package.trim_start_matches("data.").to_string(),
            deny_rule,
            allow_rule,
            compiled: engine,
            pool: Mutex::new(Vec::new()),
        };
        // Prepare the engine once so clones start ready; an error here depends
        // on the input and is reported when a real write is evaluated.
        let mut warm = module.compiled.clone();
        warm.set_input(Value::new_object());
        let _ = module.eval_with(&mut warm);
        Ok(module)
    }

    /// The package name, e.g. `switchboard.sensitive_tools`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn decide(
        &self,
        op: Op,
        phase: Phase,
        key: &str,
        value: &[u8],
        ctx: &PolicyContext,
    ) -> PolicyAction {
        let value_json = match op {
            Op::Delete => serde_json::Value::Null,
            Op::Put | Op::Get => serde_json::from_slice(value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(value).into_owned())
            }),
        };
        let input = serde_json::json!({
            "op": op.as_str(),
            "phase": phase.as_str(),
            "key": key,
            "value": value_json,
            "context": ctx.to_json(),
        });
        let mut engine = self
            .pool
            .lock()
            .pop()
            .unwrap_or_else(|| self.compiled.clone());
        engine.set_input(Value::from(input));
        let action = match self.eval_with(&mut engine) {
            Ok(action) => action,
            Err(e) => PolicyAction::Deny(format!(
                "rego module {} failed to evaluate ({e}); denying (fail closed)",
                self.name
            )),
        };
        let mut pool = self.pool.lock();
        if pool.len() < POOL_LIMIT {
            pool.push(engine);
        }
        action
    }

    /// regorus reports errors as `anyhow::Error`; we only ever display them.
    fn eval_with(&self, engine: &mut Engine) -> std::result::Result<PolicyAction, String> {
        if let Some(rule) = &self.deny_rule {
            match engine.eval_rule(rule.clone()).map_err(|e| e.to_string())? {
                Value::Undefined => {}
                Value::Set(messages) if messages.is_empty() => {}
                Value::Set(messages) => {
                    let reasons: Vec<String> = messages.iter().map(message_text).collect();
                    return Ok(PolicyAction::Deny(reasons.join("; ")));
                }
                Value::Bool(false) => {}
                Value::Bool(true) => {
                    return Ok(PolicyAction::Deny(format!("{} denied", self.name)));
                }
                other => {
                    return Ok(PolicyAction::Deny(format!(
                        "rego module {}: `deny` must be a set of messages, got {}; denying (fail closed)",
                        self.name,
                        message_text(&other)
                    )))
                }
            }
        }
        if let Some(rule) = &self.allow_rule {
            match engine.eval_rule(rule.clone()).map_err(|e| e.to_string())? {
                Value::Bool(true) => {}
                _ => {
                    return Ok(PolicyAction::Deny(format!(
                        "{}: allow is not true",
                        self.name
                    )))
                }
            }
        }
        Ok(PolicyAction::Allow)
    }
}

fn message_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Scopes declared by `# scope: GLOB` comment lines at the top of a file.
pub fn declared_scopes(file: &str, source: &str) -> Result<Vec<Glob>> {
    let mut scopes = Vec::new();
    for line in header_comments(source) {
        if let Some(glob) = line.strip_prefix("scope:") {
            scopes.push(Glob::new(glob.trim()).map_err(|e| Error::PolicyLoad {
                name: file.to_string(),
                reason: e.to_string(),
            })?);
        }
    }
    if scopes.is_empty() {
        return Err(Error::PolicyLoad {
            name: file.to_string(),
            reason:
                "no scope declared; start the file with a comment such as `# scope: tools/shell/**`"
                    .into(),
        });
    }
    Ok(scopes)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::PolicyLoad {
        name: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

fn rego_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::PolicyLoad {
        name: dir.display().to_string(),
        reason: format!("cannot read policy directory: {e}"),
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rego"))
        .collect();
    files.sort();
    Ok(files)
}

fn is_test_file(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.ends_with("_test"))
}

/// A module read from a policy directory, with what its header declares.
pub(crate) struct LoadedModule {
    pub(crate) scopes: Vec<Glob>,
    pub(crate) ops: Vec<Op>,
    pub(crate) module: RegoModule,
}

/// Operations declared by a `# ops: put, delete, get` comment line at the top
/// of a file; puts and deletes if there is none.
pub fn declared_ops(file: &str, source: &str) -> Result<Vec<Op>> {
    for line in header_comments(source) {
        if let Some(list) = line.strip_prefix("ops:") {
            let mut ops = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                ops.push(match name {
                    "put" => Op::Put,
                    "delete" => Op::Delete,
                    "get" => Op::Get,
                    other => {
                        return Err(Error::PolicyLoad {
                            name: file.to_string(),
                            reason: format!(
                                "unknown op {other:?} in `# ops:`; use put, delete, get"
                            ),
                        })
                    }
                });
            }
            if ops.is_empty() {
                return Err(Error::PolicyLoad {
                    name: file.to_string(),
                    reason: "`# ops:` lists no operation".into(),
                });
            }
            return Ok(ops);
        }
    }
    Ok(vec![Op::Put, Op::Delete])
}

/// The text of the comment lines before the first line of code, trimmed.
fn header_comments(source: &str) -> impl Iterator<Item = &str> {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map_while(|l| l.strip_prefix('#'))
        .map(str::trim)
}

/// Compiles every non-test module of `dir` with its declared scopes and ops.
pub(crate) fn load_dir(dir: &Path) -> Result<Vec<LoadedModule>> {
    let mut loaded = Vec::new();
    for path in rego_files(dir)?.into_iter().filter(|p| !is_test_file(p)) {
        let source = read(&path)?;
        let file = path.display().to_string();
        loaded.push(LoadedModule {
            scopes: declared_scopes(&file, &source)?,
            ops: declared_ops(&file, &source)?,
            module: RegoModule::compile(Some(&file), &source)?,
        });
    }
    Ok(loaded)
}

/// The result of one Rego unit test (`test_*` rule).
#[derive(Clone, Debug, PartialEq, Eq)]
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
    declared_scopes(&file, &source)?;
    RegoModule::compile(Some(&file), &source)?;
    let test_path = module.with_file_name(format!(
        "{}_test.rego",
        module.file_stem().and_then(|s| s.to_str()).unwrap_or("")
    ));
    let mut engine = new_engine();
    engine
        .add_policy(file.clone(), source)
        .map_err(|e| Error::PolicyLoad {
            name: file.clone(),
            reason: e.to_string(),
        })?;
    if !test_path.exists() {
        return Ok(Vec::new());
    }
    let test_source = read(&test_path)?;
    let test_file = test_path.display().to_string();
    let package = engine
        .add_policy(test_file.clone(), test_source.clone())
        .map_err(|e| Error::PolicyLoad {
            name: test_file.clone(),
            reason: e.to_string(),
        })?;
    let names = test_rule_names(&test_source);
    if names.is_empty() {
        return Err(Error::PolicyLoad {
            name: test_file,
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
