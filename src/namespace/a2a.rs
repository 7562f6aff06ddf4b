//! A2A (Agent2Agent) agents as data: how one is registered ([`A2aAgent`],
//! the payload of `AgentTransport::A2a`: its Agent Card's URL and how its
//! skills map to categories and names), and the task-affinity record kept
//! under `a2a_tasks/{task_id}` for each task an A2A agent created through
//! Switchboard (which agent owns it, so follow-ups go there), with the
//! history of its states under `a2a_task_states/{task_id}/{n}`.
//!
//! A2A skills are discovered as MCP tools are and stored beside them under
//! `mcp_tools/{agent_id}/{skill}` (one discovery, one policy action
//! `discover`); [`A2aAgent::naming`] is the view that discovery reads.

use super::{CategoryRule, McpServer, PrefixMode, ToolCategory};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Task affinity: `a2a_tasks/{task_id}`, one per task an A2A agent made.
pub(crate) const A2A_TASKS: &str = "a2a_tasks/";

/// `a2a_tasks/{task_id}`
pub fn a2a_task_key(task_id: &str) -> String {
    format!("{A2A_TASKS}{task_id}")
}

/// A task's history: `a2a_task_states/{task_id}/{n}`, one per state an
/// answer or stream event reported, in order.
pub(crate) const A2A_TASK_STATES: &str = "a2a_task_states/";

/// `a2a_task_states/{task_id}/{n}`: the `n`th state recorded of a task
/// (from 1, zero-padded so that keys sort in order).
pub fn a2a_task_state_key(task_id: &str, n: u64) -> String {
    format!("{A2A_TASK_STATES}{task_id}/{n:010}")
}

/// Where a registration says an A2A agent's card is when it gives only a
/// base URL: the well-known path of the A2A specification.
pub const AGENT_CARD_PATH: &str = "/.well-known/agent-card.json";

/// An A2A agent as a registration gives it: its Agent Card's URL, and how
/// its skills are named and categorised. The card says which skills exist
/// and where the agent answers (`supportedInterfaces`); the categories come
/// from the registration, never from the card.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aAgent {
    /// The Agent Card's URL (`http://` or `https://`), usually
    /// `{base}/.well-known/agent-card.json`.
    pub card_url: String,
    /// The skill ids routed, when declared; empty: every skill on the card.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
    /// Skill-id globs to categories (first match wins; unmatched skills go
    /// to the agent's first category).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category_rules: Vec<CategoryRule>,
    /// How a skill id that agents publish with different descriptions is
    /// told apart (`{agent}_{skill}`).
    #[serde(default, skip_serializing_if = "is_conditional")]
    pub prefix: PrefixMode,
    /// How long a fetched card is trusted before it is fetched again
    /// (milliseconds; default 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_ttl_ms: Option<u64>,
    /// Headers sent with every request to the agent (the card fetch too):
    /// the credentials it asks for, each given by reference (`${VAR}` or
    /// `file:PATH`, as for MCP agents), never the secret itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// When given, the card must be signed by one of these keys: a card
    /// whose signatures do not verify is refused (at registration, and
    /// every time it is fetched again).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::mcp::not_null"
    )]
    pub verify_signature: Option<CardKeys>,
}

/// The keys an Agent Card must be signed with (one source).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardKeys {
    /// A JWKS's URL (`http://` or `https://`, under the address policy),
    /// fetched with each card: its RSA (RS256) and P-256 (ES256) keys,
    /// matched by `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A PEM public key file on this node (RSA: RS256, P-256: ES256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
}

impl CardKeys {
    fn validate(&self) -> Result<()> {
        match (&self.jwks_url, &self.public_key_file) {
            // The URL is checked under the address policy with the card's.
            (Some(url), None) if !url.is_empty() => Ok(()),
            (None, Some(path)) if !path.is_empty() => Ok(()),
            _ => Err(Error::invalid(
                "verify_signature names one key source: {\"jwks_url\": \"https://…/jwks.json\"} \
                 or {\"public_key_file\": \"/path/to/key.pem\"}",
            )),
        }
    }
}

fn is_conditional(prefix: &PrefixMode) -> bool {
    *prefix == PrefixMode::Conditional
}

/// An A2A agent as a registration gives it (the `a2a` field of
/// `PUT /v1/agents/{id}` and of a config file's `[[agents]]`): the card's
/// URL alone, or the full [`A2aAgent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum A2aSpec {
    /// `"http://127.0.0.1:9000/.well-known/agent-card.json"`
    Url(String),
    /// `{"card_url": ..., "skills": [...], "category_rules": [...], ...}`
    Agent(A2aAgent),
}

impl A2aSpec {
    /// The agent it describes.
    pub fn into_agent(self) -> A2aAgent {
        match self {
            A2aSpec::Url(card_url) => A2aAgent::at(card_url),
            A2aSpec::Agent(agent) => agent,
        }
    }
}

impl A2aAgent {
    /// An agent whose card is at `card_url`.
    pub fn at(card_url: impl Into<String>) -> Self {
        A2aAgent {
            card_url: card_url.into(),
            ..Self::default()
        }
    }

    /// The naming and discovery settings as discovery reads them for every
    /// agent with named tools: skills are its tools, the card URL where it
    /// is listed.
    pub fn naming(&self) -> McpServer {
        McpServer {
            url: Some(self.card_url.clone()),
            tool_names: self.skills.clone(),
            category_rules: self.category_rules.clone(),
            prefix: self.prefix,
            discovery_ttl_ms: self.discovery_ttl_ms,
            headers: self.headers.clone(),
            ..McpServer::default()
        }
    }

    /// Checks what does not depend on the network: declared skill ids,
    /// rules whose categories the agent serves, a TTL, headers given by
    /// reference.
    pub(crate) fn validate(&self, categories: &[ToolCategory]) -> Result<()> {
        if let Some(keys) = &self.verify_signature {
            keys.validate()?;
        }
        self.naming().validate(categories)
    }
}

/// Where an A2A task stands, as last seen through Switchboard (the A2A
/// `TaskState` names, e.g. `TASK_STATE_WORKING`).
pub type A2aTaskState = String;

/// The value under `a2a_tasks/{task_id}`: the agent that owns a task, and
/// the route its follow-ups take (the skill and category it was sent to,
/// and the session its calls are bound by).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aTaskRecord {
    /// The agent that created the task.
    pub agent_id: String,
    /// The routed skill name the task was created through.
    pub skill: String,
    /// The category that skill is routed in.
    pub category: ToolCategory,
    /// The A2A context the task belongs to.
    pub context_id: String,
    /// The session id its calls are bound to the owner by.
    pub session_id: String,
    /// The task's state as last answered.
    pub state: A2aTaskState,
    /// The caller that created it (absent: the local application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When its state was last recorded (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// How many states its history under `a2a_task_states/{task_id}/` holds.
    #[serde(default)]
    pub states: u64,
    /// The agent's timestamp of the state last recorded, if it gave one: a
    /// status reported again (the same state at the same time) is not a
    /// new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_timestamp: Option<String>,
}

/// The value under `a2a_task_states/{task_id}/{n}`: one state of a task as
/// an answer or stream event reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aTaskStateRecord {
    /// The state (`TASK_STATE_WORKING`, …).
    pub state: A2aTaskState,
    /// The agent that reported it.
    pub agent_id: String,
    /// The caller whose call it came through (absent: the local application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The agent's timestamp of it, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_timestamp: Option<String>,
    /// The text of the status's message, if it has one (at most
    /// [`MAX_STATE_MESSAGE_CHARS`] characters; the whole message is the
    /// agent's to give with `GetTask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When Switchboard recorded it (ms since the Unix epoch).
    pub recorded_at_ms: u64,
}

/// The most characters of a status message kept in a state record.
pub const MAX_STATE_MESSAGE_CHARS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_gives_a_url_or_the_whole_agent() {
        let url: A2aSpec =
            serde_json::from_str("\"http://127.0.0.1:1/.well-known/agent-card.json\"").unwrap();
        assert_eq!(
            url.into_agent().card_url,
            "http://127.0.0.1:1/.well-known/agent-card.json"
        );
        let full: A2aSpec = serde_json::from_str(
            r#"{"card_url": "http://h/.well-known/agent-card.json", "skills": ["echo"],
                "category_rules": [{"glob": "e*", "category": "search"}]}"#,
        )
        .unwrap();
        let agent = full.into_agent();
        assert_eq!(agent.skills, ["echo"]);
        assert!(
            agent.validate(&[ToolCategory::Code]).is_err(),
            "a rule outside the agent's categories"
        );
        assert!(agent
            .validate(&[ToolCategory::Code, ToolCategory::Search])
            .is_ok());
        assert!(serde_json::from_str::<A2aAgent>(r#"{"card_url": "x", "colour": 1}"#).is_err());
        let signed = |keys: &str| {
            serde_json::from_str::<A2aAgent>(&format!(
                r#"{{"card_url": "http://h/.well-known/agent-card.json", "verify_signature": {keys}}}"#
            ))
            .unwrap()
            .validate(&[ToolCategory::Code])
        };
        assert!(signed(r#"{"jwks_url": "http://127.0.0.1:9/jwks.json"}"#).is_ok());
        assert!(signed(r#"{"public_key_file": "/etc/key.pem"}"#).is_ok());
        assert!(signed("{}").is_err(), "no key source");
        assert!(signed(r#"{"jwks_url": "http://h/j", "public_key_file": "/k"}"#).is_err());
    }

    #[test]
    fn credentials_are_given_by_reference() {
        let mut agent = A2aAgent::at("http://h/.well-known/agent-card.json");
        agent
            .headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        assert!(agent.validate(&[ToolCategory::Code]).is_err());
        agent
            .headers
            .insert("Authorization".into(), "Bearer ${A2A_TOKEN}".into());
        assert!(agent.validate(&[ToolCategory::Code]).is_ok());
    }
}
