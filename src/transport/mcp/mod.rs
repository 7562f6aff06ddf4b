//! MCP agents: an agent that is an MCP server (Model Context Protocol) is
//! called with `tools/call`, probed with `ping`, and listed with
//! `tools/list`, through the official SDK `rmcp`'s client (used here and in
//! the `mcp` module's server, nowhere else).
//!
//! - `mod.rs`: [`McpClients`], the connections of every MCP agent by
//!   registration uid, and what callers above learn of them ([`McpEvents`]);
//! - `upstream`: one agent's connections (a shared one, and one per
//!   Switchboard session on a session-based server), calls and listings;
//! - `offers`: prompts, resources and resource templates, listed and used;
//! - `oauth`: an agent's OAuth client credentials, its token, and the
//!   streamable-HTTP client that sends it with each request;
//! - `session_id`: the upstream session a connection is in, for the call's span;
//! - `tap`: a connection's HTTP client, noting its session and routing the
//!   log messages and progress of each call's response stream (`call_stream`);
//! - `calls`: one connection's calls in flight, by request id, for what a
//!   server sends about each (requests for input, log messages, progress);
//! - `call_stream`: the log messages and progress a server sends on a
//!   call's response stream, to that call's caller, before its answer;
//! - `answer`: a `tools/call` answer or error as output or [`Failure`](super::Failure).

mod answer;
mod call_stream;
mod calls;
mod oauth;
mod offers;
mod session_id;
mod tap;
mod upstream;

pub(crate) use offers::ListedOffers;
pub(crate) use upstream::{resolve_headers, ListedTool, Upstream};

use crate::routing::agent::Agent;
use crate::routing::endpoint::Endpoint;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// What a `file:PATH` secret reference (a stdio server's `env`, a url
/// server's `headers`, an OAuth client secret) reads as on this node: the
/// file's contents without a trailing newline, read at each use so a
/// rotated secret is picked up.
pub(super) fn read_secret_file(path: &str) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    Ok(text)
}

/// The most pages one `tools/list` discovery reads.
pub const MAX_TOOL_PAGES: usize = 100;
/// The most tools one MCP agent may list; the rest are ignored (logged).
pub const MAX_TOOLS_PER_AGENT: usize = 2000;
/// The most Switchboard sessions one session-based MCP server keeps an
/// upstream session for; beyond it the least recently used session with no
/// call in flight is ended (sessions with calls in flight are never ended,
/// so only they can take the count past it, and they are bounded by the
/// calls in flight).
pub const MAX_UPSTREAM_SESSIONS: usize = 1024;

/// What an MCP agent tells the layers above: its tool list changed
/// (`notifications/tools/list_changed`), or a call named a tool it no longer
/// has. Either way its tools should be listed again.
pub(crate) type McpEvents = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The connections of every MCP agent, by registration uid.
pub(crate) struct McpClients {
    http: reqwest::Client,
    upstreams: RwLock<HashMap<u64, Arc<Upstream>>>,
    events: RwLock<Option<McpEvents>>,
    updates: upstream::ResourceUpdates,
}

/// How many resource updates a slow subscriber may fall behind by before
/// it misses some (it is told it lagged).
const RESOURCE_UPDATES_BACKLOG: usize = 256;

impl McpClients {
    pub(crate) fn new(http: reqwest::Client) -> Self {
        McpClients {
            http,
            upstreams: RwLock::new(HashMap::new()),
            events: RwLock::new(None),
            updates: tokio::sync::broadcast::channel(RESOURCE_UPDATES_BACKLOG).0,
        }
    }

    /// The URIs MCP agents report updated (`notifications/resources/updated`)
    /// from now on.
    pub(crate) fn resource_updates(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.updates.subscribe()
    }

    /// Where list changes and unknown tools are reported.
    pub(crate) fn set_events(&self, events: McpEvents) {
        *self.events.write() = Some(events);
    }

    fn report(&self, agent_id: &str, uid: u64) {
        let events = self.events.read().clone();
        if let Some(events) = events {
            events(agent_id, uid);
        }
    }

    /// The connections of `agent`, created on first use; `None` if it is not
    /// an MCP agent.
    pub(crate) fn upstream(self: &Arc<Self>, agent: &Agent) -> Option<Arc<Upstream>> {
        let Endpoint::Mcp(server) = &agent.endpoint else {
            return None;
        };
        if let Some(upstream) = self.upstreams.read().get(&agent.uid) {
            return Some(upstream.clone());
        }
        let clients = Arc::downgrade(self);
        let (id, uid) = (agent.id.clone(), agent.uid);
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(clients) = clients.upgrade() {
                clients.report(&id, uid);
            }
        });
        let upstream = self
            .upstreams
            .write()
            .entry(agent.uid)
            .or_insert_with(|| {
                Arc::new(Upstream::new(
                    agent.id.clone(),
                    server.clone(),
                    self.http.clone(),
                    notify,
                    self.updates.clone(),
                ))
            })
            .clone();
        Some(upstream)
    }

    /// Ends the connections of registrations that are no longer current.
    pub(crate) fn retain(&self, current: impl Fn(u64) -> bool) {
        self.upstreams.write().retain(|uid, _| current(*uid));
    }
}
