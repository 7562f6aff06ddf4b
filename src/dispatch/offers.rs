//! MCP prompts, resources and resource templates: discovered with an
//! agent's tools, judged and stored like them, and routed like them.
//!
//! Every new or changed item is written under `mcp_prompts/{agent}/{name}`
//! or `mcp_resources/{agent}/{uri id}` through the policy chain (action
//! `discover`; the context names the item: `offer` is its kind, `name` its
//! name or URI, `tool` the name it is routed under), so a policy can refuse
//! one; a refused item is not offered. An item the agent stops listing
//! stays as a tombstone, as tools do.
//!
//! Routing: each item is served under a name of its own kind
//! ([`McpOfferKind::routed_name`]): `prompt:{name}` (a prompt listed by two
//! agents with different definitions is a collision, served as
//! `prompt:{agent}_{name}` by each), `resource:{id}` and `template:{id}` (a
//! URI names one thing, so every agent listing it is a replica). A
//! `prompts/get` or `resources/read` is then one dispatch of that name:
//! the strategy picks among replicas, the policies judge it, and it is
//! recorded in the audit trail like any call.

use super::{Inner, ToolDispatcher};
use crate::error::{Error, Result};
use crate::namespace::{
    now_ms, schema_hash, validate_id, McpOfferKind, McpOfferRecord, McpServer, PrefixMode,
    ToolCategory,
};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::routing::agent::{Agent, ServedKind, ServedTool};
use crate::routing::registration::exposed_name;
use crate::transport::mcp::{ListedOffers, Upstream};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The longest URI (or URI template) Switchboard offers.
const MAX_URI_LEN: usize = 2048;

/// One allowed prompt, resource or template of one agent.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Found {
    pub(crate) kind: McpOfferKind,
    pub(crate) name: String,
    pub(crate) category: ToolCategory,
    pub(crate) listed: serde_json::Value,
    pub(crate) hash: String,
}

/// A prompt, resource or template an MCP agent offers, as `/mcp` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveredOffer {
    /// The agent offering it.
    pub agent_id: String,
    /// What it is.
    pub kind: McpOfferKind,
    /// Its name on the agent: a prompt's name, a URI or a URI template.
    pub name: String,
    /// The name callers use: a prompt's name (prefixed on collision), else
    /// the URI or template itself.
    pub exposed_name: String,
    /// The name a read of it is dispatched under.
    pub routed_name: String,
    /// The category its reads are routed in.
    pub category: ToolCategory,
    /// The item as the agent listed it.
    pub listed: serde_json::Value,
}

fn discover_context(agent_id: &str, kind: McpOfferKind, name: &str, routed: &str) -> PolicyContext {
    let kind = match kind {
        McpOfferKind::Prompt => "prompt",
        McpOfferKind::Resource => "resource",
        McpOfferKind::ResourceTemplate => "resource_template",
    };
    PolicyContext::new()
        .with(keys::AGENT_ID, agent_id)
        .with(keys::TOOL, routed)
        .with("offer", kind)
        .with("name", name)
        .for_operation(OperationKind::Discover)
}

/// The records of `agent_id`'s offers, tombstones included, by kind and name.
pub(crate) fn stored(
    inner: &Inner,
    agent_id: &str,
) -> Result<HashMap<(McpOfferKind, String), McpOfferRecord>> {
    let mut stored = HashMap::new();
    for kind in [McpOfferKind::Prompt, McpOfferKind::Resource] {
        let prefix = format!("{}{agent_id}/", kind.prefix());
        for item in inner.db.scan_unjudged(&prefix, None) {
            let (key, value) = item?;
            match serde_json::from_slice::<McpOfferRecord>(&value) {
                Ok(record) => {
                    stored.insert((record.kind, record.name.clone()), record);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "skipping a discovered prompt or resource record that does not decode")
                }
            }
        }
    }
    Ok(stored)
}

/// Each listed item of `listed` with its kind and name, skipping those
/// Switchboard cannot offer (logged).
fn named(agent_id: &str, listed: ListedOffers) -> Vec<(McpOfferKind, String, serde_json::Value)> {
    let kinds = [
        (McpOfferKind::Prompt, listed.prompts),
        (McpOfferKind::Resource, listed.resources),
        (McpOfferKind::ResourceTemplate, listed.templates),
    ];
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (kind, items) in kinds {
        for item in items {
            let Some(name) = item.get(kind.name_field()).and_then(|n| n.as_str()) else {
                continue;
            };
            let usable = match kind {
                McpOfferKind::Prompt => validate_id("prompt name", name).map_err(|e| e.to_string()),
                _ if name.is_empty() || name.len() > MAX_URI_LEN => Err(format!(
                    "a URI of {} bytes (1 to {MAX_URI_LEN} are offered)",
                    name.len()
                )),
                _ => Ok(()),
            };
            if let Err(why) = usable {
                tracing::warn!(agent_id, name, %why, "skipping a listed prompt or resource Switchboard cannot route");
                continue;
            }
            // A resource and a template of the same text share a key.
            let key_kind = if kind == McpOfferKind::Prompt {
                kind
            } else {
                McpOfferKind::Resource
            };
            if seen.insert((key_kind, name.to_string())) {
                out.push((kind, name.to_string(), item));
            }
        }
    }
    out
}

/// Writes new and changed items through the policy chain and marks
/// vanished ones withdrawn; returns the items the policies allow.
pub(crate) fn judge(
    inner: &Inner,
    agent: &Agent,
    server: &McpServer,
    listed: ListedOffers,
) -> Result<Vec<Found>> {
    let Some(default) = agent.categories.first() else {
        return Ok(Vec::new());
    };
    let mut stored = stored(inner, &agent.id)?;
    let mut found = Vec::new();
    for (kind, name, item) in named(&agent.id, listed) {
        let category = match kind {
            // Category rules are written for names, not URIs.
            McpOfferKind::Prompt => server.category_of(&name, default),
            _ => default.clone(),
        };
        let hash = schema_hash(&item);
        let store_kind = if kind == McpOfferKind::Prompt {
            McpOfferKind::Prompt
        } else {
            // Looked up by name under either resource kind: a URI that
            // turned from resource into template is a change of one item.
            stored
                .keys()
                .find(|(k, n)| *n == name && *k != McpOfferKind::Prompt)
                .map_or(kind, |(k, _)| *k)
        };
        let before = stored.remove(&(store_kind, name.clone()));
        let unchanged = before.as_ref().is_some_and(|b| {
            b.withdrawn_at_ms.is_none()
                && b.hash == hash
                && b.category == category
                && b.kind == kind
        });
        if !unchanged {
            let record = McpOfferRecord {
                agent_id: agent.id.clone(),
                kind,
                name: name.clone(),
                category: category.clone(),
                listed: item.clone(),
                hash: hash.clone(),
                discovered_at_ms: before.as_ref().map_or_else(now_ms, |b| b.discovered_at_ms),
                previous_hash: before
                    .as_ref()
                    .and_then(|b| (b.hash != hash).then(|| b.hash.clone())),
                withdrawn_at_ms: None,
            };
            let value = serde_json::to_vec(&record).map_err(Error::storage)?;
            let routed = kind.routed_name(&name);
            let ctx = discover_context(&agent.id, kind, &name, &routed)
                .with(keys::CATEGORY, category.as_str());
            match inner
                .db
                .owner_put_with(&kind.key(&agent.id, &name), &value, &ctx)
            {
                Ok(()) => {
                    tracing::info!(agent_id = %agent.id, ?kind, %name, %category, new = before.is_none(), "MCP prompt or resource discovered");
                }
                Err(Error::PolicyDenied { reason, .. }) => {
                    tracing::warn!(agent_id = %agent.id, ?kind, %name, %reason, "a policy refused a discovered MCP prompt or resource; it is not offered");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        found.push(Found {
            kind,
            name,
            category,
            listed: item,
            hash,
        });
    }
    for ((kind, name), record) in stored {
        if record.withdrawn_at_ms.is_some() {
            continue;
        }
        let ctx = discover_context(&agent.id, kind, &name, &kind.routed_name(&name));
        let tombstone = McpOfferRecord {
            previous_hash: None,
            withdrawn_at_ms: Some(now_ms()),
            ..record
        };
        let value = serde_json::to_vec(&tombstone).map_err(Error::storage)?;
        if let Err(e) = inner
            .db
            .owner_put_with(&kind.key(&agent.id, &name), &value, &ctx)
        {
            tracing::warn!(agent_id = %agent.id, %name, error = %e, "could not mark withdrawn a prompt or resource the MCP agent no longer lists");
        }
    }
    found.sort_by(|a, b| (a.kind as u8, &a.name).cmp(&(b.kind as u8, &b.name)));
    Ok(found)
}

/// The items stored by an earlier process, as routed before they are
/// listed again: those not withdrawn, in a category the agent still serves.
pub(crate) fn restore(inner: &Inner, agent: &Agent) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = stored(inner, &agent.id)?
        .into_values()
        .filter(|r| r.withdrawn_at_ms.is_none() && agent.categories.contains(&r.category))
        .map(|r| Found {
            kind: r.kind,
            name: r.name,
            category: r.category,
            listed: r.listed,
            hash: r.hash,
        })
        .collect();
    found.sort_by(|a, b| (a.kind as u8, &a.name).cmp(&(b.kind as u8, &b.name)));
    Ok(found)
}

/// Deletes every prompt and resource record of an agent that is gone.
pub(crate) fn delete_stored(inner: &Inner, agent_id: &str) {
    for ((kind, name), _) in stored(inner, agent_id).unwrap_or_default() {
        let ctx = discover_context(agent_id, kind, &name, &kind.routed_name(&name));
        if let Err(e) = inner.db.owner_delete_with(&kind.key(agent_id, &name), &ctx) {
            tracing::warn!(agent_id, %name, error = %e, "could not delete a prompt or resource of an unregistered MCP agent");
        }
    }
}

/// Prompt names listed with more than one definition (across every agent):
/// each agent serves those under a prefixed name.
pub(crate) fn colliding_prompts<'a>(all: impl Iterator<Item = &'a Found>) -> HashSet<&'a str> {
    let mut hashes: HashMap<&str, HashSet<&str>> = HashMap::new();
    for offer in all.filter(|o| o.kind == McpOfferKind::Prompt) {
        hashes.entry(&offer.name).or_default().insert(&offer.hash);
    }
    hashes
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|(name, _)| name)
        .collect()
}

/// One item as `agent_id` offers it, given the colliding prompt names.
pub(crate) fn describe(
    agent_id: &str,
    prefix: PrefixMode,
    offer: &Found,
    colliding: &HashSet<&str>,
) -> DiscoveredOffer {
    let exposed = match offer.kind {
        McpOfferKind::Prompt => exposed_name(
            agent_id,
            &offer.name,
            colliding.contains(offer.name.as_str()) || prefix == PrefixMode::Always,
        ),
        _ => offer.name.clone(),
    };
    DiscoveredOffer {
        agent_id: agent_id.to_string(),
        kind: offer.kind,
        routed_name: offer.kind.routed_name(&exposed),
        exposed_name: exposed,
        name: offer.name.clone(),
        category: offer.category.clone(),
        listed: offer.listed.clone(),
    }
}

/// What the router serves for one described item.
pub(crate) fn served(offer: &DiscoveredOffer) -> (String, ServedTool) {
    let kind = match offer.kind {
        McpOfferKind::Prompt => ServedKind::Prompt,
        McpOfferKind::Resource => ServedKind::Resource,
        McpOfferKind::ResourceTemplate => ServedKind::Template,
    };
    (
        offer.routed_name.clone(),
        ServedTool {
            upstream: offer.name.clone(),
            category: offer.category.clone(),
            kind,
        },
    )
}

impl ToolDispatcher {
    /// MCP agent `agent_id` and its connections, for a request that is not
    /// a dispatch (completion, subscriptions).
    fn mcp_upstream(&self, agent_id: &str) -> Result<(Arc<Agent>, Arc<Upstream>)> {
        let agent = self
            .inner
            .registry
            .live(agent_id)
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        let upstream = self
            .inner
            .callers
            .mcp()
            .upstream(&agent)
            .ok_or_else(|| Error::invalid(format!("agent {agent_id} is not an MCP agent")))?;
        Ok((agent, upstream))
    }

    /// `completion/complete` on MCP agent `agent_id`, `params` naming the
    /// prompt or template as the agent does; the answer as it gave it.
    /// Not a dispatch: a completion is a hint while typing, not a call.
    pub(crate) async fn mcp_complete(
        &self,
        agent_id: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (agent, upstream) = self.mcp_upstream(agent_id)?;
        upstream
            .complete(params, agent.timeout)
            .await
            .map_err(|f| f.into_error(agent_id, agent.timeout))
    }

    /// Subscribes to (or, with `on` false, unsubscribes from) updates of
    /// `uri` on MCP agent `agent_id`; updates arrive on
    /// [`mcp_resource_updates`](Self::mcp_resource_updates).
    pub(crate) async fn mcp_subscribe(&self, agent_id: &str, uri: &str, on: bool) -> Result<()> {
        let (agent, upstream) = self.mcp_upstream(agent_id)?;
        upstream
            .subscribe(uri, on, agent.timeout)
            .await
            .map_err(|f| f.into_error(agent_id, agent.timeout))
    }

    /// The URIs MCP agents report updated from now on.
    pub(crate) fn mcp_resource_updates(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.callers.mcp().resource_updates()
    }
}
