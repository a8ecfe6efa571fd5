//! (f) isolation: four well-behaved tenants beside one hostile tenant of each kind, on the
//! in-memory store (what is measured is the pool's containment, not the disk: on SQLite the
//! tail is set by fsyncs and WAL checkpoints, which (g) and `--http` measure).
//! Per kind: the well-behaved tenants' p99 action latency with the hostile tenant ÷ without it,
//! saturated (every session always has an action ready) and at 70% load (events arrive at 70%
//! of the rate the well-behaved tenants sustain alone), and the hostile tenant's share of worker
//! time ÷ its weight share (saturated: at 70% load the idle capacity is rightly its to use).
//! The deploy storm holds no worker: what it takes is the compile thread's CPU, beside them.

use super::host_on;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use turnstile::{Host, MemoryStore, TenantConfig};

/// The well-behaved tenants' app: each action reads its state and runs a short computation,
/// like a step of an IVR menu (no kv read: its charge is calibrated to SQLite, which this
/// in-memory run does not have, and would make the well-behaved tenants pay for work not done). `loop` goes to itself at once (saturated); `start` and `tick` wait
/// `think_ms` for the customer and go on when the wait times out (a steady load, driven by the
/// host's own timers: no load generator competes for the cores).
fn polite_app(think_ms: u64) -> Vec<u8> {
    let wait = format!(r#"{{"wait":{{"action":"tick","timeout_ms":{think_ms},"on_timeout":"tick"}}}}"#);
    let module = format!(
        r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "state_read" (func $state_read (param i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{escaped}")
        (data (i32.const 256) "{{\"goto\":\"loop\"}}")
        (func $work (local $i i32)
          (call $state_read (i32.const 1024))
          (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 10000)))))
        (func (export "start") (result i32) (call $next (i32.const 0) (i32.const {len})) i32.const 0)
        (func (export "tick") (result i32) (call $work) (call $next (i32.const 0) (i32.const {len})) i32.const 0)
        (func (export "loop") (result i32) (call $work) (call $next (i32.const 256) (i32.const 15)) i32.const 0))"#,
        escaped = wait.replace('"', "\\\""),
        len = wait.len(),
    );
    wat::parse_str(module).expect("the polite app is valid WAT")
}

/// A hostile module: `attack` does `body` (which never ends well), and `on_error` goes straight
/// back to it, so each session attacks for ever. `extra` is spliced in at module level.
fn hostile(body: &str, extra: &str) -> Vec<u8> {
    let module = format!(
        r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "random" (func $random (param i32 i32)))
        (import "turnstile" "state_write" (func $state_write (param i32 i32)))
        (import "turnstile" "state_read" (func $state_read (param i32)))
        (import "turnstile" "kv_get" (func $kv_get (param i32 i32) (result i32)))
        (import "turnstile" "log" (func $log (param i32 i32 i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 2)
        (data (i32.const 0) "{{\"goto\":\"attack\"}}")
        (data (i32.const 64) "balance:1000")
        {extra}
        (func (export "attack") (result i32) {body} (call $next (i32.const 0) (i32.const 17)) i32.const 0)
        (func (export "on_error") (result i32) (call $next (i32.const 0) (i32.const 17)) i32.const 0))"#
    );
    wat::parse_str(module).expect("the hostile apps are valid WAT")
}

/// One kind of hostile tenant: its name, its module, and what it does with it.
struct Kind {
    name: &'static str,
    what: &'static str,
    module: Vec<u8>,
    attack: Attack,
}

enum Attack {
    /// Runs its module's `attack` in sessions of this many apps.
    Runs(usize),
    /// Deploys new versions of its module, one after the other, as fast as it is let.
    Deploys,
}

/// A module as costly to compile as the deploy caps let it be: five functions each of a cost
/// just under the cap per function (1 400 values live across 1 400 branches), which makes the
/// module's just under the cap per module.
fn compile_heavy() -> Vec<u8> {
    const LIVE: usize = 1_400;
    let mut body = String::new();
    for k in 1..LIVE {
        body.push_str(&format!("local.get 0 if local.get {k} i64.const 1 i64.add local.set {k} end "));
    }
    let sum: String = (2..LIVE).map(|k| format!("local.get {k} i64.add ")).collect();
    let function = format!(
        "(func (result i32) (local i32) (local {locals}) {body} local.get 1 {sum} drop i32.const 0)",
        locals = "i64 ".repeat(LIVE - 1)
    );
    let module = format!(
        r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (memory (export "memory") 1)
        {functions}
        (func (export "attack") (result i32) i32.const 0))"#,
        functions = function.repeat(5)
    );
    wat::parse_str(module).expect("the compile-heavy module is valid WAT")
}

fn kinds() -> Vec<Kind> {
    // A sleep of 900 ms: one relative clock subscription at offset 1024 (timeout at 1048).
    let nap = r#"(data (i32.const 1040) "\01") (data (i32.const 1048) "\00\e9\a4\35\00\00\00\00")"#;
    let spin = "(loop $l (br $l))";
    vec![
        Kind { name: "compute", what: "burns its whole fuel cap", module: hostile(spin, ""), attack: Attack::Runs(4) },
        Kind {
            name: "host-call burner",
            what: "random(64 KiB) in a loop",
            module: hostile("(loop $l (call $random (i32.const 4096) (i32.const 65536)) (br $l))", ""),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "state_read loop",
            what: "reads a 64 KiB state in a loop",
            module: hostile(
                "(call $state_write (i32.const 4096) (i32.const 65536)) (loop $l (call $state_read (i32.const 4096)) (br $l))",
                "",
            ),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "kv_get loop",
            what: "a store look-up in a loop",
            module: hostile("(loop $l (drop (call $kv_get (i32.const 64) (i32.const 12))) (br $l))", ""),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "log flood",
            what: "16 KiB log lines in a loop",
            module: hostile("(loop $l (call $log (i32.const 2) (i32.const 4096) (i32.const 16384)) (br $l))", ""),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "WASI sleeper",
            what: "sleeps 900 ms of its 1 s deadline",
            module: hostile(
                "(drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 2100))) unreachable",
                nap,
            ),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "memory bomb",
            what: "grows and touches memory to its limit",
            module: hostile(
                "(call $bomb)",
                "(func $bomb (local $page i32) (loop $l (local.set $page (memory.grow (i32.const 16)))
                   (i32.store (i32.shl (local.get $page) (i32.const 16)) (i32.const 1)) (br $l)))",
            ),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "deep recursion",
            what: "recurses until the stack overflows",
            module: hostile("(call $down)", "(func $down (call $down))"),
            attack: Attack::Runs(4),
        },
        Kind {
            name: "many apps",
            what: "compute, spread over 20 apps",
            module: hostile(spin, ""),
            attack: Attack::Runs(20),
        },
        Kind {
            name: "deploy storm",
            what: "deploys modules costly to compile",
            module: compile_heavy(),
            attack: Attack::Deploys,
        },
    ]
}

const POLITE: usize = 4;
const POLITE_APPS: usize = 2;
const SESSIONS_PER_APP: usize = 50;

/// What one run measured.
struct Run {
    /// The worst p99 action latency of the well-behaved tenants, in µs.
    p99_us: u64,
    /// Actions the well-behaved tenants completed per second.
    polite_per_second: f64,
    /// The hostile tenant's share of the time actions held a worker.
    hostile_share: f64,
}

/// A host with the four well-behaved tenants (saturated, or each session thinking
/// `think_ms` between actions) and the hostile one, if given.
fn populated(workers: usize, hostile: Option<&Kind>, think_ms: Option<u64>) -> Result<Host> {
    let host = host_on(workers, Arc::new(MemoryStore::default()))?;
    let polite = polite_app(think_ms.unwrap_or(1));
    for t in 0..POLITE {
        let tenant = format!("polite{t}");
        host.create_tenant(&tenant, TenantConfig::default())?;
        for a in 0..POLITE_APPS {
            host.deploy(&tenant, &format!("app{a}"), &polite)?;
            for _ in 0..SESSIONS_PER_APP {
                let entry = if think_ms.is_some() { "start" } else { "loop" };
                host.start_session(&tenant, &format!("app{a}"), entry, Vec::new())?;
                // Sessions that think start spread over one think time, or they would all wake
                // together: a wave every think time, not a steady load.
                if let Some(ms) = think_ms {
                    let sessions = u64::try_from(POLITE * POLITE_APPS * SESSIONS_PER_APP).unwrap_or(1);
                    std::thread::sleep(Duration::from_micros(ms * 1000 / sessions));
                }
            }
        }
    }
    if let Some(kind) = hostile {
        let config = TenantConfig { max_apps: 100, ..TenantConfig::default() };
        host.create_tenant("mallory", config)?;
        host.kv_put("mallory", [("balance:1000".to_owned(), vec![b'9'; 1024])])?;
        let apps = match kind.attack {
            Attack::Runs(apps) => apps,
            Attack::Deploys => 0,
        };
        let per_app = (SESSIONS_PER_APP * 4 / apps.max(1)).max(1);
        for a in 0..apps {
            host.deploy("mallory", &format!("hostile{a}"), &kind.module)?;
            for _ in 0..per_app {
                host.start_session("mallory", &format!("hostile{a}"), "attack", Vec::new())?;
            }
        }
    }
    Ok(host)
}

/// Runs one measurement: saturated, or with each well-behaved session thinking `think_ms`.
fn run(workers: usize, window: Duration, hostile: Option<&Kind>, think_ms: Option<u64>) -> Result<Run> {
    let host = populated(workers, hostile, think_ms)?;
    let storm = hostile.filter(|kind| matches!(kind.attack, Attack::Deploys));
    let stop = AtomicBool::new(false);
    let (before, after, elapsed) = std::thread::scope(|scope| {
        let storming = storm.map(|kind| scope.spawn(|| deploy_storm(&host, &kind.module, &stop)));
        std::thread::sleep(window / 5);
        let before = host.metrics();
        let started = Instant::now();
        std::thread::sleep(window);
        let after = host.metrics();
        let elapsed = started.elapsed();
        // (The deploy under way when told to stop still runs to its end: not measured.)
        stop.store(true, Ordering::Relaxed);
        let stormed =
            storming.map(|thread| thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the storm panicked"))));
        stormed.transpose().map(|_| (before, after, elapsed))
    })?;
    let delta = |name: &str, f: fn(&turnstile::TenantMetrics) -> u64| -> u64 {
        after.tenant(name).map_or(0, f).saturating_sub(before.tenant(name).map_or(0, f))
    };
    let polite: Vec<String> = (0..POLITE).map(|t| format!("polite{t}")).collect();
    // The p99 of the window: the latencies recorded between the two readings.
    let p99_us = polite
        .iter()
        .filter_map(|name| Some(after.tenant(name)?.latency.since(&before.tenant(name)?.latency)))
        .map(|window| u64::try_from(window.quantile(990).as_micros()).unwrap_or(u64::MAX))
        .max()
        .context("no polite tenant")?;
    let polite_actions: u64 = polite.iter().map(|name| delta(name, |t| t.actions)).sum();
    let worker_total: u64 = after.tenants.iter().map(|t| delta(&t.tenant, |m| m.worker_us)).sum();
    let hostile_share = delta("mallory", |t| t.worker_us) as f64 / worker_total.max(1) as f64;
    Ok(Run { p99_us, polite_per_second: polite_actions as f64 / elapsed.as_secs_f64(), hostile_share })
}

/// Deploys new versions of `module` (told apart by a custom section) for `mallory` until `stop`,
/// one after the other, as fast as its deploy rate and its one compile at a time let it.
fn deploy_storm(host: &Host, module: &[u8], stop: &AtomicBool) -> Result<()> {
    let mut version = 0u32;
    while !stop.load(Ordering::Relaxed) {
        version += 1;
        match host.deploy("mallory", "storm", &super::numbered(module, version)) {
            Ok(_) => {}
            Err(error)
                if ["deploy_rate", "compile_running", "compile_delayed", "compile_busy"].contains(&error.code()) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error).context("the deploy storm's module is refused"),
        }
    }
    Ok(())
}

/// Prints the (f) table. Returns whether every kind met its targets.
///
/// "70% load" is 70% of what the well-behaved tenants get through saturated *beside that
/// hostile tenant* (their fair share of the pool), the same rate run with and without it: the
/// question is what the hostile tenant costs them at a load their share can carry.
pub(super) fn isolation(window: Duration, workers: usize) -> Result<bool> {
    let alone = run(workers, window, None, None)?;
    let sessions = (POLITE * POLITE_APPS * SESSIONS_PER_APP) as f64;
    println!(
        "(f) isolation: {POLITE} well-behaved tenants (weight 1 each; an action = a state read + ~10k instructions) beside one hostile tenant (weight 1: weight share {:.0}%), in-memory store",
        100.0 / (POLITE as f64 + 1.0)
    );
    println!("    alone, saturated: p99 {} µs, {:.0} actions/s", alone.p99_us, alone.polite_per_second);
    println!(
        "    {:<17} {:<40} {:>16} {:>28} {:>22}",
        "hostile kind", "what it does", "saturated p99 ×", "70% load p99 × (rate)", "worker share ÷ weight"
    );
    let weight_share = 1.0 / (POLITE as f64 + 1.0);
    let mut all_met = true;
    for kind in kinds() {
        let saturated = run(workers, window, Some(&kind), None)?;
        // Each session thinks long enough between actions that all of them make 70% of the rate
        // they sustained saturated beside this hostile tenant.
        let rate = saturated.polite_per_second * 0.7;
        let think_ms = super::whole(sessions * 1000.0 / rate.max(1.0)).max(1);
        let loaded_alone = run(workers, window, None, Some(think_ms))?;
        let loaded = run(workers, window, Some(&kind), Some(think_ms))?;
        let sat_ratio = saturated.p99_us as f64 / alone.p99_us.max(1) as f64;
        let load_ratio = loaded.p99_us as f64 / loaded_alone.p99_us.max(1) as f64;
        let share = saturated.hostile_share / weight_share;
        let met = sat_ratio <= 2.0 && load_ratio <= 1.2 && share <= 1.1;
        all_met &= met;
        println!(
            "    {:<17} {:<40} {:>14.2}{} {:>10.2}{} ({:>6.0}/s, {:>5} µs) {:>20.2}{}",
            kind.name,
            kind.what,
            sat_ratio,
            mark(sat_ratio <= 2.0),
            load_ratio,
            mark(load_ratio <= 1.2),
            loaded_alone.polite_per_second,
            loaded_alone.p99_us,
            share,
            mark(share <= 1.1)
        );
    }
    println!("    targets: saturated ≤ 2.0, 70% load ≤ 1.2, worker share ÷ weight share ≤ 1.1");
    Ok(all_met)
}

fn mark(met: bool) -> &'static str {
    if met { " ✓" } else { " ✗" }
}
