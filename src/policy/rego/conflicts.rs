//! Which modules the bytecode VM may run with the interpreter's exact
//! meaning. The two differ in two places, both where evaluation fails:
//!
//! - when the definitions (or bindings) of a complete rule or function
//!   produce different values, the interpreter reports a conflict, which
//!   Switchboard turns into a fail-closed Deny, and the VM makes the rule
//!   undefined ([`may_conflict`]);
//! - when a builtin or an operator fails (division by zero, `upper(1)`,
//!   `"a" + 1`), the interpreter reports the error (a Deny) and regorus
//!   0.14's VM drops the rule body that failed, strict mode or not, so a
//!   `deny` rule that errors lets the write through ([`may_error`]).
//!
//! A module that can do neither is safe on the VM; any other runs in the
//! interpreter, whichever evaluator was asked for. Both checks read the
//! source conservatively: when in doubt, the interpreter.

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

/// Whether evaluating `source` may raise an error the VM would swallow.
/// Conservative: `true` for any call (a builtin, or a function of the
/// module), any arithmetic or set operator (`+ - * / % & |` outside a
/// comprehension's `|`), and for text it cannot scan. What remains (rule
/// references, `==`, `!=`, `<`, `in`, `some`, `every`, `not`, literals and
/// comprehensions) cannot fail in either engine.
pub(super) fn may_error(source: &str) -> bool {
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // The innermost open bracket: a `|` right inside `[` or `{` is a
    // comprehension's, anywhere else a set union.
    let mut open: Vec<u8> = Vec::new();
    // The last byte of code seen that is not white space.
    let mut last = b' ';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                i = (i..bytes.len())
                    .find(|&j| bytes[j] == b'\n')
                    .unwrap_or(bytes.len());
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if i >= bytes.len() {
                    return true;
                }
            }
            b'`' => match (i + 1..bytes.len()).find(|&j| bytes[j] == b'`') {
                Some(end) => i = end,
                None => return true,
            },
            b'(' if is_ident(last) || last == b']' => return true,
            b'(' | b'[' | b'{' => open.push(b),
            b')' | b']' | b'}' => {
                open.pop();
            }
            b'|' if matches!(open.last(), Some(b'[' | b'{')) => {}
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' => return true,
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            last = b;
        }
        i += 1;
    }
    false
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
    use super::{may_conflict, may_error};

    #[test]
    fn only_modules_without_calls_or_operators_cannot_error() {
        let safe = [
            "package p\nimport rego.v1\ntrusted := {\"a\", \"b\"}\ndeny contains \"no\" if not input.context.agent_id in trusted\n",
            "package p\nimport rego.v1\nnames := {n | some n in input.value.args}\nallow if \"x\" in names\n",
            "package p\nimport rego.v1\nallow if [a | some a in input.value.args; a != \"-\"]\n# count(x) - 1 in a comment\n",
            "package p\nimport rego.v1\ndeny contains \"a+b / c(d)\" if input.key == `raw (x) - y`\n",
            "package p\nimport rego.v1\nallow if { some x in input.value.args; x < 3 }\n",
        ];
        for source in safe {
            assert!(!may_error(source), "{source}");
        }
        let risky = [
            "package p\nimport rego.v1\ndeny contains msg if { msg := sprintf(\"%v\", [input.key]) }\n",
            "package p\nimport rego.v1\ndeny contains \"x\" if input.value.n / 0\n",
            "package p\nimport rego.v1\nallow if input.value.n - 1 > 0\n",
            "package p\nimport rego.v1\nallow if input.value.a | input.value.b\n",
            "package p\nimport rego.v1\nallow if { x := (input.value.a | input.value.b); x }\n",
            "package p\nimport rego.v1\nallow if input.value.a & input.value.b\n",
            "package p\nimport rego.v1\nf(x) := x\nallow if f(true)\n",
            "package p\nimport rego.v1\nallow if object.get(input, \"a\", 1)\n",
            "package p\nimport rego.v1\nallow if input.value.fns[0](1)\n",
            "package p\nallow if \"unterminated",
        ];
        for source in risky {
            assert!(may_error(source), "{source}");
        }
    }

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
