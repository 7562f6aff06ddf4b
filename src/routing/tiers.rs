//! Priority tiers and panic routing: the rule every strategy picks under.
//!
//! A pool's members are grouped by priority into tiers, highest first. A call
//! is served by the highest tier that has a healthy agent it can use (not
//! already tried in this call, with capacity); the strategy balances within
//! that tier only, and the next tier is used only when this one has none.
//!
//! Panic (as in Envoy): when more than `panic_threshold` of a tier's members
//! are ejected, the survivors would take the whole tier's load, so that tier
//! routes to all its members, ejected or not. When no member of the pool is
//! healthy at all (100 % ejected, more than any threshold below 1.0), the
//! highest tier with any usable member serves, rather than every call
//! failing. A threshold of 1.0 turns panic routing off.

use super::agent::Agent;
use std::sync::Arc;

/// The default share of a tier that may be ejected before it panics.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

/// Whether a tier of `total` members with `ejected` of them ejected is in panic.
pub(crate) fn in_panic(ejected: usize, total: usize, threshold: f64) -> bool {
    ejected > 0 && ejected as f64 > threshold * total as f64
}

/// One priority tier of a snapshot.
pub(crate) struct Tier {
    pub(crate) all: Vec<Arc<Agent>>,
    pub(crate) healthy: Vec<Arc<Agent>>,
}

/// A pool's members grouped into tiers, highest priority first; immutable,
/// rebuilt when registrations or health change.
#[derive(Default)]
pub(crate) struct Tiers {
    pub(crate) tiers: Vec<Tier>,
    pub(crate) healthy: usize,
}

impl Tiers {
    pub(crate) fn build(members: &[Arc<Agent>]) -> Tiers {
        let mut sorted: Vec<Arc<Agent>> = members.to_vec();
        // Stable: equal priorities keep registration order.
        sorted.sort_by_key(|a| std::cmp::Reverse(a.priority));
        let mut tiers: Vec<Tier> = Vec::new();
        let mut healthy = 0;
        for agent in sorted {
            let same = tiers
                .last()
                .is_some_and(|t| t.all[0].priority == agent.priority);
            if !same {
                tiers.push(Tier {
                    all: Vec::new(),
                    healthy: Vec::new(),
                });
            }
            let tier = tiers.last_mut().expect("pushed above");
            if agent.is_healthy() {
                healthy += 1;
                tier.healthy.push(agent.clone());
            }
            tier.all.push(agent);
        }
        Tiers { tiers, healthy }
    }

    /// Applies `pick` (the strategy, already filtering usable agents) under
    /// the tier rule above.
    pub(crate) fn pick(
        &self,
        panic_threshold: f64,
        pick: impl Fn(&[Arc<Agent>]) -> Option<Arc<Agent>>,
    ) -> Option<Arc<Agent>> {
        for tier in &self.tiers {
            if let Some(agent) = pick(&tier.healthy) {
                let ejected = tier.all.len() - tier.healthy.len();
                if in_panic(ejected, tier.all.len(), panic_threshold) {
                    return pick(&tier.all).or(Some(agent));
                }
                return Some(agent);
            }
        }
        if self.healthy > 0 || !in_panic(1, 1, panic_threshold) {
            return None;
        }
        self.tiers.iter().find_map(|tier| pick(&tier.all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_needs_more_than_the_threshold_ejected() {
        assert!(!in_panic(0, 4, 0.0));
        assert!(!in_panic(2, 4, 0.5));
        assert!(in_panic(3, 4, 0.5));
        assert!(in_panic(1, 1, 0.5));
        assert!(!in_panic(4, 4, 1.0), "1.0 turns panic routing off");
    }
}
