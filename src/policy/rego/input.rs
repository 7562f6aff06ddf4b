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
    input_uses(source)
        .iter()
        .any(|u| !u.field.is_some_and(|f| allowed.contains(&f)))
}

/// The fields of the input document ([`input_document`]).
const INPUT_FIELDS: [&str; 6] = ["op", "phase", "key", "value", "context", "input"];

/// The `input.context` entries Switchboard sets ([`keys`](crate::policy::keys),
/// with the claims gathered in `claims`) and the CLI's `source`.
const CONTEXT_FIELDS: [&str; 15] = [
    "agent_id",
    "tool",
    "category",
    "session_id",
    "invocation_id",
    "strategy",
    "action",
    "caller",
    "roles",
    "scopes",
    "claims",
    "policy",
    "revision",
    "token_id",
    "source",
];

/// A reference in a module to a part of the input document that is never
/// there, so whatever tests it never holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownInputField {
    /// 1-based line of the reference.
    pub line: usize,
    /// As written, e.g. `input.contxt`.
    pub reference: String,
    /// The documented name nearest to it, when one is close.
    pub nearest: Option<&'static str>,
    /// Whether it certainly never resolves: a field of `input` itself. An
    /// `input.context` entry may be one the application sets, so one is
    /// reported only when it is close to a documented entry (a likely typo).
    pub certain: bool,
}

/// The references of `source` to `input.F` with `F` not a field of the
/// input document, and to `input.context.G` with `G` a near miss of an entry
/// Switchboard sets (`input.context.agnet_id`).
pub fn unknown_input_fields(source: &str) -> Vec<UnknownInputField> {
    let nearest = |name: &str, known: &[&'static str]| {
        known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(name, k), *k))
            .filter(|(distance, _)| *distance <= 2.max(name.len() / 3))
            .min()
            .map(|(_, k)| k)
    };
    let line = |at: usize| source[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for u in input_uses(source) {
        match (u.field, u.subfield) {
            (Some(f), _) if !INPUT_FIELDS.contains(&f) => found.push(UnknownInputField {
                line: line(u.at),
                reference: format!("input.{f}"),
                nearest: nearest(f, &INPUT_FIELDS),
                certain: true,
            }),
            (Some("context"), Some(g)) if !CONTEXT_FIELDS.contains(&g) => {
                if let Some(k) = nearest(g, &CONTEXT_FIELDS) {
                    found.push(UnknownInputField {
                        line: line(u.at),
                        reference: format!("input.context.{g}"),
                        nearest: Some(k),
                        certain: false,
                    })
                }
            }
            _ => {}
        }
    }
    found
}

/// One use of `input` in a module's source.
struct InputUse<'a> {
    /// Its byte offset.
    at: usize,
    /// `F` of `input.F`; none for a bare `input` or `input[…]`.
    field: Option<&'a str>,
    /// `G` of `input.F.G`.
    subfield: Option<&'a str>,
}

/// Every use of `input` in `source` outside comments and strings.
fn input_uses(source: &str) -> Vec<InputUse<'_>> {
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ident_at = |start: usize| {
        let end = (start..bytes.len())
            .find(|&i| !is_ident(bytes[i]))
            .unwrap_or(bytes.len());
        (&source[start..end], end)
    };
    let dotted = |at: usize| (bytes.get(at) == Some(&b'.')).then(|| ident_at(at + 1));
    let mut uses = Vec::new();
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
                    let field = dotted(end).filter(|(f, _)| !f.is_empty());
                    let subfield = field
                        .and_then(|(_, after)| dotted(after))
                        .map(|(g, _)| g)
                        .filter(|g| !g.is_empty());
                    uses.push(InputUse {
                        at: i,
                        field: field.map(|(f, _)| f),
                        subfield,
                    });
                    // Past the field: `input.input.x` is not a second `input`.
                    if let Some((_, after)) = field {
                        next = after;
                    }
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    uses
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

    #[test]
    fn references_to_missing_input_fields_are_found() {
        let source = "package p\n# input.contxt in a comment\ndeny contains \"input.vaule\" if {\n\tnot input.contxt.agent_id in {\"a\"}\n\tinput.context.agnet_id == input.context.team\n}\n";
        let found = unknown_input_fields(source);
        assert_eq!(
            found,
            [
                UnknownInputField {
                    line: 4,
                    reference: "input.contxt".into(),
                    nearest: Some("context"),
                    certain: true,
                },
                UnknownInputField {
                    line: 5,
                    reference: "input.context.agnet_id".into(),
                    nearest: Some("agent_id"),
                    certain: false,
                },
            ]
        );
        assert!(unknown_input_fields(
            "allow if { input.op == \"put\"; input.value.x; input.input.y; input.context.claims.email }"
        )
        .is_empty());
    }
}
