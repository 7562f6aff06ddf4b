//! The `input` document a module sees, and whether a module can read
//! `input.value` at all (when it cannot, the stored value is not parsed).

use super::super::{Op, Phase, PolicyContext};
use regorus::Value;

/// The `input` document, built straight into regorus values: one parse of
/// the stored JSON (when the module may read it) and no intermediate
/// `serde_json::Value`.
pub(super) fn input_document(
    op: Op,
    phase: Phase,
    key: &str,
    value: &[u8],
    ctx: &PolicyContext,
    with_value: bool,
    with_arguments: bool,
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
    let context = context_document(ctx);
    let mut input = Value::new_object();
    if let Ok(fields) = input.as_object_mut() {
        fields.insert(Value::from("op"), Value::from(op.as_str()));
        fields.insert(Value::from("phase"), Value::from(phase.as_str()));
        fields.insert(Value::from("key"), Value::from(key));
        fields.insert(Value::from("value"), value);
        fields.insert(Value::from("context"), context);
        if let Some(arguments) = ctx.input().filter(|_| with_arguments) {
            fields.insert(Value::from("input"), Value::from(arguments.clone()));
        }
    }
    input
}

/// `input.context`: every entry as a string, except the caller's: `roles`
/// and `scopes` are lists, and `claim.NAME` entries gather in `claims`.
fn context_document(ctx: &PolicyContext) -> Value {
    use super::super::keys;
    let mut context = Value::new_object();
    let mut claims: Option<Value> = None;
    if let Ok(entries) = context.as_object_mut() {
        for (k, v) in ctx.iter() {
            let value = if k == keys::ROLES || k == keys::SCOPES {
                Value::from(
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(Value::from)
                        .collect::<Vec<_>>(),
                )
            } else if let Some(name) = k.strip_prefix(keys::CLAIM_PREFIX) {
                let claims = claims.get_or_insert_with(Value::new_object);
                if let Ok(claims) = claims.as_object_mut() {
                    claims.insert(Value::from(name), Value::from(v));
                }
                continue;
            } else {
                Value::from(v)
            };
            entries.insert(Value::from(k), value);
        }
        if let Some(claims) = claims {
            entries.insert(Value::from("claims"), claims);
        }
    }
    context
}

/// Whether Rego `source` may read `input.value`. Conservative: only a source
/// whose every use of `input` (outside comments and strings) is `input.op`,
/// `input.phase`, `input.key`, `input.context…` or `input.input…` (a call's
/// arguments) cannot; a bare `input`, an
/// `input[...]` or an `import input…` may reach the value, and counts as
/// reading it.
pub(super) fn may_read_input_value(source: &str) -> bool {
    uses_input_beyond(source, &["op", "phase", "key", "context", "input"])
}

/// Whether Rego `source` may read `input.input` (a call's arguments), by the
/// same conservative reading as [`may_read_input_value`]: when it cannot,
/// the arguments are not converted for it.
pub(super) fn may_read_arguments(source: &str) -> bool {
    uses_input_beyond(source, &["op", "phase", "key", "context", "value"])
}

/// Whether some use of `input` in `source` (outside comments and strings)
/// is anything but `input.F` with `F` in `allowed`.
fn uses_input_beyond(source: &str, allowed: &[&str]) -> bool {
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
                let mut next = end;
                if word == "input" {
                    let field = (bytes.get(end) == Some(&b'.')).then(|| ident_at(end + 1));
                    match field {
                        // Past the field: `input.input.x` is not a second `input`.
                        Some((f, after)) if allowed.contains(&f) => next = after,
                        _ => return true,
                    }
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_value_reads_are_found_conservatively() {
        let without = [
            "deny contains m if { input.op == \"put\"; not input.context.agent_id in s; m := \"x\" }",
            "allow if input.key == \"a\"\n# input.value is only mentioned in a comment",
            "deny contains \"input.value in a string\" if input.phase == \"before\"",
            "deny contains `raw input[0]` if input.context[\"agent_id\"] == \"x\"",
            "import input.context as ctx\nallow if ctx.agent_id == \"a\"",
            "myinput := 1\nallow if myinput == input.op",
            "deny contains m if { contains(input.input.command, \"rm -rf\"); m := \"x\" }",
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
        assert!(may_read_arguments("allow if input.input.amount < 10"));
        assert!(may_read_arguments("allow if count(input) > 0"));
        assert!(!may_read_arguments(
            "allow if input.value.status == \"x\"\nallow if input.context.a == input.key"
        ));
    }
}
