//! Session affinity: which agent a call of a session goes to. The binding
//! under `sessions/{id}` is read here, kept while its agent can serve, and
//! replaced (bind / rebind) when it cannot; the new binding is returned for
//! the dispatcher to commit with the call's record. Racing first calls of
//! one session are serialised by a striped async lock (keyed hash), held
//! from choosing until the binding is committed: a call waiting for it
//! yields its worker, so a slow commit (an fsync, a Rego hook, an etcd
//! round trip in cluster mode) delays only the sessions of its stripe and
//! never the runtime. Across nodes (cluster mode) a session this node has
//! not bound yet asks the shared bindings, whose first binding wins.

use super::agent::Agent;
use super::registry::AgentRegistry;
use super::router::{Lease, ToolRouter};
use super::shared::SessionBindings;
use super::strategy::RoutingStrategy;
use crate::error::Result;
use crate::namespace::{now_ms, session_key, SessionRecord, ToolCategory};
use crate::storage::Database;
use parking_lot::RwLock;
use std::hash::BuildHasher;
use std::sync::Arc;
use tokio::sync::Mutex;

const SESSION_STRIPES: usize = 64;

/// A chosen agent and, when the session binding must be (re)written, the new binding.
pub(crate) struct Candidate {
    pub(crate) lease: Lease,
    pub(crate) binding: Option<SessionRecord>,
}

/// What the routing of one call needs to know.
pub(crate) struct Route<'a> {
    pub(crate) category: &'a ToolCategory,
    /// The tool called, when known: only agents serving it are chosen.
    pub(crate) tool: Option<&'a str>,
    pub(crate) strategy: RoutingStrategy,
    pub(crate) session_id: Option<&'a str>,
    /// Only asking where the call would go: no binding is agreed with other nodes.
    pub(crate) dry_run: bool,
}

/// Chooses agents for calls, honouring session bindings.
pub(crate) struct Affinity {
    db: Database,
    registry: Arc<AgentRegistry>,
    router: Arc<ToolRouter>,
    locks: Vec<Mutex<()>>,
    /// Keyed per process, so callers cannot choose sessions that collide.
    lock_hasher: std::collections::hash_map::RandomState,
    /// Bindings shared with other nodes (cluster mode), if any.
    shared: RwLock<Option<Arc<dyn SessionBindings>>>,
}

impl Affinity {
    pub(crate) fn new(db: Database, registry: Arc<AgentRegistry>, router: Arc<ToolRouter>) -> Self {
        Affinity {
            db,
            registry,
            router,
            locks: (0..SESSION_STRIPES).map(|_| Mutex::new(())).collect(),
            lock_hasher: Default::default(),
            shared: RwLock::new(None),
        }
    }

    /// Decides new bindings with other nodes through `shared` from now on.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_shared(&self, shared: Option<Arc<dyn SessionBindings>>) {
        *self.shared.write() = shared;
    }

    /// A new binding to `lease`'s agent, agreed with the other nodes if
    /// there are any: when another node bound the session first, its agent
    /// serves the call if it can here. If the shared bindings cannot be
    /// reached, they say whether the session is bound on this node only or
    /// the call refused.
    fn agree(
        &self,
        route: &Route<'_>,
        session_id: &str,
        lease: Lease,
        proposed: SessionRecord,
        decide: impl FnOnce(&dyn SessionBindings, &SessionRecord) -> Result<SessionRecord>,
    ) -> Result<Candidate> {
        let shared = self.shared.read().clone();
        let Some(shared) = shared.filter(|_| !route.dry_run) else {
            return Ok(Candidate {
                lease,
                binding: Some(proposed),
            });
        };
        let winner = match decide(&*shared, &proposed) {
            Ok(winner) => winner,
            Err(e) => {
                shared.unreachable(session_id, &proposed, e)?;
                return Ok(Candidate {
                    lease,
                    binding: Some(proposed),
                });
            }
        };
        if winner.agent_id == lease.agent.id {
            return Ok(Candidate {
                lease,
                binding: Some(winner),
            });
        }
        let theirs = self
            .registry
            .live(&winner.agent_id)
            .filter(|a| a.serves(&proposed.category) && a.is_healthy())
            .and_then(|a| self.router.lease(&a));
        Ok(match theirs {
            Some(their_lease) => {
                drop(lease);
                Candidate {
                    lease: their_lease,
                    binding: Some(winner),
                }
            }
            // Their agent cannot serve here now: serve this call with ours,
            // leave the binding as the cluster has it.
            None => Candidate {
                lease,
                binding: None,
            },
        })
    }

    /// Replaces this node's binding of `session_id` with `held`, the one
    /// the shared bindings hold, if this node still binds the session to
    /// `local_agent` (the binding it made while they were unreachable).
    /// Bookkeeping: the binding was decided elsewhere.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn adopt(
        &self,
        session_id: &str,
        local_agent: &str,
        held: &SessionRecord,
    ) -> Result<bool> {
        // On the cluster's applier thread, not a runtime worker.
        let _session = self.session_lock(session_id).blocking_lock();
        if self
            .binding(session_id)?
            .is_none_or(|b| b.agent_id != local_agent)
        {
            return Ok(false);
        }
        self.write_decided_elsewhere(session_id, held)?;
        Ok(true)
    }

    /// Replaces this node's binding of `session_id` with `held`, a binding
    /// another node made (a rebind after it ejected the agent, or the
    /// session bound anew), if this node holds one that differs. A session
    /// this node holds no binding of is left alone: it asks the shared
    /// bindings on its first call. Bookkeeping, like [`Affinity::adopt`].
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn follow(&self, session_id: &str, held: &SessionRecord) -> Result<bool> {
        // On the cluster's applier thread, not a runtime worker.
        let _session = self.session_lock(session_id).blocking_lock();
        let Some(local) = self.binding(session_id)? else {
            return Ok(false);
        };
        if local.agent_id == held.agent_id && local.created_at_ms == held.created_at_ms {
            return Ok(false);
        }
        // `last_used_ms` stays this node's own.
        let followed = SessionRecord {
            last_used_ms: local.last_used_ms,
            ..held.clone()
        };
        self.write_decided_elsewhere(session_id, &followed)?;
        Ok(true)
    }

    fn write_decided_elsewhere(&self, session_id: &str, held: &SessionRecord) -> Result<()> {
        let value = serde_json::to_vec(held).map_err(crate::error::Error::storage)?;
        let ctx = crate::policy::PolicyContext::new()
            .with(crate::policy::keys::AGENT_ID, held.agent_id.as_str())
            .with("source", "cluster")
            .for_operation(crate::policy::OperationKind::Outcome);
        let mut tx = self.db.owner_transaction();
        tx.put_with(&session_key(session_id), &value, &ctx)?;
        tx.commit_bookkeeping()
    }

    /// The lock that serialises choosing and binding for one session.
    pub(crate) fn session_lock(&self, session_id: &str) -> &Mutex<()> {
        let hash = self.lock_hasher.hash_one(session_id);
        &self.locks[hash as usize % SESSION_STRIPES]
    }

    fn select(&self, route: &Route<'_>, tried: &[u64]) -> Option<Lease> {
        let strategy = match route.strategy {
            RoutingStrategy::Sticky => RoutingStrategy::LeastLoaded,
            other => other,
        };
        self.router
            .select(route.category, route.tool, strategy, tried)
    }

    fn binding(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        Ok(match self.db.get_unjudged(&session_key(session_id))? {
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(binding) => Some(binding),
                Err(e) => {
                    tracing::warn!(session_id, error = %e, "session binding does not decode; rebinding");
                    None
                }
            },
            None => None,
        })
    }

    /// The next agent to try: the session's bound agent if it can serve,
    /// else one chosen by the strategy, never one in `tried`. `None` when
    /// every candidate is used up. Also says whether the session binding must
    /// be (re)written.
    pub(crate) fn choose(&self, route: &Route<'_>, tried: &[u64]) -> Result<Option<Candidate>> {
        let unbound = |lease| Candidate {
            lease,
            binding: None,
        };
        let Some(session_id) = route.session_id else {
            return Ok(self.select(route, tried).map(unbound));
        };
        let now = now_ms();
        let shared = self.shared.read().clone();
        let existing = self
            .binding(session_id)?
            .filter(|b| !shared.as_ref().is_some_and(|s| s.expired(b, now)));
        let bind = |lease: Lease, created_at_ms: u64| {
            let binding = SessionRecord {
                agent_id: lease.agent.id.clone(),
                category: route.category.clone(),
                created_at_ms,
                last_used_ms: now,
            };
            Candidate {
                lease,
                binding: Some(binding),
            }
        };
        let Some(existing) = existing else {
            return self
                .select(route, tried)
                .map(|lease| {
                    let proposed = bind(lease, now);
                    let binding = proposed.binding.expect("a new binding");
                    self.agree(route, session_id, proposed.lease, binding, |shared, b| {
                        shared.bind_if_absent(session_id, b)
                    })
                })
                .transpose();
        };
        let bound: Option<Arc<Agent>> = self.registry.live(&existing.agent_id);
        Ok(match bound {
            // The session's agent does not do this kind of work: route this
            // call freely and leave the binding for the calls it serves.
            Some(agent)
                if !route.tool.map_or(agent.serves(route.category), |t| {
                    agent.serves_tool(route.category, t)
                }) =>
            {
                self.select(route, tried).map(unbound)
            }
            Some(agent) if agent.is_healthy() => {
                if tried.contains(&agent.uid) {
                    // Failing over from the bound agent within one call: the
                    // binding stays unless health checks decide otherwise.
                    self.select(route, tried).map(unbound)
                } else {
                    match self.router.lease(&agent) {
                        Some(lease) => {
                            let binding = SessionRecord {
                                last_used_ms: now,
                                ..existing
                            };
                            Some(Candidate {
                                lease,
                                binding: Some(binding),
                            })
                        }
                        // At capacity: serve this call elsewhere, keep the binding.
                        None => self.select(route, tried).map(unbound),
                    }
                }
            }
            // Removed, not bound in this process, or unhealthy: replace the
            // agent and rewrite the binding.
            _ => {
                return self
                    .select(route, tried)
                    .map(|lease| {
                        let rebound = bind(lease, existing.created_at_ms);
                        let binding = rebound.binding.expect("a new binding");
                        self.agree(route, session_id, rebound.lease, binding, |shared, b| {
                            shared.rebind(session_id, &existing.agent_id, b)
                        })
                    })
                    .transpose()
            }
        })
    }
}
