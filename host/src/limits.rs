//! The operator's policy for a tenant: its share and quotas ([`TenantConfig`]), the limits its
//! code runs under per action ([`Limits`]: fuel, memory, wall time, bytes), and the caps every
//! module meets at deploy ([`DeployLimits`], checked before anything is compiled).
//!
//! Every field is validated ([`TenantConfig::validate`]) against bounds that keep the host safe
//! whatever an operator types: a wall time of zero or of 2^64 seconds, a zero fuel cap, or a
//! state of 4 GiB are refused with the field named, not accepted to fail later.

use crate::error::Error;
use std::time::Duration;

/// A tenant's share of the pool, its quotas and the limits of its actions. The operator sets it
/// when creating the tenant and may change it at any time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Its share of the pool relative to other tenants' weights (1..=1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: u32,
    /// Fuel its actions may burn per second, sustained.
    #[schema(minimum = 1, maximum = 1125899906842624_i64)]
    pub fuel_per_second: u64,
    /// Fuel it may burn in a burst (at least one action's cap).
    #[schema(minimum = 1000, maximum = 1152921504606846976_i64)]
    pub fuel_burst: u64,
    /// Actions of one of its apps in the action list at once.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: u32,
    /// Actions of all its apps in flight at once (0: as many as there are workers). In any case
    /// a tenant whose actions are long never runs on more than all workers but one while a
    /// tenant with short actions is active or another tenant has work ready, unless all of those
    /// have long actions too and it is the one owed the most by the fair share.
    #[schema(minimum = 0, maximum = 10000)]
    pub max_concurrent: u32,
    /// Sessions it may have open (not finished) at once.
    #[schema(minimum = 1, maximum = 100000000)]
    pub max_sessions: u64,
    /// Finished sessions it may hold until their retention has passed and they are purged (each
    /// keeps its result, counters and outputs; its state is dropped when it finishes).
    #[schema(minimum = 1, maximum = 1000000000)]
    pub max_finished_sessions: u64,
    /// Apps it may have.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_apps: u32,
    /// Versions one of its apps may have.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_versions: u32,
    /// Modules it may deploy a minute (its deploys also run one at a time).
    #[schema(minimum = 1, maximum = 10000)]
    pub deploys_per_minute: u32,
    /// What each of its actions may use.
    pub limits: Limits,
    /// A suspended tenant's sessions and events are refused and its queued actions wait.
    pub suspended: bool,
    /// Output streams (SSE) it may hold open at once: no tenant takes every connection.
    #[schema(minimum = 1, maximum = 100000)]
    pub max_streams: u32,
    /// Bytes its key-value space may hold (keys and values).
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 1024, maximum = 1099511627776_i64)]
    pub max_kv_bytes: u64,
    /// Bytes of outputs the store may keep for its sessions (until they are purged).
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 1024, maximum = 17592186044416_i64)]
    pub max_stored_output_bytes: u64,
    /// Idempotency keys the store may keep for its sessions' events.
    #[schema(minimum = 1, maximum = 4294967296_i64)]
    pub max_event_keys: u64,
    /// Bytes of modules the store may keep for every version of its apps.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 1024, maximum = 1099511627776_i64)]
    pub max_module_bytes: u64,
    /// How long its finished sessions are kept (1 s to 10 years); the host's `retention` when
    /// not set.
    #[serde(with = "crate::human::optional_duration", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "30d")]
    pub retention: Option<Duration>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            weight: 1,
            fuel_per_second: 10_000_000_000,
            fuel_burst: 1_000_000_000,
            max_in_flight: 1,
            max_concurrent: 0,
            max_sessions: 100_000,
            max_finished_sessions: 1_000_000,
            max_apps: 100,
            max_versions: 100,
            deploys_per_minute: 30,
            limits: Limits::default(),
            suspended: false,
            max_streams: 256,
            max_kv_bytes: 64 << 20,
            max_stored_output_bytes: 1 << 30,
            max_event_keys: 1_000_000,
            max_module_bytes: 256 << 20,
            retention: None,
        }
    }
}

/// The longest retention a tenant may be given, in seconds: ten years.
const MAX_RETENTION_SECS: u64 = 10 * 365 * 86_400;

/// Checks that `value` of `field` is within `range`, naming the field otherwise.
fn within<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), Error> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidConfig { field, problem: format!("{value} is outside {}..={}", range.start(), range.end()) })
    }
}

impl TenantConfig {
    /// Refuses any field outside the bounds the host can honour; `pool_memory_bytes` is the
    /// pool's slot size, above which no memory limit can be kept.
    pub fn validate(&self, pool_memory_bytes: usize) -> Result<(), Error> {
        within("weight", self.weight, 1..=1000)?;
        within("fuel_per_second", self.fuel_per_second, 1..=1 << 50)?;
        within("fuel_burst", self.fuel_burst, self.limits.fuel_per_action..=1 << 60)?;
        within("max_in_flight", self.max_in_flight, 1..=1000)?;
        within("max_concurrent", self.max_concurrent, 0..=10_000)?;
        within("max_sessions", self.max_sessions, 1..=100_000_000)?;
        within("max_finished_sessions", self.max_finished_sessions, 1..=1_000_000_000)?;
        within("max_apps", self.max_apps, 1..=10_000)?;
        within("max_versions", self.max_versions, 1..=10_000)?;
        within("deploys_per_minute", self.deploys_per_minute, 1..=10_000)?;
        within("max_streams", self.max_streams, 1..=100_000)?;
        within("max_kv_bytes", self.max_kv_bytes, 1024..=1 << 40)?;
        within("max_stored_output_bytes", self.max_stored_output_bytes, 1024..=1 << 44)?;
        within("max_event_keys", self.max_event_keys, 1..=1 << 32)?;
        within("max_module_bytes", self.max_module_bytes, 1024..=1 << 40)?;
        if let Some(retention) = self.retention {
            within("retention", retention.as_secs(), 1..=MAX_RETENTION_SECS)?;
        }
        self.limits.validate(pool_memory_bytes)
    }
}

/// What one action may use and produce. The operator sets these per tenant; the defaults suit an
/// IVR or chat script with room to spare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) one action may burn.
    #[schema(minimum = 1000, maximum = 1099511627776_i64)]
    pub fuel_per_action: u64,
    /// Bytes of linear memory one instance may grow to.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 65536)]
    pub memory_bytes: usize,
    /// Elements one table may grow to.
    #[schema(minimum = 0, maximum = 10000000)]
    pub table_elements: usize,
    /// Wall-clock time one action may run: the backstop for what fuel does not meter.
    #[serde(with = "crate::human::duration")]
    #[schema(value_type = String, example = "250ms")]
    pub wall_time: Duration,
    /// Bytes of session state.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 0, maximum = 16777216)]
    pub max_state_bytes: usize,
    /// Output events one action may emit.
    #[schema(minimum = 0, maximum = 10000)]
    pub max_outputs: usize,
    /// Bytes of output events one action may emit, all together.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 0, maximum = 16777216)]
    pub max_output_bytes: usize,
    /// Bytes of one key.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 1, maximum = 4096)]
    pub max_kv_key_bytes: usize,
    /// Bytes of key-value writes (keys and values) one action may make.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 0, maximum = 67108864)]
    pub max_kv_write_bytes: usize,
    /// Bytes of one customer event (the input of an action).
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 0, maximum = 16777216)]
    pub max_input_bytes: usize,
    /// Bytes of guest log (and captured stdout/stderr) kept per action; past it lines are dropped.
    #[serde(deserialize_with = "crate::human::bytes")]
    #[schema(value_type = u64, minimum = 0, maximum = 1048576)]
    pub max_log_bytes: usize,
    /// Actions one session may run in all: the loop guard.
    #[schema(minimum = 1, maximum = 100000000)]
    pub max_actions_per_session: u64,
}

impl Limits {
    /// Refuses any limit outside the bounds the host can honour (see the module docs).
    pub fn validate(&self, pool_memory_bytes: usize) -> Result<(), Error> {
        within("limits.fuel_per_action", self.fuel_per_action, 1_000..=1 << 40)?;
        within("limits.memory_bytes", self.memory_bytes, 64 << 10..=pool_memory_bytes)?;
        within("limits.table_elements", self.table_elements, 0..=10_000_000)?;
        let wall_ms = u64::try_from(self.wall_time.as_millis()).unwrap_or(u64::MAX);
        within("limits.wall_time (ms)", wall_ms, 1..=600_000)?;
        within("limits.max_state_bytes", self.max_state_bytes, 0..=16 << 20)?;
        within("limits.max_outputs", self.max_outputs, 0..=10_000)?;
        within("limits.max_output_bytes", self.max_output_bytes, 0..=16 << 20)?;
        within("limits.max_kv_key_bytes", self.max_kv_key_bytes, 1..=4096)?;
        within("limits.max_kv_write_bytes", self.max_kv_write_bytes, 0..=64 << 20)?;
        within("limits.max_input_bytes", self.max_input_bytes, 0..=16 << 20)?;
        within("limits.max_log_bytes", self.max_log_bytes, 0..=1 << 20)?;
        within("limits.max_actions_per_session", self.max_actions_per_session, 1..=100_000_000)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_action: 50_000_000,
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            wall_time: Duration::from_secs(1),
            max_state_bytes: 64 << 10,
            max_outputs: 64,
            max_output_bytes: 64 << 10,
            max_kv_key_bytes: 256,
            max_kv_write_bytes: 256 << 10,
            max_input_bytes: 64 << 10,
            max_log_bytes: 16 << 10,
            max_actions_per_session: 10_000,
        }
    }
}

/// Caps checked on a module's bytes before it is compiled, and the bounds its compile runs under,
/// so compiling can't be made a denial of service, and so no instance can ask for more than the
/// pool has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployLimits {
    /// Bytes of the module.
    pub max_module_bytes: usize,
    /// Functions defined by the module.
    pub max_functions: u32,
    /// Bytes of one function body.
    pub max_function_body_bytes: usize,
    /// Locals of one function.
    pub max_locals: u32,
    /// Bytes of all function bodies together.
    pub max_code_bytes: usize,
    /// Compile cost of one function: its locals times its branch points (see the README).
    pub max_function_cost: u64,
    /// Compile cost of all functions together.
    pub max_module_cost: u64,
    /// Compiles at once (each on one thread); a tenant compiles one module at a time.
    pub compile_slots: usize,
    /// How long one compile may take before its module is refused `compile_timeout`.
    pub compile_timeout: Duration,
    /// Data segments.
    pub max_data_segments: u32,
    /// The largest memory (declared maximum, or minimum when there is no maximum), in bytes.
    pub max_memory_bytes: u64,
    /// The largest table (declared maximum, or minimum when there is no maximum), in elements.
    pub max_table_elements: u64,
}

impl Default for DeployLimits {
    fn default() -> Self {
        DeployLimits {
            max_module_bytes: 16 << 20,
            max_functions: 50_000,
            max_function_body_bytes: 1 << 20,
            max_locals: 50_000,
            max_code_bytes: 8 << 20,
            max_function_cost: 2_000_000,
            max_module_cost: 10_000_000,
            compile_slots: 2,
            compile_timeout: Duration::from_secs(10),
            max_data_segments: 10_000,
            max_memory_bytes: 256 << 20,
            max_table_elements: 100_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Limits, TenantConfig};
    use serde_json::{Value, json};
    use utoipa::PartialSchema;

    /// Each field's bounds in the OpenAPI schema, as `(path, minimum, maximum)`.
    fn documented_bounds() -> Vec<(Vec<String>, Option<u64>, Option<u64>)> {
        let mut bounds = Vec::new();
        for (prefix, schema) in [(None, TenantConfig::schema()), (Some("limits"), Limits::schema())] {
            let schema = serde_json::to_value(schema).expect("a schema serialises");
            for (name, property) in schema["properties"].as_object().expect("properties") {
                let (min, max) = (property["minimum"].as_u64(), property["maximum"].as_u64());
                if min.is_some() || max.is_some() {
                    let path = prefix.into_iter().map(str::to_owned).chain([name.clone()]).collect();
                    bounds.push((path, min, max));
                }
            }
        }
        bounds
    }

    /// Whether a configuration with `path` set to `value` is accepted.
    fn accepts(path: &[String], value: u64) -> bool {
        // The base lets each bound stand alone: fuel_burst may go down to the smallest action's
        // fuel, and fuel_per_action up to its maximum.
        let mut config = serde_json::to_value(TenantConfig {
            fuel_burst: 1 << 60,
            limits: Limits { fuel_per_action: 1_000, ..Limits::default() },
            ..TenantConfig::default()
        })
        .expect("serialises");
        let mut field: &mut Value = &mut config;
        for part in path {
            field = &mut field[part.as_str()];
        }
        *field = json!(value);
        let config: TenantConfig = serde_json::from_value(config).expect("a number is read");
        config.validate(256 << 20).is_ok()
    }

    #[test]
    fn the_documented_bounds_are_the_bounds_enforced() {
        let bounds = documented_bounds();
        assert!(bounds.len() >= 25, "{bounds:?}");
        for (path, min, max) in bounds {
            if let Some(min) = min {
                assert!(accepts(&path, min), "{path:?} at its documented minimum {min}");
                assert!(min == 0 || !accepts(&path, min - 1), "{path:?} below its documented minimum {min}");
            }
            if let Some(max) = max {
                assert!(accepts(&path, max), "{path:?} at its documented maximum {max}");
                assert!(!accepts(&path, max + 1), "{path:?} above its documented maximum {max}");
            }
        }
    }
}
