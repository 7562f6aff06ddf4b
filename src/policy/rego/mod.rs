//! Rego modules in the policy chain, evaluated with `regorus`.
//!
//! A module is compiled once at load, for regorus's tree-walking interpreter
//! or, when it cannot fail to evaluate (`conflicts`), to bytecode for
//! regorus's Rego virtual machine (`pool`: the machines, kept ready per
//! module). `input` builds the input document, `loader` reads a policy
//! directory's headers, `test_runner` runs `*_test.rego` files;
//! `differential` (a test) holds every evaluator to the interpreter's
//! decisions.
//!
//! Decision rules: a module may define `deny` (a set of messages; non-empty
//! means Deny) and/or `allow` (must evaluate to `true` when defined). Any
//! evaluation error, a time-limit overrun, a panic inside the engine, or an
//! `allow` that is not `true` denies: the chain fails closed.

mod conflicts;
#[cfg(test)]
mod differential;
mod input;
mod loader;
mod pool;
mod test_runner;

use super::{Op, Phase, PolicyAction, PolicyContext};
use crate::error::{panic_message, Error, Result};
use input::{input_document, may_read_arguments, may_read_input_value};
pub use input::{unknown_input_fields, UnknownInputField};
pub use loader::{declared_ops, declared_scopes, module_files};
pub(crate) use loader::{load_dir, parse_module, LoadedModule};
use pool::{new_engine, EvalRule, Evaluator};
use regorus::{Engine, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
pub use test_runner::{run_test_module, run_tests, RegoTestResult};

/// Which of regorus's evaluators runs a module's rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegoEvaluator {
    /// The bytecode VM for every module it decides exactly as the
    /// interpreter does, the interpreter for the rest: modules that could
    /// fail to evaluate (a call, an operator, complete rules or functions
    /// that could produce two values), where only the interpreter reports
    /// the error (a fail-closed Deny). The default.
    #[default]
    Auto,
    /// The tree-walking interpreter for every module: OPA's semantics, with
    /// strict builtin errors and the evaluation error when two definitions
    /// of a complete rule disagree (each a fail-closed Deny).
    Interpreter,
    /// Bytecode for regorus's Rego virtual machine for every module it can
    /// run with the interpreter's meaning (as `Auto` chooses): several times
    /// faster per decision. The VM cannot report an evaluation error (a
    /// failing builtin or a conflict makes the rule undefined, and an error
    /// must deny), so a module that could fail runs in the interpreter, as
    /// does a module its compiler does not take (both logged).
    Bytecode,
}

/// A compiled module, ready to decide.
pub struct RegoModule {
    name: String,
    /// Whether the source may read `input.value`; when it cannot, the stored
    /// value (often most of the input) is not parsed for it.
    reads_value: bool,
    /// Whether the source may read `input.input` (a call's arguments).
    reads_arguments: bool,
    deny_rule: Option<String>,
    allow_rule: Option<String>,
    evaluator: Evaluator,
}

impl RegoModule {
    /// Compiles `source`. `file` names it in errors; the module's name is its
    /// package (without the `data.` prefix).
    pub fn compile(
        file: Option<&str>,
        source: &str,
        evaluator: RegoEvaluator,
    ) -> Result<RegoModule> {
        // Every evaluator fails closed: conflicts and failing builtins are
        // errors only the interpreter reports (the VM makes the rule
        // undefined, which lets a `deny` through), so a module that could
        // have one never runs on the VM, whichever evaluator was asked for.
        let vm_safe = || !conflicts::may_conflict(source) && !conflicts::may_error(source);
        let bytecode = match evaluator {
            RegoEvaluator::Auto => vm_safe(),
            RegoEvaluator::Interpreter => false,
            RegoEvaluator::Bytecode if !vm_safe() => {
                tracing::info!(
                    file = file.unwrap_or("module.rego"),
                    "this Rego module could fail to evaluate (a call, an operator, or complete \
                     rules that could conflict), which only the interpreter reports as an error \
                     (a Deny); it runs in the interpreter"
                );
                false
            }
            RegoEvaluator::Bytecode => true,
        };
        if bytecode {
            Self::compile_for(file, source, Evaluator::bytecode)
        } else {
            Self::compile_for(file, source, Evaluator::interpreter)
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
            reads_arguments: may_read_arguments(source),
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
        // A panic inside regorus denies like an evaluation error; the machine
        // it happened on is dropped with the unwind, never pooled again.
        let decided = catch_unwind(AssertUnwindSafe(|| {
            let input = input_document(
                op,
                phase,
                key,
                value,
                ctx,
                self.reads_value,
                self.reads_arguments,
            );
            self.evaluator.with_input(input, |eval| self.judge(eval))
        }))
        .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&panic))));
        match decided {
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

fn message_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Modules covering the language a policy typically uses: sets, `in`,
    /// `not`, `sprintf`, `object.get`, string builtins, `count`, comprehension,
    /// `every`, and both decision rules.
    const MODULES: [&str; 4] = [
        include_str!("../../../policies/sensitive_tools.rego"),
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

    #[test]
    fn a_panic_inside_the_engine_denies() {
        let mut module =
            RegoModule::compile(None, "package p\nallow if true", RegoEvaluator::Interpreter)
                .unwrap();
        module.evaluator = Evaluator::Panics;
        let action = module.decide(Op::Put, Phase::Before, "a/b", b"{}", &PolicyContext::new());
        let PolicyAction::Deny(reason) = action else {
            panic!("a panicking engine must deny");
        };
        assert!(
            reason.contains("engine bug") && reason.contains("fail closed"),
            "{reason}"
        );
    }

    #[test]
    fn safe_modules_run_as_bytecode_and_conflicts_stay_fail_closed_under_every_evaluator() {
        let safe = "package p\nimport rego.v1\ntrusted := {\"a\", \"b\"}\n\
                    deny contains \"untrusted\" if not input.context.agent_id in trusted\n";
        let safe = RegoModule::compile(None, safe, RegoEvaluator::default()).unwrap();
        assert!(safe.is_compiled_to_bytecode());
        // A builtin could fail on some input, which the VM would not report.
        let calls = RegoModule::compile(None, MODULES[0], RegoEvaluator::default()).unwrap();
        assert!(!calls.is_compiled_to_bytecode());
        let conflicting = "package p\nimport rego.v1\nlevel := \"low\" if input.op == \"put\"\n\
                           level := \"high\" if input.key == \"a/b\"\ndeny contains level if level == \"high\"\n";
        let module = RegoModule::compile(None, conflicting, RegoEvaluator::default()).unwrap();
        assert!(!module.is_compiled_to_bytecode());
        // Both definitions hold: the interpreter reports the conflict, a Deny.
        let action = module.decide(Op::Put, Phase::Before, "a/b", b"{}", &PolicyContext::new());
        assert!(matches!(action, PolicyAction::Deny(_)), "{action:?}");
        // The VM alone would have picked one value and let this write through
        // or not by chance; no evaluator runs such a module there, not even
        // the bytecode setting.
        let vm = RegoModule::compile(None, conflicting, RegoEvaluator::Bytecode).unwrap();
        assert!(!vm.is_compiled_to_bytecode());
        let action = vm.decide(Op::Put, Phase::Before, "a/b", b"{}", &PolicyContext::new());
        assert!(matches!(action, PolicyAction::Deny(_)), "{action:?}");
    }

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
            // The VM itself, whatever the evaluators would choose: on these
            // inputs no module fails, and the two engines must agree.
            let vm = RegoModule::compile_for(None, source, Evaluator::bytecode).unwrap();
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
