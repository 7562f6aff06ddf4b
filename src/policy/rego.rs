//! Rego modules in the policy chain, evaluated with `regorus`.
//!
//! A module is compiled once at load, for regorus's tree-walking interpreter
//! or, when the chain is set to [`RegoEvaluator::Bytecode`], to bytecode for
//! regorus's Rego virtual machine. Evaluation needs a mutable machine, so each
//! module keeps a small pool of ready ones: concurrent writers never share (or
//! recompile) one.
//!
//! Decision rules: a module may define `deny` (a set of messages; non-empty
//! means Deny) and/or `allow` (must evaluate to `true` when defined). Any
//! evaluation error, a time-limit overrun, or an `allow` that is not `true`
//! denies: the chain fails closed.

use super::glob::Glob;
use super::{Op, Phase, PolicyAction, PolicyContext};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The longest one module may evaluate before it is stopped (and denies).
const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Machines kept ready per module; beyond this, spare ones are dropped.
const POOL_LIMIT: usize = 64;

/// Which of regorus's evaluators runs a module's rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegoEvaluator {
    /// The tree-walking interpreter: OPA's semantics, including the
    /// evaluation error (so a fail-closed Deny) when two definitions of a
    /// complete rule disagree. The default.
    #[default]
    Interpreter,
    /// Bytecode for regorus's Rego virtual machine: several times faster per
    /// decision. It does not detect conflicting complete-rule values (one of
    /// them is used), and a module its compiler does not take runs in the
    /// interpreter (logged).
    Bytecode,
}

/// A compiled module, ready to decide.
pub struct RegoModule {
    name: String,
    /// Whether the source may read `input.value`; when it cannot, the stored
    /// value (often most of the input) is not parsed for it.
    reads_value: bool,
    deny_rule: Option<String>,
    allow_rule: Option<String>,
    evaluator: Evaluator,
}

/// How a module's rules are evaluated.
enum Evaluator {
    /// Bytecode with `deny` and `allow` as entry points.
    Vm {
        program: Arc<Program>,
        pool: Mutex<Vec<RegoVM>>,
    },
    /// The interpreter, for modules the bytecode compiler does not take.
    Interpreter {
        template: Box<Engine>,
        pool: Mutex<Vec<Engine>>,
    },
}

fn time_limit() -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).expect("non-zero"),
    }
}

fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(time_limit());
    engine
}

/// Evaluates one rule (by its full path) on the current input.
type EvalRule<'a> = dyn FnMut(&str) -> std::result::Result<Value, String> + 'a;

impl Evaluator {
    /// Bytecode for the module in `engine` when the compiler takes it, else
    /// the interpreter.
    fn bytecode(mut engine: Engine, entry_points: &[&str]) -> Evaluator {
        let compiled = entry_points
            .first()
            .ok_or_else(|| "no entry point".to_string())
            .and_then(|first| {
                engine
                    .compile_with_entrypoint(&regorus::Rc::from(*first))
                    .map_err(|e| e.to_string())
            })
            .and_then(|policy| {
                Compiler::compile_from_policy(&policy, entry_points).map_err(|e| e.to_string())
            });
        match compiled {
            Ok(program) => Evaluator::Vm {
                program,
                pool: Mutex::new(Vec::new()),
            },
            Err(reason) => {
                tracing::warn!(%reason, "the Rego bytecode compiler refused a module; it runs in the interpreter");
                Evaluator::interpreter(engine, entry_points)
            }
        }
    }

    /// The interpreter, prepared by one evaluation so its clones start ready.
    fn interpreter(mut engine: Engine, entry_points: &[&str]) -> Evaluator {
        engine.set_input(Value::new_object());
        if let Some(rule) = entry_points.first() {
            // An error here depends on the input; real writes report it.
            let _ = engine.eval_rule(rule.to_string());
        }
        Evaluator::Interpreter {
            template: Box::new(engine),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Runs `decide` on a pooled machine holding `input`.
    fn with_input<R>(&self, input: Value, decide: impl FnOnce(&mut EvalRule<'_>) -> R) -> R {
        match self {
            Evaluator::Vm { program, pool } => {
                let mut vm = pool.lock().pop().unwrap_or_else(|| {
                    let mut vm = RegoVM::new();
                    vm.load_program(program.clone());
                    vm.set_execution_timer_config(Some(time_limit()));
                    // The VM's own default stops at 25,000 instructions, which
                    // a policy walking a long list passes in microseconds; as
                    // in the interpreter, only the time limit applies.
                    vm.set_max_instructions(usize::MAX);
                    vm
                });
                vm.set_input(input);
                let decision = decide(&mut |rule| {
                    vm.execute_entry_point_by_name(rule)
                        .map_err(|e| e.to_string())
                });
                return_to(pool, vm);
                decision
            }
            Evaluator::Interpreter { template, pool } => {
                let mut engine = pool.lock().pop().unwrap_or_else(|| (**template).clone());
                engine.set_input(input);
                let decision = decide(&mut |rule| {
                    engine
                        .eval_rule(rule.to_string())
                        .map_err(|e| e.to_string())
                });
                return_to(pool, engine);
                decision
            }
        }
    }
}

fn return_to<T>(pool: &Mutex<Vec<T>>, machine: T) {
    let mut pool = pool.lock();
    if pool.len() < POOL_LIMIT {
        pool.push(machine);
    }
}

impl RegoModule {
    /// Compiles `source`. `file` names it in errors; the module's name is its
    /// package (without the `data.` prefix).
    pub fn compile(
        file: Option<&str>,
        source: &str,
        evaluator: RegoEvaluator,
    ) -> Result<RegoModule> {
        match evaluator {
            RegoEvaluator::Interpreter => Self::compile_for(file, source, Evaluator::interpreter),
            RegoEvaluator::Bytecode => Self::compile_for(file, source, Evaluator::bytecode),
        }
    }

    fn compile_for(
        file: Option<&str>,
        source: &str,
        evaluator: fn(Engine, &[&str]) -> Evaluator,
    ) -> Result<RegoModule> {
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
        let entry_points: Vec<&str> = deny_rule
            .iter()
            .chain(&allow_rule)
            .map(String::as_str)
            .collect();
        let evaluator = evaluator(engine, &entry_points);
        Ok(RegoModule {
            name: package.trim_start_matches("data.").to_string(),
            reads_value: may_read_input_value(source),
            deny_rule,
            allow_rule,
            evaluator,
        })
    }

    /// The package name, e.g. `switchboard.sensitive_tools`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it runs as bytecode (else in the interpreter).
    pub fn is_compiled_to_bytecode(&self) -> bool {
        matches!(self.evaluator, Evaluator::Vm { .. })
    }

    pub(crate) fn decide(
        &self,
        op: Op,
        phase: Phase,
        key: &str,
        value: &[u8],
        ctx: &PolicyContext,
    ) -> PolicyAction {
        let input = input_document(op, phase, key, value, ctx, self.reads_value);
        match self.evaluator.with_input(input, |eval| self.judge(eval)) {
            Ok(action) => action,
            Err(e) => PolicyAction::Deny(format!(
                "rego module {} failed to evaluate ({e}); denying (fail closed)",
                self.name
            )),
        }
    }

    /// The decision rules: `deny` first, then `allow`.
    fn judge(&self, eval: &mut EvalRule<'_>) -> std::result::Result<PolicyAction, String> {
        if let Some(rule) = &self.deny_rule {
            match eval(rule)? {
                Value::Undefined | Value::Bool(false) => {}
                Value::Set(messages) if messages.is_empty() => {}
                Value::Set(messages) => {
                    let reasons: Vec<String> = messages.iter().map(message_text).collect();
                    return Ok(PolicyAction::Deny(reasons.join("; ")));
                }
                Value::Bool(true) => return Ok(PolicyAction::Deny(format!("{} denied", self.name))),
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
            if eval(rule)? != Value::Bool(true) {
                return Ok(PolicyAction::Deny(format!(
                    "{}: allow is not true",
                    self.name
                )));
            }
        }
        Ok(PolicyAction::Allow)
    }
}

/// The `input` document, built straight into regorus values: one parse of
/// the stored JSON (when the module may read it) and no intermediate
/// `serde_json::Value`.
fn input_document(
    op: Op,
    phase: Phase,
    key: &str,
    value: &[u8],
    ctx: &PolicyContext,
    with_value: bool,
) -> Value {
    let value = match op {
        Op::Delete => Value::Null,
        _ if !with_value => Value::Null,
        // A value that is not JSON is handed over as a string.
        Op::Put | Op::Get => std::str::from_utf8(value)
            .ok()
            .and_then(|text| Value::from_json_str(text).ok())
            .unwrap_or_else(|| Value::from(String::from_utf8_lossy(value).as_ref())),
    };
    let mut context = Value::new_object();
    if let Ok(entries) = context.as_object_mut() {
        for (k, v) in ctx.iter() {
            entries.insert(Value::from(k), Value::from(v));
        }
    }
    let mut input = Value::new_object();
    if let Ok(fields) = input.as_object_mut() {
        fields.insert(Value::from("op"), Value::from(op.as_str()));
        fields.insert(Value::from("phase"), Value::from(phase.as_str()));
        fields.insert(Value::from("key"), Value::from(key));
        fields.insert(Value::from("value"), value);
        fields.insert(Value::from("context"), context);
    }
    input
}

/// Whether Rego `source` may read `input.value`. Conservative: only a source
/// whose every use of `input` (outside comments and strings) is `input.op`,
/// `input.phase`, `input.key` or `input.context…` cannot; a bare `input`, an
/// `input[...]` or an `import input…` may reach the value, and counts as
/// reading it.
fn may_read_input_value(source: &str) -> bool {
    const WITHOUT_VALUE: [&str; 4] = ["op", "phase", "key", "context"];
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ident_at = |start: usize| {
        let end = (start..bytes.len())
            .find(|&i| !is_ident(bytes[i]))
            .unwrap_or(bytes.len());
        (&source[start..end], end)
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                i = (i..bytes.len())
                    .find(|&j| bytes[j] == b'\n')
                    .unwrap_or(bytes.len())
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'`' => {
                i = (i + 1..bytes.len())
                    .find(|&j| bytes[j] == b'`')
                    .map_or(bytes.len(), |j| j + 1)
            }
            b if is_ident(b) => {
                let (word, end) = ident_at(i);
                if word == "input" {
                    let field = (bytes.get(end) == Some(&b'.')).then(|| ident_at(end + 1).0);
                    if !field.is_some_and(|f| WITHOUT_VALUE.contains(&f)) {
                        return true;
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    false
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
pub(crate) fn load_dir(dir: &Path, evaluator: RegoEvaluator) -> Result<Vec<LoadedModule>> {
    let mut loaded = Vec::new();
    for path in rego_files(dir)?.into_iter().filter(|p| !is_test_file(p)) {
        let source = read(&path)?;
        let file = path.display().to_string();
        loaded.push(LoadedModule {
            scopes: declared_scopes(&file, &source)?,
            ops: declared_ops(&file, &source)?,
            module: RegoModule::compile(Some(&file), &source, evaluator)?,
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
    RegoModule::compile(Some(&file), &source, RegoEvaluator::Interpreter)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn input_value_reads_are_found_conservatively() {
        let without = [
            "deny contains m if { input.op == \"put\"; not input.context.agent_id in s; m := \"x\" }",
            "allow if input.key == \"a\"\n# input.value is only mentioned in a comment",
            "deny contains \"input.value in a string\" if input.phase == \"before\"",
            "deny contains `raw input[0]` if input.context[\"agent_id\"] == \"x\"",
            "import input.context as ctx\nallow if ctx.agent_id == \"a\"",
            "myinput := 1\nallow if myinput == input.op",
        ];
        for source in without {
            assert!(!may_read_input_value(source), "{source}");
        }
        let with = [
            "deny contains m if { input.value.secret; m := \"x\" }",
            "deny contains m if { x := input; x.value; m := \"x\" }",
            "allow if input[\"value\"]",
            "import input.value as v\nallow if v.a",
            "import input\nallow if input.op == \"put\"",
            "allow if count(input) > 0",
            "deny contains \"escaped \\\" quote\" if input.value",
        ];
        for source in with {
            assert!(may_read_input_value(source), "{source}");
        }
    }

    /// Modules covering the language a policy typically uses: sets, `in`,
    /// `not`, `sprintf`, `object.get`, string builtins, `count`, comprehension,
    /// `every`, and both decision rules.
    const MODULES: [&str; 4] = [
        include_str!("../../policies/sensitive_tools.rego"),
        r#"package t.values
import rego.v1
deny contains msg if {
    input.op == "put"
    some arg in input.value.args
    startswith(arg, "--")
    msg := sprintf("flag %v refused for %v", [arg, input.context.agent_id])
}
deny contains "too many args" if count(input.value.args) > 2
"#,
        r#"package t.allow
import rego.v1
default allow := false
allow if {
    input.op == "delete"
    input.context.role == "admin"
}
allow if {
    input.op == "put"
    every arg in input.value.args { not contains(arg, ";") }
    upper(object.get(input.context, "agent_id", "")) != "EVIL"
}
"#,
        r#"package t.both
import rego.v1
names := {n | some n in input.value.args; endswith(n, ".sh")}
deny contains sprintf("scripts: %v", [concat(",", sort([n | some n in names]))]) if count(names) > 0
allow if input.key != "tools/shell/forbidden"
"#,
    ];

    proptest! {
        /// The bytecode VM and the interpreter decide every write alike.
        #[test]
        fn bytecode_and_interpreter_agree(
            module in 0..MODULES.len(),
            op in prop::sample::select(vec![Op::Put, Op::Delete]),
            agent in prop::sample::select(vec!["trusted_agent_1", "evil", "agent_7", ""]),
            role in prop::option::of(prop::sample::select(vec!["admin", "user"])),
            key in prop::sample::select(vec!["tools/shell/forbidden", "tools/sensitive/x/1", "tools/code/y/2"]),
            args in prop::collection::vec("(--)?[a-z;]{0,6}(\\.sh)?", 0..4),
            json in any::<bool>(),
        ) {
            let source = MODULES[module];
            let vm = RegoModule::compile(None, source, RegoEvaluator::Bytecode).unwrap();
            prop_assert!(vm.is_compiled_to_bytecode(), "module {} fell back to the interpreter", module);
            let interpreter = RegoModule::compile(None, source, RegoEvaluator::Interpreter).unwrap();
            prop_assert!(!interpreter.is_compiled_to_bytecode());
            let mut ctx = PolicyContext::new().with("agent_id", agent);
            if let Some(role) = role {
                ctx.insert("role", role);
            }
            let value = if json {
                serde_json::to_vec(&serde_json::json!({"args": args})).unwrap()
            } else {
                args.join(" ").into_bytes()
            };
            prop_assert_eq!(
                vm.decide(op, Phase::Before, key, &value, &ctx),
                interpreter.decide(op, Phase::Before, key, &value, &ctx)
            );
        }
    }
}
