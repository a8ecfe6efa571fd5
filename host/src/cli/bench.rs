//! `turnstile bench`: every figure measured in one run on this machine, next to the raw-wasmtime
//! baseline measured in the same run.
//!
//! (a) raw wasmtime: a fresh pooled instance + one trivial call + drop, on one thread;
//! (b) Turnstile: trivial actions through the whole scheduler (1000 sessions, 100 apps, 10 tenants);
//! (c) b / a; (d) the scheduler's cost per action; (e) Jain's fairness index of fuel across 8
//! equal-weight saturating tenants; (f) well-behaved tenants' p99 latency with a hostile tenant
//! present, divided by the same without it; (g) (b) again with every checkpoint committed to
//! SQLite, the bytes written per action, and the time a host takes to resume 10 000 sessions.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile::{Host, HostConfig, Limits, MemoryStore, SqliteStore, Store, TenantConfig};

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

/// An action that spins until its fuel runs out.
const SPIN: &str = r#"(module
    (memory (export "memory") 1)
    (func (export "tick") (result i32) (loop $l (br $l)) i32.const 0))"#;

pub(crate) fn bench(seconds: f64) -> Result<std::process::ExitCode> {
    let window = Duration::from_secs_f64(seconds.clamp(0.2, 60.0));
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    println!("Turnstile bench: {workers} cores, {:.1} s per measurement\n", window.as_secs_f64());

    let raw = raw_wasmtime(window)?;
    println!("(a) raw wasmtime 48, pooled instance + trivial call + drop, 1 thread: {raw:>10.0} actions/s");
    let through = through_scheduler(window, workers)?;
    println!("(b) Turnstile, whole scheduler, 1000 sessions / 100 apps / 10 tenants: {through:>7.0} actions/s");
    let ratio = through / raw;
    println!("(c) b / a: {ratio:.2}   (target ≥ 0.5){}", verdict(ratio >= 0.5));
    let per_action_us = workers as f64 / through * 1e6;
    let raw_us = 1e6 / raw;
    println!(
        "(d) cost per action on one worker: {per_action_us:.2} µs, of which raw wasmtime {raw_us:.2} µs: scheduler, sandbox and ABI overhead {:.2} µs",
        per_action_us - raw_us
    );
    let jain = fairness(window)?;
    println!(
        "(e) Jain's fairness index, fuel of 8 equal-weight saturating tenants: {jain:.4}   (target ≥ 0.98){}",
        verdict(jain >= 0.98)
    );
    let (quiet, noisy, hostile) = isolation(window, workers)?;
    let isolation = noisy as f64 / quiet.max(1) as f64;
    println!(
        "(f) well-behaved tenants' p99 action latency: {quiet} µs alone, {noisy} µs beside a hostile tenant: ratio {isolation:.2}   (target ≤ 2.0){}",
        verdict(isolation <= 2.0)
    );
    println!(
        "    (the hostile tenant ran {} actions, each burning its whole cap: {:.1}% of all fuel burned)",
        hostile.actions,
        100.0 * hostile.fuel_share
    );
    let durable = durable(window, workers)?;
    println!(
        "(g) durable: {:.0} actions/s with every checkpoint in SQLite (group commit), {:.2} of in-memory (b) (target ≥ 0.3){}",
        durable.actions_per_second,
        durable.actions_per_second / through,
        verdict(durable.actions_per_second / through >= 0.3)
    );
    println!("    {:.0} bytes written per action (database, WAL and its checkpoints)", durable.bytes_per_action);
    println!(
        "    recovery: a new host resumed {} sessions in {:.0} ms",
        durable.recovered,
        durable.recovery.as_secs_f64() * 1000.0
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn verdict(met: bool) -> &'static str {
    if met { "  ✓" } else { "  ✗ missed" }
}

/// (a): the baseline the host is measured against. It configures wasmtime itself, as any
/// embedder would (pooling allocator, nothing else), rather than going through `engine.rs`.
fn raw_wasmtime(window: Duration) -> Result<f64> {
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
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn host(workers: usize) -> Result<Host> {
    host_on(workers, Arc::new(MemoryStore::default()))
}

fn host_on(workers: usize, store: Arc<dyn Store>) -> Result<Host> {
    let mut config = HostConfig { workers, store, ..HostConfig::default() };
    config.runtime.engine.pool_instances = u32::try_from(workers * 2)?;
    Ok(Host::new(config)?)
}

/// Fills a host: `tenants` tenants (name, config) × `apps` apps of `module` × `sessions` sessions.
fn populate(
    host: &Host,
    tenants: &[(String, TenantConfig)],
    apps: usize,
    sessions: usize,
    module: &[u8],
) -> Result<()> {
    for (tenant, config) in tenants {
        host.create_tenant(tenant, config.clone())?;
        for a in 0..apps {
            host.deploy(tenant, &format!("app{a}"), module)?;
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

/// (e)
fn fairness(window: Duration) -> Result<f64> {
    let host = host(std::thread::available_parallelism().map_or(2, usize::from))?;
    let tenants: Vec<_> = (0..8).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
    populate(&host, &tenants, 4, 5, &wat::parse_str(burner(5_000))?)?;
    let fuel = |host: &Host| host.metrics().tenants.iter().map(|t| t.fuel as f64).collect::<Vec<f64>>();
    let (before, after, _) = measured(&host, window, fuel);
    let shares: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    Ok(sum * sum / (shares.len() as f64 * squares))
}

/// (f): p99 latency of four well-behaved tenants alone, then with a tenant whose every action
/// burns its whole fuel cap.
/// What the hostile tenant of (f) managed.
struct Hostile {
    actions: u64,
    fuel_share: f64,
}

fn isolation(window: Duration, workers: usize) -> Result<(u64, u64, Hostile)> {
    let p99 = |hostile: bool| -> Result<(u64, Hostile)> {
        let host = host(workers)?;
        let polite: Vec<_> = (0..4).map(|t| (format!("polite{t}"), TenantConfig::default())).collect();
        populate(&host, &polite, 2, 10, &wat::parse_str(burner(200))?)?;
        if hostile {
            let config = TenantConfig { limits: Limits::default(), ..TenantConfig::default() };
            populate(&host, &[("mallory".into(), config)], 4, 10, &wat::parse_str(SPIN)?)?;
        }
        std::thread::sleep(window);
        let metrics = host.metrics();
        let worst = polite
            .iter()
            .filter_map(|(name, _)| metrics.tenant(name))
            .map(|t| t.latency_p99_us)
            .max()
            .context("no polite tenant")?;
        let fuel: u64 = metrics.tenants.iter().map(|t| t.fuel).sum();
        let mallory = metrics.tenant("mallory");
        let hostile = Hostile {
            actions: mallory.map_or(0, |m| m.actions),
            fuel_share: mallory.map_or(0.0, |m| m.fuel as f64 / fuel.max(1) as f64),
        };
        Ok((worst, hostile))
    };
    let (quiet, _) = p99(false)?;
    let (noisy, hostile) = p99(true)?;
    Ok((quiet, noisy, hostile))
}

/// What (g) measured.
struct Durable {
    actions_per_second: f64,
    bytes_per_action: f64,
    recovery: Duration,
    recovered: u64,
}

/// Bytes this process has passed to `write` so far.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// A scratch data directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("turnstile-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn store(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(SqliteStore::open(&self.0.join("turnstile.db"))?))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (g)
fn durable(window: Duration, workers: usize) -> Result<Durable> {
    let scratch = Scratch::new("durable")?;
    let (actions_per_second, bytes_per_action) = {
        let host = host_on(workers, scratch.store()?)?;
        let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
        populate(&host, &tenants, 10, 10, &wat::parse_str(TICK)?)?;
        let (before, after, elapsed) = measured(&host, window, |host| (total_actions(host), bytes_written()));
        let actions = (after.0 - before.0) as f64;
        (actions / elapsed.as_secs_f64(), (after.1 - before.1) as f64 / actions.max(1.0))
    };

    // 10 000 sessions waiting for their customers, then a new host on the same database.
    let scratch = Scratch::new("recovery")?;
    const SESSIONS: usize = 10_000;
    let waiting = r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{\"wait\":{\"action\":\"tick\"}}")
        (func (export "tick") (result i32) (call $next (i32.const 0) (i32.const 26)) i32.const 0))"#;
    {
        let host = host_on(workers, scratch.store()?)?;
        let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
        populate(&host, &tenants, 10, SESSIONS / 100, &wat::parse_str(waiting)?)?;
        host.settle();
    }
    let started = Instant::now();
    let host = host_on(workers, scratch.store()?)?;
    let recovery = started.elapsed();
    let recovered = host.metrics().waiting;
    Ok(Durable { actions_per_second, bytes_per_action, recovery, recovered })
}

/// `turnstile bench --http`: events delivered over HTTP to a server in this process (loopback,
/// keep-alive connections, one client thread per core), each acknowledged once durable in SQLite.
pub(crate) fn bench_http(seconds: f64) -> Result<std::process::ExitCode> {
    use std::io::{BufRead, BufReader, Read, Write};
    let window = Duration::from_secs_f64(seconds.clamp(0.2, 60.0));
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let scratch = Scratch::new("http")?;
    let host = Arc::new(host_on(workers, scratch.store()?)?);
    let admin = "bench-admin-token-0123456789";
    host.create_tenant("load", TenantConfig::default())?;
    let (_, token) = host.issue_token("load")?;
    // Each event is echoed as an output, and the session waits for the next one.
    let echo = r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "input_len" (func $input_len (result i32)))
        (import "turnstile" "input_read" (func $input_read (param i32)))
        (import "turnstile" "emit" (func $emit (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{\"wait\":{\"action\":\"echo\"}}")
        (func (export "start") (result i32) (call $next (i32.const 0) (i32.const 26)) i32.const 0)
        (func (export "echo") (result i32)
          (call $input_read (i32.const 100)) (call $emit (i32.const 100) (call $input_len))
          (call $next (i32.const 0) (i32.const 26)) i32.const 0))"#;
    host.deploy("load", "echo", &wat::parse_str(echo)?)?;
    const SESSIONS: usize = 64;
    let sessions: Vec<u64> = (0..SESSIONS)
        .map(|_| host.start_session("load", "echo", "start", Vec::new()).map(|id| id.0))
        .collect::<Result<_, _>>()?;
    host.settle();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let app = turnstile::api::router(turnstile::api::Api::new(host.clone(), admin));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    runtime.spawn(async move { axum::serve(listener, app).await });

    let clients = workers;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let token = token.clone();
            let mine: Vec<u64> = sessions.iter().copied().skip(c).step_by(clients).collect();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
                stream.set_nodelay(true)?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut writer = stream;
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while started.elapsed() < window {
                    let session = mine[n % mine.len()];
                    n += 1;
                    let body = format!("\"e{n}\"");
                    let sent = Instant::now();
                    let request = format!(
                        "POST /v1/sessions/{session}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    writer.write_all(request.as_bytes())?;
                    let mut status = String::new();
                    reader.read_line(&mut status)?;
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header)?;
                        if header == "\r\n" || header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut discard = vec![0u8; length];
                    reader.read_exact(&mut discard)?;
                    // 429 (the session's inbox is full) is backpressure, not a failure: count only
                    // accepted events.
                    if status.contains(" 202 ") {
                        latencies.push(sent.elapsed());
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for thread in threads {
        latencies.extend(thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    // The per-mille quantile of the sorted latencies.
    let p = |per_mille: usize| {
        let index = (latencies.len() * per_mille / 1000).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or_default()
    };
    println!(
        "Turnstile bench --http: {workers} cores, {:.1} s, {SESSIONS} sessions, {clients} keep-alive clients on loopback\n",
        window.as_secs_f64()
    );
    println!("events delivered (202, durable in SQLite): {:.0}/s", latencies.len() as f64 / elapsed.as_secs_f64());
    println!("delivery latency: p50 {:.2} ms, p99 {:.2} ms", p(500).as_secs_f64() * 1e3, p(990).as_secs_f64() * 1e3);
    drop(runtime);
    Ok(std::process::ExitCode::SUCCESS)
}
