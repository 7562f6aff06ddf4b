//! The load index: a pool's members ordered by (in flight, last touched),
//! so `LeastLoaded` finds the least loaded usable agent in O(1) and equal
//! loads rotate. [`TieredLoad`] keeps one index per priority tier (healthy
//! members, and all members for panic routing), so tiers cost O(tiers).

use super::agent::Agent;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Healthy members ordered by (in-flight, last touched): the first usable entry
/// is the least loaded agent, and equal loads rotate.
///
/// One FIFO list per load level, linked through a slab: refiling an agent after
/// a claim or a release is a constant-time unlink and append, where a sorted
/// tree of 10,000 agents cost more than the rest of a selection.
#[derive(Default)]
pub(crate) struct LoadIndex {
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
    pub(crate) fn insert(&mut self, agent: &Arc<Agent>) {
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

    pub(crate) fn remove(&mut self, uid: u64) {
        if let Some(index) = self.slot_of.remove(&uid) {
            self.unlink(index);
            self.slots[index as usize].agent = None;
            self.free.push(index);
        }
    }

    /// Refiles `agent` under its current in-flight count, last among its equals.
    pub(crate) fn touch(&mut self, agent: &Agent) {
        if let Some(&index) = self.slot_of.get(&agent.uid) {
            self.unlink(index);
            self.append(index, agent.active() as usize);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub(crate) fn least_loaded(&self, exclude: &[u64]) -> Option<Arc<Agent>> {
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

/// One priority tier's indexes: its healthy members, and all its members
/// (ejected ones included) for panic routing.
#[derive(Default)]
struct TierLoad {
    healthy: LoadIndex,
    all: LoadIndex,
}

/// A pool's load indexes, one per priority tier, highest priority first.
/// Every change touches one tier (O(1)); a pick walks the tiers, which are few.
#[derive(Default)]
pub(crate) struct TieredLoad {
    tiers: BTreeMap<Reverse<i32>, TierLoad>,
}

impl TieredLoad {
    /// Files `agent` in its tier, among the healthy members or not.
    pub(crate) fn file(&mut self, agent: &Arc<Agent>) {
        let tier = self.tiers.entry(Reverse(agent.priority)).or_default();
        if !tier.all.slot_of.contains_key(&agent.uid) {
            tier.all.insert(agent);
        }
        if agent.is_healthy() {
            if !tier.healthy.slot_of.contains_key(&agent.uid) {
                tier.healthy.insert(agent);
            }
        } else {
            tier.healthy.remove(agent.uid);
        }
    }

    pub(crate) fn remove(&mut self, agent: &Agent) {
        let key = Reverse(agent.priority);
        if let Some(tier) = self.tiers.get_mut(&key) {
            tier.all.remove(agent.uid);
            tier.healthy.remove(agent.uid);
            if tier.all.len() == 0 {
                self.tiers.remove(&key);
            }
        }
    }

    /// Refiles `agent` under its current in-flight count.
    pub(crate) fn touch(&mut self, agent: &Agent) {
        if let Some(tier) = self.tiers.get_mut(&Reverse(agent.priority)) {
            tier.healthy.touch(agent);
            tier.all.touch(agent);
        }
    }

    /// The least loaded usable agent of the highest tier that has a healthy
    /// usable one (among all of that tier's members when it is in panic);
    /// when no member of the pool is healthy, of the highest tier with any
    /// usable member. See `tiers::pick`.
    pub(crate) fn least_loaded(&self, exclude: &[u64], panic_threshold: f64) -> Option<Arc<Agent>> {
        let mut any_healthy = false;
        for tier in self.tiers.values() {
            any_healthy |= tier.healthy.len() > 0;
            if let Some(agent) = tier.healthy.least_loaded(exclude) {
                let ejected = tier.all.len() - tier.healthy.len();
                if super::tiers::in_panic(ejected, tier.all.len(), panic_threshold) {
                    return tier.all.least_loaded(exclude).or(Some(agent));
                }
                return Some(agent);
            }
        }
        if any_healthy || !super::tiers::in_panic(1, 1, panic_threshold) {
            return None;
        }
        self.tiers
            .values()
            .find_map(|tier| tier.all.least_loaded(exclude))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::ToolCategory;
    use crate::routing::agent::Health;
    use crate::routing::endpoint::Endpoint;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn agent(uid: u64) -> Arc<Agent> {
        Arc::new(Agent {
            id: format!("agent_{uid}"),
            uid,
            categories: vec![ToolCategory::Code],
            priority: 0,
            timeout: Duration::from_secs(1),
            max_concurrency: None,
            endpoint: Endpoint::Local,
            health_url: None,
            served: Default::default(),
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
