//! Which agents exist: registrations persisted under `agents/*` (through the
//! policy chain) and mirrored into the router.
//!
//! Registering an id that exists **replaces** it: the new configuration takes
//! effect for the next call, calls in flight on the old one finish, and the
//! agent's metrics carry over. A local agent's registration survives restarts,
//! but its handler lives in the process, so after a restart it is listed and
//! not routed to until it is registered again.
//!
//! It is one thing, the lifecycle of a registration (load, register, replace,
//! unregister, health persisted), whose steps share one lock and one rule —
//! the stored record and the router change together or not at all. What a
//! registration must be (the checks, the record built from an `AgentConfig`,
//! an MCP agent's declared tools) is `registration.rs`, and how its record
//! is read and written in the store (keys, policy contexts, bookkeeping) is
//! `registry_store.rs`; neither knows the registry.

use super::agent::{Agent, AgentConfig, Health};
use super::endpoint::{parse_endpoint, Endpoint};
use super::metrics::AgentStats;
use super::registration::{self, declared_tools};
use super::registry_store;
use super::router::ToolRouter;
use super::shared::RegistrationSink;
use crate::error::{Error, Result};
use crate::namespace::{
    now_ms, validate_id, AgentRecord, AgentStatus, AgentTransport, ToolCategory,
};
use crate::policy::{CommandPolicy, NetworkPolicy};
use crate::storage::Database;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Registered {
    record: AgentRecord,
    /// `None` for a local agent whose handler is not bound in this process.
    live: Option<Arc<Agent>>,
    stats: Arc<AgentStats>,
}

/// Registered agents, persisted and routable.
pub struct AgentRegistry {
    db: Database,
    router: Arc<ToolRouter>,
    agents: RwLock<HashMap<String, Registered>>,
    /// Serialises registration changes so store and memory change in the same order.
    changes: Mutex<()>,
    next_uid: AtomicU64,
    /// Where registrations are also published (cluster mode), if anywhere.
    sink: RwLock<Option<Arc<dyn RegistrationSink>>>,
}

impl AgentRegistry {
    /// Loads every registration stored in `db`. HTTP agents are routable at
    /// once, with the stored health: one stored `unhealthy` starts ejected and
    /// is re-admitted by the usual rules (probes, panic routing); local
    /// agents wait for their handler (registering one stores it healthy).
    pub(crate) fn load(db: Database, router: Arc<ToolRouter>) -> Result<AgentRegistry> {
        let registry = AgentRegistry::empty(db, router);
        let mut loaded = HashMap::new();
        let mut routable = Vec::new();
        for (key, record) in registry_store::load(&registry.db)? {
            let stats = Arc::new(AgentStats::default());
            let live = match &record.transport {
                AgentTransport::Local => None,
                AgentTransport::Mcp(server) => Some(registry.agent(
                    &record,
                    registry.reserve_uid(),
                    Endpoint::Mcp(server.clone()),
                    None,
                    stats.clone(),
                )),
                AgentTransport::A2a(a2a) => Some(registry.agent(
                    &record,
                    registry.reserve_uid(),
                    Endpoint::A2a(a2a.clone()),
                    None,
                    stats.clone(),
                )),
                AgentTransport::Http {
                    endpoint,
                    health_url,
                } => match registry.http_agent(&record, endpoint, health_url, stats.clone()) {
                    Ok(agent) => Some(agent),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "skipping an agent record with a bad endpoint");
                        continue;
                    }
                },
            };
            if let Some(agent) = live
                .as_ref()
                .filter(|_| record.status == AgentStatus::Unhealthy)
            {
                // Routing agrees with the stored status: the agent starts
                // ejected, re-admitted by the usual rules.
                agent.health.unhealthy.store(true, Ordering::Release);
                agent
                    .health
                    .unhealthy_since_ms
                    .store(record.updated_at_ms, Ordering::Release);
            }
            routable.extend(live.clone());
            loaded.insert(
                record.agent_id.clone(),
                Registered {
                    record,
                    live,
                    stats,
                },
            );
        }
        registry.router.add_all(&routable);
        if !loaded.is_empty() {
            tracing::info!(agents = loaded.len(), "loaded persisted registrations");
        }
        *registry.agents.write() = loaded;
        Ok(registry)
    }

    /// A registry with no agents, whatever the store holds.
    pub(crate) fn empty(db: Database, router: Arc<ToolRouter>) -> AgentRegistry {
        AgentRegistry {
            db,
            router,
            agents: RwLock::new(HashMap::new()),
            changes: Mutex::new(()),
            next_uid: AtomicU64::new(1),
            sink: RwLock::new(None),
        }
    }

    fn http_agent(
        &self,
        record: &AgentRecord,
        endpoint: &str,
        health_url: &str,
        stats: Arc<AgentStats>,
    ) -> Result<Arc<Agent>> {
        let (endpoint, _) = parse_endpoint(endpoint)?;
        let health_url = reqwest::Url::parse(health_url)
            .map_err(|e| Error::invalid(format!("health URL {health_url:?}: {e}")))?;
        Ok(self.agent(
            record,
            self.reserve_uid(),
            Endpoint::Http(endpoint),
            Some(health_url),
            stats,
        ))
    }

    /// A fresh registration uid. A local agent's handler is bound to its uid
    /// in the transport layer before the agent becomes routable.
    pub(crate) fn reserve_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `uid` is the current registration of some agent.
    pub(crate) fn is_current(&self, uid: u64) -> bool {
        self.agents
            .read()
            .values()
            .any(|r| r.live.as_ref().is_some_and(|a| a.uid == uid))
    }

    fn agent(
        &self,
        record: &AgentRecord,
        uid: u64,
        endpoint: Endpoint,
        health_url: Option<reqwest::Url>,
        stats: Arc<AgentStats>,
    ) -> Arc<Agent> {
        let served = match &record.transport {
            AgentTransport::Mcp(server) => Some(Arc::new(declared_tools(record, server))),
            AgentTransport::A2a(a2a) => Some(Arc::new(declared_tools(record, &a2a.naming()))),
            _ => None,
        };
        Arc::new(Agent {
            served: parking_lot::RwLock::new(served),
            id: record.agent_id.clone(),
            uid,
            categories: record.tools.clone(),
            priority: record.priority,
            timeout: Duration::from_millis(record.timeout_ms),
            max_concurrency: record.max_concurrency,
            endpoint,
            health_url,
            stats,
            health: Health::default(),
        })
    }

    /// A new record for `agent_id` ([`registration::new_record`]), keeping
    /// the registration time of the one it replaces.
    fn new_record(
        &self,
        agent_id: &str,
        config: &AgentConfig,
        transport: AgentTransport,
    ) -> Result<AgentRecord> {
        registration::new_record(agent_id, config, transport, || {
            self.agents
                .read()
                .get(agent_id)
                .map(|r| r.record.registered_at_ms)
        })
    }

    /// Registers (or replaces) an HTTP, MCP or A2A agent.
    pub fn register(&self, agent_id: &str, config: AgentConfig) -> Result<()> {
        let transport = registration::transport(
            agent_id,
            &config,
            &NetworkPolicy::current(),
            &CommandPolicy::current(),
        )?;
        let url = |text: &str| {
            reqwest::Url::parse(text).map_err(|e| Error::invalid(format!("{text:?}: {e}")))
        };
        let (endpoint, health_url) = match &transport {
            AgentTransport::Http {
                endpoint,
                health_url,
            } => (Endpoint::Http(url(endpoint)?), Some(url(health_url)?)),
            AgentTransport::Mcp(server) => (Endpoint::Mcp(server.clone()), None),
            AgentTransport::A2a(a2a) => (Endpoint::A2a(a2a.clone()), None),
            AgentTransport::Local => unreachable!("a registration's transport is HTTP, MCP or A2A"),
        };
        let record = self.new_record(agent_id, &config, transport)?;
        let uid = self.reserve_uid();
        self.install(record, config.caller.as_ref(), |registry, record, stats| {
            registry.agent(record, uid, endpoint.clone(), health_url.clone(), stats)
        })
    }

    /// Registers (or replaces) an in-process agent under `uid` (from
    /// [`reserve_uid`](Self::reserve_uid)), whose handler the caller has
    /// already bound to that uid.
    pub(crate) fn register_local(
        &self,
        agent_id: &str,
        config: AgentConfig,
        uid: u64,
    ) -> Result<()> {
        let record = self.new_record(agent_id, &config, AgentTransport::Local)?;
        self.install(record, config.caller.as_ref(), |registry, record, stats| {
            registry.agent(record, uid, Endpoint::Local, None, stats)
        })
    }

    fn install(
        &self,
        record: AgentRecord,
        caller: Option<&crate::policy::Principal>,
        build: impl Fn(&Self, &AgentRecord, Arc<AgentStats>) -> Arc<Agent>,
    ) -> Result<()> {
        let _changing = self.changes.lock();
        let id = record.agent_id.clone();
        let value = serde_json::to_vec(&record).map_err(Error::storage)?;
        let sink = self.sink.read().clone();
        if let Some(sink) = &sink {
            sink.ready()?;
        }
        registry_store::register(&self.db, &id, &value, caller)?;
        if let Some(sink) = &sink {
            if let Err(e) = sink.publish(&id, Some(&record)) {
                self.restore_stored(&id);
                return Err(e);
            }
        }
        let stats = self
            .agents
            .read()
            .get(&id)
            .map_or_else(Default::default, |r| r.stats.clone());
        let agent = build(self, &record, stats.clone());
        self.router.add(agent.clone());
        let replaced = self
            .agents
            .write()
            .insert(
                id.clone(),
                Registered {
                    record,
                    live: Some(agent),
                    stats,
                },
            )
            .is_some();
        tracing::info!(agent_id = %id, replaced, "agent registered");
        Ok(())
    }

    /// Removes an agent; its calls in flight finish. Unknown ids are an error.
    pub fn unregister(&self, agent_id: &str) -> Result<()> {
        self.unregister_as(agent_id, None)
    }

    /// [`unregister`](Self::unregister) on behalf of `caller`.
    pub fn unregister_as(
        &self,
        agent_id: &str,
        caller: Option<&crate::policy::Principal>,
    ) -> Result<()> {
        validate_id("agent id", agent_id)?;
        let _changing = self.changes.lock();
        if !self.agents.read().contains_key(agent_id) {
            return Err(Error::UnknownAgent(agent_id.to_string()));
        }
        let sink = self.sink.read().clone();
        if let Some(sink) = &sink {
            sink.ready()?;
        }
        registry_store::unregister(&self.db, agent_id, caller)?;
        if let Some(sink) = &sink {
            if let Err(e) = sink.publish(agent_id, None) {
                self.restore_stored(agent_id);
                return Err(e);
            }
        }
        self.router.remove(agent_id);
        self.agents.write().remove(agent_id);
        tracing::info!(agent_id, "agent unregistered");
        Ok(())
    }

    /// Publishes every later registration change through `sink` too.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_sink(&self, sink: Option<Arc<dyn RegistrationSink>>) {
        *self.sink.write() = sink;
    }

    /// Puts the stored record of `agent_id` back as memory has it (or removes
    /// it), after a write whose publication failed
    /// ([`registry_store::restore`]).
    fn restore_stored(&self, agent_id: &str) {
        let previous = self.agents.read().get(agent_id).map(|r| r.record.clone());
        if let Err(e) = registry_store::restore(&self.db, agent_id, previous.as_ref()) {
            tracing::error!(agent_id, error = %e, "could not undo a registration that was not published");
        }
    }

    /// Applies a registration published by another node, or put into etcd
    /// by anyone able to write there: checked as a local registration is
    /// ([`check_shared`](registration::check_shared): ids, categories, endpoints
    /// under the address policy, the command allow-list), then stored
    /// through this node's policy chain (the before-hooks on `agents/{id}`,
    /// with `source` = `cluster` in the context) and routed. A refused
    /// record is an error and changes nothing: an agent held before stays
    /// as it was. A record equal to the one held (this node's own write
    /// coming back) is ignored. Another node's in-process agent is listed,
    /// never routed here. Returns whether anything changed.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn apply_shared(&self, record: AgentRecord) -> Result<bool> {
        let _changing = self.changes.lock();
        let id = record.agent_id.clone();
        // This node's own write comes back with its secrets redacted.
        let same = |held: &AgentRecord| {
            AgentRecord {
                status: record.status,
                status_reason: record.status_reason.clone(),
                updated_at_ms: record.updated_at_ms,
                ..held.redacted()
            } == record
        };
        if self.agents.read().get(&id).is_some_and(|r| same(&r.record)) {
            return Ok(false);
        }
        registration::check_shared(&record)?;
        let stats = self
            .agents
            .read()
            .get(&id)
            .map_or_else(Default::default, |r| r.stats.clone());
        let live = match &record.transport {
            AgentTransport::Local => None,
            AgentTransport::Http {
                endpoint,
                health_url,
            } => Some(self.http_agent(&record, endpoint, health_url, stats.clone())?),
            AgentTransport::Mcp(server) => Some(self.agent(
                &record,
                self.reserve_uid(),
                Endpoint::Mcp(server.clone()),
                None,
                stats.clone(),
            )),
            AgentTransport::A2a(a2a) => Some(self.agent(
                &record,
                self.reserve_uid(),
                Endpoint::A2a(a2a.clone()),
                None,
                stats.clone(),
            )),
        };
        let value = serde_json::to_vec(&record).map_err(Error::storage)?;
        registry_store::apply_shared(&self.db, &id, &value)?;
        match &live {
            Some(agent) => self.router.add(agent.clone()),
            None => self.router.remove(&id),
        }
        self.agents.write().insert(
            id.clone(),
            Registered {
                record,
                live,
                stats,
            },
        );
        tracing::info!(agent_id = %id, "applied a registration from the cluster");
        Ok(true)
    }

    /// Applies a removal published by another node (nothing if unknown
    /// here). Returns whether the agent was known.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn remove_shared(&self, agent_id: &str) -> Result<bool> {
        let _changing = self.changes.lock();
        if !self.agents.read().contains_key(agent_id) {
            return Ok(false);
        }
        registry_store::remove_shared(&self.db, agent_id)?;
        self.router.remove(agent_id);
        self.agents.write().remove(agent_id);
        tracing::info!(agent_id, "applied a removal from the cluster");
        Ok(true)
    }

    /// Every registered id, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The stored registration of one agent.
    pub fn get(&self, agent_id: &str) -> Option<AgentRecord> {
        self.agents.read().get(agent_id).map(|r| r.record.clone())
    }

    pub(crate) fn live(&self, agent_id: &str) -> Option<Arc<Agent>> {
        self.agents
            .read()
            .get(agent_id)
            .and_then(|r| r.live.clone())
    }

    pub(crate) fn live_agents(&self) -> Vec<Arc<Agent>> {
        self.agents
            .read()
            .values()
            .filter_map(|r| r.live.clone())
            .collect()
    }

    /// Whether some registered agent (bound or not) serves `category`.
    pub(crate) fn any_serves(&self, category: &ToolCategory) -> bool {
        self.agents
            .read()
            .values()
            .any(|r| r.record.tools.contains(category))
    }

    /// Each agent's id, health and live counters, for the metrics exposition.
    pub(crate) fn stats(&self) -> Vec<(String, bool, Arc<AgentStats>)> {
        self.agents
            .read()
            .iter()
            .map(|(id, r)| {
                let healthy = r.live.as_ref().is_some_and(|a| a.is_healthy());
                (id.clone(), healthy, r.stats.clone())
            })
            .collect()
    }

    pub(crate) fn metrics(&self) -> HashMap<String, super::metrics::AgentMetrics> {
        self.agents
            .read()
            .iter()
            .map(|(id, r)| {
                let healthy = r.live.as_ref().is_some_and(|a| a.is_healthy());
                (id.clone(), r.stats.snapshot(healthy))
            })
            .collect()
    }

    /// Marks an agent healthy or unhealthy: routes around it (or back to it),
    /// persists the status and logs the change. A no-op if nothing changes or
    /// the agent was replaced or removed meanwhile: a late verdict about an
    /// old registration must never bring it back into routing.
    pub(crate) fn set_health(&self, agent: &Arc<Agent>, healthy: bool, why: &str) {
        let _changing = self.changes.lock();
        let mut record = {
            let agents = self.agents.read();
            let Some(registered) = agents.get(&agent.id) else {
                return;
            };
            if registered.live.as_ref().map(|a| a.uid) != Some(agent.uid) {
                return;
            }
            registered.record.clone()
        };
        let was_healthy = !agent.health.unhealthy.swap(!healthy, Ordering::AcqRel);
        if was_healthy == healthy {
            return;
        }
        if !healthy {
            agent
                .health
                .unhealthy_since_ms
                .store(now_ms(), Ordering::Release);
            // Re-admission counts successes from the ejection on.
            agent
                .health
                .consecutive_successes
                .store(0, Ordering::Release);
        }
        self.router.health_changed(agent);
        if healthy {
            tracing::info!(agent_id = %agent.id, reason = why, "agent is healthy again");
        } else {
            tracing::warn!(agent_id = %agent.id, reason = why, "agent marked unhealthy; routing around it");
        }
        record.status = if healthy {
            AgentStatus::Healthy
        } else {
            AgentStatus::Unhealthy
        };
        record.status_reason = Some(why.to_string());
        record.updated_at_ms = now_ms();
        // No registry lock is held across the write: a hook may read the registry.
        match registry_store::set_health(&self.db, &agent.id, &record) {
            Ok(()) => {
                if let Some(registered) = self.agents.write().get_mut(&agent.id) {
                    registered.record = record;
                }
            }
            Err(e) => {
                tracing::warn!(agent_id = %agent.id, error = %e, "could not persist health status")
            }
        }
    }
}
