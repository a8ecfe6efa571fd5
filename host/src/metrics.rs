//! What the host counts, per tenant: actions, fuel burned, throttled time, failures by kind,
//! queue depth and action latency. Read as a [`MetricsSnapshot`] or as Prometheus text
//! (`metrics/exposition.rs`, through the `prometheus-client` library).
//!
//! Latency is kept in a fixed log-linear histogram (no allocation per sample), from which p50 and
//! p99 are read to within one bucket (12.5%).

mod exposition;

pub use exposition::CONTENT_TYPE;

use crate::failure::FailureKind;
use crate::sandbox::Usage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Sub-buckets per power of two: latencies are kept to within 1/8 (12.5%).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for every `u64` of nanoseconds: `(64 - SUB_BITS + 1) * SUB`.
const BUCKETS: usize = (64 - 3 + 1) * 8;

/// A log-linear histogram of durations (in nanoseconds), with no allocation per sample. Two
/// readings of one subtract ([`Histogram::since`]) to give the quantiles of what happened in
/// between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    /// The samples added up, in nanoseconds.
    sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, sum_ns: 0 }
    }
}

/// The bucket of `ns`: the power of two it falls in, then which eighth of that power.
fn bucket(ns: u64) -> usize {
    let index = if ns < SUB {
        ns
    } else {
        let exp = u64::from(63 - ns.leading_zeros());
        let eighth = (ns >> (exp - u64::from(SUB_BITS))) & (SUB - 1);
        (exp - u64::from(SUB_BITS) + 1) * SUB + eighth
    };
    usize::try_from(index).unwrap_or(BUCKETS - 1).min(BUCKETS - 1)
}

/// The largest value of bucket `index`.
fn upper(index: usize) -> u64 {
    let index = u64::try_from(index).unwrap_or(u64::MAX);
    if index < SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let eighth = index % SUB;
    u64::try_from((u128::from(SUB + eighth + 1) << shift) - 1).unwrap_or(u64::MAX)
}

impl Histogram {
    /// The samples recorded since `earlier`, a reading of this same histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut counts = Box::new([0; BUCKETS]);
        for (n, count) in counts.iter_mut().enumerate() {
            *count = self.counts[n].saturating_sub(earlier.counts[n]);
        }
        Histogram {
            counts,
            total: self.total.saturating_sub(earlier.total),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The samples added up.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// For each of `bounds` (ascending), how many samples fall between the bound before it and
    /// it (to within a bucket: a bucket counts under the first bound that all of it is under).
    pub fn between(&self, bounds: &[Duration]) -> Vec<u64> {
        let mut index = 0;
        bounds
            .iter()
            .map(|bound| {
                let ns = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
                let mut seen = 0;
                while index < BUCKETS && upper(index) <= ns {
                    seen += self.counts[index];
                    index += 1;
                }
                seen
            })
            .collect()
    }

    /// How many samples it holds.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn record(&mut self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The quantile `per_mille`/1000, as the upper bound of the bucket that holds it.
    pub fn quantile(&self, per_mille: u64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = (self.total * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(upper(index));
            }
        }
        Duration::MAX
    }
}

/// Counters of one tenant, kept by the scheduler.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantCounters {
    pub(crate) actions: u64,
    pub(crate) fuel: u64,
    pub(crate) cost: u64,
    pub(crate) worker: Duration,
    pub(crate) host_time: Duration,
    pub(crate) throttled: Duration,
    pub(crate) failures: BTreeMap<FailureKind, u64>,
    pub(crate) sessions_started: u64,
    pub(crate) sessions_finished: u64,
    pub(crate) latency: Histogram,
}

impl TenantCounters {
    /// Counts one completed action.
    pub(crate) fn record_action(&mut self) {
        self.actions += 1;
    }

    /// Adds what (a slice of) an action used.
    pub(crate) fn record_slice(&mut self, usage: &Usage) {
        self.fuel = self.fuel.saturating_add(usage.fuel);
        self.cost = self.cost.saturating_add(usage.cost);
        self.worker = self.worker.saturating_add(usage.running);
        self.host_time = self.host_time.saturating_add(usage.host_time);
    }
}

/// One tenant's figures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TenantMetrics {
    /// The tenant.
    pub tenant: String,
    /// Its weight.
    pub weight: u32,
    /// Actions completed.
    pub actions: u64,
    /// Fuel burned by them.
    pub fuel: u64,
    /// What they were charged (fair share and fuel bucket), in fuel: per action the larger of
    /// the fuel burned and its time (on a worker's CPU, waiting in the host, asleep) at the
    /// host's fuel per second.
    pub cost: u64,
    /// Time its actions held a worker, in µs (time asleep, off the workers, is not counted).
    pub worker_us: u64,
    /// The part of `wall_us` spent in host calls.
    pub host_us: u64,
    /// Time it had work waiting while its fuel bucket was empty.
    pub throttled_ms: u64,
    /// Failures by kind.
    pub failures: BTreeMap<FailureKind, u64>,
    /// Actions waiting in its apps' pending queues.
    pub queue_depth: u64,
    /// Actions running now.
    pub in_flight: u64,
    /// Sessions started by this host (since it started: counters are the process's).
    pub sessions_started: u64,
    /// Sessions that ended in this host: done, failed or cancelled.
    pub sessions_finished: u64,
    /// Median time from an action becoming ready to its completion, in µs.
    pub latency_p50_us: u64,
    /// 99th percentile of the same, in µs.
    pub latency_p99_us: u64,
    /// The latencies themselves (ready to completed), to read quantiles of a window from two
    /// snapshots.
    #[serde(skip)]
    pub latency: Histogram,
}

/// The whole host's figures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Per tenant, by name.
    pub tenants: Vec<TenantMetrics>,
    /// Actions waiting in all pending queues.
    pub queue_depth: u64,
    /// Sessions the host holds.
    pub sessions: u64,
    /// Sessions waiting for a customer (with or without a timer).
    pub waiting: u64,
    /// Sessions set aside when the host started because their stored rows did not decode.
    pub quarantined: u64,
    /// Output streams open (watchers of one session each).
    pub output_streams: u64,
    /// Whether the store takes writes (false during an outage).
    pub store_up: bool,
    /// Group commits that failed because the store was unavailable, since the host started.
    pub store_failures: u64,
    /// Group commits: how many, their writes, how long each took.
    pub commits: CommitStats,
    /// Writes the store refused because another host holds their session's shard now.
    pub fenced_writes: u64,
    /// Compiled modules: how deploys got theirs, how many are held, loaded again and evicted.
    pub modules: crate::runtime::CompileStats,
    /// The shard leases this host holds, on a PostgreSQL store (filled in by whoever knows the
    /// store: the server).
    pub cluster: Option<ClusterMetrics>,
}

/// Group commits since the host started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CommitStats {
    /// Groups committed (or failed).
    pub groups: u64,
    /// Writes in them.
    pub writes: u64,
    /// How long each group's commit took.
    #[serde(skip)]
    pub latency: Histogram,
}

/// A cluster host's shard leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterMetrics {
    /// Shards of the database.
    pub shards: u32,
    /// Shards whose lease this host holds now.
    pub held: u32,
    /// Of those, the ones it took over (held by a host before).
    pub taken_over: u32,
}

impl TenantMetrics {
    pub(crate) fn new(tenant: &str, weight: u32, counters: &TenantCounters, queue_depth: u64, in_flight: u64) -> Self {
        TenantMetrics {
            tenant: tenant.to_owned(),
            weight,
            actions: counters.actions,
            fuel: counters.fuel,
            cost: counters.cost,
            worker_us: micros(counters.worker),
            host_us: micros(counters.host_time),
            throttled_ms: u64::try_from(counters.throttled.as_millis()).unwrap_or(u64::MAX),
            failures: counters.failures.clone(),
            queue_depth,
            in_flight,
            sessions_started: counters.sessions_started,
            sessions_finished: counters.sessions_finished,
            latency_p50_us: micros(counters.latency.quantile(500)),
            latency_p99_us: micros(counters.latency.quantile(990)),
            latency: counters.latency.clone(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl MetricsSnapshot {
    /// The snapshot in the Prometheus (OpenMetrics) text format ([`CONTENT_TYPE`]).
    pub fn prometheus(&self) -> String {
        exposition::encode(self)
    }

    /// One tenant's figures.
    pub fn tenant(&self, name: &str) -> Option<&TenantMetrics> {
        self.tenants.iter().find(|t| t.tenant == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_and_quantiles_land_within_one() {
        for ns in [0, 1, 7, 8, 9, 15, 16, 17, 1000, 123_456_789, u64::MAX] {
            let index = bucket(ns);
            assert!(upper(index) >= ns, "{ns} above its bucket {index}");
            assert!(index == 0 || upper(index - 1) < ns, "{ns} belongs to an earlier bucket");
        }
        let mut h = Histogram::default();
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let bounds = [Duration::from_micros(100), Duration::from_millis(1)];
        let between = h.between(&bounds);
        assert!((88..=100).contains(&between[0]), "{between:?}");
        assert_eq!(between[0] + between[1] + (h.count() - between.iter().sum::<u64>()), 1000);
        assert!(between[1] >= 880, "{between:?}");
        assert_eq!(h.sum(), Duration::from_micros(500_500));
        let p50 = h.quantile(500).as_micros();
        let p99 = h.quantile(990).as_micros();
        assert!((500..=563).contains(&p50), "{p50}");
        assert!((990..=1114).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile(500), Duration::ZERO);
    }
}
