//! How agents are checked ([`HealthCheckConfig`]): the probe interval and
//! timeout that `health.rs` runs rounds with, the thresholds `outlier.rs`
//! ejects and re-admits by, and the panic threshold the router applies.
//! A leaf below both, so neither imports the other for it.

use super::tiers::DEFAULT_PANIC_THRESHOLD;
use std::time::Duration;

/// How agents are checked. Builder style:
/// `HealthCheckConfig::new().interval(Duration::from_secs(30)).unhealthy_threshold(3)`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckConfig {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) healthy_threshold: u32,
    pub(crate) panic_threshold: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

impl HealthCheckConfig {
    /// Defaults: probe every 30 s with a 5 s timeout; 3 failures in a row mark
    /// an agent unhealthy, 2 successful probes in a row healthy again.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time between probe rounds (at least 1 ms). Local agents marked unhealthy
    /// are let back in for a trial call after one interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one probe may take (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Consecutive failures (probes or retryable invocation failures) that
    /// mark an agent unhealthy (at least 1).
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n.max(1);
        self
    }

    /// Consecutive successes (probes, or calls that reached an ejected agent
    /// in panic routing) that mark an unhealthy agent healthy (at least 1).
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n.max(1);
        self
    }

    /// The share of a priority tier that may be ejected (default 0.5) before
    /// the tier panics and routes to all its members, ejected ones included,
    /// rather than piling its load on the few left; a category with no
    /// healthy agent at all routes to its ejected agents rather than failing
    /// every call. Clamped to 0.0..=1.0; 1.0 turns panic routing off.
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = if share.is_nan() {
            DEFAULT_PANIC_THRESHOLD
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }
}
