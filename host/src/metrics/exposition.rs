//! The Prometheus (OpenMetrics text) exposition of a [`MetricsSnapshot`], through the
//! `prometheus-client` library: a registry is filled from the snapshot at each scrape, so the
//! figures stay where the scheduler keeps them (under its lock, no atomics per action) and the
//! text, its escaping and its types are the library's.
//!
//! Counters count since this host started, as Prometheus expects of a process (`rate()` reads
//! across restarts). Labels are the tenant (as many as the operator made) and the failure kind
//! (a fixed list): their cardinality is bounded.

use super::{MetricsSnapshot, TenantMetrics};
use crate::failure::FailureKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    tenant: String,
    kind: String,
}

/// The bounds of the latency histogram's buckets, in seconds.
const LATENCY_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A family of latency histograms (one per label set), encoded from the host's own
/// (log-linear, finer) ones.
#[derive(Debug)]
struct Latencies<L> {
    name: &'static str,
    help: &'static str,
    rows: Vec<(L, super::Histogram)>,
}

impl<L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> Collector for Latencies<L> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (labels, histogram) in &self.rows {
            // Each bucket's own count (the library adds them up).
            let counts = histogram.between(&LATENCY_BOUNDS.map(Duration::from_secs_f64));
            let rest = histogram.count() - counts.iter().sum::<u64>();
            let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS.iter().copied().zip(counts).collect();
            buckets.push((f64::INFINITY, rest));
            let sum = histogram.sum().as_secs_f64();
            family.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, histogram.count(), &buckets, None)?;
        }
        Ok(())
    }
}

/// Registers a per-tenant family, its value for each tenant read by `value`.
fn per_tenant<M>(
    registry: &mut Registry,
    tenants: &[TenantMetrics],
    (name, help, unit): (&str, &str, Option<Unit>),
    value: impl Fn(&M, &TenantMetrics),
) where
    M: EncodeMetric + prometheus_client::metrics::TypedMetric + Default + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<TenantLabel, M>::default();
    for tenant in tenants {
        value(&family.get_or_create(&TenantLabel { tenant: tenant.tenant.clone() }), tenant);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

fn micros_as_seconds(us: u64) -> f64 {
    Duration::from_micros(us).as_secs_f64()
}

/// The snapshot as OpenMetrics text.
pub(super) fn encode(snapshot: &MetricsSnapshot) -> String {
    let mut registry = Registry::with_prefix("turnstile");
    let tenants = &snapshot.tenants;
    let counter = |read: fn(&TenantMetrics) -> u64| {
        move |c: &Counter, t: &TenantMetrics| {
            c.inc_by(read(t));
        }
    };
    let seconds = |read: fn(&TenantMetrics) -> f64| {
        move |c: &Counter<f64, AtomicU64>, t: &TenantMetrics| {
            c.inc_by(read(t));
        }
    };
    let gauge = |read: fn(&TenantMetrics) -> u64| {
        move |g: &Gauge, t: &TenantMetrics| {
            g.set(i64::try_from(read(t)).unwrap_or(i64::MAX));
        }
    };
    per_tenant(&mut registry, tenants, ("actions", "Actions completed", None), counter(|t| t.actions));
    per_tenant(&mut registry, tenants, ("fuel_burned", "Fuel burned by actions", None), counter(|t| t.fuel));
    per_tenant(
        &mut registry,
        tenants,
        (
            "cost_fuel",
            "What actions were charged, in fuel: the larger of fuel burned and time (CPU, host waits, sleeps) at the host's fuel per second",
            None,
        ),
        counter(|t| t.cost),
    );
    per_tenant(
        &mut registry,
        tenants,
        ("action", "Time actions held a worker (asleep, off the workers, not counted)", Some(Unit::Seconds)),
        seconds(|t| micros_as_seconds(t.worker_us)),
    );
    per_tenant(
        &mut registry,
        tenants,
        ("host_call", "Time actions spent inside host calls", Some(Unit::Seconds)),
        seconds(|t| micros_as_seconds(t.host_us)),
    );
    per_tenant(
        &mut registry,
        tenants,
        ("throttled", "Time with work waiting on an empty fuel bucket", Some(Unit::Seconds)),
        seconds(|t| t.throttled_ms as f64 / 1000.0),
    );
    per_tenant(
        &mut registry,
        tenants,
        ("queue_depth", "Actions waiting in pending queues", None),
        gauge(|t| t.queue_depth),
    );
    per_tenant(&mut registry, tenants, ("in_flight", "Actions running", None), gauge(|t| t.in_flight));
    per_tenant(
        &mut registry,
        tenants,
        ("sessions_started", "Sessions started by this host", None),
        counter(|t| t.sessions_started),
    );
    per_tenant(
        &mut registry,
        tenants,
        ("sessions_finished", "Sessions that ended in this host: done, failed or cancelled", None),
        counter(|t| t.sessions_finished),
    );
    let failures = Family::<FailureLabels, Counter>::default();
    for tenant in tenants {
        for kind in FailureKind::ALL {
            let labels = FailureLabels { tenant: tenant.tenant.clone(), kind: kind.as_str().to_owned() };
            failures.get_or_create(&labels).inc_by(tenant.failures.get(&kind).copied().unwrap_or(0));
        }
    }
    registry.register("action_failures", "Failed actions by kind", failures);
    registry.register_collector(Box::new(Latencies {
        name: "action_latency",
        help: "Ready-to-completed time of actions.",
        rows: tenants.iter().map(|t| (TenantLabel { tenant: t.tenant.clone() }, t.latency.clone())).collect(),
    }));
    registry.register_collector(Box::new(Latencies {
        name: "commit_latency",
        help: "Time one group commit took (one transaction, with the writes of every tenant in it).",
        rows: vec![(Vec::<(String, String)>::new(), snapshot.commits.latency.clone())],
    }));
    let host_gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    };
    host_gauge(&mut registry, "sessions", "Sessions held", snapshot.sessions);
    host_gauge(&mut registry, "sessions_waiting", "Sessions waiting for a customer", snapshot.waiting);
    host_gauge(
        &mut registry,
        "sessions_quarantined",
        "Stored sessions set aside at start because they did not decode",
        snapshot.quarantined,
    );
    host_gauge(&mut registry, "output_streams", "Output streams open", snapshot.output_streams);
    host_gauge(
        &mut registry,
        "store_up",
        "Whether the store takes writes (0 during an outage: new work is refused, checkpoints retried)",
        u64::from(snapshot.store_up),
    );
    let host_counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    };
    host_counter(
        &mut registry,
        "store_failed_commits",
        "Group commits that failed because the store was unavailable",
        snapshot.store_failures,
    );
    host_counter(&mut registry, "commits", "Group commits", snapshot.commits.groups);
    host_counter(&mut registry, "committed_writes", "Writes in group commits", snapshot.commits.writes);
    host_counter(
        &mut registry,
        "fenced_writes",
        "Writes refused because another host holds their session's shard now",
        snapshot.fenced_writes,
    );
    host_gauge(
        &mut registry,
        "modules_loaded",
        "Compiled modules held in memory (those no session held or asked for lately are evicted)",
        snapshot.modules.loaded,
    );
    host_counter(
        &mut registry,
        "module_reloads",
        "Stored modules loaded without a deploy: at start for resumed sessions, and after an eviction",
        snapshot.modules.reloads,
    );
    host_counter(
        &mut registry,
        "modules_evicted",
        "Unused compiled modules evicted from memory",
        snapshot.modules.evicted,
    );
    if let Some(cluster) = snapshot.cluster {
        host_gauge(&mut registry, "cluster_shards", "Shards of the shared database", u64::from(cluster.shards));
        host_gauge(
            &mut registry,
            "cluster_shards_held",
            "Shards whose lease this host holds now",
            u64::from(cluster.held),
        );
        host_gauge(
            &mut registry,
            "cluster_shards_taken_over",
            "Shards this host took over from a host that held them before",
            u64::from(cluster.taken_over),
        );
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
