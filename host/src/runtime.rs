//! The runtime: one engine, one linker and the deployed app versions, shared by every session.
//! Deploying validates and compiles (once: in memory per process, on disk across processes);
//! running an action hands it to a fresh sandbox.

use crate::abi::{self, ActionCtx, KvRead, Linking};
use crate::app::{self, App, ModuleInfo};
use crate::engine::{Engine, EngineConfig};
use crate::error::Error;
use crate::limits::{DeployLimits, Limits};
use crate::sandbox::{self, ActionCall, ActionOutcome, ActionTask, Attempt, Usage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::Linker;

mod compiler;

/// How a runtime is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The shared engine and its pool.
    pub engine: EngineConfig,
    /// Default limits of an action.
    pub limits: Limits,
    /// Caps checked at deploy.
    pub deploy: DeployLimits,
}

/// Where a deployed module's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompileSource {
    /// It was compiled now.
    Compiled,
    /// It was loaded from the on-disk cache (compiled earlier, maybe by another process).
    DiskCache,
    /// This runtime had already deployed the same bytes.
    AlreadyDeployed,
}

/// A deployed app version and how its code was obtained.
#[derive(Clone)]
pub struct Deployment {
    /// The app version.
    pub app: Arc<App>,
    /// Whether deploying it compiled anything.
    pub source: CompileSource,
}

/// How many deploys compiled, hit the disk cache, or reused an app this runtime had; how many
/// modules it holds compiled now, and how many it loaded again after leaving them unused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileStats {
    /// Deploys that compiled.
    pub compiled: u64,
    /// Deploys served from the on-disk cache.
    pub disk_cache: u64,
    /// Deploys of bytes already deployed here.
    pub already_deployed: u64,
    /// Modules held compiled in memory now.
    pub loaded: u64,
    /// Stored modules loaded (compiled, or read from the disk cache) without a deploy: at start
    /// for the sessions that resume, and on demand after an unused module was evicted.
    pub reloads: u64,
    /// Unused modules evicted from memory.
    pub evicted: u64,
}

/// A module held compiled, and when it was last asked for.
struct Loaded {
    app: Arc<App>,
    used: Instant,
}

/// Keeps `app` as the loaded app of its hash in `apps`, unless one is loaded already (then that
/// one).
fn keep(apps: &Mutex<HashMap<String, Loaded>>, hash: String, app: Arc<App>) -> Arc<App> {
    let mut apps = apps.lock().unwrap_or_else(PoisonError::into_inner);
    let loaded = apps.entry(hash).or_insert(Loaded { app, used: Instant::now() });
    loaded.used = Instant::now();
    loaded.app.clone()
}

/// How running tasks are told that work waits: a flag they read at every epoch check, and a
/// poke that makes them check now.
pub(crate) struct Preemption {
    pub(crate) flag: Arc<AtomicBool>,
    pub(crate) poke: Box<dyn Fn() + Send + Sync>,
}

impl Preemption {
    /// Publishes how many actions wait: running tasks are poked when some start waiting.
    pub(crate) fn publish(&self, waiting: usize, count: &AtomicUsize) {
        let before = count.swap(waiting, Ordering::AcqRel);
        self.flag.store(waiting > 0, Ordering::Release);
        if before == 0 && waiting > 0 {
            (self.poke)();
        }
    }
}

/// The shared engine, linkers and deployed apps.
pub struct Runtime {
    engine: Engine,
    sync_linker: Linker<ActionCtx>,
    task_linker: Linker<ActionCtx>,
    limits: Arc<Limits>,
    deploy_limits: DeployLimits,
    max_memory_bytes: usize,
    /// Modules held compiled, by hash: kept while a session holds them, evicted
    /// ([`Runtime::evict_idle`]) once nothing has held or asked for them for a while.
    apps: Arc<Mutex<HashMap<String, Loaded>>>,
    /// Runs deploys' compiles: bounded in number and time, one per module hash.
    compiler: Arc<compiler::Compiler>,
    /// Runs the compiles of stored modules loaded again: bounded in number, one per hash.
    loader: Arc<compiler::Compiler>,
    compiled: AtomicU64,
    disk_cache: AtomicU64,
    already_deployed: AtomicU64,
    reloads: Arc<AtomicU64>,
    evicted: AtomicU64,
}

impl Runtime {
    /// Builds the engine and linker.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, Error> {
        config.limits.validate(config.engine.max_memory_bytes)?;
        let engine = Engine::new(&config.engine)?;
        let mut sync_linker = Linker::new(engine.wasmtime());
        abi::add_to_linker(&mut sync_linker, Linking::Sync).map_err(|e| Error::engine("linking the ABI", e))?;
        let mut task_linker = Linker::new(engine.wasmtime());
        abi::add_to_linker(&mut task_linker, Linking::Task).map_err(|e| Error::engine("linking the ABI", e))?;
        let mut deploy_limits = config.deploy;
        deploy_limits.max_memory_bytes =
            deploy_limits.max_memory_bytes.min(u64::try_from(config.engine.max_memory_bytes).unwrap_or(u64::MAX));
        deploy_limits.max_table_elements =
            deploy_limits.max_table_elements.min(u64::try_from(config.engine.max_table_elements).unwrap_or(u64::MAX));
        let slots = deploy_limits.compile_slots;
        let compiler = Arc::new(compiler::Compiler::deploys(slots, deploy_limits.compile_timeout));
        Ok(Runtime {
            compiler,
            loader: Arc::new(compiler::Compiler::loads(slots)),
            engine,
            sync_linker,
            task_linker,
            limits: Arc::new(config.limits),
            deploy_limits,
            max_memory_bytes: config.engine.max_memory_bytes,
            apps: Arc::default(),
            compiled: AtomicU64::new(0),
            disk_cache: AtomicU64::new(0),
            already_deployed: AtomicU64::new(0),
            reloads: Arc::default(),
            evicted: AtomicU64::new(0),
        })
    }

    /// Validates a module without compiling it.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ModuleInfo, Error> {
        Ok(app::inspect(bytes, &self.deploy_limits)?)
    }

    /// Deploys a module: validates it, then compiles it unless these exact bytes were compiled
    /// before (by this runtime, or by any runtime sharing the cache directory).
    pub fn deploy(&self, bytes: &[u8]) -> Result<Deployment, Error> {
        self.deploy_holding(bytes, ())
    }

    /// [`Runtime::deploy`], with `hold` kept until the compile ends (on its own thread, past the
    /// time limit if it runs over), or until this returns if nothing is compiled.
    pub(crate) fn deploy_holding(&self, bytes: &[u8], hold: impl Send + 'static) -> Result<Deployment, Error> {
        let info = app::inspect(bytes, &self.deploy_limits)?;
        if let Some(refused) = self.compiler.refusal(&info.hash) {
            return Err(refused.into());
        }
        if let Some(app) = self.loaded(&info.hash) {
            self.already_deployed.fetch_add(1, Ordering::Relaxed);
            return Ok(Deployment { app, source: CompileSource::AlreadyDeployed });
        }
        let (engine, cache) = (self.engine.wasmtime().clone(), self.engine.cache());
        let counts = move || cache.as_ref().map(|c| (c.cache_hits(), c.cache_misses()));
        let linkers = (self.sync_linker.clone(), self.task_linker.clone());
        let (owned, apps, hash) = (bytes.to_vec(), self.apps.clone(), info.hash.clone());
        let flight = hash.clone();
        // Kept before the compile's flight ends: a deploy or a start that comes after it finds it.
        let (app, source) = self.compiler.compile(&flight, move || {
            let _hold = hold;
            let before = counts();
            let app = App::compile(&engine, [&linkers.0, &linkers.1], &owned, info)?;
            // A hit, unless a compile beside this one missed meanwhile (then it is unclear).
            let hit = matches!((before, counts()), (Some((hb, mb)), Some((ha, ma))) if ha > hb && ma == mb);
            Ok((keep(&apps, hash, Arc::new(app)), if hit { CompileSource::DiskCache } else { CompileSource::Compiled }))
        })?;
        match source {
            CompileSource::DiskCache => &self.disk_cache,
            _ => &self.compiled,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(Deployment { app, source })
    }

    /// What a module this host accepted before holds (its actions), read without compiling it
    /// and without the complexity caps: what was deployed stays loadable when an operator
    /// tightens the caps. The memory and table maxima still hold (the pool can't go over them),
    /// and so does everything the ABI requires.
    pub(crate) fn inspect_stored(&self, bytes: &[u8]) -> Result<ModuleInfo, Error> {
        let lifted = DeployLimits {
            max_module_bytes: usize::MAX,
            max_functions: u32::MAX,
            max_function_body_bytes: usize::MAX,
            max_locals: u32::MAX,
            max_data_segments: u32::MAX,
            max_code_bytes: usize::MAX,
            max_function_cost: u64::MAX,
            max_module_cost: u64::MAX,
            ..self.deploy_limits.clone()
        };
        Ok(app::inspect(bytes, &lifted)?)
    }

    /// The compiled module `hash`, if it is held here (it counts as used now).
    pub(crate) fn loaded(&self, hash: &str) -> Option<Arc<App>> {
        let mut apps = self.apps();
        let loaded = apps.get_mut(hash)?;
        loaded.used = Instant::now();
        Some(loaded.app.clone())
    }

    /// Compiles a module this host accepted before (a stored version: at start, or again after it
    /// was evicted) as [`Runtime::inspect_stored`] reads it, without the compile time limit: a
    /// cold cache that makes compiling slow can't keep a stored version from loading.
    pub(crate) fn reload(&self, bytes: &[u8]) -> Result<Arc<App>, Error> {
        let hash = app::module_hash(bytes);
        if let Some(app) = self.loaded(&hash) {
            return Ok(app);
        }
        let info = self.inspect_stored(bytes)?;
        let (engine, owned) = (self.engine.wasmtime().clone(), bytes.to_vec());
        let linkers = (self.sync_linker.clone(), self.task_linker.clone());
        let (reloads, apps, key) = (self.reloads.clone(), self.apps.clone(), hash.clone());
        // Kept before the compile's flight ends: a start that comes after it finds the module.
        let (app, _) = self.loader.compile(&hash, move || {
            // A flight that ended between this caller's look-up and its own flight kept it.
            if let Some(app) = apps.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
                return Ok((app.app.clone(), CompileSource::AlreadyDeployed));
            }
            let app = App::compile(&engine, [&linkers.0, &linkers.1], &owned, info)?;
            reloads.fetch_add(1, Ordering::Relaxed);
            Ok((keep(&apps, key, Arc::new(app)), CompileSource::Compiled))
        })?;
        Ok(app)
    }

    /// Drops the compiled code of every module that no session holds and no one asked for in
    /// `idle`; the next session of such a module loads it again from the store's bytes (through
    /// the disk cache). Returns how many were dropped.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let evicted: Vec<Loaded> = self
            .apps()
            .extract_if(|_, loaded| Arc::strong_count(&loaded.app) == 1 && loaded.used.elapsed() >= idle)
            .map(|(_, loaded)| loaded)
            .collect();
        self.evicted.fetch_add(u64::try_from(evicted.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        // Their code is unmapped here, after the table's lock is let go: look-ups don't wait.
        evicted.len()
    }

    fn apps(&self) -> MutexGuard<'_, HashMap<String, Loaded>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How deploys obtained their code so far.
    pub fn compile_stats(&self) -> CompileStats {
        CompileStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            disk_cache: self.disk_cache.load(Ordering::Relaxed),
            already_deployed: self.already_deployed.load(Ordering::Relaxed),
            loaded: u64::try_from(self.apps().len()).unwrap_or(u64::MAX),
            reloads: self.reloads.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// The pool's memory slot size: no tenant's memory limit may be above it.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// Fuel plain wasm burns per second on this machine: the rate at which an action's wall
    /// time counts as fuel in its cost.
    pub fn fuel_per_second(&self) -> u64 {
        self.engine.fuel_per_second()
    }

    /// The default limits of an action.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Runs one action of `app` to its end on this thread, in a fresh sandbox under `limits`, with
    /// `fuel` to burn (a long action is preempted and resumed here, and sleeps here).
    #[expect(clippy::too_many_arguments, reason = "one action's whole input, each part distinct")]
    pub fn run_action(
        &self,
        app: &Arc<App>,
        action: &str,
        input: Vec<u8>,
        state: Vec<u8>,
        kv: Arc<dyn KvRead>,
        limits: &Arc<Limits>,
        fuel: u64,
    ) -> ActionOutcome {
        let call = ActionCall {
            app: app.clone(),
            action: action.to_owned(),
            input: input.into(),
            state: state.into(),
            kv,
            limits: limits.clone(),
            fuel,
        };
        sandbox::run(&self.engine, call)
    }

    /// Tries an action synchronously within one slice (or starts it as a task at once if its app
    /// has been running long).
    pub(crate) fn attempt(&self, call: ActionCall) -> Attempt {
        if call.app.runs_long() {
            return Attempt::Long(call, Usage::default());
        }
        sandbox::attempt(&self.engine, call, self.engine.attempt_fuel())
    }

    /// How the host tells running tasks that work waits for a worker.
    pub(crate) fn preemption(&self) -> Preemption {
        let engine = self.engine.wasmtime().clone();
        Preemption { flag: self.engine.preempting().clone(), poke: Box::new(move || engine.increment_epoch()) }
    }

    /// Fuel of an action's first, synchronous attempt.
    pub(crate) fn attempt_fuel(&self) -> u64 {
        self.engine.attempt_fuel()
    }

    /// Starts a long action as a preemptible task.
    pub(crate) fn start_task(&self, call: ActionCall, spent: Usage) -> ActionTask {
        ActionTask::start(&self.engine, call, spent)
    }
}

#[cfg(test)]
mod tests {
    use super::{Runtime, RuntimeConfig};
    use crate::local::MemoryKv;
    use std::sync::Arc;

    #[test]
    fn an_action_that_dirtied_much_memory_gives_it_back_itself() {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        // Touches a page every 4 KiB of 8 MiB: past what a slot keeps resident.
        let module = r#"(module (memory (export "memory") 1)
            (func (export "touch") (result i32) (local $p i32)
              (drop (memory.grow (i32.const 128)))
              (loop $l
                (i32.store8 (local.get $p) (i32.const 1))
                (local.set $p (i32.add (local.get $p) (i32.const 4096)))
                (br_if $l (i32.lt_u (local.get $p) (i32.const 8388608))))
              i32.const 1))"#;
        let app = runtime.deploy(&wat::parse_str(module).expect("wat")).expect("deploys").app;
        let limits = runtime.limits().clone();
        let pool = runtime.engine.wasmtime().pooling_allocator_metrics().expect("the pooling allocator");
        let warm = pool.unused_warm_memories();
        runtime.run_action(&app, "touch", Vec::new(), Vec::new(), Arc::new(MemoryKv::default()), &limits, 1_000_000);
        // Its (new) slot is free again at once, not queued for another action's teardown to free.
        assert_eq!(pool.unused_warm_memories(), warm + 1);
    }
}
