//! An A2A Agent Card as Switchboard reads it: fetched within a size and
//! time bound, parsed to the fields routing needs (its skills and its
//! `supportedInterfaces`), and the interface calls go to chosen from them.

use super::super::{error_chain, read_bounded, Failure};
use crate::transport::mcp::ListedTool;
use reqwest::header::{HeaderMap, ACCEPT};
use serde::Deserialize;
use std::time::Duration;

/// The largest Agent Card accepted (bytes).
pub const MAX_CARD_BYTES: usize = 1 << 20;
/// The most skills read from one card; the rest are ignored (logged).
pub const MAX_SKILLS_PER_AGENT: usize = 2000;
/// The A2A protocol version Switchboard speaks (the `A2A-Version` header).
pub const A2A_VERSION: &str = "1.0";

/// The parts of an Agent Card Switchboard uses (A2A v1.0, JSON names).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentCard {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) supported_interfaces: Vec<AgentInterface>,
    #[serde(default)]
    pub(crate) skills: Vec<AgentSkill>,
    #[serde(default)]
    pub(crate) capabilities: AgentCapabilities,
}

/// What a card says the agent can do beyond single answers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentCapabilities {
    /// It answers `SendStreamingMessage` and `SubscribeToTask` with an SSE stream.
    #[serde(default)]
    pub(crate) streaming: Option<bool>,
}

/// One entry of `supportedInterfaces`: where the agent answers, over which binding.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentInterface {
    pub(crate) url: String,
    pub(crate) protocol_binding: String,
    #[serde(default)]
    pub(crate) protocol_version: Option<String>,
}

/// One skill of a card.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentSkill {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) examples: Vec<String>,
}

/// Where calls to an agent go: the interface chosen from its card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interface {
    pub(crate) url: reqwest::Url,
    /// How it is spoken to.
    pub(crate) binding: Binding,
    /// Whether the card says the agent streams.
    pub(crate) streaming: bool,
}

/// The protocol bindings Switchboard calls agents over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// `JSONRPC`: every method a JSON-RPC request to one URL.
    JsonRpc,
    /// `HTTP+JSON`: every method its own route under the URL.
    HttpJson,
}

impl Binding {
    fn of(name: &str) -> Option<Binding> {
        if name.eq_ignore_ascii_case("JSONRPC") {
            Some(Binding::JsonRpc)
        } else if name.eq_ignore_ascii_case("HTTP+JSON") {
            Some(Binding::HttpJson)
        } else {
            None
        }
    }
}

impl AgentCard {
    /// Parses a card's JSON text.
    pub(crate) fn parse(body: &[u8]) -> Result<AgentCard, String> {
        serde_json::from_slice(body)
            .map_err(|e| format!("the Agent Card is not A2A v1.0 JSON: {e}"))
    }

    /// The interface calls go to: the first of the card's interfaces (in
    /// the card's order of preference) that is `JSONRPC` or `HTTP+JSON` of
    /// protocol version 1.x (or none given), checked under the address
    /// policy in force.
    pub(crate) fn interface(&self) -> Result<Interface, String> {
        let chosen = self.supported_interfaces.iter().find_map(|i| {
            let binding = Binding::of(&i.protocol_binding)?;
            i.protocol_version
                .as_deref()
                .is_none_or(|v| v == "1" || v.starts_with("1."))
                .then_some((i, binding))
        });
        let Some((interface, binding)) = chosen else {
            let offered: Vec<String> = self
                .supported_interfaces
                .iter()
                .map(|i| {
                    format!(
                        "{} {}",
                        i.protocol_binding,
                        i.protocol_version.as_deref().unwrap_or("(no version)")
                    )
                })
                .collect();
            return Err(format!(
                "the Agent Card of {:?} offers no JSONRPC or HTTP+JSON interface of protocol \
                 version 1.x (it offers: {}); Switchboard calls A2A agents over those two \
                 bindings only so far",
                self.name,
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            ));
        };
        let url = crate::routing::endpoint::parse_endpoint(&interface.url)
            .map_err(|e| {
                format!(
                    "the card's {} interface url: {e}",
                    interface.protocol_binding
                )
            })?
            .0;
        Ok(Interface {
            url,
            binding,
            streaming: self.capabilities.streaming == Some(true),
        })
    }

    /// Its skills as the named tools discovery judges: the skill id is the
    /// name; the description carries the skill's name, description, tags
    /// and examples (so a policy sees a change of any); the input is the
    /// A2A `SendMessage` request.
    pub(crate) fn skills_as_tools(&self) -> Vec<ListedTool> {
        if self.skills.len() > MAX_SKILLS_PER_AGENT {
            tracing::warn!(card = %self.name, skills = self.skills.len(), "an Agent Card lists more skills than are read; the rest are ignored");
        }
        self.skills
            .iter()
            .take(MAX_SKILLS_PER_AGENT)
            .map(|skill| ListedTool {
                name: skill.id.clone(),
                description: Some(describe(skill)),
                input_schema: send_message_schema(),
            })
            .collect()
    }
}

/// A skill in one text: `name: description [tags: …] [examples: …]`.
fn describe(skill: &AgentSkill) -> String {
    let mut text = skill.name.clone().unwrap_or_else(|| skill.id.clone());
    if let Some(description) = &skill.description {
        text.push_str(": ");
        text.push_str(description);
    }
    if !skill.tags.is_empty() {
        text.push_str(&format!(" [tags: {}]", skill.tags.join(", ")));
    }
    if !skill.examples.is_empty() {
        text.push_str(&format!(" [examples: {}]", skill.examples.join(" | ")));
    }
    text
}

/// The input of a skill: an A2A `SendMessage` request's params.
pub(crate) fn send_message_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "message": {"type": "object", "description": "the A2A Message to send"},
            "configuration": {"type": "object"},
            "metadata": {"type": "object"}
        },
        "required": ["message"]
    })
}

/// Fetches and parses the card at `url`, within `timeout` and
/// [`MAX_CARD_BYTES`]: the card, and its JSON as served (what a signature
/// covers).
pub(crate) async fn fetch(
    http: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    timeout: Duration,
) -> Result<(AgentCard, serde_json::Value), Failure> {
    let fetch = async {
        let response = http
            .get(url)
            .headers(headers)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                Failure::Agent(format!(
                    "fetching the Agent Card {url}: {}",
                    error_chain(&e)
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Agent(format!(
                "fetching the Agent Card {url} answered HTTP {status}"
            )));
        }
        let body = read_bounded(response, MAX_CARD_BYTES)
            .await
            .map_err(|e| Failure::Agent(format!("the Agent Card {url}: {e}")))?;
        let card = AgentCard::parse(&body).map_err(Failure::Agent)?;
        let served = serde_json::from_slice(&body)
            .map_err(|e| Failure::Agent(format!("the Agent Card {url}: {e}")))?;
        Ok((card, served))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = r#"{"name":"alpha","description":"d","version":"1.0.0",
        "supportedInterfaces":[
            {"url":"http://127.0.0.1:9/grpc","protocolBinding":"GRPC","protocolVersion":"1.0"},
            {"url":"http://127.0.0.1:9/old","protocolBinding":"JSONRPC","protocolVersion":"0.3"},
            {"url":"http://127.0.0.1:9/a2a","protocolBinding":"JSONRPC","protocolVersion":"1.0"}],
        "capabilities":{"streaming":false},"defaultInputModes":["text/plain"],
        "skills":[{"id":"echo","name":"Echo","description":"says it back","tags":["t"]},
                  {"id":"shout","name":"shout"}]}"#;

    #[test]
    fn the_first_jsonrpc_interface_of_version_one_is_chosen() {
        let card = AgentCard::parse(CARD.as_bytes()).unwrap();
        assert_eq!(
            card.interface().unwrap().url.as_str(),
            "http://127.0.0.1:9/a2a"
        );
    }

    #[test]
    fn the_cards_first_choice_among_the_bindings_spoken_is_taken() {
        let card = |interfaces: &str| {
            AgentCard::parse(
                format!(r#"{{"name":"h","supportedInterfaces":[{interfaces}]}}"#).as_bytes(),
            )
            .unwrap()
            .interface()
            .unwrap()
        };
        let rest = r#"{"url":"http://127.0.0.1:9/rest","protocolBinding":"HTTP+JSON","protocolVersion":"1.0"}"#;
        let rpc = r#"{"url":"http://127.0.0.1:9/a2a","protocolBinding":"JSONRPC","protocolVersion":"1.0"}"#;
        let chosen = card(&format!("{rest},{rpc}"));
        assert_eq!(
            (chosen.binding, chosen.url.as_str()),
            (Binding::HttpJson, "http://127.0.0.1:9/rest")
        );
        assert_eq!(card(&format!("{rpc},{rest}")).binding, Binding::JsonRpc);
    }

    #[test]
    fn a_card_without_a_usable_interface_says_what_it_offers() {
        let card = AgentCard::parse(
            br#"{"name":"g","supportedInterfaces":[{"url":"http://127.0.0.1:9/","protocolBinding":"GRPC","protocolVersion":"1.0"}]}"#,
        )
        .unwrap();
        let error = card.interface().unwrap_err();
        assert!(error.contains("GRPC 1.0"), "{error}");
    }

    #[test]
    fn skills_become_tools_whose_description_holds_what_the_card_says() {
        let card = AgentCard::parse(CARD.as_bytes()).unwrap();
        let tools = card.skills_as_tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["echo", "shout"]);
        assert_eq!(
            tools[0].description.as_deref(),
            Some("Echo: says it back [tags: t]")
        );
        assert_eq!(tools[1].description.as_deref(), Some("shout"));
    }

    #[test]
    fn a_card_that_is_not_json_is_refused() {
        assert!(AgentCard::parse(b"<html>").is_err());
        assert!(
            AgentCard::parse(br#"{"skills":[]}"#).is_err(),
            "a card has a name"
        );
    }
}
