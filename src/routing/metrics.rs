//! Per-agent counters and latency distribution, cheap enough to leave on:
//! recording is a few relaxed atomic adds; reading builds a [`AgentMetrics`].

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Latencies below this many microseconds get one bucket each.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two above that (relative error ≤ 1/4).
const SUB: u64 = 4;
const BUCKETS: usize = (LINEAR + 60 * SUB) as usize;
/// How fast the latency estimate forgets: older samples weigh e^(-age/τ).
const EWMA_TAU_SECS: f64 = 10.0;

/// What `get_metrics()` reports for one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentMetrics {
    /// Finished invocations (successes + failures).
    pub total: u64,
    /// Invocations the agent answered.
    pub successes: u64,
    /// Tool errors, agent failures and timeouts.
    pub failures: u64,
    /// `successes / total`, 1.0 while nothing has finished.
    pub success_rate: f64,
    /// Mean latency of finished invocations, in ms.
    pub avg_latency_ms: f64,
    /// Median latency estimate, in ms.
    pub p50_latency_ms: f64,
    /// 99th percentile latency estimate, in ms.
    pub p99_latency_ms: f64,
    /// Invocations running now.
    pub active_tasks: u64,
    /// Current health as the router sees it.
    pub healthy: bool,
    /// Calls dropped by their caller while this agent was running them.
    #[serde(default)]
    pub cancelled: u64,
    /// Outcomes of this agent's calls that could not be stored.
    #[serde(default)]
    pub outcome_write_failures: u64,
    /// Calls routed to it while it was ejected (panic routing).
    #[serde(default)]
    pub panic_calls: u64,
}

/// Live counters of one agent; outlives re-registrations of the same id.
pub(crate) struct AgentStats {
    pub(crate) active: AtomicU64,
    total: AtomicU64,
    successes: AtomicU64,
    latency_sum_us: AtomicU64,
    histogram: Box<[AtomicU64]>,
    ewma: Mutex<Ewma>,
    pub(crate) cancelled: AtomicU64,
    pub(crate) outcome_write_failures: AtomicU64,
    pub(crate) panic_calls: AtomicU64,
}

struct Ewma {
    /// Peak-EWMA of latency in microseconds; `None` until the first sample.
    value: Option<f64>,
    at: Instant,
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros() as u64; // ≥ 4
    let sub = (us >> (msb - 2)) & (SUB - 1);
    ((LINEAR + (msb - 4) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The upper edge (exclusive) of a bucket, in microseconds.
fn bucket_upper(index: usize) -> u64 {
    let i = index as u64;
    if i < LINEAR {
        return i + 1;
    }
    let msb = (i - LINEAR) / SUB + 4;
    let sub = (i - LINEAR) % SUB;
    (1u64 << msb) + (sub + 1) * (1u64 << (msb - 2))
}

impl Default for AgentStats {
    fn default() -> Self {
        AgentStats {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ewma: Mutex::new(Ewma {
                value: None,
                at: Instant::now(),
            }),
            cancelled: AtomicU64::new(0),
            outcome_write_failures: AtomicU64::new(0),
            panic_calls: AtomicU64::new(0),
        }
    }
}

impl AgentStats {
    /// Records a finished invocation. `cost` is what the latency estimate
    /// learns: the real latency on success, a penalty on failure so that an
    /// agent failing fast does not look fast.
    pub(crate) fn record(&self, success: bool, latency: Duration, cost: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.total.fetch_add(1, Relaxed);
        if success {
            self.successes.fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(us, Relaxed);
        self.histogram[bucket_of(us)].fetch_add(1, Relaxed);
        let sample = cost.as_secs_f64() * 1e6;
        let mut ewma = self.ewma.lock();
        let now = Instant::now();
        ewma.value = Some(match ewma.value {
            None => sample,
            // Peak-sensitive: a slower sample takes over at once, a faster one
            // is blended in, so the estimate reacts to trouble immediately.
            Some(old) if sample > old => sample,
            Some(old) => {
                let w = (-(now - ewma.at).as_secs_f64() / EWMA_TAU_SECS).exp();
                old * w + sample * (1.0 - w)
            }
        });
        ewma.at = now;
    }

    /// The latency estimate decayed to now, in microseconds; `None` for an agent
    /// never measured (the router tries those first). Decaying on read lets an
    /// agent that was slow long ago earn another try.
    pub(crate) fn latency_estimate(&self) -> Option<f64> {
        let ewma = self.ewma.lock();
        let v = ewma.value?;
        Some(v * (-ewma.at.elapsed().as_secs_f64() / EWMA_TAU_SECS).exp())
    }

    /// The latency distribution as a Prometheus histogram: per-bucket counts
    /// for the upper bounds `bounds_secs` (ascending) then `+Inf`, the sum in
    /// seconds, and the count. A fine bucket is counted under the first bound
    /// at or above its upper edge, so a bound's count never includes a slower
    /// sample (it may miss a few just under it).
    pub(crate) fn latency_histogram(&self, bounds_secs: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
        let mut buckets: Vec<(f64, u64)> = bounds_secs
            .iter()
            .map(|b| (*b, 0))
            .chain(std::iter::once((f64::INFINITY, 0)))
            .collect();
        let mut count = 0;
        for (i, b) in self.histogram.iter().enumerate() {
            let n = b.load(Relaxed);
            if n == 0 {
                continue;
            }
            count += n;
            let upper_secs = bucket_upper(i) as f64 / 1e6;
            let slot = buckets
                .iter()
                .position(|(bound, _)| upper_secs <= *bound)
                .unwrap_or(buckets.len() - 1);
            buckets[slot].1 += n;
        }
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        (buckets, sum, count)
    }

    pub(crate) fn snapshot(&self, healthy: bool) -> AgentMetrics {
        let total = self.total.load(Relaxed);
        let successes = self.successes.load(Relaxed).min(total);
        let counts: Vec<u64> = self.histogram.iter().map(|b| b.load(Relaxed)).collect();
        let quantile = |q: f64| -> f64 {
            let n: u64 = counts.iter().sum();
            if n == 0 {
                return 0.0;
            }
            let rank = ((q * n as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_upper(i) as f64 / 1000.0;
                }
            }
            0.0
        };
        AgentMetrics {
            total,
            successes,
            failures: total - successes,
            success_rate: if total == 0 {
                1.0
            } else {
                successes as f64 / total as f64
            },
            avg_latency_ms: if total == 0 {
                0.0
            } else {
                self.latency_sum_us.load(Relaxed) as f64 / total as f64 / 1000.0
            },
            p50_latency_ms: quantile(0.50),
            p99_latency_ms: quantile(0.99),
            active_tasks: self.active.load(Relaxed),
            healthy,
            cancelled: self.cancelled.load(Relaxed),
            outcome_write_failures: self.outcome_write_failures.load(Relaxed),
            panic_calls: self.panic_calls.load(Relaxed),
        }
    }
}

/// The bucket bounds (seconds) the MCP semantic convention advises for
/// its operation-duration histograms.
pub(crate) const MCP_DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// What one series of an [`OperationDurations`] is about: the MCP method,
/// the tool or prompt (`target`, empty when there is none) and, for a
/// failed operation, its `error.type`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OperationLabels {
    pub(crate) method: &'static str,
    pub(crate) target: String,
    pub(crate) error_type: Option<&'static str>,
}

/// One series as Prometheus renders it: its labels, each bound's own
/// count (the last `+Inf`), the sum in seconds and the count.
pub(crate) type OperationSeries = (OperationLabels, Vec<(f64, u64)>, f64, u64);

/// One histogram of [`MCP_DURATION_BOUNDS`] (the last count is +Inf).
#[derive(Debug, Default)]
struct DurationSeries {
    counts: [AtomicU64; MCP_DURATION_BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

/// MCP operation durations by method, target and error: recording a known
/// series is a read lock, two lookups without allocating and two relaxed
/// atomic adds; a new series (a tool first called, or failing a new way)
/// takes the write lock once.
#[derive(Debug, Default)]
pub(crate) struct OperationDurations {
    /// By (method, error type), then by target.
    series: parking_lot::RwLock<Kinds>,
}

type Kinds = HashMap<(&'static str, Option<&'static str>), HashMap<String, DurationSeries>>;

impl OperationDurations {
    /// Counts one `method` operation on `target` that took `elapsed` and
    /// failed with `error_type` (`None`: it succeeded).
    pub(crate) fn record(
        &self,
        method: &'static str,
        target: &str,
        error_type: Option<&'static str>,
        elapsed: Duration,
    ) {
        let secs = elapsed.as_secs_f64();
        let bucket = MCP_DURATION_BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(MCP_DURATION_BOUNDS.len());
        let add = |series: &DurationSeries| {
            series.counts[bucket].fetch_add(1, Relaxed);
            let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            series.sum_us.fetch_add(us, Relaxed);
        };
        let kind = (method, error_type);
        if let Some(series) = self.series.read().get(&kind).and_then(|t| t.get(target)) {
            add(series);
            return;
        }
        let mut all = self.series.write();
        add(all
            .entry(kind)
            .or_default()
            .entry(target.to_string())
            .or_default());
    }

    /// Every series as a Prometheus histogram (each bound's own count, as
    /// the encoder takes them; sum in seconds; count), sorted by labels.
    pub(crate) fn snapshot(&self) -> Vec<OperationSeries> {
        let all = self.series.read();
        let mut rows: Vec<_> = all
            .iter()
            .flat_map(|(&(method, error_type), targets)| {
                targets.iter().map(move |(target, s)| {
                    let mut seen = 0;
                    let mut buckets = Vec::with_capacity(s.counts.len());
                    for (i, count) in s.counts.iter().enumerate() {
                        let count = count.load(Relaxed);
                        seen += count;
                        let bound = MCP_DURATION_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
                        buckets.push((bound, count));
                    }
                    let labels = OperationLabels {
                        method,
                        target: target.clone(),
                        error_type,
                    };
                    (labels, buckets, s.sum_us.load(Relaxed) as f64 / 1e6, seen)
                })
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_durations_fall_in_the_conventions_buckets_per_series() {
        let durations = OperationDurations::default();
        durations.record("tools/call", "echo", None, Duration::from_millis(15));
        durations.record("tools/call", "echo", None, Duration::from_secs(400));
        durations.record(
            "tools/call",
            "echo",
            Some("tool_error"),
            Duration::from_millis(1),
        );
        let rows = durations.snapshot();
        assert_eq!(rows.len(), 2);
        let (labels, buckets, sum, count) = &rows[0];
        assert_eq!(labels.error_type, None);
        assert_eq!(*count, 2);
        assert!((sum - 400.015).abs() < 1e-6, "{sum}");
        // 15 ms is above 0.01 s, within 0.02 s; 400 s only in +Inf.
        assert_eq!(buckets[0], (0.01, 0));
        assert_eq!(buckets[1], (0.02, 1));
        assert_eq!(buckets[13], (300.0, 0));
        assert_eq!(buckets[14], (f64::INFINITY, 1));
        assert_eq!(rows[1].0.error_type, Some("tool_error"));
        assert_eq!(rows[1].1[0], (0.01, 1));
    }

    #[test]
    fn buckets_cover_and_bound_their_values() {
        for us in [0, 1, 15, 16, 17, 100, 1000, 12345, 1 << 30, u64::MAX / 2] {
            let b = bucket_of(us);
            assert!(
                us < bucket_upper(b),
                "{us} in bucket {b} < {}",
                bucket_upper(b)
            );
            if b > 0 && b < BUCKETS - 1 {
                assert!(us >= bucket_upper(b - 1), "{us} above the previous bucket");
            }
        }
    }

    #[test]
    fn counts_and_quantiles() {
        let stats = AgentStats::default();
        for _ in 0..98 {
            stats.record(true, Duration::from_millis(1), Duration::from_millis(1));
        }
        for _ in 0..2 {
            stats.record(
                false,
                Duration::from_millis(100),
                Duration::from_millis(100),
            );
        }
        let m = stats.snapshot(true);
        assert_eq!((m.total, m.successes, m.failures), (100, 98, 2));
        assert!((m.success_rate - 0.98).abs() < 1e-9);
        assert!(
            m.p50_latency_ms >= 1.0 && m.p50_latency_ms <= 1.25,
            "{}",
            m.p50_latency_ms
        );
        assert!(
            m.p99_latency_ms >= 100.0 && m.p99_latency_ms <= 125.0,
            "{}",
            m.p99_latency_ms
        );
        assert!(
            (m.avg_latency_ms - 2.98).abs() < 0.01,
            "{}",
            m.avg_latency_ms
        );
    }

    #[test]
    fn histogram_buckets_never_hold_slower_samples() {
        let stats = AgentStats::default();
        for ms in [1, 1, 3, 40, 2000] {
            let d = Duration::from_millis(ms);
            stats.record(true, d, d);
        }
        let (buckets, sum, count) = stats.latency_histogram(&[0.002, 0.05, 1.0]);
        assert_eq!(count, 5);
        assert!((sum - 2.045).abs() < 1e-6, "{sum}");
        let counts: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [2, 2, 0, 1]);
        assert!(buckets[3].0.is_infinite());
    }

    #[test]
    fn slow_samples_take_over_the_estimate_at_once() {
        let stats = AgentStats::default();
        assert_eq!(stats.latency_estimate(), None);
        stats.record(true, Duration::from_millis(1), Duration::from_millis(1));
        stats.record(true, Duration::from_millis(50), Duration::from_millis(50));
        assert!(stats.latency_estimate().unwrap() > 45_000.0);
    }
}

/// Dispatcher-wide counters the per-agent stats do not cover; the dispatcher
/// increments them, `/metrics` reads them.
#[derive(Debug, Default)]
pub(crate) struct DispatchCounters {
    /// Candidates a policy refused (the call moved on to another agent).
    pub(crate) policy_denials: AtomicU64,
    /// Candidates a rate limit refused.
    pub(crate) rate_limited: AtomicU64,
    /// Retryable agent failures after which another agent could be tried.
    pub(crate) failovers: AtomicU64,
    /// MCP requests served on `/mcp` and stdio (`mcp.server.operation.duration`).
    pub(crate) mcp_server: OperationDurations,
    /// MCP requests sent to MCP agents (`mcp.client.operation.duration`).
    pub(crate) mcp_client: OperationDurations,
}

impl DispatchCounters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
