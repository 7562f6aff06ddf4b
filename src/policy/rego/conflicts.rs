//! Which modules the bytecode VM may run with the interpreter's exact
//! meaning. The two differ in one place: when the definitions (or bindings)
//! of a complete rule or function produce different values, the interpreter
//! reports a conflict, which Switchboard turns into a fail-closed Deny, and
//! the VM silently uses one of the values. A module whose complete rules
//! cannot produce two values is safe on the VM.

use regorus::unstable::{Expr, Parser, Rule, RuleHead, Source};
use std::collections::{HashMap, HashSet};

/// Whether `source` may define a complete rule or function whose values can
/// disagree. Conservative: `true` for a value computed in a rule body (it
/// may differ between bindings of the body's variables), for a function or
/// a rule head with a path (`obj[k] := v`), for one name given two different
/// values, and for a source it cannot parse.
pub(super) fn may_conflict(source: &str) -> bool {
    let Ok(source) = Source::from_contents("module.rego".into(), source.to_string()) else {
        return true;
    };
    let Ok(module) = Parser::new(&source).and_then(|mut parser| parser.parse()) else {
        return true;
    };
    let mut values: HashMap<String, HashSet<String>> = HashMap::new();
    for rule in &module.policy {
        let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
            continue; // `default x := v` never conflicts with a definition
        };
        let (refr, assign) = match head {
            RuleHead::Compr { refr, assign, .. } => (refr, assign),
            RuleHead::Func { .. } => return true,
            RuleHead::Set { .. } => continue, // sets collect, never conflict
        };
        if !matches!(refr.as_ref(), Expr::Var { .. }) {
            return true;
        }
        let name = refr.span().text().to_string();
        // A definition's value, as far as telling two apart goes: a literal
        // by its text; an expression without a body (`x := {1, 2}`) is one
        // value of its own; an expression computed in a body may take one
        // value per binding of the body's variables.
        let constant = bodies.is_empty();
        let mut define = |value: Option<&regorus::unstable::Ref<Expr>>| -> bool {
            let text = match value {
                None => "true".to_string(),
                Some(value) if is_literal(value) => value.span().text().to_string(),
                Some(value) if constant => format!("expression at {}", value.span().start),
                Some(_) => return false,
            };
            values.entry(name.clone()).or_default().insert(text);
            true
        };
        if !define(assign.as_ref().map(|a| &a.value)) {
            return true;
        }
        // Legacy extra query blocks define the rule again; `else` bodies are
        // alternatives, never evaluated together.
        for body in bodies.iter().skip(1).filter(|b| !b.is_else) {
            if let Some(assign) = &body.assign {
                if !define(Some(&assign.value)) {
                    return true;
                }
            }
        }
    }
    values.values().any(|distinct| distinct.len() > 1)
}

fn is_literal(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::may_conflict;

    #[test]
    fn only_rules_that_can_take_two_values_may_conflict() {
        let safe = [
            "package p\nimport rego.v1\ndeny contains \"no\" if input.x\n",
            "package p\nimport rego.v1\nallow if input.a\nallow if input.b\n",
            "package p\nimport rego.v1\ndefault allow := false\nallow if input.a\n",
            "package p\nimport rego.v1\nlevel := \"high\" if input.a\nlevel := \"high\" if input.b\ndeny contains level if level\n",
            "package p\nimport rego.v1\nx := 1 if input.a else := 2\nallow if x == 1\n",
            "package p\nimport rego.v1\ntrusted := {\"a\", \"b\"}\nallow if input.agent in trusted\n",
        ];
        for source in safe {
            assert!(!may_conflict(source), "{source}");
        }
        let risky = [
            "package p\nimport rego.v1\nx := 1 if input.a\nx := 2 if input.b\nallow if x == 1\n",
            "package p\nimport rego.v1\nx := v if { some v in input.list }\nallow if x\n",
            "package p\nimport rego.v1\nobj[k] := 1 if { some k in input.keys }\nallow if obj\n",
            "package p\nimport rego.v1\nf(a) := a\nallow if f(true)\n",
            "package p\nimport rego.v1\nt := {1}\nt := {2}\nallow if t\n",
            "package p\nthis is not rego",
        ];
        for source in risky {
            assert!(may_conflict(source), "{source}");
        }
    }
}
