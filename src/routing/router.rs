//! Pools and leases: one pool per category holds an immutable snapshot of
//! its members grouped into priority tiers (`tiers.rs`: the tier and panic
//! rule every strategy follows) that selection reads without locking, plus
//! per-tier load indexes for `LeastLoaded`. Registration and health changes
//! rebuild a pool's snapshot; selection never scans or sorts all agents, so it
//! stays flat at 10,000 agents. A [`Lease`] counts a chosen agent as in
//! flight until it is dropped.
//!
//! Agents that serve named tools only (MCP agents) sit in one pool per
//! (category, tool name), together with the category's open agents, so a
//! call for a tool is balanced among exactly the agents that serve it.

use super::agent::Agent;
use super::load_index::TieredLoad;
use super::strategy::{fastest, probe, RoutingStrategy};
use super::tiers::{Tiers, DEFAULT_PANIC_THRESHOLD};
use crate::namespace::ToolCategory;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Pool {
    members: Mutex<Vec<Arc<Agent>>>,
    snapshot: RwLock<Arc<Tiers>>,
    load: Mutex<TieredLoad>,
    round_robin: AtomicUsize,
    priority_turn: AtomicUsize,
}

impl Pool {
    fn rebuild_snapshot(&self, members: &[Arc<Agent>]) {
        *self.snapshot.write() = Arc::new(Tiers::build(members));
    }

    /// Files an agent in the load index of its tier, among the healthy
    /// members or not.
    fn update_load_membership(&self, agent: &Arc<Agent>) {
        self.load.lock().file(agent);
    }
}

/// What one selection pass came to.
enum Selected {
    Leased(Lease),
    /// No usable agent.
    Nothing,
    /// This agent was chosen but filled up before it could be claimed.
    Lost(u64),
}

/// Counts one more call in flight on `agent` if it has capacity: one
/// compare-and-swap, so `max_concurrency` holds exactly under races.
fn claim(agent: &Agent) -> bool {
    if agent.health.is_paused() {
        return false;
    }
    match agent.max_concurrency {
        None => {
            agent.stats.active.fetch_add(1, Ordering::AcqRel);
            true
        }
        Some(max) => agent
            .stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .is_ok(),
    }
}

/// One category's pools: the open pool (its agents that serve every tool of
/// it) and one pool per tool name some agent serves by name (the agents
/// serving that name, and the open agents).
#[derive(Default)]
struct CategoryPools {
    open: Arc<Pool>,
    tools: HashMap<String, Arc<Pool>>,
}

/// An agent's uid and the pools it is a member of.
type Membership = (u64, Vec<Arc<Pool>>);

/// Chooses agents. Shared by the registry (which adds and removes agents)
/// and the dispatcher (which selects and releases them).
pub struct ToolRouter {
    pools: RwLock<HashMap<ToolCategory, CategoryPools>>,
    /// The pools each agent (by id) is a member of, with its uid.
    memberships: RwLock<HashMap<String, Membership>>,
    /// Serialises membership changes (adding, removing, new tool pools).
    changes: Mutex<()>,
    /// The share of a tier that may be ejected before it panics (`f64` bits).
    panic_threshold: AtomicU64,
}

impl Default for ToolRouter {
    fn default() -> Self {
        ToolRouter {
            pools: RwLock::default(),
            memberships: RwLock::default(),
            changes: Mutex::new(()),
            panic_threshold: AtomicU64::new(DEFAULT_PANIC_THRESHOLD.to_bits()),
        }
    }
}

/// An agent chosen for one call, counted as in flight until dropped.
pub(crate) struct Lease {
    pub(crate) agent: Arc<Agent>,
    router: Arc<ToolRouter>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.agent.stats.active.fetch_sub(1, Ordering::AcqRel);
        self.router.refile(&self.agent);
    }
}

impl ToolRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the share of a tier that may be ejected before the tier routes
    /// to all its members (0.0 to 1.0).
    pub(crate) fn set_panic_threshold(&self, threshold: f64) {
        self.panic_threshold
            .store(threshold.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn panic_threshold(&self) -> f64 {
        f64::from_bits(self.panic_threshold.load(Ordering::Relaxed))
    }

    /// The pool a call for `tool` in `category` is served from: the tool's
    /// own pool if some agent serves it by name, else the category's open pool.
    fn pool_for(&self, category: &ToolCategory, tool: Option<&str>) -> Option<Arc<Pool>> {
        let pools = self.pools.read();
        let category = pools.get(category)?;
        Some(
            tool.and_then(|t| category.tools.get(t))
                .unwrap_or(&category.open)
                .clone(),
        )
    }

    /// The pools `agent` belongs in: an open agent in its categories' open
    /// pools and every tool pool of them; an agent serving named tools in
    /// those tools' pools (created, with the category's open agents, if new).
    /// Called under `changes`.
    fn pools_of(&self, agent: &Arc<Agent>) -> Vec<Arc<Pool>> {
        let mut out = Vec::new();
        match agent.served() {
            None => {
                let mut pools = self.pools.write();
                for category in &agent.categories {
                    let pools = pools.entry(category.clone()).or_default();
                    out.push(pools.open.clone());
                    out.extend(pools.tools.values().cloned());
                }
            }
            Some(served) => {
                for (name, tool) in served.iter() {
                    if !agent.categories.contains(&tool.category) {
                        continue;
                    }
                    let existing = self
                        .pools
                        .read()
                        .get(&tool.category)
                        .and_then(|c| c.tools.get(name).cloned());
                    let pool = match existing {
                        Some(pool) => pool,
                        None => self.new_tool_pool(&tool.category, name),
                    };
                    out.push(pool);
                }
            }
        }
        out
    }

    /// Creates the pool of one tool name, holding the category's open agents.
    fn new_tool_pool(&self, category: &ToolCategory, tool: &str) -> Arc<Pool> {
        let pool = Arc::new(Pool::default());
        let open: Vec<Arc<Agent>> = self
            .pools
            .read()
            .get(category)
            .map(|c| c.open.members.lock().clone())
            .unwrap_or_default();
        {
            let mut members = pool.members.lock();
            let mut memberships = self.memberships.write();
            for agent in &open {
                members.push(agent.clone());
                pool.update_load_membership(agent);
                if let Some((_, pools)) = memberships.get_mut(&agent.id) {
                    pools.push(pool.clone());
                }
            }
            pool.rebuild_snapshot(&members);
        }
        self.pools
            .write()
            .entry(category.clone())
            .or_default()
            .tools
            .insert(tool.to_string(), pool.clone());
        pool
    }

    /// Adds an agent to the pools it belongs in, replacing any agent with
    /// the same id.
    pub(crate) fn add(&self, agent: Arc<Agent>) {
        let _changing = self.changes.lock();
        self.remove_locked(&agent.id);
        let pools = self.pools_of(&agent);
        for pool in &pools {
            let mut members = pool.members.lock();
            members.push(agent.clone());
            pool.rebuild_snapshot(&members);
            pool.update_load_membership(&agent);
        }
        self.memberships
            .write()
            .insert(agent.id.clone(), (agent.uid, pools));
    }

    /// Adds agents not yet in the router, such as the stored registrations a
    /// new dispatcher loads: each pool's snapshot is rebuilt once, not once per
    /// agent, so loading n agents is not O(n²).
    pub(crate) fn add_all(&self, agents: &[Arc<Agent>]) {
        let _changing = self.changes.lock();
        // Open agents first, so tool pools created after them include them.
        let (open, named): (Vec<&Arc<Agent>>, Vec<&Arc<Agent>>) =
            agents.iter().partition(|a| a.served().is_none());
        let mut touched: Vec<Arc<Pool>> = Vec::new();
        for agent in open.into_iter().chain(named) {
            let pools = self.pools_of(agent);
            for pool in &pools {
                pool.members.lock().push(agent.clone());
                pool.update_load_membership(agent);
                if !touched.iter().any(|p| Arc::ptr_eq(p, pool)) {
                    touched.push(pool.clone());
                }
            }
            self.memberships
                .write()
                .insert(agent.id.clone(), (agent.uid, pools));
        }
        for pool in &touched {
            let members = pool.members.lock();
            pool.rebuild_snapshot(&members);
        }
    }

    /// Removes the agent with this id from every pool.
    pub(crate) fn remove(&self, agent_id: &str) {
        let _changing = self.changes.lock();
        self.remove_locked(agent_id);
    }

    fn remove_locked(&self, agent_id: &str) {
        let Some((_, pools)) = self.memberships.write().remove(agent_id) else {
            return;
        };
        for pool in pools {
            let mut members = pool.members.lock();
            if let Some(i) = members.iter().position(|a| a.id == agent_id) {
                let removed = members.remove(i);
                pool.load.lock().remove(&removed);
                pool.rebuild_snapshot(&members);
            }
        }
    }

    /// Replaces the named tools `agent` serves (`None`: every tool of its
    /// categories) and refiles it; a no-op if the agent was replaced or
    /// removed meanwhile.
    pub(crate) fn set_served(
        &self,
        agent: &Arc<Agent>,
        served: Option<Arc<super::agent::ServedTools>>,
    ) {
        {
            let _changing = self.changes.lock();
            let current = self.memberships.read().get(&agent.id).map(|(uid, _)| *uid);
            if current != Some(agent.uid) {
                return;
            }
            *agent.served.write() = served;
        }
        self.add(agent.clone());
    }

    /// The pools `agent` is a member of now (none if it was replaced).
    fn member_pools(&self, agent: &Agent) -> Vec<Arc<Pool>> {
        match self.memberships.read().get(&agent.id) {
            Some((uid, pools)) if *uid == agent.uid => pools.clone(),
            _ => Vec::new(),
        }
    }

    /// Re-reads an agent's health into its pools.
    pub(crate) fn health_changed(&self, agent: &Arc<Agent>) {
        for pool in self.member_pools(agent) {
            let members = pool.members.lock();
            pool.rebuild_snapshot(&members);
            pool.update_load_membership(agent);
        }
    }

    fn refile(&self, agent: &Agent) {
        if let Some((uid, pools)) = self.memberships.read().get(&agent.id) {
            if *uid == agent.uid {
                for pool in pools {
                    pool.load.lock().touch(agent);
                }
            }
        }
    }

    /// Claims `agent` for a call if it is healthy and has capacity.
    pub(crate) fn lease(self: &Arc<Self>, agent: &Arc<Agent>) -> Option<Lease> {
        if !agent.is_healthy() || !claim(agent) {
            return None;
        }
        self.refile(agent);
        Some(Lease {
            agent: agent.clone(),
            router: self.clone(),
        })
    }

    /// Chooses and claims a healthy agent serving `tool` (any tool, when
    /// `None`) in `category`, never one in `exclude` (uids already tried in
    /// this call).
    pub(crate) fn select(
        self: &Arc<Self>,
        category: &ToolCategory,
        tool: Option<&str>,
        strategy: RoutingStrategy,
        exclude: &[u64],
    ) -> Option<Lease> {
        let pool = self.pool_for(category, tool)?;
        // A claim lost to a concurrent caller (the agent filled up between
        // choosing and claiming) moves on to the next agent.
        let mut lost: Vec<u64> = Vec::new();
        loop {
            let excluded: std::borrow::Cow<'_, [u64]> = if lost.is_empty() {
                exclude.into()
            } else {
                [exclude, &lost].concat().into()
            };
            match self.select_once(&pool, strategy, &excluded) {
                Selected::Leased(lease) => return Some(lease),
                Selected::Nothing => return None,
                Selected::Lost(uid) => lost.push(uid),
            }
        }
    }

    fn select_once(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        strategy: RoutingStrategy,
        exclude: &[u64],
    ) -> Selected {
        let panic_threshold = self.panic_threshold();
        if matches!(
            strategy,
            RoutingStrategy::LeastLoaded | RoutingStrategy::Sticky
        ) {
            // Choose and count under one lock, so concurrent callers see each
            // other's claims and never pick a busier agent.
            let mut load = pool.load.lock();
            let Some(agent) = load.least_loaded(exclude, panic_threshold) else {
                return Selected::Nothing;
            };
            if !claim(&agent) {
                return Selected::Lost(agent.uid);
            }
            load.touch(&agent);
            drop(load);
            self.refile_others(&agent, pool);
            return Selected::Leased(Lease {
                agent,
                router: self.clone(),
            });
        }
        let snapshot = pool.snapshot.read().clone();
        let usable = |a: &Arc<Agent>| !exclude.contains(&a.uid) && a.has_capacity();
        // A failover within one call continues from where the call's first
        // choice was made instead of taking another turn, so retries do not
        // skew the rotation of other calls.
        let take_turn = |counter: &AtomicUsize| {
            if exclude.is_empty() {
                counter.fetch_add(1, Ordering::Relaxed)
            } else {
                counter.load(Ordering::Relaxed)
            }
        };
        let turn = match strategy {
            RoutingStrategy::RoundRobin => take_turn(&pool.round_robin),
            RoutingStrategy::Priority => take_turn(&pool.priority_turn),
            _ => 0,
        };
        let chosen = snapshot.pick(panic_threshold, |agents: &[Arc<Agent>]| {
            if agents.is_empty() {
                return None;
            }
            match strategy {
                RoutingStrategy::RoundRobin | RoutingStrategy::Priority => {
                    probe(agents, turn, usable)
                }
                RoutingStrategy::Random => probe(agents, fastrand::usize(..agents.len()), usable),
                RoutingStrategy::Fastest => fastest(agents, usable),
                RoutingStrategy::LeastLoaded | RoutingStrategy::Sticky => {
                    unreachable!("handled above")
                }
            }
        });
        let Some(chosen) = chosen else {
            return Selected::Nothing;
        };
        // Panic routing may choose an ejected agent: claimed without the
        // health check `lease` makes.
        if !claim(&chosen) {
            return Selected::Lost(chosen.uid);
        }
        self.refile(&chosen);
        Selected::Leased(Lease {
            agent: chosen,
            router: self.clone(),
        })
    }

    fn refile_others(&self, agent: &Agent, done: &Arc<Pool>) {
        for pool in self.member_pools(agent) {
            if !Arc::ptr_eq(&pool, done) {
                pool.load.lock().touch(agent);
            }
        }
    }
}
