//! MCP tool discovery: which named tools each MCP agent serves.
//!
//! An MCP agent's `tools/list` is read on registration, when the agent
//! reports `notifications/tools/list_changed` (or a call names a tool it no
//! longer has), and when the list's TTL expires. Every new or changed tool is
//! written under `mcp_tools/{agent}/{tool}` through the policy chain (action
//! `discover`), so a policy can refuse a new tool or a changed description
//! (tool poisoning): a refused tool is not routed. A tool gone from the list
//! keeps its record as a tombstone (`withdrawn_at_ms`), so when it is listed
//! again it is judged as a change of what was last accepted, not as a new
//! tool. Categories come from the registration (its rules, else its first
//! category), never from the server.
//!
//! Names: replicas listing a name with the same input schema (same hash)
//! are one tool, balanced by the strategy; a name listed with different
//! schemas by different agents is a collision, and each of those agents
//! serves it as `{agent}_{tool}` (as does every tool of an agent registered
//! with the `always` prefix mode).

use super::offers::{self, DiscoveredOffer};
use super::{Inner, ToolDispatcher};
use crate::error::{Error, Result};
use crate::namespace::{
    mcp_tool_key, now_ms, schema_hash, validate_id, McpServer, McpToolPrevious, McpToolRecord,
    PrefixMode, ToolCategory,
};
use crate::policy::{keys, OperationKind, PolicyContext};
use crate::routing::agent::{Agent, ServedKind, ServedTool, ServedTools};
use crate::routing::endpoint::Endpoint;
use crate::routing::registration::exposed_name;
use crate::storage::off_worker;
use crate::transport::mcp::{ListedTool, MAX_TOOLS_PER_AGENT, MAX_TOOL_PAGES};
use crate::transport::Failure;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a tool list is trusted when neither the server (`ttlMs`) nor
/// the registration (`discovery_ttl_ms`) says.
pub const DEFAULT_DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// The shortest TTL honoured (a server asking for less is re-listed this often).
const MIN_DISCOVERY_TTL: Duration = Duration::from_secs(1);
/// How soon a listing that failed is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Notifications that arrive together cause one listing.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(50);

/// One tool discovered on an MCP agent, as `GET /v1/tools` and
/// `switchboard tools` list it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredTool {
    /// The agent serving it.
    pub agent_id: String,
    /// Its name on the MCP server.
    pub name: String,
    /// The name callers use through Switchboard (`{agent}_{tool}` when it
    /// collides with a different tool of the same name on another agent).
    pub exposed_name: String,
    /// The category its calls are routed in.
    pub category: ToolCategory,
    /// The server's description.
    pub description: Option<String>,
    /// The JSON schema of its arguments.
    pub input_schema: serde_json::Value,
    /// SHA-256 (hex) of the canonical input schema.
    pub schema_hash: String,
}

/// An allowed tool of one agent.
#[derive(Clone, Debug, PartialEq)]
struct Found {
    name: String,
    category: ToolCategory,
    description: Option<String>,
    input_schema: serde_json::Value,
    hash: String,
}

struct AgentTools {
    uid: u64,
    prefix: PrefixMode,
    tools: Vec<Found>,
    /// Its prompts, resources and resource templates.
    offers: Vec<offers::Found>,
}

/// Discovery state of one dispatcher.
pub(crate) struct Discovery {
    agents: Mutex<HashMap<String, AgentTools>>,
    /// Serialises discoveries of one agent.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped each time the set of routed tools changes.
    version: tokio::sync::watch::Sender<u64>,
    /// Per agent: a counter that stale refresh timers compare against.
    generations: Mutex<HashMap<String, u64>>,
    /// How long each agent's lists are kept before they are read again.
    ttls: Mutex<HashMap<String, Duration>>,
    /// Agents (by uid) with a listing pending after a notification.
    pending: Mutex<HashSet<u64>>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            agents: Mutex::default(),
            locks: Mutex::default(),
            version: tokio::sync::watch::channel(0).0,
            generations: Mutex::default(),
            ttls: Mutex::default(),
            pending: Mutex::default(),
        }
    }
}

/// How `agent`'s named tools are named and categorised: an MCP agent's
/// server, or the same settings of an A2A agent (whose skills are its tools).
fn naming(agent: &Agent) -> Option<McpServer> {
    match &agent.endpoint {
        Endpoint::Mcp(server) => Some(server.clone()),
        Endpoint::A2a(a2a) => Some(a2a.naming()),
        _ => None,
    }
}

fn discover_context(agent_id: &str, tool: &str, category: Option<&ToolCategory>) -> PolicyContext {
    let mut ctx = PolicyContext::new()
        .with(keys::AGENT_ID, agent_id)
        .with(keys::TOOL, tool)
        .for_operation(OperationKind::Discover);
    if let Some(category) = category {
        ctx = ctx.with(keys::CATEGORY, category.as_str());
    }
    ctx
}

fn stored_tools(inner: &Inner, agent_id: &str) -> Result<HashMap<String, McpToolRecord>> {
    let prefix = mcp_tool_key(agent_id, "");
    let mut stored = HashMap::new();
    for item in inner.db.scan_unjudged(&prefix, None) {
        let (key, value) = item?;
        match serde_json::from_slice::<McpToolRecord>(&value) {
            Ok(record) => {
                stored.insert(record.name.clone(), record);
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping a discovered-tool record that does not decode")
            }
        }
    }
    Ok(stored)
}

impl Discovery {
    /// Reads `agent`'s tool list now, judges and stores it, and routes what
    /// the policies allow. Returns the agent's tools as routed.
    pub(crate) async fn discover(
        &self,
        dispatcher: &ToolDispatcher,
        agent_id: &str,
    ) -> Result<Vec<DiscoveredTool>> {
        self.discover_when_started(dispatcher, agent_id, || {})
            .await
    }

    /// [`discover`](Self::discover), calling `started` once this listing
    /// holds the agent's lock (no other listing of it runs).
    async fn discover_when_started(
        &self,
        dispatcher: &ToolDispatcher,
        agent_id: &str,
        started: impl FnOnce(),
    ) -> Result<Vec<DiscoveredTool>> {
        let inner = &dispatcher.inner;
        let lock = self
            .locks
            .lock()
            .entry(agent_id.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        started();
        let agent = inner
            .registry
            .live(agent_id)
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        let Some(server) = naming(&agent) else {
            return Err(Error::invalid(format!(
                "agent {agent_id} is not an MCP or A2A agent; only those have tools to discover"
            )));
        };
        if let Some(a2a) = inner.callers.a2a().upstream(&agent) {
            // An A2A agent's skills, from its card: no TTL of its own, no
            // prompts or resources.
            let listed = a2a
                .fetch_card(agent.timeout)
                .await
                .map(|card| (card.skills_as_tools(), None));
            return self.settle(dispatcher, &agent, &server, listed, None).await;
        }
        let upstream = inner
            .callers
            .mcp()
            .upstream(&agent)
            .expect("an MCP endpoint has an upstream");
        let listed = upstream
            .list_tools(MAX_TOOL_PAGES, MAX_TOOLS_PER_AGENT, agent.timeout)
            .await;
        // Prompts and resources are read with the tools; a server that
        // fails to list them keeps what it offered before (its tools are
        // still routed).
        let listed_offers = match &listed {
            Err(_) => None,
            Ok(_) => match upstream
                .list_offers(MAX_TOOL_PAGES, MAX_TOOLS_PER_AGENT, agent.timeout)
                .await
            {
                Ok(listed) => Some(listed),
                Err(failure) => {
                    tracing::warn!(agent_id, error = %failure.message(agent.timeout), "listing the MCP agent's prompts and resources failed; keeping what it offered before");
                    None
                }
            },
        };
        self.settle(dispatcher, &agent, &server, listed, listed_offers)
            .await
    }

    /// Judges, stores and routes what one listing of `agent` found (its
    /// tools, and the offers if they were listed), or schedules the retry
    /// of a listing that failed.
    async fn settle(
        &self,
        dispatcher: &ToolDispatcher,
        agent: &Arc<Agent>,
        server: &McpServer,
        listed: std::result::Result<(Vec<ListedTool>, Option<Duration>), Failure>,
        listed_offers: Option<crate::transport::mcp::ListedOffers>,
    ) -> Result<Vec<DiscoveredTool>> {
        let inner = &dispatcher.inner;
        let agent_id = agent.id.as_str();
        let (agent, server) = (agent.clone(), server.clone());
        // The lists are read together, so again when the first expires.
        let offers_ttl = listed_offers.as_ref().and_then(|o| o.ttl);
        let (listed, server_ttl) = match listed {
            Ok((tools, tools_ttl)) => (
                tools,
                match (tools_ttl, offers_ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            ),
            Err(failure) => {
                // Sooner than a TTL: the agent routes nothing until listed.
                self.schedule_refresh(dispatcher, &agent, &server, Some(RETRY_AFTER_FAILURE));
                let hint = if matches!(failure, Failure::Timeout) {
                    " (each exchange of a listing gets the agent's timeout, timeout_ms; raise it for a server that lists slowly)"
                } else {
                    ""
                };
                return Err(Error::AgentFailed {
                    agent_id: agent_id.to_string(),
                    message: format!(
                        "listing its tools failed: {}{hint}",
                        failure.message(agent.timeout)
                    ),
                });
            }
        };
        let found = off_worker(|| self.judge(inner, &agent, &server, listed))?;
        let found_offers = match listed_offers {
            Some(listed) => Some(off_worker(|| {
                offers::judge(inner, &agent, &server, listed)
            })?),
            None => None,
        };
        let (changed, offers_changed) = {
            let mut agents = self.agents.lock();
            // Removed or replaced while it was listed: its tools are not
            // routed, and what this listing stored goes (`forget` may have
            // run before it was written).
            let current = inner
                .registry
                .live(agent_id)
                .is_some_and(|a| a.uid == agent.uid);
            if !current {
                drop(agents);
                if inner.registry.live(agent_id).is_none() {
                    off_worker(|| self.delete_stored(inner, agent_id));
                }
                return Err(Error::UnknownAgent(agent_id.to_string()));
            }
            let kept = agents
                .get(agent_id)
                .filter(|p| p.uid == agent.uid)
                .map(|p| p.offers.clone());
            let previous = agents.insert(
                agent_id.to_string(),
                AgentTools {
                    uid: agent.uid,
                    prefix: server.prefix,
                    tools: found,
                    offers: found_offers.or(kept).unwrap_or_default(),
                },
            );
            let now = &agents[agent_id];
            let offers_changed = previous.as_ref().is_none_or(|p| p.offers != now.offers);
            let changed = previous.is_none_or(|p| {
                p.uid != agent.uid
                    || p.tools != now.tools
                    || p.offers != now.offers
                    || p.prefix != server.prefix
            });
            (changed, offers_changed)
        };
        if changed {
            self.route(inner);
        }
        // A prompt or resource whose description changed routes as before,
        // but clients that list them are told too.
        if offers_changed {
            self.bump();
        }
        self.schedule_refresh(dispatcher, &agent, &server, server_ttl);
        Ok(self
            .list()
            .into_iter()
            .filter(|t| t.agent_id == agent_id)
            .collect())
    }

    /// Writes new and changed tools through the policy chain and marks
    /// vanished ones withdrawn; returns the tools the policies allow.
    fn judge(
        &self,
        inner: &Inner,
        agent: &Agent,
        server: &McpServer,
        listed: Vec<ListedTool>,
    ) -> Result<Vec<Found>> {
        let Some(default) = agent.categories.first() else {
            return Ok(Vec::new());
        };
        let mut stored = stored_tools(inner, &agent.id)?;
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for tool in listed {
            if let Err(e) = validate_id("tool name", &tool.name) {
                tracing::warn!(agent_id = %agent.id, error = %e, "skipping a listed tool whose name Switchboard cannot route");
                continue;
            }
            if !server.tool_names.is_empty() && !server.tool_names.contains(&tool.name) {
                continue;
            }
            if !seen.insert(tool.name.clone()) {
                continue;
            }
            let category = server.category_of(&tool.name, default);
            let hash = schema_hash(&tool.input_schema);
            let before = stored.remove(&tool.name);
            let unchanged = before.as_ref().is_some_and(|b| {
                b.withdrawn_at_ms.is_none()
                    && b.schema_hash == hash
                    && b.description == tool.description
                    && b.category == category
            });
            if !unchanged {
                let record = McpToolRecord {
                    agent_id: agent.id.clone(),
                    name: tool.name.clone(),
                    category: category.clone(),
                    description: tool.description.clone(),
                    input_schema: tool.input_schema.clone(),
                    schema_hash: hash.clone(),
                    discovered_at_ms: before.as_ref().map_or_else(now_ms, |b| b.discovered_at_ms),
                    previous: before.as_ref().and_then(|b| {
                        (b.schema_hash != hash || b.description != tool.description).then(|| {
                            McpToolPrevious {
                                description: b.description.clone(),
                                schema_hash: b.schema_hash.clone(),
                            }
                        })
                    }),
                    withdrawn_at_ms: None,
                };
                let value = serde_json::to_vec(&record).map_err(Error::storage)?;
                let ctx = discover_context(&agent.id, &tool.name, Some(&category));
                match inner
                    .db
                    .owner_put_with(&mcp_tool_key(&agent.id, &tool.name), &value, &ctx)
                {
                    Ok(()) => {
                        tracing::info!(agent_id = %agent.id, tool = %tool.name, %category, new = before.is_none(), "MCP tool discovered");
                    }
                    Err(Error::PolicyDenied { reason, .. }) => {
                        tracing::warn!(agent_id = %agent.id, tool = %tool.name, %reason, "a policy refused a discovered MCP tool; it is not routed");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            found.push(Found {
                name: tool.name,
                category,
                description: tool.description,
                input_schema: tool.input_schema,
                hash,
            });
        }
        for (name, record) in stored {
            if record.withdrawn_at_ms.is_some() {
                continue;
            }
            let ctx = discover_context(&agent.id, &name, Some(&record.category));
            let tombstone = McpToolRecord {
                previous: None,
                withdrawn_at_ms: Some(now_ms()),
                ..record
            };
            let value = serde_json::to_vec(&tombstone).map_err(Error::storage)?;
            if let Err(e) = inner
                .db
                .owner_put_with(&mcp_tool_key(&agent.id, &name), &value, &ctx)
            {
                tracing::warn!(agent_id = %agent.id, tool = %name, error = %e, "could not mark withdrawn a tool the MCP agent no longer lists");
            }
        }
        Ok(found)
    }

    /// Recomputes every MCP agent's served names (collisions included) and
    /// hands them to the router; bumps the version if anything changed.
    fn route(&self, inner: &Inner) {
        let agents = self.agents.lock();
        let mut hashes: HashMap<&str, HashSet<&str>> = HashMap::new();
        for tools in agents.values() {
            for t in &tools.tools {
                hashes.entry(&t.name).or_default().insert(&t.hash);
            }
        }
        let colliding = offers::colliding_prompts(agents.values().flat_map(|a| &a.offers));
        let mut changed = false;
        for (id, tools) in agents.iter() {
            let Some(live) = inner.registry.live(id) else {
                continue;
            };
            if live.uid != tools.uid {
                continue;
            }
            let mut served: ServedTools = tools
                .offers
                .iter()
                .map(|o| offers::served(&offers::describe(id, tools.prefix, o, &colliding)))
                .collect();
            // A tool keeps its name if an offer's routed name is the same.
            served.extend(tools.tools.iter().map(|t| {
                let collides = hashes.get(t.name.as_str()).is_some_and(|h| h.len() > 1);
                (
                    exposed_name(id, &t.name, collides || tools.prefix == PrefixMode::Always),
                    ServedTool {
                        upstream: t.name.clone(),
                        category: t.category.clone(),
                        kind: ServedKind::Tool,
                    },
                )
            }));
            if live.served().as_deref() != Some(&served) {
                inner.router.set_served(&live, Some(Arc::new(served)));
                changed = true;
            }
        }
        drop(agents);
        if changed {
            self.bump();
        }
    }

    /// The shortest time an MCP agent's lists are kept before they are read
    /// again; `None` without MCP agents.
    pub(crate) fn shortest_ttl(&self) -> Option<Duration> {
        self.ttls.lock().values().min().copied()
    }

    /// Announces a change of the routed tools (registrations call it too).
    pub(crate) fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever the set of routed MCP tools changes.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Every routed MCP tool, by agent then name.
    pub(crate) fn list(&self) -> Vec<DiscoveredTool> {
        let agents = self.agents.lock();
        let mut hashes: HashMap<&str, HashSet<&str>> = HashMap::new();
        for tools in agents.values() {
            for t in &tools.tools {
                hashes.entry(&t.name).or_default().insert(&t.hash);
            }
        }
        let mut out: Vec<DiscoveredTool> = agents
            .iter()
            .flat_map(|(id, tools)| {
                let hashes = &hashes;
                tools.tools.iter().map(move |t| {
                    let collides = hashes.get(t.name.as_str()).is_some_and(|h| h.len() > 1);
                    DiscoveredTool {
                        agent_id: id.clone(),
                        name: t.name.clone(),
                        exposed_name: exposed_name(
                            id,
                            &t.name,
                            collides || tools.prefix == PrefixMode::Always,
                        ),
                        category: t.category.clone(),
                        description: t.description.clone(),
                        input_schema: t.input_schema.clone(),
                        schema_hash: t.hash.clone(),
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.agent_id, &a.name).cmp(&(&b.agent_id, &b.name)));
        out
    }

    /// Every prompt, resource and resource template MCP agents offer, by
    /// agent, then kind and name.
    pub(crate) fn list_offers(&self) -> Vec<DiscoveredOffer> {
        let agents = self.agents.lock();
        let colliding = offers::colliding_prompts(agents.values().flat_map(|a| &a.offers));
        let mut out: Vec<DiscoveredOffer> = agents
            .iter()
            .flat_map(|(id, tools)| {
                let colliding = &colliding;
                tools
                    .offers
                    .iter()
                    .map(move |o| offers::describe(id, tools.prefix, o, colliding))
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.agent_id, a.kind as u8, &a.name).cmp(&(&b.agent_id, b.kind as u8, &b.name))
        });
        out
    }

    /// Loads the tools stored by an earlier process for the MCP agents now
    /// registered, so they route before they are listed again.
    pub(crate) fn restore(&self, inner: &Inner) -> Result<()> {
        let mut restored = 0;
        for agent in inner.registry.live_agents() {
            let Some(server) = naming(&agent) else {
                continue;
            };
            let stored = stored_tools(inner, &agent.id)?;
            let stored_offers = offers::restore(inner, &agent)?;
            if stored.is_empty() && stored_offers.is_empty() {
                continue;
            }
            let mut tools: Vec<Found> = stored
                .into_values()
                .filter(|r| r.withdrawn_at_ms.is_none())
                .map(|r| Found {
                    name: r.name,
                    category: r.category,
                    description: r.description,
                    input_schema: r.input_schema,
                    hash: r.schema_hash,
                })
                .filter(|t| agent.categories.contains(&t.category))
                .collect();
            tools.sort_by(|a, b| a.name.cmp(&b.name));
            restored += tools.len() + stored_offers.len();
            self.agents.lock().insert(
                agent.id.clone(),
                AgentTools {
                    uid: agent.uid,
                    prefix: server.prefix,
                    tools,
                    offers: stored_offers,
                },
            );
        }
        if restored > 0 {
            self.route(inner);
            tracing::info!(tools = restored, "restored discovered MCP tools");
        }
        Ok(())
    }

    /// Forgets an agent that was unregistered: its tools stop routing under
    /// the names they had, and its `mcp_tools/` records are deleted,
    /// tombstones too (a registration under the same id starts afresh).
    pub(crate) fn forget(&self, inner: &Inner, agent_id: &str) {
        let had = self.agents.lock().remove(agent_id).is_some();
        self.generations.lock().remove(agent_id);
        self.ttls.lock().remove(agent_id);
        self.delete_stored(inner, agent_id);
        if had {
            self.route(inner);
            self.bump();
        }
    }

    /// Deletes every `mcp_tools/{agent}/…` record of an agent that is gone,
    /// and its prompts' and resources' records.
    fn delete_stored(&self, inner: &Inner, agent_id: &str) {
        offers::delete_stored(inner, agent_id);
        let stored = stored_tools(inner, agent_id).unwrap_or_default();
        for (name, record) in stored {
            let ctx = discover_context(agent_id, &name, Some(&record.category));
            if let Err(e) = inner
                .db
                .owner_delete_with(&mcp_tool_key(agent_id, &name), &ctx)
            {
                tracing::warn!(agent_id, tool = %name, error = %e, "could not delete the tool of an unregistered MCP agent");
            }
        }
    }

    /// Lists `agent`'s tools again after its TTL (the server's, else the
    /// registration's, else [`DEFAULT_DISCOVERY_TTL`]; 5 s after a failed
    /// listing), unless another discovery happens first.
    fn schedule_refresh(
        &self,
        dispatcher: &ToolDispatcher,
        agent: &Agent,
        server: &McpServer,
        server_ttl: Option<Duration>,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ttl = server_ttl
            .or(server.discovery_ttl_ms.map(Duration::from_millis))
            .unwrap_or(DEFAULT_DISCOVERY_TTL)
            .max(MIN_DISCOVERY_TTL);
        self.ttls.lock().insert(agent.id.clone(), ttl);
        let generation = {
            let mut generations = self.generations.lock();
            let g = generations.entry(agent.id.clone()).or_default();
            *g += 1;
            *g
        };
        let weak: Weak<Inner> = Arc::downgrade(&dispatcher.inner);
        let (id, uid) = (agent.id.clone(), agent.uid);
        handle.spawn(async move {
            tokio::time::sleep(ttl).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let dispatcher = ToolDispatcher { inner };
            let discovery = &dispatcher.inner.discovery;
            let current = discovery.generations.lock().get(&id).copied();
            let same = dispatcher
                .inner
                .registry
                .live(&id)
                .is_some_and(|a| a.uid == uid);
            if current == Some(generation) && same {
                if let Err(e) = discovery.discover(&dispatcher, &id).await {
                    tracing::warn!(agent_id = %id, error = %e, "tool list refresh failed (an MCP tools/list, an A2A Agent Card)");
                }
            }
        });
    }

    /// An agent reported a changed list (or an unknown tool): lists it
    /// again soon, once for a burst of reports. At most one listing of an
    /// agent runs and one waits: a report while one waits is already
    /// answered by it, since it starts after the report; so a server
    /// flooding `list_changed` costs one waiting task, not one per report.
    pub(crate) fn on_event(weak: &Weak<Inner>, agent_id: &str, uid: u64) {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if !inner.discovery.pending.lock().insert(uid) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            inner.discovery.pending.lock().remove(&uid);
            return;
        };
        let weak = weak.clone();
        let id = agent_id.to_string();
        drop(inner);
        handle.spawn(async move {
            tokio::time::sleep(EVENT_DEBOUNCE).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let dispatcher = ToolDispatcher { inner };
            let same = dispatcher
                .inner
                .registry
                .live(&id)
                .is_some_and(|a| a.uid == uid);
            let discovery = &dispatcher.inner.discovery;
            if !same {
                discovery.pending.lock().remove(&uid);
                return;
            }
            // Pending until this listing starts: reports that arrive while
            // it waits for the running one are answered by it.
            let started = || {
                discovery.pending.lock().remove(&uid);
            };
            if let Err(e) = discovery
                .discover_when_started(&dispatcher, &id, started)
                .await
            {
                tracing::warn!(agent_id = %id, error = %e, "tool list refresh failed (an MCP tools/list, an A2A Agent Card)");
            }
        });
    }
}
