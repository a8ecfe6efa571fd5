//! The limits a tenant's code runs under: per action (fuel, memory, wall time, bytes) and per
//! module at deploy (size and complexity caps applied before anything is compiled).

use std::time::Duration;

/// What one action may use and produce. The operator sets these per tenant; the defaults suit an
/// IVR or chat script with room to spare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) one action may burn.
    pub fuel_per_action: u64,
    /// Bytes of linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Elements one table may grow to.
    pub table_elements: usize,
    /// Wall-clock time one action may run: the backstop for what fuel does not meter.
    pub wall_time: Duration,
    /// Bytes of session state.
    pub max_state_bytes: usize,
    /// Output events one action may emit.
    pub max_outputs: usize,
    /// Bytes of output events one action may emit, all together.
    pub max_output_bytes: usize,
    /// Bytes of one key.
    pub max_kv_key_bytes: usize,
    /// Bytes of key-value writes (keys and values) one action may make.
    pub max_kv_write_bytes: usize,
    /// Bytes of one customer event (the input of an action).
    pub max_input_bytes: usize,
    /// Bytes of guest log (and captured stdout/stderr) kept per action; past it lines are dropped.
    pub max_log_bytes: usize,
    /// Actions one session may run in all: the loop guard.
    pub max_actions_per_session: u64,
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

/// Caps checked on a module's bytes before it is compiled, so compiling can't be made a denial of
/// service, and so no instance can ask for more than the pool has.
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
            max_data_segments: 10_000,
            max_memory_bytes: 256 << 20,
            max_table_elements: 100_000,
        }
    }
}
