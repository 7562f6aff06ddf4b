//! Pools and leases: one pool per category holds an immutable snapshot of
//! its members grouped into priority tiers (`tiers.rs`: the tier and panic
//! rule every strategy follows) that selection reads without locking, plus
//! per-tier load indexes for `LeastLoaded`. Registration and health changes
//! rebuild a pool's snapshot; selection never scans or sorts all agents, so it
//! stays flat at 10,000 agents. A [`Lease`] counts a chosen agent as in
//! flight until it is dropped.

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

/// Chooses agents. Shared by the registry (which adds and removes agents)
/// and the dispatcher (which selects and releases them).
pub struct ToolRouter {
    pools: RwLock<HashMap<ToolCategory, Arc<Pool>>>,
    /// The share of a tier that may be ejected before it panics (`f64` bits).
    panic_threshold: AtomicU64,
}

impl Default for ToolRouter {
    fn default() -> Self {
        ToolRouter {
            pools: RwLock::default(),
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

    fn pool(&self, category: &ToolCategory) -> Option<Arc<Pool>> {
        self.pools.read().get(category).cloned()
    }

    fn pool_or_create(&self, category: &ToolCategory) -> Arc<Pool> {
        if let Some(pool) = self.pool(category) {
            return pool;
        }
        self.pools
            .write()
            .entry(category.clone())
            .or_default()
            .clone()
    }

    /// Adds an agent to the pools of its categories, replacing any agent with
    /// the same id.
    pub(crate) fn add(&self, agent: Arc<Agent>) {
        self.remove(&agent.id);
        for category in &agent.categories {
            let pool = self.pool_or_create(category);
            let mut members = pool.members.lock();
            members.push(agent.clone());
            pool.rebuild_snapshot(&members);
            pool.update_load_membership(&agent);
        }
    }

    /// Adds agents not yet in the router, such as the stored registrations a
    /// new dispatcher loads: each pool's snapshot is rebuilt once, not once per
    /// agent, so loading n agents is not O(n²).
    pub(crate) fn add_all(&self, agents: &[Arc<Agent>]) {
        let mut touched: HashMap<ToolCategory, Arc<Pool>> = HashMap::new();
        for agent in agents {
            for category in &agent.categories {
                let pool = self.pool_or_create(category);
                pool.members.lock().push(agent.clone());
                pool.update_load_membership(agent);
                touched.entry(category.clone()).or_insert(pool);
            }
        }
        for pool in touched.values() {
            let members = pool.members.lock();
            pool.rebuild_snapshot(&members);
        }
    }

    /// Removes the agent with this id from every pool.
    pub(crate) fn remove(&self, agent_id: &str) {
        let pools: Vec<Arc<Pool>> = self.pools.read().values().cloned().collect();
        for pool in pools {
            let mut members = pool.members.lock();
            if let Some(i) = members.iter().position(|a| a.id == agent_id) {
                let removed = members.remove(i);
                pool.load.lock().remove(&removed);
                pool.rebuild_snapshot(&members);
            }
        }
    }

    /// Re-reads an agent's health into its pools.
    pub(crate) fn health_changed(&self, agent: &Arc<Agent>) {
        for category in &agent.categories {
            if let Some(pool) = self.pool(category) {
                let members = pool.members.lock();
                pool.rebuild_snapshot(&members);
                pool.update_load_membership(agent);
            }
        }
    }

    fn refile(&self, agent: &Agent) {
        for category in &agent.categories {
            if let Some(pool) = self.pool(category) {
                pool.load.lock().touch(agent);
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

    /// Chooses and claims a healthy agent for `category`, never one in
    /// `exclude` (uids already tried in this call).
    pub(crate) fn select(
        self: &Arc<Self>,
        category: &ToolCategory,
        strategy: RoutingStrategy,
        exclude: &[u64],
    ) -> Option<Lease> {
        let pool = self.pool(category)?;
        // A claim lost to a concurrent caller (the agent filled up between
        // choosing and claiming) moves on to the next agent.
        let mut lost: Vec<u64> = Vec::new();
        loop {
            let excluded: std::borrow::Cow<'_, [u64]> = if lost.is_empty() {
                exclude.into()
            } else {
                [exclude, &lost].concat().into()
            };
            match self.select_once(&pool, category, strategy, &excluded) {
                Selected::Leased(lease) => return Some(lease),
                Selected::Nothing => return None,
                Selected::Lost(uid) => lost.push(uid),
            }
        }
    }

    fn select_once(
        self: &Arc<Self>,
        pool: &Pool,
        category: &ToolCategory,
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
            self.refile_others(&agent, category);
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

    fn refile_others(&self, agent: &Agent, done: &ToolCategory) {
        for category in agent.categories.iter().filter(|c| *c != done) {
            if let Some(pool) = self.pool(category) {
                pool.load.lock().touch(agent);
            }
        }
    }
}
