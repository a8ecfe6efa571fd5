//! `turnstile bench --imports`: what a unit of fuel costs in each host call, next to plain wasm.
//! Each import is called in a tight wasm loop with a typical (and a large) size; the action's
//! wall time divided by the fuel it was charged gives ns per fuel, which should be within 3× of
//! a plain wasm loop's (the charges in `abi/` are calibrated by it).

use super::Scratch;
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::time::Duration;
use turnstile::{KvRead, Limits, Runtime, RuntimeConfig, SqliteStore, Store};

/// A tenant's kv space on a real SQLite store, as the host reads it.
struct SqliteKv(Arc<SqliteStore>);

impl KvRead for SqliteKv {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.kv_get("bench", key).ok().flatten()
    }
}

/// One measured call: the WAT of one loop iteration's call, and how many iterations.
struct Case {
    import: &'static str,
    size: &'static str,
    call: String,
    iterations: u32,
}

fn cases() -> Vec<Case> {
    let case = |import, size, call: &str, iterations| Case { import, size, call: call.to_owned(), iterations };
    vec![
        case("(plain wasm loop)", "", "(nop)", 2_000_000),
        case("input_len", "", "(drop (call $input_len))", 200_000),
        case("input_read", "1 KiB", "(call $input_read (i32.const 65536))", 200_000),
        case("state_len", "", "(drop (call $state_len))", 200_000),
        case("state_read", "64 KiB", "(call $state_read (i32.const 65536))", 5_000),
        case("state_write", "64 B", "(call $state_write (i32.const 4096) (i32.const 64))", 200_000),
        case("state_write", "64 KiB", "(call $state_write (i32.const 65536) (i32.const 65536))", 5_000),
        case("emit", "64 B", "(call $emit (i32.const 4096) (i32.const 64))", 50_000),
        case("emit", "16 KiB", "(call $emit (i32.const 8192) (i32.const 16384))", 500),
        case("next", "15 B", "(call $next (i32.const 0) (i32.const 13))", 200_000),
        case("kv_get", "12 B key, 1 KiB value", "(drop (call $kv_get (i32.const 64) (i32.const 12)))", 20_000),
        case("kv_read", "1 KiB", "(call $kv_read (i32.const 65536))", 200_000),
        case(
            "kv_set",
            "12 B + 64 B",
            "(call $kv_set (i32.const 64) (i32.const 12) (i32.const 4096) (i32.const 64))",
            100_000,
        ),
        case("log", "64 B", "(call $log (i32.const 2) (i32.const 4096) (i32.const 64))", 200_000),
        case("log", "16 KiB", "(call $log (i32.const 2) (i32.const 8192) (i32.const 16384))", 5_000),
        case("now_ms", "", "(drop (call $now_ms))", 200_000),
        case("random", "64 B", "(call $random (i32.const 65536) (i32.const 64))", 200_000),
        case("random", "64 KiB", "(call $random (i32.const 65536) (i32.const 65536))", 5_000),
        case(
            "fd_write",
            "64 B",
            "(drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))",
            200_000,
        ),
        case(
            "clock_time_get",
            "",
            "(drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 300)))",
            200_000,
        ),
        case("random_get", "64 KiB", "(drop (call $random_get (i32.const 65536) (i32.const 65536)))", 5_000),
        case(
            "poll_oneoff",
            "1 clock, 0 ns",
            "(drop (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 300)))",
            100_000,
        ),
        case("fd_fdstat_get", "", "(drop (call $fd_fdstat_get (i32.const 1) (i32.const 300)))", 200_000),
    ]
}

fn module(case: &Case) -> Result<Vec<u8>> {
    let x64 = "x".repeat(62);
    let x16k = "x".repeat(16_382);
    let module = format!(
        r#"(module
        (import "turnstile" "input_len" (func $input_len (result i32)))
        (import "turnstile" "input_read" (func $input_read (param i32)))
        (import "turnstile" "state_len" (func $state_len (result i32)))
        (import "turnstile" "state_read" (func $state_read (param i32)))
        (import "turnstile" "state_write" (func $state_write (param i32 i32)))
        (import "turnstile" "emit" (func $emit (param i32 i32)))
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "kv_get" (func $kv_get (param i32 i32) (result i32)))
        (import "turnstile" "kv_read" (func $kv_read (param i32)))
        (import "turnstile" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
        (import "turnstile" "log" (func $log (param i32 i32 i32)))
        (import "turnstile" "now_ms" (func $now_ms (result i64)))
        (import "turnstile" "random" (func $random (param i32 i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
        (memory (export "memory") 3)
        (data (i32.const 0) "{{\"done\":null}}")
        (data (i32.const 64) "balance:1000")
        (data (i32.const 200) "\00\10\00\00\40\00\00\00")
        (data (i32.const 1040) "\01")
        (data (i32.const 4096) "\"{x64}\"")
        (data (i32.const 8192) "\"{x16k}\"")
        (func (export "run") (result i32) (local $i i32)
          (drop (call $kv_get (i32.const 64) (i32.const 12)))
          (loop $l {call}
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))
          (call $next (i32.const 0) (i32.const 13)) i32.const 0))"#,
        call = case.call,
        n = case.iterations,
    );
    Ok(wat::parse_str(module)?)
}

/// Prints the table of ns per fuel per import. Returns whether every import is within 3× of
/// plain wasm.
pub(crate) fn imports() -> Result<bool> {
    let limits = Limits {
        fuel_per_action: u64::MAX / 4,
        wall_time: Duration::from_secs(60),
        max_outputs: 1_000_000,
        max_output_bytes: 1 << 30,
        max_kv_write_bytes: 1 << 30,
        ..Limits::default()
    };
    let runtime = Runtime::new(RuntimeConfig { limits: limits.clone(), ..RuntimeConfig::default() })?;
    let scratch = Scratch::new("imports")?;
    let store = Arc::new(SqliteStore::open(&scratch.dir.join("turnstile.db"))?);
    store.kv_put("bench", [("balance:1000".to_owned(), vec![b'9'; 1024])].into_iter().collect())?;
    let kv: Arc<dyn KvRead> = Arc::new(SqliteKv(store));
    let limits = Arc::new(limits);
    println!("Turnstile bench --imports: ns per fuel in each host call, beside plain wasm (target: within 3×)\n");
    println!("{:<18} {:<22} {:>10} {:>12} {:>10} {:>8}", "import", "size", "ns/call", "fuel/call", "ns/fuel", "× wasm");
    let mut baseline = None;
    let mut all_met = true;
    for case in cases() {
        let app = runtime.deploy(&module(&case)?)?.app;
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..3 {
            let outcome = runtime.run_action(
                &app,
                "run",
                vec![b'1'; 1024],
                vec![b's'; 64 << 10],
                kv.clone(),
                &limits,
                limits.fuel_per_action,
            );
            if let Err(failure) = &outcome.result {
                return Err(anyhow!("{}: {failure}", case.import));
            }
            let calls = f64::from(case.iterations);
            let ns = outcome.usage.elapsed.as_nanos() as f64 / calls;
            let fuel = outcome.usage.fuel as f64 / calls;
            if best.is_none_or(|(b, _)| ns < b) {
                best = Some((ns, fuel));
            }
        }
        let (ns, fuel) = best.ok_or_else(|| anyhow!("no run"))?;
        let per_fuel = ns / fuel.max(1.0);
        let base = *baseline.get_or_insert(per_fuel);
        let ratio = per_fuel / base;
        let met = (1.0 / 3.0..=3.0).contains(&ratio);
        all_met &= met;
        println!(
            "{:<18} {:<22} {:>10.1} {:>12.1} {:>10.3} {:>7.2}{}",
            case.import,
            case.size,
            ns,
            fuel,
            per_fuel,
            ratio,
            if met { " ✓" } else { " ✗" }
        );
    }
    println!("\n(each figure includes the loop around the call: a handful of wasm instructions)");
    Ok(all_met)
}
