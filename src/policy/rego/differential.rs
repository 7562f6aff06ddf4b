//! The differential test of the evaluators: every module in `policies/`,
//! every Rego module written as a string literal in the crate's sources
//! (`src/**/*.rs`, `tests/*.rs`, `benches/`, `examples/`), and a corpus of
//! modules whose evaluation errors, decide every input of a fixed battery
//! identically under the interpreter, the default evaluator and the
//! bytecode setting; the error corpus denies under all three.
//!
//! Modules are collected from the sources rather than listed here, so a
//! module a later test adds is covered without anyone remembering to.

use super::{RegoEvaluator, RegoModule};
use crate::policy::{Op, Phase, PolicyAction, PolicyContext};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules whose evaluation errors on every input of the battery (or, for
/// those guarded by `input.op`, on every put): each must deny, whichever
/// evaluator runs it. docs/policy.md promises it.
const ERRORS: &[(&str, &str)] = &[
    (
        "division by zero in a deny message",
        "package e.div\nimport rego.v1\ndeny contains msg if {\n    x := count(input.key) - count(input.key)\n    msg := sprintf(\"n=%v\", [1 / x])\n}\n",
    ),
    (
        "division by a literal zero",
        "package e.div0\nimport rego.v1\ndeny contains msg if { msg := sprintf(\"n=%v\", [10 / 0]) }\n",
    ),
    (
        "modulo by zero",
        "package e.rem\nimport rego.v1\ndeny contains \"odd\" if { 7 % 0 == 1 }\n",
    ),
    (
        "division by zero in allow",
        "package e.allowdiv\nimport rego.v1\nallow if { 1 / 0 > 0 }\nallow if input.op\n",
    ),
    (
        "a builtin given a number for a string",
        "package e.upper\nimport rego.v1\ndeny contains msg if { msg := upper(count(input.key)) }\n",
    ),
    (
        "a string builtin given a number, in a condition",
        "package e.startswith\nimport rego.v1\ndeny contains \"flag\" if { startswith(count(input.key), \"-\") }\n",
    ),
    (
        "concat of numbers",
        "package e.concat\nimport rego.v1\ndeny contains msg if { msg := concat(\",\", [1, 2]) }\n",
    ),
    (
        "to_number of a word",
        "package e.tonumber\nimport rego.v1\ndeny contains \"big\" if { to_number(\"many\") > 3 }\n",
    ),
    (
        "count of a number",
        "package e.count\nimport rego.v1\ndeny contains \"many\" if { count(5) > 1 }\n",
    ),
    (
        "sprintf with a non-array",
        "package e.sprintf\nimport rego.v1\ndeny contains msg if { msg := sprintf(\"%v\", 1) }\n",
    ),
    (
        "arithmetic on a string",
        "package e.plus\nimport rego.v1\ndeny contains \"x\" if { input.key + 1 > 0 }\n",
    ),
    (
        "an invalid regular expression",
        "package e.regex\nimport rego.v1\ndeny contains \"x\" if { regex.match(\"[\", input.key) }\n",
    ),
    (
        "json.unmarshal of text that is not JSON",
        "package e.json\nimport rego.v1\ndeny contains \"x\" if { json.unmarshal(\"{not json\").a }\n",
    ),
    (
        "numbers.range of a string",
        "package e.range\nimport rego.v1\ndeny contains \"x\" if { some i in numbers.range(\"a\", 3); i > 1 }\n",
    ),
    (
        "conflicting values of a complete rule",
        "package e.conflict\nimport rego.v1\nlevel := \"low\" if input.op\nlevel := \"high\" if input.key\ndeny contains level if level == \"high\"\n",
    ),
    (
        "conflicting values computed in a body",
        "package e.conflictbody\nimport rego.v1\nfirst := k if { some k in [\"a\", \"b\"] }\ndeny contains \"x\" if first == \"z\"\n",
    ),
    (
        "conflicting values of allow",
        "package e.allowconflict\nimport rego.v1\nallow := true if input.op\nallow := false if input.key\n",
    ),
    (
        "a function with two values for one argument",
        "package e.func\nimport rego.v1\nf(x) := 1 if x\nf(x) := 2 if x\ndeny contains \"x\" if f(true) == 3\n",
    ),
    (
        "a time-limit overrun",
        "package e.slow\nimport rego.v1\ndeny contains \"never\" if {\n    some i in numbers.range(1, 30000)\n    some j in numbers.range(1, 30000)\n    i * j == -1\n}\n",
    ),
];

/// Each module that must be collected from the sources, by package: if the
/// collector misses one, the test says so rather than passing on less.
const MUST_COLLECT: &[&str] = &[
    "switchboard.sensitive_tools",
    "switchboard.shell_guard",
    "t.values",
    "e.div",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `*.rego` files under `dir`, recursively (tests excluded: they hold
/// `test_` rules, run by `policy test`).
fn rego_files(dir: &Path, found: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rego_files(&path, found);
        } else if path.extension().is_some_and(|x| x == "rego")
            && !path.to_string_lossy().ends_with("_test.rego")
        {
            let source = std::fs::read_to_string(&path).unwrap();
            found.push((path.display().to_string(), source));
        }
    }
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|x| x == "rs") {
            found.push(path);
        }
    }
}

/// The string literals of Rust `source`, unescaped: `"…"`, `r"…"`,
/// `r#"…"#` (byte strings too). Comments and char literals are skipped so
/// a quote inside them starts nothing.
fn string_literals(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && at(i + 1) == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && (!ident_before(&chars, i) || (chars[i - 1] == 'b' && !ident_before(&chars, i - 1)))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                i = j;
                continue;
            }
            let start = j + 1;
            let mut k = start;
            loop {
                if k >= chars.len() {
                    break;
                }
                if chars[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#') {
                    break;
                }
                k += 1;
            }
            out.push(chars[start..k.min(chars.len())].iter().collect());
            i = k + 1 + hashes;
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                    match at(i) {
                        'n' => text.push('\n'),
                        't' => text.push('\t'),
                        'r' => text.push('\r'),
                        '0' => text.push('\0'),
                        '\n' => {
                            // A line continuation: the next line's leading
                            // whitespace is not part of the string.
                            while at(i + 1).is_whitespace() {
                                i += 1;
                            }
                        }
                        'u' => {
                            let close = (i..chars.len()).find(|&k| chars[k] == '}').unwrap_or(i);
                            let hex: String = chars[i + 2..close].iter().collect();
                            if let Some(ch) =
                                u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                            {
                                text.push(ch);
                            }
                            i = close;
                        }
                        'x' => {
                            let hex: String =
                                chars[i + 1..(i + 3).min(chars.len())].iter().collect();
                            if let Ok(b) = u8::from_str_radix(&hex, 16) {
                                text.push(b as char);
                            }
                            i += 2;
                        }
                        other => text.push(other),
                    }
                    i += 1;
                } else {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            out.push(text);
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Whether a string literal is a whole Rego module: its first line of code
/// is a `package` line and it defines `deny` or `allow`.
fn is_module(text: &str) -> bool {
    let first_code = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    first_code.is_some_and(|l| l.starts_with("package "))
        && (text.contains("deny") || text.contains("allow"))
}

/// Every module to compare: `(where it comes from, source)`, deduplicated.
fn collect_modules() -> Vec<(String, String)> {
    let mut modules = Vec::new();
    rego_files(&root().join("policies"), &mut modules);
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    files.sort();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for literal in string_literals(&source) {
            if is_module(&literal) {
                modules.push((file.display().to_string(), literal));
            }
        }
    }
    let mut seen = BTreeSet::new();
    modules.retain(|(_, source)| seen.insert(source.clone()));
    modules
}

/// One input of the battery: the operation, key, stored value and context.
type Input = (Op, &'static str, Vec<u8>, PolicyContext);

/// The inputs every module decides: writes and reads of the kinds of keys
/// Switchboard has, JSON and non-JSON values, callers with and without roles.
fn battery() -> Vec<Input> {
    let record = serde_json::json!({
        "tool": "run", "category": "shell", "agent_id": "agent_7", "status": "pending",
        "args": ["--force", "deploy.sh", "rm -rf /"], "input": {"command": "rm -rf /", "amount": 20},
    });
    let agent = serde_json::json!({
        "agent_id": "evil", "tools": ["code"], "transport": {"mcp": {"command": {"program": "/bin/sh"}}},
    });
    let values: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&record).unwrap(),
        serde_json::to_vec(&agent).unwrap(),
        serde_json::to_vec(&serde_json::json!({"args": []})).unwrap(),
        b"{}".to_vec(),
        b"plain text; not json".to_vec(),
    ];
    let contexts = [
        PolicyContext::new(),
        PolicyContext::new()
            .with("agent_id", "trusted_agent_1")
            .with("action", "dispatch"),
        PolicyContext::new()
            .with("agent_id", "evil")
            .with("caller", "token:t1")
            .with("roles", "admin,ops")
            .with("action", "register"),
        PolicyContext::new()
            .with("agent_id", "agent_7")
            .with("role", "user")
            .with("caller", "jwt:alice")
            .with("roles", "payments")
            .with("claim.email", "a@example.com"),
    ];
    let keys = [
        "tools/shell/run/01J0000000000000000000000",
        "tools/sensitive/transfer/1",
        "agents/evil",
        "mcp_tools/files/read_file",
        "sessions/s1",
        "tools/shell/forbidden",
    ];
    let mut battery = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        for (v, value) in values.iter().enumerate() {
            let ctx = contexts[(k + v) % contexts.len()].clone();
            let op = [Op::Put, Op::Put, Op::Delete, Op::Get][(k * 5 + v) % 4];
            battery.push((op, *key, value.clone(), ctx));
        }
    }
    battery
}

/// The package of the error corpus's module that runs out of time: each of
/// its decisions takes the whole time limit, so it decides a few inputs only.
const SLOW: &str = "e.slow";

/// The battery `module` decides: all of it, or its first inputs for [`SLOW`].
fn battery_for(module: &RegoModule) -> Vec<Input> {
    let mut inputs = battery();
    if module.name() == SLOW {
        inputs.truncate(2);
    }
    inputs
}

/// The decisions of `module` on the battery, as comparable text.
fn decisions(module: &RegoModule) -> Vec<String> {
    battery_for(module)
        .iter()
        .map(|(op, key, value, ctx)| {
            format!(
                "{op:?} {key}: {:?}",
                kind(&module.decide(*op, Phase::Before, key, value, ctx))
            )
        })
        .collect()
}

/// A decision as the chain acts on it. A Deny's reason is left out: the
/// two engines word their errors differently, and only whether the write
/// goes through matters.
fn kind(action: &PolicyAction) -> &'static str {
    match action {
        PolicyAction::Allow => "allow",
        PolicyAction::Deny(_) => "deny",
        _ => "other",
    }
}

#[test]
fn every_module_decides_alike_under_every_evaluator_and_errors_deny() {
    let mut modules = collect_modules();
    for (name, source) in ERRORS {
        if !modules.iter().any(|(_, s)| s == source) {
            modules.push((format!("error corpus: {name}"), source.to_string()));
        }
    }
    let mut compared = BTreeSet::new();
    let mut on_vm = 0;
    let mut modules_compared = 0;
    let mut differences = Vec::new();
    for (origin, source) in &modules {
        let interpreter = RegoModule::compile(None, source, RegoEvaluator::Interpreter);
        let others = [RegoEvaluator::Auto, RegoEvaluator::Bytecode]
            .map(|evaluator| (evaluator, RegoModule::compile(None, source, evaluator)));
        let interpreter = match interpreter {
            Ok(module) => module,
            Err(_) => {
                // Not a module on its own (a template, a deliberately broken
                // one): no evaluator may take it either.
                for (evaluator, other) in &others {
                    assert!(
                        other.is_err(),
                        "{origin}: {evaluator:?} compiles a module the interpreter refuses:\n{source}"
                    );
                }
                continue;
            }
        };
        compared.insert(interpreter.name().to_string());
        modules_compared += 1;
        let expected = decisions(&interpreter);
        for (evaluator, other) in others {
            let other = other.unwrap_or_else(|e| {
                panic!("{origin}: {evaluator:?} refuses what the interpreter takes: {e}")
            });
            if evaluator == RegoEvaluator::Auto && other.is_compiled_to_bytecode() {
                on_vm += 1;
            }
            let got = decisions(&other);
            if got != expected {
                let diff: Vec<String> = expected
                    .iter()
                    .zip(&got)
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| format!("    interpreter {a} / {evaluator:?} {b}"))
                    .collect();
                differences.push(format!("{origin} ({}):\n{}", other.name(), diff.join("\n")));
            }
        }
    }
    eprintln!(
        "compared {modules_compared} modules ({} packages; {on_vm} of the modules on the VM \
         under the default evaluator)",
        compared.len()
    );
    for package in MUST_COLLECT {
        assert!(
            compared.contains(*package),
            "module {package} was not collected; collected: {compared:?}"
        );
    }
    assert!(
        modules_compared >= 40,
        "only {modules_compared} modules collected: {compared:?}"
    );
    assert!(
        differences.is_empty(),
        "evaluators disagree:\n{}",
        differences.join("\n")
    );
    // Every module of the error corpus denies every put, whichever evaluator.
    for (name, source) in ERRORS {
        for evaluator in [
            RegoEvaluator::Interpreter,
            RegoEvaluator::Auto,
            RegoEvaluator::Bytecode,
        ] {
            let module = RegoModule::compile(None, source, evaluator).unwrap();
            for (op, key, value, ctx) in battery_for(&module)
                .iter()
                .filter(|(op, ..)| *op == Op::Put)
            {
                let action = module.decide(*op, Phase::Before, key, value, ctx);
                assert!(
                    matches!(action, PolicyAction::Deny(_)),
                    "{name} under {evaluator:?} let {key} through ({action:?})"
                );
            }
        }
    }
}

#[test]
fn the_collector_reads_every_kind_of_literal() {
    let source = r####"
        // "package commented\nallow if true"
        let a = "package a\nallow if \
                 true";
        let b = r#"package b
allow if true"#;
        let c = 'x'; let d = '"'; fn f<'a>(s: &'a str) {}
        let e = br"package e allow";
    "####;
    let found = string_literals(source);
    assert!(
        found.contains(&"package a\nallow if true".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"package b\nallow if true".to_string()),
        "{found:?}"
    );
    assert!(found.contains(&"package e allow".to_string()), "{found:?}");
    assert!(!found.iter().any(|s| s.contains("commented")), "{found:?}");
}
