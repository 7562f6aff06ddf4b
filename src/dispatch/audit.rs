//! What a dispatch record keeps of a call: its arguments (and, when asked
//! for, its output), with redaction rules applied and a size cap, as set by
//! [`DispatcherConfig`].
//!
//! Redaction runs before the record is written, so masked fields never reach
//! storage (nor the decision log, nor the write hooks' `value`); the hooks
//! and Rego still see the call's own arguments through the policy context
//! (`ctx.input()`, `input.input`), so a policy can decide on a field that is
//! not stored.

use crate::error::{Error, Result};
use serde_json::Value;

/// Arguments stored per record unless configured otherwise (bytes of JSON).
pub const DEFAULT_MAX_INPUT_BYTES: usize = 4096;
/// Output stored per record, when output is stored (bytes of JSON).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4096;
/// What a redacted field holds in a stored record.
pub const REDACTED: &str = "[redacted]";

/// What dispatch records keep of each call. The default stores the
/// arguments (up to [`DEFAULT_MAX_INPUT_BYTES`]) and not the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Store the call's arguments in its record (`input`).
    pub record_input: bool,
    /// Longest stored arguments, in bytes of JSON; longer ones are stored as
    /// the first bytes of their JSON text, with `input_truncated: true`.
    pub max_input_bytes: usize,
    /// Store a successful call's output in its record (`output`).
    pub record_output: bool,
    /// Longest stored output, in bytes of JSON (`output_truncated: true` past it).
    pub max_output_bytes: usize,
    /// Fields masked (their value replaced by `"[redacted]"`) in stored
    /// arguments and output: a bare name (`api_key`) masks that field at any
    /// depth; a dotted path (`auth.token`) masks one field, from the top.
    pub redact: Vec<String>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            record_input: true,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            record_output: false,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            redact: Vec::new(),
        }
    }
}

impl DispatcherConfig {
    /// The default: arguments stored (capped), output not.
    pub fn new() -> Self {
        Self::default()
    }

    /// Masks `field` (a name at any depth, or a dotted path from the top)
    /// in stored arguments and output.
    pub fn redact(mut self, field: impl Into<String>) -> Self {
        self.redact.push(field.into());
        self
    }

    /// Stores arguments up to `bytes` of JSON (`0`: not at all).
    pub fn max_input_bytes(mut self, bytes: usize) -> Self {
        self.record_input = bytes > 0;
        self.max_input_bytes = bytes;
        self
    }

    /// Stores a successful call's output, up to `bytes` of JSON (`0`: not at all).
    pub fn record_output(mut self, bytes: usize) -> Self {
        self.record_output = bytes > 0;
        self.max_output_bytes = bytes;
        self
    }

    /// Checks the redaction rules: no empty name or path segment.
    pub fn validate(&self) -> Result<()> {
        for rule in &self.redact {
            if rule.is_empty() || rule.split('.').any(str::is_empty) {
                return Err(Error::invalid(format!(
                    "redact entry {rule:?} is not a field name or dotted path (e.g. \"api_key\" or \"auth.token\")"
                )));
            }
        }
        Ok(())
    }

    /// The arguments as a record stores them: `(value, truncated)`, or
    /// `None` when arguments are not stored.
    pub(crate) fn stored_input(&self, input: &Value) -> Option<(Value, bool)> {
        self.record_input
            .then(|| self.stored(input, self.max_input_bytes))
    }

    /// The output as a record stores it, or `None` when output is not stored.
    pub(crate) fn stored_output(&self, output: &Value) -> Option<(Value, bool)> {
        self.record_output
            .then(|| self.stored(output, self.max_output_bytes))
    }

    /// The arguments redacted and capped as a record would store them,
    /// whether or not records store them: what a span may show of them.
    pub(crate) fn redacted_input(&self, input: &Value) -> Value {
        self.stored(input, self.max_input_bytes).0
    }

    /// The output redacted and capped as a record would store it.
    pub(crate) fn redacted_output(&self, output: &Value) -> Value {
        self.stored(output, self.max_output_bytes).0
    }

    fn stored(&self, value: &Value, max_bytes: usize) -> (Value, bool) {
        let mut value = value.clone();
        for rule in &self.redact {
            match rule.split_once('.') {
                None => mask_everywhere(&mut value, rule),
                Some(_) => mask_path(&mut value, rule.split('.').collect::<Vec<_>>().as_slice()),
            }
        }
        cap(value, max_bytes)
    }
}

/// Replaces every field named `name`, at any depth (inside arrays too).
fn mask_everywhere(value: &mut Value, name: &str) {
    match value {
        Value::Object(fields) => {
            for (k, v) in fields.iter_mut() {
                if k == name {
                    *v = Value::String(REDACTED.into());
                } else {
                    mask_everywhere(v, name);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_everywhere(v, name)),
        _ => {}
    }
}

/// Replaces the one field at `path` from the top, if it is there.
fn mask_path(value: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for segment in parents {
        match at.get_mut(*segment) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(field) = at.get_mut(*last) {
        *field = Value::String(REDACTED.into());
    }
}

/// The value itself if its JSON fits in `max_bytes`; else the first bytes of
/// its JSON text (cut at a character boundary), and `true`.
fn cap(value: Value, max_bytes: usize) -> (Value, bool) {
    let text = value.to_string();
    if text.len() <= max_bytes {
        return (value, false);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (Value::String(text[..end].to_string()), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_mask_at_any_depth_and_paths_from_the_top() {
        let config = DispatcherConfig::new()
            .redact("api_key")
            .redact("auth.token");
        let (stored, truncated) = config
            .stored_input(&json!({
                "api_key": "k1",
                "nested": [{"api_key": "k2", "keep": 1}],
                "auth": {"token": "t", "user": "u"},
                "token": "top-level token is not auth.token"
            }))
            .unwrap();
        assert!(!truncated);
        assert_eq!(
            stored,
            json!({
                "api_key": REDACTED,
                "nested": [{"api_key": REDACTED, "keep": 1}],
                "auth": {"token": REDACTED, "user": "u"},
                "token": "top-level token is not auth.token"
            })
        );
    }

    #[test]
    fn long_values_are_cut_and_marked_and_output_is_off_by_default() {
        let config = DispatcherConfig::new().max_input_bytes(10);
        let (stored, truncated) = config.stored_input(&json!({"text": "ééééééééé"})).unwrap();
        assert!(truncated);
        assert!(stored.as_str().unwrap().len() <= 10, "{stored}");
        assert!(DispatcherConfig::new().stored_output(&json!(1)).is_none());
        assert!(DispatcherConfig::new()
            .max_input_bytes(0)
            .stored_input(&json!(1))
            .is_none());
        assert!(DispatcherConfig::new().redact("a..b").validate().is_err());
    }
}
