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
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
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
///
/// One FIFO list per load level, linked through a slab: refiling an agent after
/// a claim or a release is a constant-time unlink and append, where a sorted
/// tree of 10,000 agents cost more than the rest of a selection.
#[derive(Default)]
struct LoadIndex {
    slots: Vec<Slot>,
    free: Vec<u32>,
    slot_of: HashMap<u64, u32, BuildHasherDefault<UidHasher>>,
    /// `levels[n]`: the agents with `n` calls in flight, least recently filed first.
    levels: Vec<Level>,
}

const NIL: u32 = u32::MAX;

struct Slot {
    agent: Option<Arc<Agent>>,
    level: usize,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct Level {
    head: u32,
    tail: u32,
}

impl LoadIndex {
    fn insert(&mut self, agent: &Arc<Agent>) {
        self.remove(agent.uid);
        let slot = Slot {
            agent: Some(agent.clone()),
            level: 0,
            prev: NIL,
            next: NIL,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.slot_of.insert(agent.uid, index);
        self.append(index, agent.active() as usize);
    }

    fn remove(&mut self, uid: u64) {
        if let Some(index) = self.slot_of.remove(&uid) {
            self.unlink(index);
            self.slots[index as usize].agent = None;
            self.free.push(index);
        }
    }

    /// Refiles `agent` under its current in-flight count, last among its equals.
    fn touch(&mut self, agent: &Agent) {
        if let Some(&index) = self.slot_of.get(&agent.uid) {
            self.unlink(index);
            self.append(index, agent.active() as usize);
        }
    }

    fn least_loaded(&self, exclude: &[u64]) -> Option<Arc<Agent>> {
        for level in &self.levels {
            let mut at = level.head;
            while at != NIL {
                let slot = &self.slots[at as usize];
                if let Some(agent) = &slot.agent {
                    if !exclude.contains(&agent.uid) && agent.has_capacity() {
                        return Some(agent.clone());
                    }
                }
                at = slot.next;
            }
        }
        None
    }

    fn append(&mut self, index: u32, level: usize) {
        if self.levels.len() <= level {
            self.levels.resize(
                level + 1,
                Level {
                    head: NIL,
                    tail: NIL,
                },
            );
        }
        let tail = self.levels[level].tail;
        let slot = &mut self.slots[index as usize];
        slot.level = level;
        slot.prev = tail;
        slot.next = NIL;
        match tail {
            NIL => self.levels[level].head = index,
            tail => self.slots[tail as usize].next = index,
        }
        self.levels[level].tail = index;
    }

    fn unlink(&mut self, index: u32) {
        let Slot {
            level, prev, next, ..
        } = self.slots[index as usize];
        match prev {
            NIL => self.levels[level].head = next,
            prev => self.slots[prev as usize].next = next,
        }
        match next {
            NIL => self.levels[level].tail = prev,
            next => self.slots[next as usize].prev = prev,
        }
    }
}

/// Agent uids are distinct integers: one multiply spreads them over a hash
/// table at a fraction of SipHash's cost, and nothing outside picks them.
#[derive(Default)]
struct UidHasher(u64);

impl Hasher for UidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::agent::Health;
    use crate::transport::{local_handler, Transport};
    use std::time::Duration;

    fn agent(uid: u64) -> Arc<Agent> {
        Arc::new(Agent {
            id: format!("agent_{uid}"),
            uid,
            categories: vec![ToolCategory::Code],
            priority: 0,
            timeout: Duration::from_secs(1),
            max_concurrency: None,
            transport: Transport::Local(local_handler(|_, input| async move { Ok(input) })),
            health_url: None,
            stats: Default::default(),
            health: Health::default(),
        })
    }

    fn set_active(agent: &Agent, n: u64) {
        agent.stats.active.store(n, Ordering::Release);
    }

    fn pick(index: &LoadIndex, exclude: &[u64]) -> Option<u64> {
        index.least_loaded(exclude).map(|a| a.uid)
    }

    #[test]
    fn load_index_orders_by_in_flight_then_by_last_refiled() {
        let agents: Vec<_> = (0..4).map(agent).collect();
        let mut index = LoadIndex::default();
        for a in &agents {
            index.insert(a);
        }
        assert_eq!(pick(&index, &[]), Some(0));
        // Claims move agents up a level; equal loads rotate in refile order.
        for (a, load) in agents.iter().zip([2, 1, 1, 3]) {
            set_active(a, load);
            index.touch(a);
        }
        assert_eq!(pick(&index, &[]), Some(1));
        assert_eq!(pick(&index, &[1]), Some(2));
        index.touch(&agents[1]);
        assert_eq!(pick(&index, &[]), Some(2), "agent 1 was refiled last");
        assert_eq!(pick(&index, &[1, 2]), Some(0));
        assert_eq!(pick(&index, &[0, 1, 2]), Some(3));
        assert_eq!(pick(&index, &[0, 1, 2, 3]), None);
        // A release moves it back down.
        set_active(&agents[3], 0);
        index.touch(&agents[3]);
        assert_eq!(pick(&index, &[]), Some(3));
    }

    #[test]
    fn load_index_forgets_removed_agents_and_reuses_their_slots() {
        let agents: Vec<_> = (0..3).map(agent).collect();
        let mut index = LoadIndex::default();
        for a in &agents {
            index.insert(a);
        }
        index.remove(0);
        index.remove(0);
        assert_eq!(pick(&index, &[]), Some(1));
        index.touch(&agents[0]);
        assert_eq!(
            pick(&index, &[1, 2]),
            None,
            "touching a removed agent re-adds nothing"
        );
        let newcomer = agent(7);
        index.insert(&newcomer);
        assert_eq!(index.slots.len(), 3, "the freed slot was reused");
        assert_eq!(pick(&index, &[1, 2]), Some(7));
        // Re-inserting a present agent does not duplicate it.
        index.insert(&agents[1]);
        index.remove(1);
        assert_eq!(pick(&index, &[2, 7]), None);
    }
}
