//! `turnstile bench`: every figure measured in one run on this machine, next to the raw-wasmtime
//! baseline measured in the same run.
//!
//! (a) raw wasmtime: a fresh pooled instance + one trivial call + drop, on one thread (and (a2) on
//! one thread per worker, sharing one engine: what the machine gives wasmtime on every core);
//! (b) Turnstile: trivial actions through the whole scheduler (1000 sessions, 100 apps, 10 tenants);
//! (c) b / a; (d) the scheduler's cost per action; (e) Jain's fairness index of fuel across 8
//! equal-weight saturating tenants; (f) isolation from every kind of hostile tenant
//! (`bench/isolation.rs`); (g) (b) again with every checkpoint committed to SQLite, the bytes
//! written per action, and the time a host takes to resume 10 000 sessions (`bench/durable.rs`;
//! `--store postgres://…` measures PostgreSQL instead).
//!
//! `--imports` measures the fuel charges of host calls against plain wasm (`bench/imports.rs`);
//! `--http` measures event ingest over HTTP (`bench/http.rs`); `--soak` runs a few hundred
//! thousand sessions through SQLite with a short retention and prints the database's size as
//! it goes (`bench/soak.rs`).

mod durable;
mod http;
mod imports;
mod isolation;
mod soak;

pub(crate) use http::bench_http;
pub(crate) use imports::imports;
pub(crate) use soak::soak;

use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile::{Host, HostConfig, MemoryInit, MemoryStore, PgStore, SqliteStore, Store, TenantConfig};

/// A trivial action: it only names itself as the next step.
const TICK: &str = r#"(module
    (import "turnstile" "next" (func $next (param i32 i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "{\"goto\":\"tick\"}")
    (func (export "tick") (result i32) (call $next (i32.const 0) (i32.const 15)) i32.const 0))"#;

/// An action that burns fuel in a loop (`ITERATIONS` rounds), then goes to itself again.
fn burner(iterations: u32) -> String {
    format!(
        r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{{\"goto\":\"tick\"}}")
        (func (export "tick") (result i32) (local $i i32)
          (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const {iterations}))))
          (call $next (i32.const 0) (i32.const 15)) i32.const 0))"#
    )
}

/// What `turnstile bench` runs: the figures asked for (letters a–g), each measurement how long,
/// how many times the (a)/(b) pair is repeated, and the durable store (g) measures (SQLite when
/// none is named; a `postgres://` URL measures PostgreSQL, in a scratch schema).
pub(crate) struct BenchPlan {
    pub(crate) window: Duration,
    pub(crate) only: String,
    pub(crate) repeat: usize,
    pub(crate) store: Option<String>,
}

impl BenchPlan {
    fn wants(&self, figure: char) -> bool {
        self.only.is_empty() || self.only.contains(figure)
    }
}

pub(crate) fn bench(plan: &BenchPlan) -> Result<std::process::ExitCode> {
    let window = plan.window;
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    println!("Turnstile bench: {workers} cores, {:.1} s per measurement\n", window.as_secs_f64());
    let mut through = None;
    if plan.wants('a') || plan.wants('b') {
        through = Some(throughput(window, workers, plan.repeat.max(1))?);
    }
    if plan.wants('m') {
        let one = match through {
            Some(b) => b,
            None => through_scheduler(window, workers)?,
        };
        modules(window, workers, one)?;
    }
    if plan.wants('e') {
        let jain = fairness(window)?;
        println!(
            "(e) Jain's fairness index, real cost of 8 equal-weight saturating tenants: {jain:.4}   (target ≥ 0.98){}",
            verdict(jain >= 0.98)
        );
    }
    if plan.wants('f') {
        isolation::isolation(window, workers)?;
    }
    if plan.wants('g') {
        durable::durable(window, workers, plan.store.as_deref(), through)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// (a)–(d), `repeat` times, with the distribution of (c) when repeated. Returns the median (b).
fn throughput(window: Duration, workers: usize, repeat: usize) -> Result<f64> {
    let mut runs = Vec::new();
    for run in 0..repeat {
        let raw = raw_wasmtime(window, 1)?;
        let threads = raw_wasmtime(window, workers)?;
        let through = through_scheduler(window, workers)?;
        let ratio = through / raw;
        if repeat > 1 {
            println!(
                "run {:>2}: (a) {raw:>8.0}/s  (a2) {threads:>8.0}/s  (b) {through:>8.0}/s  (c) b/a {ratio:.2}  b/a2 {:.2}",
                run + 1,
                through / threads
            );
        } else {
            println!("(a) raw wasmtime 48, pooled instance + trivial call + drop, 1 thread: {raw:>10.0} actions/s");
            println!(
                "(a2) the same on {workers} threads sharing one engine: {threads:>10.0} actions/s ({:.2} × (a); (b) is {:.2} of it)",
                threads / raw,
                through / threads
            );
            println!("(b) Turnstile, whole scheduler, 1000 sessions / 100 apps / 10 tenants: {through:>7.0} actions/s");
            println!("(c) b / a: {ratio:.2}   (target ≥ 0.8){}", verdict(ratio >= 0.8));
            let per_action_us = workers as f64 / through * 1e6;
            let raw_us = 1e6 / raw;
            println!(
                "(d) cost per action on one worker: {per_action_us:.2} µs, of which raw wasmtime {raw_us:.2} µs: scheduler, sandbox and ABI overhead {:.2} µs",
                per_action_us - raw_us
            );
        }
        runs.push((raw, through, ratio));
    }
    runs.sort_by(|x, y| x.2.total_cmp(&y.2));
    if repeat > 1 {
        let met = runs.iter().filter(|r| r.2 >= 0.8).count();
        let ratios: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.2)).collect();
        println!(
            "(c) b / a over {repeat} runs: min {:.2}, median {:.2}, max {:.2}; {met} of {repeat} ≥ 0.8{}\n    sorted: {}",
            runs[0].2,
            runs[repeat / 2].2,
            runs[repeat - 1].2,
            verdict(met * 20 >= repeat * 19),
            ratios.join(" ")
        );
    }
    Ok(runs[repeat / 2].1)
}

fn verdict(met: bool) -> &'static str {
    if met { "  ✓" } else { "  ✗ missed" }
}

/// (a): the baseline the host is measured against, on `threads` threads sharing one engine (one
/// for (a) itself; one per worker for (a2), what the machine gives two threads of wasmtime). It
/// configures wasmtime itself, as any embedder would (pooling allocator, nothing else), rather
/// than going through `engine.rs`.
fn raw_wasmtime(window: Duration, threads: usize) -> Result<f64> {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_core_instances(16).total_memories(16).total_tables(16).max_memory_size(1 << 20);
    let mut config = wasmtime::Config::new();
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let module = wasmtime::Module::new(
        &engine,
        r#"(module (memory (export "memory") 1) (func (export "tick") (result i32) i32.const 0))"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = wasmtime::Linker::<()>::new(&engine).instantiate_pre(&module).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_once = || -> wasmtime::Result<i32> {
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = pre.instantiate(&mut store)?;
        instance.get_typed_func::<(), i32>(&mut store, "tick")?.call(&mut store, ())
    };
    let run = || -> Result<u64> {
        for _ in 0..1000 {
            run_once().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < window {
            for _ in 0..1000 {
                run_once().map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            count += 1000;
        }
        Ok(count)
    };
    let started = Instant::now();
    let counts: Result<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(run)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked"))))
            .collect()
    });
    Ok(counts?.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

/// The whole part of a non-negative figure.
fn whole(x: f64) -> u64 {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a non-negative count, floored")]
    let n = x.max(0.0) as u64;
    n
}

fn host(workers: usize) -> Result<Host> {
    host_on(workers, Arc::new(MemoryStore::default()))
}

pub(super) fn host_on(workers: usize, store: Arc<dyn Store>) -> Result<Host> {
    Ok(Host::new(HostConfig { workers, store, ..HostConfig::default() })?)
}

/// Fills a host: `tenants` tenants (name, config) × `apps` apps of `module` × `sessions` sessions.
fn populate(
    host: &Host,
    tenants: &[(String, TenantConfig)],
    apps: usize,
    sessions: usize,
    module: &[u8],
) -> Result<()> {
    populate_with(host, tenants, apps, sessions, &|_| module.to_vec())
}

/// [`populate`] with the module of the `n`th app deployed given by `module_of`.
fn populate_with(
    host: &Host,
    tenants: &[(String, TenantConfig)],
    apps: usize,
    sessions: usize,
    module_of: &dyn Fn(u32) -> Vec<u8>,
) -> Result<()> {
    let mut deployed = 0;
    for (tenant, config) in tenants {
        host.create_tenant(tenant, config.clone())?;
        for a in 0..apps {
            host.deploy(tenant, &format!("app{a}"), &module_of(deployed))?;
            deployed += 1;
        }
    }
    for _ in 0..sessions {
        for (tenant, _) in tenants {
            for a in 0..apps {
                host.start_session(tenant, &format!("app{a}"), "tick", Vec::new())?;
            }
        }
    }
    Ok(())
}

fn total_actions(host: &Host) -> u64 {
    host.metrics().tenants.iter().map(|t| t.actions).sum()
}

/// Lets a loaded host warm up, then measures what `measure` reads over `window`.
fn measured<T>(host: &Host, window: Duration, measure: impl Fn(&Host) -> T) -> (T, T, Duration) {
    std::thread::sleep(window / 5);
    let started = Instant::now();
    let before = measure(host);
    std::thread::sleep(window);
    (before, measure(host), started.elapsed())
}

/// (b)
fn through_scheduler(window: Duration, workers: usize) -> Result<f64> {
    let host = host(workers)?;
    let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
    populate(&host, &tenants, 10, 10, &wat::parse_str(TICK)?)?;
    let (before, after, elapsed) = measured(&host, window, total_actions);
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

/// Data a Rust guest built with serde_json carries (the examples: 21–40 KiB).
const GUEST_DATA: usize = 40 << 10;

/// (m): (b) with every app a module of its own, as tenants' apps are, with and without a Rust
/// guest's data, its memory initialised both ways ([`MemoryInit`]); and one module with that
/// data, the case mapping is made for.
fn modules(window: Duration, workers: usize, one: f64) -> Result<()> {
    println!("(m) (b) with a module of its own per app, as tenants' apps are, data copied (the default) or mapped:");
    for (what, data, distinct) in [
        ("no data, 100 modules", 0, true),
        ("40 KiB of data, 100 modules", GUEST_DATA, true),
        ("40 KiB of data, 1 module", GUEST_DATA, false),
    ] {
        let copied = modules_run(window, workers, data, distinct, MemoryInit::Copy)?;
        let mapped = modules_run(window, workers, data, distinct, MemoryInit::Map)?;
        println!(
            "    {what:<28} copy {copied:>8.0}/s ({:.2} of (b))   map {mapped:>8.0}/s ({:.2} of (b))",
            copied / one,
            mapped / one
        );
    }
    Ok(())
}

/// One measurement of (m): 100 apps whose module holds `data` bytes of data, each app a module
/// of its own when `distinct` (the same code, told apart by a custom section).
fn modules_run(window: Duration, workers: usize, data: usize, distinct: bool, init: MemoryInit) -> Result<f64> {
    let mut config = HostConfig { workers, store: Arc::new(MemoryStore::default()), ..HostConfig::default() };
    config.runtime.engine.memory_init = init;
    let host = Host::new(config)?;
    let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
    let pages = (1024 + data) / 65536 + 1;
    let memory = format!("(memory (export \"memory\") {pages}) (data (i32.const 1024) \"{}\")", "a".repeat(data));
    let tick = wat::parse_str(TICK.replace("(memory (export \"memory\") 1)", &memory))?;
    let own = |n: u32| if distinct { numbered(&tick, n) } else { tick.clone() };
    populate_with(&host, &tenants, 10, 10, &own)?;
    let (before, after, elapsed) = measured(&host, window, total_actions);
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

/// `module` made a module of its own, the `n`th, by a custom section that says `n`: the same
/// code, other bytes (another hash, compiled and cached apart).
pub(super) fn numbered(module: &[u8], n: u32) -> Vec<u8> {
    let mut bytes = module.to_vec();
    // A custom section (id 0) of 6 bytes: the name "n" (its length 1, then it) and `n`.
    bytes.extend_from_slice(&[0, 6, 1, b'n']);
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes
}

/// (e)
fn fairness(window: Duration) -> Result<f64> {
    let host = host(std::thread::available_parallelism().map_or(2, usize::from))?;
    let tenants: Vec<_> = (0..8).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
    populate(&host, &tenants, 4, 5, &wat::parse_str(burner(5_000))?)?;
    let fuel = |host: &Host| host.metrics().tenants.iter().map(|t| t.cost as f64).collect::<Vec<f64>>();
    let (before, after, _) = measured(&host, window, fuel);
    let shares: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    Ok(sum * sum / (shares.len() as f64 * squares))
}

/// A scratch data directory (and, on PostgreSQL, a scratch schema), removed when dropped.
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
    /// The scratch schema's store URL, when the store is PostgreSQL.
    postgres: Option<String>,
}

impl Scratch {
    /// A scratch SQLite database.
    pub(super) fn new(name: &str) -> Result<Scratch> {
        Scratch::on(name, None)
    }

    /// A scratch database on the store `url` names (`postgres://…`), or SQLite when `None`.
    pub(super) fn on(name: &str, url: Option<&str>) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("turnstile-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let postgres = match url {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{separator}schema=turnstile_bench_{name}_{}", std::process::id());
                PgStore::drop_schema(&url)?;
                Some(url)
            }
            Some(other) => anyhow::bail!("`--store {other}`: bench measures SQLite (the default) or a postgres:// URL"),
        };
        Ok(Scratch { dir, postgres })
    }

    pub(super) fn store(&self) -> Result<Arc<dyn Store>> {
        Ok(match &self.postgres {
            Some(url) => Arc::new(PgStore::open(url)?),
            None => Arc::new(SqliteStore::open(&self.dir.join("turnstile.db"))?),
        })
    }

    /// The store's name, as the figures print it.
    pub(super) fn kind(&self) -> &'static str {
        if self.postgres.is_some() { "PostgreSQL" } else { "SQLite" }
    }

    /// The scratch schema's URL, when the store is PostgreSQL.
    pub(super) fn postgres(&self) -> Option<&str> {
        self.postgres.as_deref()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(url) = &self.postgres {
            let _ = PgStore::drop_schema(url);
        }
    }
}
