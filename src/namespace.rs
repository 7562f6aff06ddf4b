//! The key namespace: what every key means, which characters it may hold, and
//! the typed JSON records stored under `agents/*`, `sessions/*`, `tools/*`.
//!
//! Ids (agents, sessions, tools, custom categories) are `[A-Za-z0-9._:-]`,
//! 1–128 characters. Generic keys are `/`-separated segments of the same
//! characters. Anything else is [`Error::InvalidInput`] and never becomes a key.
//! See `docs/namespace.md` for every prefix.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;
/// The longest key accepted (bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// The most `/`-separated segments a key may have (keeps glob matching
/// allocation-free).
pub const MAX_SEGMENTS: usize = 32;

pub(crate) const AGENTS: &str = "agents/";
pub(crate) const SESSIONS: &str = "sessions/";
pub(crate) const TOOLS: &str = "tools/";
/// One key per dispatch still in flight; lets recovery find them without a full scan.
pub(crate) const INFLIGHT: &str = "inflight/";

/// Whether `c` may appear in an id or key segment.
pub(crate) fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Checks an id; `what` names it in the error ("agent id", "session id", …).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!(
            "{what} is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(bad) = id.chars().find(|&c| !is_id_char(c)) {
        return Err(Error::invalid(format!(
            "{what} {id:?} contains {bad:?}; use only letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// Checks a full key: `/`-separated segments, each a valid id.
pub fn validate_key(key: &str) -> Result<()> {
    if is_plainly_valid_key(key.as_bytes()) {
        return Ok(());
    }
    // Something is off: find it again the slow way, to say what.
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "key is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let mut segments = 0;
    for segment in key.split('/') {
        segments += 1;
        validate_id("key segment", segment).map_err(|e| match e {
            Error::InvalidInput(msg) => Error::invalid(format!("key {key:?}: {msg}")),
            other => other,
        })?;
    }
    if segments > MAX_SEGMENTS {
        return Err(Error::invalid(format!(
            "key {key:?} has more than {MAX_SEGMENTS} segments"
        )));
    }
    Ok(())
}

/// One pass over a key that is valid in the common case (every write checks
/// its key); `false` sends the caller to the checks that explain.
fn is_plainly_valid_key(key: &[u8]) -> bool {
    if key.len() > MAX_KEY_LEN {
        return false;
    }
    let (mut segments, mut segment_len) = (1, 0);
    for &b in key {
        if b == b'/' {
            if segment_len == 0 {
                return false;
            }
            segments += 1;
            segment_len = 0;
        } else if is_id_char(b as char) {
            segment_len += 1;
            if segment_len > MAX_ID_LEN {
                return false;
            }
        } else {
            return false;
        }
    }
    segment_len > 0 && segments <= MAX_SEGMENTS
}

/// Checks a value: UTF-8 (JSON or text) and at most `max_value_bytes` long.
pub(crate) fn validate_value(value: &[u8], max_value_bytes: usize) -> Result<()> {
    if value.len() > max_value_bytes {
        return Err(Error::invalid(format!(
            "value is {} bytes; the limit is {max_value_bytes} (DatabaseOptions::max_value_bytes)",
            value.len()
        )));
    }
    if let Err(e) = std::str::from_utf8(value) {
        return Err(Error::invalid(format!(
            "value is not UTF-8 (invalid byte at offset {}); store JSON or text",
            e.valid_up_to()
        )));
    }
    Ok(())
}

/// Checks a scan prefix: like a key, but may be empty and may end with `/`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

/// What kind of tool an agent serves. Serialised lowercase (`"code"`); a custom
/// category by its own name. `Custom("code")` is the same category as `Code`.
#[derive(Clone, Debug)]
pub enum ToolCategory {
    /// Running code.
    Code,
    /// Searching.
    Search,
    /// Database queries.
    Database,
    /// Web access.
    Web,
    /// File operations.
    File,
    /// Git operations.
    Git,
    /// Shell commands.
    Shell,
    /// Computing embeddings.
    Embedding,
    /// Any other category, named by a valid id.
    Custom(String),
}

impl ToolCategory {
    /// The category's name as it appears in keys and JSON.
    pub fn as_str(&self) -> &str {
        match self {
            ToolCategory::Code => "code",
            ToolCategory::Search => "search",
            ToolCategory::Database => "database",
            ToolCategory::Web => "web",
            ToolCategory::File => "file",
            ToolCategory::Git => "git",
            ToolCategory::Shell => "shell",
            ToolCategory::Embedding => "embedding",
            ToolCategory::Custom(name) => name,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_id("category", self.as_str())
    }
}

impl PartialEq for ToolCategory {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for ToolCategory {}
impl std::hash::Hash for ToolCategory {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Display for ToolCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ToolCategory {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        validate_id("category", s)?;
        Ok(match s {
            "code" => ToolCategory::Code,
            "search" => ToolCategory::Search,
            "database" => ToolCategory::Database,
            "web" => ToolCategory::Web,
            "file" => ToolCategory::File,
            "git" => ToolCategory::Git,
            "shell" => ToolCategory::Shell,
            "embedding" => ToolCategory::Embedding,
            other => ToolCategory::Custom(other.to_string()),
        })
    }
}

impl Serialize for ToolCategory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ToolCategory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `agents/{agent_id}`
pub fn agent_key(agent_id: &str) -> String {
    format!("{AGENTS}{agent_id}")
}

/// `sessions/{session_id}`
pub fn session_key(session_id: &str) -> String {
    format!("{SESSIONS}{session_id}")
}

/// `tools/{category}/{tool}/{invocation_id}`
pub fn dispatch_key(category: &ToolCategory, tool: &str, invocation_id: &str) -> String {
    format!("{TOOLS}{}/{tool}/{invocation_id}", category.as_str())
}

/// `inflight/{invocation_id}`
pub(crate) fn inflight_key(invocation_id: &str) -> String {
    format!("{INFLIGHT}{invocation_id}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new invocation id: 26 characters of Crockford base32, the first 10 the
/// millisecond timestamp, then 16 bits fixed per process and a 64-bit sequence
/// that starts at a random point each millisecond and counts up within it. Ids
/// from one process therefore sort by creation time (like ULIDs).
pub fn new_invocation_id() -> String {
    static STATE: parking_lot::Mutex<(u64, u64)> = parking_lot::Mutex::new((0, 0));
    static PROCESS_BITS: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    let process = *PROCESS_BITS.get_or_init(|| fastrand::u16(..)) as u128;
    let (time, seq) = {
        let mut state = STATE.lock();
        let now = now_ms();
        // A clock that steps back keeps the last time, so order still holds.
        if now > state.0 {
            *state = (now, fastrand::u64(..) >> 1);
        } else {
            state.1 += 1;
        }
        *state
    };
    let mut out = [0u8; 26];
    for (i, slot) in out[..10].iter_mut().enumerate() {
        *slot = CROCKFORD[((time >> (45 - 5 * i)) & 31) as usize];
    }
    let value: u128 = (process << 64) | seq as u128;
    for (i, slot) in out[10..].iter_mut().enumerate() {
        *slot = CROCKFORD[((value >> (75 - 5 * i)) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// The millisecond timestamp an invocation id (or decision-log id) was made at.
pub(crate) fn invocation_id_time_ms(id: &str) -> Option<u64> {
    let head = id.as_bytes().get(..10)?;
    head.iter().try_fold(0u64, |acc, &c| {
        let digit = CROCKFORD.iter().position(|&d| d == c)? as u64;
        Some((acc << 5) | digit)
    })
}

/// Where an agent is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum AgentTransport {
    /// An in-process handler; bound again by registering it in each process.
    Local,
    /// An HTTP agent speaking the JSON `POST` protocol (docs/routing.md).
    Http {
        /// `POST` target for invocations.
        endpoint: String,
        /// `GET` target for health probes.
        health_url: String,
    },
}

/// Health as last decided by checks or passive failure counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Passing health checks (or never checked): eligible for routing.
    Healthy,
    /// Failed enough health checks to be taken out of routing.
    Unhealthy,
}

/// The value under `agents/{agent_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    /// The agent's id.
    pub agent_id: String,
    /// The categories it serves.
    pub tools: Vec<ToolCategory>,
    /// How it is called.
    pub transport: AgentTransport,
    /// Higher priority agents are preferred by the `priority` strategy.
    pub priority: i32,
    /// Milliseconds a call may take.
    pub timeout_ms: u64,
    /// Calls it may run at once (`None`: unbounded).
    pub max_concurrency: Option<u32>,
    /// Its health.
    pub status: AgentStatus,
    /// When it was first registered (ms since the Unix epoch).
    pub registered_at_ms: u64,
    /// When its record last changed (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// The value under `sessions/{session_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    /// The agent the session is bound to.
    pub agent_id: String,
    /// The category the binding is for.
    pub category: ToolCategory,
    /// When the binding was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the binding was last used (ms since the Unix epoch).
    pub last_used_ms: u64,
}

/// Where a dispatch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStatus {
    /// Written before the agent is called; replaced by the outcome.
    InFlight,
    /// The agent answered.
    Succeeded,
    /// The last attempt failed (tool error, or every retryable attempt failed).
    Failed,
    /// The process stopped while the agent was being called.
    Interrupted,
    /// The caller dropped the call (its future) before it finished.
    Cancelled,
}

/// How one attempt at one agent ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// The agent tried.
    pub agent_id: String,
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
    /// Milliseconds it took.
    pub latency_ms: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// How one attempt at one agent ended; stored in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Recorded before the agent is called; replaced when the attempt ends.
    InFlight,
    /// The agent answered.
    Succeeded,
    /// The tool's own error (final).
    ToolError,
    /// The agent failed (5xx, bad answer, connection, panic).
    Failed,
    /// No answer within the agent's timeout.
    Timeout,
    /// 429/503 with `Retry-After`.
    Overloaded,
    /// A policy refused the candidate; it was not called.
    Denied,
    /// A rate limit refused the candidate; it was not called.
    RateLimited,
    /// The process stopped during the call.
    Interrupted,
    /// The caller dropped the call during this attempt.
    Cancelled,
}

impl AttemptOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::InFlight => "in_flight",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::ToolError => "tool_error",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Overloaded => "overloaded",
            AttemptOutcome::Denied => "denied",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AttemptOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How to choose among the healthy agents serving a category. Stored in
/// dispatch records by its snake_case name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    /// Each agent in turn: exactly even over a stable set of agents.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The agent with the fewest invocations in flight (ties rotate).
    LeastLoaded,
    /// The highest priority; agents of equal priority take turns.
    Priority,
    /// Session affinity: the session's bound agent while it is healthy; new
    /// bindings go to the least loaded agent. Needs a session id.
    Sticky,
    /// The lowest latency estimate (peak-EWMA × load); unmeasured agents first.
    Fastest,
}

impl RoutingStrategy {
    /// Every strategy, in declaration order.
    pub const ALL: [RoutingStrategy; 6] = [
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Random,
        RoutingStrategy::LeastLoaded,
        RoutingStrategy::Priority,
        RoutingStrategy::Sticky,
        RoutingStrategy::Fastest,
    ];

    /// The snake_case name used in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::Random => "random",
            RoutingStrategy::LeastLoaded => "least_loaded",
            RoutingStrategy::Priority => "priority",
            RoutingStrategy::Sticky => "sticky",
            RoutingStrategy::Fastest => "fastest",
        }
    }
}

impl std::fmt::Display for RoutingStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RoutingStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RoutingStrategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown strategy {s:?}; use one of round_robin, random, least_loaded, priority, sticky, fastest"
                ))
            })
    }
}

/// The value under `tools/{category}/{tool}/{invocation_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRecord {
    /// The invocation's id (also the last key segment).
    pub invocation_id: String,
    /// The tool called.
    pub tool: String,
    /// Its category.
    pub category: ToolCategory,
    /// The agent of the last attempt (the one that answered, on success).
    pub agent_id: Option<String>,
    /// The session, if the call named one.
    pub session_id: Option<String>,
    /// The strategy used to choose agents.
    pub strategy: RoutingStrategy,
    /// Where the dispatch stands.
    pub status: DispatchStatus,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// When the dispatch started (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// When it finished, once it has.
    pub finished_at_ms: Option<u64>,
    /// Milliseconds from start to finish, once it has.
    pub latency_ms: Option<f64>,
    /// The final error, if it failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("agent id", "code_agent-1.v2:x").is_ok());
        assert!(validate_id("agent id", &"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "ä", "a*", &"a".repeat(129)] {
            assert!(validate_id("agent id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("notes/a").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/b c", "a/*"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("tools/").is_ok());
        assert!(validate_prefix("tools//").is_err());
    }

    #[test]
    fn categories_round_trip() {
        for c in [
            "code",
            "search",
            "database",
            "web",
            "file",
            "git",
            "shell",
            "embedding",
        ] {
            let cat: ToolCategory = c.parse().unwrap();
            assert!(!matches!(cat, ToolCategory::Custom(_)));
            assert_eq!(serde_json::to_string(&cat).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(ToolCategory::Custom("code".into()), ToolCategory::Code);
        let custom: ToolCategory = serde_json::from_str("\"sensitive\"").unwrap();
        assert_eq!(custom, ToolCategory::Custom("sensitive".into()));
        assert!(serde_json::from_str::<ToolCategory>("\"no way\"").is_err());
    }

    #[test]
    fn invocation_ids_sort_by_creation() {
        let ids: Vec<String> = (0..10_000).map(|_| new_invocation_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids
            .iter()
            .all(|id| id.len() == 26 && validate_id("id", id).is_ok()));
    }
}
