//! The only place that configures wasmtime: one engine per host, its pooling allocator, its
//! on-disk compile cache, and the one epoch ticker that enforces wall-clock deadlines.
//!
//! Choices made here, and why:
//! - **Cranelift only, NaN canonicalisation on**: an action re-run on another machine after a
//!   failover must compute the same result.
//! - **Fuel and epochs both on**: fuel is the per-action cap (and counts toward the fair share);
//!   the epoch is a wake-up, every tick and whenever work waits for a worker: at it an action
//!   checks its wall-clock deadline (in its own time) and, if it is a task, yields to that work.
//! - **Pooling allocator**: every action gets a fresh instance, so instantiation must be cheap;
//!   it also holds the fiber stacks of preemptible tasks (one per instance).
//! - **Slices**: an action first runs synchronously with a little fuel; a longer one runs again as
//!   a task that yields its worker after every (smaller) slice (`sandbox.rs`).
//! - **wasmtime's own compile cache** (not `Module::deserialize`): the host forbids `unsafe`, and
//!   the cache keys each artifact by the module's sha-256 and the engine's compatibility hash, so
//!   a restart or a redeploy of unchanged bytes never compiles again.
//! - **Data segments copied, not mapped** (`MemoryInit::Copy`, the default): wasmtime can map a
//!   module's initial memory copy-on-write from an image, which is free when a pool slot last
//!   held the same module, but tenants run many modules: a slot another module used must be
//!   re-mapped, under the process's mmap lock, with TLB shootdowns on the other workers — a cost
//!   that lands on every tenant, not the one instantiating (`bench --only m`: 100 modules ran at
//!   0.1 of one module's rate mapped, at 0.9 copied). A copy costs the action itself, in time
//!   charged to it, in proportion to its own data. `Map` suits a host of a few modules with
//!   large data segments.
//! - **No wasm backtraces**: traps are normal here (hostile tenants); capturing a backtrace for
//!   each would cost more than the action.

use crate::error::Error;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;
use wasmtime::{Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How the shared engine is built: the pool's size and the hard ceilings of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instances the pool holds at once (at least one per worker).
    pub pool_instances: u32,
    /// The hard ceiling of one instance's linear memory in the pool, in bytes. A tenant's own
    /// memory limit may only be lower.
    pub max_memory_bytes: usize,
    /// The hard ceiling of one table, in elements.
    pub max_table_elements: usize,
    /// How often the epoch ticker ticks; wall-clock deadlines are rounded up to it.
    pub epoch_tick: Duration,
    /// Bytes of native stack wasm code may use before it traps with `stack_overflow`.
    pub max_wasm_stack: usize,
    /// Where compiled modules are cached; `None` keeps no cache (every deploy compiles).
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each memory and table slot reset in place (memset of touched pages) rather than
    /// decommitted when an instance is freed.
    pub keep_resident_bytes: usize,
    /// Fuel plain wasm burns per second on this machine: the rate at which an action's time
    /// (CPU, host waits, sleeps) is converted to fuel when that is more than it burned. `None` measures it at start.
    pub fuel_per_second: Option<u64>,
    /// Fuel an action may burn in its first, synchronous attempt; an action that needs more (a
    /// long one) runs again as a preemptible task.
    pub attempt_fuel: u64,
    /// Fuel a task burns before it checks whether anyone waits for its worker (a slice). Work that
    /// starts waiting also makes running tasks check at once (the epoch is poked), so a tenant's
    /// long action delays another tenant's by microseconds, not a slice.
    pub slice_fuel: u64,
    /// How an instance's memory gets its module's data segments.
    pub memory_init: MemoryInit,
}

/// How a fresh instance's linear memory is given its module's data segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryInit {
    /// Copied into the instance's memory: a cost per byte of data, paid by the action, and
    /// nothing shared between workers. Best when the host runs many modules.
    #[default]
    Copy,
    /// Mapped copy-on-write from the module's memory image: free while a pool slot keeps
    /// serving one module, but each slot that changes module is re-mapped under the process's
    /// mmap lock, stalling every worker. Best for a few modules with large data segments.
    Map,
}

/// Slots decommitted together: one, so an action that dirtied more memory than a slot keeps
/// resident gives it back itself, in its own time (charged to it), when its instance is freed.
/// Batched (16), a tenant's dirty pages stayed resident until some other action's teardown
/// filled the batch and freed them all: 2.6 GiB held while the host was idle, and another
/// tenant's action stalled and was charged ~200 ms for it. Actions within `keep_resident_bytes`
/// are reset by memset and decommit nothing, so batching saved them nothing.
const DECOMMIT_BATCH: usize = 1;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pool_instances: 64,
            max_memory_bytes: 256 << 20,
            max_table_elements: 100_000,
            epoch_tick: Duration::from_millis(1),
            max_wasm_stack: 512 << 10,
            cache_dir: None,
            keep_resident_bytes: 2 << 20,
            fuel_per_second: None,
            attempt_fuel: 100_000,
            slice_fuel: 200_000,
            memory_init: MemoryInit::Copy,
        }
    }
}

/// The shared wasmtime engine plus what lives exactly as long as it: the compile cache handle and
/// the epoch ticker thread (stopped when the engine is dropped).
pub(crate) struct Engine {
    wasmtime: wasmtime::Engine,
    cache: Option<Cache>,
    meter: Meter,
    attempt_fuel: u64,
    slice_fuel: u64,
    /// Set while actions wait for a worker: running tasks yield at their next check.
    preempt: Arc<AtomicBool>,
    _ticker: EpochTicker,
}

/// Converts between fuel and this machine's time, at plain wasm's measured speed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    fuel_per_second: u64,
}

impl Meter {
    /// The fuel plain wasm would have burned in `elapsed`: what an action that spent that long
    /// is charged at least, so time asleep, in host calls or in the store is paid for.
    pub(crate) fn fuel_for(&self, elapsed: Duration) -> u64 {
        let fuel = u128::from(self.fuel_per_second) * elapsed.as_nanos() / 1_000_000_000;
        u64::try_from(fuel).unwrap_or(u64::MAX)
    }

    /// The time plain wasm takes to burn `fuel` here.
    pub(crate) fn time_for(&self, fuel: u64) -> Duration {
        let nanos = u128::from(fuel) * 1_000_000_000 / u128::from(self.fuel_per_second.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Engine {
    pub(crate) fn new(config: &EngineConfig) -> Result<Engine, Error> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(config.pool_instances)
            .total_memories(config.pool_instances)
            .total_tables(config.pool_instances)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .total_stacks(config.pool_instances)
            .max_memory_size(config.max_memory_bytes)
            .table_elements(config.max_table_elements)
            // Resetting a slot with madvise makes the kernel shoot down the TLB of every other
            // worker thread (an IPI per action). Resetting the pages the action touched with
            // memset, found by PAGEMAP_SCAN where the kernel has it, keeps the workers apart;
            // only what an action dirtied past that is decommitted, by the action itself.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.keep_resident_bytes)
            .decommit_batch_size(DECOMMIT_BATCH);

        let cache = match &config.cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                // wasmtime's cache wants an absolute directory; a relative one is relative to here.
                let dir = std::path::absolute(dir).map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
                let mut cache_config = CacheConfig::new();
                cache_config.with_directory(dir);
                Some(Cache::new(cache_config).map_err(|e| Error::engine("setting up the compile cache", e))?)
            }
            None => None,
        };

        let mut wasm = Config::new();
        wasm.strategy(wasmtime::Strategy::Cranelift)
            .cranelift_nan_canonicalization(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // One thread per compile: the runtime bounds how many run at once.
            .parallel_compilation(false)
            .wasm_backtrace_max_frames(None)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(config.memory_init == MemoryInit::Map)
            .cache(cache.clone());
        let wasmtime = wasmtime::Engine::new(&wasm).map_err(|e| Error::engine("building the engine", e))?;
        let ticker = EpochTicker::start(wasmtime.clone(), config.epoch_tick)?;
        let fuel_per_second = match config.fuel_per_second {
            Some(rate) => rate.max(1),
            None => measure_fuel_per_second(&wasmtime)?,
        };
        let meter = Meter { fuel_per_second };
        let (attempt_fuel, slice_fuel) = (config.attempt_fuel.max(1_000), config.slice_fuel.max(1_000));
        let preempt = Arc::new(AtomicBool::new(false));
        Ok(Engine { wasmtime, cache, meter, attempt_fuel, slice_fuel, preempt, _ticker: ticker })
    }

    /// Fuel plain wasm burns per second here (measured at start unless configured).
    pub(crate) fn fuel_per_second(&self) -> u64 {
        self.meter.fuel_per_second
    }

    /// Converts between fuel and time on this machine.
    pub(crate) fn meter(&self) -> Meter {
        self.meter
    }

    /// Fuel of an action's first, synchronous attempt.
    pub(crate) fn attempt_fuel(&self) -> u64 {
        self.attempt_fuel
    }

    /// Fuel in one slice of a task.
    pub(crate) fn slice_fuel(&self) -> u64 {
        self.slice_fuel
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// Whether a task that reaches a check should yield its worker: someone waits for one.
    pub(crate) fn preempting(&self) -> &Arc<AtomicBool> {
        &self.preempt
    }

    /// The on-disk compile cache, if there is one (its counters tell hits from real compiles).
    pub(crate) fn cache(&self) -> Option<Cache> {
        self.cache.clone()
    }
}

/// Measures how much fuel plain wasm burns per second on this machine: a counting loop run a few
/// times for a few milliseconds each, keeping the fastest run (the least disturbed by the rest
/// of the machine).
fn measure_fuel_per_second(engine: &wasmtime::Engine) -> Result<u64, Error> {
    const FUEL: u64 = 3_000_000;
    let failed = |e: wasmtime::Error| Error::engine("measuring fuel per second", e);
    let module = wasmtime::Module::new(
        engine,
        r#"(module (memory 1) (func (export "burn") (local $i i32)
            (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))"#,
    )
    .map_err(failed)?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_fuel(FUEL).map_err(failed)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).map_err(failed)?;
        let burn = instance.get_typed_func::<(), ()>(&mut store, "burn").map_err(failed)?;
        let started = std::time::Instant::now();
        // It runs until its fuel is gone: the trap is the expected end.
        let _ = burn.call(&mut store, ());
        best = best.min(started.elapsed());
    }
    let rate = u128::from(FUEL) * 1_000_000_000 / best.as_nanos().max(1);
    Ok(u64::try_from(rate).unwrap_or(u64::MAX))
}

/// One thread per engine that advances the epoch; actions' deadlines are counted in its ticks.
/// It waits on a channel rather than sleeping, so dropping the engine stops it at once.
struct EpochTicker {
    _stop: mpsc::Sender<()>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<EpochTicker, Error> {
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("turnstile-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::io("starting the epoch ticker", e))?;
        Ok(EpochTicker { _stop: stop })
    }
}
