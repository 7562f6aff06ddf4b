//! The machines that evaluate one module: bytecode for regorus's VM or a
//! clone of a prepared interpreter. Evaluation needs a mutable machine, so
//! each module keeps a small pool of ready ones: concurrent writers never
//! share (or recompile) one.

use parking_lot::Mutex;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The longest one module may evaluate before it is stopped (and denies).
const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Machines kept ready per module; beyond this, spare ones are dropped.
const POOL_LIMIT: usize = 64;

/// How a module's rules are evaluated.
pub(super) enum Evaluator {
    /// Stands in for an engine that panics mid-evaluation.
    #[cfg(test)]
    Panics,
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

pub(super) fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(time_limit());
    // A builtin's error (division by zero, a type error) is an evaluation
    // error, which denies. Non-strict, it would make the expression
    // undefined: a `deny` rule that errors would let the write through.
    // Set here rather than trusted to the engine's default.
    engine.set_strict_builtin_errors(true);
    engine
}

/// Evaluates one rule (by its full path) on the current input.
pub(super) type EvalRule<'a> = dyn FnMut(&str) -> std::result::Result<Value, String> + 'a;

impl Evaluator {
    /// Bytecode for the module in `engine` when the compiler takes it, else
    /// the interpreter.
    pub(super) fn bytecode(mut engine: Engine, entry_points: &[&str]) -> Evaluator {
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
    pub(super) fn interpreter(mut engine: Engine, entry_points: &[&str]) -> Evaluator {
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
    pub(super) fn with_input<R>(
        &self,
        input: Value,
        decide: impl FnOnce(&mut EvalRule<'_>) -> R,
    ) -> R {
        match self {
            #[cfg(test)]
            Evaluator::Panics => panic!("engine bug"),
            Evaluator::Vm { program, pool } => {
                let mut vm = pool.lock().pop().unwrap_or_else(|| {
                    let mut vm = RegoVM::new();
                    vm.load_program(program.clone());
                    vm.set_execution_timer_config(Some(time_limit()));
                    // The VM's own default stops at 25,000 instructions, which
                    // a policy walking a long list passes in microseconds; as
                    // in the interpreter, only the time limit applies.
                    vm.set_max_instructions(usize::MAX);
                    // Builtin errors stay non-strict, as the VM's default: only
                    // modules that cannot fail run here (`conflicts`), and the
                    // VM's strict mode would also refuse comparisons across
                    // types, which the interpreter orders as OPA does.
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
