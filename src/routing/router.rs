//! Picking one agent for one call.
//!
//! Agents are grouped into one pool per category. Each pool keeps an immutable
//! snapshot of its healthy members (sorted by priority) that selection reads
//! without locking, plus a load index ordered by in-flight count for
//! `LeastLoaded`. Registration and health changes rebuild a pool's snapshot;
//! selection never scans or sorts all agents, so it stays flat at 10,000 agents.

use super::agent::Agent;
use crate::namespace::ToolCategory;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Pools at or below this size are searched exhaustively by `Fastest`;
/// larger ones compare two random members (power of two choices).
const FASTEST_EXACT_LIMIT: usize = 16;

/// How to choose among the healthy agents serving a category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    /// Each agent in turn: exactly even over a stable set of agents.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The agent with the fewest invocations in flight (ties rotate).
    LeastLoaded,
    /// The highest priority; agents of equal priority take turns.
    Priority,
    /// Session affinity: the session's bound agent while it is healthy; new
    /// bindings go to the least loaded agent. Needs a session id.
    Sticky,
    /// The lowest latency estimate (peak-EWMA × load); unmeasured agents first.
    Fastest,
}

impl RoutingStrategy {
    /// Every strategy, in declaration order.
    pub const ALL: [RoutingStrategy; 6] = [
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Random,
        RoutingStrategy::LeastLoaded,
        RoutingStrategy::Priority,
        RoutingStrategy::Sticky,
        RoutingStrategy::Fastest,
    ];

    /// The snake_case name used in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::Random => "random",
            RoutingStrategy::LeastLoaded => "least_loaded",
            RoutingStrategy::Priority => "priority",
            RoutingStrategy::Sticky => "sticky",
            RoutingStrategy::Fastest => "fastest",
        }
    }
}

impl fmt::Display for RoutingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoutingStrategy {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        RoutingStrategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                crate::Error::invalid(format!(
                    "unknown strategy {s:?}; use one of round_robin, random, least_loaded, priority, sticky, fastest"
                ))
            })
    }
}

/// A healthy member list, sorted by priority (highest first), with the bounds
/// of each run of equal priority.
#[derive(Default)]
struct Snapshot {
    agents: Vec<Arc<Agent>>,
    tiers: Vec<(usize, usize)>,
}

impl Snapshot {
    fn build(members: &[Arc<Agent>]) -> Snapshot {
        let mut agents: Vec<Arc<Agent>> =
            members.iter().filter(|a| a.is_healthy()).cloned().collect();
        // Stable: equal priorities keep registration order.
        agents.sort_by_key(|a| std::cmp::Reverse(a.priority));
        let mut tiers = Vec::new();
        let mut start = 0;
        for i in 1..=agents.len() {
            if i == agents.len() || agents[i].priority != agents[start].priority {
                tiers.push((start, i));
                start = i;
            }
        }
        Snapshot { agents, tiers }
    }
}

/// Healthy members ordered by (in-flight, last touched): the first usable entry
/// is the least loaded agent, and equal loads rotate.
#[derive(Default)]
struct LoadIndex {
    order: BTreeSet<(u64, u64, u64)>,
    position: HashMap<u64, (u64, u64)>,
    agents: HashMap<u64, Arc<Agent>>,
    next_seq: u64,
}

impl LoadIndex {
    fn insert(&mut self, agent: &Arc<Agent>) {
        self.remove(agent.uid);
        self.agents.insert(agent.uid, agent.clone());
        self.touch(agent);
    }

    fn remove(&mut self, uid: u64) {
        if let Some((load, seq)) = self.position.remove(&uid) {
            self.order.remove(&(load, seq, uid));
        }
        self.agents.remove(&uid);
    }

    /// Re-files `agent` under its current in-flight count (read now, under the
    /// lock, so the last writer always files the latest value).
    fn touch(&mut self, agent: &Agent) {
        if !self.agents.contains_key(&agent.uid) {
            return;
        }
        if let Some((load, seq)) = self.position.remove(&agent.uid) {
            self.order.remove(&(load, seq, agent.uid));
        }
        let load = agent.active();
        self.next_seq += 1;
        self.order.insert((load, self.next_seq, agent.uid));
        self.position.insert(agent.uid, (load, self.next_seq));
    }

    fn least_loaded(&self, exclude: &[u64]) -> Option<Arc<Agent>> {
        self.order
            .iter()
            .map(|(_, _, uid)| &self.agents[uid])
            .find(|a| !exclude.contains(&a.uid) && a.has_capacity())
            .cloned()
    }
}

#[derive(Default)]
struct Pool {
    members: Mutex<Vec<Arc<Agent>>>,
    snapshot: RwLock<Arc<Snapshot>>,
    load: Mutex<LoadIndex>,
    round_robin: AtomicUsize,
    priority_turn: AtomicUsize,
}

impl Pool {
    fn rebuild_snapshot(&self, members: &[Arc<Agent>]) {
        *self.snapshot.write() = Arc::new(Snapshot::build(members));
    }

    /// Files a healthy agent in the load index, or takes an unhealthy one out.
    fn update_load_membership(&self, agent: &Arc<Agent>) {
        let mut load = self.load.lock();
        if agent.is_healthy() {
            load.insert(agent);
        } else {
            load.remove(agent.uid);
        }
    }
}

/// Chooses agents. Shared by the registry (which adds and removes agents)
/// and the dispatcher (which selects and releases them).
#[derive(Default)]
pub struct ToolRouter {
    pools: RwLock<HashMap<ToolCategory, Arc<Pool>>>,
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

    /// Removes the agent with this id from every pool.
    pub(crate) fn remove(&self, agent_id: &str) {
        let pools: Vec<Arc<Pool>> = self.pools.read().values().cloned().collect();
        for pool in pools {
            let mut members = pool.members.lock();
            if let Some(i) = members.iter().position(|a| a.id == agent_id) {
                let removed = members.remove(i);
                pool.load.lock().remove(removed.uid);
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

    /// Number of healthy agents serving `category`.
    pub fn healthy_count(&self, category: &ToolCategory) -> usize {
        self.pool(category)
            .map(|p| p.snapshot.read().agents.len())
            .unwrap_or(0)
    }

    /// Claims `agent` for a call if it is healthy and has capacity.
    pub(crate) fn lease(self: &Arc<Self>, agent: &Arc<Agent>) -> Option<Lease> {
        if !agent.is_healthy() || !agent.has_capacity() {
            return None;
        }
        agent.stats.active.fetch_add(1, Ordering::AcqRel);
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
        if matches!(
            strategy,
            RoutingStrategy::LeastLoaded | RoutingStrategy::Sticky
        ) {
            // Choose and count under one lock, so concurrent callers see each
            // other's claims and never pick a busier agent.
            let mut load = pool.load.lock();
            let agent = load.least_loaded(exclude)?;
            agent.stats.active.fetch_add(1, Ordering::AcqRel);
            load.touch(&agent);
            drop(load);
            self.refile_others(&agent, category);
            return Some(Lease {
                agent,
                router: self.clone(),
            });
        }
        let snapshot = pool.snapshot.read().clone();
        let agents = &snapshot.agents;
        if agents.is_empty() {
            return None;
        }
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
        let chosen = match strategy {
            RoutingStrategy::RoundRobin => probe(agents, take_turn(&pool.round_robin), usable),
            RoutingStrategy::Random => probe(agents, fastrand::usize(..agents.len()), usable),
            RoutingStrategy::Priority => {
                let turn = take_turn(&pool.priority_turn);
                snapshot
                    .tiers
                    .iter()
                    .find_map(|&(lo, hi)| probe(&agents[lo..hi], turn, usable))
            }
            RoutingStrategy::Fastest => fastest(agents, usable),
            RoutingStrategy::LeastLoaded | RoutingStrategy::Sticky => unreachable!("handled above"),
        }?;
        self.lease(&chosen)
    }

    fn refile_others(&self, agent: &Agent, done: &ToolCategory) {
        for category in agent.categories.iter().filter(|c| *c != done) {
            if let Some(pool) = self.pool(category) {
                pool.load.lock().touch(agent);
            }
        }
    }
}

/// The first usable agent at or after `start` (wrapping).
fn probe(
    agents: &[Arc<Agent>],
    start: usize,
    usable: impl Fn(&Arc<Agent>) -> bool,
) -> Option<Arc<Agent>> {
    let n = agents.len();
    (0..n)
        .map(|i| &agents[(start + i) % n])
        .find(|a| usable(a))
        .cloned()
}

/// Expected cost of sending one more call: latency estimate × (in flight + 1).
/// Unmeasured agents cost nothing, so they are tried first.
fn cost(agent: &Agent) -> f64 {
    agent
        .stats
        .latency_estimate()
        .map_or(0.0, |latency| latency * (agent.active() + 1) as f64)
}

fn fastest(agents: &[Arc<Agent>], usable: impl Fn(&Arc<Agent>) -> bool) -> Option<Arc<Agent>> {
    let cheaper = |a: Arc<Agent>, b: Arc<Agent>| if cost(&b) < cost(&a) { b } else { a };
    if agents.len() <= FASTEST_EXACT_LIMIT {
        return agents.iter().filter(|a| usable(a)).cloned().reduce(cheaper);
    }
    let n = agents.len();
    let first = probe(agents, fastrand::usize(..n), &usable)?;
    let second = probe(agents, fastrand::usize(..n), |a| {
        usable(a) && a.uid != first.uid
    });
    Some(match second {
        Some(second) => cheaper(first, second),
        None => first,
    })
}
