//! The key namespace: what every key means, which characters it may hold, and
//! the typed JSON records stored under `agents/*`, `sessions/*`, `tools/*`.
//!
//! Ids (agents, sessions, tools, custom categories) are `[A-Za-z0-9._:-]`,
//! 1–128 characters. Generic keys are `/`-separated segments of the same
//! characters. Anything else is [`Error`](crate::Error) and never becomes a key.
//! See `docs/namespace.md` for every prefix.
//!
//! Files: `ids` (checking ids, keys and values; invocation ids and the
//! clock), `category` ([`ToolCategory`]), `records` (the stored values and
//! the enums they hold), `mcp` (MCP upstreams and their discovered tools), `a2a` (A2A agents and task affinity), `tokens` (issued API tokens); this file holds the prefixes and key builders.

mod a2a;
mod audit;
mod category;
mod ids;
mod mcp;
mod records;
mod tokens;

pub use a2a::{
    a2a_task_key, a2a_task_state_key, A2aAgent, A2aSpec, A2aTaskRecord, A2aTaskState,
    A2aTaskStateRecord, CardKeys, AGENT_CARD_PATH, MAX_STATE_MESSAGE_CHARS,
};
pub(crate) use a2a::{A2A_TASKS, A2A_TASK_STATES};
pub(crate) use audit::Placement;
pub use audit::{AuditFilter, RecordMatcher};
pub use category::ToolCategory;
pub(crate) use ids::{invocation_id_time_ms, is_id_char, validate_value};
pub use ids::{
    new_invocation_id, now_ms, validate_id, validate_key, validate_prefix, ID_PATTERN,
    KEY_PREFIX_PATTERN, MAX_ID_LEN, MAX_KEY_LEN, MAX_SEGMENTS,
};
pub use mcp::{
    is_env_reference, mcp_prompt_key, mcp_resource_key, mcp_tool_key, name_glob_matches,
    redact_agent_json, schema_hash, uri_id, uri_template_matches, CategoryRule, EnvValue,
    HeaderPart, HeaderSource, IdentityProvider, McpCommand, McpOfferKind, McpOfferRecord,
    McpServer, McpSpec, McpToolPrevious, McpToolRecord, PrefixMode, TokenExchange, UpstreamOAuth,
    ASSERTION_ALGORITHMS, MAX_MCP_HEADERS, MAX_MCP_RULES, MAX_OAUTH_SCOPES, REDACTED_ENV,
    SUBJECT_TOKEN_TYPES,
};
pub(crate) use mcp::{is_scope_token, MCP_PROMPTS, MCP_RESOURCES, MCP_TOOLS};
pub use records::*;
pub(crate) use tokens::TOKENS;
pub use tokens::{token_key, Scope, TokenRecord};

pub(crate) const AGENTS: &str = "agents/";
pub(crate) const SESSIONS: &str = "sessions/";
pub(crate) const TOOLS: &str = "tools/";
/// One key per dispatch still in flight; lets recovery find them without a full scan.
pub(crate) const INFLIGHT: &str = "inflight/";

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
