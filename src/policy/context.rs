//! Who is writing and why: the [`PolicyContext`] handed to every hook, the
//! names of the entries Switchboard itself sets ([`keys`]), and the typed
//! [`OperationKind`] of Switchboard's own writes.

use std::borrow::Cow;
use std::sync::Arc;

/// The context entries Switchboard sets on its own writes. Policies read them
/// by these names (`ctx.get(keys::AGENT_ID)`, `input.context.agent_id` in Rego).
pub mod keys {
    /// The agent a dispatch record, binding or registration is about.
    pub const AGENT_ID: &str = "agent_id";
    /// The tool being dispatched.
    pub const TOOL: &str = "tool";
    /// The tool's category.
    pub const CATEGORY: &str = "category";
    /// The caller's session id, when the call has one.
    pub const SESSION_ID: &str = "session_id";
    /// The dispatch's invocation id.
    pub const INVOCATION_ID: &str = "invocation_id";
    /// The routing strategy of the call.
    pub const STRATEGY: &str = "strategy";
    /// What Switchboard is doing: see [`OperationKind`](super::OperationKind).
    pub const ACTION: &str = "action";
    /// The authenticated caller's id (`token:{id}`, `jwt:{sub}`,
    /// `static-admin`); absent for local, unauthenticated use.
    pub const CALLER: &str = "caller";
    /// The caller's roles, comma-separated (a list in Rego's `input.context`).
    pub const ROLES: &str = "roles";
    /// The caller's scopes, comma-separated (a list in Rego's `input.context`).
    pub const SCOPES: &str = "scopes";
    /// Prefix of the caller's selected claims: `claim.email` (in Rego,
    /// `input.context.claims.email`).
    pub const CLAIM_PREFIX: &str = "claim.";
    /// The stored policy a `policy` write changes.
    pub const POLICY: &str = "policy";
    /// The revision a `policy` write stores (absent for a delete).
    pub const REVISION: &str = "revision";
}

/// What one of Switchboard's own writes is for. It is set only inside the
/// crate, so a caller cannot make a generic write count as, say, a dispatch
/// (rate limits count dispatches by this kind, never by a string a caller may
/// also write); policies see it as the context's `action` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// The dispatch record written before an agent is called.
    Dispatch,
    /// The dispatch record written with the call's outcome.
    Outcome,
    /// Recovery marking an interrupted dispatch.
    Recover,
    /// An agent registration.
    Register,
    /// An agent's removal.
    Unregister,
    /// A health change of an agent.
    Health,
    /// An explicit pruning of old dispatch records.
    Prune,
    /// A change to a stored policy (`policies/{name}`): stored, replaced or deleted.
    Policy,
    /// A tool discovered on an MCP agent (`mcp_tools/{agent}/{tool}`):
    /// new, changed, or gone from its list.
    Discover,
}

impl OperationKind {
    /// The `action` entry policies see.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Dispatch => "dispatch",
            OperationKind::Outcome => "outcome",
            OperationKind::Recover => "recover",
            OperationKind::Register => "register",
            OperationKind::Unregister => "unregister",
            OperationKind::Health => "health",
            OperationKind::Prune => "prune",
            OperationKind::Policy => "policy",
            OperationKind::Discover => "discover",
        }
    }
}

/// Who is writing and why: string pairs the caller attaches to a write, handed
/// to every hook (and to Rego as `input.context`). The dispatcher sets the
/// entries named in [`keys`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyContext {
    // A handful of entries: a vector beats a map on both lookup and build cost.
    // Shared, because every staged write of a transaction keeps its context
    // and a clone should not copy every string; keys are usually literals,
    // and values literals or shared text, so that a context derived from
    // another (a call's writes from its base) copies no string either.
    entries: Arc<Vec<(Cow<'static, str>, Text)>>,
    /// Set only by Switchboard's own writes.
    operation: Option<OperationKind>,
    /// The call's arguments, on a dispatch's writes (set only by the dispatcher).
    input: Option<Arc<serde_json::Value>>,
    /// The arguments as the record stores them (redacted, capped): what the
    /// decision log keeps of them.
    recorded_input: Option<Arc<serde_json::Value>>,
    /// The traced commit this write belongs to (set only by the dispatcher,
    /// and only while its call's trace is recorded): each hook's evaluation
    /// becomes a child span of it.
    trace: TraceParent,
}

/// The `tracing` target of Switchboard's OpenTelemetry spans (re-exported
/// as `telemetry::TARGET`). It lives here, the lowest layer that makes such
/// spans, so the hook chain can make its own.
pub(crate) const SPAN_TARGET: &str = "switchboard::otel";

/// The span a write's policy evaluations are traced under. Not part of what
/// a context says: two contexts that differ only in it are equal.
#[derive(Clone, Default)]
struct TraceParent(Option<tracing::Span>);

impl PartialEq for TraceParent {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for TraceParent {}

impl std::fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "traced"
        } else {
            "untraced"
        })
    }
}

/// An entry's value: a literal, or text shared by the contexts that hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Literal(&'static str),
    Shared(Arc<str>),
}

impl Text {
    fn as_str(&self) -> &str {
        match self {
            Text::Literal(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl PolicyContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.set(Cow::Owned(key.into()), Text::Shared(value.into().into()));
    }

    /// An empty context with room for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Self {
        PolicyContext {
            entries: Arc::new(Vec::with_capacity(n)),
            operation: None,
            input: None,
            recorded_input: None,
            trace: TraceParent(None),
        }
    }

    /// A copy of this context with room for `extra` more entries, to add
    /// them without growing it again (the strings are shared, not copied).
    pub(crate) fn with_room(&self, extra: usize) -> Self {
        let mut entries = Vec::with_capacity(self.entries.len() + extra);
        entries.extend(self.entries.iter().cloned());
        PolicyContext {
            entries: Arc::new(entries),
            ..self.clone()
        }
    }

    /// [`insert`](Self::insert) for a literal key, which is not copied.
    pub(crate) fn insert_static(&mut self, key: &'static str, value: &str) {
        self.set(Cow::Borrowed(key), Text::Shared(value.into()));
    }

    /// [`insert_static`](Self::insert_static) of a literal value, which is
    /// not copied either.
    pub(crate) fn insert_literal(&mut self, key: &'static str, value: &'static str) {
        self.set(Cow::Borrowed(key), Text::Literal(value));
    }

    /// Marks this as the context of one of Switchboard's own writes, and sets
    /// the `action` entry policies read.
    pub(crate) fn set_operation(&mut self, kind: OperationKind) {
        self.operation = Some(kind);
        self.insert_literal(keys::ACTION, kind.as_str());
    }

    /// Builder-style [`set_operation`](Self::set_operation).
    pub(crate) fn for_operation(mut self, kind: OperationKind) -> Self {
        self.set_operation(kind);
        self
    }

    /// What Switchboard is doing with this write, if it is one of its own.
    pub fn operation(&self) -> Option<OperationKind> {
        self.operation
    }

    /// The arguments of the tool call this write is about, as the caller
    /// passed them (before any redaction or size cap of the stored record):
    /// set on a dispatch's writes (`action` `dispatch` and `outcome`), `None`
    /// on every other write. Rego sees them as `input.input`.
    pub fn input(&self) -> Option<&serde_json::Value> {
        self.input.as_deref()
    }

    /// Attaches a call's arguments (the dispatcher does, for its writes),
    /// and what its record stores of them (the decision log keeps that).
    pub(crate) fn set_input(
        &mut self,
        input: Arc<serde_json::Value>,
        recorded: Option<Arc<serde_json::Value>>,
    ) {
        self.input = Some(input);
        self.recorded_input = recorded;
    }

    /// The arguments as stored (redacted and capped), for the decision log.
    pub(crate) fn recorded_input(&self) -> Option<&serde_json::Value> {
        self.recorded_input.as_deref()
    }

    /// Traces each hook evaluation of this write as a child span of `span`
    /// (the dispatcher's commit span, made only while its call is recorded).
    pub(crate) fn set_trace_parent(&mut self, span: tracing::Span) {
        self.trace = TraceParent(Some(span));
    }

    /// The span hook evaluations are traced under, if any.
    pub(crate) fn trace_parent(&self) -> Option<&tracing::Span> {
        self.trace.0.as_ref()
    }

    fn set(&mut self, key: Cow<'static, str>, value: Text) {
        let entries = Arc::make_mut(&mut self.entries);
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
    }

    /// The value for `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.as_str().into())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_sets_the_action_entry_and_a_string_does_not_set_the_operation() {
        let ctx = PolicyContext::new().for_operation(OperationKind::Dispatch);
        assert_eq!(ctx.get(keys::ACTION), Some("dispatch"));
        assert_eq!(ctx.operation(), Some(OperationKind::Dispatch));
        let forged = PolicyContext::new().with(keys::ACTION, "dispatch");
        assert_eq!(forged.operation(), None);
    }
}
